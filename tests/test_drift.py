"""The one drift formula and the dangerous label (emtrait/drift.py)."""

from __future__ import annotations

import numpy as np
import pytest

from emtrait.drift import drift, is_dangerous, mean_norm, normalise
from emtrait.errors import DataError


def test_mean_norm_is_the_mean_of_per_prompt_norms_not_the_norm_of_the_mean():
    act = np.array([[3.0, 4.0], [-3.0, -4.0]], dtype=np.float32)  # norms 5 and 5, mean vector 0
    assert mean_norm(act) == pytest.approx(5.0)


@pytest.mark.parametrize("bad", [np.zeros((2, 3)), np.full((2, 3), np.nan), np.ones(3),
                                 np.ones((0, 3))])
def test_mean_norm_refuses_unusable_activations(bad):
    with pytest.raises(DataError):
        mean_norm(bad)


def test_normalise_and_drift_from_step_zero_and_from_another_origin():
    proj = np.array([[1.0, 2.0], [3.0, 1.0], [5.0, 0.0]])  # (step, trait)
    pn = normalise(proj, 2.0)
    np.testing.assert_allclose(pn, proj / 2.0)
    np.testing.assert_allclose(drift(pn), [[0, 0], [1, -0.5], [2, -1]])
    np.testing.assert_allclose(drift(pn, origin=1), [[-1, 0.5], [0, 0], [1, -0.5]])
    with pytest.raises(DataError):
        normalise(proj, 0.0)


def test_drift_on_xarray_keeps_coordinates():
    import xarray as xr

    pn = xr.DataArray([[1.0, 2.0], [2.0, 2.5]], dims=("step", "trait"),
                      coords={"step": [0, 10], "trait": ["a", "b"]})
    d = drift(pn)
    assert list(d.step.values) == [0, 10]
    np.testing.assert_allclose(d.values, [[0, 0], [1, 0.5]])


def test_dangerous_is_strictly_above_the_threshold_and_nan_raises():
    assert is_dangerous(0.2, 0.1) is True
    assert is_dangerous(0.1, 0.1) is False
    np.testing.assert_array_equal(is_dangerous([0.0, 0.1, 0.11], 0.1), [False, False, True])
    with pytest.raises(DataError, match="NaN"):
        is_dangerous([0.3, float("nan")], 0.1)
