"""The per-model cube: every run's measure.zarr (and behaviour labels) on one labelled grid.

    import xarray as xr
    cube = xr.open_zarr("results/cube/smollm2.zarr", consolidated=False)
    cube.drift.sel(dataset="bad_medical", seed=42)   # (step, trait)

Dimensions: dataset × seed × step × trait (+ prompt × hidden for activations). Steps are the union
over runs; a step a run does not have is NaN. `em_rate`, `em_low`, `em_high` come from
`<behavior-root>/<dataset>/seed<seed>/step-<step>/em.json` where present (NaN otherwise), and
`dangerous` = em_rate > behavior.threshold as 1.0 / 0.0 (NaN where em_rate is unknown).
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


def _open_run(run_dir: Path) -> xr.Dataset:
    import xarray as xr

    store = run_dir / "measure.zarr"
    if not (store / "zarr.json").is_file():
        raise StoreError(f"{store} does not exist; is {run_dir} a finished run "
                         "(`emtrait finetune --out` folder)?")
    with xr.open_zarr(store, consolidated=False) as ds:
        return ds.load()


def merge_runs(cfg: Config, model: str, run_dirs: list[Path],
               behavior_root: Path | None = None) -> xr.Dataset:
    """One Dataset holding every run of `model` (runs keyed by their stored dataset and seed)."""
    import numpy as np
    import xarray as xr

    if not run_dirs:
        raise StoreError("no runs to merge; pass --runs with at least one run folder")
    runs: dict[tuple[str, int], xr.Dataset] = {}
    for rd in map(Path, run_dirs):
        ds = _open_run(rd)
        if ds.attrs.get("model") != model:
            raise StoreError(f"{rd} measured model {ds.attrs.get('model')!r}, not {model!r}")
        key = (str(ds.attrs["dataset"]), int(ds.attrs["seed"]))
        if key in runs:
            raise StoreError(f"two runs of dataset {key[0]} seed {key[1]} (second: {rd})")
        runs[key] = ds
    first = next(iter(runs.values()))
    for (d, s), ds in runs.items():
        for coord in ("trait", "prompt"):
            if not np.array_equal(ds[coord].values, first[coord].values):
                raise StoreError(f"run {d}/seed{s} has other {coord}s than the first run; "
                                 "all runs of a model must be measured with the same directions "
                                 "and prompts")
        if ds.attrs.get("layer") != first.attrs.get("layer"):
            raise StoreError(f"run {d}/seed{s} was measured at layer {ds.attrs.get('layer')}, "
                             f"others at {first.attrs.get('layer')}")
    known = list(cfg.datasets)
    datasets = sorted({d for d, _ in runs}, key=lambda d: (known.index(d) if d in known
                                                           else len(known), d))
    seeds = sorted({s for _, s in runs})
    steps = sorted({int(t) for ds in runs.values() for t in ds["step"].values})
    n_t, n_p, n_h = first.sizes["trait"], first.sizes["prompt"], first.sizes["hidden"]
    shape = (len(datasets), len(seeds), len(steps))

    per_trait = {v: np.full((*shape, n_t), np.nan) for v in
                 ("projection", "projection_norm", "drift")}
    loss = np.full(shape, np.nan)
    activation = np.full((*shape, n_p, n_h), np.nan, dtype=np.float32)
    norm0 = np.full(shape[:2], np.nan)
    em = {k: np.full(shape, np.nan) for k in EM_KEYS}
    behavior_meta: dict[str, str] = {}
    for (d, s), ds in runs.items():
        i, j = datasets.index(d), seeds.index(s)
        idx = [steps.index(int(t)) for t in ds["step"].values]
        for v, arr in per_trait.items():
            arr[i, j, idx] = ds[v].transpose("step", "trait").values
        loss[i, j, idx] = ds["loss"].values
        activation[i, j, idx] = ds["activation"].transpose("step", "prompt", "hidden").values
        norm0[i, j] = float(ds.attrs["norm0"])
        if behavior_root is not None:
            for k, t in zip(idx, ds["step"].values, strict=True):
                f = Path(behavior_root) / d / f"seed{s}" / f"step-{int(t)}" / "em.json"
                if f.is_file():
                    rec = json.loads(f.read_text())
                    for key in EM_KEYS:
                        em[key][i, j, k] = float(rec[key]) if rec.get(key) is not None else np.nan
                    for key in ("method", "convention"):
                        if key in rec:
                            behavior_meta[f"behavior_{key}"] = str(rec[key])
    threshold = cfg.behavior.threshold
    dangerous = np.where(np.isnan(em["em_rate"]), np.nan, em["em_rate"] > threshold)
    final_step = [max(int(t) for (d2, _), ds in runs.items() if d2 == d
                      for t in ds["step"].values) for d in datasets]

    def label(d: str, field: str) -> str:
        return getattr(cfg.datasets[d], field) if d in cfg.datasets else "unknown"

    dss = ("dataset", "seed", "step")
    cube = xr.Dataset(
        {**{v: ((*dss, "trait"), a) for v, a in per_trait.items()},
         "loss": (dss, loss), **{k: (dss, a) for k, a in em.items()},
         "dangerous": (dss, dangerous),
         "activation": ((*dss, "prompt", "hidden"), activation),
         "norm0": (("dataset", "seed"), norm0),
         "final_step": (("dataset",), np.array(final_step))},
        coords={
            "dataset": np.array(datasets, dtype=object), "seed": seeds, "step": steps,
            "trait": first["trait"].values.astype(object),
            "trait_set": ("trait", first["trait_set"].values.astype(object)),
            "prompt": first["prompt"].values,
            "label": ("dataset", np.array([label(d, "label") for d in datasets], dtype=object)),
            "role": ("dataset", np.array([label(d, "role") for d in datasets], dtype=object)),
        },
        attrs={**provenance(config_hash=cfg.hash(), model_source=cfg.model(model).source,
                            model=model),
               "layer": int(first.attrs["layer"]), "threshold": threshold,
               "runs": [f"{d}/seed{s}" for d, s in runs], **behavior_meta},
    )
    if "prompt_category" in first.coords:
        cube = cube.assign_coords(prompt_category=("prompt",
                                                   first["prompt_category"].values.astype(object)))
    return cube


def write_cube(cube: xr.Dataset, out: str | Path) -> None:
    """Write the cube whole or not at all (one chunk per run and step for activations)."""
    from emtrait import atomic

    with atomic.atomic_path(out, is_dir=True) as tmp:
        encoding = {"activation": {"chunks": (1, 1, 1, *cube["activation"].shape[3:])}}
        cube.to_zarr(tmp, mode="w", zarr_format=3, consolidated=False, encoding=encoding)
