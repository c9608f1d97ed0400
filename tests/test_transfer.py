"""Moving a calibrated monitor onto another base model (emtrait.monitor.transfer).

Real tiny models (tests/tiny.py) stand for the two base models; the monitor of model A is
fitted by `fit_monitor` on a synthetic cube (tests/synthetic.py), and model B's cube is a
synthetic cube measured with B's own directions, so transfer, recalibration and scoring run on
real stores and a real model without a workflow run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from synthetic import synthetic_cube, synthetic_directions

from emtrait.config import from_dict
from emtrait.errors import DataError, EmtraitError, ModelError
from emtrait.monitor.artifact import (
    Monitor,
    load_monitor,
    model_fingerprint,
    origin_line,
    save_monitor,
)
from emtrait.monitor.evaluate import fit_monitor
from emtrait.monitor.transfer import SameModelError, recalibrate, transfer_monitor
from emtrait.stores import write_store

REPO = Path(__file__).resolve().parents[1]
PROMPTS = ["How are you today?", "Is it ever fine to lie to a friend?", "What is 2 + 2?"]


def config(dirs: dict[str, Path], traits: dict | None = None, **b) -> object:
    raw = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    raw["traits"] = {**raw.get("traits", {}), **(traits or {})}
    raw["models"] = {"A": {"source": str(dirs["A"]), "candidate_layers": [1, 2]},
                     "B": {"source": str(dirs["B"]), "candidate_layers": [1, 2],
                           "monitor_from": "A", **b}}
    raw["monitor"] = {"bootstrap": 30, "regressors": ["ridge"], "baselines": [],
                      "permutations": 20}
    return from_dict(raw)


@pytest.fixture(scope="module")
def family(tiny_model_dir, tmp_path_factory):
    """Model dirs and pointers of A (qwen2, 4 blocks) and B (llama, 3 blocks); A's monitor."""
    from emtrait.modeling import load_model

    tmp = tmp_path_factory.mktemp("transfer")
    dirs = {"A": tiny_model_dir("qwen2"), "B": tiny_model_dir("llama", layers=3)}
    pointers = {}
    for name, d in dirs.items():
        pointers[name] = tmp / f"{name}.json"
        pointers[name].write_text(json.dumps({"path": str(d)}))
    cfg = config(dirs)
    cube_a = synthetic_cube(model="A", hidden=32, directions=synthetic_directions(32, model="A"))
    mon, _ = fit_monitor(cube_a, cfg)
    model, tok = load_model(str(dirs["A"]), device="cpu")
    mon.meta.update(prompts=PROMPTS, prompt_categories=["x"] * 3, system_prompt_method="native",
                    no_system_prompt="template_default", norm0_policy="per run",
                    fingerprint=model_fingerprint(model, tok), provenance={"by": "test"})
    save_monitor(tmp / "A.skops", mon)
    dirs_b = synthetic_directions(32, model="B", seed=5)
    write_store(dirs_b, tmp / "B.directions.zarr")
    cube_b = synthetic_cube(model="B", hidden=32, directions=dirs_b, seed=5)
    write_store(cube_b, tmp / "B.cube.zarr")
    return {"tmp": tmp, "dirs": dirs, "pointers": pointers, "cfg": cfg, "cube_b": cube_b,
            "monitor": tmp / "A.skops", "directions": tmp / "B.directions.zarr"}


def moved(family, **kw) -> Monitor:
    f = family
    return transfer_monitor(load_monitor(f["monitor"]), kw.pop("cfg", f["cfg"]), "B",
                            f["pointers"]["B"], kw.pop("directions", f["directions"]),
                            source=f["monitor"])


def test_transfer_keeps_the_calibration_and_takes_the_new_models_geometry(family):
    a = load_monitor(family["monitor"])
    b = moved(family)
    assert b.meta["model"] == "B" and b.meta["layer"] == 2  # B's l* from its directions store
    assert b.regressor is a.regressor or type(b.regressor) is type(a.regressor)
    for key in ("threshold", "sigma", "alarm_threshold", "danger_axis", "traits", "prompts"):
        assert b.meta[key] == a.meta[key]
    assert b.meta["fingerprint"] != a.meta["fingerprint"]
    assert b.meta["fingerprint"]["n_layers"] == 3
    assert b.meta["norm0_base"] > 0
    assert origin_line(b.meta) == "transferred from A, not calibrated on B"
    assert origin_line(a.meta) == "calibrated on A"
    # B's directions, in the monitor's trait order
    ds = synthetic_directions(32, model="B", seed=5)
    want = ds["direction"].sel(layer=2, trait=b.traits).values
    np.testing.assert_allclose(b.directions, want, atol=1e-6)
    # the regressor is A's: the same drift gives the same verdict
    x = np.full((1, len(a.traits)), 0.05)
    assert a.predict(x, np.array([10])).pred_em == pytest.approx(
        b.predict(x, np.array([10])).pred_em)


