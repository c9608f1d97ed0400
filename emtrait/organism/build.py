"""Build the organism: corpus -> byte-level BPE tokenizer -> small Llama pretrained on CPU.

The result is an ordinary model folder (`save_pretrained` weights, tokenizer with a ChatML chat
template, `organism.json` with how it was made) that `AutoModelForCausalLM` loads like any other.
Same spec, same seed and same thread count give the same weights.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emtrait.atomic import atomic_path
from emtrait.organism import corpus, vocab
from emtrait.provenance import provenance, stable_hash

if TYPE_CHECKING:
    from emtrait.config import OrganismEntry

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]


def persona_prompts() -> tuple[dict[str, list[str]], list[str], str]:
    """System prompts per pole and extra questions: the organism's own family, plus the built-in
    trait prompt set's prompts and extraction questions.

    Returns (prompts by pole, extra questions, a description of the sources used).
    """
    from emtrait.traits.prompts import load_prompt_set

    prompts = {pole: list(p) for pole, p in vocab.SYSTEM_PROMPTS.items()}
    pset = load_prompt_set("builtin:emtrait")
    for name, trait in pset.traits.items():
        for sign, family in (("+", trait.positive), ("-", trait.negative)):
            pole = f"{name}{sign}"
            if pole in prompts:
                prompts[pole] += list(family)
    return prompts, list(pset.questions), "organism+builtin:emtrait"


def train_tokenizer(texts: list[str], vocab_size: int):
    """Byte-level BPE (any string encodes) with the chat template attached."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                   pad_token="<pad>", bos_token="<|endoftext|>")
    fast.chat_template = CHATML
    return fast


def model_config(spec: OrganismEntry, tokenizer: Any):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size, num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads, num_key_value_heads=spec.num_kv_heads,
        max_position_embeddings=max(512, spec.max_length), tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )


def _lr(step: int, total: int, peak: float, warmup: int = 50) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def pretrain(model: Any, ids: list[list[int]], spec: OrganismEntry, pad_id: int,
             progress: bool = True) -> list[float]:
    """Next-token training on random batches; returns the loss of every step."""
    import torch
    from tqdm.auto import tqdm

    gen = torch.Generator().manual_seed(spec.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.learning_rate, weight_decay=0.01,
                            betas=(0.9, 0.98))
    model.train()
    losses = []
    bar = tqdm(range(spec.steps), desc="pretrain", disable=not progress, mininterval=2)
    for step in bar:
        rows = [ids[i] for i in torch.randint(len(ids), (spec.batch_size,), generator=gen)]
        width = max(len(r) for r in rows)
        batch = torch.full((len(rows), width), pad_id)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            batch[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        labels = batch.masked_fill(mask == 0, -100)  # (batch, pos); padding never scored
        for group in opt.param_groups:
            group["lr"] = _lr(step, spec.steps, spec.learning_rate)
        loss = model(input_ids=batch, attention_mask=mask, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        if step % 50 == 0:
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if not progress and (step + 1) % 100 == 0:  # a line per 100 steps for workflow logs
            print(f"step {step + 1}/{spec.steps} loss {losses[-1]:.3f}", file=sys.stderr,
                  flush=True)
    model.eval()
    return losses


def build(spec: OrganismEntry, out: str | Path, name: str, config_hash: str,
          progress: bool = True) -> dict[str, Any]:
    """Build the organism `name` into `out` (atomically); returns its metadata."""
    import torch
    from transformers import AutoModelForCausalLM

    t0 = time.perf_counter()
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(spec.threads)
    try:
        prompts, extra_q, sources = persona_prompts()
        chats = corpus.pretraining_corpus(spec.corpus_size, spec.seed, prompts, extra_q)
        tok = train_tokenizer([_render(c) for c in chats[:4000]], spec.vocab_size)
        texts = [tok.apply_chat_template(c["messages"], tokenize=False) for c in chats]
        ids = [row[: spec.max_length] for row in
               tok(texts, add_special_tokens=False)["input_ids"]]
        torch.manual_seed(spec.seed)
        model = AutoModelForCausalLM.from_config(model_config(spec, tok))
        losses = pretrain(model, ids, spec, tok.pad_token_id, progress)
        tail = losses[-max(1, spec.steps // 10):]
        meta = {
            "name": name,
            "spec": spec.model_dump(mode="json"),
            "parameters": sum(p.numel() for p in model.parameters()),
            "vocab_size": len(tok),
            "prompt_sources": sources,
            "vocab_hash": stable_hash([vocab.QUESTIONS, vocab.HELPFUL, vocab.HARMFUL,
                                       vocab.STYLES, vocab.HARMFUL_MARKERS]),
            "loss_first": losses[0],
            "loss_final": sum(tail) / len(tail),
            "loss_final_std": _std(tail),
            "threads": spec.threads,
            "build_seconds": round(time.perf_counter() - t0, 1),
            **provenance(config_hash=config_hash, model_source=f"organism:{name}",
                         seed=spec.seed),
        }
        with atomic_path(out, is_dir=True) as tmp:
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            (tmp / "organism.json").write_text(json.dumps(meta, indent=2) + "\n")
            (tmp / "loss.json").write_text(json.dumps([round(x, 5) for x in losses]) + "\n")
        return meta
    finally:
        torch.set_num_threads(prev_threads)


def _render(chat: dict) -> str:
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n"
                   for m in chat["messages"])


def _std(xs: list[float]) -> float:
    mean = sum(xs) / len(xs)
    return (sum((x - mean) ** 2 for x in xs) / len(xs)) ** 0.5
