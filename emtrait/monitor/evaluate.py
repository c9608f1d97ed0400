"""Fit the monitor, validate it (LOPO + held-out, baselines, alarm) and run stress evaluations.

The pure-ish core behind `emtrait monitor fit|evaluate|stress`: cube Dataset and config in,
Monitor and DataFrames out. I/O stays in cli.py.
"""

from __future__ import annotations

import numpy as np

from emtrait.cube.read import Checkpoints, checkpoints, trait_columns
from emtrait.errors import DataError
from emtrait.monitor.artifact import NORM0_POLICY, Monitor
from emtrait.monitor.data import calibration_and_heldout
from emtrait.monitor.features import Context, compute, feature_names
from emtrait.monitor.metrics import metrics_table
from emtrait.monitor.protocol import (
    alarm_probability,
    first_alarm,
    fit_predict,
    heldout_split,
    lopo_splits,
    make_regressor,
    select_regressor,
)
from emtrait.screen.core import danger_axis

PRED_COLUMNS = ["model", "feature_set", "protocol", "fold", "dataset", "seed", "step", "role",
                "label", "em_rate", "em_missing", "dangerous", "pred_em", "alarm_prob", "flag"]


def _monitor_x(cp: Checkpoints, monitor_set: str, include_step: bool):
    traits, x = trait_columns(cp, monitor_set)
    if include_step:
        x = np.column_stack([x, cp.rows["step"].values.astype(float)])
    return traits, x


def fit_monitor(ds, cfg) -> tuple[Monitor, list[dict]]:
    """Choose the regressor by LOPO on calibration runs, then fit it on all of them.

    The monitor's directions are the cube's own (`direction(trait, hidden)` at its layer), the
    ones every drift in the cube was measured with.
    """
    mcfg = cfg.monitor
    cp = checkpoints(ds)
    source = f"cube of model {ds.attrs['model']}"
    calib, _ = calibration_and_heldout(cp, source=source)
    traits, x = _monitor_x(cp, cfg.traits.monitor_set, mcfg.include_step)
    y = cp.rows["em_rate"].values
    splits = lopo_splits(cp.rows, calib)
    name, sigma, table = select_regressor(x, y, splits, list(mcfg.regressors), mcfg.seed)
    train = np.flatnonzero(cp.rows["role"].eq("calibration").values & ~cp.rows.em_missing.values)
    regressor = make_regressor(name, mcfg.seed).fit(x[train], y[train])
    layer = int(ds.attrs["layer"])
    dirs = ds["direction"].sel(trait=traits).values
    n_excl = int(cp.rows.loc[cp.rows.role == "calibration", "em_missing"].sum())
    meta = {
        "model": str(ds.attrs["model"]), "layer": layer, "traits": traits,
        "trait_set": cfg.traits.monitor_set, "include_step": mcfg.include_step,
        "threshold": mcfg.threshold, "em_threshold": float(ds.attrs["threshold"]),
        "alarm_threshold": mcfg.alarm_threshold, "regressor_name": name, "sigma": sigma,
        "norm0_policy": NORM0_POLICY, "calibration": calib, "n_train": int(len(train)),
        "n_excluded_nan": n_excl, "trait_sets": sorted(set(cp.trait_sets)),
        # the axis `emtrait screen` scores data along (its risk); emtrait/screen/core.py
        "danger_axis": danger_axis(x[train, :len(traits)],
                                   cp.rows["dangerous"].values[train]).tolist(),
    }
    return Monitor(regressor=regressor, directions=dirs, meta=meta), table


def _frame(cp: Checkpoints, idx: np.ndarray, **cols):
    out = cp.rows.iloc[idx][["model", "dataset", "seed", "step", "role", "label", "em_rate",
                             "em_missing", "dangerous"]].copy()
    for k, v in cols.items():
        out[k] = v
    return out


def evaluate(ds, monitor: Monitor, cfg, expected_heldout: list[str]):
    """LOPO + held-out predictions of the monitor and every baseline; metrics; alarm table."""
    import pandas as pd
    from tqdm import tqdm

    mcfg = cfg.monitor
    cp = checkpoints(ds)
    source = f"cube of model {ds.attrs['model']}"
    calib, held = calibration_and_heldout(cp, expected_heldout, source=source)
    y = cp.rows["em_rate"].values
    ctx = Context.from_config(ds, cp, cfg)
    monitor_set = monitor.meta["trait_set"]
    regressor = monitor.meta["regressor_name"]
    splits = lopo_splits(cp.rows, calib) + ([heldout_split(cp.rows, calib, held)] if held else [])
    frames = []
    for fs in tqdm(feature_names(monitor_set, list(mcfg.baselines)), desc="feature sets"):
        parts = []
        for split in splits:
            if fs == monitor_set and split.protocol == "heldout":
                _, x = trait_columns(cp, monitor_set)
                pred = monitor.predict(x[split.test], cp.rows.step.values[split.test])["pred_em"]
            else:
                x = compute(fs, ctx, split.train, monitor_set, cp.trait_sets)
                pred = fit_predict(x, y, split, regressor, mcfg.seed)
            parts.append(_frame(cp, split.test, feature_set=fs, protocol=split.protocol,
                                fold=split.fold, pred_em=pred))
        frame = pd.concat(parts, ignore_index=True)
        lopo = frame[(frame.protocol == "lopo") & ~frame.em_missing]
        sigma = (monitor.meta["sigma"] if fs == monitor_set
                 else float(np.std(lopo.pred_em - lopo.em_rate)))
        frame["alarm_prob"] = alarm_probability(frame.pred_em.values, mcfg.threshold, sigma)
        frame["flag"] = frame.pred_em > mcfg.threshold
        frames.append(frame)
    pred = pd.concat(frames, ignore_index=True)[PRED_COLUMNS]
    metrics = metrics_table(pred, ["model", "feature_set", "protocol", "dataset"],
                            bootstrap=mcfg.bootstrap, seed=mcfg.seed)
    alarms = first_alarm(pred, mcfg.alarm_threshold)
    return pred, metrics, alarms


def stress(ds, monitors: dict[str, Monitor], cfg):
    """Score stress datasets (own monitor) and whole cubes of other models (transfer)."""
    import pandas as pd

    mcfg = cfg.monitor
    cp = checkpoints(ds)
    model = str(ds.attrs["model"])
    frames = []
    for name, mon in monitors.items():
        if name == model:
            idx = np.flatnonzero(cp.rows.role.eq("stress").values)
            condition = "stress_dataset"
        else:
            idx = np.arange(len(cp.rows))
            condition = "transfer"
        if not len(idx):
            continue
        missing = sorted(set(mon.traits) - set(cp.traits))
        if missing:
            raise DataError(f"cube of model {model} lacks traits {missing} of monitor {name}")
        cols = [cp.traits.index(t) for t in mon.traits]
        out = mon.predict(cp.drift[idx][:, cols], cp.rows.step.values[idx])
        frames.append(_frame(cp, idx, monitor=name, condition=condition, **out))
    if not frames:
        empty = pd.DataFrame(columns=["model", "monitor", "condition", "dataset", "seed", "step",
                                      "role", "label", "em_rate", "em_missing", "dangerous",
                                      "pred_em", "alarm_prob", "flag"])
        return empty, pd.DataFrame(columns=["model", "monitor", "condition", "dataset", "n"])
    pred = pd.concat(frames, ignore_index=True)
    metrics = metrics_table(pred, ["model", "monitor", "condition", "dataset"],
                            bootstrap=mcfg.bootstrap, seed=mcfg.seed)
    return pred, metrics
