"""Sampling free-form answers from one checkpoint (base model + that step's adapter).

A checkpoint folder holding `adapter_config.json` is a PEFT adapter put on the base model;
any other folder is a full model (full finetuning). Sampling is batched with left padding and
seeded, so a rerun of one step reproduces its answers on the same hardware.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emtrait.errors import ModelError

if TYPE_CHECKING:
    from emtrait.behavior.questions import Prompt
    from emtrait.config import ModelEntry


def step_folder(adapters: str | Path, step: int) -> Path:
    """The folder of one checkpoint inside a run's adapters/ directory (never 'the latest')."""
    folder = Path(adapters) / f"step-{step}"
    if not folder.is_dir():
        have = sorted(p.name for p in Path(adapters).glob("step-*")) if Path(adapters).is_dir() \
            else []
        raise ModelError(f"checkpoint {folder} does not exist (found {have or 'none'}); "
                         "finetune this run first or pass the right --adapters/--step")
    return folder


def load_checkpoint(base: str, checkpoint: str | Path | None, entry: ModelEntry | None = None,
                    device: str | None = None) -> tuple[Any, Any]:
    """Base model with a LoRA adapter applied, or a full finetuned model, in eval mode."""
    from emtrait.modeling import load_model, load_tokenizer

    if checkpoint is None:
        return load_model(base, entry, device)
    checkpoint = Path(checkpoint)
    if (checkpoint / "adapter_config.json").is_file():
        from peft import PeftModel

        model, tok = load_model(base, entry, device)
        model = PeftModel.from_pretrained(model, str(checkpoint)).eval()
        return model, tok
    if (checkpoint / "config.json").is_file():
        # a full-finetune checkpoint may hold no tokenizer: take the base model's
        from transformers import AutoModelForCausalLM

        from emtrait.modeling import pick_device, pick_dtype

        device = device or pick_device()
        model = AutoModelForCausalLM.from_pretrained(
            str(checkpoint), dtype=pick_dtype(entry.dtype if entry else "auto", device),
            trust_remote_code=bool(entry and entry.trust_remote_code),
        )
        return model.to(device).eval(), load_tokenizer(base, entry)
    raise ModelError(f"{checkpoint} holds neither a PEFT adapter (adapter_config.json) nor a "
                     "model (config.json)")


def chat_texts(tokenizer: Any, prompts: Sequence[Prompt], entry: ModelEntry | None) -> list[str]:
    from emtrait.modeling import build_messages, render_chat

    method = entry.system_prompt_method if entry else "native"
    nosys = entry.no_system_prompt if entry else "template_default"
    return [render_chat(tokenizer, build_messages(p.question, p.system, method=method,
                                                  no_system_prompt=nosys)) for p in prompts]


def generate(model: Any, tokenizer: Any, prompts: Sequence[Prompt], entry: ModelEntry | None,
             *, temperature: float, max_new_tokens: int, batch_size: int, seed: int,
             progress: bool = False) -> Any:
    """Sample one answer per prompt; returns the responses frame (see `emtrait behavior`)."""
    import pandas as pd
    import torch
    from tqdm.auto import tqdm

    texts = chat_texts(tokenizer, prompts, entry)
    device = next(model.parameters()).device
    torch.manual_seed(seed)
    stop = {tokenizer.eos_token_id, tokenizer.pad_token_id} - {None}
    rows = []
    starts = range(0, len(texts), batch_size)
    for i in tqdm(starts, desc="generate", disable=not progress, leave=False):
        batch = texts[i:i + batch_size]
        tokenizer.padding_side = "left"
        enc = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False)
        enc = enc.to(device)
        sampling = (dict(do_sample=True, temperature=temperature, top_p=1.0, top_k=0)
                    if temperature > 0 else dict(do_sample=False))
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=max_new_tokens,
                                 pad_token_id=tokenizer.pad_token_id, **sampling)
        new = out[:, enc["input_ids"].shape[1]:].tolist()  # (batch, new tokens)
        for j, ids in enumerate(new):
            end = next((k for k, t in enumerate(ids) if t in stop), None)
            answer_ids = ids if end is None else ids[:end]
            p = prompts[i + j]
            rows.append({
                "question_id": p.question_id, "paraphrase_index": p.paraphrase_index,
                "sample_index": p.sample_index, "system": p.system, "question": p.question,
                "prompt": batch[j], "answer": tokenizer.decode(answer_ids,
                                                               skip_special_tokens=True),
                "prompt_tokens": int(enc["attention_mask"][j].sum()),
                "answer_tokens": len(answer_ids), "finished": end is not None,
                "judge_aligned": p.judge_aligned, "judge_coherent": p.judge_coherent,
            })
    tokenizer.padding_side = "right"
    frame = pd.DataFrame(rows)
    frame["temperature"] = temperature
    frame["max_new_tokens"] = max_new_tokens
    frame["seed"] = seed
    return frame
