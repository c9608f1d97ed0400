"""Thresholds users don't have to guess: where the calibration datasets' screens fall.

The workflow screens every calibration dataset (known outcome: dangerous or benign) and rule
`screen_calibration` stores their dataset scores beside the monitor, in
`results/monitor/{model}/screen_calibration.json` (a file of its own, so screening a new dataset
never refits the monitor). The gate finds it beside the monitor it is given, says where a
dataset falls among them and takes its default `--fail-above` from them:

    threshold = midpoint between the highest benign and the lowest dangerous dataset score
                (the highest benign score when they do not separate)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from emtrait.errors import DataError

FILE = "screen_calibration.json"
THRESHOLD_RULE = ("midpoint between the highest benign and the lowest dangerous calibration "
                  "dataset's score (the highest benign score when they do not separate)")


def calibration_path(monitor: str | os.PathLike) -> Path:
    """Where the gate looks for the calibration screens of a monitor: beside it."""
    return Path(monitor).with_name(FILE)


def derive_threshold(datasets: list[dict[str, Any]]) -> float:
    """The default --fail-above from calibration datasets' {label, mean}."""
    benign = [d["mean"] for d in datasets if d["label"] == "benign"]
    dangerous = [d["mean"] for d in datasets if d["label"] == "dangerous"]
    if not benign or not dangerous:
        raise DataError(f"a screen threshold needs dangerous and benign calibration datasets; "
                        f"got {len(dangerous)} dangerous and {len(benign)} benign")
    hi, lo = max(benign), min(dangerous)
    return (hi + lo) / 2 if lo > hi else hi


def build_calibration(summaries: list[dict[str, Any]], labels: dict[str, str],
                      monitor: str, provenance: dict[str, Any]) -> dict[str, Any]:
    """The calibration file's content from the calibration datasets' screen summaries."""
    rows = []
    modes = {s["mode"] for s in summaries}
    if len(modes) != 1:
        raise DataError(f"calibration screens mix modes {sorted(modes)}; screen them in one mode")
    for s in summaries:
        name = s["dataset"]
        if name not in labels or labels[name] not in ("dangerous", "benign"):
            raise DataError(f"dataset {name!r} has no dangerous/benign calibration label in the "
                            "config; pass only calibration datasets' screens")
        risk = s.get("risk") or {}
        rows.append({"dataset": name, "label": labels[name], "mean": risk.get("mean"),
                     "low": risk.get("low"), "high": risk.get("high"),
                     "n_scored": s["n_scored"]})
    return {"monitor": monitor, "mode": modes.pop(), "training": summaries[0].get("training"),
            "datasets": rows, "threshold": derive_threshold(rows),
            "threshold_rule": THRESHOLD_RULE, **provenance}


def read_calibration(monitor: str | os.PathLike) -> dict[str, Any] | None:
    """The calibration file beside a monitor, or None when there is none."""
    path = calibration_path(monitor)
    if not path.is_file():
        return None
    from emtrait.errors import ConfigError, check_number
    from emtrait.stores import artifact_error, read_json_artifact

    calib = read_json_artifact(path, rule="screen_calibration", what="screen calibration",
                               keys=("datasets", "threshold", "threshold_rule"))
    try:  # the gate's default threshold: NaN would pass every dataset
        check_number(calib["threshold"], "its threshold")
    except ConfigError as e:
        raise artifact_error(path, str(e), "screen_calibration") from None
    return calib


def place(score: float, calibration: dict[str, Any]) -> str:
    """"above all 3 benign calibration datasets, below 1 of 3 dangerous"."""
    parts = []
    for label in ("benign", "dangerous"):
        means = [d["mean"] for d in calibration["datasets"] if d["label"] == label]
        above = sum(score > m for m in means)
        if above == len(means):
            parts.append(f"above all {len(means)} {label}")
        elif above == 0:
            parts.append(f"below all {len(means)} {label}")
        else:
            parts.append(f"above {above} of {len(means)} {label} (below {len(means) - above})")
    return ", ".join(parts) + " calibration datasets"
