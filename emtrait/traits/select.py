"""Validation and layer selection: probe accuracy, held-out d', and the paper's steering score.

Each selector in `emtrait.registry.SELECTORS` scores every candidate layer from the monitor set's
traits; l* is the argmax. A selector can be blind: probe accuracy saturates at 1.00 on separable
traits, so every layer ties. `choose_layer` therefore treats scores within `tolerance` (relative to
the best) as a tie and breaks it with a stated secondary selector (default held-out d'); only if the
secondary ties too does the shallowest tied layer win, and the choice says so. Shapes: activations
per trait are (layer, prompt, hidden) with `labels` (prompt,) 1 = positive system prompt, 0 =
negative.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from emtrait.registry import SELECTORS

if TYPE_CHECKING:
    import numpy as np


def unit_mean_difference(acts: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(layer, prompt, hidden) -> (layer, hidden): mean(pos) - mean(neg), unit-normalised."""
    import numpy as np

    a = acts.astype(np.float64)
    diff = a[:, labels == 1].mean(axis=1) - a[:, labels == 0].mean(axis=1)
    norm = np.linalg.norm(diff, axis=-1, keepdims=True)
    return diff / np.where(norm > 0, norm, 1.0)


def probe_accuracy(x: np.ndarray, labels: np.ndarray, folds: int = 5, seed: int = 0) -> float:
    """Mean k-fold accuracy of a logistic-regression probe on (prompt, hidden) activations."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = min(folds, int(min((labels == 1).sum(), (labels == 0).sum())))
    if folds < 2:
        return float("nan")
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return float(cross_val_score(probe, x, labels, cv=cv).mean())


def heldout_dprime(acts: np.ndarray, labels: np.ndarray, question: np.ndarray) -> np.ndarray:
    """(layer,) d' of projections on a direction fit on the other half of the questions.

    Questions split by parity; both directions of the split are averaged.
    """
    import numpy as np

    out = np.zeros(acts.shape[0])
    halves = [question % 2 == 0, question % 2 == 1]
    for fit, held in (halves, halves[::-1]):
        d = unit_mean_difference(acts[:, fit], labels[fit])  # (layer, hidden)
        proj = np.einsum("lph,lh->lp", acts[:, held].astype(np.float64), d)
        pos, neg = proj[:, labels[held] == 1], proj[:, labels[held] == 0]
        pooled = np.sqrt(0.5 * (pos.var(axis=1) + neg.var(axis=1))) + 1e-12
        out += (pos.mean(axis=1) - neg.mean(axis=1)) / pooled / 2
    return out


def divergence(a: str, b: str) -> float:
    """1 - difflib ratio: 0 for identical texts, 1 for nothing in common."""
    return 1.0 - difflib.SequenceMatcher(None, a, b).ratio()


def generate_greedy(model: Any, tokenizer: Any, texts: Sequence[str], max_new_tokens: int
                    ) -> list[str]:
    """Greedy continuations of chat-formatted prompts (left-padded batch), decoded."""
    import torch

    device = next(model.parameters()).device
    tokenizer.padding_side = "left"
    try:
        enc = tokenizer(list(texts), return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            out = model.generate(**enc.to(device), max_new_tokens=max_new_tokens,
                                 do_sample=False, pad_token_id=tokenizer.pad_token_id)
    finally:
        tokenizer.padding_side = "right"
    answers = out[:, enc["input_ids"].shape[1]:]
    return tokenizer.batch_decode(answers, skip_special_tokens=True)


def steering_scores(model: Any, tokenizer: Any, prompts: Sequence[str], layers: Sequence[int],
                    directions: np.ndarray, alpha: float, max_new_tokens: int,
                    progress: bool = False) -> np.ndarray:
    """The paper's selector: mean divergence of ±alpha-steered from unsteered greedy text.

    `directions` (trait, layer, hidden) unit vectors; returns (layer,) mean over sign, prompt
    and trait. The steering hook is removed even when a generation fails.
    """
    import numpy as np
    import torch
    from tqdm.auto import tqdm

    from emtrait.capture import steering

    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    base = generate_greedy(model, tokenizer, prompts, max_new_tokens)
    scores = np.zeros(len(layers))
    jobs = [(j, t, s) for j in range(len(layers)) for t in range(directions.shape[0])
            for s in (1.0, -1.0)]
    for j, t, sign in tqdm(jobs, desc="steering", disable=not progress, leave=False):
        vec = torch.tensor(sign * alpha * directions[t, j], device=device, dtype=dtype)
        with steering(model, layers[j], vec):
            steered = generate_greedy(model, tokenizer, prompts, max_new_tokens)
        scores[j] += np.mean([divergence(a, b) for a, b in zip(base, steered, strict=True)])
    return scores / (2 * directions.shape[0])


# ------------------------------------------------------------------------- registered selectors
# (emtrait.registry.SELECTORS names them; steering_scores above is the paper's)


def probe_scores(probe: np.ndarray, per_trait: Sequence[tuple]) -> np.ndarray:
    """(layer,) mean probe accuracy over the monitor traits (`probe`: (trait, layer))."""
    import numpy as np

    return np.nanmean(probe, axis=0)


def dprime_scores(probe: np.ndarray, per_trait: Sequence[tuple]) -> np.ndarray:
    """(layer,) mean held-out d' over the monitor traits (`per_trait`: (acts, labels, question))."""
    import numpy as np

    return np.mean([heldout_dprime(*t) for t in per_trait], axis=0)


