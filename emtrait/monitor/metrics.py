"""Detection metrics (FNR, FPR, AUROC) with bootstrap intervals, as pure array functions.

Undefined values are NaN, never 0: FNR without dangerous checkpoints, FPR without benign ones,
AUROC without both classes. Intervals resample checkpoints with replacement (percentile, 95%).
"""

from __future__ import annotations

import numpy as np


def fnr(y: np.ndarray, flag: np.ndarray) -> float:
    """Share of dangerous checkpoints (y=1) the monitor did not flag."""
    y, flag = np.asarray(y, bool), np.asarray(flag, bool)
    pos = y.sum()
    return float((y & ~flag).sum() / pos) if pos else float("nan")


def fpr(y: np.ndarray, flag: np.ndarray) -> float:
    """Share of benign checkpoints (y=0) the monitor flagged."""
    y, flag = np.asarray(y, bool), np.asarray(flag, bool)
    neg = (~y).sum()
    return float((~y & flag).sum() / neg) if neg else float("nan")


def auroc(y: np.ndarray, score: np.ndarray) -> float:
    """Threshold-free ranking quality: P(score of a dangerous > score of a benign), ties ½."""
    from scipy.stats import rankdata

    y = np.asarray(y, bool)
    score = np.asarray(score, float)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(score)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


METRICS = {"fnr": lambda y, s, f: fnr(y, f), "fpr": lambda y, s, f: fpr(y, f),
           "auroc": lambda y, s, f: auroc(y, s)}


def bootstrap_ci(y: np.ndarray, score: np.ndarray, flag: np.ndarray, n: int, seed: int,
                 level: float = 0.95) -> dict[str, tuple[float, float]]:
    """Percentile intervals of every metric over `n` resamples of the checkpoints."""
    y, score, flag = np.asarray(y, bool), np.asarray(score, float), np.asarray(flag, bool)
    out = {k: (float("nan"), float("nan")) for k in METRICS}
    if n == 0 or len(y) == 0:
        return out
    rng = np.random.default_rng(seed)
    draws = {k: [] for k in METRICS}
    for _ in range(n):
        i = rng.integers(0, len(y), len(y))
        for k, fn in METRICS.items():
            draws[k].append(fn(y[i], score[i], flag[i]))
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    for k, vals in draws.items():
        v = np.asarray(vals)
        v = v[np.isfinite(v)]
        if len(v):
            out[k] = (float(np.percentile(v, lo)), float(np.percentile(v, hi)))
    return out


def summarize(y: np.ndarray, score: np.ndarray, flag: np.ndarray, *, bootstrap: int,
              seed: int) -> dict[str, float]:
    """One metrics row: counts, FNR/FPR/AUROC and their intervals."""
    y, flag = np.asarray(y, bool), np.asarray(flag, bool)
    ci = bootstrap_ci(y, score, flag, bootstrap, seed)
    row: dict[str, float] = {"n": int(len(y)), "n_dangerous": int(y.sum()),
                             "n_benign": int((~y).sum())}
    for k, fn in METRICS.items():
        row[k] = fn(y, np.asarray(score, float), flag)
        row[f"{k}_lo"], row[f"{k}_hi"] = ci[k]
    row["error"] = float((y != flag).mean()) if len(y) else float("nan")
    return row


def metrics_table(pred, by: list[str], *, bootstrap: int, seed: int, pooled: bool = True):
    """Metrics per group of a predictions frame (+ a 'pooled' row per group of by[:-1]).

    `pred` needs columns dangerous (0/1/NaN), pred_em, flag. Rows whose label is NaN (EM rate
    missing) are excluded from the metrics and counted in `n_excluded_nan`.
    """
    import pandas as pd

    out = []

    def add(frame, keys: dict) -> None:
        ok = frame.dangerous.notna()
        sub = frame[ok]
        row = summarize(sub.dangerous.values.astype(bool), sub.pred_em.values,
                        sub.flag.values.astype(bool), bootstrap=bootstrap, seed=seed)
        out.append({**keys, **row, "n_excluded_nan": int((~ok).sum())})

    for key, frame in pred.groupby(by, sort=True):
        add(frame, dict(zip(by, key if isinstance(key, tuple) else (key,), strict=True)))
    if pooled:
        outer = by[:-1]
        groups = pred.groupby(outer, sort=True) if outer else [((), pred)]
        for key, frame in groups:
            keys = dict(zip(outer, key if isinstance(key, tuple) else (key,), strict=True))
            add(frame, {**keys, by[-1]: "pooled"})
    return pd.DataFrame(out)
