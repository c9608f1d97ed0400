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


def alone_and_two_ranks(worker: Path, model_dir: Path, tmp_path: Path, port: int
                        ) -> tuple[dict[int, dict], dict[int, dict]]:
    """The worker's per-rank results run as one process, then under torchrun with 2 ranks."""
    monitor = fit_tiny_monitor(model_dir, tmp_path / "monitor.skops", threshold=0.5)
    single, multi = tmp_path / "single", tmp_path / "multi"
    alone = run([sys.executable, str(worker), str(model_dir), str(monitor), str(single)], single)
    torchrun = Path(sys.executable).with_name("torchrun")
    ranks = run([str(torchrun), "--nproc-per-node", "2", "--master-port", str(port),
                 str(worker), str(model_dir), str(monitor), str(multi)], multi)
    return alone, ranks


@pytest.mark.slow
def test_two_process_ddp_gives_the_single_process_readings_and_one_writer(tiny_model_dir,
                                                                          tmp_path):
    import numpy as np

    from emtrait.stores import open_store

    alone, ranks = alone_and_two_ranks(WORKER, tiny_model_dir("llama"), tmp_path, 29533)
    ddp = tmp_path / "multi"

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

    worker = Path(__file__).parent / "live_fsdp_worker.py"
    alone, ranks = alone_and_two_ranks(worker, tiny_model_dir("llama"), tmp_path, 29534)

    assert sorted(ranks) == [0, 1] and ranks[0]["world"] == 2
    assert ranks[0]["readings"] == ranks[1]["readings"]
    assert ranks[0]["training"] and ranks[1]["training"]  # modes restored after each reading
    want, got = alone[0]["readings"], ranks[0]["readings"]
    assert got[0] == want[0]  # unchanged weights: identical numbers through the shards
    for a, b in zip(got[1:], want[1:], strict=True):
        assert a["step"] == b["step"]
        np.testing.assert_allclose(list(a["drift"].values()), list(b["drift"].values()),
                                   rtol=1e-4, atol=1e-6)
