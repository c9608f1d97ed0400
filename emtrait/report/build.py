"""Assemble the report: read analysis/monitor tables, draw every figure, write summary.md.

Every number in summary.md is computed here from the stage outputs; the only constants are the
paper's, shown beside ours for comparison.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from emtrait.errors import StoreError
from emtrait.monitor.metrics import interval_method
from emtrait.report import FIGURES, PAPER
from emtrait.report.layers import layer_question_section


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
    step0: str = "exclude"  # monitor.step0: the headline policy for step 0
    permutations: int = 0  # monitor.permutations
    permutation_null: object = None  # DataFrame of permutation_null.csv (all models)
    layer_selection: list = field(default_factory=list)  # layer_selection.json per model
    layers: object = None  # DataFrame of layers.csv (`emtrait monitor layers`, all models)
    variants: list = field(default_factory=list)  # training variants (their own stress report)


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
                stress: list[Path], cubes: list[Path], permutation_null: list[Path] = (),
                layer_selection: list[Path] = (), layers: list[Path] = ()) -> Inputs:
    """Read every report input from the files the rule names (frames concatenated)."""
    import pandas as pd

    from emtrait.cube.read import open_cube
    from emtrait.stores import read_json_artifact

    cat = lambda paths: pd.concat(  # noqa: E731
        [_read_csv(p) for p in paths] or [pd.DataFrame()], ignore_index=True)
    return Inputs(
        pca=read_json_artifact(pca, rule="pca", what="PCA summary"),
        final=_read_csv(final),
        trajectories=_read_csv(trajectories),
        predictions=cat(predictions),
        metrics=cat(metrics),
        alarms=cat(alarms),
        selection=cat(selection),
        stress=cat(stress),
        cosines=dict(direction_cosines(open_cube(c, load=False)) for c in cubes),
        monitor_set=cfg.traits.monitor_set, alarm_threshold=cfg.monitor.alarm_threshold,
        variants=list(cfg.variants),
        bootstrap=cfg.monitor.bootstrap, seed=cfg.monitor.seed, step0=cfg.monitor.step0,
        permutations=cfg.monitor.permutations, permutation_null=cat(permutation_null),
        layer_selection=[json.loads(Path(p).read_text()) for p in layer_selection],
        layers=cat(layers),
    )


def headline_metrics(inp: Inputs):
    """The per-model metrics rows under the configured step-0 policy (older files: all rows)."""
    m = inp.metrics
    return m[m.step0 == inp.step0] if len(m) and "step0" in m else m


def pooled_over_models(inp: Inputs):
    """Metrics of all models' predictions together, per feature set and protocol."""
    from emtrait.monitor.metrics import metrics_table

    if not len(inp.predictions):
        return inp.metrics.iloc[0:0]
    table = metrics_table(inp.predictions, ["feature_set", "protocol", "dataset"],
                          bootstrap=inp.bootstrap, seed=inp.seed,
                          step0=[inp.step0] + [p for p in ("exclude", "include")
                                               if p != inp.step0], per_group=False)
    pooled = table[table.dataset == "pooled"].copy()
    pooled["headline"] = pooled.step0 == inp.step0
    order = {fs: i for i, fs in enumerate(dict.fromkeys(inp.predictions.feature_set))}
    return pooled.sort_values(["feature_set", "protocol"], key=lambda s: s.map(order)
                              if s.name == "feature_set" else s).reset_index(drop=True)