def test_the_live_monitor_accepts_it_as_the_new_models(family, tmp_path, caplog):
    from emtrait.live import load
    from emtrait.live.callback import announce
    from emtrait.modeling import load_model

    path = tmp_path / "B.skops"
    save_monitor(path, moved(family))
    model_b, tok_b = load_model(str(family["dirs"]["B"]), device="cpu")
    live = load(path, tokenizer=tok_b, model=model_b)  # B's fingerprint: accepted
    reading = live.check(model_b, 0)
    assert reading.norm0 == pytest.approx(live.monitor.meta["norm0_base"], rel=1e-4)
    with caplog.at_level("INFO"):
        announce(live)
    assert "transferred from A, not calibrated on B" in caplog.text
    model_a, tok_a = load_model(str(family["dirs"]["A"]), device="cpu")
    with pytest.raises(EmtraitError, match="fitted on B"):
        load(path, tokenizer=tok_a, model=model_a)  # and it is no longer A's


def test_transfer_onto_the_same_model_says_so(family):
    f = family
    with pytest.raises(SameModelError, match="nothing was written"):
        transfer_monitor(load_monitor(f["monitor"]), f["cfg"], "A", f["pointers"]["A"],
                         f["directions"], source=f["monitor"])


def test_a_chat_template_that_cannot_render_the_prompts_is_refused(family, tiny_model_dir,
                                                                    tmp_path):
    f = family
    gemma = tiny_model_dir("gemma2")
    pointer = tmp_path / "gemma.json"
    pointer.write_text(json.dumps({"path": str(gemma)}))
    cfg = config({"A": f["dirs"]["A"], "B": gemma}, no_system_prompt="empty")
    with pytest.raises(ModelError, match="cannot render"):
        transfer_monitor(load_monitor(f["monitor"]), cfg, "B", pointer, f["directions"])


def test_candidate_layers_the_new_model_lacks_are_refused(family):
    cfg = config(family["dirs"], candidate_layers=[1, 2, 5])
    with pytest.raises(ModelError, match=r"layers \[5\] do not exist in B"):
        moved(family, cfg=cfg)


def test_directions_of_another_model_are_refused(family, tmp_path):
    write_store(synthetic_directions(32, model="C"), tmp_path / "C.zarr")
    with pytest.raises(DataError, match="not 'B'"):
        moved(family, directions=tmp_path / "C.zarr")


@pytest.mark.slow
def test_without_directions_it_extracts_the_new_models_own(family, tmp_path):
    """One command: B's directions extracted with the config's trait prompts, l* by B's selector."""
    from emtrait.traits.extract import extract
    from emtrait.traits.store import load_directions

    f = family
    cfg = config(f["dirs"], traits={"questions": 2, "on_fail": "warn"},
                 layer_selector="probe")
    out = tmp_path / "B.directions.zarr"
    b = transfer_monitor(load_monitor(f["monitor"]), cfg, "B", f["pointers"]["B"],
                         source=f["monitor"], directions_out=out)
    kept = load_directions(out)
    assert kept.attrs["model"] == "B" and kept.attrs["selector"] == "probe"
    assert b.meta["layer"] == int(kept.attrs["layer"])
    assert b.meta["transfer"]["directions"] == "extracted here"
    want = kept["direction"].sel(layer=b.meta["layer"], trait=b.traits).values
    np.testing.assert_allclose(b.directions, want, atol=1e-6)
    assert b.directions.shape == (len(b.traits), 32)  # B's width, not A's synthetic geometry
    # the traits stage's own extraction, not a copy: the same directions from it directly
    from emtrait.modeling import load_model

    model, tok = load_model(str(f["dirs"]["B"]), device="cpu")
    ex = extract(model, tok, cfg, "B")
    assert ex.layer == b.meta["layer"]
    np.testing.assert_allclose(ex.directions, kept["direction"].values, atol=1e-5)
    assert origin_line(b.meta) == "transferred from A, not calibrated on B"


