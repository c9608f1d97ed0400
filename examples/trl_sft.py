"""Finetune with TRL's SFTTrainer and let a calibrated emtrait monitor stop it on its alarm.

On the model organism (after `snakemake --cores 2 --configfile config/organism.yaml`):

    python examples/trl_sft.py --data organism_risky_travel --out runs/risky_travel   # stops
    python examples/trl_sft.py --data organism_good_travel --out runs/good_travel     # finishes

Readings show in TensorBoard (`tensorboard --logdir runs`) as train/emtrait/*, and land in
<out>/emtrait/measure.zarr. Settings default to config/organism.yaml's finetunes.
"""

from __future__ import annotations

import argparse

from _data import read_chats


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resources/organisms/persona", help="base model folder")
    p.add_argument("--monitor", default="results/monitor/organism/monitor.skops")
    p.add_argument("--data", default="organism_risky_travel", help=".jsonl or built-in name")
    p.add_argument("--n", type=int, default=320, help="training chats")
    p.add_argument("--out", default="runs/trl_sft")
    p.add_argument("--every", type=int, default=5, help="updates between readings")
    p.add_argument("--on-alarm", default="stop", choices=["log", "checkpoint", "stop"])
    p.add_argument("--max-steps", type=int, default=-1)
    p.add_argument("--save-steps", type=int, default=0, help="0: no checkpoints")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=42)
    a = p.parse_args()

    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from emtrait.live import MonitorCallback

    tok = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForCausalLM.from_pretrained(a.model)
    data = Dataset.from_list([{"messages": m} for m in read_chats(a.data, a.n, a.seed)])
    trainer = SFTTrainer(
        model=model, processing_class=tok, train_dataset=data,
        peft_config=LoraConfig(r=8, lora_alpha=32, lora_dropout=0.0,
                               target_modules=["q_proj", "v_proj"]),
        args=SFTConfig(output_dir=a.out, num_train_epochs=1, max_steps=a.max_steps,
                       per_device_train_batch_size=8, learning_rate=a.lr, max_length=128,
                       logging_steps=1, seed=a.seed, report_to="tensorboard", use_cpu=True,
                       save_strategy="steps" if a.save_steps else "no",
                       save_steps=a.save_steps or 500, disable_tqdm=True),
        callbacks=[MonitorCallback(a.monitor, every=a.every, on_alarm=a.on_alarm)],
    )
    trainer.train()
    monitor_cb = next(c for c in trainer.callback_handler.callbacks
                      if isinstance(c, MonitorCallback))
    for r in monitor_cb.readings:
        print(f"step {r.step:4d}  pred_em {r.pred_em:.3f}  alarm_prob {r.alarm_prob:.3f}"
              f"{'  ALARM' if r.alarm else ''}")
    print(f"trained {trainer.state.global_step} of {trainer.state.max_steps} updates; "
          + (f"stopped by the monitor at step {monitor_cb.stopped_at}"
             if monitor_cb.stopped_at is not None else "no stop"))


if __name__ == "__main__":
    main()
