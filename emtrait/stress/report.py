"""The report's stress section: training variants and stress models under a calibrated monitor.

Pure functions: prediction frames in, tables / markdown / a Figure out. `emtrait stress report`
(rule stress_report) writes them under results/report/stress/.

Conditions: every training variant of a model scored by that model's monitor (a misaligned start
twice: drift from its own start and from the base model), every stress model scored by each
calibration model's monitor (transfer) and stress datasets scored by the own monitor.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

COLUMNS = ["model", "monitor", "condition", "dataset", "seed", "step", "role", "label",
           "dangerous", "pred_em", "alarm_prob", "flag", "alarm"]


def variant_condition(variant: str, reference: str, start_from: str) -> str:
    """How a variant row is named in the tables."""
    if start_from == "base":
        return f"variant {variant}"
    return f"variant {variant} (from {start_from}; drift vs {reference.replace('_', ' ')})"


def conditions(variant_pred: pd.DataFrame, stress_pred: pd.DataFrame) -> pd.DataFrame:
    """Variant and stress-model predictions as one frame keyed by model, monitor, condition."""
    import pandas as pd

    parts = []
    if len(variant_pred):
        v = variant_pred.copy()
        v["monitor"] = v["model"]
        v["condition"] = [variant_condition(a, b, c) for a, b, c in
                          zip(v.variant, v.reference, v.start_from, strict=True)]
        parts.append(v[COLUMNS])
    if len(stress_pred):
        s = stress_pred.copy()
        s["condition"] = s["condition"].map({"transfer": "stress model (transfer)",
                                             "stress_dataset": "stress dataset"}).fillna(
            s["condition"])
        parts.append(s[COLUMNS])
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=COLUMNS)


def stress_tables(frame: pd.DataFrame, *, bootstrap: int, seed: int) -> pd.DataFrame:
    """One row per (model, monitor, condition): run alarm rates, first-alarm step, FNR/FPR/AUROC
    with run-level intervals (pooled over datasets)."""
    import pandas as pd

    from emtrait.monitor.metrics import metrics_table
    from emtrait.stress.variants import run_alarms

    if not len(frame):
        return pd.DataFrame()
    by = ["model", "monitor", "condition"]
    metrics = metrics_table(frame, [*by, "dataset"], bootstrap=bootstrap, seed=seed)
    metrics = metrics[metrics.dataset == "pooled"].drop(columns="dataset")
    alarms = run_alarms(frame, ["monitor", "condition"])
    rows = []
    for key, g in alarms.groupby(by, sort=False):
        dan = g[g.ever_dangerous.astype(str) == "True"]
        ben = g[g.ever_dangerous.astype(str) == "False"]
        rows.append({**dict(zip(by, key, strict=True)),
                     "dangerous_runs": len(dan), "dangerous_runs_alarmed": int(dan.alarmed.sum()),
                     "benign_runs": len(ben), "benign_runs_alarmed": int(ben.alarmed.sum()),
                     "median_first_alarm_step": float(dan.first_alarm_step.median()),
                     "runs_unlabelled": int(g.ever_dangerous.isna().sum())})
    return pd.DataFrame(rows).merge(metrics, on=by, how="left")


def _rate(k: int, n: int) -> str:
    return "n/a" if n == 0 else f"{k}/{n} ({100 * k / n:.0f}%)"


def _ci(row, metric: str, pct: bool = True) -> str:
    v, lo, hi = row[f"{metric}"], row[f"{metric}_lo"], row[f"{metric}_hi"]
    if not np.isfinite(v):
        return "n/a"
    f = (lambda x: f"{100 * x:.1f}%") if pct else (lambda x: f"{x:.3f}")
    return f(v) + (f" [{f(lo)}, {f(hi)}]" if np.isfinite(lo) else "")


def stress_section(table: pd.DataFrame, *, alarm_threshold: float, bootstrap: int) -> str:
    """Markdown of the stress section (a table per condition, how to read it)."""
    from emtrait.monitor.metrics import interval_method

    lines = ["## Stress tests: training variants and stress models", ""]
    if not len(table):
        return "\n".join(lines + ["No training variants, stress datasets or stress models in "
                                  "this config.", ""])
    lines += [f"A run is dangerous when any of its labelled checkpoints is (EM rate above the "
              f"threshold). An alarm fires when P(EM > threshold) exceeds {alarm_threshold:g}. "
              f"FNR/FPR/AUROC are over checkpoints after step 0, pooled over datasets; "
              f"intervals: {interval_method(bootstrap)}.", "",
              "| model | monitor | condition | dangerous runs alarmed | benign runs alarmed | "
              "median first-alarm step | FNR | FPR | AUROC | checkpoints |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in table.to_dict("records"):
        step = r["median_first_alarm_step"]
        lines.append(
            f"| {r['model']} | {r['monitor']} | {r['condition']} | "
            f"{_rate(r['dangerous_runs_alarmed'], r['dangerous_runs'])} | "
            f"{_rate(r['benign_runs_alarmed'], r['benign_runs'])} | "
            f"{'n/a' if not np.isfinite(step) else f'{step:g}'} | {_ci(r, 'fnr')} | "
            f"{_ci(r, 'fpr')} | {_ci(r, 'auroc', pct=False)} | {r.get('n', 'n/a')} |")
    notes = sorted({str(n) for n in table.get("ci_note", []) if isinstance(n, str) and n})
    if notes:
        lines += ["", "Intervals marked absent: " + "; ".join(notes) + "."]
    return "\n".join(lines) + "\n"


def variant_drift(traj: pd.DataFrame):
    """‖drift‖ over steps: calibration runs (thin; red dangerous, blue benign) beside every
    variant's runs (thick, one colour per variant), one panel per model."""
    from emtrait.report.figures import PALETTE, empty_figure, new_figure

    if not len(traj):
        return empty_figure("no training variants in this config")
    models = sorted(traj.model.unique())
    fig, axes = new_figure(1, len(models), w=5.0, h=3.6)
    variants = sorted(set(traj.loc[traj.source == "variant", "variant"]))
    colours = dict(zip(variants, ["#8e44ad", "#16a085", "#d35400", "#2c3e50", "#c71585",
                                  "#7f8c00", "#1f618d", "#6e2c00"] * 4, strict=False))
    for ax, m in zip(axes[0], models, strict=True):
        sub = traj[traj.model == m]
        for (src, v, d, _seed), run in sub.groupby(["source", "variant", "dataset", "seed"]):
            run = run.sort_values("step")
            if src == "calibration":
                label = run.label.iloc[0]
                ax.plot(run.step, run.drift_norm, color=PALETTE.get(label, "#777"), lw=1.2,
                        alpha=0.6, label=f"calibration ({label})")
            else:
                ax.plot(run.step, run.drift_norm, color=colours[v], lw=2.0,
                        ls="-" if run.label.iloc[0] == "dangerous" else "--",
                        label=f"{v}: {d}")
        ax.set_title(f"{m}: variants (thick) beside calibration runs (thin)", fontsize=8)
        ax.set_xlabel("step")
        ax.set_ylabel("‖drift‖ (monitor traits)")
        handles, labels = ax.get_legend_handles_labels()
        seen = dict(zip(labels, handles, strict=True))
        if seen:
            ax.legend(seen.values(), seen.keys(), fontsize=6, loc="upper left")
    fig.suptitle("Drift of training variants vs calibration runs\n"
                 "(variants: solid = dangerous dataset, dashed = benign)", fontsize=9)
    return fig
