"""The layer question: the monitor's own fit and validation repeated at every measured layer of a
cube, beside l*; a layer counts as better only beyond its interval."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import yaml
from helpers import REPO
from synthetic import synthetic_layer_cube

from emtrait.config import from_dict

HELDOUT = ["risky_financial", "number_sequence"]


def small_config(**monitor):
    raw = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    raw["monitor"] = {"bootstrap": 30, "regressors": ["ridge"], "permutations": 20, **monitor}
    return from_dict(raw)


@pytest.fixture(scope="module")
def table():
    from emtrait.monitor.layers import compare_layers

    # layer 1 reads the same runs through noise: the monitor there should rank worse
    cube = synthetic_layer_cube(layer_noise={1: 0.5})
    return compare_layers(cube, small_config(), HELDOUT)


def test_every_layer_gets_the_monitors_own_validation(table):
    from emtrait.cube.read import at_layer
    from emtrait.monitor.evaluate import evaluate, fit_monitor
    from emtrait.monitor.layers import LAYER_COLUMNS, _monitor_only

    assert list(table.columns) == LAYER_COLUMNS
    assert sorted(set(zip(table.layer, table.protocol, strict=True))) == [
        (1, "heldout"), (1, "lopo"), (2, "heldout"), (2, "lopo")]
    assert table[table.chosen].layer.unique().tolist() == [2]
    # l*'s rows are exactly what `monitor fit` + `monitor evaluate` give on the l* view
    cfg = _monitor_only(small_config())
    view = at_layer(synthetic_layer_cube(layer_noise={1: 0.5}), 2)
    mon, _ = fit_monitor(view, cfg)
    _, metrics, _ = evaluate(view, mon, cfg, HELDOUT)
    ref = metrics[(metrics.dataset == "pooled") & metrics.headline].set_index("protocol")
    star = table[table.layer == 2].set_index("protocol")
    for col in ("auroc", "auroc_lo", "auroc_hi", "fnr", "fpr", "n", "n_runs"):
        np.testing.assert_allclose(star[col].astype(float), ref.loc[star.index, col].astype(float),
                                   err_msg=col)
    assert table.auroc_p.between(0, 1).all() and (table.n_permutations == 20).all()
    assert table.pc1_explained.between(0, 1).all()
    # the noisy layer is worse, and its PC1 share (noise spreads variance) is lower
    lopo = table[table.protocol == "lopo"].set_index("layer")
    assert lopo.auroc[2] > lopo.auroc[1]
    assert lopo.pc1_explained[2] > lopo.pc1_explained[1]


def test_a_layer_is_better_only_beyond_l_stars_interval(table):
    from emtrait.monitor.layers import better_layers

    assert better_layers(table) == []  # l* is the better layer here
    flipped = table.assign(chosen=table.layer == 1)
    better = better_layers(flipped)
    lopo = table[table.protocol == "lopo"].set_index("layer")
    expected = lopo.auroc_lo[2] > lopo.auroc_hi[1]
    assert any(b["layer"] == 2 and b["protocol"] == "lopo" for b in better) == expected
    overlapping = flipped.assign(auroc_lo=flipped.auroc - 0.5, auroc_hi=flipped.auroc + 0.5)
    assert better_layers(overlapping) == []
    no_interval = flipped.assign(auroc_lo=np.nan, auroc_hi=np.nan)
    assert better_layers(no_interval) == []
    assert isinstance(table, pd.DataFrame)
