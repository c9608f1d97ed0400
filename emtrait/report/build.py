"""Assemble the report: read analysis/monitor tables, draw every figure, write summary.md.

Every number in summary.md is computed here from the stage outputs; the only constants are the
paper's, shown beside ours for comparison.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from emtrait.errors import StoreError
from emtrait.report import FIGURES, PAPER


@dataclass
class Inputs:
    """Everything the report reads, already loaded (frames concatenated over models)."""

    pca: dict
    final: object  # DataFrame
    trajectories: object
    predictions: object
    metrics: object
    alarms: object
    selection: object
    stress: object
    cosines: dict
    monitor_set: str
    alarm_threshold: float
    bootstrap: int
    seed: int


def _read_csv(path: Path):
    import pandas as pd

    if not path.is_file():
        raise StoreError(f"report input {path} is missing; run the rule that writes it")
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()


def direction_cosines(cube):
    """(model, trait × trait cosine frame) of a cube's directions (at its chosen layer)."""
    import pandas as pd

    d = cube["direction"].values.astype(float)  # (trait, hidden)
    d /= np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-12)
    traits = [str(t) for t in cube["trait"].values]
    return str(cube.attrs["model"]), pd.DataFrame(d @ d.T, index=traits, columns=traits)


def load_inputs(cfg, *, pca: Path, final: Path, trajectories: Path, predictions: list[Path],
                metrics: list[Path], alarms: list[Path], selection: list[Path],
                stress: list[Path], cubes: list[Path]) -> Inputs:
    """Read every report input from the files the rule names (frames concatenated)."""
    import pandas as pd

    from emtrait.cube.read import open_cube

    if not pca.is_file():
        raise StoreError(f"{pca} is missing; run `emtrait analysis pca` (rule pca)")
    cat = lambda paths: pd.concat(  # noqa: E731
        [_read_csv(p) for p in paths] or [pd.DataFrame()], ignore_index=True)
    return Inputs(
        pca=json.loads(pca.read_text()),
        final=_read_csv(final),
        trajectories=_read_csv(trajectories),
        predictions=cat(predictions),
        metrics=cat(metrics),
        alarms=cat(alarms),
        selection=cat(selection),
        stress=cat(stress),
        cosines=dict(direction_cosines(open_cube(c, load=False)) for c in cubes),
        monitor_set=cfg.traits.monitor_set, alarm_threshold=cfg.monitor.alarm_threshold,
        bootstrap=cfg.monitor.bootstrap, seed=cfg.monitor.seed,
    )


def pooled_over_models(inp: Inputs):
    """Metrics of all models' predictions together, per feature set and protocol."""
    from emtrait.monitor.metrics import metrics_table

    if not len(inp.predictions):
        return inp.metrics.iloc[0:0]
    table = metrics_table(inp.predictions, ["feature_set", "protocol", "dataset"],
                          bootstrap=inp.bootstrap, seed=inp.seed)
    pooled = table[table.dataset == "pooled"].copy()
    order = {fs: i for i, fs in enumerate(dict.fromkeys(inp.predictions.feature_set))}
    return pooled.sort_values(["feature_set", "protocol"], key=lambda s: s.map(order)
                              if s.name == "feature_set" else s).reset_index(drop=True)


def figures(inp: Inputs, pooled) -> dict:
    """name → Figure, for every name in FIGURES."""
    from emtrait.report import figures as F

    traits = list(inp.pca["traits"])
    mon = inp.predictions[inp.predictions.feature_set == inp.monitor_set] \
        if len(inp.predictions) else inp.predictions
    made = {
        "drift_over_steps": lambda: F.drift_over_steps(inp.trajectories),
        "direction_magnitude": lambda: F.direction_magnitude(inp.trajectories),
        "pca_loadings_scree": lambda: F.pca_loadings_scree(inp.pca),
        "matched_profiles": lambda: F.matched_profiles(F.matched_pairs(inp.final, traits)),
        "trait_cosines": lambda: F.trait_cosines(inp.cosines),
        "lopo_error_grid": lambda: F.lopo_error_grid(inp.metrics, inp.monitor_set),
        "feature_ablation": lambda: F.feature_ablation(pooled),
        "alarm_curves": lambda: F.alarm_curves(mon, inp.alarm_threshold),
        "spearman_matrix": lambda: F.spearman_matrix(inp.trajectories, traits),
    }
    if set(made) != set(FIGURES):  # an internal invariant, kept true by tests
        raise RuntimeError(f"FIGURES and the figure table disagree: {set(made) ^ set(FIGURES)}")
    return {name: made[name]() for name in FIGURES}


def _pct(v: float) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{100 * v:.1f}%"


def _ci(row, metric: str, pct: bool = True) -> str:
    v, lo, hi = row[metric], row[f"{metric}_lo"], row[f"{metric}_hi"]
    if not np.isfinite(v):
        return "n/a"
    f = (lambda x: f"{100 * x:.1f}%") if pct else (lambda x: f"{x:.3f}")
    ci = f" [{f(lo)}, {f(hi)}]" if np.isfinite(lo) else ""
    return f(v) + ci


