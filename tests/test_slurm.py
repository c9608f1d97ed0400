"""The workflow on a real SLURM cluster (tests/slurm/cluster.sh: one node, two fake GPUs,
accounting), through the test profile tests/slurm/profile.

- the tiny configuration runs end to end; GPU rules ask SLURM for a GPU and their tasks get
  CUDA_VISIBLE_DEVICES; per-step behaviour jobs of a run share one SLURM job; the cube equals
  the one a local run makes;
- a job killed for exceeding its memory is resubmitted with twice the memory;
- a finetune job cancelled mid-run (scancel) is resubmitted and resumes from its last
  checkpoint; the cancelled run's outputs are never taken as complete.

Skipped, with the reason, when the cluster does not answer `tests/slurm/cluster.sh status`.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from helpers import open_store
from slurm.tinyrun import SLURM_PROFILE, Workdir, cluster_status, local_cubes, make_workdir

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

GPU_RULES = ("extract_traits", "finetune")


@pytest.fixture(scope="module", autouse=True)
def cluster():
    ok, why = cluster_status()
    if not ok:
        pytest.skip(f"local SLURM cluster is not running ({why}); start it with "
                    "`tests/slurm/cluster.sh start` (packages: tests/slurm/install.sh)")


def slurm_jobs(work: Workdir) -> list[dict[str, str]]:
    """Every SLURM job a workflow folder submitted: the plugin's log path names the rule or
    group (`.snakemake/slurm_logs/<rule_X|group_Y>/[wildcards/]<jobid>.log`); sacct adds the
    allocation, requested memory and final state."""
    logs = {p.stem: p for p in (work.root / ".snakemake" / "slurm_logs").rglob("*.log")}
    if not logs:
        return []
    out = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-j", ",".join(logs),
         "-o", "JobID,State,ReqMem,AllocTRES,Comment"],
        capture_output=True, text=True, check=True, timeout=60).stdout
    jobs = []
    for line in out.splitlines():
        jobid, state, reqmem, tres, comment = line.split("|")
        log = logs[jobid]
        jobs.append({"id": jobid, "state": state.split()[0],  # "CANCELLED by 0"
                     "reqmem": reqmem, "tres": tres,
                     "comment": comment, "log": log, "unit": log.relative_to(
                         work.root / ".snakemake" / "slurm_logs").parts[0]})
    return sorted(jobs, key=lambda j: int(j["id"]))


def step_gpus(log: Path) -> list[str]:
    """CUDA_VISIBLE_DEVICES of each srun step in a job, as the cluster's task prolog saw it."""
    return re.findall(r"\[task prolog\] job=\d+ step=\d+ CUDA_VISIBLE_DEVICES=(\S+)",
                      log.read_text())


def test_tiny_workflow_on_slurm_equals_local(tmp_path, tmp_path_factory):
    import xarray as xr

    target = "results/cube/tiny_a.zarr"  # every GPU stage; the CPU tail is tested locally
    local = local_cubes(tmp_path_factory)  # both models, run once per session
    slurm = make_workdir(tmp_path / "slurm", ("tiny_a",))
    run = slurm.snakemake("--profile", str(SLURM_PROFILE), target)
    print(f"\ntiny_a to its cube (2 datasets, 5 SLURM jobs): SLURM {run.seconds:.0f} s")

    jobs = slurm_jobs(slurm)
    # SLURM job names a group `group_<groupid>_<its rules>`
    units = Counter(re.sub(r"^group_(behavior_\w+_1)_.*$", r"group_\1", j["unit"]) for j in jobs)
    # one job per GPU rule instance, and one per run for all its per-step behaviour jobs
    # (prepare and the cube merge are local rules; other per-model jobs may be added)
    assert units["rule_extract_traits"] == 1 and units["rule_finetune"] == 2, units
    assert units["group_behavior_tiny_a_bad_medical_1"] == 1, units
    assert units["group_behavior_tiny_a_good_medical_1"] == 1, units
    assert not any(u.startswith("rule_behavior_choice_wildcards") or u == "rule_behavior_choice"
                   for u in units), units  # no checkpoint step went to SLURM alone
    for job in jobs:
        assert job["state"] == "COMPLETED", job
        assert "gres/gpu=1" in job["tres"], job  # a GPU was requested and allocated
        gpus = step_gpus(job["log"])
        # one of the node's two GPUs (no device cgroup here, so the index is the node's)
        assert gpus and all(g in {"0", "1"} for g in gpus), (job, gpus)
    for job in jobs:
        if job["unit"].startswith("group_behavior"):  # both checkpoints ran in the one job
            assert len(step_gpus(job["log"])) == 2, job["log"].read_text()[-3000:]

    a, b = open_store(local.root / target), open_store(slurm.root / target)
    assert set(a.data_vars) == set(b.data_vars) and a.sizes == b.sizes
    xr.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def faults(tmp_path_factory) -> Workdir:
    """One model whose entry asks for too little memory, one longer dataset."""
    work = make_workdir(tmp_path_factory.mktemp("faults"), ("tiny_a",))
    config = copy.deepcopy(work.config)
    config["models"]["tiny_a"]["resources"]["mem_mb"] = FIRST_MEM_MB
    # 120 updates, about 5 s of training: the cancel (at the second checkpoint, ~update 8) lands
    # mid-run with seconds to spare; with 24 updates (~1 s) squeue and scancel could take longer
    # than the rest of the run.
    config["datasets"] = {"long": {"builtin": "bad_medical", "label": "dangerous",
                                   "role": "calibration", "n": 480}}
    work.config = config
    work.write_config(config)
    return work