def figures(inp: Inputs, pooled) -> dict:
    """name → Figure, for every name in FIGURES."""
    from emtrait.report import figures as F

    traits = list(inp.pca["traits"])
    mon = inp.predictions[inp.predictions.feature_set == inp.monitor_set] \
        if len(inp.predictions) else inp.predictions
    labels = label_methods(inp)
    head = pooled[pooled.headline] if "headline" in pooled else pooled
    made = {
        "drift_over_steps": lambda: F.drift_over_steps(inp.trajectories, labels),
        "direction_magnitude": lambda: F.direction_magnitude(inp.trajectories, labels),
        "pca_loadings_scree": lambda: F.pca_loadings_scree(inp.pca),
        "matched_profiles": lambda: F.matched_profiles(F.matched_pairs(inp.final, traits)),
        "trait_cosines": lambda: F.trait_cosines(inp.cosines),
        "lopo_error_grid": lambda: F.lopo_error_grid(headline_metrics(inp), inp.monitor_set,
                                                     labels),
        "feature_ablation": lambda: F.feature_ablation(head, labels),
        "alarm_curves": lambda: F.alarm_curves(mon, inp.alarm_threshold),
        "spearman_matrix": lambda: F.spearman_matrix(inp.trajectories, traits, labels),
        "permutation_null": lambda: F.permutation_null(inp.permutation_null,
                                                       headline_metrics(inp)),
        "layer_comparison": lambda: F.layer_comparison(inp.layers, inp.layer_selection),
    }
    if set(made) != set(FIGURES):  # an internal invariant, kept true by tests
        raise RuntimeError(f"FIGURES and the figure table disagree: {set(made) ^ set(FIGURES)}")
    return {name: made[name]() for name in FIGURES}


def label_methods(inp: Inputs) -> str:
    """Every label method in the predictions, joined (figure titles carry it)."""
    p = inp.predictions
    if not len(p) or "label_method" not in p:
        return "label method not recorded"
    return "; ".join(sorted(set(p.label_method.astype(str))))


def _pct(v: float) -> str:
    return "n/a" if v is None or not np.isfinite(v) else f"{100 * v:.1f}%"


def _ci(row, metric: str, pct: bool = True) -> str:
    v, lo, hi = row[metric], row[f"{metric}_lo"], row[f"{metric}_hi"]
    if not np.isfinite(v):
        return "n/a"
    f = (lambda x: f"{100 * x:.1f}%") if pct else (lambda x: f"{x:.3f}")
    ci = f" [{f(lo)}, {f(hi)}]" if np.isfinite(lo) else ""
    return f(v) + ci


def _runs(r) -> str:
    """'n checkpoints of m runs' for a metrics row: the sample sizes beside every number."""
    runs = r.get("n_runs")
    runs = f" of {int(runs)} runs" if runs is not None and np.isfinite(runs) else ""
    return f"{int(r['n'])} checkpoints{runs}"


def _method(r) -> str:
    """The label method of a metrics row, for the table cell (older files: not recorded)."""
    m = r.get("label_method")
    return m if isinstance(m, str) and m else "label method not recorded"


def _perm(inp: Inputs, protocol: str) -> str:
    """'p = …, null median …' per model for the monitor's AUROC under one protocol."""
    m = headline_metrics(inp)
    if not len(m) or "auroc_p" not in m:
        return "not run (monitor.permutations: 0)" if inp.permutations == 0 else "n/a"
    rows = m[(m.feature_set == inp.monitor_set) & (m.protocol == protocol)
             & (m.dataset == "pooled")]
    parts = []
    for r in rows.to_dict("records"):
        if not np.isfinite(r.get("auroc_p", np.nan)):
            parts.append(f"{r['model']}: n/a")
            continue
        kind = "exact" if str(r["permutation_exact"]) == "True" else "random"
        parts.append(f"{r['model']}: p = {r['auroc_p']:.3g} (null median "
                     f"{r['auroc_null_median']:.3f}; {int(r['n_permutations'])} {kind} "
                     f"permutations of {int(r['n_runs_permuted'])} runs; smallest attainable "
                     f"p ≈ {r.get('p_floor', r['p_resolution']):.2g})")
    return "; ".join(parts) or "n/a"


def label_sanity(inp: Inputs):
    """Per model × dataset: declared label vs share of checkpoints labelled dangerous."""
    import pandas as pd

    p = inp.predictions
    if not len(p):
        return pd.DataFrame()
    p = p[p.feature_set == inp.monitor_set].drop_duplicates(["model", "dataset", "seed", "step"])
    if inp.step0 == "exclude":
        p = p[p.step != 0]
    rows = []
    for (model, dataset), g in p.groupby(["model", "dataset"], sort=True):
        known = g[g.dangerous.notna()]
        n_dan = int((known.dangerous == 1).sum())
        declared = str(g.label.iloc[0])
        warn = ""
        if declared == "benign" and n_dan:
            warn = "declared benign but labelled dangerous"
        elif declared == "dangerous" and len(known) and not n_dan:
            warn = "declared dangerous but never labelled dangerous"
        rows.append({"model": model, "dataset": dataset, "role": str(g.role.iloc[0]),
                     "declared": declared, "n_runs": int(g.seed.nunique()),
                     "n_checkpoints": len(known), "n_dangerous": n_dan,
                     "share_dangerous": n_dan / len(known) if len(known) else np.nan,
                     "label_method": _method(g.iloc[0]), "warning": warn})
    return pd.DataFrame(rows)


