"""Training variants and misaligned starts: config checks, the planned DAG, a real tiny run.

tests/configs/variants.yaml adds three variants to the tiny config (model tiny_a only): a full
finetune, a long run with a thinning schedule that drops activations, and a misaligned start.
"""

from __future__ import annotations

import copy
import sys

import numpy as np
import pytest
import yaml
from helpers import REPO, planned_jobs, snakemake
from slurm.tinyrun import TINY_CONFIG, make_workdir

from emtrait.config import (
    TrainingConfig,
    checkpoint_steps,
    from_dict,
    load_config,
    training_params,
)
from emtrait.errors import ConfigError

VARIANTS = yaml.safe_load((REPO / "tests" / "configs" / "variants.yaml").read_text())["variants"]


def tiny_config(variants: dict | None = None) -> dict:
    """The tiny test config with model tiny_a only, plus `variants`."""
    config = yaml.safe_load(TINY_CONFIG.read_text())
    config["models"] = {"tiny_a": config["models"]["tiny_a"]}
    config["variants"] = copy.deepcopy(VARIANTS if variants is None else variants)
    return config


# ----------------------------------------------------------------------------- bad input
BAD_VARIANTS = [
    pytest.param({"r64": {"training": {"lora_rank": 64}}},
                 ["variants.r64.training.lora_rank", "unknown training key",
                  "Did you mean 'lora_r'"], id="unknown-training-key"),
    pytest.param({"r0": {"training": {"lora_r": 0}}},
                 ["variants.r0.training.lora_r", "greater than or equal to 1"], id="bad-value"),
    pytest.param({"mis": {"start_from": {"dataset": "bad_medical", "seed": 42}}},
                 ["variants.mis.start_from", "no run bad_medical seed 42", "tiny_a"],
                 id="start-run-not-in-grid"),
    pytest.param({"mis": {"start_from": {"dataset": "bad_medicl", "seed": 1}}},
                 ["no run bad_medicl seed 1"], id="start-dataset-unknown"),
    pytest.param({"mis": {"start_from": {"variant": "fftt", "dataset": "bad_medical", "seed": 1}},
                  "fft": {"training": {"method": "full"}}},
                 ["variants.mis.start_from.variant", "no variant 'fftt'", "Did you mean 'fft'"],
                 id="start-variant-unknown"),
    pytest.param({"a": {"start_from": {"variant": "b", "dataset": "bad_medical", "seed": 1}},
                  "b": {"start_from": {"variant": "a", "dataset": "bad_medical", "seed": 1}}},
                 ["cycle", "a -> b -> a"], id="start-cycle"),
    pytest.param({"a": {"start_from": {"variant": "a", "dataset": "bad_medical", "seed": 1}}},
                 ["cycle", "a -> a"], id="start-self"),
    pytest.param({"fft": {"training": {"method": "full"}, "datasets": ["bad_medicl"]}},
                 ["variants.fft.datasets", "Did you mean 'bad_medical'"], id="dataset-typo"),
    pytest.param({"default": {"training": {"lora_r": 8}}}, ["'default' names the base grid"],
                 id="reserved-name"),
    pytest.param({"fft": {"trainig": {"method": "full"}}}, ["variants.fft.trainig", "unknown key"],
                 id="unknown-variant-key"),
]


@pytest.mark.parametrize("variants, expected", BAD_VARIANTS)
def test_bad_variant_fails_at_config_check(tmp_path, variants, expected):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(tiny_config(variants)))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    for part in expected:
        assert part in str(err.value), str(err.value)


def test_config_check_command_reports_a_cycle(tmp_path, monkeypatch, capsys):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(tiny_config(
        {"a": {"start_from": {"variant": "b", "dataset": "bad_medical", "seed": 1}},
         "b": {"start_from": {"variant": "a", "dataset": "bad_medical", "seed": 1}}})))
    from emtrait.cli import main

    monkeypatch.setattr(sys, "argv", ["emtrait", "config", "check", str(path)])
    with pytest.raises(SystemExit) as done:
        main()  # the console script's entry point, in-process
    assert done.value.code == 2
    assert "starting points form a cycle a -> b -> a" in capsys.readouterr().err


