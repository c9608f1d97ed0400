"""Do two finished workflow runs hold the same numbers? (a refactor's regression check)

    python bench/compare_runs.py BEFORE_WORKDIR AFTER_WORKDIR [--model smollm2]

Reads only the stage outputs both runs have: the cube (drift, labels, loss, norm0 per
checkpoint; a cube keyed by layer is compared at its l*), the monitor's predictions and its
metrics. For metrics, the AFTER run's rows under the BEFORE run's step-0 policy are compared
when the AFTER table has a `step0` column (step 0 counted = "include"). Prints the largest
differences; exit status 1 when any number differs by more than --atol, so it can gate a
refactor.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CUBE_VARS = ["drift", "projection", "projection_norm", "norm0", "loss", "em_rate", "dangerous"]
KEYS = ["feature_set", "protocol", "dataset", "seed", "step"]
METRICS = ["n", "fnr", "fpr", "auroc", "error"]


def _l_star(cube):
    """A cube keyed by layer as the single-layer cube it contains at l* (attribute `layer`)."""
    return cube.sel(layer=cube.attrs["layer"], drop=True) if "layer" in cube.dims else cube


def compare_cubes(before: Path, after: Path) -> list[tuple[str, float]]:
    from emtrait.stores import open_store  # not open_cube: an older cube may predate its contract

    a, b = (_l_star(open_store(p)) for p in (before, after))
    rows = []
    for var in CUBE_VARS:
        if var not in a or var not in b:
            print(f"cube: {var} missing from {'before' if var not in a else 'after'}; skipped")
            continue
        x, y = a[var], b[var].reindex_like(a[var])
        diff = np.abs(x.values.astype(float) - y.values.astype(float))
        both_nan = np.isnan(x.values.astype(float)) & np.isnan(y.values.astype(float))
        worst = float(np.nanmax(np.where(both_nan, 0.0, diff))) if diff.size else 0.0
        rows.append((f"cube {var} {tuple(x.dims)}", worst))
    return rows


def compare_predictions(before: Path, after: Path) -> list[tuple[str, float]]:
    import pandas as pd

    a, b = pd.read_csv(before), pd.read_csv(after)
    m = a.merge(b, on=["model", *KEYS], suffixes=("_a", "_b"))
    if len(m) != len(a):
        print(f"predictions: {len(a)} rows before, {len(b)} after, {len(m)} matched")
    rows = []
    for col in ["em_rate", "pred_em", "alarm_prob"]:
        rows.append((f"predictions {col} ({len(m)} rows)",
                     float((m[f"{col}_a"] - m[f"{col}_b"]).abs().max())))
    rows.append((f"predictions flag disagreements ({len(m)} rows)",
                 float((m["flag_a"].astype(bool) != m["flag_b"].astype(bool)).sum())))
    return rows


def compare_metrics(before: Path, after: Path) -> list[tuple[str, float]]:
    import pandas as pd

    a, b = pd.read_csv(before), pd.read_csv(after)
    keys = ["model", "feature_set", "protocol", "dataset"]
    if "step0" in b and "step0" not in a:
        b = b[b.step0 == "include"]  # the policy of tables from before step0 was a choice
    elif "step0" in a and "step0" in b:
        keys.append("step0")
    m = a.merge(b, on=keys, suffixes=("_a", "_b"))
    rows = []
    for col in METRICS:
        x, y = m[f"{col}_a"].astype(float), m[f"{col}_b"].astype(float)
        same_nan = x.isna() & y.isna()
        rows.append((f"metrics {col} ({len(m)} rows)",
                     float(np.where(same_nan, 0.0, (x - y).abs()).max())))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--atol", type=float, default=1e-5)
    args = ap.parse_args()
    rows = compare_cubes(*(w / f"results/cube/{args.model}.zarr" for w in (args.before,
                                                                            args.after)))
    mon = [w / f"results/monitor/{args.model}" for w in (args.before, args.after)]
    rows += compare_predictions(*(d / "predictions.csv" for d in mon))
    rows += compare_metrics(*(d / "metrics.csv" for d in mon))
    width = max(len(name) for name, _ in rows)
    for name, worst in rows:
        print(f"{name:<{width}}  max |before - after| = {worst:.3g}"
              + ("" if worst <= args.atol else "   <-- differs"))
    sys.exit(int(any(worst > args.atol for _, worst in rows)))


if __name__ == "__main__":
    main()