# The tiny model's extract_traits step peaks at ~800 MB RSS (measured with sacct MaxRSS): over
# this request, under twice it. The cluster kills a step over its request (OverMemoryKill).
FIRST_MEM_MB = 500


def test_job_killed_for_memory_is_retried_with_more(faults):
    target = "results/traits/tiny_a/directions.zarr"
    faults.snakemake("--profile", str(SLURM_PROFILE), "--retries", "3", target)
    jobs = [j for j in slurm_jobs(faults) if j["unit"] == "rule_extract_traits"]
    assert len(jobs) >= 2, jobs
    for job in jobs[:-1]:  # killed by SLURM for its memory, then resubmitted
        assert job["state"] in {"OUT_OF_MEMORY", "FAILED"}, job
        assert "exceeded memory limit" in job["log"].read_text(), job
    assert [j["reqmem"] for j in jobs] == [f"{FIRST_MEM_MB * (i + 1)}M" for i in range(len(jobs))]
    assert jobs[-1]["state"] == "COMPLETED"
    assert (faults.root / target).is_dir()


def test_cancelled_finetune_resumes_from_its_checkpoint(faults):
    run = faults.root / "results/runs/tiny_a/long/seed1"
    cmd = faults.command(f"{run.relative_to(faults.root)}/done.json", "--profile",
                         str(SLURM_PROFILE), "--retries", "1",
                         "--set-resources", "finetune:mem_mb=3000")
    log = faults.root / "cancel-run.log"  # a file, not a pipe: nobody reads while it runs
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=faults.env(),
                                cwd=faults.root)
        try:
            cancelled = cancel_after_checkpoint(faults, run, proc, log)
            proc.wait(timeout=600)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, log.read_text()[-5000:]
    jobs = [j for j in slurm_jobs(faults) if j["unit"] == "rule_finetune"]
    assert [j["state"] for j in jobs] == ["CANCELLED", "COMPLETED"], jobs
    assert jobs[0]["id"] == cancelled
    done = json.loads((run / "done.json").read_text())
    assert done["resumed"] is True, done
    measured_again = done["timing"]["steps"]
    assert measured_again and min(measured_again) > 0, done["timing"]
    store = open_store(run / "measure.zarr")
    assert list(store["step"].values) == done["steps"]
    assert faults.snakemake("-n", f"{run.relative_to(faults.root)}/done.json").jobs() == []


def cancel_after_checkpoint(work: Workdir, run: Path, proc: subprocess.Popen, log: Path,
                            timeout: float = 300) -> str:
    """Wait until the running finetune job has a complete checkpoint after step 0, scancel it,
    and check that none of its outputs then exists (the run store is published only at the
    end: a cancelled run leaves nothing Snakemake could take as complete)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        checkpoints = [int(p.name.split("-")[1])
                       for p in (run / ".inprogress" / "adapters").glob("step-*")]
        # adapters of step N appear before step N is measured, and the trainer state of the
        # checkpoint before is dropped only after that: at the second checkpoint after 0, one
        # complete checkpoint exists whenever the kill lands
        if len([step for step in checkpoints if step > 0]) >= 2:
            break
        if proc.poll() is not None:
            raise AssertionError(f"snakemake ended before a checkpoint:\n{log.read_text()}")
        time.sleep(0.2)
    else:
        raise AssertionError(f"no checkpoint under {run}/.inprogress after {timeout} s")
    running = [j for j in slurm_jobs(work)
               if j["unit"] == "rule_finetune" and j["state"] == "RUNNING"]
    assert len(running) == 1, running
    subprocess.run(["scancel", running[0]["id"]], check=True, timeout=30)
    while time.monotonic() - t0 < timeout:  # SLURM ends the job
        if {j["id"]: j["state"] for j in slurm_jobs(work)}[running[0]["id"]] == "CANCELLED":
            break
        time.sleep(0.5)
    assert not (run / "done.json").exists() and not (run / "measure.zarr").exists()
    return running[0]["id"]