def summary_markdown(inp: Inputs, pooled) -> str:
    """The headline numbers beside the paper's, the ablation, alarm and stress tables."""
    lines = ["# emtrait report", "",
             "Every number below is computed from this workflow's outputs; the paper column is "
             "arXiv 2606.07631's headline result, which DESIGN.md quotes for its LOPO and "
             "held-out validation together, so it is shown beside both.", "",
             "## Headline", "",
             "| quantity | paper | this run |", "|---|---|---|",
             f"| PC1 share of final-drift variance ({inp.pca['n_runs']} calibration runs of "
             f"{', '.join(inp.pca['models'])}) | {_pct(PAPER['pc1_explained'])} | "
             f"{_pct(inp.pca['pc1_explained'])} |"]
    mon = pooled[pooled.feature_set == inp.monitor_set]
    for r in mon.to_dict("records"):
        name = "leave-one-perturbation-out" if r["protocol"] == "lopo" else "held-out datasets"
        lines += [f"| FNR, {name} (n={r['n_dangerous']} dangerous checkpoints) | "
                  f"{_pct(PAPER['fnr'])} | {_ci(r, 'fnr')} |",
                  f"| FPR, {name} (n={r['n_benign']} benign checkpoints) | "
                  f"{_pct(PAPER['fpr'])} | {_ci(r, 'fpr')} |",
                  f"| AUROC, {name} | {PAPER['auroc']:.3f} | {_ci(r, 'auroc', pct=False)} |"]
    excluded = int(mon.n_excluded_nan.sum()) if len(mon) else 0
    lines += ["", f"Intervals: 95% percentile bootstrap over checkpoints ({inp.bootstrap} "
              f"resamples). Checkpoints with a NaN EM rate are excluded from every metric and "
              f"counted: {excluded} in the {inp.monitor_set} rows above."]
    if inp.pca.get("n_fallback_final"):
        lines.append(f"{inp.pca['n_fallback_final']} run(s) lacked their dataset's final step; "
                     "their last measured step stands in for it in the PCA.")
    if inp.pca.get("stability"):
        cos = [s["cosine"] for s in inp.pca["stability"]]
        lines.append(f"PC1 leave-one-perturbation-out stability: |cosine| to the full fit "
                     f"min {min(cos):.3f}, median {float(np.median(cos)):.3f}.")
    if len(inp.selection):
        chosen = inp.selection[inp.selection.selected.astype(bool)]
        lines.append("Regressor chosen by LOPO mean absolute error: " + ", ".join(
            f"{r.model} → {r.regressor} (MAE {r.lopo_mae:.4f})" for r in chosen.itertuples()))
    lines += ["", "## Feature-set ablation (pooled over models)", "",
              "| feature set | protocol | n | NaN EM excluded | FNR | FPR | AUROC |",
              "|---|---|---|---|---|---|---|"]
    for r in pooled.to_dict("records"):
        lines.append(f"| {r['feature_set']} | {r['protocol']} | {r['n']} | "
                     f"{r['n_excluded_nan']} | {_ci(r, 'fnr')} | {_ci(r, 'fpr')} | "
                     f"{_ci(r, 'auroc', pct=False)} |")
    lines += ["", "## Step-aware alarm", "",
              f"Alarm when P(EM > threshold) exceeds {inp.alarm_threshold:g} (P from the LOPO "
              "residual spread).", "",
              "| model | protocol | dangerous runs alarmed | median first-alarm step | "
              "alarm at or before first dangerous step | benign runs with a false alarm |",
              "|---|---|---|---|---|---|"]
    al = inp.alarms[inp.alarms.feature_set == inp.monitor_set] if len(inp.alarms) else inp.alarms
    for (model, protocol), g in (al.groupby(["model", "protocol"]) if len(al) else []):
        dan = g[g.ever_dangerous.astype(str) == "True"]
        ben = g[g.ever_dangerous.astype(str) == "False"]
        early = dan[dan.alarmed & (dan.first_alarm_step <= dan.first_dangerous_step)]
        med = dan.first_alarm_step.median()
        lines.append(f"| {model} | {protocol} | {int(dan.alarmed.sum())}/{len(dan)} | "
                     f"{'n/a' if not np.isfinite(med) else f'{med:g}'} | "
                     f"{len(early)}/{len(dan)} | {int(ben.alarmed.sum())}/{len(ben)} |")
    lines += ["", "## Stress tests", ""]
    st = inp.stress
    if len(st) and "dataset" in st:
        st = st[st.dataset == "pooled"]
        lines += ["| model | monitor | condition | n | FNR | FPR | AUROC |",
                  "|---|---|---|---|---|---|---|"]
        for r in st.to_dict("records"):
            lines.append(f"| {r['model']} | {r['monitor']} | {r['condition']} | {r['n']} | "
                         f"{_ci(r, 'fnr')} | {_ci(r, 'fpr')} | {_ci(r, 'auroc', pct=False)} |")
    else:
        lines.append("No stress datasets or stress models in this config.")
    lines += ["", "## Figures", ""] + [f"- `figures/{n}.png` (`.svg`)" for n in FIGURES]
    return "\n".join(lines) + "\n"


def build(inp: Inputs, *, summary: Path, ablation: Path, figure_files: list[Path],
          provenance: dict) -> None:
    """Write each requested figure (<name>.png|.svg), ablation.csv and summary.md."""
    from emtrait.atomic import atomic_path, write_text

    unknown = sorted({Path(f).stem for f in figure_files} - set(FIGURES))
    if unknown:
        raise StoreError(f"no figures named {unknown}; known: {', '.join(FIGURES)}")
    pooled = pooled_over_models(inp)
    drawn = figures(inp, pooled)
    for path in map(Path, figure_files):
        with atomic_path(path) as tmp:
            drawn[path.stem].savefig(tmp, format=path.suffix.lstrip("."), dpi=150)
    with atomic_path(ablation) as tmp:
        pooled.to_csv(tmp, index=False)
    text = summary_markdown(inp, pooled)
    text += ("\n<!-- " + " ".join(f"{k}={v}" for k, v in sorted(provenance.items())) + " -->\n")
    write_text(summary, text)
