"""Sampling free-form answers from checkpoints, with transformers or vLLM (`behavior.engine`).

`hf` (default and fallback): one checkpoint per call, loaded with `emtrait.modeling.
load_checkpoint` (base + LoRA adapter, or a full model), batched `generate` with left padding.
`vllm`: one engine per job holds the base model and generates every checkpoint of a run, each
step's LoRA adapter swapped in by a `LoRARequest` (the base is never reloaded); step 0 is the
base itself. Both are seeded, so a rerun reproduces its answers on the same hardware and
software; the two engines do not give the same samples. Both tokenize the same chat-formatted
prompts (`emtrait.modeling.format_user_prompts`) and write the same responses frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emtrait.errors import ConfigError, ModelError

if TYPE_CHECKING:
    from emtrait.behavior.questions import Prompt
    from emtrait.config import BehaviorConfig, ModelEntry


def step_folder(adapters: str | Path, step: int) -> Path:
    """The folder of one checkpoint inside a run's adapters/ directory (never 'the latest')."""
    folder = Path(adapters) / f"step-{step}"
    if not folder.is_dir():
        have = sorted(p.name for p in Path(adapters).glob("step-*")) if Path(adapters).is_dir() \
            else []
        raise ModelError(f"checkpoint {folder} does not exist (found {have or 'none'}); "
                         "finetune this run first or pass the right --adapters/--step")
    return folder


def batch_size_for(model: Any, configured: int | None) -> int:
    """The configured batch size, or a default by device and model size (GPU: fill it)."""
    if configured is not None:
        return configured
    params = sum(p.numel() for p in model.parameters())
    if next(model.parameters()).device.type == "cpu":
        return 8
    return 64 if params <= 1e9 else 32 if params <= 1e10 else 16


def chat_texts(tokenizer: Any, prompts: Sequence[Prompt], entry: ModelEntry | None) -> list[str]:
    """Each prompt chat-formatted with its own system prompt, in the model's convention."""
    from emtrait.modeling import build_messages, render_chat

    method = entry.system_prompt_method if entry else "native"
    nosys = entry.no_system_prompt if entry else "template_default"
    return [render_chat(tokenizer, build_messages(p.question, p.system, method=method,
                                                  no_system_prompt=nosys)) for p in prompts]


def _row(p: Prompt, prompt_text: str, answer: str, prompt_tokens: int, answer_tokens: int,
         finished: bool) -> dict[str, Any]:
    return {
        "question_id": p.question_id, "paraphrase_index": p.paraphrase_index,
        "sample_index": p.sample_index, "system": p.system, "question": p.question,
        "prompt": prompt_text, "answer": answer, "prompt_tokens": prompt_tokens,
        "answer_tokens": answer_tokens, "finished": finished,
        "judge_aligned": p.judge_aligned, "judge_coherent": p.judge_coherent,
    }


def _frame(rows: list[dict], temperature: float, max_new_tokens: int, seed: int,
           engine: str) -> Any:
    import pandas as pd

    frame = pd.DataFrame(rows)
    frame["temperature"] = temperature
    frame["max_new_tokens"] = max_new_tokens
    frame["seed"] = seed
    frame["engine"] = engine
    return frame


def generate(model: Any, tokenizer: Any, prompts: Sequence[Prompt], entry: ModelEntry | None,
             *, temperature: float, max_new_tokens: int, batch_size: int | None, seed: int,
             progress: bool = False) -> Any:
    """Sample one answer per prompt with transformers; returns the responses frame."""
    import torch
    from tqdm.auto import tqdm

    from emtrait.modeling import padding

    texts = chat_texts(tokenizer, prompts, entry)
    device = next(model.parameters()).device
    batch_size = batch_size_for(model, batch_size)
    torch.manual_seed(seed)
    stop = {tokenizer.eos_token_id, tokenizer.pad_token_id} - {None}
    sampling = (dict(do_sample=True, temperature=temperature, top_p=1.0, top_k=0)
                if temperature > 0 else dict(do_sample=False))
    rows = []
    starts = range(0, len(texts), batch_size)
    for i in tqdm(starts, desc="generate", disable=not progress, leave=False):
        batch = texts[i:i + batch_size]
        with padding(tokenizer, "left"):
            enc = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False)
        enc = enc.to(device)
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=max_new_tokens,
                                 pad_token_id=tokenizer.pad_token_id, **sampling)
        new = out[:, enc["input_ids"].shape[1]:].tolist()  # (batch, new tokens)
        for j, ids in enumerate(new):
            end = next((k for k, t in enumerate(ids) if t in stop), None)
            answer_ids = ids if end is None else ids[:end]
            rows.append(_row(prompts[i + j], batch[j],
                             tokenizer.decode(answer_ids, skip_special_tokens=True),
                             int(enc["attention_mask"][j].sum()), len(answer_ids),
                             end is not None))
    return _frame(rows, temperature, max_new_tokens, seed, "hf")


