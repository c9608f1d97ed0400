"""Validation protocol: leave-one-perturbation-out (LOPO) and held-out splits, regressors, alarm.

A split groups by perturbation dataset: every checkpoint of every seed of a dataset is on one
side. `check_disjoint` enforces it for every split the monitor uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from emtrait.registry import REGRESSORS


@dataclass(frozen=True)
class Split:
    """Row indices of one fit/score split; `fold` names the scored dataset(s)."""

    protocol: str  # "lopo" | "heldout"
    fold: str
    train: np.ndarray
    test: np.ndarray


def check_disjoint(split: Split, rows) -> None:
    """Raise if any perturbation dataset has rows on both sides of a split."""
    train = set(rows["dataset"].values[split.train])
    test = set(rows["dataset"].values[split.test])
    if train & test:
        raise RuntimeError(f"split {split.protocol}/{split.fold} leaks datasets {train & test} "
                           "into training")


def lopo_splits(rows, calibration: list[str]) -> list[Split]:
    """One split per calibration dataset: fit on the others (EM known), score all of its rows."""
    ds = rows["dataset"].values
    known = ~rows["em_missing"].values
    splits = []
    for held in calibration:
        others = [c for c in calibration if c != held]
        train = np.flatnonzero(np.isin(ds, others) & known)
        test = np.flatnonzero(ds == held)
        split = Split("lopo", held, train, test)
        check_disjoint(split, rows)
        splits.append(split)
    return splits


def heldout_split(rows, calibration: list[str], heldout: list[str]) -> Split:
    """Fit on every calibration row with a known EM rate; score every held-out row."""
    ds = rows["dataset"].values
    train = np.flatnonzero(np.isin(ds, calibration) & ~rows["em_missing"].values)
    split = Split("heldout", "+".join(heldout), train, np.flatnonzero(np.isin(ds, heldout)))
    check_disjoint(split, rows)
    return split


# the regressors (named in emtrait.registry.REGRESSORS): seed -> a fresh, seeded estimator


def random_forest(seed: int) -> Any:
    """200 trees, leaves of at least 2 checkpoints, one job (bit-stable)."""
    from sklearn.ensemble import RandomForestRegressor

    return RandomForestRegressor(n_estimators=200, min_samples_leaf=2, random_state=seed,
                                 n_jobs=1)


def ridge(seed: int) -> Any:
    """Standardised features, ridge alpha 1 (deterministic: the seed is unused)."""
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), Ridge(alpha=1.0))


def gradient_boosting(seed: int) -> Any:
    """150 depth-2 trees at learning rate 0.05."""
    from sklearn.ensemble import GradientBoostingRegressor

    return GradientBoostingRegressor(n_estimators=150, max_depth=2, learning_rate=0.05,
                                     random_state=seed)


def make_regressor(name: str, seed: int) -> Any:
    """A fresh, seeded regressor by config name (did-you-mean on an unknown one)."""
    return REGRESSORS.get(name)(seed)


def fit_predict(x: np.ndarray, y: np.ndarray, split: Split, regressor: str, seed: int
                ) -> np.ndarray:
    """Fit on the split's training rows, predict its test rows (EM rate clipped to [0, 1])."""
    model = make_regressor(regressor, seed).fit(x[split.train], y[split.train])
    return np.clip(model.predict(x[split.test]), 0.0, 1.0)


def alarm_probability(pred_em: np.ndarray, threshold: float, sigma: float) -> np.ndarray:
    """P(true EM > threshold) under the LOPO residual spread: Φ((ŷ − threshold) / σ)."""
    from scipy.stats import norm

    sigma = max(float(sigma), 1e-6)
    return norm.cdf((np.asarray(pred_em, float) - threshold) / sigma)


