"""One finetune of the tiny model with MonitorCallback, run alone or under torchrun (DDP).

    python tests/live_ddp_worker.py MODEL_DIR MONITOR OUT
    torchrun --nproc-per-node 2 tests/live_ddp_worker.py MODEL_DIR MONITOR OUT

Four sequences of equal length and a global batch of four: every update sees all of them,
alone (batch 4) or split over two ranks (2 each), so both runs take the same updates. Each
process writes OUT/rank<r>.json: its own readings and the steps it appended to the store.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict
from pathlib import Path


def main(model_dir: str, monitor: str, out: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

    from emtrait.live import MonitorCallback

    world = int(os.environ.get("WORLD_SIZE", "1"))
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(10, len(tok) - 10, (4, 16), generator=gen)
    rows = [{"input_ids": r.tolist(), "attention_mask": [1] * 16, "labels": r.tolist()}
            for r in ids]
    args = TrainingArguments(
        output_dir=out, per_device_train_batch_size=4 // world, max_steps=4, learning_rate=1e-2,
        logging_steps=1, report_to="none", use_cpu=True, seed=0, save_strategy="no",
        disable_tqdm=True, dataloader_num_workers=0,
    )
    cb = MonitorCallback(monitor, every=2)
    Trainer(model=model, args=args, train_dataset=rows, processing_class=tok,
            callbacks=[cb]).train()
    rank = int(os.environ.get("RANK", "0"))
    (Path(out) / f"rank{rank}.json").write_text(json.dumps({
        "world": world, "readings": [asdict(r) for r in cb.readings],
        "stored": cb.stored_steps}))


if __name__ == "__main__":
    main(*sys.argv[1:4])
