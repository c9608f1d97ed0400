"""Training variants of one base model, scored by that model's calibrated monitor.

A variant (config `variants`) trains the same base model with other settings (full finetuning,
another LoRA rank, a longer run) or from another run's final weights (a misaligned start). Its
runs are measured with the base model's directions and scored by the base model's monitor, which
is never refitted: the question is whether a monitor calibrated on one recipe transfers.

The variant cube (`results/stress/cube/{model}.zarr`) holds every variant's runs on one grid:
`drift(variant, dataset, seed, step, trait)` measured from each run's own step 0 (its start), and
`drift_from_base(...)` measured from the base model's step 0 in the base model's norm0 units
(equal to `drift` for runs that start from the base model). Coordinate `start_from(variant)`
names the source run of a misaligned start ('base' otherwise).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from emtrait.errors import StoreError

if TYPE_CHECKING:
    import pandas as pd
    import xarray as xr

    from emtrait.config import Config
    from emtrait.monitor.artifact import Monitor

REFERENCES = {"own_start": "drift", "base": "drift_from_base"}
KEYS = ["model", "variant", "reference", "dataset", "seed", "step"]


def start_label(cfg: Config, variant: str) -> str:
    """'base', or 'variant:dataset:seed' of the run a misaligned start trains from."""
    start = cfg.variants[variant].start_from if variant in cfg.variants else None
    return "base" if start is None else f"{start.variant}:{start.dataset}:{start.seed}"


def _drift_from_base(cube: xr.Dataset, reference: Path | None) -> xr.DataArray:
    """Projections of every run relative to the base model's step 0, in its norm0 units."""
    from emtrait.drift import normalise
    from emtrait.stores import open_store

    if reference is None:
        return cube["drift"]
    ref = open_store(reference)
    if list(map(str, ref["trait"].values)) != list(map(str, cube["trait"].values)):
        raise StoreError(f"{reference} was measured on other traits than the variant's runs; "
                         "both must use the base model's directions")
    norm0 = float(ref.attrs["norm0"])
    base0 = normalise(ref["projection"].isel(step=0).values.astype(np.float64), norm0)
    return normalise(cube["projection"], norm0) - base0


def variant_cube(cfg: Config, model: str, stores: dict[str, list[Path]],
                 em_files: dict[str, list[Path]], references: dict[str, Path]) -> xr.Dataset:
    """One Dataset of every variant's runs of `model`, with a leading `variant` dimension.

    `references[v]` is the measure.zarr of the run at the root of v's chain of starting points
    (its step 0 is the base model); variants starting from the base model have none.
    """
    import xarray as xr

    from emtrait.cube.merge import merge_runs

    if not stores:
        raise StoreError(f"no variant runs of model {model} to merge; declare `variants` in the "
                         "config")
    parts = {}
    for v, runs in stores.items():
        part = merge_runs(cfg, model, runs, em_files.get(v, []))
        part = part.drop_vars([n for n in ("activation",) if n in part])
        part["drift_from_base"] = _drift_from_base(part, references.get(v))
        parts[v] = part
    known = list(cfg.datasets)
    datasets = sorted({str(d) for p in parts.values() for d in p["dataset"].values},
                      key=known.index)
    seeds = sorted({int(s) for p in parts.values() for s in p["seed"].values})
    steps = sorted({int(t) for p in parts.values() for t in p["step"].values})
    first = next(iter(parts.values()))
    aligned = [p.drop_vars(["label", "role"]).reindex(dataset=datasets, seed=seeds, step=steps)
               .expand_dims(variant=[v]) for v, p in parts.items()]
    cube = xr.concat(aligned, dim="variant", data_vars="all", coords="minimal",
                     compat="override", join="outer")
    cube["direction"] = first["direction"]  # one base model: one set of directions

    def text(values) -> np.ndarray:
        return np.array([str(x) for x in values], dtype=object)

    cube = cube.assign_coords(
        variant=text(parts), dataset=text(datasets),
        label=("dataset", text(cfg.datasets[d].label for d in datasets)),
        role=("dataset", text(cfg.datasets[d].role for d in datasets)),
        start_from=("variant", text(start_label(cfg, v) for v in parts)),
    )
    cube.attrs = {**first.attrs, "variants": list(parts),
                  "training": json.dumps({v: cfg.training_for(model, v).model_dump(mode="json")
                                          for v in parts}),
                  "drift_reference": "drift: from each run's own step 0; drift_from_base: from "
                  "the base model's step 0, in its norm0 units"}
    return cube


def write_variant_cube(cube: xr.Dataset, out: str | Path) -> None:
    """Write the variant cube whole or not at all."""
    from emtrait.stores import write_store

    write_store(cube, out)


def score_variants(cube: xr.Dataset, monitor: Monitor) -> pd.DataFrame:
    """Per checkpoint of every variant run: the base monitor's prediction from each reference
    start ('own_start' always; 'base' as well for misaligned starts)."""
    import pandas as pd

    from emtrait.cube.read import checkpoints

    model = str(cube.attrs["model"])
    if monitor.meta["model"] != model:
        raise StoreError(f"the monitor was calibrated on model {monitor.meta['model']!r}; the "
                         f"variant cube holds runs of {model!r}. A variant is scored by its own "
                         "base model's monitor")
    frames = []
    for v, start in zip(map(str, cube["variant"].values), map(str, cube["start_from"].values),
                        strict=True):
        sub = cube.sel(variant=v)
        for reference, var in REFERENCES.items():
            if reference == "base" and start == "base":
                continue  # the same numbers as own_start
            cp = checkpoints(sub.assign(drift=sub[var]))
            missing = sorted(set(monitor.traits) - set(cp.traits))
            if missing:
                raise StoreError(f"variant cube of {model} lacks the monitor's traits {missing}")
            cols = [cp.traits.index(t) for t in monitor.traits]
            out = monitor.predict(cp.drift[:, cols], cp.rows.step.values)
            frame = cp.rows.copy()
            frame.insert(1, "variant", v)
            frame.insert(2, "reference", reference)
            frame["start_from"] = start
            frame["drift_norm"] = np.linalg.norm(cp.drift[:, cols], axis=1)
            for k, val in out.columns().items():
                frame[k] = val
            frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def run_alarms(pred: pd.DataFrame, condition: list[str]) -> pd.DataFrame:
    """First-alarm step per run, by `emtrait.monitor.protocol.first_alarm`, keyed by the
    condition columns (e.g. variant, reference) instead of feature set and protocol."""
    from emtrait.monitor.protocol import first_alarm

    a, b = condition
    frame = pred.rename(columns={a: "feature_set", b: "protocol"})
    return first_alarm(frame).rename(columns={"feature_set": a, "protocol": b})


def trajectories(cube: xr.Dataset, traits: list[str], source: str) -> pd.DataFrame:
    """‖drift‖ over the monitor's traits per run and step (for the stress figure)."""
    import pandas as pd

    from emtrait.cube.read import checkpoints

    subs = ([(str(v), cube.sel(variant=v)) for v in cube["variant"].values]
            if "variant" in cube.dims else [("default", cube)])
    frames = []
    for v, sub in subs:
        cp = checkpoints(sub)
        cols = [cp.traits.index(t) for t in traits]
        frames.append(cp.rows[["model", "dataset", "seed", "step", "label", "role",
                               "dangerous"]].assign(variant=v, source=source,
                                                    drift_norm=np.linalg.norm(
                                                        cp.drift[:, cols], axis=1)))
    return pd.concat(frames, ignore_index=True)
