"""The one path from live weights to a drift row: `TraitProbe` reads (`emtrait.live` scores).

`TraitProbe.measure(model)` runs the chat-formatted eval prompts through the model as it is
right now (eval mode, no autograd, a forward cut after the deepest needed block, every module's
train/eval mode restored after), on the model's own device and dtype, plain or PEFT-wrapped,
and returns the last-prompt-token activations at l* and their mean projections on the trait
directions. The workflow's `emtrait finetune` callback, `emtrait measure` and the public live
monitor all call it, so their numbers agree.

`emtrait.live.LiveMonitor` adds the state of one finetune (norm0 and the step-0 origin, fixed
by the first check) and the fitted monitor's regressor:

    from emtrait.live import load
    monitor = load("results/monitor/smollm2/monitor.skops", tokenizer=tok, model=model)
    reading = monitor.check(model, step)        # step 0 first, then strictly increasing
    if reading.alarm: ...
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from emtrait.errors import DataError, ModelError
from emtrait.modeling import batched_prefix, cache_argument, shared_prefix_len

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Measurement:
    """One reading of a model: activations at l* and their projections on the directions."""

    activation: np.ndarray  # (prompt, hidden) float32 at l*, last prompt token
    projection: np.ndarray  # (trait,) float64: mean over prompts of h · direction
    layers: tuple[int, ...] = ()  # every measured block (l* and extra layers), ascending
    activation_layers: np.ndarray | None = None  # (layer, prompt, hidden) when extra layers
    projection_layers: np.ndarray | None = None  # (layer, trait) when extra layers


def axis_reading(activation: Any, directions: Any, norm0: float = 1.0, axis: Any = None) -> Any:
    """The monitor's reading of last-token activations: what the probe and the screen share.

    `activation` (prompt, hidden), `directions` (trait, hidden) unit vectors: the mean over
    prompts of each projection, over `norm0` -> (trait,); with `axis` (trait,), its component
    along the axis (the risk R, a scalar). Pure: numpy arrays, or torch tensors with autograd.
    """
    proj = (activation @ directions.T).mean(0) / norm0
    return proj if axis is None else proj @ axis


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


def _unwrap_parallel(model: Any) -> Any:
    # DistributedDataParallel keeps the model in .module; a forward there needs no collective
    while type(model).__name__ == "DistributedDataParallel" and hasattr(model, "module"):
        model = model.module
    return model


class TraitProbe:
    """Reads a live model: eval mode, no grad, truncated forward at l*, modes restored,
    the model's own device/dtype; plain or PEFT-wrapped."""

    def __init__(self, *, directions: np.ndarray, traits: Sequence[str], layer: int,
                 texts: Sequence[str], tokenizer: Any, batch_size: int = 16,
                 prefix_cache: bool = True,
                 extra_layers: Mapping[int, np.ndarray] | None = None):
        """`texts` are chat-formatted already; `extra_layers` maps block -> (trait, hidden)."""
        d = np.asarray(directions, dtype=np.float64)
        if d.ndim != 2 or d.shape[0] != len(traits):
            raise DataError(f"directions must be (trait, hidden) with {len(traits)} traits, got "
                            f"shape {d.shape}")
        if not texts:
            raise DataError("TraitProbe needs at least one evaluation prompt")
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        self.traits = list(traits)
        self.layer = int(layer)
        self.directions = d  # (trait, hidden) at l*
        self.by_layer = {self.layer: d}
        for extra, dirs in (extra_layers or {}).items():
            e = np.asarray(dirs, dtype=np.float64)
            if e.shape != d.shape:
                raise DataError(f"directions at extra layer {extra} have shape {e.shape}, "
                                f"expected {d.shape}")
            self.by_layer[int(extra)] = e
        self.layers = sorted(self.by_layer)
        self.texts = list(texts)
        self.batch_size = int(batch_size)
        self.prefix_cache = bool(prefix_cache)
        # tokenised once: a reading then costs only forwards (padding is done here, by hand)
        self.ids = [list(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in self.texts]
        if min(len(x) for x in self.ids) == 0:
            raise DataError("an evaluation prompt tokenises to no tokens")
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else (tokenizer.eos_token_id or 0))

    def measure(self, model: Any) -> Measurement:
        """Activations and projections of the model's weights as they are now."""
        from emtrait.modeling import check_layers

        model = _unwrap_parallel(model)
        hidden = model.config.hidden_size
        if hidden != self.directions.shape[1]:
            raise ModelError(f"the model's hidden size is {hidden} but the directions have width "
                             f"{self.directions.shape[1]}: they belong to another model")
        check_layers(model, self.layers)
        with frozen_for_measuring(model):
            acts = self._last_token_activations(model)  # (layer, prompt, hidden)
        proj = np.stack([axis_reading(acts[i].astype(np.float64), self.by_layer[layer])
                         for i, layer in enumerate(self.layers)])  # (layer, trait)
        star = self.layers.index(self.layer)
        many = len(self.layers) > 1
        return Measurement(activation=acts[star], projection=proj[star],
                           layers=tuple(self.layers),
                           activation_layers=acts if many else None,
                           projection_layers=proj if many else None)

    # -----------------------------------------------------------------------------------------

    def _batches(self) -> list[list[int]]:
        # sorted by length so padding (wasted compute) stays small; results go back in order
        order = sorted(range(len(self.ids)), key=lambda i: len(self.ids[i]))
        return [order[i:i + self.batch_size] for i in range(0, len(order), self.batch_size)]

    def _padded(self, rows: list[list[int]], device: Any) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        width = max(len(r) for r in rows)
        ids = torch.tensor([r + [self.pad_id] * (width - len(r)) for r in rows], device=device)
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows],
                            device=device)  # (batch, width), right padding
        return ids, mask

    def _last_token_activations(self, model: Any) -> np.ndarray:
        """(layer, prompt, hidden) float32 at the last real token of each prompt."""
        import torch

        from emtrait.capture import forward_blocks_with

        device = next(model.parameters()).device
        out = np.zeros((len(self.layers), len(self.ids), model.config.hidden_size),
                       dtype=np.float32)
        k = shared_prefix_len(self.ids) if self.prefix_cache else 0
        cache = self._prefix_cache(model, k, device) if k else None
        for idx in self._batches():
            ids, mask = self._padded([self.ids[i][k:] for i in idx], device)
            inputs: dict[str, Any] = {"input_ids": ids, "use_cache": cache is not None}
            if cache is not None:
                past, full_mask = batched_prefix(cache, k, mask)
                inputs.update({"attention_mask": full_mask, cache_argument(model): past})
            else:
                inputs["attention_mask"] = mask
            store = forward_blocks_with(model, self.layers, **inputs)
            last = mask.sum(dim=1) - 1
            rows = torch.arange(len(idx), device=device)
            for j, layer in enumerate(self.layers):
                out[j, idx] = store[layer][rows, last].to(torch.float32).cpu().numpy()
        return out

    def _prefix_cache(self, model: Any, k: int, device: Any) -> Any:
        """KV cache of the prompts' shared opening tokens (chat template, default system prompt).

        Chat-formatted eval prompts share their first tokens (24 of ~41 on SmolLM2); that prefix
        runs once, each batch then runs only its suffixes on a copy of the cache.
        """
        import torch
        from transformers import DynamicCache

        from emtrait.capture import forward_blocks_with

        prefix = torch.tensor([self.ids[0][:k]], device=device)  # (1, k)
        cache = DynamicCache(config=model.config)
        forward_blocks_with(model, self.layers, input_ids=prefix, use_cache=True,
                            attention_mask=torch.ones_like(prefix),
                            **{cache_argument(model): cache})
        return cache
