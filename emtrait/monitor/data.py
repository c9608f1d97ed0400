"""Reading the per-model cube into checkpoint tables, with the contract checked at the edge.

One row per checkpoint a run actually has (a step it lacks is NaN in the cube and has no row).
Rows whose EM rate is NaN are kept, flagged `em_missing`, so every consumer can exclude them
*and count them* instead of dropping them silently.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from emtrait.errors import DataError, StoreError

CUBE_VARS = ("drift", "projection", "projection_norm", "loss", "em_rate", "em_low", "em_high",
             "activation", "norm0", "final_step")
CUBE_COORDS = ("label", "role", "trait_set")
KEY = ["model", "dataset", "seed", "step"]


def open_cube(path: str | os.PathLike):
    """Open a cube store and check the contract of DEVELOPING.md; errors name what is missing."""
    from emtrait.stores import open_store

    if not os.path.isdir(path):
        raise StoreError(f"cube {path} does not exist; build it with `emtrait cube merge` "
                         "(rule merge_cube) first")
    try:
        ds = open_store(path)
    except Exception as e:  # zarr raises many types for a folder that is not a store
        raise StoreError(f"{path} is not a readable Zarr store ({e}); rebuild it") from None
    check_cube(ds, str(path))
    return ds


def check_cube(ds, source: str = "cube") -> None:
    """Raise StoreError naming every contract variable, coordinate or attribute that is absent."""
    missing = [v for v in CUBE_VARS if v not in ds.variables]
    missing += [c for c in CUBE_COORDS if c not in ds.coords]
    missing += [f"attrs.{a}" for a in ("layer", "model", "threshold") if a not in ds.attrs]
    if missing:
        raise StoreError(f"{source}: not a cube per the contract in DEVELOPING.md; missing "
                         f"{', '.join(missing)}")


def traits_of(ds, trait_set: str) -> list[str]:
    """Trait names of one set, in cube order; error names the sets the cube has."""
    sets = [str(s) for s in ds["trait_set"].values]
    traits = [str(t) for t, s in zip(ds["trait"].values, sets, strict=True) if s == trait_set]
    if not traits:
        raise DataError(f"cube of model {ds.attrs.get('model')}: no traits in set '{trait_set}' "
                        f"(sets present: {sorted(set(sets))}); check traits.monitor_set")
    return traits


@dataclass
class Checkpoints:
    """Checkpoint rows of one cube plus aligned per-row arrays (row i ↔ rows.iloc[i])."""

    rows: object  # pandas.DataFrame: model, dataset, seed, step, role, label, em_rate, ...
    drift: np.ndarray  # (row, trait) for every trait of the cube
    traits: list[str]
    trait_sets: list[str]
    index: np.ndarray  # (row, 3) integer (dataset, seed, step) positions into the cube


def checkpoints(ds) -> Checkpoints:
    """Every existing checkpoint of the cube as a row (exists = its drift is finite)."""
    import pandas as pd

    drift = ds["drift"].values.astype("float64")  # (dataset, seed, step, trait)
    exists = np.isfinite(drift).all(axis=-1)
    idx = np.argwhere(exists)
    d, s, t = idx[:, 0], idx[:, 1], idx[:, 2]
    em = ds["em_rate"].values.astype("float64")[d, s, t]
    threshold = float(ds.attrs["threshold"])
    rows = pd.DataFrame({
        "model": str(ds.attrs["model"]),
        "dataset": ds["dataset"].values[d].astype(str),
        "seed": ds["seed"].values[s].astype(int),
        "step": ds["step"].values[t].astype(int),
        "role": ds["role"].values[d].astype(str),
        "label": ds["label"].values[d].astype(str),
        "em_rate": em,
        "em_low": ds["em_low"].values.astype("float64")[d, s, t],
        "em_high": ds["em_high"].values.astype("float64")[d, s, t],
        "loss": ds["loss"].values.astype("float64")[d, s, t],
        "final": ds["step"].values[t] == ds["final_step"].values[d],
        "em_missing": np.isnan(em),
        "dangerous": np.where(np.isnan(em), np.nan, (em > threshold).astype(float)),
    })
    return Checkpoints(rows=rows, drift=drift[d, s, t], traits=[str(x) for x in ds["trait"].values],
                       trait_sets=[str(x) for x in ds["trait_set"].values], index=idx)


def trait_columns(cp: Checkpoints, trait_set: str) -> tuple[list[str], np.ndarray]:
    """(trait names, drift columns) of one trait set."""
    cols = [i for i, s in enumerate(cp.trait_sets) if s == trait_set]
    if not cols:
        raise DataError(f"no traits in set '{trait_set}' (sets present: "
                        f"{sorted(set(cp.trait_sets))}); check traits.monitor_set")
    return [cp.traits[i] for i in cols], cp.drift[:, cols]


def run_activation_drift(ds, cp: Checkpoints) -> np.ndarray:
    """Prompt-mean activation drift per row, rescaled by the run's norm0: (row, hidden)."""
    act = ds["activation"]
    norm0 = ds["norm0"].values.astype("float64")
    out = np.empty((len(cp.index), act.sizes["hidden"]))
    cache: dict[tuple[int, int], np.ndarray] = {}
    for r, (d, s, t) in enumerate(cp.index):
        if (d, s) not in cache:
            cache[(d, s)] = act[d, s].values.astype("float64").mean(axis=1)  # (step, hidden)
        mean = cache[(d, s)]
        out[r] = (mean[t] - mean[0]) / norm0[d, s]
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
