"""Rule `finetune` through real Snakemake: a run killed between checkpoints is resumed by the
rule and matches the uninterrupted run; editing what a run reads reruns exactly that run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import (
    REPO,
    SUBPROCESS_ENV,
    adapter_tensors,
    open_store,
    planned_jobs,
    run,
    snakemake,
    write_dataset,
)

RUN = "results/runs/tiny/{dataset}/seed{seed}"
TARGETS = [f"{RUN}/done.json".format(dataset=d, seed=s)
           for d in ("bad_medical", "good_medical") for s in (42, 7)]

KILLER = """
import json, os, signal, sys
from pathlib import Path
from transformers import TrainerCallback
sys.path.insert(0, {tests!r})
from helpers import run

class Kill(TrainerCallback):
    def on_step_end(self, args, state, control, **kw):
        if state.global_step == {kill_at}:
            os.kill(os.getpid(), signal.SIGKILL)

callbacks = [Kill()]
if {in_save}:  # die inside the checkpoint save: the Trainer's part done, on_save not yet run
    import transformers
    save = transformers.Trainer._save_checkpoint

    def save_then_die(self, *a, **k):
        save(self, *a, **k)
        if self.state.global_step == {kill_at}:
            os.kill(os.getpid(), signal.SIGKILL)

    transformers.Trainer._save_checkpoint = save_then_die
    callbacks = []

inputs = json.loads(Path({inputs!r}).read_text())
inputs["data"] = {{k: Path(v) for k, v in inputs["data"].items()}}
run(inputs, Path({out!r}), callbacks=callbacks)
"""


def kill_between_checkpoints(inputs: dict, out: Path, kill_at: int, tmp: Path,
                             in_save: bool = False) -> None:
    """Run `run_finetune` in a subprocess that SIGKILLs itself at update `kill_at` (with
    `in_save`: inside the checkpoint save of update `kill_at`, between the Trainer writing the
    checkpoint and the callbacks' on_save)."""
    spec = tmp / "inputs.json"
    spec.write_text(json.dumps({k: {d: str(p) for d, p in v.items()} if isinstance(v, dict)
                                else str(v) for k, v in inputs.items()}))
    script = KILLER.format(tests=str(REPO / "tests"), kill_at=kill_at, inputs=str(spec),
                           out=str(out), in_save=in_save)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True,
                          text=True, timeout=300, env=SUBPROCESS_ENV)
    assert proc.returncode == -9, proc.stderr[-2000:]


@pytest.mark.slow
def test_rule_resumes_a_killed_run_and_reruns_exactly(llama_run, tmp_path, monkeypatch):  # noqa: F811
    inputs, ref_out, _ = llama_run  # bad_medical seed 42, uninterrupted, checkpoints 0 2 4 6
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    work = tmp_path / "work"
    (work / "resources/models/tiny").mkdir(parents=True)
    shutil.copy(inputs["pointer"], work / "resources/models/tiny/model.json")
    (work / "results/datasets").mkdir(parents=True)
    raw = yaml.safe_load(inputs["config"].read_text())
    raw["datasets"]["good_medical"] = {**raw["datasets"]["bad_medical"], "label": "benign",
                                       "path": str(write_dataset(tmp_path / "good.jsonl", 24,
                                                                 "good"))}
    for d, entry in raw["datasets"].items():
        shutil.copy(entry["path"], work / f"results/datasets/{d}.jsonl")
        (work / f"results/datasets/{d}.stats.json").write_text("{}\n")
    store = work / "results/traits/tiny/directions.zarr"
    shutil.copytree(inputs["directions"], store)
    (work / "results/traits/tiny/figures").mkdir()
    for path in [store, *store.rglob("*")]:  # newer than the pointer: no re-extraction
        os.utime(path)
    config = work / "config.yaml"
    config.write_text(yaml.safe_dump(raw))

    out = work / RUN.format(dataset="bad_medical", seed=42)
    kill_between_checkpoints(inputs, out, kill_at=3, tmp=tmp_path)
    partial = open_store(out / ".inprogress" / "measure.zarr")
    assert [int(s) for s in partial["step"].values] == [0, 2]
    assert not (out / "done.json").exists()

    snakemake(work, "--cores", "1", TARGETS[0], "--configfile", str(config))
    done = json.loads((out / "done.json").read_text())
    assert done["resumed"] and done["timing"]["steps"] == [4, 6]
    assert (work / "logs/finetune/tiny/bad_medical/seed42.log").is_file()
    got, ref = open_store(out / "measure.zarr"), open_store(ref_out / "measure.zarr")
    assert [int(s) for s in got["step"].values] == [0, 2, 4, 6]
    for var in ("activation", "projection", "drift", "loss"):
        np.testing.assert_allclose(got[var].values, ref[var].values, rtol=1e-5, atol=1e-6)
    for key, value in adapter_tensors(ref_out / "adapters" / "step-6").items():
        np.testing.assert_allclose(adapter_tensors(out / "adapters" / "step-6")[key], value,
                                   rtol=1e-5, atol=1e-7)

    def plan(**edit) -> dict[str, int]:
        cfg = yaml.safe_load(yaml.safe_dump(raw))
        for section, values in edit.items():
            cfg[section] = {**cfg.get(section, {}), **values}
        config.write_text(yaml.safe_dump(cfg))
        proc = snakemake(work, "-n", *TARGETS, "--configfile", str(config))
        return planned_jobs(proc.stdout)

    # three runs are missing; the finished one reruns only when something it reads changes
    assert plan().get("finetune") == 3  # `seeds` is no param: adding seed 7 adds runs only
    for name, reruns in [("good_medical", 3), ("bad_medical", 4)]:
        entry = {**raw["datasets"][name], "seed": 5}
        assert plan(datasets={name: entry}).get("finetune") == reruns, name


@pytest.mark.slow
def test_a_run_killed_inside_a_checkpoint_save_resumes_from_the_one_before(llama_run, tmp_path):
    """The Trainer writes checkpoint-4, then the recorder stores step 4's reading and puts its
    state file there (on_save). Killed between the two, checkpoint-4 is incomplete and
    checkpoint-2 must still exist: the Trainer's own rotation (save_total_limit) deleted it
    before on_save, and such a run restarted from step 0 (a flaky SLURM cancel test)."""
    from emtrait.live.callback import STATE_FILE  # imports the Trainer: not at collection

    inputs, ref_out, _ = llama_run  # checkpoints 0 2 4 6
    out = tmp_path / "run"
    kill_between_checkpoints(inputs, out, kill_at=4, tmp=tmp_path, in_save=True)
    trainer = out / ".inprogress" / "trainer"
    assert sorted(p.name for p in trainer.glob("checkpoint-*")) == ["checkpoint-2",
                                                                     "checkpoint-4"]
    assert not (trainer / "checkpoint-4" / STATE_FILE).exists()

    done = run(inputs, out)
    assert done["resumed"] and done["timing"]["steps"] == [4, 6]
    got, ref = open_store(out / "measure.zarr"), open_store(ref_out / "measure.zarr")
    assert [int(s) for s in got["step"].values] == [0, 2, 4, 6]
    np.testing.assert_allclose(got["drift"].values, ref["drift"].values, rtol=1e-5, atol=1e-6)
