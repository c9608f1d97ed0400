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
    """Write a Dataset to a fresh Zarr store at `path` (the one `to_zarr` call of emtrait)."""
    storable(ds).to_zarr(path, mode="w", zarr_format=3, consolidated=False,
                         encoding=encoding or {})


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
