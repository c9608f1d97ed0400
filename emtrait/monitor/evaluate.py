"""Fit the monitor, validate it (LOPO + held-out, baselines, alarm) and score cubes with monitors.

The pure-ish core behind `emtrait monitor fit|evaluate` and `emtrait stress transfer`: cube
Dataset and config in, Monitor and DataFrames out. I/O stays in the CLI modules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from emtrait.cube.read import Checkpoints, checkpoints, trait_columns
from emtrait.drift import danger_axis
from emtrait.errors import DataError
from emtrait.monitor.artifact import NORM0_POLICY, Monitor
from emtrait.monitor.data import calibration_and_heldout
from emtrait.monitor.features import Context, compute, feature_names
from emtrait.monitor.metrics import STEP0_POLICIES, metrics_table
from emtrait.monitor.protocol import (
    first_alarm,
    fit_predict,
    heldout_split,
    lopo_splits,
    make_regressor,
    select_regressor,
    verdict,
)

PRED_COLUMNS = ["model", "feature_set", "protocol", "fold", "dataset", "seed", "step", "role",
                "label", "em_rate", "em_missing", "dangerous", "pred_em", "alarm_prob", "flag",
                "alarm", "label_method"]


def label_method(attrs) -> str:
    """How the cube's EM labels were made, in words fit for a table cell (from cube attrs)."""
    method = attrs.get("behavior_method")
    convention = attrs.get("behavior_convention", "?")
    if method == "choice":
        return f"forced-choice proxy ({convention})"
    if method == "judge":
        return f"judge {attrs.get('behavior_judge', '?')} ({convention} convention)"
    return "label method not recorded"


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
        # per trait, the RMS drift past step 0 the regressor saw (a transfer's drift scale)
        "drift_rms": _drift_rms(x[train, :len(traits)], cp.rows["step"].values[train]),
        # the axis `emtrait screen` scores data along (its risk); emtrait/screen/core.py
        "danger_axis": danger_axis(x[train, :len(traits)],
                                   cp.rows["dangerous"].values[train]).tolist(),
    }
    return Monitor(regressor=regressor, directions=dirs, meta=meta), table


def _drift_rms(x: np.ndarray, steps: np.ndarray) -> list[float]:
    """Per column, the root mean square of the rows past step 0 (step 0's drift is 0)."""
    moved = x[steps != 0]
    return np.sqrt(np.mean(np.square(moved), axis=0)).tolist() if len(moved) else []


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
                pred = monitor.predict(x[split.test], cp.rows.step.values[split.test]).pred_em
            else:
                x = compute(fs, ctx, split.train, monitor_set, cp.trait_sets)
                pred = fit_predict(x, y, split, regressor, mcfg.seed)
            parts.append(_frame(cp, split.test, feature_set=fs, protocol=split.protocol,
                                fold=split.fold, pred_em=pred))
        frame = pd.concat(parts, ignore_index=True)
        lopo = frame[(frame.protocol == "lopo") & ~frame.em_missing]
        sigma = (monitor.meta["sigma"] if fs == monitor_set
                 else float(np.std(lopo.pred_em - lopo.em_rate)))
        decided = verdict(frame.pred_em.values, threshold=mcfg.threshold, sigma=sigma,
                          alarm_threshold=mcfg.alarm_threshold)
        for k, v in decided.columns().items():
            frame[k] = v
        frames.append(frame)
    pred = pd.concat(frames, ignore_index=True).assign(
        label_method=label_method(ds.attrs))[PRED_COLUMNS]
    metrics = metrics_table(pred, ["model", "feature_set", "protocol", "dataset"],
                            bootstrap=mcfg.bootstrap, seed=mcfg.seed, step0=_step0_order(mcfg))
    metrics["headline"] = metrics.step0 == mcfg.step0
    alarms = first_alarm(pred)
    return pred, metrics, alarms


def transfer(ds, monitors: dict[str, Monitor], cfg):
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
        frames.append(_frame(cp, idx, monitor=name, condition=condition, **out.columns()))
    if not frames:
        empty = pd.DataFrame(columns=["model", "monitor", "condition", "dataset", "seed", "step",
                                      "role", "label", "em_rate", "em_missing", "dangerous",
                                      "pred_em", "alarm_prob", "flag", "alarm"])
        return empty, pd.DataFrame(columns=["model", "monitor", "condition", "dataset", "n"])
    pred = pd.concat(frames, ignore_index=True)
    pred["label_method"] = label_method(ds.attrs)
    metrics = metrics_table(pred, ["model", "monitor", "condition", "dataset"],
                            bootstrap=mcfg.bootstrap, seed=mcfg.seed, step0=mcfg.step0)
    return pred, metrics


def _step0_order(mcfg) -> list[str]:
    """Both step-0 policies, the configured (headline) one first."""
    return [mcfg.step0] + [p for p in STEP0_POLICIES if p != mcfg.step0]


