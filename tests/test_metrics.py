"""Run-level intervals and run-label permutation tests: known answers on constructed data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from emtrait.monitor import metrics as M


def runs_data(n_runs: int, per_run: int, seed: int, signal: float = 0.5):
    """Runs whose checkpoints are perfect copies (label and score fixed within a run)."""
    rng = np.random.default_rng(seed)
    y_run = np.arange(n_runs) % 2 == 0
    s_run = rng.random(n_runs) + signal * y_run
    runs = np.repeat(np.arange(n_runs), per_run)
    return y_run[runs], s_run[runs], runs, y_run, s_run


def test_perfectly_correlated_checkpoints_give_the_run_count_interval():
    y, s, runs, y_run, s_run = runs_data(n_runs=12, per_run=20, seed=1)
    flag = s > 0.8
    # 20 copies of 12 runs resampled by run: exactly the interval of the 12 runs themselves
    cluster, note = M.cluster_bootstrap_ci(y, s, flag, runs, n=200, seed=0)
    by_run, _ = M.cluster_bootstrap_ci(y_run, s_run, s_run > 0.8, np.arange(12), n=200, seed=0)
    assert note == ""
    for k in M.METRICS:
        assert cluster[k] == pytest.approx(by_run[k])
    # treating the 300 checkpoints as independent shrinks it several-fold: the bug fixed here
    naive, _ = M.cluster_bootstrap_ci(y, s, flag, np.arange(len(y)), n=200, seed=0)
    width = lambda ci: ci[1] - ci[0]  # noqa: E731
    assert width(cluster["auroc"]) > 2.5 * width(naive["auroc"])
    assert width(cluster["fpr"]) > 2.5 * width(naive["fpr"])


def test_a_class_with_one_run_has_no_interval_and_says_why():
    y, s, runs, *_ = runs_data(n_runs=3, per_run=4, seed=0)  # runs 0, 2 dangerous; 1 benign
    ci, note = M.cluster_bootstrap_ci(y, s, s > 0.5, runs, n=50, seed=0)
    assert all(np.isnan(v).all() for v in ci.values())
    assert "1 run(s)" in note


def test_metrics_table_counts_runs_and_reports_both_step0_policies():
    y, s, runs, *_ = runs_data(n_runs=8, per_run=4, seed=3)
    pred = pd.DataFrame({"model": "m", "dataset": [f"d{r // 2}" for r in runs],
                         "seed": runs % 2, "step": np.tile([0, 4, 8, 12], 8),
                         "dangerous": y.astype(float), "pred_em": s, "flag": s > 0.8,
                         "group": "g", "label_method": "forced-choice proxy (x)"})
    table = M.metrics_table(pred, ["group", "dataset"], bootstrap=50, seed=0,
                            step0=["exclude", "include"])
    pooled = table[table.dataset == "pooled"].set_index("step0")
    assert pooled.loc["exclude", "n"] == 24 and pooled.loc["include", "n"] == 32
    assert (pooled.n_runs == 8).all()
    assert (table.label_method == "forced-choice proxy (x)").all()
    with pytest.raises(ValueError, match="step0"):
        M.metrics_table(pred, ["group", "dataset"], bootstrap=0, seed=0, step0="maybe")


def _auroc_stat(y_run: np.ndarray, score: np.ndarray, runs: np.ndarray):
    return lambda perm: M.auroc(y_run[perm][runs], score)


def test_permutation_p_is_uniform_without_signal():
    from scipy.stats import kstest

    ps = []
    for seed in range(100):
        rng = np.random.default_rng(seed)
        y_run = np.arange(10) % 2 == 0
        runs = np.repeat(np.arange(10), 3)
        score = rng.random(len(runs))  # unrelated to the labels
        res = M.permutation_test(_auroc_stat(y_run, score, runs), 10, [range(10)], 49, seed)
        assert not res.exact and res.resolution == pytest.approx(0.02)
        ps.append(res.p_value)
    # 100 p-values: a KS distance above 0.16 has probability < 1% under uniformity
    assert kstest(ps, "uniform").statistic < 0.16, sorted(ps)


def test_permutation_p_is_small_on_separable_runs_and_exact_when_enumerable():
    y_run = np.array([1, 1, 1, 0, 0, 0], bool)
    runs = np.repeat(np.arange(6), 4)
    score = y_run[runs] + 0.01 * np.arange(24)
    res = M.permutation_test(_auroc_stat(y_run, score, runs), 6, [range(6)], 1000, 0)
    # 6! = 720 ≤ 1000: every assignment is enumerated; only the 3!·3! = 36 keeping the
    # dangerous set in place reach AUROC 1
    assert res.exact and res.n_permutations == 720 and res.observed == 1.0
    assert res.p_value == pytest.approx(36 / 720)
    assert res.null_median < 0.75


def test_permutations_stay_within_their_groups():
    perms, exact = M.run_permutations(5, [[0, 1], [2, 3, 4]], 1000, 0)
    assert exact and len(perms) == 2 * 6
    for p in perms:
        assert set(p[:2]) == {0, 1} and set(p[2:]) == {2, 3, 4}
    perms, exact = M.run_permutations(12, [range(12)], 20, 0)
    assert not exact and len(perms) == 20


def test_permute_by_run_matches_steps_and_leaves_missing_steps_nan():
    runs = np.array([0, 0, 0, 1, 1])
    steps = np.array([0, 4, 8, 0, 4])
    values = np.array([0.0, 0.1, 0.2, 0.5, 0.6])
    out = M.permute_by_run(values, runs, steps, np.array([1, 0]))
    np.testing.assert_array_equal(out[:2], [0.5, 0.6])
    assert np.isnan(out[2])
    np.testing.assert_array_equal(out[3:], [0.0, 0.1])


# ------------------------------------------------------- layer selection that discriminates

def planted(layers: int = 4, where: int = 2, seed: int = 0):
    """Activations (layer, prompt, hidden) separable at every layer, most at `where`."""
    rng = np.random.default_rng(seed)
    labels = np.array([1, 0] * 30)
    question = np.repeat(np.arange(6), 10)
    acts = rng.normal(size=(layers, 60, 8))
    for j in range(layers):
        acts[j, :, 0] += (20.0 if j == where else 8.0) * labels
    return acts, labels, question


def test_tie_break_picks_the_planted_layer_when_probe_accuracy_saturates():
    from emtrait.traits import select

    acts, labels, question = planted()
    layers = [3, 6, 9, 12]
    probe = np.array([[select.probe_accuracy(acts[j], labels) for j in range(4)]])
    primary = select.cheap_scores("probe", probe, [(acts, labels, question)])
    assert (primary == 1.0).all()  # the blind selector: every layer ties at 1.00
    choice = select.choose_layer(
        layers, primary, lambda: select.cheap_scores("dprime", probe, [(acts, labels, question)]),
        selector="probe", tie_breaker="dprime", tolerance=0.01)
    assert choice.layer == 9 and not choice.discriminated and choice.tied == layers
    assert int(np.argmax(choice.secondary)) == 2
    assert "could not discriminate" in choice.reason and "dprime" in choice.reason
    # the argmax alone (the old rule) took the shallowest layer
    assert layers[int(np.nanargmax(primary))] == 3


def test_a_discriminating_selector_decides_alone_and_records_the_secondary():
    from emtrait.traits import select

    calls = []
    choice = select.choose_layer([1, 2, 3], np.array([0.5, 0.9, 0.7]),
                                 lambda: calls.append(1) or np.array([3.0, 1.0, 2.0]),
                                 selector="steering", tie_breaker="dprime", tolerance=0.01)
    assert choice.layer == 2 and choice.discriminated and calls == [1]
    lazy = select.choose_layer([1, 2], np.array([0.5, 0.9]), lambda: calls.append(2),
                               selector="dprime", tie_breaker="steering", tolerance=0.01,
                               eager=False)
    assert lazy.layer == 2 and calls == [1] and np.isnan(lazy.secondary).all()


@pytest.mark.parametrize("key, value, hint", [
    ("layer_selector", "prob", "Did you mean 'probe'"),
    ("tie_breaker", "dprim", "Did you mean 'dprime'"),
])
def test_unknown_selector_names_did_you_mean(key, value, hint):
    from emtrait.config import from_dict
    from emtrait.errors import ConfigError

    raw = {"models": {"m": {"source": "x", "candidate_layers": [1, 2]}},
           "datasets": {"d": {"builtin": "bad_medical", "label": "dangerous",
                              "role": "calibration"}}}
    if key == "layer_selector":
        raw["models"]["m"][key] = value
    else:
        raw["traits"] = {key: value}
    with pytest.raises(ConfigError, match=hint):
        from_dict(raw)


def test_class_floor_is_the_share_of_class_preserving_permutations():
    y_run = np.array([1, 1, 0, 0], bool)
    runs = np.repeat(np.arange(4), 3)
    score = y_run[runs].astype(float)
    res = M.permutation_test(_auroc_stat(y_run, score, runs), 4, [range(4)], 100, 0)
    floor = M.class_floor([range(4)], {r: bool(y_run[r]) for r in range(4)})
    assert floor == pytest.approx(2 * 2 / 24) and res.p_value == pytest.approx(floor)