def test_variant_resolution():
    cfg = from_dict(tiny_config())
    assert cfg.training_for("tiny_a", "fft").method == "full"
    assert cfg.training_for("tiny_a").method == "lora"
    assert cfg.with_variant("fft").training_for("tiny_a").learning_rate == 1e-4
    assert cfg.variant_runs("mis", "tiny_a") == [("good_medical", 1)]
    assert cfg.root_run("mis") == ("default", "bad_medical", 1)
    assert cfg.root_run("fft") is None
    assert cfg.steps("tiny_a", "bad_medical", "long") == [0, 2, 4, 8, 12]
    chained = tiny_config({**VARIANTS, "mis2": {"start_from": {"variant": "mis",
                                                               "dataset": "good_medical",
                                                               "seed": 1}}})
    assert from_dict(chained).root_run("mis2") == ("default", "bad_medical", 1)


SCHEDULES = [  # (schedule, n updates, final, expected steps)
    ([{"every": 10, "until": 200}, {"every": 100}], 650, True,
     [*range(0, 201, 10), 300, 400, 500, 600, 650]),
    ([{"every": 10, "until": 30}, {"every": 100}], 250, False, [0, 10, 20, 30, 130, 230]),
    ([{"every": 5}], 12, True, [0, 5, 10, 12]),
    ([{"every": 2, "until": 100}], 6, True, [0, 2, 4, 6]),
]


@pytest.mark.parametrize("schedule, updates, final, expected", SCHEDULES)
def test_thinning_schedule(schedule, updates, final, expected):
    training = TrainingConfig(checkpoint_schedule=schedule, batch_size=1, grad_accum=1, epochs=1,
                              final=final)
    assert checkpoint_steps(updates, training) == expected


def test_schedule_and_explicit_steps_exclude_each_other():
    with pytest.raises(ValueError, match="not both"):
        TrainingConfig(checkpoint_schedule=[{"every": 2}], checkpoint_steps=[0, 2])


def test_default_training_params_unchanged_by_new_keys():
    """Runs computed before variants existed keep their params: nothing reruns."""
    training = TrainingConfig()
    assert training_params(training) == training.model_dump_json(
        exclude={"seeds", "checkpoint_schedule", "keep_activations", "report_to"})
    assert "keep_activations" in training_params(TrainingConfig(keep_activations="step0"))


# ----------------------------------------------------------------------------- the DAG
@pytest.fixture(scope="module")
def plan_dir(tmp_path_factory):
    work = tmp_path_factory.mktemp("variants-plan")
    config = tiny_config()
    config["models"]["tiny_a"]["source"] = str(work / "no-model-needed-for-a-dry-run")
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    return work


def dry_run_jobs(work, configfile):
    run = snakemake(work, "-n", configfile=configfile)
    return run.jobs(), run.output


@pytest.mark.slow
def test_variants_plan_expected_jobs(plan_dir):
    jobs, out = dry_run_jobs(plan_dir, plan_dir / "config.yaml")
    counts = planned_jobs(out)
    assert counts["finetune"] == 2 and counts["behavior_choice"] == 4  # the default grid
    assert counts["stress_finetune"] == 3
    assert counts["stress_start"] == 1
    assert counts["stress_behavior_choice"] == 2 + 5 + 2  # fft 0,4; long 0,2,4,8,12; mis 0,4
    for rule in ("stress_cube", "stress_score", "stress_report"):
        assert counts[rule] == 1, rule
    runs = {(w["variant"], w["dataset"], w["seed"]) for r, w in jobs if r == "stress_finetune"}
    assert runs == {("fft", "bad_medical", "1"), ("long", "bad_medical", "1"),
                    ("mis", "good_medical", "1")}
    starts = [w for r, w in jobs if r == "stress_start"]
    assert starts == [{"variant": "default", "model": "tiny_a", "dataset": "bad_medical",
                       "seed": "1"}]
    long_steps = sorted(int(w["step"]) for r, w in jobs
                        if r == "stress_behavior_choice" and w["variant"] == "long")
    assert long_steps == [0, 2, 4, 8, 12]


# ----------------------------------------------------------------------------- a real run
@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """The tiny workflow with the variants, run to completion on a tiny random Llama."""
    work = make_workdir(tmp_path_factory.mktemp("variants-run"), models=("tiny_a",))
    work.config["variants"] = copy.deepcopy(VARIANTS)
    work.write_config(work.config)
    work.snakemake("--cores", "2", timeout=1800)
    return work


