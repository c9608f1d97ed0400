"""A plain PyTorch loop watched by a calibrated emtrait monitor: load, check, act.

    python examples/plain_loop.py --data organism_risky_travel
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
    p.add_argument("--every", type=int, default=5)
    p.add_argument("--max-steps", type=int, default=40)
    p.add_argument("--seed", type=int, default=42)
    a = p.parse_args()

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from emtrait.live import load

    torch.manual_seed(a.seed)
    tok = AutoTokenizer.from_pretrained(a.model)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(a.model),
                           LoraConfig(r=8, lora_alpha=32, target_modules=["q_proj", "v_proj"]))
    chats = read_chats(a.data, a.n, a.seed)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)

    monitor = load(a.monitor, tokenizer=tok, model=model)     # 1. load (refuses other models)
    print(monitor.check(model, 0))                           # 2. step 0, before any update
    model.train()
    for step in range(1, a.max_steps + 1):
        batch = [chats[(step * 8 + i) % len(chats)] for i in range(8)]
        enc = tok.apply_chat_template(batch, tokenize=True, return_dict=True, padding=True,
                                      truncation=True, max_length=128, return_tensors="pt")
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        model(**enc, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
        if step % a.every == 0:
            reading = monitor.check(model, step)             # 2. every few updates
            print(f"step {step}: pred_em {reading.pred_em:.3f}")
            if reading.alarm:                                # 3. act
                print(f"alarm at step {step}: stopping")
                break


if __name__ == "__main__":
    main()
