"""The whole paper grid plans (dry run) from config/paper.yaml, completely."""

from __future__ import annotations

import pytest
from helpers import REPO, paper_workdir, planned_jobs, snakemake

from emtrait.config import load_config


@pytest.fixture(scope="module")
def paper_work(tmp_path_factory):
    return paper_workdir(tmp_path_factory.mktemp("paper"))


@pytest.mark.slow
def test_paper_grid_plans_completely(paper_work):
    """Every job of the paper grid and its stress variants is planned (the time it takes is
    measured by bench/bench_plan.py, not asserted here: shared CI machines vary 2-4x)."""
    cfg = load_config(REPO / "config" / "paper.yaml")
    proc = snakemake(paper_work, "-n", "--quiet", "rules",
                     "--configfile", str(REPO / "config" / "paper.yaml"))
    jobs = planned_jobs(proc.stdout)
    runs = sum(len(cfg.training_for(m).seeds) * len(cfg.datasets) for m in cfg.models)
    assert jobs.get("finetune") == runs == 6 * 11 * 3
    assert jobs.get("extract_traits") == len(cfg.models)
    assert jobs.get("prepare_dataset") == len(cfg.datasets)
    assert jobs.get("merge_cube") == len(cfg.models)
    # the stress suite: variants, misaligned starts, one stress cube and score per model
    assert {"fft", "lora_r4", "lora_r64", "long", "misaligned_start"} <= set(cfg.variants)
    variant_runs = sum(len(cfg.variant_runs(v, m)) for v in cfg.variants for m in cfg.models)
    assert jobs["stress_finetune"] == variant_runs
    assert jobs["stress_start"] == len({(v.start_from.variant, m, v.start_from.dataset,
                                         v.start_from.seed)
                                        for v in cfg.variants.values() if v.start_from
                                        for m in (v.models or cfg.models)})
    assert jobs["stress_cube"] == jobs["stress_score"] == len(
        [m for m in cfg.models if any(cfg.variant_runs(v, m) for v in cfg.variants)])
    # transfer: every model with stress datasets or `stress: true` (the 14B models), one job each
    has_stress_data = any(d.role == "stress" for d in cfg.datasets.values())
    assert jobs["stress_transfer"] == len(
        [m for m, e in cfg.models.items() if has_stress_data or e.stress]) > 0


def test_default_config_is_valid():
    cfg = load_config(REPO / "config" / "config.yaml")
    assert list(cfg.models) == ["smollm2"]
    assert {d.role for d in cfg.datasets.values()} >= {"calibration", "heldout"}
