"""The per-model cube: merges runs of different datasets and seeds, keeps their labels, carries
the directions at l*, and refuses missing or foreign inputs by name.

Fast tests merge run stores cut from a synthetic cube (the run-store contract, no training); one
slow test merges real tiny finetunes through the CLI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import yaml
from helpers import REPO, make_inputs, open_store, run
from synthetic import DEFAULT_DATASETS, synthetic_cube, synthetic_layer_cube

from emtrait.config import from_dict
from emtrait.errors import StoreError
from emtrait.stores import write_store

RUNS = [("bad_medical", 42), ("bad_medical", 7), ("good_medical", 42)]
DATASETS = [("bad_medical", "dangerous", "calibration"), ("good_medical", "benign", "heldout")]


def config():
    raw = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    raw["models"] = {"toy": {"source": "synthetic", "candidate_layers": [1, 2]}}
    raw["datasets"] = {name: {"builtin": name, "label": label, "role": role, "n": 8}
                       for name, label, role in DATASETS}
    return from_dict(raw)


def run_store(cube, dataset: str, seed: int, last_step: int | None = None):
    """One run's measure.zarr content (per the contract in DEVELOPING.md) cut from a cube."""
    r = cube.sel(dataset=dataset, seed=seed)
    r = r[["activation", "projection", "projection_norm", "drift", "loss", "direction"]]
    r = r.drop_vars(["label", "role"])
    if last_step is not None:
        r = r.sel(step=[s for s in r.step.values if s <= last_step])
    r.attrs = {"layer": cube.attrs["layer"], "model": cube.attrs["model"], "dataset": dataset,
               "seed": seed, "norm0": float(cube.norm0.sel(dataset=dataset, seed=seed))}
    return r


@pytest.fixture(scope="module")
def source():
    return synthetic_cube(datasets=DATASETS, seeds=(7, 42), steps=(0, 5, 10))


@pytest.fixture
def runs(source, tmp_path):
    """Three run stores (good_medical stops at step 5) and an em.json per checkpoint."""
    stores, em = [], []
    for d, s in RUNS:
        store = tmp_path / "runs" / d / f"seed{s}" / "measure.zarr"
        write_store(run_store(source, d, s, 5 if d == "good_medical" else None), store)
        stores.append(store)
        for step in (0, 5) if d == "good_medical" else (0, 5, 10):
            f = tmp_path / "behavior" / d / f"seed{s}" / f"step-{step}" / "em.json"
            f.parent.mkdir(parents=True)
            rate = None if (d, s, step) == ("bad_medical", 7, 5) else step / 100
            f.write_text(json.dumps({"model": "toy", "dataset": d, "seed": s, "step": step,
                                     "em_rate": rate, "em_low": 0.0, "em_high": 0.5,
                                     "method": "choice", "convention": "paper"}))
            em.append(f)
    return stores, em


def test_cube_merges_datasets_and_seeds_with_labels(source, runs):
    from emtrait.cube.merge import merge_runs

    stores, em = runs
    cube = merge_runs(config(), "toy", stores, em)
    assert list(cube["dataset"].values) == ["bad_medical", "good_medical"]
    assert list(cube["seed"].values) == [7, 42]
    assert list(cube["step"].values) == [0, 5, 10]
    assert list(cube["label"].values) == ["dangerous", "benign"]
    assert list(cube["role"].values) == ["calibration", "heldout"]
    assert list(cube["final_step"].values) == [10, 5]
    assert cube.attrs["layer"] == source.attrs["layer"] and cube.attrs["threshold"] == 0.05
    assert cube.attrs["behavior_method"] == "choice"
    bad7 = source.sel(dataset="bad_medical", seed=7)
    for var in ("drift", "activation", "norm0"):
        np.testing.assert_array_equal(cube[var].sel(dataset="bad_medical", seed=7), bad7[var])
    # the directions the runs were measured with travel into the cube
    np.testing.assert_array_equal(cube["direction"].values, source["direction"].values)
    # good_medical has no step 10 and no seed 7: NaN, not zeros
    assert np.isnan(cube["drift"].sel(dataset="good_medical", seed=42, step=10)).all()
    assert np.isnan(cube["loss"].sel(dataset="good_medical", seed=7)).all()
    # labels: one per checkpoint; a rate of None (nothing scoreable) is NaN and so is its label
    np.testing.assert_array_equal(cube["em_rate"].sel(dataset="bad_medical", seed=7),
                                  [0.0, np.nan, 0.1])
    np.testing.assert_array_equal(cube["dangerous"].sel(dataset="bad_medical", seed=7),
                                  [0.0, np.nan, 1.0])
    np.testing.assert_array_equal(cube["dangerous"].sel(dataset="bad_medical", seed=42),
                                  [0.0, 0.0, 1.0])  # 0.05 is not above the threshold


