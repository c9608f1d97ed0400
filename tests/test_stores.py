"""Stores are written with variable-length text and read back as plain str, whatever zarr 3
hands over."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from emtrait.stores import open_store, write_store


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


@pytest.mark.parametrize("text", [
    pytest.param(lambda *xs: np.array(xs), id="fixed-width-str"),  # what open_store returns
    pytest.param(lambda *xs: np.array(xs, dtype=object), id="object"),
    pytest.param(lambda *xs: np.array(xs, dtype=np.dtypes.StringDType()), id="StringDType"),
])
def test_the_one_writer_stores_text_as_variable_length_strings(tmp_path, text):
    """No path writes zarr's FixedLengthUTF32 (no Zarr v3 spec: UnstableSpecificationWarning)."""
    import warnings

    import zarr

    ds = xr.Dataset({"x": (("dataset",), np.array([1.0, 2.0]))},
                    coords={"dataset": text("bad_medical", "arithmetic"),
                            "label": ("dataset", text("dangerous", "benign"))})
    with warnings.catch_warnings():
        warnings.simplefilter("error", zarr.errors.UnstableSpecificationWarning)
        write_store(ds, tmp_path / "s.zarr")
    group = zarr.open_group(tmp_path / "s.zarr", mode="r")
    for name in ("dataset", "label"):
        assert "FixedLengthUTF32" not in str(group[name].metadata.data_type)
    assert [str(v) for v in group["label"][...]] == ["dangerous", "benign"]
    back = open_store(tmp_path / "s.zarr")
    assert list(back["label"].values) == ["dangerous", "benign"]
