"""Monitor-side views of a cube: activation drift per checkpoint and the calibration split.

The cube itself is opened and turned into checkpoint rows by `emtrait.cube.read`.
"""

from __future__ import annotations

import numpy as np

from emtrait.cube.read import Checkpoints
from emtrait.errors import DataError


def run_activation_drift(ds, cp: Checkpoints) -> np.ndarray:
    """Prompt-mean activation drift per row, rescaled by the run's norm0: (row, hidden).

    The trait drift's formula (emtrait.drift) applied to the raw activation instead of its
    projections: the data-driven baselines see the same normalisation and origin.
    """
    from emtrait.drift import drift, normalise

    act = ds["activation"]
    norm0 = ds["norm0"].values.astype("float64")
    out = np.empty((len(cp.index), act.sizes["hidden"]))
    cache: dict[tuple[int, int], np.ndarray] = {}
    for r, (d, s, t) in enumerate(cp.index):
        if (d, s) not in cache:
            mean = act[d, s].values.astype("float64").mean(axis=1)  # (step, hidden)
            cache[(d, s)] = drift(normalise(mean, norm0[d, s]))
        out[r] = cache[(d, s)][t]
    return out


def calibration_and_heldout(cp: Checkpoints, expected_heldout: list[str] | None = None,
                            source: str = "cube") -> tuple[list[str], list[str]]:
    """Calibration and held-out dataset names, with the bad-input checks of the monitor."""
    rows = cp.rows
    calib = sorted(rows.loc[rows.role == "calibration", "dataset"].unique())
    held = sorted(rows.loc[rows.role == "heldout", "dataset"].unique())
    if len(calib) < 2:
        raise DataError(f"{source}: {len(calib)} calibration dataset(s) with checkpoints "
                        f"({calib}); leave-one-perturbation-out needs at least two — mark more "
                        "datasets `role: calibration` in the config")
    labelled = rows[(rows.role == "calibration") & ~rows.em_missing]
    classes = sorted(labelled.dangerous.unique())
    if len(classes) < 2:
        kind = "dangerous" if classes == [1.0] else "benign"
        raise DataError(f"{source}: every calibration checkpoint with an EM rate is {kind} "
                        "; the monitor needs "
                        "both classes — add a calibration dataset of the other kind")
    if expected_heldout:
        absent = sorted(set(expected_heldout) - set(held))
        if absent:
            raise DataError(f"{source}: held-out datasets {absent} (config role: heldout) have no "
                            "checkpoints in the cube; rebuild the cube with their runs or change "
                            "their role")
    return calib, held