def warnings_section(inp: Inputs, sanity) -> list[str]:
    """Everything that makes the headline easy to misread, first thing in the report."""
    out = []
    for s in inp.layer_selection:
        if not s.get("discriminated", True):
            out.append(f"Layer selection for {s['model']}: {s['reason']}.")
    if len(sanity):
        for r in sanity[sanity.warning != ""].to_dict("records"):
            out.append(f"Labels of {r['model']}/{r['dataset']}: {r['warning']} "
                       f"({r['n_dangerous']}/{r['n_checkpoints']} checkpoints, "
                       f"{r['label_method']}).")
    m = headline_metrics(inp)
    if len(m) and "auroc_p" in m:
        rows = m[(m.feature_set == inp.monitor_set) & (m.dataset == "pooled")]
        for r in rows.to_dict("records"):
            if not np.isfinite(r.get("auroc_p", np.nan)) or r["auroc_p"] <= 0.05:
                continue
            floor = r.get("p_floor", np.nan)
            why = (f"; this test cannot go below p ≈ {floor:.2g}: too few runs (add seeds or "
                   "datasets) or permutations" if np.isfinite(floor) and floor > 0.05 else "")
            out.append(f"{r['model']} {r['protocol']}: AUROC {r['auroc']:.3f} is not "
                       f"distinguishable from chance (permutation p = {r['auroc_p']:.3g}, "
                       f"null median {r['auroc_null_median']:.3f}{why}).")
    return (["## Read this first", ""] + [f"- ⚠ {w}" for w in out] + [""]) if out else []


def headline_section(inp: Inputs, pooled) -> list[str]:
    """The monitor's pooled FNR/FPR/AUROC beside the paper's, with n, label method and p."""
    lines = ["## Headline", "",
             "| quantity | paper | this run | sample | labels | chance baseline |",
             "|---|---|---|---|---|---|",
             f"| PC1 share of final-drift variance | {_pct(PAPER['pc1_explained'])} | "
             f"{_pct(inp.pca['pc1_explained'])} | {inp.pca['n_runs']} calibration runs of "
             f"{', '.join(inp.pca['models'])} | — | — |"]
    mon = pooled[(pooled.feature_set == inp.monitor_set) & pooled.headline]
    for r in mon.to_dict("records"):
        name = "leave-one-perturbation-out" if r["protocol"] == "lopo" else "held-out datasets"
        sample, method = _runs(r), _method(r)
        lines += [f"| FNR, {name} | {_pct(PAPER['fnr'])} | {_ci(r, 'fnr')} | "
                  f"{r['n_dangerous']} dangerous checkpoints ({_runs(r)}) | {method} | — |",
                  f"| FPR, {name} | {_pct(PAPER['fpr'])} | {_ci(r, 'fpr')} | "
                  f"{r['n_benign']} benign checkpoints ({_runs(r)}) | {method} | — |",
                  f"| AUROC, {name} | {PAPER['auroc']:.3f} | {_ci(r, 'auroc', pct=False)} | "
                  f"{sample} | {method} | {_perm(inp, r['protocol'])} |"]
    excluded = int(mon.n_excluded_nan.sum()) if len(mon) else 0
    notes = {str(r["ci_note"]) for r in mon.to_dict("records")
             if isinstance(r.get("ci_note"), str) and r["ci_note"]}
    lines += ["", f"Intervals: {interval_method(inp.bootstrap)}; an interval is missing where a "
              "run class has fewer than two runs" + (f" ({'; '.join(sorted(notes))})"
                                                     if notes else "") + ". "
              f"Step 0 (the base model, drift 0 by definition) is {inp.step0}d from every "
              "metric (monitor.step0; the paper does not say; both are in the step-0 table "
              "below and in metrics.csv). Chance baseline: run labels permuted within the "
              "protocol (LOPO: among calibration runs; held-out: calibration runs among "
              "themselves and held-out runs among themselves), the monitor refitted and "
              "rescored; p is one-sided (null ≥ observed). Checkpoints with a NaN EM rate are "
              f"excluded from every metric and counted: {excluded} in the {inp.monitor_set} "
              "rows above."]
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
    return lines


