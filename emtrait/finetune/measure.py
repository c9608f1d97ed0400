"""Where a model sits in trait space: projections of last-token activations on trait directions.

Used in-process by the finetuning callback (live weights, no reload) and by `emtrait measure`
for checkpoints made elsewhere; both call `measure_snapshot`, so their numbers agree.

Shapes: activations are (layer, prompt, hidden); directions (trait, layer, hidden); projections
(layer, trait). `norm0` is the mean per-prompt ‖h‖ at step 0 at the chosen layer l*, and
projection_norm = projection / norm0, drift(t) = projection_norm(t) - projection_norm(0).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from emtrait.errors import ConfigError, DataError
from emtrait.modeling import build_messages, render_chat

if TYPE_CHECKING:
    import numpy as np

    from emtrait.config import Config, ModelEntry


@dataclass(frozen=True)
class Directions:
    """Unit trait directions read from a directions.zarr store (the traits stage's contract)."""

    layer: int  # chosen l*
    layers: list[int]  # every candidate layer in the store
    traits: list[str]
    trait_sets: list[str]  # set of each trait, aligned with `traits`
    vectors: np.ndarray  # (trait, layer, hidden) float32
    attrs: dict[str, Any]

    def at(self, layer: int) -> np.ndarray:
        """(trait, hidden) directions at one block."""
        return self.vectors[:, self.layers.index(layer), :]


def read_directions(path: str | Path) -> Directions:
    """Load every trait set of a directions.zarr store (all sets are measured)."""
    import numpy as np

    from emtrait.traits.store import load_directions

    ds = load_directions(path)  # validates the contract, naming what to fix
    d = ds["direction"].transpose("trait", "layer", "hidden")
    return Directions(
        layer=int(ds.attrs["layer"]), layers=[int(x) for x in d["layer"].values],
        traits=[str(t) for t in d["trait"].values],
        trait_sets=[str(s) for s in ds["trait_set"].values],
        vectors=np.asarray(d.values, dtype=np.float32), attrs=dict(ds.attrs),
    )


# ---------------------------------------------------------------------------------------------
# evaluation prompts
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalPrompt:
    category: str
    text: str


def eval_prompts(cfg: Config) -> list[EvalPrompt]:
    """The measurement prompts: the trait file's eval prompts, or a YAML/JSONL prompt list."""
    spec = cfg.measurement.prompts
    if spec == "traits":
        try:
            from emtrait.traits.prompts import load_prompt_set
        except ImportError:
            raise ConfigError(
                "measurement.prompts is 'traits' but this emtrait has no trait prompt sets "
                "(emtrait.traits.prompts); point measurement.prompts at a YAML/JSONL prompt list"
            ) from None
        items = load_prompt_set(cfg.traits.file).eval_prompts
        prompts = [EvalPrompt(str(getattr(x, "category", "")), str(x.text)) for x in items]
    else:
        prompts = read_prompt_file(spec)
    if not prompts:
        raise DataError(f"no evaluation prompts in {spec!r} (measurement.prompts)")
    return prompts


def read_prompt_file(path: str | Path) -> list[EvalPrompt]:
    """A YAML list (strings or {text, category}), a YAML {category: [texts]} mapping, or JSONL."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"measurement.prompts file {p} does not exist")
    if p.suffix == ".jsonl":
        rows = [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
    else:
        data = yaml.safe_load(p.read_text())
        if isinstance(data, dict):
            data = data.get("eval_prompts", data)
        if isinstance(data, dict):
            rows = [{"category": c, "text": t} for c, texts in data.items() for t in texts]
        else:
            rows = data or []
    out = []
    for i, row in enumerate(rows):
        if isinstance(row, str):
            out.append(EvalPrompt("", row))
        elif isinstance(row, dict) and isinstance(row.get("text"), str):
            out.append(EvalPrompt(str(row.get("category", "")), row["text"]))
        else:
            raise DataError(f"{p}: prompt {i} is neither a string nor a {{text, category}} entry")
    return out


def format_prompts(tok: Any, prompts: list[EvalPrompt], entry: ModelEntry, model_name: str
                   ) -> list[str]:
    """User-only chats with the generation prompt, in the model's system-prompt convention."""
    return [
        render_chat(tok, build_messages(p.text, None, method=entry.system_prompt_method,
                                        no_system_prompt=entry.no_system_prompt),
                    add_generation_prompt=True, model_name=model_name)
        for p in prompts
    ]


# ---------------------------------------------------------------------------------------------
# measuring
# ---------------------------------------------------------------------------------------------


@dataclass
class Snapshot:
    """One checkpoint's measurement."""

    activation: np.ndarray  # (layer, prompt, hidden) float32
    projection: np.ndarray  # (layer, trait) float64: mean over prompts of h · direction


@contextlib.contextmanager
def frozen_for_measuring(model: Any) -> Iterator[None]:
    """Eval mode (no dropout) and no autograd while inside; every module's mode restored after."""
    import torch

    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, was_training in modes:
            m.train(was_training)


def measure_snapshot(model: Any, tok: Any, texts: list[str], directions: Directions,
                     layers: list[int], batch_size: int, prefix_cache: bool = True) -> Snapshot:
    """Last-token activations at `layers` (one truncated pass per batch) and their projections."""
    import numpy as np

    from emtrait.capture import capture

    side = tok.padding_side
    with frozen_for_measuring(model):
        if prefix_cache:
            acts = capture_last_token_shared_prefix(model, tok, texts, layers, batch_size)
        else:
            acts = capture(model, tok, texts, layers, "last_token", batch_size)  # (L, P, H)
    tok.padding_side = side
    proj = np.stack([
        (acts[i].astype(np.float64) @ directions.at(layer).astype(np.float64).T).mean(axis=0)
        for i, layer in enumerate(layers)
    ])  # (L, T)
    return Snapshot(activation=acts, projection=proj)


def capture_last_token_shared_prefix(model: Any, tok: Any, texts: list[str], layers: list[int],
                                     batch_size: int) -> np.ndarray:
    """Last-token activations (layer, prompt, hidden), running the prompts' common prefix once.

    Chat-formatted eval prompts share their opening tokens (template, default system prompt:
    24 of ~41 tokens on SmolLM2). That prefix runs once into a KV cache; each batch then runs
    only its suffixes on a copy of the cache, right-padded, truncated after the deepest layer.
    Falls back to `capture` when the prompts share fewer than 2 tokens.
    """
    import copy
    import os

    import numpy as np
    import torch
    from transformers import DynamicCache

    from emtrait.capture import _batches_by_length, capture, forward_blocks_with

    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    k = min(len(os.path.commonprefix(ids)), min(len(x) for x in ids) - 1)
    if k < 2:
        return capture(model, tok, texts, layers, "last_token", batch_size)
    device = next(model.parameters()).device
    prefix = torch.tensor([ids[0][:k]], device=device)  # (1, k)
    cache = DynamicCache(config=model.config)
    forward_blocks_with(model, layers, input_ids=prefix, attention_mask=torch.ones_like(prefix),
                        past_key_values=cache, use_cache=True)
    out = np.zeros((len(layers), len(texts), model.config.hidden_size), dtype=np.float32)
    pad = tok.pad_token_id
    for idx in _batches_by_length(tok, texts, batch_size):
        suffixes = [ids[i][k:] for i in idx]
        width = max(len(s) for s in suffixes)
        batch = torch.tensor([s + [pad] * (width - len(s)) for s in suffixes], device=device)
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in suffixes],
                            device=device)  # (batch, width)
        past = copy.deepcopy(cache)
        past.batch_repeat_interleave(len(idx))
        full_mask = torch.cat([torch.ones(len(idx), k, dtype=mask.dtype, device=device), mask],
                              dim=1)
        store = forward_blocks_with(model, layers, input_ids=batch, attention_mask=full_mask,
                                    past_key_values=past, use_cache=True)
        last = mask.sum(dim=1) - 1
        rows = torch.arange(len(idx), device=device)
        for j, layer in enumerate(layers):
            out[j, idx] = store[layer][rows, last].to(torch.float32).cpu().numpy()
    return out


def mean_norm(activation: np.ndarray) -> float:
    """Mean per-prompt L2 norm of (prompt, hidden) activations (not the norm of the mean)."""
    import numpy as np

    return float(np.linalg.norm(activation.astype(np.float64), axis=-1).mean())
