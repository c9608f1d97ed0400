"""How much of a calibration transfers: a transferred monitor scored on the new model's grid.

`transfer_metrics` scores the new model's whole cube (every dataset as held out: the monitor
never saw any of it) under three conditions, one metrics block each (FNR/FPR/AUROC with
run-level intervals, and a run-label permutation p of the AUROC):

- `zero_shot`: the transferred monitor as written by `emtrait monitor transfer`;
- `few_run_<method>`: recalibrated (`emtrait.monitor.transfer.recalibrate`) on one dangerous
  and one benign run (the first of each label in config order, first seed), scored on the
  other runs;
- `own_lopo`: the new model's own monitor, LOPO-validated on its calibration datasets (what
  `emtrait monitor evaluate` reports), where its cube allows one (two or more calibration
  datasets with labels).
"""

from __future__ import annotations

import numpy as np

from emtrait.monitor.artifact import Monitor

CONDITIONS = ("zero_shot", "few_run_scale", "few_run_threshold", "own_lopo")


def few_runs(cfg, cube) -> list[tuple[str, int]]:
    """One dangerous and one benign run of the cube: the first dataset of each label in config
    order, at the cube's first seed."""
    present = [str(d) for d in cube["dataset"].values]
    seed = int(cube["seed"].values[0])
    out = []
    for label in ("dangerous", "benign"):
        names = [d for d, e in cfg.datasets.items() if e.label == label and d in present]
        if names:
            out.append((names[0], seed))
    return out


def _scored(cp, monitor: Monitor, idx: np.ndarray, condition: str):
    import pandas as pd

    x = cp.drift[idx][:, [cp.traits.index(t) for t in monitor.traits]]
    out = monitor.predict(x, cp.rows.step.values[idx])
    frame = cp.rows.iloc[idx][["model", "dataset", "seed", "step", "em_rate", "em_missing",
                               "dangerous"]].copy()
    frame["condition"] = condition
    for k, v in out.columns().items():
        frame[k] = v
    return pd.DataFrame(frame)


def _perm_p(frame, threshold: float, n: int, seed: int, step0: str) -> float:
    """Run-label permutation p of the AUROC of fixed predictions (labels move as whole runs;
    rows scored as the metrics' `step0` policy says)."""
    from emtrait.drift import is_dangerous
    from emtrait.monitor.metrics import auroc, permutation_test, permute_by_run, run_ids

    f = frame[frame.step != 0] if step0 == "exclude" else frame
    runs = run_ids(f)
    em = f.em_rate.values.astype(float)
    pred = f.pred_em.values

    def stat(perm) -> float:
        y = permute_by_run(em, runs, f.step.values, perm)
        ok = np.isfinite(y)
        return auroc(is_dangerous(y[ok], threshold), pred[ok])

    return permutation_test(stat, int(runs.max()) + 1, [sorted(set(runs.tolist()))], n,
                            seed).p_value


def transfer_metrics(cube, monitor: Monitor, cfg):
    """(predictions, metrics) of the transferred monitor on its model's cube (module doc)."""
    import pandas as pd

    from emtrait.cube.read import checkpoints
    from emtrait.monitor.evaluate import label_method
    from emtrait.monitor.metrics import metrics_table
    from emtrait.monitor.transfer import recalibrate

    mcfg = cfg.monitor
    cp = checkpoints(cube)
    everything = np.arange(len(cp.rows))
    frames = [_scored(cp, monitor, everything, "zero_shot")]
    chosen = few_runs(cfg, cube)
    if len(chosen) == 2:
        rest = np.flatnonzero(~np.array([(d, s) in set(chosen) for d, s in zip(
            cp.rows.dataset.values, cp.rows.seed.values, strict=True)]))
        for method in ("scale", "threshold"):
            mon = recalibrate(monitor, cube, runs=chosen, method=method)
            frames.append(_scored(cp, mon, rest, f"few_run_{method}"))
    own = _own_lopo(cube, cfg)
    if own is not None:
        frames.append(own)
    pred = pd.concat(frames, ignore_index=True).assign(label_method=label_method(cube.attrs))
    metrics = metrics_table(pred, ["model", "condition", "dataset"], bootstrap=mcfg.bootstrap,
                            seed=mcfg.seed, step0=mcfg.step0)
    threshold = float(cube.attrs["threshold"])
    p = {c: _perm_p(g, threshold, mcfg.permutations, mcfg.seed, mcfg.step0)
         for c, g in pred.groupby("condition")} if mcfg.permutations else {}
    metrics["auroc_p"] = [p.get(c, np.nan) if d == "pooled" else np.nan
                          for c, d in zip(metrics.condition, metrics.dataset, strict=True)]
    metrics["source_model"] = monitor.meta["transfer"]["from_model"]
    return pred, metrics


def _own_lopo(cube, cfg):
    """The model's own LOPO predictions (its calibration datasets), or None where too few."""
    import pandas as pd

    from emtrait.cube.read import checkpoints
    from emtrait.monitor.evaluate import fit_monitor
    from emtrait.monitor.protocol import fit_predict, lopo_splits, verdict

    cp = checkpoints(cube)
    calib = sorted(set(cp.rows.dataset[cp.rows.role.eq("calibration")]))
    if len(calib) < 2 or len(set(cp.rows.label[cp.rows.role.eq("calibration")])) < 2:
        return None
    own, _ = fit_monitor(cube, cfg)
    traits = own.traits
    x = cp.drift[:, [cp.traits.index(t) for t in traits]]
    if own.meta["include_step"]:
        x = np.column_stack([x, cp.rows.step.values.astype(float)])
    y = cp.rows.em_rate.values
    parts = []
    for split in lopo_splits(cp.rows, calib):
        pred = fit_predict(x, y, split, own.meta["regressor_name"], cfg.monitor.seed)
        frame = cp.rows.iloc[split.test][["model", "dataset", "seed", "step", "em_rate",
                                          "em_missing", "dangerous"]].copy()
        frame["pred_em"] = pred
        parts.append(frame)
    frame = pd.concat(parts, ignore_index=True)
    decided = verdict(frame.pred_em.values, threshold=own.meta["threshold"],
                      sigma=own.meta["sigma"], alarm_threshold=own.meta["alarm_threshold"])
    for k, v in decided.columns().items():
        frame[k] = v
    frame["condition"] = "own_lopo"
    return frame