@dataclass(frozen=True)
class _PermutedRefit:
    """One permutation's pooled AUROC: EM trajectories moved between runs, every fold refitted."""

    x: np.ndarray
    em: np.ndarray
    runs: np.ndarray
    steps: np.ndarray
    rows: Any
    scored: np.ndarray
    regressor: str
    seed: int
    threshold: float

    def auroc(self, split_list, perm) -> float:
        from emtrait.drift import is_dangerous
        from emtrait.monitor.metrics import auroc, permute_by_run

        y = permute_by_run(self.em, self.runs, self.steps, perm)
        known = np.isfinite(y)
        ys, preds = [], []
        for split in split_list(self.rows.assign(em_missing=~known)):
            test = split.test[known[split.test] & self.scored[split.test]]
            if not len(test) or not len(split.train):
                continue
            ys.append(is_dangerous(y[test], self.threshold))
            preds.append(fit_predict(self.x, y, type(split)(split.protocol, split.fold,
                                                            split.train, test),
                                     self.regressor, self.seed))
        if not ys:
            return float("nan")
        return auroc(np.concatenate(ys), np.concatenate(preds))


def permutation_tests(ds, monitor: Monitor, cfg, expected_heldout: list[str]):
    """Chance baseline of the headline AUROCs: run-label permutations, refit, rescore.

    The monitor's feature set and regressor (as chosen by `monitor fit`; not re-chosen per
    permutation). Labels move between runs as whole EM-rate trajectories (matched by step):
    LOPO permutes calibration runs among themselves and refits every fold; held-out permutes
    calibration runs (refit on them) and held-out runs among themselves. Scored rows follow
    monitor.step0. Returns (one row per protocol: observed, p, null median, …; the null
    values, one row per permutation).
    """
    import pandas as pd

    from emtrait.drift import is_dangerous
    from emtrait.monitor.metrics import (
        class_floor,
        permutation_test,
        run_classes,
        run_ids,
    )

    mcfg = cfg.monitor
    cp = checkpoints(ds)
    calib, held = calibration_and_heldout(cp, expected_heldout,
                                          source=f"cube of model {ds.attrs['model']}")
    monitor_set = monitor.meta["trait_set"]
    regressor = monitor.meta["regressor_name"]
    _, x = _monitor_x(cp, monitor_set, mcfg.include_step)
    rows = cp.rows
    runs = run_ids(rows)
    steps = rows.step.values
    em = rows.em_rate.values.astype(float)
    threshold = float(ds.attrs["threshold"])
    scored = (steps != 0) if mcfg.step0 == "exclude" else np.ones(len(rows), bool)
    role_of_run = {int(r): role for r, role in zip(runs, rows.role.values, strict=True)}
    group = {name: sorted(r for r, role in role_of_run.items() if role == name)
             for name in ("calibration", "heldout")}
    known = scored & np.isfinite(em)
    classes = {r: False for r in role_of_run} | run_classes(
        is_dangerous(em[known], threshold), runs[known])
    refit = _PermutedRefit(x=x, em=em, runs=runs, steps=steps, rows=rows, scored=scored,
                           regressor=regressor, seed=mcfg.seed, threshold=threshold)

    protocols = {"lopo": (lambda r: lopo_splits(r, calib), [group["calibration"]])}
    if held:
        protocols["heldout"] = (lambda r: [heldout_split(r, calib, held)],
                                [group["calibration"], group["heldout"]])
    summary, nulls = [], []
    for protocol, (split_list, groups) in protocols.items():
        res = permutation_test(lambda perm, f=split_list: refit.auroc(f, perm),
                               int(runs.max()) + 1, groups, mcfg.permutations, mcfg.seed)
        summary.append({"model": str(ds.attrs["model"]), "feature_set": monitor_set,
                        "protocol": protocol, "dataset": "pooled", "step0": mcfg.step0,
                        "auroc_observed": res.observed, "auroc_p": res.p_value,
                        "auroc_null_median": res.null_median,
                        "n_permutations": res.n_permutations, "permutation_exact": res.exact,
                        "p_resolution": res.resolution, "n_null_defined": len(res.null),
                        "p_floor": max(res.resolution, class_floor(groups, classes)),
                        "n_runs_permuted": int(sum(len(g) for g in groups))})
        nulls += [{"model": str(ds.attrs["model"]), "feature_set": monitor_set,
                   "protocol": protocol, "step0": mcfg.step0, "permutation": i, "auroc": v,
                   "observed": res.observed} for i, v in enumerate(res.null)]
    return pd.DataFrame(summary), pd.DataFrame(nulls, columns=[
        "model", "feature_set", "protocol", "step0", "permutation", "auroc", "observed"])


def with_permutation(metrics, perm_summary):
    """metrics.csv rows with the permutation columns joined onto the rows they test."""
    if perm_summary is None or not len(perm_summary):
        return metrics
    keys = ["model", "feature_set", "protocol", "dataset", "step0"]
    cols = keys + [c for c in perm_summary.columns if c not in keys and c != "auroc_observed"]
    return metrics.merge(perm_summary[cols], on=keys, how="left")