def test_cube_without_labels_is_unlabelled(runs):
    from emtrait.cube.merge import merge_runs

    cube = merge_runs(config(), "toy", runs[0])
    assert np.isnan(cube["em_rate"].values).all() and np.isnan(cube["dangerous"].values).all()


def test_a_missing_label_is_an_error_naming_the_checkpoint(runs):
    from emtrait.cube.merge import merge_runs

    stores, em = runs
    gone = [f for f in em if "good_medical/seed42/step-5" not in str(f)]
    with pytest.raises(StoreError, match="labels good_medical/seed42/step-5"):
        merge_runs(config(), "toy", stores, gone)
    absent = em[0].parent / "nothing" / "em.json"
    with pytest.raises(StoreError, match=f"{absent}: the behaviour label does not exist"):
        merge_runs(config(), "toy", stores, [*em, absent])
    em[1].write_text("{}")
    with pytest.raises(StoreError, match=f"{em[1]}: not an em.json"):
        merge_runs(config(), "toy", stores, em)


@pytest.mark.parametrize("case, message", [
    ("duplicate", "two runs of dataset bad_medical seed 7"),
    ("other_model", "measured model 'toy', not 'other'"),
    ("folder", "not a Zarr store"),
    ("other_directions", "other directions"),
    ("unknown_dataset", "'insecure_code', which the config does not define"),
    ("no_runs", "no runs to merge"),
])
def test_cube_rejects_bad_runs(source, runs, tmp_path, case, message):
    from emtrait.cube.merge import merge_runs

    stores, _ = runs
    model = "other" if case == "other_model" else "toy"
    if case == "duplicate":
        stores = [stores[1], stores[1]]
    elif case == "folder":
        stores = [stores[0].parent]
    elif case == "other_directions":
        moved = run_store(source, "good_medical", 7)
        moved["direction"] = moved["direction"] * -1
        write_store(moved, tmp_path / "moved.zarr")
        stores = [*stores, tmp_path / "moved.zarr"]
    elif case == "unknown_dataset":
        foreign = run_store(source, "bad_medical", 42)
        foreign.attrs["dataset"] = "insecure_code"
        write_store(foreign, tmp_path / "foreign.zarr")
        stores = [*stores, tmp_path / "foreign.zarr"]
    elif case == "no_runs":
        stores = []
    with pytest.raises(StoreError, match=message):
        merge_runs(config(), model, stores)


