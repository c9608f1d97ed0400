"""Validation and layer selection: probe accuracy, held-out d', and the paper's steering score.

All three score each candidate layer from the monitor set's traits; l* is the argmax (the
shallowest layer wins a tie). Shapes: activations per trait are (layer, prompt, hidden) with
`labels` (prompt,) 1 = positive system prompt, 0 = negative.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

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
