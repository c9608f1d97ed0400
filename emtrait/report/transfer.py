"""The report's transfer section: per transferred model, how much of the calibration held.

Reads the `transfer.csv` tables of `emtrait monitor transfer-evaluate` (one per model with
`monitor_from`) and sets zero-shot and few-run AUROC/FNR/FPR beside the model's own LOPO.
"""

from __future__ import annotations

from pathlib import Path

CONDITION_NAMES = {
    "zero_shot": "transferred, zero-shot",
    "few_run_scale": "transferred + 2-run drift scale",
    "few_run_threshold": "transferred + 2-run threshold",
    "own_lopo": "own calibration (LOPO)",
}


def _cell(v: float, lo: float, hi: float) -> str:
    return "n/a" if v != v else f"{v:.3f} [{lo:.3f}, {hi:.3f}]"


def transfer_section(tables: list[Path]) -> str:
    """Markdown of the transfer section (empty when no model has a transferred monitor)."""
    import pandas as pd

    if not tables:
        return ""
    frame = pd.concat([pd.read_csv(p) for p in tables], ignore_index=True)
    pooled = frame[frame.dataset.eq("pooled")]
    lines = ["## Transferred monitors", "",
             "Each model below has no monitor of its own grid: it got another model's "
             "calibrated monitor (`monitor_from`, `emtrait monitor transfer`), with its own "
             "directions and l*. Every one of its checkpoints is held out from that monitor. "
             "Intervals: run-level bootstrap; p: run-label permutation test of the AUROC.", "",
             "| model | from | monitor | AUROC | FNR | FPR | p | runs |",
             "|---|---|---|---|---|---|---|---|"]
    for r in pooled.itertuples():
        lines.append(
            f"| {r.model} | {r.source_model} | {CONDITION_NAMES.get(r.condition, r.condition)} "
            f"| {_cell(r.auroc, r.auroc_lo, r.auroc_hi)} | {_cell(r.fnr, r.fnr_lo, r.fnr_hi)} "
            f"| {_cell(r.fpr, r.fpr_lo, r.fpr_hi)} | {r.auroc_p:.3g} | {r.n_runs} |")
    return "\n".join(lines) + "\n"
