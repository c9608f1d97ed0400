"""Rule `finetune` through real Snakemake: editing a hyper-parameter reruns exactly its runs."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
import yaml
from test_finetune import make_inputs

from workflow import planned_jobs, snakemake

TARGETS = [f"results/runs/tiny/{d}/seed42/done.json" for d in ("bad_medical", "good_medical")]


@pytest.mark.slow
def test_finetune_rule_runs_and_params_rerun_exactly_the_affected_runs(tiny_model_dir, tmp_path,
                                                                     monkeypatch):
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    inputs = make_inputs(tmp_path / "in", tiny_model_dir("llama"), n=8,
                         datasets=("bad_medical", "good_medical"))
    work = tmp_path / "work"
    (work / "resources/models/tiny").mkdir(parents=True)
    shutil.copy(inputs["pointer"], work / "resources/models/tiny/model.json")
    (work / "results/datasets").mkdir(parents=True)
    for d, path in inputs["data"].items():
        shutil.copy(path, work / f"results/datasets/{d}.jsonl")
        (work / f"results/datasets/{d}.stats.json").write_text("{}\n")
    shutil.copytree(inputs["directions"], work / "results/traits/tiny/directions.zarr")
    raw = yaml.safe_load(inputs["config"].read_text())
    config = work / "config.yaml"

    def plan(**edit) -> dict[str, int]:
        cfg = yaml.safe_load(yaml.safe_dump(raw))
        for section, values in edit.items():
            cfg[section] = {**cfg.get(section, {}), **values}
        config.write_text(yaml.safe_dump(cfg))
        proc = snakemake(work, "-n", *TARGETS, *[t.replace("seed42", "seed7") for t in TARGETS],
                         "--configfile", str(config))
        return planned_jobs(proc.stdout)

    config.write_text(yaml.safe_dump(raw))
    snakemake(work, "--cores", "1", TARGETS[0], "--configfile", str(config))
    assert (work / TARGETS[0]).is_file()
    assert (work / TARGETS[0]).parent.joinpath("measure.zarr", "zarr.json").is_file()
    assert (work / "logs/finetune/tiny/bad_medical/seed42.log").is_file()

    # planned: the three missing runs; the finished one reruns only when what it read changes
    assert plan().get("finetune") == 3  # `seeds` is no param: adding seed 7 adds runs only
    for name, reruns in [("good_medical", 3), ("bad_medical", 4)]:
        entry = {**raw["datasets"][name], "seed": 5}
        assert plan(datasets={name: entry}).get("finetune") == reruns, name
