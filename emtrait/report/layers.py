"""The report's layer question: the monitor at every measured layer beside the selector's l*.

Reads the tables of `emtrait monitor layers` (results/monitor/{model}/layers.csv) and the
selector's record (results/traits/{model}/layer_selection.json). The monitor that ships stays
at l*; a layer is called better only where `emtrait.monitor.layers.better_layers` says its
AUROC interval lies wholly above l*'s.
"""

from __future__ import annotations

import numpy as np


def _interval(r, metric: str, pct: bool) -> str:
    v, lo, hi = r[metric], r[f"{metric}_lo"], r[f"{metric}_hi"]
    if not np.isfinite(v):
        return "n/a"
    f = (lambda x: f"{100 * x:.1f}%") if pct else (lambda x: f"{x:.3f}")
    return f(v) + (f" [{f(lo)}, {f(hi)}]" if np.isfinite(lo) else "")


def _p(r) -> str:
    p = r.get("auroc_p", np.nan)
    return "n/a" if not np.isfinite(p) else f"{p:.3g}"


def _scores(selection: dict) -> dict[int, str]:
    scores = selection.get("selection_score") or []
    return {int(la): "n/a" if s is None else f"{s:.3g}"
            for la, s in zip(selection.get("layers", []), scores, strict=False)}


def layer_question_section(layers, selection: list[dict]) -> list[str]:
    """Markdown: per model, one row per measured layer (LOPO and held-out metrics, p, PC1 share,
    selector score), what the selector chose and why, and whether any layer beats l*."""
    from emtrait.monitor.layers import better_layers

    if layers is None or not len(layers):
        return []
    chosen = {s["model"]: s for s in selection}
    lines = ["", "## Which layer monitors best", "",
             "The monitor's own fit and validation (regressor chosen by LOPO; run-level "
             "intervals; run-label permutation p) repeated at every measured layer. The shipped "
             "monitor stays at l*; another layer is called better only where its AUROC interval "
             "lies wholly above l*'s. Figure: `layer_comparison`."]
    for model, g in layers.groupby("model", sort=False):
        sel = chosen.get(model, {})
        scores = _scores(sel)
        lines += ["", f"**{model}** — l* = {sel.get('layer', int(g[g.chosen].layer.iloc[0]))}"
                  f" by selector `{sel.get('selector', '?')}`: {sel.get('reason', 'n/a')}.", "",
                  "| layer | selector score | protocol | sample | AUROC | p | FNR | FPR | "
                  "PC1 share |", "|---|---|---|---|---|---|---|---|---|"]
        for r in g.sort_values(["layer", "protocol"]).to_dict("records"):
            star = " (l*)" if r["chosen"] else ""
            lines.append(f"| {int(r['layer'])}{star} | {scores.get(int(r['layer']), 'n/a')} | "
                         f"{r['protocol']} | {int(r['n'])} checkpoints of {int(r['n_runs'])} "
                         f"runs | {_interval(r, 'auroc', False)} | {_p(r)} | "
                         f"{_interval(r, 'fnr', True)} | {_interval(r, 'fpr', True)} | "
                         f"{r['pc1_explained']:.3f} |")
        better = better_layers(g)
        lines.append("")
        lines += [f"⚠ Layer {b['layer']} monitors better than l* = {b['chosen_layer']} beyond "
                  f"the intervals ({b['protocol']} AUROC {b['auroc']:.3f}, lower bound "
                  f"{b['auroc_lo']:.3f} > l*'s upper bound {b['chosen_auroc_hi']:.3f}); "
                  "consider `models.<m>.layer` or another `layer_selector`." for b in better]
        if not better:
            lines.append("No layer beats l* beyond its interval.")
    return lines
