"""A plain loop over a tiny model read by the live monitor, alone or sharded with FSDP2.

    python tests/live_fsdp_worker.py MODEL_DIR MONITOR OUT
    torchrun --nproc-per-node 2 tests/live_fsdp_worker.py MODEL_DIR MONITOR OUT

Under torchrun every decoder block and the model are `fully_shard`ed (FSDP2, gloo on CPU): no
rank holds whole parameters, so every rank must run the probe's forward. Two updates on four
equal-length sequences (two per rank, or all four alone) with readings at steps 0, 1 and 2;
each process writes OUT/rank<r>.json.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict
from pathlib import Path


def main(model_dir: str, monitor: str, out: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from emtrait.live import load

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    live = load(monitor, tokenizer=tok, model=model)
    ids = torch.randint(10, len(tok) - 10, (4, 16), generator=torch.Generator().manual_seed(1))
    if world > 1:
        import torch.distributed as dist
        from torch.distributed.fsdp import fully_shard

        dist.init_process_group("gloo")
        for block in model.model.layers:
            fully_shard(block)
        fully_shard(model)
        ids = ids[rank * 2:(rank + 1) * 2]
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    readings = [live.check(model, 0)]
    model.train()
    for step in (1, 2):
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
        readings.append(live.check(model, step))
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / f"rank{rank}.json").write_text(json.dumps({
        "world": world, "training": model.training,
        "readings": [asdict(r) for r in readings]}))
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:4])
