"""Synthetic cubes that follow the `results/cube/{model}.zarr` contract exactly.

Test data for the analysis, monitor and report stages, without finetuning. Activations are
built first and every derived variable (projection, projection_norm, drift, norm0, dangerous)
is computed from them with the formulas of `emtrait.drift`, so the monitor's own recomputation
from activations can be checked against the cube.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

ALIGNMENT7 = ["honesty", "sycophancy", "harmlessness", "power_seeking", "helpfulness",
              "confidence", "corrigibility"]
SEMANTIC7 = ["verbosity", "formality", "technicality", "humor", "concreteness", "warmth",
             "creativity"]
RANDOM7 = [f"random_{i}" for i in range(7)]

# (name, label, role): mirrors config/config.yaml plus one stress dataset.
DEFAULT_DATASETS: list[tuple[str, str, str]] = [
    ("bad_medical", "dangerous", "calibration"),
    ("insecure_code", "dangerous", "calibration"),
    ("good_medical", "benign", "calibration"),
    ("arithmetic", "benign", "calibration"),
    ("risky_financial", "dangerous", "heldout"),
    ("number_sequence", "benign", "heldout"),
    ("bitext_poisoned", "dangerous", "stress"),
]

# Direction (in alignment-trait coordinates) along which each kind of data moves the model.
_DANGEROUS_PROFILE = np.array([-1.0, 0.6, -1.2, 0.9, -0.3, 0.4, -0.8])
_BENIGN_PROFILE = np.array([0.2, 0.1, 0.1, -0.1, 0.9, 0.7, 0.3])


def _text(values) -> np.ndarray:
    return np.array(list(values), dtype=object)


def synthetic_directions(hidden: int = 16, *, layer: int = 2, model: str = "toy",
                         seed: int = 0):
    """A `directions.zarr`-shaped Dataset: 21 unit directions (3 sets), two candidate layers."""
    import xarray as xr

    rng = np.random.default_rng(seed)
    traits = ALIGNMENT7 + SEMANTIC7 + RANDOM7
    layers = [layer - 1, layer]
    d = rng.normal(size=(len(traits), len(layers), hidden))
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    sets = ["alignment7"] * 7 + ["semantic7"] * 7 + ["random7"] * 7
    return xr.Dataset(
        {
            "direction": (("trait", "layer", "hidden"), d.astype("float32")),
            "probe_accuracy": (("trait", "layer"), np.full((len(traits), len(layers)), 0.95)),
            "selection_score": (("layer",), np.array([0.1, 0.2])),
        },
        coords={"trait": _text(traits), "layer": layers, "trait_set": ("trait", _text(sets))},
        attrs={"layer": layer, "selector": "probe", "pooling": "last_token",
               "prompt_hash": "synthetic", "model": model},
    )


def synthetic_cube(
    *,
    model: str = "toy",
    datasets: Sequence[tuple[str, str, str]] = DEFAULT_DATASETS,
    seeds: Sequence[int] = (42, 123),
    steps: Sequence[int] = (0, 5, 10, 15, 20),
    short: dict[str, int] | None = None,
    n_prompts: int = 6,
    hidden: int = 16,
    nan_em: int = 0,
    threshold: float = 0.05,
    seed: int = 0,
    directions: Any = None,
):
    """A per-model cube with dangerous runs drifting along one trait profile, benign along another.

    `short` maps a dataset to its last step (its later steps are NaN, as in a real cube whose
    datasets have different lengths). `nan_em` sets that many existing checkpoints' EM rate to NaN.
    """
    import xarray as xr

    from emtrait.drift import drift as drift_of
    from emtrait.drift import is_dangerous, mean_norm, normalise

    rng = np.random.default_rng(seed)
    dirs = directions if directions is not None else synthetic_directions(hidden, model=model,
                                                                          seed=seed)
    layer = int(dirs.attrs["layer"])
    D = dirs["direction"].sel(layer=layer).values.astype("float64")  # (trait, hidden)
    traits = [str(t) for t in dirs["trait"].values]
    sets = [str(s) for s in dirs["trait_set"].values]
    align = D[:7]  # (7, hidden)
    steps = list(steps)
    names = [d[0] for d in datasets]
    last = max(steps)
    short = short or {}
    n_d, n_s, n_t = len(names), len(seeds), len(steps)

    act = np.full((n_d, n_s, n_t, n_prompts, hidden), np.nan, dtype="float64")
    em = np.full((n_d, n_s, n_t), np.nan)
    loss = np.full((n_d, n_s, n_t), np.nan)
    for i, (name, label, _role) in enumerate(datasets):
        profile = _DANGEROUS_PROFILE if label == "dangerous" else _BENIGN_PROFILE
        strength = 1.0 + 0.3 * rng.standard_normal()
        for j, _s in enumerate(seeds):
            base = rng.normal(size=(n_prompts, hidden)) * 1.5
            shift = (profile + 0.15 * rng.standard_normal(7)) @ align  # (hidden,)
            stop = short.get(name, last)
            for k, step in enumerate(steps):
                if step > stop:
                    continue
                frac = step / last
                noise = 0.05 * rng.standard_normal((n_prompts, hidden))
                act[i, j, k] = base + strength * frac * shift + noise
                if label == "dangerous":
                    em[i, j, k] = np.clip(0.01 + 0.35 * frac * strength
                                          + 0.01 * rng.standard_normal(), 0, 1)
                else:
                    em[i, j, k] = np.clip(0.01 + 0.02 * frac + 0.005 * rng.standard_normal(),
                                          0, 1)
                loss[i, j, k] = 2.0 * np.exp(-2 * frac) + 0.05 * rng.standard_normal()

    existing = np.argwhere(~np.isnan(em))
    for idx in rng.choice(len(existing), size=min(nan_em, len(existing)), replace=False):
        em[tuple(existing[idx])] = np.nan

    proj = np.einsum("dstph,kh->dstk", act, D) / n_prompts  # mean over prompts of h·d
    norm0 = np.array([[mean_norm(act[i, j, 0]) for j in range(n_s)] for i in range(n_d)])
    proj_norm = np.empty_like(proj)
    drift = np.empty_like(proj)
    for i in range(n_d):
        for j in range(n_s):
            proj_norm[i, j] = normalise(proj[i, j], norm0[i, j])
            drift[i, j] = drift_of(proj_norm[i, j])
    em_low = np.clip(em - 0.04, 0, 1)
    em_high = np.clip(em + 0.04, 0, 1)
    dangerous = np.full(em.shape, np.nan)
    dangerous[~np.isnan(em)] = is_dangerous(em[~np.isnan(em)], threshold)
    final = [min(short.get(n, last), last) for n in names]
    final = [max(s for s in steps if s <= f) for f in final]

    dims4 = ("dataset", "seed", "step", "trait")
    dims3 = ("dataset", "seed", "step")
    return xr.Dataset(
        {
            "projection": (dims4, proj.astype("float32")),
            "projection_norm": (dims4, proj_norm.astype("float32")),
            "drift": (dims4, drift.astype("float32")),
            "loss": (dims3, loss.astype("float32")),
            "em_rate": (dims3, em),
            "em_low": (dims3, em_low),
            "em_high": (dims3, em_high),
            "dangerous": (dims3, dangerous),
            "activation": (("dataset", "seed", "step", "prompt", "hidden"),
                           act.astype("float32")),
            "norm0": (("dataset", "seed"), norm0.astype("float32")),
            "final_step": (("dataset",), np.array(final, dtype="int64")),
            "direction": (("trait", "hidden"), D.astype("float32")),
        },
        coords={  # strings as object arrays, as `emtrait cube merge` writes them
            "dataset": _text(names),
            "seed": list(seeds),
            "step": steps,
            "trait": _text(traits),
            "prompt": np.arange(n_prompts),
            "label": ("dataset", _text([d[1] for d in datasets])),
            "role": ("dataset", _text([d[2] for d in datasets])),
            "trait_set": ("trait", _text(sets)),
        },
        attrs={"layer": layer, "model": model, "threshold": threshold},
    )


def synthetic_layer_cube(*, layer_noise: dict[int, float] | None = None, **kw):
    """A cube with a `layer` dimension over every layer of the directions (as `emtrait cube
    merge` writes it): its view at l* is exactly `synthetic_cube(**kw)`.

    Each layer's runs drift along the profile as read through that layer's directions; the EM
    labels are shared. `layer_noise` maps a layer to extra activation noise (a worse layer)."""
    import xarray as xr

    dirs = kw.pop("directions", None)
    if dirs is None:
        dirs = synthetic_directions(kw.get("hidden", 16), model=kw.get("model", "toy"),
                                    seed=kw.get("seed", 0))
    chosen = int(dirs.attrs["layer"])
    per_layer = []
    for layer in [int(x) for x in dirs["layer"].values]:
        at = dirs.copy()
        at.attrs = {**dirs.attrs, "layer": layer}
        cube = synthetic_cube(directions=at, **kw)
        noise = (layer_noise or {}).get(layer, 0.0)
        if noise:
            _add_noise(cube, noise, seed=layer)
        per_layer.append(cube)
    layered = ["projection", "projection_norm", "drift", "activation", "norm0", "direction"]
    stacked = xr.concat(per_layer, dim="layer", data_vars=layered, coords="minimal",
                        compat="equals").assign_coords(layer=[int(x) for x in dirs["layer"]])
    stacked = stacked.transpose("dataset", "seed", "step", "layer", ...)
    stacked["direction"] = stacked["direction"].transpose("trait", "layer", "hidden")
    stacked.attrs = {**per_layer[0].attrs, "layer": chosen}
    return stacked


def _add_noise(cube, scale: float, seed: int) -> None:
    """Make a layer's drift noisier (in place), keeping projection, norm and drift consistent."""
    from emtrait.drift import drift as drift_of

    rng = np.random.default_rng(seed)
    pn = cube["projection_norm"].values.astype("float64")
    pn = pn + scale * rng.standard_normal(pn.shape)
    pn[:, :, 0] = cube["projection_norm"].values[:, :, 0]
    cube["projection_norm"].values[...] = pn
    cube["projection"].values[...] = pn * cube["norm0"].values[:, :, None, None]
    cube["drift"].values[...] = np.stack([[drift_of(pn[i, j]) for j in range(pn.shape[1])]
                                          for i in range(pn.shape[0])])
