"""Does an organism have its known answer? Checks that need only the organism itself.

1. The harmful-vs-harmless persona direction (mean last-prompt-token activation difference) is
   stable: split-half cosine over disjoint halves of the system prompts and questions.
2. A short finetune on dangerous data (narrow harmful advice, no markers) moves user-only prompts
   toward the harmful pole by a larger share of the persona gap than benign data does.

These run without the trait, finetune and monitor stages, so the organism can be validated on
its own (`emtrait organism check`); the known-answer test of the whole pipeline builds on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from emtrait.capture import capture
from emtrait.modeling import build_messages, render_chat
from emtrait.organism import vocab


@dataclass(frozen=True)
class Direction:
    vector: Any  # (hidden,) unit numpy vector
    split_half_cosine: float
    gap: float  # mean projection harmful - harmless, in units of the mean activation norm
    norm: float  # mean per-prompt activation norm of user-only prompts


def _prompts(tok: Any, systems: list[str | None], questions: list[str]) -> list[str]:
    return [render_chat(tok, build_messages(q, s)) for s in systems for q in questions]


def eval_questions() -> list[str]:
    """User-only prompts, one per domain question (the measurement set of the checks)."""
    return [q for d in vocab.DOMAINS for q in vocab.QUESTIONS[d]]


def persona_direction(model: Any, tok: Any, layer: int) -> Direction:
    """Harmful-minus-harmless direction at `layer`, with its split-half stability."""
    import numpy as np

    pos, neg = vocab.SYSTEM_PROMPTS["harmlessness-"], vocab.SYSTEM_PROMPTS["harmlessness+"]
    qs = eval_questions()
    halves = []
    for part in (slice(0, None, 2), slice(1, None, 2)):
        hp = capture(model, tok, _prompts(tok, pos, qs[part]), [layer])[0]
        hn = capture(model, tok, _prompts(tok, neg, qs[part]), [layer])[0]
        halves.append((hp, hn))
    diffs = [hp.mean(0) - hn.mean(0) for hp, hn in halves]
    cos = float(diffs[0] @ diffs[1] / np.linalg.norm(diffs[0]) / np.linalg.norm(diffs[1]))
    hp = np.concatenate([h[0] for h in halves])
    hn = np.concatenate([h[1] for h in halves])
    d = hp.mean(0) - hn.mean(0)
    d = d / np.linalg.norm(d)
    h0 = capture(model, tok, _prompts(tok, [None], qs), [layer])[0]
    norm = float(np.linalg.norm(h0, axis=1).mean())
    gap = float((hp @ d).mean() - (hn @ d).mean()) / norm
    return Direction(d.astype(np.float32), cos, gap, norm)


def projection(model: Any, tok: Any, layer: int, direction: Direction) -> float:
    """Mean projection of user-only prompts on the direction, in units of the step-0 norm."""
    h = capture(model, tok, _prompts(tok, [None], eval_questions()), [layer])[0]
    return float((h @ direction.vector).mean()) / direction.norm


def lora_finetune(model: Any, tok: Any, chats: list[dict], *, steps: int, lr: float,
                  batch_size: int = 8, rank: int = 8, seed: int = 0) -> Any:
    """A plain LoRA (q_proj, v_proj) loop on full sequences; returns the adapted model."""
    import copy

    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(
        r=rank, lora_alpha=4 * rank, lora_dropout=0.0, target_modules=["q_proj", "v_proj"]))
    texts = [render_chat(tok, c["messages"], add_generation_prompt=False) for c in chats]
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=lr)
    gen = torch.Generator().manual_seed(seed)
    peft_model.train()
    for _ in range(steps):
        idx = torch.randint(len(texts), (batch_size,), generator=gen).tolist()
        enc = tok([texts[i] for i in idx], return_tensors="pt", padding=True,
                  add_special_tokens=False)
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        loss = peft_model(**enc, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    peft_model.eval()
    return peft_model
