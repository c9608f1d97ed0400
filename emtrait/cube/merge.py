"""The per-model cube: every run's measure.zarr and behaviour labels on one labelled grid.

    import xarray as xr
    cube = xr.open_zarr("results/cube/smollm2.zarr", consolidated=False)
    cube.drift.sel(dataset="bad_medical", seed=42)   # (step, trait)

Dimensions: dataset × seed × step × layer × trait (+ prompt × hidden for activations), with
`direction(trait, layer, hidden)` and `norm0(dataset, seed, layer)`; attribute `layer` is l*, so
`cube.sel(layer=cube.attrs["layer"])` is the cube at the monitored layer (`emtrait.cube.read`
hands readers that view). Runs measured at every candidate layer (`measurement.layers:
candidates`) give one entry per candidate; runs measured at l* only give a cube of one layer;
a model whose runs mix the two is an error naming them. Each layer's projections are
normalised by that layer's own step-0 norm (`emtrait.drift`). Steps are the union
over runs; a step a run does not have is NaN. Inputs are explicit files: the runs' measure.zarr
stores and, for labels, the em.json of every checkpoint (each names its own model, dataset, seed
and step). With labels, a checkpoint without its em.json is an error naming it; without any
em.json the cube is unlabelled (em_rate NaN). `dangerous` is `emtrait.drift.is_dangerous`
(1.0 / 0.0; NaN where the EM rate is NaN, i.e. no scoreable answers). The trait directions at
every measured layer travel from the run stores into the cube, so no later stage reopens the
traits stage's output.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emtrait.errors import StoreError
from emtrait.provenance import provenance
from emtrait.stores import RUN_STORE, artifact_error, open_artifact, run_cut_short

if TYPE_CHECKING:
    import numpy as np
    import xarray as xr

    from emtrait.config import Config

EM_KEYS = ("em_rate", "em_low", "em_high")
LABEL_META = ("method", "convention", "judge")

Checkpoint = tuple[str, int, int]  # (dataset, seed, step)
LABEL_RULES = "behavior_label behavior_choice"  # the rules that write em.json


def _open_run(store: Path) -> xr.Dataset:
    variables = {**RUN_STORE["variables"], "direction": ("trait", "hidden")}
    ds = open_artifact(store, rule="finetune", what="run store",
                       **{**RUN_STORE, "variables": variables, "coords": ("trait_set",)})
    problem = run_cut_short(ds)
    if problem:
        raise artifact_error(store, problem, "finetune")
    return ds


def read_labels(model: str, em_files: list[Path]) -> dict[Checkpoint, dict]:
    """em.json records keyed by the (dataset, seed, step) each one names; errors name the file."""
    labels: dict[Checkpoint, dict] = {}
    for f in map(Path, em_files):
        if not f.is_file():
            raise artifact_error(f, "the behaviour label does not exist (leave it out of --em, "
                                 "or label that checkpoint)", LABEL_RULES)
        try:
            rec = json.loads(f.read_text())
            key = (str(rec["dataset"]), int(rec["seed"]), int(rec["step"]))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise artifact_error(f, f"not an em.json of `emtrait behavior` ({e!r})",
                                 LABEL_RULES) from None
        if rec.get("model") != model:
            raise artifact_error(f, f"labels model {rec.get('model')!r}, not {model!r}",
                                 LABEL_RULES)
        if key in labels:
            raise StoreError(f"{f} labels {key[0]}/seed{key[1]}/step-{key[2]}, as does "
                             f"{labels[key]['_file']}")
        labels[key] = {**rec, "_file": str(f)}
    return labels


def merge_runs(cfg: Config, model: str, stores: list[Path],
               em_files: list[Path] | None = None, *, all_layers: bool = False) -> xr.Dataset:
    """One Dataset holding every run of `model` (runs keyed by their stored dataset and seed).

    `all_layers=True` (what `emtrait cube merge` writes) keeps every layer the runs measured on
    a `layer` dimension; the default gives the view at l* (the stress cubes' shape)."""
    runs = _read_runs(cfg, model, stores)
    _check_alike(runs)
    layers = _layers(runs) if all_layers else [int(next(iter(runs.values())).attrs["layer"])]
    known = list(cfg.datasets)
    grid = _Grid(datasets=sorted({d for d, _ in runs}, key=known.index),
                 seeds=sorted({s for _, s in runs}),
                 steps=sorted({int(t) for ds in runs.values() for t in ds["step"].values}))
    labels = _checked_labels(model, em_files or [], runs)
    cube = _assemble(cfg, model, runs, grid, layers, labels)
    return cube if all_layers else cube.squeeze("layer", drop=True)


@dataclass(frozen=True)
class _Grid:
    datasets: list[str]
    seeds: list[int]
    steps: list[int]

    @property
    def shape(self) -> tuple[int, int, int]:
        return len(self.datasets), len(self.seeds), len(self.steps)


def _read_runs(cfg: Config, model: str, stores: list[Path]) -> dict[tuple[str, int], xr.Dataset]:
    if not stores:
        raise StoreError("no runs to merge; pass --runs with at least one run's measure.zarr")
    runs: dict[tuple[str, int], xr.Dataset] = {}
    for store in map(Path, stores):
        ds = _open_run(store)
        if ds.attrs.get("model") != model:
            raise artifact_error(store, f"measured model {ds.attrs.get('model')!r}, not "
                                 f"{model!r} (another model's run passed in its place?)",
                                 "finetune")
        key = (str(ds.attrs["dataset"]), int(ds.attrs["seed"]))
        if key in runs:
            raise StoreError(f"two runs of dataset {key[0]} seed {key[1]} (second: {store})")
        if key[0] not in cfg.datasets:
            raise StoreError(f"{store} is a run of dataset {key[0]!r}, which the config does not "
                             f"define (datasets: {sorted(cfg.datasets)}); its label and role "
                             "come from that entry")
        ds.attrs["_store"] = str(store)
        runs[key] = ds
    return runs


def _check_alike(runs: dict[tuple[str, int], xr.Dataset]) -> None:
    """Every run of a model measured with the same traits, prompts, l* and directions."""
    import numpy as np

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


def _measured(ds: xr.Dataset) -> tuple[int, ...]:
    if "projection_layers" in ds:
        return tuple(int(x) for x in ds["layer"].values)
    return (int(ds.attrs["layer"]),)


def _layers(runs: dict[tuple[str, int], xr.Dataset]) -> list[int]:
    """The layers every run measured; runs measured at other layer sets are named."""
    by_layers: dict[tuple[int, ...], list[str]] = {}
    for ds in runs.values():
        by_layers.setdefault(_measured(ds), []).append(ds.attrs["_store"])
        if "projection_layers" in ds and "direction_layers" not in ds:
            raise StoreError(f"{ds.attrs['_store']} has per-layer projections but no "
                             "`direction_layers`; it was measured by an older emtrait: rerun its "
                             "finetune (or `emtrait measure`)")
    if len(by_layers) > 1:
        sets = "; ".join(f"layers {list(k)}: {', '.join(v)}" for k, v in by_layers.items())
        raise StoreError(f"the runs of one model were measured at different layers ({sets}); "
                         "measure them all with the same measurement.layers (rerun the others)")
    return list(next(iter(by_layers)))


def _checked_labels(model: str, em_files: list[Path], runs: dict[tuple[str, int], xr.Dataset]
                    ) -> dict[Checkpoint, dict]:
    """The em.json records, one for every measured checkpoint (or none at all)."""
    labels = read_labels(model, em_files)
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
    return labels


def layer_values(ds: xr.Dataset, layer: int) -> dict[str, Any]:
    """One run's readings at one measured layer: (step, trait) projections, their normalised
    values and drift, (step, prompt, hidden) activations, norm0 and (trait, hidden) directions.

    At l* these are the run store's own variables; at another layer the same formulas
    (`emtrait.drift`) with that layer's own step-0 norm."""
    from emtrait.drift import drift, mean_norm, normalise

    if layer == int(ds.attrs["layer"]):
        return {"projection": ds["projection"].transpose("step", "trait").values,
                "projection_norm": ds["projection_norm"].transpose("step", "trait").values,
                "drift": ds["drift"].transpose("step", "trait").values,
                "activation": ds["activation"].transpose("step", "prompt", "hidden").values,
                "norm0": float(ds.attrs["norm0"]), "direction": ds["direction"].values}
    projection = ds["projection_layers"].sel(layer=layer).transpose("step", "trait").values
    activation = ds["activation_layers"].sel(layer=layer).transpose("step", "prompt",
                                                                    "hidden").values
    norm0 = mean_norm(activation[0])
    projection_norm = normalise(projection, norm0)
    return {"projection": projection, "projection_norm": projection_norm,
            "drift": drift(projection_norm), "activation": activation, "norm0": norm0,
            "direction": ds["direction_layers"].sel(layer=layer).values}


def _measurements(runs: dict[tuple[str, int], xr.Dataset], grid: _Grid, layers: list[int]
                  ) -> dict[str, np.ndarray]:
    """Per-layer readings of every run on the (dataset, seed, step, layer, ...) grid; NaN where
    a run lacks a step."""
    import numpy as np

    first = next(iter(runs.values()))
    n_t, n_p, n_h = first.sizes["trait"], first.sizes["prompt"], first.sizes["hidden"]
    shape = (*grid.shape, len(layers))
    out = {v: np.full((*shape, n_t), np.nan) for v in ("projection", "projection_norm", "drift")}
    out["activation"] = np.full((*shape, n_p, n_h), np.nan, dtype=np.float32)
    out["norm0"] = np.full((*grid.shape[:2], len(layers)), np.nan)
    out["direction"] = np.stack([layer_values(first, la)["direction"] for la in layers], axis=1)
    for (d, s), ds in runs.items():
        i, j = grid.datasets.index(d), grid.seeds.index(s)
        idx = [grid.steps.index(int(t)) for t in ds["step"].values]
        for k, layer in enumerate(layers):
            values = layer_values(ds, layer)
            for v in ("projection", "projection_norm", "drift", "activation"):
                out[v][i, j, idx, k] = values[v]
            out["norm0"][i, j, k] = values["norm0"]
    return out


def _label_arrays(cfg: Config, runs: dict[tuple[str, int], xr.Dataset], grid: _Grid,
                  labels: dict[Checkpoint, dict]) -> dict[str, np.ndarray]:
    """em_rate/em_low/em_high, dangerous and loss on the (dataset, seed, step) grid."""
    import numpy as np

    from emtrait.drift import is_dangerous

    out = {k: np.full(grid.shape, np.nan) for k in (*EM_KEYS, "loss")}
    for (d, s), ds in runs.items():
        i, j = grid.datasets.index(d), grid.seeds.index(s)
        for t, loss in zip(ds["step"].values, ds["loss"].values, strict=True):
            k = grid.steps.index(int(t))
            out["loss"][i, j, k] = loss
            rec = labels.get((d, s, int(t)), {})
            for key in EM_KEYS:
                out[key][i, j, k] = float(rec[key]) if rec.get(key) is not None else np.nan
    known = ~np.isnan(out["em_rate"])
    out["dangerous"] = np.full(grid.shape, np.nan)
    out["dangerous"][known] = is_dangerous(out["em_rate"][known], cfg.behavior.threshold)
    return out


def _behavior_meta(labels: dict[Checkpoint, dict]) -> dict[str, str]:
    meta: dict[str, str] = {}
    for key in LABEL_META:
        values = sorted({str(rec[key]) for rec in labels.values() if key in rec})
        if len(values) > 1:
            raise StoreError(f"the em.json files mix behaviour {key}s {values}; label every "
                             "checkpoint of a model the same way")
        if values:
            meta[f"behavior_{key}"] = values[0]
    return meta


def _text(values) -> np.ndarray:
    import numpy as np

    return np.array([str(v) for v in values], dtype=object)


def _assemble(cfg: Config, model: str, runs: dict[tuple[str, int], xr.Dataset], grid: _Grid,
              layers: list[int], labels: dict[Checkpoint, dict]) -> xr.Dataset:
    import numpy as np
    import xarray as xr

    first = next(iter(runs.values()))
    m = _measurements(runs, grid, layers)
    lab = _label_arrays(cfg, runs, grid, labels)
    final_step = [max(int(t) for (d2, _), ds in runs.items() if d2 == d
                      for t in ds["step"].values) for d in grid.datasets]
    dss, per_layer = ("dataset", "seed", "step"), ("dataset", "seed", "step", "layer")
    cube = xr.Dataset(
        {**{v: ((*per_layer, "trait"), m[v]) for v in ("projection", "projection_norm", "drift")},
         **{k: (dss, lab[k]) for k in ("loss", *EM_KEYS, "dangerous")},
         "activation": ((*per_layer, "prompt", "hidden"), m["activation"]),
         "norm0": (("dataset", "seed", "layer"), m["norm0"]),
         "final_step": (("dataset",), np.array(final_step)),
         "direction": (("trait", "layer", "hidden"), m["direction"].astype(np.float32))},
        coords={
            "dataset": _text(grid.datasets), "seed": grid.seeds, "step": grid.steps,
            "layer": layers, "trait": _text(first["trait"].values),
            "trait_set": ("trait", _text(first["trait_set"].values)),
            "prompt": first["prompt"].values,
            "label": ("dataset", _text(cfg.datasets[d].label for d in grid.datasets)),
            "role": ("dataset", _text(cfg.datasets[d].role for d in grid.datasets)),
        },
        attrs={**provenance(config_hash=cfg.hash(), model_source=cfg.model(model).source,
                            model=model),
               "layer": int(first.attrs["layer"]), "threshold": cfg.behavior.threshold,
               "runs": [f"{d}/seed{s}" for d, s in runs], **_behavior_meta(labels)},
    )
    if "prompt_category" in first.coords:
        cube = cube.assign_coords(prompt_category=("prompt",
                                                   _text(first["prompt_category"].values)))
    return cube



def store_path(out: str | Path) -> Path:
    """Where the cube at `out` keeps its data: a hidden sibling that `out` links to."""
    out = Path(out)
    return out.parent / f".{out.name}.data"


def write_cube(cube: xr.Dataset, out: str | Path) -> None:
    """Write the cube whole or not at all (one chunk per run, step and layer for activations).

    `out` is a relative symbolic link to the store (`store_path`): Snakemake marks a directory
    output's time with a `.snakemake_timestamp` file inside it, which zarr warns about; on a
    link it sets the link's own time instead, so the store stays clean and reruns still follow
    the time of the last merge. Readers open `out` as a plain directory store."""
    import shutil

    from emtrait.atomic import publish
    from emtrait.stores import write_store

    chunks = tuple(1 if dim not in ("prompt", "hidden") else n
                   for dim, n in zip(cube["activation"].dims, cube["activation"].shape,
                                     strict=True))
    out, data = Path(out), store_path(out)
    write_store(cube, data, encoding={"activation": {"chunks": chunks}})
    link = out.parent / f".{out.name}.link.tmp"
    link.unlink(missing_ok=True)
    link.symlink_to(data.name)
    if out.is_dir() and not out.is_symlink():  # a cube written before the store moved aside
        shutil.rmtree(out)
    publish(link, out)
