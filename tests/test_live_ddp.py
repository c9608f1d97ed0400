"""MonitorCallback under real two-process DDP (torchrun, gloo on CPU) against one process.

Every rank runs the reading and gets the single-process numbers; only rank 0 writes the store;
the run ends (no deadlock: a timeout would fail the test).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import fit_tiny_monitor

WORKER = Path(__file__).parent / "live_ddp_worker.py"


def run(cmd: list[str], out: Path) -> dict[int, dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent)}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return {int(p.stem[4:]): json.loads(p.read_text()) for p in out.glob("rank*.json")}


@pytest.mark.slow
def test_two_process_ddp_gives_the_single_process_readings_and_one_writer(tiny_model_dir,
                                                                          tmp_path):
    import numpy as np

    from emtrait.stores import open_store

    model_dir = tiny_model_dir("llama")
    monitor = fit_tiny_monitor(model_dir, tmp_path / "monitor.skops", threshold=0.5)
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    alone = run([sys.executable, str(WORKER), str(model_dir), str(monitor), str(single)],
                single)
    torchrun = Path(sys.executable).with_name("torchrun")
    ranks = run([str(torchrun), "--nproc-per-node", "2", "--master-port", "29533",
                 str(WORKER), str(model_dir), str(monitor), str(ddp)], ddp)

    assert sorted(ranks) == [0, 1] and ranks[0]["world"] == 2
    assert ranks[0]["readings"] == ranks[1]["readings"]  # every rank computed the same reading
    want, got = alone[0]["readings"], ranks[0]["readings"]
    assert [r["step"] for r in got] == [r["step"] for r in want] == [0, 2, 4]
    assert got[0] == want[0]  # same weights before the first update: the very same numbers
    for a, b in zip(got, want, strict=True):  # after updates: same maths, other summation order
        np.testing.assert_allclose(list(a["drift"].values()), list(b["drift"].values()),
                                   rtol=1e-4, atol=1e-6)
        assert a["pred_em"] == pytest.approx(b["pred_em"], rel=1e-4, abs=1e-6)
    assert ranks[0]["stored"] == [0, 2, 4] and ranks[1]["stored"] == []
    store = open_store(ddp / "emtrait" / "measure.zarr")
    assert [int(s) for s in store["step"].values] == [0, 2, 4]


@pytest.mark.slow
def test_fsdp2_sharded_model_is_read_on_every_rank_like_one_process(tiny_model_dir, tmp_path):
    """FSDP2 (`fully_shard`, gloo on CPU): the probe's forward runs on every rank over sharded
    parameters, training continues after it, and the readings match one unsharded process."""
    import numpy as np

    model_dir = tiny_model_dir("llama")
    monitor = fit_tiny_monitor(model_dir, tmp_path / "monitor.skops", threshold=0.5)
    worker = Path(__file__).parent / "live_fsdp_worker.py"
    single, fsdp = tmp_path / "single", tmp_path / "fsdp"
    alone = run([sys.executable, str(worker), str(model_dir), str(monitor), str(single)],
                single)
    torchrun = Path(sys.executable).with_name("torchrun")
    ranks = run([str(torchrun), "--nproc-per-node", "2", "--master-port", "29534",
                 str(worker), str(model_dir), str(monitor), str(fsdp)], fsdp)

    assert sorted(ranks) == [0, 1] and ranks[0]["world"] == 2
    assert ranks[0]["readings"] == ranks[1]["readings"]
    assert ranks[0]["training"] and ranks[1]["training"]  # modes restored after each reading
    want, got = alone[0]["readings"], ranks[0]["readings"]
    assert got[0] == want[0]  # unchanged weights: identical numbers through the shards
    for a, b in zip(got[1:], want[1:], strict=True):
        assert a["step"] == b["step"]
        np.testing.assert_allclose(list(a["drift"].values()), list(b["drift"].values()),
                                   rtol=1e-4, atol=1e-6)
