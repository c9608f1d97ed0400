"""Reading a per-model cube, with its contract (DEVELOPING.md) checked at the edge.

Every later stage (analysis, monitor, report) reads cubes through `open_cube`, and reads
checkpoints through `checkpoints`. A cube holds every measured layer (`layer` dimension, l* in
attribute `layer`); `open_cube` hands back the view at l* (today's arrays, no `layer`
dimension) unless asked for all layers, and `at_layer` gives the same view at any measured
layer (the layer analysis, `emtrait monitor layers`). Checkpoints are one row per checkpoint
a run actually has (a step it lacks is NaN in the cube and has no row). Rows whose EM rate is
NaN are kept, flagged `em_missing`, so every consumer can exclude them *and count them* instead
of dropping them silently.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from emtrait.errors import DataError

CUBE_VARS = ("drift", "projection", "projection_norm", "loss", "em_rate", "em_low", "em_high",
             "dangerous", "activation", "norm0", "final_step", "direction")
CUBE_COORDS = ("label", "role", "trait_set")
# variables with a `layer` dimension, and the dimension each one's `layer` follows
LAYERED = {"projection": "step", "projection_norm": "step", "drift": "step",
           "activation": "step", "norm0": "seed", "direction": "trait"}
CUBE_ATTRS = ("layer", "model", "threshold")
CUBE_RULE = "merge_cube"  # the rule that writes cubes (named in errors)


def open_cube(path: str | os.PathLike, load: bool = True, *, all_layers: bool = False):
    """Open a cube store and check its contract; errors name what is missing.

    The view at l* unless `all_layers` (then every measured layer on a `layer` dimension).
    `load=False` keeps variables lazy (a reader that needs only the directions or labels does
    not read every activation)."""
    from emtrait.stores import open_artifact

    ds = open_artifact(path, rule=CUBE_RULE, what="cube", load=False)
    check_cube(ds, str(path))
    if "layer" not in ds.dims:  # written without a layer dimension: a cube of l* alone
        ds = one_layer(ds)
    if not all_layers:
        ds = at_layer(ds, int(ds.attrs["layer"]))
    return ds.load() if load else ds


def one_layer(ds):
    """A cube without a `layer` dimension as the cube of its one layer, l*."""
    layer = int(ds.attrs["layer"])
    for name, after in LAYERED.items():
        dims = list(ds[name].dims)
        dims.insert(dims.index(after) + 1, "layer")
        ds[name] = ds[name].expand_dims(layer=[layer]).transpose(*dims)
    return ds


def at_layer(ds, layer: int):
    """The cube as if measured at `layer` only: every variable there, no `layer` dimension,
    attribute `layer` = `layer` (the chosen l* stays in `chosen_layer`)."""
    layers = [int(x) for x in ds["layer"].values]
    if int(layer) not in layers:
        raise DataError(f"the cube of model {ds.attrs.get('model')} has no layer {layer} "
                        f"(measured layers: {layers})")
    view = ds.sel(layer=int(layer), drop=True)
    view.attrs = {**ds.attrs, "layer": int(layer), "chosen_layer": int(ds.attrs["layer"])}
    return view


def check_cube(ds, source: str = "cube") -> None:
    """Raise StoreError naming every contract variable, coordinate or attribute that is absent."""
    missing = [v for v in CUBE_VARS if v not in ds.variables]
    missing += [c for c in CUBE_COORDS if c not in ds.coords]
    missing += [f"attrs.{a}" for a in CUBE_ATTRS if a not in ds.attrs]
    if missing:
        from emtrait.stores import artifact_error

        raise artifact_error(source, "not a cube per the contract in DEVELOPING.md; missing "
                             f"{', '.join(missing)}", CUBE_RULE)


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
    at = lambda name: ds[name].values.astype("float64")[d, s, t]  # noqa: E731
    em = at("em_rate")
    rows = pd.DataFrame({
        "model": str(ds.attrs["model"]),
        "dataset": ds["dataset"].values[d].astype(str),
        "seed": ds["seed"].values[s].astype(int),
        "step": ds["step"].values[t].astype(int),
        "role": ds["role"].values[d].astype(str),
        "label": ds["label"].values[d].astype(str),
        "em_rate": em,
        "em_low": at("em_low"),
        "em_high": at("em_high"),
        "loss": at("loss"),
        "final": ds["step"].values[t] == ds["final_step"].values[d],
        "em_missing": np.isnan(em),
        "dangerous": at("dangerous"),  # the cube's label: 1.0 / 0.0, NaN where em_rate is
    })
    return Checkpoints(rows=rows, drift=drift[d, s, t], traits=[str(x) for x in ds["trait"].values],
                       trait_sets=[str(x) for x in ds["trait_set"].values], index=idx)


def trait_columns(cp: Checkpoints, trait_set: str) -> tuple[list[str], np.ndarray]:
    """(trait names, drift columns) of one trait set; error names the sets the cube has."""
    cols = [i for i, s in enumerate(cp.trait_sets) if s == trait_set]
    if not cols:
        raise DataError(f"no traits in set '{trait_set}' (sets present: "
                        f"{sorted(set(cp.trait_sets))}); check traits.monitor_set")
    return [cp.traits[i] for i in cols], cp.drift[:, cols]


def final_drift(cubes: list, trait_set: str):
    """One row per run (model, dataset, seed): drift at the dataset's final step.

    A run without that step (stopped early) contributes its last measured step; `fallback`
    marks those rows so the count is reported, not hidden.
    """
    import pandas as pd

    frames, traits_ref = [], None
    for ds in cubes:
        cp = checkpoints(ds)
        traits, x = trait_columns(cp, trait_set)
        if traits_ref is None:
            traits_ref = traits
        elif traits != traits_ref:
            raise DataError(f"cube of model {ds.attrs['model']} has {trait_set} traits {traits}, "
                            f"other cubes {traits_ref}; extract all models with one trait file")
        rows = cp.rows.assign(**{t: x[:, i] for i, t in enumerate(traits)})
        last = rows.sort_values("step").groupby(["model", "dataset", "seed"]).tail(1)
        last = last.assign(fallback=~last["final"].values)
        frames.append(last)
    out = pd.concat(frames, ignore_index=True).sort_values(["model", "dataset", "seed"])
    return out.reset_index(drop=True), list(traits_ref)
