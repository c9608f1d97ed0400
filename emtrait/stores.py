"""Reading and writing emtrait's Zarr stores the same way everywhere.

Writing: every store goes through `write_zarr` (format 3, unconsolidated) after `storable`
turns text into variable-length strings. Fixed-width numpy text (`<U…`, what `.astype(str)` or
`open_store` hand back) would otherwise be stored as zarr's FixedLengthUTF32, a data type
without a Zarr v3 specification (zarr warns UnstableSpecificationWarning; other Zarr readers
may not open it).

Reading: zarr 3 hands text back as numpy's variable-width StringDType, which many numpy/pandas
paths (`.astype(str)`, fancy indexing then casting) refuse. Every reader goes through
`open_store`, which returns text as plain fixed-width `str` arrays, so downstream code never
meets StringDType.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

TEXT_KINDS = "UST"  # numpy kinds of fixed-width str, bytes, and StringDType


def plain_text(ds: Any) -> Any:
    """The Dataset with every StringDType variable and coordinate as a plain str array."""
    import numpy as np

    for name in list(ds.variables):
        var = ds[name]
        if var.dtype.kind == "T":
            text = np.asarray(var.values, dtype=object).astype(str)
            if name in ds.coords:
                ds = ds.assign_coords({name: (var.dims, text, var.attrs)})
            else:
                ds = ds.assign({name: (var.dims, text, var.attrs)})
    return ds


def storable(ds: Any) -> Any:
    """The Dataset with every text variable and coordinate as object (variable-length) strings."""
    import numpy as np

    for name in list(ds.variables):
        var = ds[name]
        if var.dtype.kind not in TEXT_KINDS:
            continue
        values = np.asarray(var.values)
        if values.dtype.kind == "S":
            values = np.char.decode(values, "utf-8")
        text = values.astype(object)
        if name in ds.coords:
            ds = ds.assign_coords({name: (var.dims, text, var.attrs)})
        else:
            ds = ds.assign({name: (var.dims, text, var.attrs)})
    return ds


def write_zarr(ds: Any, path: str | os.PathLike, encoding: dict | None = None) -> None:
    """Write a Dataset to a fresh Zarr store at `path` (the one `to_zarr` call of emtrait).

    When a write fails (a full disk), zarr's other chunk writes of the same call are still in
    flight on its event loop; they are waited for before the error propagates, so the caller's
    cleanup of a temporary store is not raced by writes recreating it."""
    try:
        storable(ds).to_zarr(path, mode="w", zarr_format=3, consolidated=False,
                             encoding=encoding or {})
    except BaseException:
        _drain_zarr_writes()
        raise


def _drain_zarr_writes() -> None:
    """Wait for every task still running on zarr's I/O event loop (their errors are dropped)."""
    import asyncio

    from zarr.core.sync import sync

    async def drain() -> None:
        me = asyncio.current_task()
        await asyncio.gather(*(t for t in asyncio.all_tasks() if t is not me),
                             return_exceptions=True)

    try:
        sync(drain())
    except Exception:  # noqa: S110 - best effort: the original error is what matters
        pass


def write_store(ds: Any, path: str | os.PathLike, encoding: dict | None = None) -> None:
    """Write a Dataset as a store that appears whole or not at all."""
    from emtrait.atomic import atomic_path

    with atomic_path(Path(path), is_dir=True) as tmp:
        write_zarr(ds, tmp, encoding)


def open_store(path: str | os.PathLike, load: bool = True) -> Any:
    """Open a Zarr store written by emtrait (format 3, unconsolidated) with plain-str text."""
    import xarray as xr

    with warnings.catch_warnings():
        # Snakemake drops a .snakemake_timestamp file into directory outputs; zarr warns on it.
        warnings.filterwarnings("ignore", message=".*snakemake_timestamp.*")
        ds = xr.open_zarr(path, consolidated=False)
        if load:
            ds = ds.load()
    return plain_text(ds)


# ---------------------------------------------------------------------------------------------
# reading another stage's output: what it needs, checked once, one message
# ---------------------------------------------------------------------------------------------


# What every reader of a run store (measure.zarr, written by RunStore) needs: `open_artifact`
# keywords. Kept here, below both the measure package that writes it and the stages reading it.
RUN_STORE: dict[str, Any] = {"variables": {"projection": ("step", "trait"),
                                           "drift": ("step", "trait"),
                                           "activation": ("step", "prompt", "hidden")},
                             "attrs": ("norm0",)}


