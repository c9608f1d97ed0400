"""The per-model cube merges runs of different datasets and seeds and keeps their labels."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml
from test_finetune import make_inputs, open_store, run

from emtrait.errors import StoreError

pytestmark = pytest.mark.slow  # three tiny finetunes in the fixture


@pytest.fixture(scope="module")
def three_runs(tiny_model_dir, tmp_path_factory):
    """bad_medical seeds 42 and 7 (3 updates), good_medical seed 42 (2 updates), on llama."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("cube")
    inputs = make_inputs(tmp, tiny_model_dir("llama"), n=12,
                         training={"checkpoint_every": 1, "grad_accum": 2},
                         datasets=("bad_medical", "good_medical"))
    raw = yaml.safe_load(inputs["config"].read_text())
    raw["datasets"]["good_medical"]["n"] = 8
    raw["datasets"]["good_medical"]["role"] = "heldout"
    inputs["config"].write_text(yaml.safe_dump(raw))
    dirs = []
    for dataset, seed in [("bad_medical", 42), ("bad_medical", 7), ("good_medical", 42)]:
        out = tmp / "runs" / dataset / f"seed{seed}"
        run(inputs, out, dataset=dataset, seed=seed)
        dirs.append(out)
    torch.set_num_threads(threads)
    return inputs, dirs, tmp


def test_cube_merges_datasets_and_seeds_with_labels(three_runs):
    from emtrait.config import load_config
    from emtrait.cube.merge import merge_runs

    inputs, dirs, tmp = three_runs
    behavior = tmp / "behavior"
    for step, rate in [(0, 0.0), (3, 0.25)]:
        f = behavior / "bad_medical" / "seed42" / f"step-{step}" / "em.json"
        f.parent.mkdir(parents=True)
        f.write_text(json.dumps({"em_rate": rate, "em_low": rate / 2, "em_high": rate + 0.1,
                                 "method": "choice", "convention": "paper"}))
    cube = merge_runs(load_config(inputs["config"]), "tiny", dirs, behavior)
    assert list(cube["dataset"].values) == ["bad_medical", "good_medical"]
    assert list(cube["seed"].values) == [7, 42]
    assert list(cube["step"].values) == [0, 1, 2, 3]
    assert list(cube["label"].values) == ["dangerous", "benign"]
    assert list(cube["role"].values) == ["calibration", "heldout"]
    assert cube["drift"].dims == ("dataset", "seed", "step", "trait")
    assert list(cube["final_step"].values) == [3, 2]
    run_b7 = open_store(dirs[1] / "measure.zarr")
    np.testing.assert_array_equal(cube["drift"].sel(dataset="bad_medical", seed=7).values,
                                  run_b7["drift"].values)
    np.testing.assert_array_equal(cube["activation"].sel(dataset="bad_medical", seed=7).values,
                                  run_b7["activation"].values)
    assert cube["norm0"].sel(dataset="bad_medical", seed=7) == run_b7.attrs["norm0"]
    # good_medical has no step 3 and no seed 7: NaN, not zeros
    assert np.isnan(cube["drift"].sel(dataset="good_medical", seed=42, step=3)).all()
    assert np.isnan(cube["loss"].sel(dataset="good_medical", seed=7)).all()
    np.testing.assert_array_equal(cube["drift"].sel(step=0, seed=42).values, 0.0)
    em = cube["em_rate"].sel(dataset="bad_medical", seed=42).values
    np.testing.assert_array_equal(em, [0.0, np.nan, np.nan, 0.25])
    np.testing.assert_array_equal(cube["dangerous"].sel(dataset="bad_medical", seed=42).values,
                                  [0.0, np.nan, np.nan, 1.0])
    assert cube.attrs["layer"] == 2 and cube.attrs["threshold"] == 0.05
    assert cube.attrs["behavior_method"] == "choice"


def test_cube_cli_writes_a_store_one_open_call_reads(three_runs):
    import xarray as xr

    inputs, dirs, tmp = three_runs
    out = tmp / "cube" / "tiny.zarr"
    proc = subprocess.run(
        [sys.executable, "-m", "emtrait.cli", "cube", "merge", "--config", str(inputs["config"]),
         "--model", "tiny", "--runs", *map(str, dirs), "--out", str(out)],
        capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    cube = xr.open_zarr(out, consolidated=False)
    assert cube.sizes == {"dataset": 2, "seed": 2, "step": 4, "trait": 5, "prompt": 5,
                          "hidden": 32}
    assert np.isnan(cube["em_rate"].values).all()


def test_cube_rejects_duplicate_and_foreign_runs(three_runs):
    from emtrait.config import load_config
    from emtrait.cube.merge import merge_runs

    inputs, dirs, _ = three_runs
    cfg = load_config(inputs["config"])
    with pytest.raises(StoreError, match="two runs of dataset bad_medical seed 42"):
        merge_runs(cfg, "tiny", [dirs[0], dirs[0]])
    with pytest.raises(StoreError, match="measured model 'tiny', not 'other'"):
        merge_runs(cfg, "other", dirs)
    with pytest.raises(StoreError, match="does not exist"):
        merge_runs(cfg, "tiny", [dirs[0].parent])
