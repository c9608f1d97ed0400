"""Geometry of trait drift: pooled PCA of final-checkpoint drift and per-checkpoint decompositions.

The final drift of each run is read by `emtrait.cube.read.final_drift`, its PCA is
`emtrait.drift.pca` (the layer comparison, `emtrait.monitor.layers`, reads both too).
Drift is already activation-norm rescaled (projection / norm0 of its run, DEVELOPING.md), so
runs of different models pool directly. PCA is centred; |PC1| of a checkpoint is the magnitude
of its (uncentred) drift along PC1, zero at step 0. PC1 is signed so that dangerous calibration
runs project positively.
"""

from __future__ import annotations

import numpy as np

from emtrait.cube.read import checkpoints, final_drift, trait_columns
from emtrait.drift import pca


def orient(axis: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Flip an axis so the reference vector projects non-negatively on it."""
    return axis if float(reference @ axis) >= 0 else -axis


def danger_direction(final, traits: list[str]) -> np.ndarray:
    """Mean unit direction of the final drift of dangerous calibration runs (NaN if none)."""
    sel = final[(final.label == "dangerous")]
    if not len(sel):
        return np.full(len(traits), np.nan)
    v = sel[traits].values.astype(float)
    v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    m = v.mean(axis=0)
    return m / max(np.linalg.norm(m), 1e-12)


def geometry(cubes: list, trait_set: str, fit_models: list[str] | None = None) -> dict:
    """PCA of calibration final drift pooled over `fit_models` (default: all cubes) and seeds,
    leave-one-perturbation-out PC1 stability, and per-checkpoint trajectories of every cube."""
    import pandas as pd

    final, traits = final_drift(cubes, trait_set)
    fit = final[final.role.eq("calibration")]
    if fit_models is not None:
        fit = fit[fit.model.isin(fit_models)]
    x = fit[traits].values.astype(float)
    res = pca(x)
    danger = danger_direction(fit, traits)
    ref = danger if np.isfinite(danger).all() else x.mean(axis=0)
    pc1 = orient(res["components"][0], ref)
    stability = []
    for d in sorted(fit.dataset.unique()):
        rest = fit[fit.dataset != d][traits].values.astype(float)
        if len(rest) < 2:
            continue
        axis = pca(rest)["components"][0]
        stability.append({"left_out": d, "n_runs": int(len(rest)),
                          "cosine": float(abs(axis @ pc1))})
    traj = []
    for ds in cubes:
        cp = checkpoints(ds)
        _, xt = trait_columns(cp, trait_set)
        norm = np.linalg.norm(xt, axis=1)
        cos = (xt @ danger) / np.maximum(norm, 1e-12) if np.isfinite(danger).all() else np.nan
        rows = cp.rows.assign(drift_norm=norm, pc1=xt @ pc1, abs_pc1=np.abs(xt @ pc1),
                              cos_danger=np.where(norm > 0, cos, np.nan),
                              **{t: xt[:, i] for i, t in enumerate(traits)})
        traj.append(rows)
    final = final.assign(pc1=final[traits].values @ pc1, abs_pc1=np.abs(final[traits].values @ pc1))
    return {
        "traits": traits, "trait_set": trait_set,
        "explained_variance_ratio": res["explained_variance_ratio"].tolist(),
        "pc1": pc1.tolist(), "pc1_explained": float(res["explained_variance_ratio"][0]),
        "pc1_loadings": dict(zip(traits, pc1.tolist(), strict=True)),
        "mean": res["mean"].tolist(), "danger_direction": danger.tolist(),
        "n_runs": int(len(fit)), "models": sorted(fit.model.unique()),
        "datasets": sorted(fit.dataset.unique()),
        "n_fallback_final": int(fit.fallback.sum()),
        "stability": stability,
        "final": final, "trajectories": pd.concat(traj, ignore_index=True),
    }