def step0_section(inp: Inputs, pooled) -> list[str]:
    """The monitor's pooled metrics with and without step 0, side by side."""
    mon = pooled[pooled.feature_set == inp.monitor_set]
    if not len(mon):
        return []
    lines = ["", "## With and without step 0", "",
             f"Headline policy: step 0 {inp.step0}d (monitor.step0).", "",
             "| protocol | step 0 | sample | FNR | FPR | AUROC | labels |",
             "|---|---|---|---|---|---|---|"]
    for r in mon.sort_values(["protocol", "step0"]).to_dict("records"):
        lines.append(f"| {r['protocol']} | {r['step0']}d | {_runs(r)} | {_ci(r, 'fnr')} | "
                     f"{_ci(r, 'fpr')} | {_ci(r, 'auroc', pct=False)} | {_method(r)} |")
    return lines


def label_sanity_section(inp: Inputs, sanity) -> list[str]:
    """Declared label vs the share of checkpoints the behavioural labels call dangerous."""
    if not len(sanity):
        return []
    lines = ["", "## Label sanity", "",
             f"Share of checkpoints (step 0 {inp.step0}d) whose EM rate is above the threshold, "
             "next to the label the config declares for the dataset. A declared-benign dataset "
             "labelled dangerous, or a declared-dangerous one never, means the labels (or the "
             "threshold) do not measure what the dataset was chosen for.", "",
             "| model | dataset | role | declared | labelled dangerous | labels | check |",
             "|---|---|---|---|---|---|---|"]
    for r in sanity.to_dict("records"):
        check = f"⚠ {r['warning']}" if r["warning"] else "ok"
        lines.append(f"| {r['model']} | {r['dataset']} | {r['role']} | {r['declared']} | "
                     f"{r['n_dangerous']}/{r['n_checkpoints']} ({_pct(r['share_dangerous'])}; "
                     f"{r['n_runs']} runs) | {r['label_method']} | {check} |")
    return lines


def layer_selection_section(inp: Inputs) -> list[str]:
    """Which layer each model uses, by which selector, and whether it discriminated."""
    if not inp.layer_selection:
        return []
    lines = ["", "## Layer selection", "",
             "| model | layer | selector | discriminated | how |", "|---|---|---|---|---|"]
    for s in inp.layer_selection:
        ok = "yes" if s.get("discriminated", True) else "⚠ no (tie broken)"
        lines.append(f"| {s['model']} | {s['layer']} | {s['selector']} | {ok} | "
                     f"{s.get('reason', '')} |")
    return lines