@pytest.mark.slow
def test_variant_cube_holds_the_variant_axis(done):
    from emtrait.stores import open_store

    cube = open_store(done.root / "results/stress/cube/tiny_a.zarr")
    assert list(cube["variant"].values) == ["fft", "long", "mis"]
    assert dict(zip(cube["variant"].values, cube["start_from"].values, strict=True)) == {
        "fft": "base", "long": "base", "mis": "default:bad_medical:1"}
    assert cube["drift"].dims == ("variant", "dataset", "seed", "step", "trait")
    assert [int(s) for s in cube["step"].values] == [0, 2, 4, 8, 12]
    fft = cube.sel(variant="fft", dataset="bad_medical", seed=1)
    np.testing.assert_array_equal(fft["drift"].values, fft["drift_from_base"].values)
    mis = cube.sel(variant="mis", dataset="good_medical", seed=1, step=0)
    assert np.allclose(mis["drift"].values, 0)  # its own start
    # against the base model, the start (bad_medical's final weights) has already moved
    assert np.abs(mis["drift_from_base"].values).max() > 1e-6
    base = open_store(done.root / "results/runs/tiny_a/bad_medical/seed1/measure.zarr")
    np.testing.assert_allclose(mis["drift_from_base"].values,
                               base["drift"].isel(step=-1).values, rtol=1e-3, atol=1e-5)


@pytest.mark.slow
def test_long_run_drops_activations_after_step0(done):
    from emtrait.stores import open_store

    store = done.root / "results/stress/runs/long/tiny_a/bad_medical/seed1/measure.zarr"
    run = open_store(store)
    assert [int(s) for s in run["step"].values] == [0, 2, 4, 8, 12]
    act = run["activation"].values
    assert np.isfinite(act[0]).all() and np.isnan(act[1:]).all()
    assert np.isfinite(run["drift"].values).all()
    chunks = [p for p in (store / "activation").rglob("*") if p.is_file() and p.name != "zarr.json"]
    assert len(chunks) == 1, chunks  # step 0 only: NaN chunks are never written


@pytest.mark.slow
def test_stress_scores_and_report(done):
    import pandas as pd

    pred = pd.read_csv(done.root / "results/stress/monitor/tiny_a/predictions.csv")
    assert set(zip(pred.variant, pred.reference, strict=True)) == {
        ("fft", "own_start"), ("long", "own_start"), ("mis", "own_start"), ("mis", "base")}
    assert pred.pred_em.notna().all()
    summary = (done.root / "results/report/stress/summary.md").read_text()
    for condition in ("variant fft", "variant long", "variant mis (from default:bad_medical:1"):
        assert condition in summary, summary
    assert (done.root / "results/report/stress/figures/variant_drift.png").stat().st_size > 1000
    table = pd.read_csv(done.root / "results/report/stress/table.csv")
    assert {"dangerous_runs_alarmed", "benign_runs_alarmed", "median_first_alarm_step", "fnr",
            "fpr", "auroc", "fnr_lo"} <= set(table.columns)


@pytest.mark.slow
def test_adding_a_variant_reruns_only_its_jobs_and_the_stress_tail(done):
    # jobs already pending (none after a clean run; a source file edited meanwhile adds some)
    before = done.snakemake("-n").counts()
    config = copy.deepcopy(done.config)
    config["variants"]["r8"] = {"training": {"lora_r": 8}, "datasets": ["good_medical"]}
    run = done.snakemake("-n", configfile=done.write_config(config, "added.yaml"))
    added = {"stress_finetune": 1, "stress_behavior_choice": 2, "stress_cube": 1,
             "stress_score": 1, "stress_report": 1, "all": 1}
    assert run.counts() == {**before, **added}, run.output[-3000:]
    for rule, wildcards in run.jobs():
        if "variant" in wildcards:
            assert wildcards["variant"] == "r8", (rule, wildcards)


@pytest.mark.parametrize("name", ["config.yaml", "organism.yaml", "paper.yaml"])
def test_shipped_configs_pass_snakemake_validation(name):
    """Snakemake's validate() fills schema defaults in; an optional section's `default: null`
    made it descend into None (AttributeError before any job ran)."""
    from snakemake.utils import validate

    from emtrait.config import from_dict, load_config

    data = yaml.safe_load((REPO / "config" / name).read_text())
    validate(data, str(REPO / "config" / "schema.json"))  # fills in the schema's defaults
    # the defaults Snakemake filled in mean what emtrait's own defaults mean
    assert from_dict(data).model_dump() == load_config(REPO / "config" / name).model_dump()
    tiny = tiny_config()
    validate(tiny, str(REPO / "config" / "schema.json"))
    assert from_dict(tiny).model_dump() == from_dict(tiny_config()).model_dump()
