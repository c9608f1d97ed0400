"""The one path from live weights to a drift row: `TraitProbe` reads, `LiveMonitor` scores.

`TraitProbe.measure(model)` runs the chat-formatted eval prompts through the model as it is
right now (eval mode, no autograd, a forward cut after the deepest needed block, every module's
train/eval mode restored after), on the model's own device and dtype, plain or PEFT-wrapped,
and returns the last-prompt-token activations at l* and their mean projections on the trait
directions. The workflow's `emtrait finetune` callback, `emtrait measure` and the public live
monitor all call it, so their numbers agree.

`LiveMonitor` adds the state of one finetune (norm0 and the step-0 origin, fixed by the first
check) and the fitted monitor's regressor:

    from emtrait.live import load
    monitor = load("results/monitor/smollm2/monitor.skops", tokenizer=tok, model=model)
    reading = monitor.check(model, step)        # step 0 first, then strictly increasing
    if reading.alarm: ...
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from emtrait.drift import drift, mean_norm, normalise
from emtrait.errors import DataError, ModelError, StoreError
from emtrait.modeling import batched_prefix, cache_argument, shared_prefix_len

if TYPE_CHECKING:
    import torch

    from emtrait.monitor.artifact import Monitor


@dataclass(frozen=True)
class Measurement:
    """One reading of a model: activations at l* and their projections on the directions."""

    activation: np.ndarray  # (prompt, hidden) float32 at l*, last prompt token
    projection: np.ndarray  # (trait,) float64: mean over prompts of h · direction
    layers: tuple[int, ...] = ()  # every measured block (l* and extra layers), ascending
    activation_layers: np.ndarray | None = None  # (layer, prompt, hidden) when extra layers
    projection_layers: np.ndarray | None = None  # (layer, trait) when extra layers


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

    @classmethod
    def for_monitor(cls, monitor: Monitor, tokenizer: Any, **kw: Any) -> TraitProbe:
        """A probe of a format-2 monitor's eval prompts in its stored chat format."""
        from emtrait.modeling import format_user_prompts

        meta = monitor.meta
        missing = [k for k in ("prompts", "system_prompt_method", "no_system_prompt")
                   if k not in meta]
        if missing:
            raise StoreError(f"monitor lacks {missing} (format version {monitor.version}); "
                             "refit it with "
                             "`emtrait monitor fit` to get format version 2")
        texts = format_user_prompts(tokenizer, meta["prompts"], method=meta["system_prompt_method"],
                                    no_system_prompt=meta["no_system_prompt"],
                                    model_name=str(meta.get("model", "model")))
        return cls(directions=monitor.directions, traits=monitor.traits, layer=meta["layer"],
                   texts=texts, tokenizer=tokenizer, **kw)

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
        proj = np.stack([(acts[i].astype(np.float64) @ self.by_layer[layer].T).mean(axis=0)
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


# ---------------------------------------------------------------------------------------------
# the live monitor
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reading:
    """One check of a finetune: drift since step 0 and the monitor's verdict."""

    step: int
    drift: dict[str, float]  # trait -> drift since step 0
    projection_norm: dict[str, float]
    pred_em: float
    alarm_prob: float
    alarm: bool
    norm0: float


@dataclass
class _State:
    norm0: float | None = None
    origin: list[float] | None = None  # projection_norm at step 0, (trait,)
    last_step: int | None = None
    fingerprint_checked: bool = False
    history: list[int] = field(default_factory=list)


class LiveMonitor:
    """Monitor + probe + the step-0 state of one finetune."""

    def __init__(self, monitor: Monitor, probe: TraitProbe, *, tokenizer: Any = None,
                 allow_foreign_model: bool = False, path: str | Path | None = None):
        self.monitor = monitor
        self.probe = probe
        self.tokenizer = tokenizer
        self.allow_foreign_model = allow_foreign_model
        self.path = None if path is None else Path(path)
        self.last_measurement: Measurement | None = None
        self._state = _State()

    @property
    def traits(self) -> list[str]:
        """The monitor's traits: the keys of `Reading.drift`, in the regressor's input order."""
        return self.monitor.traits

    @property
    def norm0(self) -> float | None:
        """The step-0 activation norm drift is divided by; None until step 0 is checked."""
        return self._state.norm0

    def check_model(self, model: Any, *, weights: bool = True) -> None:
        """Refuse a model other than the one the monitor was fitted on (unless allowed)."""
        from emtrait.monitor.artifact import check_fingerprint

        check_fingerprint(self.monitor, model, self.tokenizer,
                          allow_foreign=self.allow_foreign_model, weights=weights)
        self._state.fingerprint_checked = True

    def check(self, model: Any, step: int) -> Reading:
        """Measure the model at `step` and score it; step 0 first, then strictly increasing."""
        step = int(step)
        st = self._state
        if st.last_step is not None and step <= st.last_step:
            raise DataError(f"monitor check at step {step} does not come after the last checked "
                            f"step {st.last_step}; steps must strictly increase (a resumed run "
                            "must restore the monitor with load_state_dict)")
        if st.norm0 is None and step != 0:
            raise DataError(f"the first monitor check must be at step 0 (before the first "
                            f"update: it fixes norm0 and the drift origin), got step {step}; a "
                            "resumed run must restore the monitor with load_state_dict")
        if not st.fingerprint_checked:
            # the weight checksum only holds before training (a full finetune changes it)
            self.check_model(model, weights=step == 0)
        m = self.probe.measure(model)
        if st.norm0 is None:
            st.norm0 = mean_norm(m.activation)
            st.origin = [float(x) for x in normalise(m.projection, st.norm0)]
        pn = normalise(m.projection, st.norm0)
        d = drift(np.stack([np.asarray(st.origin), pn]))[1]  # (trait,)
        res = self.monitor.predict(d[None, :], np.array([step]))
        st.last_step = step
        st.history.append(step)
        self.last_measurement = m
        return Reading(step=step, drift=dict(zip(self.traits, map(float, d), strict=True)),
                       projection_norm=dict(zip(self.traits, map(float, pn), strict=True)),
                       pred_em=float(res["pred_em"][0]), alarm_prob=float(res["alarm_prob"][0]),
                       alarm=bool(res["flag"][0]), norm0=float(st.norm0))

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state (norm0, origin, last step) to save beside a training checkpoint."""
        return asdict(self._state)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue a finetune after a resume (the next check must be after the saved step)."""
        try:
            st = _State(**dict(state))
        except TypeError as e:
            raise DataError(f"not a LiveMonitor state dict ({e})") from None
        if (st.norm0 is None) != (st.origin is None):
            raise DataError("LiveMonitor state has norm0 without origin (or the reverse)")
        if st.origin is not None and len(st.origin) != len(self.traits):
            raise DataError(f"LiveMonitor state has {len(st.origin)} traits, the monitor "
                            f"{len(self.traits)}: it belongs to another monitor")
        self._state = st


def load(path: str | Path, *, tokenizer: Any = None, model: Any = None,
         allow_foreign_model: bool = False, batch_size: int = 16,
         prefix_cache: bool = True) -> LiveMonitor:
    """A fitted monitor (format 2) ready to check a finetune; checks the model when given."""
    from emtrait.monitor.artifact import load_monitor

    monitor = load_monitor(path)
    if monitor.version < 2:
        raise StoreError(f"{path} is a format-1 monitor: it lacks the eval prompts and the "
                         "base-model fingerprint a live check needs (it still works with "
                         "`emtrait monitor score`). Refit it with `emtrait monitor fit` "
                         "(`snakemake --forcerun monitor_fit`) to get format version 2")
    if tokenizer is None:
        raise ModelError("emtrait.live.load needs the tokenizer of the model being finetuned "
                         "(tokenizer=...) to chat-format the monitor's eval prompts")
    probe = TraitProbe.for_monitor(monitor, tokenizer, batch_size=batch_size,
                                   prefix_cache=prefix_cache)
    live = LiveMonitor(monitor, probe, tokenizer=tokenizer,
                       allow_foreign_model=allow_foreign_model, path=path)
    if model is not None:
        live.check_model(model)
    return live
