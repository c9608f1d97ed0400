"""The run store measure.zarr, grown one checkpoint at a time without ever being half-written.

Each append writes the whole new version (previous steps + the new one; a few MB) to a hidden
sibling and swaps it in with one atomic rename-exchange (Linux renameat2), so a reader that opens
the store at any moment sees a complete set of steps. Activations are chunked one step per
chunk, so a reader holding the store open lazily across a swap reads identical bytes for the
steps it already knew.

    import xarray as xr
    run = xr.open_zarr("results/runs/smollm2/bad_medical/seed42/measure.zarr", consolidated=False)
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emtrait.atomic import publish as publish_dir
from emtrait.errors import StoreError
from emtrait.stores import write_zarr

if TYPE_CHECKING:
    import numpy as np
    import xarray as xr

    from emtrait.measure.probe import Measurement


def step_dataset(step: int, m: Measurement, *, traits: Sequence[str],
                 prompt_categories: Sequence[str], loss: float = float("nan"),
                 trait_sets: Sequence[str] | None = None, directions: np.ndarray | None = None,
                 keep_activation: bool = True,
                 layer_directions: np.ndarray | None = None) -> xr.Dataset:
    """One step of the run store from a probe's Measurement (normalised columns: `append`).

    `directions` (trait, hidden), the unit directions at l*, are stored as `direction` so later
    stages need not reopen the traits output. `keep_activation=False` stores NaN activations
    (all-NaN chunks are not written: long runs keep only step 0's). `layer_directions`
    (layer, trait, hidden), the directions at every measured layer, are stored as
    `direction_layers` when the probe measured more than l* (the cube merges them).
    """
    import numpy as np
    import xarray as xr

    act = m.activation if keep_activation else np.full_like(m.activation, np.nan)
    coords: dict[str, Any] = {
        "step": [int(step)],
        "trait": np.array(list(traits), dtype=object),
        "prompt": np.arange(act.shape[0]),
        "prompt_category": ("prompt", np.array(list(prompt_categories), dtype=object)),
    }
    if trait_sets is not None:
        coords["trait_set"] = ("trait", np.array(list(trait_sets), dtype=object))
    data: dict[str, Any] = {
        "activation": (("step", "prompt", "hidden"), act[None]),
        "projection": (("step", "trait"), np.asarray(m.projection, dtype=np.float64)[None]),
        "loss": (("step",), np.array([loss], dtype=np.float64)),
    }
    if directions is not None:
        data["direction"] = (("trait", "hidden"), np.asarray(directions, dtype=np.float32))
    if m.activation_layers is not None:
        layer_acts = m.activation_layers if keep_activation else \
            np.full_like(m.activation_layers, np.nan)
        coords["layer"] = list(m.layers)
        data["activation_layers"] = (("step", "layer", "prompt", "hidden"), layer_acts[None])
        data["projection_layers"] = (("step", "layer", "trait"), m.projection_layers[None])
        if layer_directions is not None:
            data["direction_layers"] = (("layer", "trait", "hidden"),
                                        np.asarray(layer_directions, dtype=np.float32))
    return xr.Dataset(data, coords=coords)


class RunStore:
    """measure.zarr of one run: `append` one step, read back what is complete."""

    def __init__(self, path: str | Path, rule: str = "finetune"):
        self.path = Path(path)
        self.rule = rule  # the rule that writes it (named in errors)

    def exists(self) -> bool:
        return (self.path / "zarr.json").is_file()

    def load(self) -> xr.Dataset:
        """The whole store, checked to be a run store (`emtrait.stores.RUN_STORE`)."""
        from emtrait.stores import RUN_STORE, open_artifact

        return open_artifact(self.path, rule=self.rule, what="run store", **RUN_STORE)

    def steps(self) -> list[int]:
        return [int(s) for s in self.load()["step"].values] if self.exists() else []

    def append(self, step_ds: xr.Dataset, attrs: dict[str, Any] | None = None, *,
               extra_attrs: dict[str, Any] | None = None) -> xr.Dataset:
        """Add one step; the first step must be 0 and fixes norm0 from its activations.

        Variables without a step dimension (`direction`) are kept from the first step.
        `attrs` are set with the first step; `extra_attrs` are merged in at any step (the
        live monitor records why it stopped a run).
        """
        import xarray as xr

        from emtrait.drift import drift, mean_norm, normalise

        step = int(step_ds["step"].values[0])
        if self.exists():
            old = self.load()
            if step <= int(old["step"].values[-1]):
                raise StoreError(f"{self.path}: step {step} is not after the stored steps "
                                 f"{[int(s) for s in old['step'].values]}")
            base = old.drop_vars(["projection_norm", "drift"])
            full = xr.concat([base, step_ds], dim="step", data_vars="minimal",
                             coords="minimal", compat="override", join="override")
            full.attrs = dict(old.attrs)
        else:
            if step != 0:
                raise StoreError(f"{self.path}: the first stored step must be 0, got {step}")
            full = step_ds
            full.attrs = {**(attrs or {}),
                          "norm0": mean_norm(step_ds["activation"].values[0])}
        full.attrs.update(extra_attrs or {})
        full["projection_norm"] = normalise(full["projection"], float(full.attrs["norm0"]))
        full["drift"] = drift(full["projection_norm"])
        self._write(full)
        return full

    def truncate(self, last_step: int) -> None:
        """Drop steps after `last_step` (resume: they belong to an interrupted checkpoint)."""
        ds = self.load()
        keep = ds.sel(step=[s for s in ds["step"].values if s <= last_step])
        self._write(keep)

    def _write(self, ds: xr.Dataset) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", suffix=".tmp",
                                    dir=self.path.parent))
        try:
            ds = ds.copy()
            for var in ds.variables.values():
                var.encoding = {}  # stale chunking from the previous version would not fit
            encoding = {}
            for name in ("activation", "activation_layers"):
                if name in ds:
                    encoding[name] = {"chunks": (1, *ds[name].shape[1:])}
            write_zarr(ds, tmp, encoding)
            publish_dir(tmp, self.path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
