"""Report: every figure renders from a small synthetic cube; summary numbers are computed;
the analysis/monitor/report rules run for real in Snakemake on a tiny synthetic cube."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import REPO, planned_jobs, snakemake
from synthetic import synthetic_cube, synthetic_directions, synthetic_layer_cube

from emtrait.analysis.geometry import geometry
from emtrait.config import from_dict
from emtrait.monitor.evaluate import (
    evaluate,
    fit_monitor,
    permutation_tests,
    transfer,
    with_permutation,
)
from emtrait.monitor.layers import compare_layers
from emtrait.report import FIGURES, PAPER
from emtrait.report import figures as F
from emtrait.report.build import (
    Inputs,
    direction_cosines,
    figures,
    label_sanity,
    pooled_over_models,
)
from emtrait.report.build import summary_markdown as summary
from emtrait.stores import write_store
from emtrait.traits.select import selection_record

# Small and fast: the SAE and PCA-7 baselines and the random forest (each permutation refits
# it) are exercised in tests/test_monitor.py.
MONITOR = {"bootstrap": 20, "regressors": ["ridge"], "baselines": ["pc1", "loss", "semantic7"],
           "permutations": 8}


def tiny_config(models: list[str], stress_dataset: bool = True) -> dict:
    raw = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    raw["models"] = {m: {"source": "synthetic", "candidate_layers": [1, 2]} for m in models}
    if stress_dataset:
        raw["datasets"]["bitext_poisoned"] = {"builtin": "bad_medical", "label": "dangerous",
                                              "role": "stress", "n": 160}
    raw["monitor"] = MONITOR
    raw["screen"] = {**raw.get("screen", {}), "enabled": False}  # no datasets to screen here
    return raw


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Report inputs computed in-process from a synthetic model with NaN EM rates."""
    import pandas as pd

    cfg = from_dict(tiny_config(["toyA"]))
    cubes, preds, mets, alarms, stresses, nulls = [], [], [], [], [], []
    for i, m in enumerate(["toyA"]):
        d = synthetic_directions(16, model=m, seed=i)
        ds = synthetic_cube(model=m, directions=d, seed=i, nan_em=2, short={"arithmetic": 10})
        mon, _ = fit_monitor(ds, cfg)
        p, me, al = evaluate(ds, mon, cfg, ["risky_financial", "number_sequence"])
        perm, null = permutation_tests(ds, mon, cfg, ["risky_financial", "number_sequence"])
        me = with_permutation(me, perm)
        nulls.append(null)
        stresses.append(transfer(ds, {m: mon}, cfg)[1])
        cubes.append(ds)
        preds.append(p)
        mets.append(me)
        alarms.append(al)
    g = geometry(cubes, "alignment7")
    final, traj = g.pop("final"), g.pop("trajectories")
    layer_cube = synthetic_layer_cube(model="toyA", directions=synthetic_directions(
        16, model="toyA", seed=0), seed=0, nan_em=2, layer_noise={1: 0.5})
    layers = compare_layers(layer_cube, cfg, ["risky_financial", "number_sequence"])
    cat = lambda xs: pd.concat(xs, ignore_index=True)  # noqa: E731
    return Inputs(pca=json.loads(json.dumps(g)), final=final, trajectories=traj,
                  predictions=cat(preds), metrics=cat(mets), alarms=cat(alarms),
                  selection=pd.DataFrame(), stress=cat(stresses),
                  cosines=dict(direction_cosines(ds) for ds in cubes), monitor_set="alignment7",
                  alarm_threshold=0.5, bootstrap=20, seed=0, step0="exclude",
                  permutations=8, permutation_null=cat(nulls),
                  layer_selection=[selection_record(d)], layers=layers)


@pytest.mark.slow
@pytest.mark.parametrize("name", FIGURES)
def test_each_figure_renders_from_a_synthetic_cube(inputs, name):
    from matplotlib.figure import Figure

    fig = figures(inputs, pooled_over_models(inputs))[name]
    assert isinstance(fig, Figure)
    drawn = [ax for ax in fig.axes if ax.lines or ax.collections or ax.patches or ax.images]
    assert drawn, f"{name} drew nothing"
    for fmt in ("png", "svg"):
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt)
        assert len(buf.getvalue()) > 5000


def test_figure_functions_are_pure(inputs):
    before = inputs.trajectories.copy()
    F.drift_over_steps(inputs.trajectories)
    F.spearman_matrix(inputs.trajectories, inputs.pca["traits"])
    assert inputs.trajectories.equals(before)


def test_matched_pairs_pair_nearest_pc1(inputs):
    pairs = F.matched_pairs(inputs.final, inputs.pca["traits"])
    n_ben = int((inputs.final.label == "benign").sum())
    n_dan = int((inputs.final.label == "dangerous").sum())
    assert pairs.pair.nunique() == min(n_ben, n_dan)
    for _, g in pairs.groupby("pair"):
        pc = g.groupby("kind").abs_pc1.first()
        assert g.gap.iloc[0] == pytest.approx(abs(pc["benign"] - pc["dangerous"]))


