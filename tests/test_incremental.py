"""Incremental re-execution of the real workflow, proven on dry-run job lists.

One tiny configuration (two tiny models, two datasets, one seed, checkpoints 0 and 4) runs to
completion once; then each test edits one thing and asserts exactly which jobs Snakemake plans.
"""

from __future__ import annotations

import copy
import os

import pytest
from slurm.tinyrun import Workdir, local_cubes

pytestmark = pytest.mark.slow

MODELS = ("tiny_a", "tiny_b")
STEPS = (0, 4)
# What depends on every run of a model, and on every model: rerun by any run's change.
PER_MODEL_TAIL = ("merge_cube", "monitor_fit", "monitor_evaluate")
GLOBAL_TAIL = ("pca", "report", "all")


@pytest.fixture(scope="module")
def done(tmp_path_factory) -> Workdir:
    """The tiny workflow, run to completion locally."""
    work = local_cubes(tmp_path_factory)
    assert tuple(work.config["models"]) == MODELS
    work.snakemake("--cores", "2")
    return work


def expected_for(models, datasets, all_datasets) -> dict[str, int]:
    """Job counts when the runs of `models` x `datasets` (one seed) and everything downstream
    of them are planned: each of those models' tail, its screens of every dataset of the
    config (they read the model's monitor), and the global tail."""
    runs = len(models) * len(datasets)
    counts = {"finetune": runs, "behavior_choice": runs * len(STEPS)}
    counts.update({rule: len(models) for rule in PER_MODEL_TAIL})
    counts["screen"] = len(models) * len(all_datasets)
    counts.update({rule: 1 for rule in GLOBAL_TAIL})
    return counts


def test_completed_workflow_reinvoked_does_nothing(done):
    run = done.snakemake("-n")
    assert run.jobs() == []
    assert "Nothing to be done" in run.output


def test_adding_a_dataset_schedules_exactly_its_jobs(done):
    config = copy.deepcopy(done.config)
    config["datasets"]["arithmetic"] = {"builtin": "arithmetic", "label": "benign",
                                        "role": "calibration", "n": 16}
    run = done.snakemake("-n", configfile=done.write_config(config, "added.yaml"))
    expected = expected_for(MODELS, ["arithmetic"], config["datasets"])
    expected["prepare_dataset"] = 1
    assert run.counts() == expected, run.output[-3000:]
    for rule, wildcards in run.jobs():
        if "seed" in wildcards:  # per-run jobs: only the new dataset's
            assert wildcards["dataset"] == "arithmetic", (rule, wildcards)


def test_lora_change_of_one_model_reruns_only_its_runs(done):
    config = copy.deepcopy(done.config)
    config["models"]["tiny_a"]["training"] = {"lora_r": 8}
    run = done.snakemake("-n", configfile=done.write_config(config, "lora.yaml"))
    expected = expected_for(["tiny_a"], config["datasets"], config["datasets"])
    assert run.counts() == expected, run.output[-3000:]
    for rule, wildcards in run.jobs():
        if "model" in wildcards:
            assert wildcards["model"] == "tiny_a", (rule, wildcards)


def test_plot_code_change_reruns_only_the_report(done):
    figures = done.src / "emtrait" / "report" / "figures.py"
    original, stat = figures.read_bytes(), figures.stat()
    try:
        figures.write_bytes(original + b"\n# a change to the plotting code\n")
        run = done.snakemake("-n")
        assert run.counts() == {"report": 1, "all": 1}, run.output[-3000:]
    finally:
        figures.write_bytes(original)
        os.utime(figures, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert done.snakemake("-n").jobs() == []
