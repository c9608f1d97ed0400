"""Feature sets compared under one protocol: trait drift and the paper's baselines.

Every feature set is a function `(context, train rows) -> features of all rows`: whatever it
learns (a PCA axis, an autoencoder) it learns from the training rows of the split only, so a
held-out perturbation never shapes the features it is scored with.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from emtrait.cube.read import Checkpoints, trait_columns
from emtrait.errors import ConfigError
from emtrait.monitor.data import run_activation_drift


@dataclass
class Context:
    """One cube's checkpoints plus lazily computed activation features."""

    ds: object  # xarray.Dataset (the cube)
    cp: Checkpoints
    include_step: bool = False
    sae_latents: int = 64
    sae_steps: int = 300
    sae_l1: float = 1e-3
    seed: int = 0
    _act_drift: np.ndarray | None = field(default=None, repr=False)

    def act_drift(self) -> np.ndarray:
        """(row, hidden) prompt-mean activation drift / norm0, computed once."""
        if self._act_drift is None:
            self._act_drift = run_activation_drift(self.ds, self.cp)
        return self._act_drift


def _pc1_axis(x: np.ndarray) -> np.ndarray:
    """First principal axis of centred rows, signed so the mean row projects positively."""
    xc = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(xc, full_matrices=False)
    axis = vt[0]
    return axis if x.mean(axis=0) @ axis >= 0 else -axis


def _pca(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean, components (k, dim)) of rows x."""
    mean = x.mean(axis=0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    return mean, vt[:k]


def trait_set_features(name: str) -> Callable[[Context, np.ndarray], np.ndarray]:
    def f(ctx: Context, train: np.ndarray) -> np.ndarray:
        return trait_columns(ctx.cp, name)[1]
    return f


def pc1_features(ctx: Context, train: np.ndarray, monitor_set: str) -> np.ndarray:
    """|drift · PC1| with PC1 of the training rows' trait drift (one scalar magnitude)."""
    x = trait_columns(ctx.cp, monitor_set)[1]
    axis = _pc1_axis(x[train])
    return np.abs(x @ axis)[:, None]


def loss_features(ctx: Context, train: np.ndarray) -> np.ndarray:
    """Training loss at the checkpoint (a run with no logged loss there gets its median)."""
    loss = ctx.cp.rows["loss"].values.astype(float)
    fill = np.nanmedian(loss[train]) if np.isfinite(loss[train]).any() else 0.0
    return np.where(np.isfinite(loss), loss, fill)[:, None]


def pca7_features(ctx: Context, train: np.ndarray) -> np.ndarray:
    """Data-driven 7-D basis: top principal axes of raw activation drift on training rows."""
    a = ctx.act_drift()
    mean, comps = _pca(a[train], min(7, a.shape[1], len(train)))
    return (a - mean) @ comps.T


def train_sae(x: np.ndarray, latents: int, steps: int, l1: float, seed: int,
              batch: int = 256, lr: float = 3e-3):
    """A ReLU sparse autoencoder fitted by Adam on rows x (n, hidden); returns its encoder."""
    rng = np.random.default_rng(seed)
    n, h = x.shape
    w_e = rng.normal(size=(h, latents)) / np.sqrt(h)
    w_d = w_e.T.copy()
    b_e = np.zeros(latents)
    b_d = x.mean(axis=0)
    params = [w_e, b_e, w_d, b_d]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    for it in range(1, steps + 1):
        xb = x[rng.integers(0, n, min(batch, n))]
        b = len(xb)
        xc = xb - b_d
        pre = xc @ w_e + b_e
        z = np.maximum(pre, 0)
        r = z @ w_d + b_d - xb  # reconstruction error (b, h)
        g_out = 2 * r / b
        g_wd = z.T @ g_out
        g_z = g_out @ w_d.T + l1 / b
        g_pre = g_z * (pre > 0)
        g_we = xc.T @ g_pre
        g_be = g_pre.sum(axis=0)
        g_bd = g_out.sum(axis=0) - (g_pre @ w_e.T).sum(axis=0)  # b_d enters both ends
        for p, g, mi, vi in zip(params, [g_we, g_be, g_wd, g_bd], m, v, strict=True):
            mi *= 0.9
            mi += 0.1 * g
            vi *= 0.999
            vi += 0.001 * g * g
            p -= lr * (mi / (1 - 0.9**it)) / (np.sqrt(vi / (1 - 0.999**it)) + 1e-8)

    def encode(a: np.ndarray) -> np.ndarray:
        return np.maximum((a - b_d) @ w_e + b_e, 0)

    return encode


def sae_features(ctx: Context, train: np.ndarray) -> np.ndarray:
    """SAE basis: latents of an autoencoder trained on the training runs' per-prompt activations;
    features are the 7 latents whose prompt-mean drift varies most over the training rows."""
    act = ctx.ds["activation"]
    norm0 = ctx.ds["norm0"].values.astype("float64")
    idx = ctx.cp.index
    runs = sorted({(int(d), int(s)) for d, s, _ in idx})
    train_runs = sorted({(int(d), int(s)) for d, s, _ in idx[train]})
    per_run = {}
    for d, s in runs:
        a = act[d, s].values.astype("float64") / norm0[d, s]  # (step, prompt, hidden)
        per_run[(d, s)] = a
    x = np.concatenate([per_run[r][np.isfinite(per_run[r]).all(axis=(1, 2))].reshape(
        -1, per_run[r].shape[-1]) for r in train_runs])
    encode = train_sae(x, ctx.sae_latents, ctx.sae_steps, ctx.sae_l1, ctx.seed)
    z_mean = {}
    for r, a in per_run.items():
        ok = np.isfinite(a).all(axis=(1, 2))
        zm = np.full((a.shape[0], ctx.sae_latents), np.nan)
        zm[ok] = encode(a[ok].reshape(-1, a.shape[-1])).reshape(ok.sum(), a.shape[1], -1
                                                                ).mean(axis=1)
        z_mean[r] = zm
    drift = np.stack([z_mean[(int(d), int(s))][t] - z_mean[(int(d), int(s))][0]
                      for d, s, t in idx])
    top = np.argsort(-drift[train].var(axis=0))[:7]
    return drift[:, top]


def feature_names(monitor_set: str, baselines: list[str]) -> list[str]:
    """The monitor's set first, then each baseline (a trait-set baseline equal to it is skipped)."""
    return [monitor_set] + [b for b in baselines if b != monitor_set]


def compute(name: str, ctx: Context, train: np.ndarray, monitor_set: str,
            trait_sets: list[str]) -> np.ndarray:
    """Features of every row for feature set `name`, fitted on rows `train` (+ step if asked)."""
    if name == "pc1":
        x = pc1_features(ctx, train, monitor_set)
    elif name == "loss":
        x = loss_features(ctx, train)
    elif name == "pca7":
        x = pca7_features(ctx, train)
    elif name == "sae":
        x = sae_features(ctx, train)
    elif name in trait_sets:
        x = trait_set_features(name)(ctx, train)
    else:
        raise ConfigError(f"monitor.baselines: unknown feature set '{name}'; known: pc1, loss, "
                          f"pca7, sae and the cube's trait sets {sorted(set(trait_sets))}")
    if ctx.include_step:
        x = np.column_stack([x, ctx.cp.rows["step"].values.astype(float)])
    return x