def test_plain_zarr_opens_the_cube_and_no_text_is_fixed_width(runs, tmp_path):
    """Issue 17.6: text is stored as variable-length strings (no FixedLengthUTF32, which has no
    Zarr v3 specification), so zarr itself, not only xarray, reads every array."""
    import zarr

    from emtrait.cube.merge import merge_runs, write_cube
    from emtrait.cube.read import open_cube

    cube = merge_runs(config(), "toy", *runs, all_layers=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", zarr.errors.UnstableSpecificationWarning)
        write_cube(cube, tmp_path / "toy.zarr")
        # what a reader hands back (fixed-width str) written again must not warn either
        write_cube(open_cube(tmp_path / "toy.zarr", all_layers=True), tmp_path / "again.zarr")
    for path in (tmp_path / "toy.zarr", tmp_path / "again.zarr"):
        group = zarr.open_group(path, mode="r")
        assert {"drift", "dangerous", "direction", "dataset", "label"} <= set(group.array_keys())
        for name in group.array_keys():
            group[name][...]  # every array reads with zarr alone
            assert "FixedLengthUTF32" not in str(group[name].metadata.data_type), name
        assert [str(x) for x in group["label"][...]] == ["dangerous", "benign"]
        np.testing.assert_array_equal(group["direction"][...], cube["direction"].values)


@pytest.mark.slow  # three tiny finetunes
def test_cube_cli_merges_real_runs(tiny_model_dir, tmp_path):
    from emtrait.cube.read import open_cube

    inputs = make_inputs(tmp_path, tiny_model_dir("llama"), n=8,
                         training={"checkpoint_every": 1, "grad_accum": 2},
                         datasets=("bad_medical", "good_medical"))
    stores = []
    for dataset, seed in [("bad_medical", 42), ("good_medical", 42)]:
        out = tmp_path / "runs" / dataset / f"seed{seed}"
        run(inputs, out, dataset=dataset, seed=seed)
        stores.append(out / "measure.zarr")
    cube_path = tmp_path / "cube" / "tiny.zarr"
    proc = subprocess.run(
        [sys.executable, "-m", "emtrait.cli", "cube", "merge", "--config", str(inputs["config"]),
         "--model", "tiny", *(a for s in stores for a in ("--run", str(s))),
         "--out", str(cube_path)],
        capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    assert "unlabelled" in proc.stdout
    cube = open_cube(cube_path)
    assert cube.sizes == {"dataset": 2, "seed": 1, "step": 3, "trait": 5, "prompt": 5,
                          "hidden": 32}
    assert cube.attrs["layer"] == 2
    extracted = open_store(inputs["directions"])["direction"].sel(layer=2)
    np.testing.assert_array_equal(cube["direction"].values,
                                  extracted.transpose("trait", "hidden").values)
    np.testing.assert_array_equal(cube["drift"].sel(step=0).values, 0.0)
    # measurement.layers defaults to every candidate: the cube keeps both, l* is its view
    full = open_cube(cube_path, all_layers=True)
    assert list(full["layer"].values) == [1, 2] and cube_path.is_symlink()
    np.testing.assert_array_equal(full["drift"].sel(layer=2).values, cube["drift"].values)
    np.testing.assert_array_equal(full["drift"].sel(layer=1, step=0).values, 0.0)


# ------------------------------------------------------------------------- the layer dimension

def layered_run_store(cube, dataset: str, seed: int):
    """A run store measured at every layer of a layer cube (`measurement.layers: candidates`)."""
    star = cube.attrs["layer"]
    r = run_store(cube.sel(layer=star, drop=True).assign_attrs(layer=star), dataset, seed)
    at = cube.sel(dataset=dataset, seed=seed).drop_vars(["label", "role"])
    r["projection_layers"] = at["projection"].transpose("step", "layer", "trait")
    r["activation_layers"] = at["activation"].transpose("step", "layer", "prompt", "hidden")
    r["direction_layers"] = cube["direction"].transpose("layer", "trait", "hidden")
    return r


@pytest.fixture(scope="module")
def layer_source():
    return synthetic_layer_cube(datasets=DATASETS, seeds=(7, 42), steps=(0, 5, 10))


def _write_runs(source, tmp_path, make, name="runs"):
    stores = []
    for d, s in RUNS:
        store = tmp_path / name / d / f"seed{s}" / "measure.zarr"
        write_store(make(source, d, s), store)
        stores.append(store)
    return stores


def test_cube_keeps_every_measured_layer_and_its_l_star_view_is_todays_cube(layer_source,
                                                                             tmp_path):
    from emtrait.cube.merge import merge_runs

    stores = _write_runs(layer_source, tmp_path, layered_run_store)
    cube = merge_runs(config(), "toy", stores, all_layers=True)
    assert list(cube["layer"].values) == [1, 2] and cube.attrs["layer"] == 2
    assert cube["drift"].dims == ("dataset", "seed", "step", "layer", "trait")
    assert cube["direction"].dims == ("trait", "layer", "hidden")
    # the l* view is exactly what a merge at l* alone gives (today's cube), variable by variable
    today = merge_runs(config(), "toy", stores)
    view = cube.sel(layer=cube.attrs["layer"], drop=True)
    assert set(view.data_vars) == set(today.data_vars)
    for var in today.data_vars:
        assert view[var].dims == today[var].dims, var
        np.testing.assert_array_equal(view[var].values, today[var].values, err_msg=var)
    # the other layer: its own directions, and drift normalised by its own step-0 norm
    src = layer_source.sel(dataset="bad_medical", seed=7, layer=1)
    got = cube.sel(dataset="bad_medical", seed=7, layer=1)
    np.testing.assert_array_equal(got["direction"], layer_source["direction"].sel(layer=1))
    np.testing.assert_allclose(got["norm0"], src["norm0"], rtol=1e-6)
    np.testing.assert_allclose(got["drift"], src["drift"], rtol=1e-4, atol=1e-6)
    assert not np.allclose(got["drift"], cube["drift"].sel(dataset="bad_medical", seed=7,
                                                           layer=2))


def test_runs_measured_at_l_star_only_give_a_cube_of_one_layer(source, runs):
    from emtrait.cube.merge import merge_runs

    cube = merge_runs(config(), "toy", runs[0], all_layers=True)
    assert list(cube["layer"].values) == [source.attrs["layer"]]
    today = merge_runs(config(), "toy", runs[0])
    for var in today.data_vars:
        np.testing.assert_array_equal(cube.sel(layer=cube.attrs["layer"])[var], today[var])


def test_mixing_layered_and_l_star_runs_is_an_error_naming_them(source, layer_source, runs,
                                                                 tmp_path):
    from emtrait.cube.merge import merge_runs

    layered = tmp_path / "layered.zarr"
    write_store(layered_run_store(layer_source, "good_medical", 7), layered)
    with pytest.raises(StoreError, match="different layers") as err:
        merge_runs(config(), "toy", [*runs[0], layered], all_layers=True)
    assert str(layered) in str(err.value) and str(runs[0][0]) in str(err.value)
    # the l* view does not need the other layers, so it merges
    assert "layer" not in merge_runs(config(), "toy", [*runs[0], layered]).dims


def test_readers_get_the_l_star_view_and_the_layer_analysis_every_layer(layer_source, tmp_path):
    """open_cube's default is today's cube; at_layer gives any measured layer as l* would be;
    the written cube is a link to its store, so plain xarray opens it with no warning."""
    import xarray as xr

    from emtrait.cube.merge import merge_runs, store_path, write_cube
    from emtrait.cube.read import at_layer, open_cube
    from emtrait.errors import DataError

    stores = _write_runs(layer_source, tmp_path, layered_run_store)
    out = tmp_path / "cube" / "toy.zarr"
    write_cube(merge_runs(config(), "toy", stores, all_layers=True), out)
    write_cube(merge_runs(config(), "toy", stores, all_layers=True), out)  # a rerun replaces it
    assert out.is_symlink() and os.readlink(out) == store_path(out).name
    assert sorted(p.name for p in out.parent.iterdir()) == [".toy.zarr.data", "toy.zarr"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        xr.open_zarr(out, consolidated=False)
    view, full = open_cube(out), open_cube(out, all_layers=True)
    assert "layer" not in view.dims and view.attrs["layer"] == 2
    assert full.sizes["layer"] == 2
    other = at_layer(full, 1)
    assert other.attrs["layer"] == 1 and other.attrs["chosen_layer"] == 2
    np.testing.assert_array_equal(other["drift"], full["drift"].sel(layer=1))
    with pytest.raises(DataError, match=r"no layer 7 \(measured layers: \[1, 2\]\)"):
        at_layer(full, 7)


def test_a_cube_written_without_a_layer_dimension_reads_as_a_cube_of_l_star(source, tmp_path):
    from emtrait.cube.read import open_cube

    write_store(source, tmp_path / "old.zarr")
    full = open_cube(tmp_path / "old.zarr", all_layers=True)
    assert list(full["layer"].values) == [source.attrs["layer"]]
    assert full["drift"].dims == ("dataset", "seed", "step", "layer", "trait")
    view = open_cube(tmp_path / "old.zarr")
    for var in source.data_vars:
        assert view[var].dims == source[var].dims, var
        np.testing.assert_array_equal(view[var].values, source[var].values, err_msg=var)


CUBE_SNAKEFILE = """
from snakemake.utils import min_version
min_version("9.0")
configfile: "config.yaml"
include: "{repo}/workflow/rules/common.smk"
include: "{repo}/workflow/rules/cube.smk"
include: "{repo}/workflow/rules/monitor.smk"
"""


@pytest.mark.slow  # three real Snakemake invocations (~20 s)
def test_merge_rule_leaves_the_store_clean_and_reruns_on_new_labels(tmp_path):
    """The workflow's own rules on run stores and labels placed where they expect them: plain
    `xr.open_zarr -W error` opens the cube, nothing is planned again, a newer label reruns the
    merge, and `monitor_layers` reads every measured layer of it."""
    import pandas as pd
    from helpers import planned_jobs, snakemake

    raw = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    raw["models"] = {"toy": {"source": "synthetic", "candidate_layers": [1, 2]}}
    raw["datasets"] = {name: {"builtin": name, "label": label, "role": role, "n": 8}
                       for name, label, role in [*DATASETS,
                                                 ("arithmetic", "benign", "calibration")]}
    raw["monitor"] = {"bootstrap": 20, "regressors": ["ridge"], "permutations": 4}
    raw["training"] = {**raw.get("training", {}), "seeds": [7, 42]}
    cfg = from_dict(raw)
    steps = cfg.steps("toy", "bad_medical")
    roles = [(d, e.label, e.role) for d, e in cfg.datasets.items()]
    source = synthetic_layer_cube(datasets=roles, seeds=(7, 42), steps=steps)
    work = tmp_path
    (work / "Snakefile").write_text(CUBE_SNAKEFILE.format(repo=REPO))
    (work / "config.yaml").write_text(yaml.safe_dump(raw))
    for d, _, _ in roles:
        for s in (7, 42):
            run_dir = work / "results/runs/toy" / d / f"seed{s}"
            write_store(layered_run_store(source, d, s), run_dir / "measure.zarr")
            (run_dir / "done.json").write_text("{}")
            for step in steps:
                f = work / "results/behavior/toy" / d / f"seed{s}" / f"step-{step}" / "em.json"
                f.parent.mkdir(parents=True)
                rate = float(source.em_rate.sel(dataset=d, seed=s, step=step))
                f.write_text(json.dumps({"model": "toy", "dataset": d, "seed": s, "step": step,
                                         "em_rate": rate, "em_low": 0.0, "em_high": 1.0}))
    targets = ["results/cube/toy.zarr", "results/monitor/toy/layers.csv"]
    sm = lambda *a: snakemake(work, *targets, *a, snakefile=work / "Snakefile")  # noqa: E731
    sm("--cores", "1")
    cube = work / "results/cube/toy.zarr"
    assert cube.is_symlink() and not (cube.resolve() / ".snakemake_timestamp").exists()
    clean = subprocess.run([sys.executable, "-W", "error", "-c", "import xarray as xr; "
                            f"xr.open_zarr({str(cube)!r}, consolidated=False)"],
                           capture_output=True, text=True, timeout=120)
    assert clean.returncode == 0, clean.stderr
    layers = pd.read_csv(work / "results/monitor/toy/layers.csv")
    assert sorted(set(layers.layer)) == [1, 2] and layers[layers.chosen].layer.unique() == [2]
    assert planned_jobs(sm("-n").stdout) == {}  # the link's time stands for the store's
    # a relabelled checkpoint (new content: Snakemake skips an input whose checksum is unchanged)
    label = work / "results/behavior/toy/good_medical/seed7" / f"step-{steps[-1]}" / "em.json"
    label.write_text(json.dumps({**json.loads(label.read_text()), "em_rate": 0.5}))
    assert planned_jobs(sm("-n").stdout) == {"merge_cube": 1, "monitor_layers": 1}
    sm("--cores", "1")
    assert cube.is_symlink() and not (cube.resolve() / ".snakemake_timestamp").exists()
    assert planned_jobs(sm("-n").stdout) == {}


def test_the_monitor_fitted_on_the_calibration_cube_is_the_one_of_the_whole_cube(tmp_path):
    """Rule monitor_fit reads the calibration runs' cube only (rule merge_calibration_cube), so
    that adding a held-out or stress dataset leaves the fit alone: the monitor must be the one
    fitted on the whole cube, even when other datasets' runs are longer (more steps)."""
    from emtrait.cube.merge import merge_runs
    from emtrait.monitor.evaluate import fit_monitor

    source = synthetic_cube(seeds=(42,), steps=(0, 5, 10, 15, 20), nan_em=2,
                            short={"bad_medical": 15, "good_medical": 15, "insecure_code": 15,
                                   "arithmetic": 10})
    raw = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    raw["models"] = {"toy": {"source": "synthetic", "candidate_layers": [1, 2]}}
    raw["datasets"] = {d: {"path": f"{d}.jsonl", "label": label, "role": role}
                       for d, label, role in DEFAULT_DATASETS}
    raw["monitor"] = {"regressors": ["ridge"], "include_step": True}
    cfg = from_dict(raw)
    inputs: dict[str, tuple[list, list]] = {}
    for d, _, role in DEFAULT_DATASETS:
        for s in source.seed.values:
            r = run_store(source, d, int(s))
            r = r.sel(step=[t for t in r.step.values if np.isfinite(r.drift.sel(step=t)).all()])
            store = tmp_path / d / f"seed{s}" / "measure.zarr"
            write_store(r, store)
            em = []
            for t in r.step.values:
                f = store.parent / f"step-{t}.json"
                rate = float(source.em_rate.sel(dataset=d, seed=s, step=t))
                f.write_text(json.dumps({"model": "toy", "dataset": d, "seed": int(s),
                                         "step": int(t), "em_rate": None if np.isnan(rate)
                                         else rate, "em_low": 0.0, "em_high": 1.0}))
                em.append(f)
            for part in ("all", role):
                stores, labels = inputs.setdefault(part, ([], []))
                stores.append(store)
                labels.extend(em)
    whole = merge_runs(cfg, "toy", *inputs["all"])
    calibration = merge_runs(cfg, "toy", *inputs["calibration"])
    assert whole.sizes["step"] == 5 and calibration.sizes["step"] == 4  # stress/held-out: step 20
    assert set(calibration.role.values) == {"calibration"}

    (mon_whole, table_whole), (mon_cal, table_cal) = (fit_monitor(c, cfg)
                                                      for c in (whole, calibration))
    assert mon_cal.meta == mon_whole.meta
    assert table_cal == table_whole
    np.testing.assert_array_equal(mon_cal.directions, mon_whole.directions)
    drift = whole.drift.sel(trait=mon_whole.traits).stack(row=("dataset", "seed", "step"))
    x = np.nan_to_num(drift.transpose("row", "trait").values)
    steps = drift.step.values
    for key, value in mon_whole.predict(x, steps).columns().items():
        np.testing.assert_array_equal(mon_cal.predict(x, steps).columns()[key], value,
                                      err_msg=key)