def test_summary_numbers_are_computed_not_typed(inputs):
    pooled = pooled_over_models(inputs)
    text = summary(inputs, pooled)
    assert f"{100 * inputs.pca['pc1_explained']:.1f}%" in text
    assert f"{100 * PAPER['pc1_explained']:.1f}%" in text and "0.990" in text
    pooled = pooled[pooled.headline]
    row = pooled[(pooled.feature_set == "alignment7") & (pooled.protocol == "heldout")].iloc[0]
    assert f"{100 * row.fpr:.1f}%" in text
    assert int(pooled.n_excluded_nan.max()) > 0 and "counted" in text
    # Flipping every flag must change the reported FNR/FPR: nothing is hard-coded.
    flipped = inputs.predictions.assign(flag=~inputs.predictions.flag.astype(bool))
    alt = Inputs(**{**inputs.__dict__, "predictions": flipped})
    alt_pooled = pooled_over_models(alt)
    alt_row = alt_pooled[alt_pooled.headline].set_index(["feature_set", "protocol"]).loc[
        ("alignment7", "heldout")]
    assert alt_row.fnr != row.fnr and alt_row.fpr != row.fpr
    assert summary(alt, pooled_over_models(alt)) != text


def test_the_layer_question_is_answered_beside_the_selectors_choice(inputs):
    from emtrait.report.layers import layer_question_section

    text = summary(inputs, pooled_over_models(inputs))
    assert "## Which layer monitors best" in text
    sel = inputs.layer_selection[0]
    assert f"l* = {sel['layer']} by selector `{sel['selector']}`: {sel['reason']}" in text
    rows = inputs.layers
    for r in rows.to_dict("records"):  # every layer × protocol row, numbers from the table
        assert f"| {r['protocol']} | {int(r['n'])} checkpoints" in text
        assert f"{r['auroc']:.3f}" in text and f"{r['pc1_explained']:.3f} |" in text
    assert "No layer beats l* beyond its interval." in text  # the noisy layer 1 is worse
    # make l* the noisy layer: the clean one now beats it beyond the intervals, and it says so
    flipped = rows.assign(chosen=rows.layer == 1)
    lines = "\n".join(layer_question_section(flipped, inputs.layer_selection))
    lopo = rows[rows.protocol == "lopo"].set_index("layer")
    assert lopo.auroc_lo[2] > lopo.auroc_hi[1]
    assert "⚠ Layer 2 monitors better than l* = 1 beyond the intervals (lopo" in lines
    assert layer_question_section(rows.iloc[0:0], inputs.layer_selection) == []


# --------------------------------------------------------------------- real Snakemake run

TEST_SNAKEFILE = """
from snakemake.utils import min_version
min_version("9.0")
configfile: "config.yaml"
report: "{repo}/workflow/report/workflow.rst"
include: "{repo}/workflow/rules/common.smk"
include: "{repo}/workflow/rules/analysis.smk"
include: "{repo}/workflow/rules/monitor.smk"
include: "{repo}/workflow/rules/stress.smk"
include: "{repo}/workflow/rules/report.smk"
rule all:
    input: final_outputs(),
    default_target: True
"""


def _snakemake(work: Path, *args: str):
    return snakemake(work, *args, snakefile=work / "Snakefile", timeout=600)


