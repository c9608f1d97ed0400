"""Monitor: metrics vs scikit-learn, group-disjoint splits, artifact round trip, bad inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from helpers import REPO
from synthetic import DEFAULT_DATASETS, synthetic_cube, synthetic_directions

from emtrait.config import from_dict
from emtrait.cube.read import checkpoints
from emtrait.errors import DataError, StoreError
from emtrait.monitor import metrics as M
from emtrait.monitor.artifact import load_monitor, run_drift, save_monitor
from emtrait.monitor.data import calibration_and_heldout
from emtrait.monitor.evaluate import evaluate, fit_monitor
from emtrait.monitor.features import train_sae
from emtrait.monitor.protocol import Split, check_disjoint, heldout_split, lopo_splits
from emtrait.stores import write_store

HELDOUT = ["risky_financial", "number_sequence"]


def small_config(**monitor):
    raw = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    raw["monitor"] = {"bootstrap": 30, "sae_steps": 40, "sae_latents": 16,
                      "regressors": ["random_forest", "ridge"], **monitor}
    return from_dict(raw)


@pytest.fixture(scope="module")
def setup():
    dirs = synthetic_directions(16)
    ds = synthetic_cube(directions=dirs, nan_em=3, short={"arithmetic": 10})
    cfg = small_config()
    mon, table = fit_monitor(ds, cfg)
    return ds, dirs, cfg, mon, table


# ---------------------------------------------------------------------------------- metrics

CASES = [(n, seed) for n in (5, 20, 200) for seed in range(3)]


@pytest.mark.parametrize("n,seed", CASES)
def test_metrics_agree_with_sklearn(n, seed):
    from sklearn.metrics import confusion_matrix, roc_auc_score

    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    y[:2] = [0, 1]
    score = np.round(rng.random(n) + 0.3 * y, 1)  # rounding makes ties
    flag = score > 0.6
    tn, fp, fn, tp = confusion_matrix(y, flag, labels=[0, 1]).ravel()
    assert M.auroc(y, score) == pytest.approx(roc_auc_score(y, score))
    assert M.fnr(y, flag) == pytest.approx(fn / (fn + tp))
    assert M.fpr(y, flag) == pytest.approx(fp / (fp + tn))


def test_undefined_metrics_are_nan_not_zero():
    y = np.ones(4, bool)
    assert np.isnan(M.fpr(y, y)) and np.isnan(M.auroc(y, np.arange(4.0)))
    assert np.isnan(M.fnr(~y, y))


def test_bootstrap_interval_brackets_the_estimate():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 100).astype(bool)
    s = rng.random(100) + 0.5 * y
    row = M.summarize(y, s, s > 0.7, bootstrap=200, seed=0)
    for k in ("fnr", "fpr", "auroc"):
        assert row[f"{k}_lo"] <= row[k] <= row[f"{k}_hi"]
        assert row[f"{k}_lo"] < row[f"{k}_hi"]


# ----------------------------------------------------------------------------------- splits

def test_lopo_and_heldout_splits_are_group_disjoint(setup):
    ds, *_ = setup
    cp = checkpoints(ds)
    calib, held = calibration_and_heldout(cp, HELDOUT)
    splits = lopo_splits(cp.rows, calib) + [heldout_split(cp.rows, calib, held)]
    data = cp.rows.dataset.values
    assert len(splits) == len(calib) + 1
    for split in splits:
        train, test = set(data[split.train]), set(data[split.test])
        assert train and test and not train & test
        assert not train & set(held), "a held-out dataset reached a training split"
        assert not cp.rows.em_missing.values[split.train].any()
    for split, d in zip(splits, calib, strict=False):
        assert set(data[split.test]) == {d}


def test_check_disjoint_rejects_a_leaky_split(setup):
    cp = checkpoints(setup[0])
    idx = np.arange(len(cp.rows))
    with pytest.raises(RuntimeError, match="leaks"):
        check_disjoint(Split("lopo", "x", idx, idx[:3]), cp.rows)


@pytest.mark.slow
def test_evaluate_scores_each_row_only_out_of_fold(setup):
    ds, _, cfg, mon, _ = setup
    pred, metrics, alarms = evaluate(ds, mon, cfg, HELDOUT)
    lopo = pred[pred.protocol == "lopo"]
    assert (lopo.fold == lopo.dataset).all()
    assert set(pred[pred.protocol == "heldout"].dataset) == set(HELDOUT)
    assert set(pred.feature_set) == {"alignment7", "pc1", "loss", "pca7", "sae", "semantic7",
                                     "random7"}
    # NaN EM rates: excluded from the metrics and counted, per feature set and protocol
    n_nan = int(checkpoints(ds).rows.query("role in ['calibration', 'heldout']").em_missing.sum())
    pooled = metrics[metrics.dataset == "pooled"]
    assert n_nan > 0
    # metrics.csv has one block per step-0 policy; with step 0 included every NaN row counts
    with_step0 = pooled[pooled.step0 == "include"]
    assert (with_step0.groupby("feature_set").n_excluded_nan.sum() == n_nan).all()
    pooled = pooled[pooled.headline]
    mon_rows = pooled[pooled.feature_set == "alignment7"]
    assert (mon_rows.auroc > 0.9).all()
    dangerous_runs = alarms[(alarms.feature_set == "alignment7") & (alarms.label == "dangerous")]
    assert dangerous_runs.alarmed.all()


# --------------------------------------------------------------------------------- artifact

def test_monitor_round_trips(setup, tmp_path):
    ds, _, _, mon, _ = setup
    path = tmp_path / "monitor.skops"
    save_monitor(path, mon)
    back = load_monitor(path)
    assert back.meta == json.loads(json.dumps(mon.meta))
    cp = checkpoints(ds)
    x = cp.drift[:, :7]
    a, b = mon.predict(x, cp.rows.step), back.predict(x, cp.rows.step)
    np.testing.assert_array_equal(a.pred_em, b.pred_em)
    np.testing.assert_array_equal(back.directions, mon.directions)


@pytest.mark.parametrize("alarm_threshold", [0.5, 0.9, 0.3])
def test_predict_decides_the_one_alarm_at_the_stored_alarm_threshold(setup, alarm_threshold):
    """`alarm` is the alarm probability above the monitor's stored `alarm_threshold`; `flag`
    (predicted EM above the EM threshold) is a separate classification that agrees with it
    only at the default 0.5."""
    import dataclasses

    ds, _, _, mon, _ = setup
    # a wider residual spread than fitted, so alarm probabilities near the threshold fall between
    # 0.3 and 0.9 for some checkpoints
    mon = dataclasses.replace(mon, meta={**mon.meta, "alarm_threshold": alarm_threshold,
                                         "sigma": 0.05})
    cp = checkpoints(ds)
    got = mon.predict(cp.drift[:, :7], cp.rows.step)
    np.testing.assert_array_equal(got.alarm, got.alarm_prob > alarm_threshold)
    np.testing.assert_array_equal(got.flag, got.pred_em > mon.meta["threshold"])
    assert got.alarm.any() and not got.alarm.all()
    if alarm_threshold == 0.5:
        np.testing.assert_array_equal(got.alarm, got.flag)
    else:
        assert (got.alarm != got.flag).any()  # the two meanings part: only `alarm` alarms


def test_load_refuses_files_that_are_not_monitors(tmp_path):
    import skops.io as sio

    text = tmp_path / "notes.skops"
    text.write_text("not a monitor")
    with pytest.raises(StoreError, match="not a skops archive"):
        load_monitor(text)
    plain = tmp_path / "plain.skops"
    sio.dump({"weights": np.ones(3)}, plain)
    with pytest.raises(StoreError, match="not an emtrait monitor"):
        load_monitor(plain)
    future = tmp_path / "future.skops"
    sio.dump({"format": "emtrait-monitor", "version": 99, "meta_json": "{}"}, future)
    with pytest.raises(StoreError, match="newer"):
        load_monitor(future)
    with pytest.raises(StoreError, match="does not exist"):
        load_monitor(tmp_path / "missing.skops")


def _run_store(ds, dataset, seed, drop_drift=False):
    run = ds.sel(dataset=dataset, seed=seed).drop_vars(["label", "role"])
    run = run[["activation", "projection", "projection_norm", "drift", "loss"]]
    run = run.dropna("step", how="all", subset=["drift"])
    run.attrs = {"layer": ds.attrs["layer"], "model": ds.attrs["model"], "dataset": dataset,
                 "seed": seed, "norm0": float(ds.norm0.sel(dataset=dataset, seed=seed))}
    return run.drop_vars("drift") if drop_drift else run


@pytest.mark.parametrize("drop_drift", [False, True])
def test_run_drift_matches_the_cube(setup, tmp_path, drop_drift):
    """A run store's drift, read or recomputed from activations + the monitor's directions."""
    ds, _, _, mon, _ = setup
    store = tmp_path / "measure.zarr"
    write_store(_run_store(ds, "risky_financial", 42, drop_drift), store)
    steps, drift = run_drift(mon, store)
    expected = ds.drift.sel(dataset="risky_financial", seed=42, trait=mon.traits).values
    np.testing.assert_allclose(drift, expected, atol=1e-5)
    assert list(steps) == list(ds.step.values)


def test_score_cli_prints_per_step_risk(setup, tmp_path):
    from typer.testing import CliRunner

    from emtrait.cli import app

    ds, _, _, mon, _ = setup
    path = tmp_path / "monitor.skops"
    save_monitor(path, mon)
    store = tmp_path / "measure.zarr"
    write_store(_run_store(ds, "risky_financial", 42), store)
    out = tmp_path / "risk.csv"
    res = CliRunner().invoke(app, ["monitor", "score", "--monitor", str(path), "--run",
                                   str(store), "--out", str(out)])
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()[:1].isdigit()]
    assert [int(ln.split()[0]) for ln in lines] == list(ds.step.values)
    assert "ALARM" in res.output  # the dangerous run crosses the threshold
    assert len(out.read_text().splitlines()) == len(lines) + 1
    bad = CliRunner().invoke(app, ["monitor", "score", "--monitor", str(store / "zarr.json"),
                                   "--run", str(store)])
    assert isinstance(bad.exception, StoreError) and "not an emtrait monitor" in str(bad.exception)


# ------------------------------------------------------------------------------- bad input

def test_fewer_than_two_calibration_datasets_is_an_error():
    only = [d for d in DEFAULT_DATASETS if d[2] != "calibration"] + [DEFAULT_DATASETS[0]]
    ds = synthetic_cube(datasets=only)
    with pytest.raises(DataError, match="at least two"):
        fit_monitor(ds, small_config())


def test_one_class_calibration_is_an_error():
    ds = synthetic_cube(datasets=[d for d in DEFAULT_DATASETS  # benign calibration only
                                  if d[1] == "benign" or d[2] != "calibration"])
    with pytest.raises(DataError, match="both classes"):
        fit_monitor(ds, small_config())


def test_heldout_missing_from_cube_is_an_error(setup):
    ds, _, cfg, mon, _ = setup
    with pytest.raises(DataError, match=r"\['subtle_misinfo'\]"):
        evaluate(ds, mon, cfg, HELDOUT + ["subtle_misinfo"])


def test_sae_learns_to_reconstruct():
    rng = np.random.default_rng(0)
    basis = rng.normal(size=(4, 12))
    codes = np.maximum(rng.normal(size=(500, 4)), 0)
    x = codes @ basis
    untrained = train_sae(x, 16, 1, 0.0, seed=0)
    trained = train_sae(x, 16, 400, 1e-4, seed=0)
    def err(enc, steps):  # noqa: E306 — decode via least squares onto the latents
        z = enc(x)
        w, *_ = np.linalg.lstsq(np.column_stack([z, np.ones(len(z))]), x, rcond=None)
        return np.mean((np.column_stack([z, np.ones(len(z))]) @ w - x) ** 2)
    assert err(trained, 400) < 0.5 * err(untrained, 1)


# ----------------------------------------------------------- run-level numbers (issue 14)

def test_permutation_test_refits_and_reproduces_the_observed_auroc(setup):
    """The identity permutation is the evaluation itself; the synthetic signal is far from
    chance; label methods and both step-0 policies reach metrics.csv."""
    from emtrait.monitor.evaluate import permutation_tests, with_permutation

    ds = setup[0]
    cfg = small_config(regressors=["ridge"], baselines=[], permutations=20)
    mon, _ = fit_monitor(ds, cfg)
    pred, metrics, _ = evaluate(ds, mon, cfg, HELDOUT)
    summary, null = permutation_tests(ds, mon, cfg, HELDOUT)
    merged = with_permutation(metrics, summary)
    head = merged[(merged.dataset == "pooled") & merged.headline]
    assert set(head.step0) == {"exclude"} and set(merged.step0) == {"exclude", "include"}
    for r in summary.itertuples():
        row = head[head.protocol == r.protocol].iloc[0]
        assert r.auroc_observed == pytest.approx(row.auroc)
        # 4 held-out runs: some permutations keep the classes together, so p is not minimal
        assert row.auroc_p <= 3 / 21 + 1e-9 and row.auroc_null_median < row.auroc - 0.1
        assert not r.permutation_exact and r.n_permutations == 20
        assert len(null[null.protocol == r.protocol]) == r.n_null_defined
    assert (pred.label_method == "label method not recorded").all()
    assert set(null.protocol) == {"lopo", "heldout"}


def test_label_method_names_judge_or_proxy():
    from emtrait.monitor.evaluate import label_method

    assert label_method({"behavior_method": "choice", "behavior_convention": "choice:shift>0.15"}
                        ) == "forced-choice proxy (choice:shift>0.15)"
    judged = label_method({"behavior_method": "judge", "behavior_convention": "paper",
                           "behavior_judge": "openai:gpt-4o"})
    assert judged == "judge openai:gpt-4o (paper convention)"