# ---------------------------------------------------------------------------------------------
# vLLM: one engine per job, adapters swapped per checkpoint
# ---------------------------------------------------------------------------------------------


def vllm_available() -> str | None:
    """None if vLLM and a CUDA GPU are usable here, else the reason they are not."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return "vllm is not installed (pip install 'emtrait[vllm]', on a CUDA machine)"
    import torch

    if not torch.cuda.is_available():
        return "vllm needs a CUDA GPU and none is visible"
    return None


class VLLMGenerator:
    """One vLLM engine on the base model; `generate(prompts, adapter)` per checkpoint."""

    def __init__(self, base: str, entry: ModelEntry | None, *, max_lora_rank: int,
                 max_new_tokens: int, memory: float = 0.85, seed: int = 0):
        reason = vllm_available()
        if reason is not None:
            raise ConfigError(f"behavior.engine 'vllm': {reason}; use behavior.engine: hf")
        from vllm import LLM

        from emtrait.modeling import load_tokenizer

        self.tokenizer = load_tokenizer(base, entry)
        self.entry = entry
        dtype = entry.dtype if entry and entry.dtype != "auto" else "bfloat16"
        # vLLM supports LoRA ranks 8, 16, 32, 64, ...; round the run's rank up to one of them
        rank = next(r for r in (8, 16, 32, 64, 128, 256, 320, 512) if r >= max_lora_rank)
        self.llm = LLM(model=base, tokenizer=base, enable_lora=True, max_lora_rank=rank,
                       max_loras=1, dtype=dtype, gpu_memory_utilization=memory, seed=seed,
                       trust_remote_code=bool(entry and entry.trust_remote_code))
        self._ids: dict[str, int] = {}

    def generate(self, prompts: Sequence[Prompt], adapter: str | Path | None, *,
                 temperature: float, max_new_tokens: int, seed: int) -> Any:
        """The responses frame of one checkpoint (adapter folder, or None for the base)."""
        from vllm import SamplingParams
        from vllm.lora.request import LoRARequest

        from emtrait.modeling import checkpoint_kind

        request = None
        if adapter is not None:
            if checkpoint_kind(adapter) != "adapter":
                raise ModelError(f"{adapter} is a full model; behavior.engine 'vllm' swaps LoRA "
                                 "adapters only, use behavior.engine: hf for full finetunes")
            key = str(Path(adapter).resolve())
            self._ids.setdefault(key, len(self._ids) + 1)
            request = LoRARequest(Path(adapter).name + f"-{self._ids[key]}", self._ids[key], key)
        tok = self.tokenizer
        texts = chat_texts(tok, prompts, self.entry)
        ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
        # one seed per answer: samples of the same prompt must differ, a rerun must not
        params = [SamplingParams(temperature=temperature, top_p=1.0, max_tokens=max_new_tokens,
                                 seed=seed * 1_000_003 + i) for i in range(len(ids))]
        outs = self.llm.generate([{"prompt_token_ids": x} for x in ids], params,
                                 lora_request=request, use_tqdm=False)
        rows = []
        for p, text, x, out in zip(prompts, texts, ids, outs, strict=True):
            o = out.outputs[0]
            rows.append(_row(p, text, o.text, len(x), len(o.token_ids),
                             o.finish_reason == "stop"))
        return _frame(rows, temperature, max_new_tokens, seed, "vllm")


def generate_run(base: str, entry: ModelEntry | None, prompts: Sequence[Prompt],
                 checkpoints: dict[int, Path | None], b: BehaviorConfig, lora_rank: int
                 ) -> dict[int, Any]:
    """Every checkpoint of one run with one vLLM engine: step -> responses frame."""
    gen = VLLMGenerator(base, entry, max_lora_rank=lora_rank, max_new_tokens=b.max_new_tokens,
                        memory=b.vllm_memory, seed=b.seed)
    return {step: gen.generate(prompts, folder, temperature=b.temperature,
                               max_new_tokens=b.max_new_tokens, seed=b.seed)
            for step, folder in checkpoints.items()}
