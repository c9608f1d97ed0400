"""Reading and steering decoder-block outputs: every hook emtrait registers lives here.

Hooks are registered by context managers and removed in `finally`, so an exception in a forward
or a generation never leaves a model hooked. A captured forward stops right after the deepest
requested block (a private exception raised from its hook), so measuring at block 15 of 30 costs
about half a forward. Layer indices follow the convention written in `emtrait.modeling`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from emtrait.modeling import architecture, check_layers, decoder_layers, padding

if TYPE_CHECKING:
    import numpy as np
    import torch

POOLINGS = ("last_token", "prompt_mean")


class _StopForward(Exception):
    """Raised from the deepest hook to cut a forward short; never escapes this module."""


@contextlib.contextmanager
def hooked_blocks(model: Any, layers: Sequence[int], stop: bool = True, detach: bool = True
                  ) -> Iterator[dict[int, torch.Tensor]]:
    """Record the outputs of the given blocks; with `stop`, abort the forward after the deepest
    (`detach=False` keeps them in the autograd graph).

    Yields a dict filled during the forward: layer -> (batch, pos, hidden) tensor.
    """
    blocks = decoder_layers(model)
    hidden = architecture(model).hidden
    check_layers(model, list(layers))
    store: dict[int, torch.Tensor] = {}
    deepest = max(layers)
    handles = []

    def make_hook(layer: int):
        def hook(_module, _inputs, output):
            h = hidden(output)
            store[layer] = h.detach() if detach else h
            if stop and layer == deepest:
                raise _StopForward

        return hook

    try:
        for layer in sorted(set(layers)):
            handles.append(blocks[layer].register_forward_hook(make_hook(layer)))
        yield store
    finally:
        for h in handles:
            h.remove()


def forward_blocks(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   layers: Sequence[int], stop: bool = True) -> dict[int, torch.Tensor]:
    """One forward pass returning block outputs layer -> (batch, pos, hidden), truncated."""
    return forward_blocks_with(model, layers, stop, input_ids=input_ids,
                               attention_mask=attention_mask, use_cache=False)


def pool(hidden: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """(batch, pos, hidden) + (batch, pos) mask -> (batch, hidden); padding never counted.

    Assumes right padding: the last real token of row i sits at mask[i].sum() - 1.
    """
    import torch

    if how == "last_token":
        last = mask.sum(dim=1) - 1  # (batch,)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    if how in ("prompt_mean", "masked_mean"):
        m = mask.to(hidden.dtype).unsqueeze(-1)  # (batch, pos, 1)
        return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp_min(1)
    raise ValueError(f"unknown pooling '{how}'; use one of {POOLINGS} or generated_mean")


def encode(tokenizer: Any, texts: Sequence[str], device: Any) -> dict[str, torch.Tensor]:
    """Right-padded batch of already chat-formatted texts (no extra special tokens)."""
    with padding(tokenizer, "right"):
        enc = tokenizer(list(texts), return_tensors="pt", padding=True, add_special_tokens=False)
    return {"input_ids": enc["input_ids"].to(device),
            "attention_mask": enc["attention_mask"].to(device)}


def _batches_by_length(tokenizer: Any, texts: Sequence[str], batch_size: int) -> list[list[int]]:
    # Sorting by length keeps padding (wasted compute) small; results are put back in order.
    lengths = [len(ids) for ids in tokenizer(list(texts), add_special_tokens=False)["input_ids"]]
    order = sorted(range(len(texts)), key=lambda i: lengths[i])
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def capture(model: Any, tokenizer: Any, texts: Sequence[str], layers: Sequence[int],
            pooling: str = "last_token", batch_size: int = 16, progress: bool = False
            ) -> np.ndarray:
    """Pooled activations of many prompts at many blocks in one truncated pass per batch.

    Returns float32 array (layer, prompt, hidden), layers in the order given.
    """
    import numpy as np
    import torch
    from tqdm.auto import tqdm

    if pooling == "generated_mean":
        raise ValueError("generated_mean pooling needs generation: use capture_generated()")
    device = next(model.parameters()).device
    hidden_size = model.config.hidden_size
    out = np.zeros((len(layers), len(texts), hidden_size), dtype=np.float32)
    batches = _batches_by_length(tokenizer, texts, batch_size)
    for idx in tqdm(batches, desc="capture", disable=not progress, leave=False):
        enc = encode(tokenizer, [texts[i] for i in idx], device)
        store = forward_blocks(model, enc["input_ids"], enc["attention_mask"], layers)
        for j, layer in enumerate(layers):
            pooled = pool(store[layer], enc["attention_mask"], pooling)
            out[j, idx] = pooled.to(torch.float32).cpu().numpy()
    return out


def capture_generated(model: Any, tokenizer: Any, texts: Sequence[str], layers: Sequence[int],
                      n_tokens: int = 16, batch_size: int = 16) -> np.ndarray:
    """Mean block output over `n_tokens` greedily generated tokens per prompt.

    Returns float32 (layer, prompt, hidden). Generation uses left padding; the re-read of prompt
    + answer uses right padding and averages only over real generated positions.
    """
    import numpy as np
    import torch

    device = next(model.parameters()).device
    out = np.zeros((len(layers), len(texts), model.config.hidden_size), dtype=np.float32)
    for idx in _batches_by_length(tokenizer, texts, batch_size):
        batch = [texts[i] for i in idx]
        with padding(tokenizer, "left"):
            enc = tokenizer(batch, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            gen = model.generate(**enc.to(device), max_new_tokens=n_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
        answers = gen[:, enc["input_ids"].shape[1]:]
        prompt_ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in batch]
        rows, gen_masks = [], []
        for p, a in zip(prompt_ids, answers.tolist(), strict=True):
            a = _strip_after_eos(a, tokenizer)
            rows.append(p + a)
            gen_masks.append([0] * len(p) + [1] * len(a))
        width = max(len(r) for r in rows)
        pad = tokenizer.pad_token_id
        ids = torch.tensor([r + [pad] * (width - len(r)) for r in rows], device=device)
        attn = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=device)
        gmask = torch.tensor([g + [0] * (width - len(g)) for g in gen_masks], device=device)
        store = forward_blocks(model, ids, attn, layers)
        for j, layer in enumerate(layers):
            out[j, idx] = pool(store[layer], gmask, "masked_mean").float().cpu().numpy()
    return out


def _strip_after_eos(tokens: list[int], tokenizer: Any) -> list[int]:
    stop = {tokenizer.eos_token_id, tokenizer.pad_token_id} - {None}
    for k, t in enumerate(tokens):
        if t in stop:
            return tokens[: max(k, 1)]
    return tokens


@contextlib.contextmanager
def steering(model: Any, layer: int, vector: torch.Tensor) -> Iterator[None]:
    """Add `vector` (hidden,) to block `layer`'s output at every position while inside."""
    block = decoder_layers(model)[layer]

    def hook(_module, _inputs, output):
        if isinstance(output, tuple):
            return (output[0] + vector.to(output[0].dtype),) + tuple(output[1:])
        return output + vector.to(output.dtype)

    handle = block.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def forward_blocks_with(model: Any, layers: Sequence[int], stop: bool = True, grad: bool = False,
                        **inputs: Any) -> dict[int, torch.Tensor]:
    """`forward_blocks` with any model inputs (e.g. a `cache` holding a shared prefix).

    A cache passed in is filled for the blocks that ran (up to the deepest requested one).
    `grad=True` returns outputs that autograd can differentiate (the screen's dR/dθ).
    """
    import torch

    with hooked_blocks(model, layers, stop=stop, detach=not grad) as store, \
            (torch.enable_grad() if grad else torch.no_grad()):
        try:
            model(**inputs)
        except _StopForward:
            pass
    missing = set(layers) - set(store)
    if missing:
        raise RuntimeError(f"blocks {sorted(missing)} did not run during the forward")
    return store
