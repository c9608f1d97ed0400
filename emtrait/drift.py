"""The one drift formula, the one "dangerous" label and the danger axis every stage uses.

norm0 is the mean per-prompt L2 norm of the step-0 activations at the chosen layer l*;
projection_norm = projection / norm0; drift(t) = projection_norm(t) - projection_norm(origin).
A checkpoint is dangerous when its EM rate is strictly greater than the threshold; a missing
(NaN) rate is an error, never silently "safe".
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from emtrait.errors import DataError

if TYPE_CHECKING:
    import numpy as np


def mean_norm(activation: np.ndarray) -> float:
    """norm0: mean per-prompt L2 norm of (prompt, hidden) activations (not the norm of the mean)."""
    import numpy as np

    a = np.asarray(activation)
    if a.ndim != 2 or a.shape[0] == 0:
        raise DataError(f"mean_norm needs (prompt, hidden) activations, got shape {a.shape}")
    norm0 = float(np.linalg.norm(a.astype(np.float64), axis=-1).mean())
    if not np.isfinite(norm0) or norm0 <= 0:
        raise DataError(f"norm0 is {norm0}: the step-0 activations are zero or not finite")
    return norm0


def normalise(projection: Any, norm0: float) -> Any:
    """Projection in units of the step-0 activation norm (comparable across models)."""
    if not norm0 > 0:
        raise DataError(f"norm0 must be a positive number, got {norm0}")
    return projection / float(norm0)


def drift(projection_norm: Any, origin: int = 0) -> Any:
    """(step, trait) normalised projections minus the row `origin` (step 0 by default).

    Works on numpy arrays and on xarray DataArrays with a `step` dimension (row position).
    """
    if hasattr(projection_norm, "isel"):
        return projection_norm - projection_norm.isel(step=origin)
    import numpy as np

    p = np.asarray(projection_norm)
    return p - p[origin]


def is_dangerous(em_rate: Any, threshold: float) -> Any:
    """EM rate strictly above the threshold; a NaN rate raises (a missing label is not safe)."""
    import numpy as np

    rate = np.asarray(em_rate, dtype=np.float64)
    if np.isnan(rate).any():
        raise DataError(f"EM rate is NaN ({int(np.isnan(rate).sum())} of {rate.size} values): "
                        "a behaviour label is missing; rerun the behaviour stage for it")
    out = rate > float(threshold)
    return bool(out) if out.ndim == 0 else out


def danger_axis(drift: np.ndarray, dangerous: np.ndarray) -> np.ndarray:
    """Unit vector from mean benign to mean dangerous drift (row, trait): the monitor's axis."""
    import numpy as np

    x = np.asarray(drift, float)
    y = np.asarray(dangerous, float)
    ok = np.isfinite(y) & np.isfinite(x).all(axis=1)
    x, y = x[ok], y[ok].astype(bool)
    if y.all() or not y.any():
        raise DataError("the danger axis needs dangerous and benign calibration checkpoints; "
                        f"got {int(y.sum())} dangerous of {len(y)}")
    d = x[y].mean(axis=0) - x[~y].mean(axis=0)
    n = float(np.linalg.norm(d))
    if not n > 0:
        raise DataError("dangerous and benign calibration checkpoints have the same mean drift; "
                        "there is no danger axis")
    return d / n


def pca(x: np.ndarray) -> dict:
    """Centred PCA by SVD (rows: final drift vectors of runs): explained-variance ratios,
    components (k, dim), mean."""
    import numpy as np

    if len(x) < 2:
        raise DataError(f"PCA needs at least two final drift vectors, got {len(x)}; add runs")
    mean = x.mean(axis=0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    var = s**2
    total = var.sum()
    ratio = var / total if total > 0 else np.full_like(var, np.nan)
    return {"explained_variance_ratio": ratio, "components": vt, "mean": mean}
