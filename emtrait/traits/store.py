"""directions.zarr: the traits stage's public artifact, written and read back in one place.

Contract (DEVELOPING.md): `direction(trait, layer, hidden)` float32 unit vectors at every
candidate layer, `probe_accuracy(trait, layer)` (NaN for random traits), `selection_score(layer)`,
coordinate `trait_set(trait)`, attrs `layer` (chosen l*), `selector`, `pooling`, `prompt_hash`,
`model` + provenance. Also `cosine(trait, trait_b)` between directions at l*.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from emtrait.errors import StoreError

if TYPE_CHECKING:
    import numpy as np
    import xarray as xr

REQUIRED_VARS = {
    "direction": ("trait", "layer", "hidden"),
    "probe_accuracy": ("trait", "layer"),
    "selection_score": ("layer",),
}
REQUIRED_ATTRS = ("layer", "selector", "pooling", "prompt_hash", "model")


def build_dataset(*, names: list[str], sets: list[str], layers: list[int],
                  directions: np.ndarray, probe_accuracy: np.ndarray,
                  selection_score: np.ndarray, attrs: dict[str, Any],
                  tie_break_score: np.ndarray | None = None) -> xr.Dataset:
    """Assemble the store from arrays: directions (trait, layer, hidden), probe (trait, layer)."""
    import numpy as np
    import xarray as xr

    chosen = layers.index(int(attrs["layer"]))
    at = directions[:, chosen, :].astype(np.float64)  # (trait, hidden)
    cosine = at @ at.T
    ds = xr.Dataset(
        {
            "direction": (("trait", "layer", "hidden"), directions.astype(np.float32)),
            "probe_accuracy": (("trait", "layer"), probe_accuracy.astype(np.float64)),
            "selection_score": (("layer",), selection_score.astype(np.float64)),
            "cosine": (("trait", "trait_b"), cosine),
        },
        # object dtype: zarr 3 stores it as variable-length UTF-8, which has a v3 specification
        coords={"trait": np.asarray(names, dtype=object),
                "layer": np.asarray(layers, dtype=np.int64),
                "trait_b": np.asarray(names, dtype=object),
                "trait_set": ("trait", np.asarray(sets, dtype=object))},
        attrs=attrs,
    )
    ds["direction"].attrs["description"] = "unit mean(pos) - mean(neg) per trait and block"
    ds["probe_accuracy"].attrs["description"] = "k-fold logistic-regression accuracy (NaN: random)"
    ds["selection_score"].attrs["description"] = f"layer-selection score ({attrs['selector']})"
    ds["cosine"].attrs["description"] = "cosine between trait directions at the chosen layer"
    if tie_break_score is not None:  # the secondary selector's scores (traits.tie_breaker)
        ds["tie_break_score"] = (("layer",), np.asarray(tie_break_score, np.float64))
        ds["tie_break_score"].attrs["description"] = (
            f"tie-breaking score ({attrs.get('tie_breaker')}); NaN where not computed")
    return ds


def write_directions(ds: xr.Dataset, out: str | Path) -> None:
    """Write the whole store atomically (emtrait.stores: Zarr v3, unconsolidated)."""
    from emtrait.stores import write_store

    write_store(ds, out)


def load_directions(path: str | Path) -> xr.Dataset:
    """Open and validate a directions store; anything off is a StoreError naming what to do."""
    import numpy as np

    from emtrait.stores import artifact_error, open_artifact

    p = Path(path)
    ds = open_artifact(p, rule="extract_traits", what="directions store",
                       variables=dict(REQUIRED_VARS), coords=("trait_set",),
                       attrs=REQUIRED_ATTRS)
    if int(ds.attrs["layer"]) not in [int(v) for v in ds["layer"].values]:
        raise artifact_error(p, f"chosen layer {ds.attrs['layer']} is not among its layers "
                             f"{ds['layer'].values.tolist()}", "extract_traits")
    norms = np.linalg.norm(ds["direction"].values.astype(np.float64), axis=-1)
    if not np.allclose(norms, 1.0, atol=1e-3):
        raise artifact_error(p, f"directions are not unit vectors (norms {norms.min():.3g}.."
                             f"{norms.max():.3g})", "extract_traits")
    return ds


def directions_at(ds: xr.Dataset, trait_set: str, layer: int | None = None
                  ) -> tuple[list[str], np.ndarray]:
    """Trait names of one set and their unit directions (k, hidden) at `layer` (default l*)."""
    import numpy as np

    sets = [str(s) for s in ds["trait_set"].values]
    if trait_set not in sets:
        raise StoreError(f"trait set '{trait_set}' is not in this directions store; "
                         f"it has {sorted(set(sets))} (traits.sets in the config)")
    layer = int(ds.attrs["layer"]) if layer is None else int(layer)
    layers = [int(v) for v in ds["layer"].values]
    if layer not in layers:
        raise StoreError(f"layer {layer} is not stored; directions exist at layers {layers}")
    sel = ds["direction"].sel(layer=layer).isel(trait=[i for i, s in enumerate(sets)
                                                       if s == trait_set])
    names = [str(t) for t in sel["trait"].values]
    return names, np.asarray(sel.transpose("trait", "hidden").values, dtype=np.float32)
