"""Opening emtrait's Zarr stores the same way everywhere.

zarr 3 hands text back as numpy's variable-width StringDType, which many numpy/pandas paths
(`.astype(str)`, fancy indexing then casting) refuse. Every reader goes through `open_store`,
which returns text as plain fixed-width `str` arrays, so downstream code never meets StringDType.
"""

from __future__ import annotations

import os
import warnings
from typing import Any


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