def cheap_scores(name: str, probe: np.ndarray, per_trait: Sequence[tuple]) -> np.ndarray:
    """(layer,) scores of a selector that needs no generation: 'probe' or 'dprime'.

    `probe` (monitor trait, layer) accuracies; `per_trait` (acts, labels, question) per trait.
    """
    SELECTORS.check(name)
    if name == "steering":
        raise ValueError(f"selector '{name}' needs the model (not a cheap selector)")
    return SELECTORS.get(name)(probe, per_trait)


@dataclass(frozen=True)
class LayerChoice:
    """The chosen layer and every score that decided it (recorded in directions.zarr)."""

    layer: int
    selector: str
    tie_breaker: str
    tolerance: float
    primary: np.ndarray  # (layer,)
    secondary: np.ndarray  # (layer,), NaN where not computed
    tied: list[int] = field(default_factory=list)  # layers tied under the primary
    discriminated: bool = True  # the primary alone picked the layer
    reason: str = ""


def tied_layers(layers: Sequence[int], scores: np.ndarray, tolerance: float) -> list[int]:
    """Layers whose score is within `tolerance` × |best| (at least 1e-12) of the best."""
    import numpy as np

    scores = np.asarray(scores, float)
    best = float(np.nanmax(scores))
    gap = max(tolerance * abs(best), 1e-12)
    return [int(lay) for lay, s in zip(layers, scores, strict=True)
            if np.isfinite(s) and s >= best - gap]


def choose_layer(layers: Sequence[int], primary: np.ndarray, secondary: Callable[[], np.ndarray],
                 *, selector: str, tie_breaker: str, tolerance: float, eager: bool = True
                 ) -> LayerChoice:
    """argmax of the primary scores; a tie within tolerance goes to the secondary's argmax.

    `secondary()` gives the tie-breaker's (layer,) scores. It is always called when `eager`
    (cheap tie-breakers: every score is recorded), otherwise only when there is a tie.
    """
    import numpy as np

    layers = [int(v) for v in layers]
    primary = np.asarray(primary, float)
    tied = tied_layers(layers, primary, tolerance)
    sec = (np.asarray(secondary(), float) if eager or len(tied) > 1
           else np.full(len(layers), np.nan))
    fmt = lambda v: ", ".join(f"{lay}: {x:.4g}" for lay, x in zip(layers, v, strict=True))  # noqa: E731
    if len(tied) == 1:
        reason = (f"{selector} picks block {tied[0]} (scores {fmt(primary)}; no other layer "
                  f"within {tolerance:g} of the best)")
        return LayerChoice(tied[0], selector, tie_breaker, tolerance, primary, sec, tied, True,
                           reason)
    idx = [layers.index(t) for t in tied]
    sub = sec[idx]
    if np.isfinite(sub).any():
        inner = tied_layers(tied, np.where(np.isfinite(sub), sub, -np.inf), 0.0)
        layer = inner[0]
        reason = (f"{selector} could not discriminate: blocks {tied} tie within {tolerance:g} "
                  f"(scores {fmt(primary)}); tie broken by {tie_breaker} -> block {layer} "
                  f"({tie_breaker} {fmt(sec)})")
        if len(inner) > 1:
            reason += f"; {tie_breaker} ties too among {inner}: the shallowest wins"
    else:
        layer = tied[0]
        reason = (f"{selector} could not discriminate: blocks {tied} tie within {tolerance:g} "
                  f"and {tie_breaker} is unavailable; the shallowest tied block {layer} wins")
    return LayerChoice(layer, selector, tie_breaker, tolerance, primary, sec, tied, False, reason)


def selection_record(ds: Any) -> dict[str, Any]:
    """The layer choice of a directions store as plain JSON (the report's layer section)."""
    import numpy as np

    a = ds.attrs
    layers = [int(v) for v in ds["layer"].values]
    monitor = np.asarray(ds["trait_set"].values == a.get("monitor_set"))
    probe = ds["probe_accuracy"].values[monitor] if monitor.any() else ds["probe_accuracy"].values
    as_list = lambda v: [None if not np.isfinite(x) else float(x) for x in np.asarray(v, float)]  # noqa: E731
    return {
        "model": str(a["model"]), "layer": int(a["layer"]), "selector": str(a["selector"]),
        "layers": layers, "selection_score": as_list(ds["selection_score"].values),
        "tie_breaker": a.get("tie_breaker"), "tie_tolerance": a.get("tie_tolerance"),
        "tie_break_score": as_list(ds["tie_break_score"].values)
        if "tie_break_score" in ds else None,
        "probe_accuracy_mean": as_list(np.nanmean(probe, axis=0)) if np.isfinite(probe).any()
        else None,
        "tied": [int(v) for v in a.get("selection_tied", [])],
        "discriminated": bool(a.get("selection_discriminated", True)),
        "reason": str(a.get("selection_reason", f"layer fixed or chosen by {a['selector']}")),
    }