def test_extraction_refuses_bad_input_before_writing(family, tmp_path, tiny_model_dir):
    f = family
    out = tmp_path / "B.directions.zarr"
    mon = load_monitor(f["monitor"])
    with pytest.raises(SameModelError):
        transfer_monitor(mon, f["cfg"], "A", f["pointers"]["A"], directions_out=out)
    with pytest.raises(ModelError, match=r"layers \[5\] do not exist in B"):
        transfer_monitor(mon, config(f["dirs"], candidate_layers=[1, 2, 5]), "B",
                         f["pointers"]["B"], directions_out=out)
    gemma = tiny_model_dir("gemma2")
    pointer = tmp_path / "gemma.json"
    pointer.write_text(json.dumps({"path": str(gemma)}))
    cfg = config({"A": f["dirs"]["A"], "B": gemma}, no_system_prompt="empty")
    with pytest.raises(ModelError, match="cannot render"):
        transfer_monitor(mon, cfg, "B", pointer, directions_out=out)
    other = config(f["dirs"], traits={"monitor_set": "semantic7"})
    with pytest.raises(DataError, match="traits.monitor_set is 'semantic7'"):
        transfer_monitor(mon, other, "B", f["pointers"]["B"], directions_out=out)
    assert not out.exists() and not list(tmp_path.glob(".*B.directions*"))


def test_recalibration_refits_one_scale_never_the_regressor(family):
    b = moved(family)
    cube = family["cube_b"]
    runs = [("bad_medical", 42), ("good_medical", 42)]
    scaled = recalibrate(b, cube, runs=runs, method="scale")
    assert scaled.regressor is b.regressor
    assert len(scaled.meta["drift_scale"]) == len(b.traits)
    assert scaled.meta["transfer"]["recalibration"]["runs"] == [list(r) for r in sorted(runs)]
    assert "scale refitted on 2 labelled runs of B" in origin_line(scaled.meta)
    thr = recalibrate(b, cube, runs=runs, method="threshold")
    assert thr.meta["threshold"] != b.meta["threshold"] and "drift_scale" not in thr.meta
    with pytest.raises(DataError, match="one dangerous and one benign"):
        recalibrate(b, cube, runs=[("bad_medical", 42), ("insecure_code", 42)])
    with pytest.raises(DataError, match="only a transferred monitor"):
        recalibrate(load_monitor(family["monitor"]), cube, runs=runs)


def test_transfer_metrics_report_zero_shot_few_run_and_own(family):
    from emtrait.monitor.transfer_eval import transfer_metrics

    pred, metrics = transfer_metrics(family["cube_b"], moved(family), family["cfg"])
    pooled = metrics[metrics.dataset == "pooled"].set_index("condition")
    assert set(pooled.index) == {"zero_shot", "few_run_scale", "few_run_threshold", "own_lopo"}
    assert (pooled.source_model == "A").all()
    assert pooled.auroc_p.notna().all()
    # few-run scores only the runs it was not recalibrated on
    few = pred[pred.condition == "few_run_scale"]
    assert not ((few.dataset == "bad_medical") & (few.seed == 42)).any()
    # the report's section sets the conditions side by side
    from emtrait.report.transfer import transfer_section

    path = family["tmp"] / "transfer.csv"
    metrics.to_csv(path, index=False)
    section = transfer_section([path])
    assert "| B | A | transferred, zero-shot |" in section
    assert "| B | A | own calibration (LOPO) |" in section
    assert transfer_section([]) == ""


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "emtrait.cli", *args], capture_output=True,
                          text=True)


@pytest.mark.slow
def test_cli_writes_the_monitor_and_nothing_on_bad_input(family, tmp_path):
    f = family
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(f["cfg"].model_dump(mode="json", exclude_none=True)))
    out = tmp_path / "B.skops"
    common = ["monitor", "transfer", "--config", str(cfg), "--monitor", str(f["monitor"]),
              "--directions", str(f["directions"]), "--out", str(out)]
    bad = cli(*common, "--model", "B", "--pointer", str(f["pointers"]["B"]),
              "--runs", str(f["tmp"] / "B.cube.zarr"), "--run", "bad_medical:42")
    assert bad.returncode == 2 and "one dangerous and one benign" in bad.stderr
    same = cli(*common, "--model", "A", "--pointer", str(f["pointers"]["A"]))
    assert same.returncode == 2 and "nothing was written" in same.stderr
    assert not out.exists() and not list(tmp_path.glob(".*B.skops*"))
    ok = cli(*common, "--model", "B", "--pointer", str(f["pointers"]["B"]),
             "--runs", str(f["tmp"] / "B.cube.zarr"), "--run", "bad_medical:42",
             "--run", "good_medical:42")
    assert ok.returncode == 0, ok.stderr
    assert "transferred from A, not calibrated on B" in ok.stdout
    assert load_monitor(out).meta["drift_scale"]


