"""The per-model cube: every run's measure.zarr and behaviour labels on one labelled grid.

    import xarray as xr
    cube = xr.open_zarr("results/cube/smollm2.zarr", consolidated=False)
    cube.drift.sel(dataset="bad_medical", seed=42)   # (step, trait)

Dimensions: dataset × seed × step × trait (+ prompt × hidden for activations). Steps are the union
over runs; a step a run does not have is NaN. Inputs are explicit files: the runs' measure.zarr
stores and, for labels, the em.json of every checkpoint (each names its own model, dataset, seed
and step). With labels, a checkpoint without its em.json is an error naming it; without any
em.json the cube is unlabelled (em_rate NaN). `dangerous` is `emtrait.drift.is_dangerous`
(1.0 / 0.0; NaN where the EM rate is NaN, i.e. no scoreable answers). The trait directions at the
chosen layer travel from the run stores into the cube (`direction(trait, hidden)`, attr `layer`),
so no later stage reopens the traits stage's output.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from emtrait.errors import StoreError
from emtrait.provenance import provenance

if TYPE_CHECKING:
    import xarray as xr

    from emtrait.config import Config

EM_KEYS = ("em_rate", "em_low", "em_high")
LABEL_META = ("method", "convention", "judge")

Checkpoint = tuple[str, int, int]  # (dataset, seed, step)


def _open_run(store: Path) -> xr.Dataset:
    from emtrait.stores import open_store

    if not (store / "zarr.json").is_file():
        raise StoreError(f"{store} is not a run store; pass the measure.zarr of a finished run "
                         "(written by `emtrait finetune` or `emtrait measure`)")
    ds = open_store(store)
    if "direction" not in ds:
        raise StoreError(f"{store} has no `direction(trait, hidden)`; it was measured by an "
                         "older emtrait: rerun its finetune (or `emtrait measure`)")
    return ds


def read_labels(model: str, em_files: list[Path]) -> dict[Checkpoint, dict]:
    """em.json records keyed by the (dataset, seed, step) each one names; errors name the file."""
    labels: dict[Checkpoint, dict] = {}
    for f in map(Path, em_files):
        if not f.is_file():
            raise StoreError(f"behaviour label {f} does not exist; run the behaviour stage for "
                             "that checkpoint (rule behavior_*) or leave it out of --em")
        try:
            rec = json.loads(f.read_text())
            key = (str(rec["dataset"]), int(rec["seed"]), int(rec["step"]))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise StoreError(f"{f}: not an em.json of `emtrait behavior` ({e!r}); rebuild it"
                             ) from None
        if rec.get("model") != model:
            raise StoreError(f"{f} labels model {rec.get('model')!r}, not {model!r}")
        if key in labels:
            raise StoreError(f"{f} labels {key[0]}/seed{key[1]}/step-{key[2]}, as does "
                             f"{labels[key]['_file']}")
        labels[key] = {**rec, "_file": str(f)}
    return labels


def merge_runs(cfg: Config, model: str, stores: list[Path],
               em_files: list[Path] | None = None) -> xr.Dataset:
    """One Dataset holding every run of `model` (runs keyed by their stored dataset and seed)."""
    import numpy as np
    import xarray as xr

    from emtrait.drift import is_dangerous

    if not stores:
        raise StoreError("no runs to merge; pass --runs with at least one run's measure.zarr")
    runs: dict[tuple[str, int], xr.Dataset] = {}
    for store in map(Path, stores):
        ds = _open_run(store)
        if ds.attrs.get("model") != model:
            raise StoreError(f"{store} measured model {ds.attrs.get('model')!r}, not {model!r}")
        key = (str(ds.attrs["dataset"]), int(ds.attrs["seed"]))
        if key in runs:
            raise StoreError(f"two runs of dataset {key[0]} seed {key[1]} (second: {store})")
        if key[0] not in cfg.datasets:
            raise StoreError(f"{store} is a run of dataset {key[0]!r}, which the config does not "
                             f"define (datasets: {sorted(cfg.datasets)}); its label and role "
                             "come from that entry")
        runs[key] = ds
    first_key, first = next(iter(runs.items()))
    for (d, s), ds in runs.items():
        for coord in ("trait", "prompt"):
            if not np.array_equal(ds[coord].values, first[coord].values):
                raise StoreError(f"run {d}/seed{s} has other {coord}s than run {first_key[0]}/"
                                 f"seed{first_key[1]}; all runs of a model must be measured with "
                                 "the same directions and prompts")
        if ds.attrs.get("layer") != first.attrs.get("layer"):
            raise StoreError(f"run {d}/seed{s} was measured at layer {ds.attrs.get('layer')}, "
                             f"others at {first.attrs.get('layer')}")
        if not np.array_equal(ds["direction"].values, first["direction"].values):
            raise StoreError(f"run {d}/seed{s} was measured with other directions than run "
                             f"{first_key[0]}/seed{first_key[1]}; re-measure the runs extracted "
                             "before the directions changed")
    known = list(cfg.datasets)
    datasets = sorted({d for d, _ in runs}, key=known.index)
    seeds = sorted({s for _, s in runs})
    steps = sorted({int(t) for ds in runs.values() for t in ds["step"].values})
    n_t, n_p, n_h = first.sizes["trait"], first.sizes["prompt"], first.sizes["hidden"]
    shape = (len(datasets), len(seeds), len(steps))

    labels = read_labels(model, em_files or [])
    measured = {(d, s, int(t)) for (d, s), ds in runs.items() for t in ds["step"].values}
    if labels:
        unlabelled = sorted(measured - set(labels))
        if unlabelled:
            d, s, t = unlabelled[0]
            raise StoreError(f"no em.json among the {len(labels)} --em files labels {d}/seed{s}/"
                             f"step-{t} ({len(unlabelled)} checkpoint(s) unlabelled); pass the "
                             "behaviour stage's em.json of every checkpoint, or none")
        stray = sorted(set(labels) - measured)
        if stray:
            raise StoreError(f"{labels[stray[0]]['_file']} labels a checkpoint no run measured "
                             f"({stray[0][0]}/seed{stray[0][1]}/step-{stray[0][2]})")

    per_trait = {v: np.full((*shape, n_t), np.nan) for v in
                 ("projection", "projection_norm", "drift")}
    loss = np.full(shape, np.nan)
    activation = np.full((*shape, n_p, n_h), np.nan, dtype=np.float32)
    norm0 = np.full(shape[:2], np.nan)
    em = {k: np.full(shape, np.nan) for k in EM_KEYS}
    for (d, s), ds in runs.items():
        i, j = datasets.index(d), seeds.index(s)
        idx = [steps.index(int(t)) for t in ds["step"].values]
        for v, arr in per_trait.items():
            arr[i, j, idx] = ds[v].transpose("step", "trait").values
        loss[i, j, idx] = ds["loss"].values
        activation[i, j, idx] = ds["activation"].transpose("step", "prompt", "hidden").values
        norm0[i, j] = float(ds.attrs["norm0"])
        for k, t in zip(idx, ds["step"].values, strict=True):
            rec = labels.get((d, s, int(t)), {})
            for key in EM_KEYS:
                em[key][i, j, k] = float(rec[key]) if rec.get(key) is not None else np.nan
    behavior_meta: dict[str, str] = {}
    for key in LABEL_META:
        values = sorted({str(rec[key]) for rec in labels.values() if key in rec})
        if len(values) > 1:
            raise StoreError(f"the em.json files mix behaviour {key}s {values}; label every "
                             "checkpoint of a model the same way")
        if values:
            behavior_meta[f"behavior_{key}"] = values[0]
    threshold = cfg.behavior.threshold
    known_rate = ~np.isnan(em["em_rate"])
    dangerous = np.full(shape, np.nan)
    dangerous[known_rate] = is_dangerous(em["em_rate"][known_rate], threshold)
    final_step = [max(int(t) for (d2, _), ds in runs.items() if d2 == d
                      for t in ds["step"].values) for d in datasets]

    def text(values) -> np.ndarray:
        return np.array([str(v) for v in values], dtype=object)

    dss = ("dataset", "seed", "step")
    cube = xr.Dataset(
        {**{v: ((*dss, "trait"), a) for v, a in per_trait.items()},
         "loss": (dss, loss), **{k: (dss, a) for k, a in em.items()},
         "dangerous": (dss, dangerous),
         "activation": ((*dss, "prompt", "hidden"), activation),
         "norm0": (("dataset", "seed"), norm0),
         "final_step": (("dataset",), np.array(final_step)),
         "direction": (("trait", "hidden"), first["direction"].values.astype(np.float32))},
        coords={
            "dataset": text(datasets), "seed": seeds, "step": steps,
            "trait": text(first["trait"].values),
            "trait_set": ("trait", text(first["trait_set"].values)),
            "prompt": first["prompt"].values,
            "label": ("dataset", text(cfg.datasets[d].label for d in datasets)),
            "role": ("dataset", text(cfg.datasets[d].role for d in datasets)),
        },
        attrs={**provenance(config_hash=cfg.hash(), model_source=cfg.model(model).source,
                            model=model),
               "layer": int(first.attrs["layer"]), "threshold": threshold,
               "runs": [f"{d}/seed{s}" for d, s in runs], **behavior_meta},
    )
    if "prompt_category" in first.coords:
        cube = cube.assign_coords(prompt_category=("prompt",
                                                   text(first["prompt_category"].values)))
    return cube


def write_cube(cube: xr.Dataset, out: str | Path) -> None:
    """Write the cube whole or not at all (one chunk per run and step for activations)."""
    from emtrait.stores import write_store

    write_store(cube, out, encoding={
        "activation": {"chunks": (1, 1, 1, *cube["activation"].shape[3:])}})
