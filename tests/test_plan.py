"""The whole paper grid plans (dry run) from config/paper.yaml, quickly and completely."""

from __future__ import annotations

import json
import time

import pytest
import yaml
from helpers import REPO, planned_jobs, snakemake

from emtrait.config import load_config


@pytest.fixture(scope="module")
def paper_workdir(tmp_path_factory):
    """A work directory holding small stand-ins for the user-provided paper datasets."""
    work = tmp_path_factory.mktemp("paper")
    cfg = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())
    row = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    for entry in cfg["datasets"].values():
        if "path" not in entry:
            continue  # hub datasets: no input file (read by the prepare job)
        path = work / entry["path"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(row) + "\n")
    for q in cfg["behavior"]["questions"]:
        (work / q).parent.mkdir(parents=True, exist_ok=True)
        (work / q).write_text("[]\n")
    return work


@pytest.mark.slow
def test_paper_grid_plans_in_under_30s(paper_workdir):
    cfg = load_config(REPO / "config" / "paper.yaml")
    start = time.perf_counter()
    proc = snakemake(paper_workdir, "-n", "--quiet", "rules",
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