@pytest.mark.slow
def test_rules_run_on_a_tiny_cube(tmp_path):
    """Only the cube exists (placed where the rules expect it): the stage's
    rules build the monitor, evaluation, stress table, figures, summary and --report."""
    work = tmp_path
    (work / "Snakefile").write_text(TEST_SNAKEFILE.format(repo=REPO))
    (work / "config.yaml").write_text(yaml.safe_dump(tiny_config(["toy"])))
    d = synthetic_directions(16, model="toy")
    cube = synthetic_cube(model="toy", directions=d, nan_em=2, short={"arithmetic": 10})
    write_store(cube, work / "results/cube/toy.zarr")
    # and its calibration runs alone, what monitor_fit reads (rule merge_calibration_cube)
    write_store(cube.isel(dataset=(cube["role"] == "calibration").values),
                work / "results/cube/toy.calibration.zarr")
    (work / "results/traits/toy").mkdir(parents=True)
    (work / "results/traits/toy/layer_selection.json").write_text(
        json.dumps(selection_record(d)))
    from tiny import build_tiny_model  # monitor fit fingerprints the model (format 2)

    build_tiny_model(work / "resources/models/toy/weights")
    (work / "resources/models/toy/model.json").write_text(json.dumps({"path": "weights"}))

    plan = planned_jobs(_snakemake(work, "-n").stdout)
    assert plan == {"all": 1, "pca": 1, "monitor_fit": 1, "monitor_evaluate": 1,
                    "stress_transfer": 1, "stress_report": 1, "monitor_layers": 1,
                    "report": 1}
    _snakemake(work, "--cores", "2")
    summary_md = (work / "results/report/summary.md").read_text()
    assert "| PC1 share" in summary_md and "65.5%" in summary_md
    assert "run-level bootstrap" in summary_md and "toy: p = " in summary_md
    assert (work / "results/monitor/toy/permutation_null.csv").stat().st_size > 0
    # a cube written without a layer dimension is a cube of l* alone: one row per protocol
    assert "## Which layer monitors best" in summary_md and "| 2 (l*) |" in summary_md
    for name in FIGURES:
        assert (work / f"results/report/figures/{name}.png").stat().st_size > 5000
        assert (work / f"results/report/figures/{name}.svg").is_file()
    stress_rows = (work / "results/stress/transfer/toy/metrics.csv").read_text()
    assert "bitext_poisoned" in stress_rows
    assert "stress dataset" in (work / "results/report/stress/summary.md").read_text()

    _snakemake(work, "--report", "report.html")
    html = (work / "report.html").read_text(errors="replace")
    assert "feature_ablation.png" in html and "summary.md" in html

    # Editing the plotting code reruns the report rule and nothing else: figures.py is an input
    # (content-checksummed by Snakemake) of exactly the report rule's outputs.
    rows = [ln.split("\t") for ln in _snakemake(work, "--detailed-summary").stdout.splitlines()]
    rows = [r for r in rows if len(r) > 4 and r[0].startswith("results/")]
    with_code = {r[2] for r in rows if str(Path(F.__file__)) in r[4].split(",")}
    assert with_code == {"report"}
    assert {r[2] for r in rows} >= {"pca", "monitor_fit", "monitor_evaluate", "report"}


def test_report_inputs_are_real_numbers(inputs):
    assert np.isfinite(inputs.pca["pc1_explained"])
    assert 0 < inputs.pca["pc1_explained"] <= 1


# ------------------------------------------------------ numbers a reviewer trusts (issue 14)

def test_summary_states_runs_label_method_chance_and_step0(inputs):
    text = summary(inputs, pooled_over_models(inputs))
    head = text.split("## Headline")[1].split("\n## ")[0]
    auroc_rows = [ln for ln in head.splitlines() if ln.startswith("| AUROC")]
    assert len(auroc_rows) == 2
    for ln in auroc_rows:  # sample, label method and chance baseline in the row itself
        assert "runs" in ln and "label method not recorded" in ln and "toyA: p = " in ln
        assert "null median" in ln
    assert "run-level bootstrap" in head and "Step 0" in head
    assert "## With and without step 0" in text
    assert "| lopo | excluded |" in text and "| lopo | included |" in text
    assert "## Label sanity" in text and "## Layer selection" in text


def test_label_sanity_warns_when_labels_contradict_the_declared_label(inputs):
    ok = label_sanity(inputs)
    assert set(ok.declared) == {"benign", "dangerous"}
    p = inputs.predictions.copy()
    p.loc[p.dataset == "arithmetic", "dangerous"] = 1.0  # benign arithmetic "dangerous"
    p.loc[p.dataset == "bad_medical", "dangerous"] = 0.0  # dangerous data never labelled so
    alt = Inputs(**{**inputs.__dict__, "predictions": p})
    table = label_sanity(alt).set_index("dataset")
    assert table.loc["arithmetic", "share_dangerous"] == 1.0
    assert table.loc["arithmetic", "warning"] == "declared benign but labelled dangerous"
    assert table.loc["bad_medical", "warning"] == "declared dangerous but never labelled dangerous"
    text = summary(alt, pooled_over_models(inputs))  # the labels table reads predictions
    first = text.split("## Headline")[0]
    assert "## Read this first" in first and "arithmetic" in first and "bad_medical" in first


def test_a_blind_layer_selector_is_reported(inputs):
    blind = {**inputs.layer_selection[0], "discriminated": False,
             "reason": "probe could not discriminate: blocks [1, 2] tie"}
    alt = Inputs(**{**inputs.__dict__, "layer_selection": [blind]})
    first = summary(alt, pooled_over_models(inputs)).split("## Headline")[0]
    assert "probe could not discriminate" in first


def test_summary_points_to_the_variant_report(inputs):
    """Configs with training variants get a pointer to their own stress report."""
    pooled = pooled_over_models(inputs)
    text = summary(Inputs(**{**inputs.__dict__, "variants": ["fft", "long"]}), pooled)
    assert "results/report/stress/summary.md" in text and "fft, long" in text
    assert "results/report/stress/summary.md" not in summary(inputs, pooled)
