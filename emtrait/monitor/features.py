"""Feature sets compared under one protocol: trait drift and the paper's baselines.

Every feature set is a function `(context, train rows, monitor set) -> features of all rows`,
registered by name in emtrait.registry.FEATURE_SETS (a config's trait sets are feature sets too).
Whatever a set learns (a PCA axis, an autoencoder, which SAE latents to keep) it learns from the
training rows of the split only, so a held-out perturbation never shapes the features it is scored
with.

The SAE baseline reads either a pretrained SAE (SAELens; `models.<m>.sae`) or, without one, a
ReLU SAE trained here with torch on the training runs' activations. Both are deterministic: the
trained SAE draws from its own seeded generator on one thread, and only latents whose drift
varies on the training rows are offered to the regressor (a latent at float-noise level is a
column a random forest would happily split on, and noise differs between machines and runs).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from emtrait.cube.read import Checkpoints, trait_columns
from emtrait.errors import ConfigError, DataError
from emtrait.monitor.data import run_activation_drift
from emtrait.registry import FEATURE_SETS, check_feature_set

if TYPE_CHECKING:
    from emtrait.config import Config, PretrainedSae

SAE_FEATURES = 7  # latents kept, as many as the trait monitor has traits
LIVE_VARIANCE = 1e-8  # a latent whose drift variance is below this share of the largest is dead


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
    pretrained_sae: PretrainedSae | None = None
    model: str = "model"
    _act_drift: np.ndarray | None = field(default=None, repr=False)
    _pretrained_drift: np.ndarray | None = field(default=None, repr=False)

    @classmethod
    def from_config(cls, ds, cp: Checkpoints, cfg: Config) -> Context:
        """The context of cube `ds` with the monitor section's knobs and the model's SAE."""
        mcfg = cfg.monitor
        model = str(ds.attrs["model"])
        entry = cfg.models.get(model)
        return cls(ds, cp, include_step=mcfg.include_step, sae_latents=mcfg.sae_latents,
                   sae_steps=mcfg.sae_steps, sae_l1=mcfg.sae_l1, seed=mcfg.seed,
                   pretrained_sae=entry.sae if entry is not None else None, model=model)

    def act_drift(self) -> np.ndarray:
        """(row, hidden) prompt-mean activation drift / norm0, computed once."""
        if self._act_drift is None:
            self._act_drift = run_activation_drift(self.ds, self.cp)
        return self._act_drift


FeatureSet = Callable[[Context, np.ndarray, str], np.ndarray]


# ---------------------------------------------------------------------------------------------
# trait sets, PC1, loss, PCA-7
# ---------------------------------------------------------------------------------------------


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


def trait_set_features(name: str) -> FeatureSet:
    """The drift of trait set `name` (the monitor's own set, semantic or random controls)."""
    def f(ctx: Context, train: np.ndarray, monitor_set: str) -> np.ndarray:
        return trait_columns(ctx.cp, name)[1]
    return f


def pc1_features(ctx: Context, train: np.ndarray, monitor_set: str) -> np.ndarray:
    """|drift · PC1| with PC1 of the training rows' trait drift (one scalar magnitude)."""
    x = trait_columns(ctx.cp, monitor_set)[1]
    axis = _pc1_axis(x[train])
    return np.abs(x @ axis)[:, None]


def loss_features(ctx: Context, train: np.ndarray, monitor_set: str) -> np.ndarray:
    """Training loss at the checkpoint (a run with no logged loss there gets its median)."""
    loss = ctx.cp.rows["loss"].values.astype(float)
    fill = np.nanmedian(loss[train]) if np.isfinite(loss[train]).any() else 0.0
    return np.where(np.isfinite(loss), loss, fill)[:, None]


def pca7_features(ctx: Context, train: np.ndarray, monitor_set: str) -> np.ndarray:
    """Data-driven 7-D basis: top principal axes of raw activation drift on training rows."""
    a = ctx.act_drift()
    mean, comps = _pca(a[train], min(7, a.shape[1], len(train)))
    return (a - mean) @ comps.T


# ---------------------------------------------------------------------------------------------
# the SAE baseline
# ---------------------------------------------------------------------------------------------


@contextmanager
def _one_thread() -> Iterator[None]:
    """Torch on one thread inside (the previous count restored), so reductions run in one order."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_sae(x: np.ndarray, latents: int, steps: int, l1: float, seed: int,
              batch: int = 256, lr: float = 3e-3) -> Callable[[np.ndarray], np.ndarray]:
    """A ReLU sparse autoencoder fitted by torch's Adam on rows x (n, hidden); returns its encoder.

    Same architecture as SAELens's standard SAE (encode = ReLU((x − b_dec) W_enc + b_enc)).
    Initialisation and minibatches come from a generator seeded by `seed`, never from global
    RNG state, and it runs on one thread in float64: the same rows give the same encoder.
    """
    import torch

    with _one_thread():
        gen = torch.Generator().manual_seed(seed)
        xt = torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float64)  # (n, hidden)
        n, h = xt.shape
        w_enc = (torch.randn(h, latents, generator=gen, dtype=torch.float64) / h ** 0.5
                 ).requires_grad_()
        w_dec = w_enc.detach().T.clone().requires_grad_()
        b_enc = torch.zeros(latents, dtype=torch.float64, requires_grad=True)
        b_dec = xt.mean(dim=0).clone().requires_grad_()
        opt = torch.optim.Adam([w_enc, b_enc, w_dec, b_dec], lr=lr)
        for _ in range(steps):
            xb = xt[torch.randint(0, n, (min(batch, n),), generator=gen)]  # (batch, hidden)
            z = torch.relu((xb - b_dec) @ w_enc + b_enc)  # (batch, latents)
            loss = ((z @ w_dec + b_dec - xb) ** 2).sum(dim=1).mean() + l1 * z.sum(dim=1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        w_e, b_e, b_d = (t.detach().clone() for t in (w_enc, b_enc, b_dec))

    def encode(a: np.ndarray) -> np.ndarray:
        with _one_thread(), torch.no_grad():
            at = torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float64)
            return torch.relu((at - b_d) @ w_e + b_e).numpy()

    return encode


def load_pretrained_sae(source: PretrainedSae, layer: int, hidden: int, model: str
                        ) -> Callable[[np.ndarray], np.ndarray]:
    """The encoder of a SAELens SAE (hub release + id, or a local folder) for block `layer`."""
    try:
        from sae_lens import SAE
    except ImportError:
        raise ConfigError(f"models.{model}.sae names a pretrained SAE, which needs SAELens: "
                          "pip install 'emtrait[sae]' (or remove the entry to train the "
                          "baseline's SAE on the run's own activations)") from None
    import torch

    where = source.path or f"{source.release}/{source.id}"
    if source.path is not None:
        sae = SAE.load_from_disk(source.path, device="cpu")
    else:
        sae = SAE.from_pretrained(source.release, source.id, device="cpu")
    if isinstance(sae, tuple):  # older SAELens returned (sae, cfg, sparsity)
        sae = sae[0]
    reads = source.layer if source.layer is not None else _hook_block(
        sae.cfg.metadata.hook_name, where, model)
    if reads != layer:
        raise DataError(f"models.{model}.sae ({where}) reads decoder block {reads}, but the cube "
                        f"was measured at block {layer} (l*); use the SAE trained for block "
                        f"{layer} (SAELens hook blocks.{layer}.hook_resid_post)")
    if sae.cfg.d_in != hidden:
        raise DataError(f"models.{model}.sae ({where}) reads {sae.cfg.d_in}-dim activations; "
                        f"the model's are {hidden}-dim: it is an SAE of another model")
    sae.eval()

    def encode(a: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            x = torch.as_tensor(np.ascontiguousarray(a), dtype=sae.W_enc.dtype)
            return sae.encode(x).double().numpy()

    return encode


def _hook_block(hook: str | None, where: str, model: str) -> int:
    """The decoder block whose output a SAELens hook name reads (our layer convention)."""
    m = re.fullmatch(r"blocks\.(\d+)\.hook_resid_(pre|post)", hook or "")
    if m is None:
        raise DataError(f"models.{model}.sae ({where}) hooks {hook!r}, not a residual stream "
                        "(blocks.L.hook_resid_post); set models.{model}.sae.layer if it reads "
                        "the output of a decoder block")
    block = int(m.group(1))
    return block if m.group(2) == "post" else block - 1  # resid_pre of L = output of L-1


def latent_drift(ctx: Context, encode: Callable[[np.ndarray], np.ndarray], scale: bool
                 ) -> np.ndarray:
    """(row, latent) prompt-mean SAE latents at each row's step minus at its run's step 0.

    `scale` divides activations by the run's norm0 first (an SAE trained here on those units);
    a pretrained SAE reads raw activations, the units it was trained on.
    """
    from emtrait.drift import drift

    act = ctx.ds["activation"]
    norm0 = ctx.ds["norm0"].values.astype("float64")
    per_run: dict[tuple[int, int], np.ndarray] = {}
    for d, s in sorted({(int(d), int(s)) for d, s, _ in ctx.cp.index}):
        a = act[d, s].values.astype("float64")  # (step, prompt, hidden)
        if scale:
            a = a / norm0[d, s]
        ok = np.flatnonzero(np.isfinite(a).all(axis=(1, 2)))
        means = {int(k): encode(a[k]).mean(axis=0) for k in ok}  # step -> (latent,)
        width = len(next(iter(means.values())))
        z = np.full((a.shape[0], width), np.nan)
        for k, m in means.items():
            z[k] = m
        per_run[(d, s)] = drift(z)
    return np.stack([per_run[(int(d), int(s))][t] for d, s, t in ctx.cp.index])


def select_latents(drift: np.ndarray, train: np.ndarray, k: int = SAE_FEATURES) -> np.ndarray:
    """The `k` latents whose drift varies most on the training rows; dead ones become zeros.

    Ties keep latent order (stable sort). A latent whose variance is below LIVE_VARIANCE of the
    largest carries only float noise, which differs between machines: it is zeroed, not kept.
    """
    var = drift[train].var(axis=0)
    top = np.argsort(-var, kind="stable")[:k]
    out = drift[:, top].copy()
    dead = var[top] <= LIVE_VARIANCE * max(float(var.max()), 0.0)
    out[:, dead] = 0.0
    return out


def _training_rows(ctx: Context, train: np.ndarray) -> np.ndarray:
    """Per-prompt activations / norm0 of the training runs' checkpoints: (rows, hidden)."""
    act = ctx.ds["activation"]
    norm0 = ctx.ds["norm0"].values.astype("float64")
    parts = []
    for d, s in sorted({(int(d), int(s)) for d, s, _ in ctx.cp.index[train]}):
        a = act[d, s].values.astype("float64") / norm0[d, s]  # (step, prompt, hidden)
        parts.append(a[np.isfinite(a).all(axis=(1, 2))].reshape(-1, a.shape[-1]))
    return np.concatenate(parts)


def sae_features(ctx: Context, train: np.ndarray, monitor_set: str = "") -> np.ndarray:
    """SAE basis: the 7 latents whose prompt-mean drift varies most over the training rows, of a
    pretrained SAE (models.<m>.sae) or of one trained on the training runs' activations."""
    if ctx.pretrained_sae is not None:
        if ctx._pretrained_drift is None:
            act = ctx.ds["activation"]
            encode = load_pretrained_sae(ctx.pretrained_sae, int(ctx.ds.attrs["layer"]),
                                         int(act.sizes["hidden"]), ctx.model)
            ctx._pretrained_drift = latent_drift(ctx, encode, scale=False)
        return select_latents(ctx._pretrained_drift, train)
    encode = train_sae(_training_rows(ctx, train), ctx.sae_latents, ctx.sae_steps, ctx.sae_l1,
                       ctx.seed)
    return select_latents(latent_drift(ctx, encode, scale=True), train)


def feature_names(monitor_set: str, baselines: list[str]) -> list[str]:
    """The monitor's set first, then each baseline (a trait-set baseline equal to it is skipped)."""
    return [monitor_set] + [b for b in baselines if b != monitor_set]


def compute(name: str, ctx: Context, train: np.ndarray, monitor_set: str,
            trait_sets: list[str]) -> np.ndarray:
    """Features of every row for feature set `name`, fitted on rows `train` (+ step if asked)."""
    check_feature_set(name, trait_sets, key="monitor.baselines (sets in the cube)")
    make = FEATURE_SETS.get(name) if name in FEATURE_SETS else trait_set_features(name)
    x = make(ctx, train, monitor_set)
    if ctx.include_step:
        x = np.column_stack([x, ctx.cp.rows["step"].values.astype(float)])
    return x