def ablation_section(inp: Inputs, pooled) -> list[str]:
    """Every feature set under the same protocol; controls that beat the monitor are flagged."""
    rows = pooled[pooled.headline]
    lines = ["", "## Feature-set ablation (pooled over models)", "",
             f"Step 0 {inp.step0}d; intervals are run-level.", "",
             "| feature set | protocol | sample | NaN EM excluded | FNR | FPR | AUROC | labels |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows.to_dict("records"):
        lines.append(f"| {r['feature_set']} | {r['protocol']} | {_runs(r)} | "
                     f"{r['n_excluded_nan']} | {_ci(r, 'fnr')} | {_ci(r, 'fpr')} | "
                     f"{_ci(r, 'auroc', pct=False)} | {_method(r)} |")
    mon = rows[rows.feature_set == inp.monitor_set].set_index("protocol").auroc
    controls = rows[rows.feature_set.isin(["semantic7", "random7"])]
    for r in controls.to_dict("records"):
        if r["protocol"] in mon and np.isfinite(r["auroc"]) and r["auroc"] > mon[r["protocol"]]:
            lines.append(f"\n⚠ The control set {r['feature_set']} ranks checkpoints better "
                         f"({r['protocol']} AUROC {r['auroc']:.3f}) than {inp.monitor_set} "
                         f"({mon[r['protocol']]:.3f}): the alignment traits add nothing "
                         "measurable here.")
    return lines


def alarm_section(inp: Inputs) -> list[str]:
    """Step-aware alarm: dangerous runs alarmed early, benign runs false-alarmed."""
    lines = ["", "## Step-aware alarm", "",
             f"Alarm when P(EM > threshold) exceeds {inp.alarm_threshold:g} (P from the LOPO "
             "residual spread). Counts are runs.", "",
             "| model | protocol | dangerous runs alarmed | median first-alarm step | "
             "alarm at or before first dangerous step | benign runs with a false alarm | "
             "labels |", "|---|---|---|---|---|---|---|"]
    al = inp.alarms[inp.alarms.feature_set == inp.monitor_set] if len(inp.alarms) else inp.alarms
    methods = {}
    if len(inp.predictions) and "label_method" in inp.predictions:
        methods = inp.predictions.groupby("model").label_method.first().to_dict()
    for (model, protocol), g in (al.groupby(["model", "protocol"]) if len(al) else []):
        dan = g[g.ever_dangerous.astype(str) == "True"]
        ben = g[g.ever_dangerous.astype(str) == "False"]
        early = dan[dan.alarmed & (dan.first_alarm_step <= dan.first_dangerous_step)]
        med = dan.first_alarm_step.median()
        lines.append(f"| {model} | {protocol} | {int(dan.alarmed.sum())}/{len(dan)} | "
                     f"{'n/a' if not np.isfinite(med) else f'{med:g}'} | "
                     f"{len(early)}/{len(dan)} | {int(ben.alarmed.sum())}/{len(ben)} | "
                     f"{methods.get(model, 'label method not recorded')} |")
    return lines


def stress_section(inp: Inputs) -> list[str]:
    """Stress datasets and transfer, with the same run-level intervals."""
    lines = ["", "## Stress tests", ""]
    st = inp.stress
    if len(st) and "dataset" in st:
        st = st[st.dataset == "pooled"]
        lines += ["| model | monitor | condition | sample | FNR | FPR | AUROC | labels |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in st.to_dict("records"):
            lines.append(f"| {r['model']} | {r['monitor']} | {r['condition']} | {_runs(r)} | "
                         f"{_ci(r, 'fnr')} | {_ci(r, 'fpr')} | {_ci(r, 'auroc', pct=False)} | "
                         f"{_method(r)} |")
    else:
        lines.append("No stress datasets or stress models in this config.")
    if inp.variants:
        lines += ["", f"Training variants ({', '.join(inp.variants)}), scored by the base "
                  "model's calibrated monitor: `results/report/stress/summary.md` and the "
                  "`variant_drift` figure (rule stress_report)."]
    return lines


def summary_markdown(inp: Inputs, pooled) -> str:
    """summary.md: warnings first, then headline, step 0, labels, layers, ablation, alarm."""
    sanity = label_sanity(inp)
    lines = ["# emtrait report", "",
             "Every number below is computed from this workflow's outputs; the paper column is "
             "arXiv 2606.07631's headline result, which DESIGN.md quotes for its LOPO and "
             "held-out validation together, so it is shown beside both.", ""]
    lines += warnings_section(inp, sanity)
    lines += headline_section(inp, pooled)
    lines += step0_section(inp, pooled)
    lines += label_sanity_section(inp, sanity)
    lines += layer_selection_section(inp)
    lines += layer_question_section(inp.layers, inp.layer_selection)
    lines += ablation_section(inp, pooled)
    lines += alarm_section(inp)
    lines += stress_section(inp)
    lines += ["", "## Figures", ""] + [f"- `figures/{n}.png` (`.svg`)" for n in FIGURES]
    return "\n".join(lines) + "\n"


def build(inp: Inputs, *, summary: Path, ablation: Path, figure_files: list[Path],
          provenance: dict, sections: str = "") -> None:
    """Write each requested figure (<name>.png|.svg), ablation.csv and summary.md.

    `sections`: markdown of other stages' report sections (the screen's), appended to summary.md.
    """
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
    text = summary_markdown(inp, pooled) + (f"\n{sections}" if sections else "")
    text += ("\n<!-- " + " ".join(f"{k}={v}" for k, v in sorted(provenance.items())) + " -->\n")
    write_text(summary, text)
