"""The saved monitor: a fitted regressor plus everything needed to apply it to a new run.

Format: one skops archive (a zip of JSON + NumPy arrays; nothing is unpickled) holding
`{"format": "emtrait-monitor", "version": 1, "meta_json": ..., "directions": ..., "regressor":
...}`. Loading trusts only the sklearn types on `TRUSTED` and refuses anything else, a file that
is not a skops archive, or an archive that is not a monitor.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from emtrait.errors import DataError, StoreError

FORMAT = "emtrait-monitor"
VERSION = 1
# Types skops does not trust by default that a monitor's regressors legitimately contain.
TRUSTED = {"sklearn.tree._tree.Tree"}
NORM0_POLICY = "mean per-prompt L2 norm of the activation at step 0 of the run being scored"


@dataclass
class Monitor:
    """A fitted drift-to-EM monitor; `meta` is plain JSON (traits, layer, thresholds, ...)."""

    regressor: Any
    directions: np.ndarray  # (trait, hidden) unit directions at meta["layer"], float32
    meta: dict

    @property
    def traits(self) -> list[str]:
        return list(self.meta["traits"])

    def predict(self, drift: np.ndarray, steps: np.ndarray) -> dict[str, np.ndarray]:
        """Predicted EM, alarm probability and flag per row of drift (row, trait)."""
        from emtrait.monitor.protocol import alarm_probability

        x = np.asarray(drift, float)
        if self.meta["include_step"]:
            x = np.column_stack([x, np.asarray(steps, float)])
        pred = np.clip(self.regressor.predict(x), 0.0, 1.0)
        return {"pred_em": pred,
                "alarm_prob": alarm_probability(pred, self.meta["threshold"], self.meta["sigma"]),
                "flag": pred > self.meta["threshold"]}


def save_monitor(path: str | os.PathLike, monitor: Monitor) -> None:
    """Write the monitor archive atomically."""
    import skops.io as sio

    from emtrait.atomic import atomic_path

    obj = {"format": FORMAT, "version": VERSION, "meta_json": json.dumps(monitor.meta),
           "directions": np.asarray(monitor.directions, dtype="float32"),
           "regressor": monitor.regressor}
    with atomic_path(path) as tmp:
        sio.dump(obj, tmp)


def load_monitor(path: str | os.PathLike) -> Monitor:
    """Load a monitor archive without executing code; refuse anything that is not one."""
    import skops.io as sio

    p = Path(path)
    if not p.is_file():
        raise StoreError(f"monitor {p} does not exist; fit one with `emtrait monitor fit`")
    try:
        untrusted = sio.get_untrusted_types(file=p)
    except Exception as e:  # zipfile/json errors: not a skops archive at all
        raise StoreError(f"{p} is not an emtrait monitor (not a skops archive: {e}); pass the "
                         "monitor.skops written by `emtrait monitor fit`") from None
    foreign = sorted(set(untrusted) - TRUSTED)
    if foreign:
        raise StoreError(f"{p}: refusing to load types outside the monitor's allow-list: "
                         f"{foreign}; this file was not written by `emtrait monitor fit`")
    obj = sio.load(p, trusted=list(untrusted))
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise StoreError(f"{p} is a skops archive but not an emtrait monitor (no "
                         f"format='{FORMAT}'); pass the monitor.skops of `emtrait monitor fit`")
    version = obj.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise StoreError(f"{p}: monitor format version {version!r} is newer than this emtrait "
                         f"reads ({VERSION}); upgrade emtrait")
    return Monitor(regressor=obj["regressor"], directions=np.asarray(obj["directions"]),
                   meta=json.loads(obj["meta_json"]))


def run_drift(monitor: Monitor, store: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(steps, drift (step, trait)) of a run store for the monitor's traits.

    Uses the store's `drift` when it has every monitor trait; otherwise recomputes it from
    `activation(step, prompt, hidden)` with the monitor's directions and norm0 policy.
    """
    import xarray as xr

    if not os.path.isdir(store):
        raise StoreError(f"run store {store} does not exist; pass a measure.zarr")
    try:
        ds = xr.open_zarr(store, consolidated=False)
    except Exception as e:
        raise StoreError(f"{store} is not a readable Zarr store ({e})") from None
    layer = ds.attrs.get("layer")
    if layer is not None and int(layer) != int(monitor.meta["layer"]):
        raise DataError(f"{store} was measured at layer {layer} but the monitor was fitted at "
                        f"layer {monitor.meta['layer']}; measure the run at the monitor's layer")
    steps = ds["step"].values.astype(int)
    traits = monitor.traits
    if "drift" in ds and "trait" in ds.coords and set(traits) <= set(map(str, ds.trait.values)):
        drift = ds["drift"].sel(trait=traits).values.astype(float)
    elif "activation" in ds:
        act = ds["activation"].values.astype(float)  # (step, prompt, hidden)
        if 0 not in steps:
            raise DataError(f"{store}: no step 0, so norm0 and the drift origin are undefined")
        if act.shape[-1] != monitor.directions.shape[1]:
            raise DataError(f"{store}: hidden size {act.shape[-1]} differs from the monitor's "
                            f"{monitor.directions.shape[1]} (a different model?)")
        base = int(np.flatnonzero(steps == 0)[0])
        norm0 = np.linalg.norm(act[base], axis=-1).mean()
        proj = (act @ monitor.directions.T.astype(float)).mean(axis=1) / norm0
        drift = proj - proj[base]
    else:
        raise DataError(f"{store} has neither drift for traits {traits} nor activations to "
                        "recompute it from")
    ok = np.isfinite(drift).all(axis=1)
    return steps[ok], drift[ok]
