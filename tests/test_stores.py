"""Stores read back with plain str text, whatever zarr 3 hands over."""

from __future__ import annotations

import numpy as np
import xarray as xr

from emtrait.stores import open_store


def test_text_comes_back_as_plain_str_and_survives_fancy_indexing(tmp_path):
    # Object-dtype text (what the cube writer produces) comes back from zarr 3 as StringDType.
    text = lambda *xs: np.array(xs, dtype=object)  # noqa: E731
    ds = xr.Dataset(
        {"x": (("dataset",), np.array([1.0, 2.0]))},
        coords={"dataset": text("bad_medical", "arithmetic"), "label": ("dataset", text("d", "b"))},
    )
    ds.to_zarr(tmp_path / "c.zarr", zarr_format=3, consolidated=False)
    raw = xr.open_zarr(tmp_path / "c.zarr", consolidated=False)
    assert raw["label"].dtype.kind == "T"  # the case this module exists for
    back = open_store(tmp_path / "c.zarr")
    assert back["label"].dtype.kind == "U"
    assert list(back["dataset"].values[np.array([1, 0])].astype(str)) == ["arithmetic",
                                                                          "bad_medical"]
    assert float(back["x"].sel(dataset="arithmetic")) == 2.0
