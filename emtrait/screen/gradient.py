"""The gradient-alignment screen: what one training step on an example would do to the monitor.

The monitor's risk R(θ) is its reading of the base model (`emtrait.measure.probe.axis_reading`:
the block-l* last-token outputs of its evaluation prompts, projected on the unit trait
directions, over norm0, along the danger axis). v = ∇θR at the base weights, once per model,
over θ = what the finetune trains: the full-rank weights of the LoRA target modules (so the score
does not depend on LoRA's random init) or every weight of a full finetune. Per example

    s = −⟨∇θL, v⟩

with L the example's mean cross-entropy over the tokens the finetune's loss uses, rendered by the
finetune's own code (`emtrait.chats.encode_chats`): the first-order change of R from an
SGD step on the example; positive = toward danger. Computed batched in forward mode, as the
derivative of L(θ + εv) at ε = 0 (`torch.func.jvp` + `functional_call`, eager attention: SDPA
has no forward-mode derivative on CPU); `method="backward"` is the per-example reference.
With `breakdown`, one v per trait: seven JVPs per batch instead of one (7x the cost), and the
risk is exactly the axis-weighted sum of the seven scores. Study: research/screening.md.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from emtrait.errors import DataError

if TYPE_CHECKING:
    import numpy as np
    import torch

    from emtrait.screen.core import ChatFormat

METHODS = ("jvp", "backward")
RISK_DEFINITION = ("gradient alignment: s = -<grad L_example, grad R> at the base weights over "
                   "the weights the finetune trains; R = the monitor's reading (eval prompts' "
                   "last token at l*, projected on the unit directions, over norm0) along its "
                   "danger axis; positive = a step on the example moves the model toward danger")


def trained_parameters(model: Any, method: str, target_modules: Sequence[str]
                       ) -> dict[str, torch.nn.Parameter]:
    """θ: the full-rank weights of the modules LoRA wraps (PEFT's name-suffix rule), or every
    weight for a full finetune."""
    params = dict(model.named_parameters())
    if method == "full":
        return params
    targets = set(target_modules)
    chosen = {n: p for n, p in params.items() if n.endswith(".weight")
              and n.removesuffix(".weight").rsplit(".", 1)[-1] in targets}
    if not chosen:
        raise DataError(f"no weight of {type(model).__name__} belongs to the target modules "
                        f"{sorted(targets)}; pass the LoRA target_modules the finetune uses")
    return chosen


@contextlib.contextmanager
def eager_attention(model: Any) -> Iterator[None]:
    """Eager attention while inside (forward-mode autodiff has no SDPA rule on CPU)."""
    before = getattr(model.config, "_attn_implementation", None)
    if before in (None, "eager"):
        yield
        return
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(before)


def risk_gradients(model: Any, ids: Sequence[Sequence[int]], pad_id: int, layer: int,
                   directions: np.ndarray, norm0: float, axes: np.ndarray,
                   params: dict[str, torch.nn.Parameter], batch_size: int = 16
                   ) -> list[dict[str, torch.Tensor]]:
    """∇θ of the monitor's reading along each row of `axes` (k, trait), at the model's weights.

    `ids`: the chat-formatted eval prompts' tokens; the forward stops after block `layer`.
    Parameters that R does not depend on (blocks past l*) are left out of the result.
    """
    import torch

    from emtrait.capture import forward_blocks_with
    from emtrait.measure.probe import axis_reading

    device = next(model.parameters()).device
    d = torch.as_tensor(directions, dtype=torch.float64, device=device)
    a = torch.as_tensor(axes, dtype=torch.float64, device=device)
    names = list(params)
    flags = {n: p.requires_grad for n, p in params.items()}
    grads = [dict.fromkeys(names) for _ in range(len(a))]
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        for p in params.values():
            p.requires_grad_(True)
        for k in range(0, len(ids), batch_size):
            rows = list(ids[k:k + batch_size])
            width = max(map(len, rows))
            x = torch.tensor([r + [pad_id] * (width - len(r)) for r in rows], device=device)
            m = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], device=device)
            h = forward_blocks_with(model, [layer], grad=True, input_ids=x, attention_mask=m,
                                    use_cache=False)[layer]  # (batch, pos, hidden)
            last = h[torch.arange(len(rows), device=device), m.sum(1) - 1].to(torch.float64)
            share = len(rows) / len(ids)  # R is the mean over all prompts
            reading = axis_reading(last, d, norm0) * share  # (trait,)
            for j in range(len(a)):
                g = torch.autograd.grad(reading @ a[j], [params[n] for n in names],
                                        retain_graph=j + 1 < len(a), allow_unused=True)
                for n, gi in zip(names, g, strict=True):
                    if gi is not None:
                        grads[j][n] = gi if grads[j][n] is None else grads[j][n] + gi
    finally:
        for n, p in params.items():
            p.requires_grad_(flags[n])
        for mod, was in modes:
            mod.train(was)
    return [{n: g.detach() for n, g in gj.items() if g is not None} for gj in grads]


def example_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(batch,) mean next-token cross-entropy of each row over its labelled tokens."""
    import torch

    from emtrait.chats import IGNORE

    target = labels[:, 1:]  # (batch, pos - 1)
    keep = target != IGNORE
    ce = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2).float(),
                                           target.clamp_min(0), reduction="none")
    return (ce * keep).sum(1) / keep.sum(1).clamp_min(1)


