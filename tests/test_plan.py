"""The whole paper grid plans (dry run) from config/paper.yaml, quickly and completely."""

from __future__ import annotations

import time

import pytest
from helpers import REPO, paper_workdir, planned_jobs, snakemake

from emtrait.config import load_config


@pytest.fixture(scope="module")
def paper_work(tmp_path_factory):
    return paper_workdir(tmp_path_factory.mktemp("paper"))


@pytest.mark.slow
def test_paper_grid_plans_in_under_30s(paper_work):
    cfg = load_config(REPO / "config" / "paper.yaml")
    start = time.perf_counter()
    proc = snakemake(paper_work, "-n", "--quiet", "rules",
                     "--configfile", str(REPO / "config" / "paper.yaml"))
    elapsed = time.perf_counter() - start
    jobs = planned_jobs(proc.stdout)
    runs = sum(len(cfg.training_for(m).seeds) * len(cfg.datasets) for m in cfg.models)
    assert jobs.get("finetune") == runs == 6 * 11 * 3
    assert jobs.get("extract_traits") == len(cfg.models)
    assert jobs.get("prepare_dataset") == len(cfg.datasets)
    assert jobs.get("merge_cube") == len(cfg.models)
    assert elapsed < 30, f"planning the paper grid took {elapsed:.1f} s"
    print(f"paper grid: {sum(jobs.values())} jobs planned in {elapsed:.1f} s")


def test_default_config_is_valid():
    cfg = load_config(REPO / "config" / "config.yaml")
    assert list(cfg.models) == ["smollm2"]
    assert {d.role for d in cfg.datasets.values()} >= {"calibration", "heldout"}