def run_cut_short(ds: Any) -> str | None:
    """Why a run store is not a whole run (None when it is): its steps are not the checkpoint
    plan it carries (attrs `checkpoint_steps`) and no monitor stopped it (attrs `stop_reason`).
    A finished run is published whole; this catches one copied or kept from mid-run."""
    planned = ds.attrs.get("checkpoint_steps")
    if planned is None or "stop_reason" in ds.attrs:
        return None
    stored = [int(s) for s in ds["step"].values]
    if stored != [int(s) for s in planned]:
        return (f"a run cut short or mixed: it holds steps {stored} but its run planned "
                f"{[int(s) for s in planned]}")
    return None


def artifact_error(path: str | os.PathLike, problem: str, rule: str) -> Any:
    """The StoreError of a stage input that is not what the reader needs: the file, what is
    wrong, and the rule whose rerun rebuilds it (every reader of another stage's output)."""
    from emtrait.errors import StoreError

    return StoreError(f"{path}: {problem}; rebuild it with `snakemake --forcerun {rule}` (or "
                      "rerun the emtrait command that wrote it)")


def check_artifact(ds: Any, path: str | os.PathLike, *, rule: str, what: str,
                   variables: dict[str, tuple[str, ...] | None] | None = None,
                   coords: tuple[str, ...] = (), attrs: tuple[str, ...] = (),
                   model: str | None = None) -> Any:
    """`ds` if it has every variable (with the given dims; None: any), coordinate and
    attribute a reader needs and, when `model` is given, was written for that model."""
    missing = []
    for name, dims in (variables or {}).items():
        if name not in ds.variables:
            missing.append(f"variable '{name}'")
        elif dims is not None and tuple(ds[name].dims) != tuple(dims):
            missing.append(f"variable '{name}' with dims {tuple(dims)} (it has "
                           f"{tuple(ds[name].dims)})")
    missing += [f"coordinate '{c}'" for c in coords if c not in ds.coords]
    missing += [f"attribute '{a}'" for a in attrs if a not in ds.attrs]
    if missing:
        raise artifact_error(path, f"not a {what} this emtrait reads: it lacks "
                             f"{', '.join(missing)} (written by an older emtrait, another "
                             "tool, or cut short)", rule)
    if model is not None and ds.attrs.get("model") != model:
        raise artifact_error(path, f"this {what} was written for model "
                             f"{ds.attrs.get('model')!r}, not {model!r} (another model's "
                             "output passed in its place?)", rule)
    return ds


def read_json_artifact(path: str | os.PathLike, *, rule: str, what: str,
                       keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """A JSON object another stage wrote, with every key in `keys`; absent, cut short, not an
    object or lacking a key is one StoreError naming `rule` (`artifact_error`)."""
    import json

    p = Path(path)
    if not p.is_file():
        raise artifact_error(p, f"the {what} does not exist", rule)
    try:
        data = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise artifact_error(p, f"not valid JSON ({e}): a {what} cut short?", rule) from None
    if not isinstance(data, dict):
        raise artifact_error(p, f"not a {what} (a JSON {type(data).__name__}, not an object)",
                             rule)
    missing = [k for k in keys if k not in data]
    if missing:
        raise artifact_error(p, f"not a {what} this emtrait reads: it lacks {missing}", rule)
    return data


def open_artifact(path: str | os.PathLike, *, rule: str, what: str, load: bool = True,
                  **needs: Any) -> Any:
    """Open a store another stage wrote and check what the reader needs (`check_artifact`'s
    keywords); absent, interrupted or unreadable stores are one StoreError naming `rule`."""
    p = Path(path)
    if not (p / "zarr.json").is_file():
        problem = (f"{what} does not exist" if not p.exists() else
                   f"not a Zarr store (no zarr.json): a {what} whose write was interrupted, or "
                   "another kind of folder")
        raise artifact_error(p, problem, rule)
    try:
        ds = open_store(p, load=load)
    except Exception as e:  # zarr raises many types for a damaged store
        raise artifact_error(p, f"not a readable {what} ({type(e).__name__}: {e})",
                             rule) from None
    return check_artifact(ds, p, rule=rule, what=what, **needs)