@dataclass
class GradientScorer:
    """Scores chats by −⟨∇θL, v⟩ for each v in `tangents` (one per trait, or the axis's only)."""

    model: Any
    tokenizer: Any
    fmt: ChatFormat
    training: Any  # what encode_chats reads: max_length, loss_on (a TrainingConfig)
    tangents: list[dict[str, torch.Tensor]]  # per column of the score
    traits: list[str]  # names of per-trait columns ([] without the breakdown)
    axis: np.ndarray  # (len(axis_traits),) the monitor's danger axis
    axis_traits: list[str]
    layer: int
    norm0: float
    method: str = "jvp"
    batch_size: int = 8
    baseline: Any = None  # a projection `Scorer` ("none") scored beside, for the comparison
    mode: str = field(default="gradient", init=False)
    reply_tokens: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise DataError(f"unknown gradient method {self.method!r}; use one of {METHODS}")

    def encode(self, chat: list[dict[str, str]]) -> tuple[Any, int, int]:
        """The finetune's (input_ids, labels) of one chat, or None when truncation leaves no
        assistant token; assistant tokens kept and uncut."""
        from emtrait.chats import encode_chats
        from emtrait.screen.core import assistant_tokens

        _, mask, full = assistant_tokens(self.tokenizer, chat, self.fmt)
        if not any(mask):
            return None, 0, full
        enc = encode_chats(self.tokenizer, [chat], self.fmt, self.training,
                           self.fmt.model_name)[0]
        return enc, sum(mask), full

    def score(self, chats: Sequence[list[dict[str, str]]]
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(per-trait scores (chat, trait), risk (chat,), kept tokens, uncut tokens); NaN for a
        chat that keeps no assistant token."""
        import numpy as np

        encoded = [self.encode(c) for c in chats]
        cols = np.full((len(chats), len(self.tangents)), np.nan)
        todo = sorted((i for i, e in enumerate(encoded) if e[0] is not None),
                      key=lambda i: len(encoded[i][0].input_ids))
        step = 1 if self.method == "backward" else self.batch_size
        with eager_attention(self.model):
            for k in range(0, len(todo), step):
                idx = todo[k:k + step]
                cols[idx] = self._derivatives([encoded[i][0] for i in idx])
        kept = np.array([e[1] for e in encoded])
        full = np.array([e[2] for e in encoded])
        if self.traits:
            return cols, cols @ self._trait_axis(), kept, full
        return cols[:, :0], cols[:, 0], kept, full

    def _trait_axis(self) -> np.ndarray:
        import numpy as np

        w = np.zeros(len(self.traits))
        for t, a in zip(self.axis_traits, self.axis, strict=True):
            w[self.traits.index(t)] = a
        return w

    def _derivatives(self, rows: list[Any]) -> np.ndarray:
        """(row, tangent) of −dL/dε along each tangent for one padded batch."""
        import numpy as np
        import torch

        from emtrait.chats import RightPadCollator

        pad = self.tokenizer.pad_token_id
        batch = RightPadCollator(int(pad if pad is not None else 0))(
            [{"input_ids": r.input_ids, "labels": r.labels} for r in rows])
        device = next(self.model.parameters()).device
        batch = {k: v.to(device) for k, v in batch.items()}
        labels = batch.pop("labels")
        modes = [(m, m.training) for m in self.model.modules()]
        self.model.eval()
        try:
            fn = self._jvp if self.method == "jvp" else self._backward
            out = [fn(batch, labels, v) for v in self.tangents]
        finally:
            for mod, was in modes:
                mod.train(was)
        return -np.stack([o.detach().to(torch.float64).cpu().numpy() for o in out], axis=1)

    def _jvp(self, batch: dict, labels: Any, v: dict[str, Any]) -> Any:
        import torch
        from torch.func import functional_call, jvp

        params = dict(self.model.named_parameters())
        names = list(v)

        def losses(*weights: Any) -> Any:
            out = functional_call(self.model, dict(zip(names, weights, strict=True)), (),
                                  {**batch, "use_cache": False})
            return example_losses(out.logits, labels)

        with torch.no_grad():  # forward mode only: no autograd graph of the other weights
            _, dl = jvp(losses, tuple(params[n].detach() for n in names),
                        tuple(v[n].to(params[n].dtype) for n in names))
        return dl

    def _backward(self, batch: dict, labels: Any, v: dict[str, Any]) -> Any:
        import torch

        params = dict(self.model.named_parameters())
        names = list(v)
        flags = {n: params[n].requires_grad for n in names}
        try:
            for n in names:
                params[n].requires_grad_(True)
            with torch.enable_grad():
                loss = example_losses(self.model(**batch, use_cache=False).logits, labels)[0]
                g = torch.autograd.grad(loss, [params[n] for n in names], allow_unused=True)
        finally:
            for n in names:
                params[n].requires_grad_(flags[n])
        return sum(((gi.double() * v[n].double()).sum() for n, gi in zip(names, g, strict=True)
                    if gi is not None), torch.zeros((), dtype=torch.float64)).reshape(1)