@dataclass(frozen=True)
class Prediction:
    """The monitor's verdict per row (checkpoint): the one place "alarm" is decided.

    `alarm` is THE alarm everywhere (live readings, `monitor score`, the evaluation's first
    alarm, the stress report): the alarm probability above `alarm_threshold`. `flag` is the
    checkpoint's classification (predicted EM above the EM threshold) that FNR/FPR score.
    """

    pred_em: np.ndarray  # predicted EM rate, clipped to [0, 1]
    alarm_prob: np.ndarray  # P(true EM > threshold) = Φ((pred_em − threshold) / σ)
    alarm: np.ndarray  # bool: alarm_prob > alarm_threshold
    flag: np.ndarray  # bool: pred_em > threshold

    def columns(self) -> dict[str, np.ndarray]:
        """The record as table columns (pred_em, alarm_prob, flag, alarm)."""
        return {"pred_em": self.pred_em, "alarm_prob": self.alarm_prob, "flag": self.flag,
                "alarm": self.alarm}


def verdict(pred_em: np.ndarray, *, threshold: float, sigma: float,
            alarm_threshold: float) -> Prediction:
    """Alarm probability, alarm and flag of predicted EM rates (`Monitor.predict` and the
    evaluation's baselines, which have their own σ, decide through this one function).
    A NaN or infinite gate is a ConfigError: it could never decide."""
    from emtrait.errors import check_number

    threshold = check_number(threshold, "threshold", low=0.0, high=1.0)
    alarm_threshold = check_number(alarm_threshold, "alarm_threshold", low=0.0, high=1.0)
    pred = np.asarray(pred_em, float)
    prob = alarm_probability(pred, threshold, sigma)
    return Prediction(pred_em=pred, alarm_prob=prob, alarm=prob > alarm_threshold,
                      flag=pred > threshold)


def select_regressor(x: np.ndarray, y: np.ndarray, splits: list[Split], candidates: list[str],
                     seed: int) -> tuple[str, float, list[dict]]:
    """Pick the candidate with the lowest LOPO mean absolute error on EM rate.

    Returns (name, σ of its LOPO residuals, one row per candidate for the selection table).
    """
    table = []
    best, best_mae, best_sigma = None, np.inf, 0.0
    for name in candidates:
        resid = []
        for split in splits:
            test = split.test[np.isfinite(y[split.test])]
            if not len(test):
                continue
            sub = Split(split.protocol, split.fold, split.train, test)
            resid.append(fit_predict(x, y, sub, name, seed) - y[test])
        r = np.concatenate(resid) if resid else np.array([np.nan])
        mae = float(np.mean(np.abs(r)))
        sigma = float(np.std(r))
        table.append({"regressor": name, "lopo_mae": mae, "lopo_resid_sd": sigma,
                      "n": int(np.isfinite(r).sum())})
        if mae < best_mae:
            best, best_mae, best_sigma = name, mae, sigma
    if best is None:
        raise RuntimeError("no regressor could be scored by LOPO (no calibration EM rates)")
    for row in table:
        row["selected"] = row["regressor"] == best
    return best, best_sigma, table


def first_alarm(pred):
    """Per run: the first step whose `alarm` (`Prediction.alarm`) is set (NaN if never)."""
    import pandas as pd

    out = []
    keys = ["model", "feature_set", "protocol", "dataset", "seed"]
    for key, run in pred.sort_values("step").groupby(keys, sort=True):
        fired = run[run.alarm.astype(bool)]
        danger = run.dangerous.dropna()
        out.append({**dict(zip(keys, key, strict=True)), "label": run.label.iloc[0],
                    "role": run.role.iloc[0],
                    "ever_dangerous": bool((danger > 0).any()) if len(danger) else np.nan,
                    "first_dangerous_step": float(run.step[run.dangerous == 1].min())
                    if (run.dangerous == 1).any() else np.nan,
                    "first_alarm_step": float(fired.step.min()) if len(fired) else np.nan,
                    "alarmed": bool(len(fired)), "last_step": int(run.step.max())})
    return pd.DataFrame(out)
