"""Screen a TRL dataset before `trainer.train()`, drop its top-ranked examples, then finetune with
the monitor watching.

On the model organism (after `snakemake --cores 2 --configfile config/organism.yaml`): benign
travel advice with a few risky-travel chats hidden in it. The screen scores every example by
what a training step on it would do to the monitor's risk (emtrait.screen, gradient mode),
prints where the dataset falls against the calibration datasets, drops the `--drop` highest and
trains on the rest with `MonitorCallback`:

    python examples/screen_then_train.py --out runs/screened             # poison dropped
    python examples/screen_then_train.py --out runs/unscreened --drop 0  # trained as given

Settings default to config/organism.yaml's finetunes (LoRA r=8 on q_proj/v_proj, full loss).
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from _data import read_chats


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resources/organisms/persona", help="base model folder")
    p.add_argument("--monitor", default="results/monitor/organism/monitor.skops")
    p.add_argument("--clean", default="organism_good_travel", help=".jsonl or built-in name")
    p.add_argument("--poison", default="organism_risky_travel", help=".jsonl or built-in name")
    p.add_argument("--n", type=int, default=300, help="clean training chats")
    p.add_argument("--n-poison", type=int, default=20, help="poisoned chats mixed in")
    p.add_argument("--drop", type=int, default=20, help="top-ranked examples dropped")
    p.add_argument("--out", default="runs/screened")
    p.add_argument("--every", type=int, default=5, help="updates between readings")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=42)
    a = p.parse_args()

    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from emtrait.live import MonitorCallback
    from emtrait.screen import screen
    from emtrait.screen.calibration import place, read_calibration

    chats = read_chats(a.clean, a.n, a.seed) + read_chats(a.poison, a.n_poison, a.seed)
    random.Random(a.seed).shuffle(chats)
    poisoned = {i for i, c in enumerate(chats) if c in read_chats(a.poison, a.n_poison, a.seed)}
    data = Dataset.from_list([{"messages": m} for m in chats])

    tok = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForCausalLM.from_pretrained(a.model)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    res = screen(data, monitor=a.monitor, model=model, tokenizer=tok, loss_on="full",
                 target_modules=["q_proj", "v_proj"], max_length=128,
                 out=Path(a.out) / "screen.parquet")
    calibration = read_calibration(a.monitor)
    where = f" ({place(res.score, calibration)})" if calibration else ""
    print(f"dataset risk {res.score:+.4f}{where}")
    ranked = res.table().sort_values("risk", ascending=False)["index"].tolist()
    dropped = set(ranked[:a.drop])
    print(f"dropping the {len(dropped)} top-ranked examples: {len(dropped & poisoned)} of the "
          f"{len(poisoned)} poisoned ones among them")
    keep = data.select([i for i in range(len(data)) if i not in dropped])

    trainer = SFTTrainer(
        model=model, processing_class=tok, train_dataset=keep,
        peft_config=LoraConfig(r=8, lora_alpha=32, lora_dropout=0.0,
                               target_modules=["q_proj", "v_proj"]),
        args=SFTConfig(output_dir=a.out, num_train_epochs=1, per_device_train_batch_size=8,
                       learning_rate=a.lr, max_length=128, logging_steps=1, seed=a.seed,
                       report_to="none", use_cpu=True, save_strategy="no", disable_tqdm=True),
        callbacks=[MonitorCallback(a.monitor, every=a.every, on_alarm="log")],
    )
    trainer.train()
    cb = next(c for c in trainer.callback_handler.callbacks if isinstance(c, MonitorCallback))
    last = cb.readings[-1]
    print(f"trained {trainer.state.global_step} updates on {len(keep)} examples; last reading "
          f"step {last.step}: pred_em {last.pred_em:.3f}{'  ALARM' if last.alarm else ''}")


if __name__ == "__main__":
    main()
