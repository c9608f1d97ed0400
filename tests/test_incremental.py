"""Incremental re-execution of the real workflow, proven on dry-run job lists.

One tiny configuration (two tiny models, two calibration datasets, one seed, checkpoints 0 and
4) runs to completion once; then each test edits one thing and asserts exactly which jobs
Snakemake plans: `EDITS` is the table of user edits and the rules each one must run, and nothing
more. The science fixes some of them: the monitor is fitted on calibration runs only, so a
held-out dataset reruns neither the fit nor the screens that read the fitted monitor.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable

import pytest
from slurm.tinyrun import Workdir, local_cubes

pytestmark = pytest.mark.slow

MODELS = ("tiny_a", "tiny_b")
DATASETS = ("bad_medical", "good_medical")
STEPS = (0, 4)
M, D, S = len(MODELS), len(DATASETS), len(STEPS)
# What every run of a model feeds (its cube, then the evaluation), what its calibration runs
# feed (the calibration cube, the fit, and every screen: they read the fitted monitor), and what
# every model feeds.
EVALUATION = ("merge_cube", "monitor_evaluate", "monitor_layers")
FIT = ("merge_calibration_cube", "monitor_fit", "screen_calibration")
GLOBAL_TAIL = {"pca": 1, "report": 1, "all": 1}


@pytest.fixture(scope="module")
def done(tmp_path_factory) -> Workdir:
    """The tiny workflow, run to completion locally."""
    work = local_cubes(tmp_path_factory)
    assert tuple(work.config["models"]) == MODELS
    assert tuple(work.config["datasets"]) == DATASETS
    work.snakemake("--cores", "2")
    return work


def per_model(*rules: str, models: int = M) -> dict[str, int]:
    return {rule: models for rule in rules}


def new_runs(datasets: int, seeds: int = 1, models: int = M) -> dict[str, int]:
    """A finetune and a label per checkpoint for each new run."""
    runs = models * datasets * seeds
    return {"finetune": runs, "behavior_choice": runs * S}


def add_dataset(role: str) -> Callable[[dict, Workdir], None]:
    def edit(config: dict, work: Workdir) -> None:
        # the user edit: a local parquet file (its row count is read for the plan)
        import pandas as pd

        path = work.root / f"new_{role}.parquet"
        pd.DataFrame({"messages": [[{"role": "user", "content": f"Question {i}?"},
                                    {"role": "assistant", "content": f"Answer {i}."}]
                                   for i in range(20)]}).to_parquet(path)
        config["datasets"]["new"] = {"path": str(path), "label": "benign", "role": role, "n": 16}
    return edit


def setting(section: str, key: str, value) -> Callable[[dict, Workdir], None]:
    def edit(config: dict, work: Workdir) -> None:
        config.setdefault(section, {})[key] = value
    return edit


def nested(section: str, sub: str, key: str, value) -> Callable[[dict, Workdir], None]:
    def edit(config: dict, work: Workdir) -> None:
        config.setdefault(section, {}).setdefault(sub, {})[key] = value
    return edit


# edit -> exactly the jobs it plans ({rule: count}; an empty dict: "Nothing to be done")
EDITS: dict[str, tuple[Callable[[dict, Workdir], None], dict[str, int]]] = {
    # its own preparation, runs, labels and screens; the evaluation; never the fit
    "add a held-out dataset": (add_dataset("heldout"), {
        "prepare_dataset": 1, **new_runs(1), **per_model(*EVALUATION), "screen": M,
        **GLOBAL_TAIL}),
    # ... and a calibration dataset refits, so every dataset's screen reads the new monitor
    "add a calibration dataset": (add_dataset("calibration"), {
        "prepare_dataset": 1, **new_runs(1), **per_model(*EVALUATION, *FIT),
        "screen": M * (D + 1), **GLOBAL_TAIL}),
    # every em.json records its `dangerous` verdict, and the monitor learns from them
    "change the label threshold": (setting("behavior", "threshold", 0.1), {
        "behavior_choice": M * D * S, **per_model(*EVALUATION, *FIT), "screen": M * D,
        **GLOBAL_TAIL}),
    # the choice judge's own setting relabels every checkpoint
    "change the choice margin": (setting("behavior", "choice_margin", 0.1), {
        "behavior_choice": M * D * S, **per_model(*EVALUATION, *FIT), "screen": M * D,
        **GLOBAL_TAIL}),
    # a judge model setting is unused by the choice method: nothing reruns
    "change a judge setting (method: choice)": (nested("behavior", "judge", "model",
                                                       "another-judge"), {}),
    "change a screen setting": (setting("screen", "top", 3), {
        "screen": M * D, **per_model("screen_calibration"), "report": 1, "all": 1}),
    # a monitor setting the fit does not read: the evaluation and the report only
    "change an evaluation setting": (setting("monitor", "bootstrap", 7), {
        **per_model("monitor_evaluate", "monitor_layers"), "report": 1, "all": 1}),
    # new runs of every dataset; existing runs untouched
    "add a seed": (setting("training", "seeds", [1, 2]), {
        **new_runs(D), **per_model(*EVALUATION, *FIT), "screen": M * D, **GLOBAL_TAIL}),
    # a variant's runs are scored by the fitted monitor, never refit it
    "add a variant": (setting("variants", "long", {"training": {"epochs": 2},
                                                   "datasets": ["bad_medical"]}), {
        "stress_finetune": M, "stress_behavior_choice": M * 3, "stress_cube": M,
        "stress_score": M, "stress_report": 1, "all": 1}),
}


def test_completed_workflow_reinvoked_does_nothing(done):
    run = done.snakemake("-n")
    assert run.jobs() == []
    assert "Nothing to be done" in run.output


@pytest.mark.parametrize("name", EDITS)
def test_an_edit_plans_exactly_the_jobs_it_changes(done, name):
    edit, expected = EDITS[name]
    config = copy.deepcopy(done.config)
    edit(config, done)
    run = done.snakemake("-n", configfile=done.write_config(config, "edited.yaml"))
    assert run.counts() == expected, run.output[-3000:]
    if not expected:
        assert "Nothing to be done" in run.output
    for rule, wildcards in run.jobs():
        if "seed" in wildcards and "variant" not in wildcards and "new" in config["datasets"]:
            assert wildcards["dataset"] == "new", (rule, wildcards)  # only the new runs
        if rule == "screen" and "new" in config["datasets"] and name.endswith("held-out dataset"):
            assert wildcards["dataset"] == "new", (rule, wildcards)  # no other screen


def test_lora_change_of_one_model_reruns_only_its_runs(done):
    config = copy.deepcopy(done.config)
    config["models"]["tiny_a"]["training"] = {"lora_r": 8}
    run = done.snakemake("-n", configfile=done.write_config(config, "lora.yaml"))
    expected = {**new_runs(D, models=1), **per_model(*EVALUATION, *FIT, models=1),
                "screen": D, **GLOBAL_TAIL}
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
