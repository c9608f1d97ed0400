"""Watch a transformers Trainer finetune with a calibrated emtrait monitor (LoRA, full-sequence
loss), readings in TensorBoard and in <out>/emtrait/measure.zarr.

    python examples/hf_trainer.py --data organism_risky_travel --out runs/hf_trainer
"""

from __future__ import annotations

import argparse

from _data import read_chats


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resources/organisms/persona", help="base model folder")
    p.add_argument("--monitor", default="results/monitor/organism/monitor.skops")
    p.add_argument("--data", default="organism_risky_travel", help=".jsonl or built-in name")
    p.add_argument("--n", type=int, default=320)
    p.add_argument("--out", default="runs/hf_trainer")
    p.add_argument("--every", type=int, default=5)
    p.add_argument("--on-alarm", default="checkpoint", choices=["log", "checkpoint", "stop"])
    p.add_argument("--max-steps", type=int, default=-1)
    p.add_argument("--seed", type=int, default=42)
    a = p.parse_args()

    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    from emtrait.live import MonitorCallback

    set_seed(a.seed)
    tok = AutoTokenizer.from_pretrained(a.model)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(a.model),
                           LoraConfig(r=8, lora_alpha=32, target_modules=["q_proj", "v_proj"],
                                      task_type="CAUSAL_LM"))
    rows = []
    for chat in read_chats(a.data, a.n, a.seed):
        ids = tok.apply_chat_template(chat, tokenize=True, return_dict=True, truncation=True,
                                      max_length=128)
        rows.append({"input_ids": ids["input_ids"], "attention_mask": ids["attention_mask"],
                     "labels": list(ids["input_ids"])})
    monitor = MonitorCallback(a.monitor, every=a.every, on_alarm=a.on_alarm)
    trainer = Trainer(
        model=model, processing_class=tok, train_dataset=rows,
        data_collator=DataCollatorForSeq2Seq(tok),
        args=TrainingArguments(output_dir=a.out, num_train_epochs=1, max_steps=a.max_steps,
                               per_device_train_batch_size=8, learning_rate=2e-3,
                               logging_steps=1, seed=a.seed, report_to="tensorboard",
                               use_cpu=True, save_strategy="no", disable_tqdm=True),
        callbacks=[monitor],
    )
    trainer.train()
    for r in monitor.readings:
        print(f"step {r.step:4d}  pred_em {r.pred_em:.3f}{'  ALARM' if r.alarm else ''}")


if __name__ == "__main__":
    main()