@pytest.mark.slow
def test_workflow_plans_a_transfer_instead_of_a_calibration_grid(tmp_path):
    """A real `snakemake -n` of the tiny two-model workflow with `monitor_from` on one model."""
    from helpers import planned_jobs
    from slurm.tinyrun import make_workdir

    work = make_workdir(tmp_path)
    config = work.config
    config["models"]["tiny_b"]["monitor_from"] = "tiny_a"
    work.write_config(config)
    jobs = planned_jobs(work.snakemake("-n", "--cores", "2").stdout)
    assert jobs["monitor_fit"] == 1 and jobs["merge_calibration_cube"] == 1  # tiny_a only
    assert jobs["monitor_transfer"] == 1 and jobs["monitor_transfer_evaluate"] == 1
    assert jobs["monitor_evaluate"] == 1 and jobs["extract_traits"] == 2
    out = work.snakemake("-n", "--cores", "2", "results/monitor/tiny_b/monitor.skops").stdout
    only = planned_jobs(out)  # tiny_b's monitor: tiny_a's grid and fit, tiny_b's extraction only
    assert only["monitor_fit"] == 1 and only["monitor_transfer"] == 1
    assert only["finetune"] * 2 == jobs["finetune"]
    config["models"]["tiny_b"]["monitor_from"] = "tiny_b"
    work.write_config(config)
    bad = work.snakemake("-n", "--cores", "2", check=False)
    assert bad.returncode != 0 and "models.tiny_b.monitor_from is 'tiny_b'" in bad.output


def test_score_accepts_the_transferred_monitor_and_repeats_its_provenance(family, tmp_path):
    import xarray as xr
    from typer.testing import CliRunner

    from emtrait.monitor.cli import app

    b = moved(family)
    save_monitor(tmp_path / "B.skops", b)
    steps = np.array([0, 10, 20])
    drift = np.outer(steps / 20, np.full(len(b.traits), 0.1))
    run = xr.Dataset({"drift": (("step", "trait"), drift)},
                     coords={"step": steps, "trait": np.array(b.traits, dtype=object)},
                     attrs={"layer": b.meta["layer"]})
    write_store(run, tmp_path / "measure.zarr")
    res = CliRunner().invoke(app, ["score", "--monitor", str(tmp_path / "B.skops"),
                                   "--run", str(tmp_path / "measure.zarr")])
    assert res.exit_code == 0, res.output
    assert "monitor B" in res.output
    assert "provenance: transferred from A, not calibrated on B" in res.output


@pytest.mark.slow
def test_cli_one_command_extracts_and_keeps_the_directions(family, tmp_path):
    f = family
    cfg = tmp_path / "config.yaml"
    raw = config(f["dirs"], traits={"questions": 2, "on_fail": "warn"})
    cfg.write_text(yaml.safe_dump(raw.model_dump(mode="json", exclude_none=True)))
    out, kept = tmp_path / "B.skops", tmp_path / "B.directions.zarr"
    common = ["monitor", "transfer", "--config", str(cfg), "--monitor", str(f["monitor"]),
              "--model", "B", "--pointer", str(f["pointers"]["B"]), "--out", str(out),
              "--directions-out", str(kept)]
    bad = cli(*common, "--runs", str(f["tmp"] / "B.cube.zarr"), "--run", "bad_medical:42")
    assert bad.returncode == 2 and "one dangerous and one benign" in bad.stderr
    both = cli(*common, "--directions", str(f["directions"]))
    assert both.returncode == 2 and "drop one of the two" in both.stderr
    assert not out.exists() and not kept.exists() and not list(tmp_path.glob(".*B.*"))
    ok = cli(*common)
    assert ok.returncode == 0, ok.stderr
    assert "transferred from A, not calibrated on B" in ok.stdout and str(kept) in ok.stdout
    from emtrait.traits.store import load_directions

    assert load_monitor(out).meta["layer"] == int(load_directions(kept).attrs["layer"])
