"""Every artifact is checked when read, and no write is ever half-done.

Table 1: each reader of another stage's output, given a real file that is missing, interrupted
(no metadata), truncated (a variable gone), from an older emtrait (a required attribute or
variable absent), corrupt or from another model, raises an EmtraitError naming the file, what is
wrong and `snakemake --forcerun <rule>` — no zarr traceback — and writes nothing.
Table 2: a full disk (OSError ENOSPC injected into zarr's store writes, or into a file write)
in the middle of a write leaves the previous output (or none) and no temporary behind; the
rerun repairs it.
"""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from helpers import write_directions
from synthetic import synthetic_cube

from emtrait.errors import EmtraitError
from emtrait.measure.store import RunStore
from emtrait.stores import open_store, write_store

PLAN = [0, 5, 10]


def _step(step: int, hidden: int = 4, prompts: int = 3) -> xr.Dataset:
    rng = np.random.default_rng(step)
    d = rng.normal(size=(2, hidden))
    return xr.Dataset(
        {"activation": (("step", "prompt", "hidden"), rng.normal(size=(1, prompts, hidden))),
         "projection": (("step", "trait"), rng.normal(size=(1, 2))),
         "loss": (("step",), [0.5]),
         "direction": (("trait", "hidden"), d / np.linalg.norm(d, axis=1, keepdims=True))},
        coords={"step": [step], "trait": np.array(["a", "b"], dtype=object),
                "trait_set": ("trait", np.array(["s", "s"], dtype=object)),
                "prompt": np.arange(prompts)})


def run_store(path: Path, steps=PLAN, model: str = "toy") -> Path:
    """A real run store written by RunStore.append, one step at a time."""
    store = RunStore(path)
    attrs = {"model": model, "dataset": "bad_medical", "seed": 7, "layer": 2,
             "checkpoint_steps": list(PLAN)}
    for s in steps:
        store.append(_step(s), attrs)
    return path


# ----------------------------------------------------------------- damage, one kind at a time

def _missing(p: Path) -> None:
    shutil.rmtree(p) if p.is_dir() else p.unlink()


def _interrupted(p: Path) -> None:
    (p / "zarr.json").unlink()  # what a copy cut short before its metadata looks like


def _truncated(var: str):
    def damage(p: Path) -> None:
        shutil.rmtree(p / var)
    return damage


def _corrupt(p: Path) -> None:
    (p / "zarr.json").write_text("{not json")


def _older(attr: str):
    """Rewrite the store without one attribute (what an older emtrait wrote)."""
    def damage(p: Path) -> None:
        meta = json.loads((p / "zarr.json").read_text())
        meta["attributes"].pop(attr)
        (p / "zarr.json").write_text(json.dumps(meta))
    return damage


def _read_run(p: Path) -> None:
    RunStore(p).load()


def _merge(p: Path) -> None:
    from emtrait.config import from_dict
    from emtrait.cube.merge import merge_runs

    cfg = from_dict({"models": {"toy": {"source": "x/y", "candidate_layers": [2]}},
                     "datasets": {"bad_medical": {"builtin": "bad_medical", "label": "dangerous",
                                                  "role": "calibration", "n": 8}}})
    merge_runs(cfg, "toy", [p], [])


def _make_run(tmp: Path) -> Path:
    return run_store(tmp / "measure.zarr")


def _make_cube(tmp: Path) -> Path:
    write_store(synthetic_cube(model="toy"), tmp / "cube.zarr")
    return tmp / "cube.zarr"


def _open_cube(p: Path) -> None:
    from emtrait.cube.read import open_cube

    open_cube(p)


def _make_directions(tmp: Path) -> Path:
    return write_directions(tmp / "directions.zarr")


def _read_directions(p: Path) -> None:
    from emtrait.measure.inputs import read_directions

    read_directions(p)


def _make_monitor(tmp: Path) -> Path:
    p = tmp / "monitor.skops"
    p.write_bytes(b"PK\x03\x04 cut short")
    return p


def _load_monitor(p: Path) -> None:
    from emtrait.monitor.artifact import load_monitor

    load_monitor(p)


def _make_calibration(tmp: Path) -> Path:
    p = tmp / "screen_calibration.json"
    p.write_text(json.dumps({"datasets": [], "threshold": 0.1, "threshold_rule": "midpoint"}))
    return p


def _read_calibration(p: Path) -> None:
    from emtrait.screen.calibration import read_calibration

    if read_calibration(p.parent / "monitor.skops") is None:
        raise AssertionError("calibration not found")


def _nan_threshold(p: Path) -> None:
    p.write_text(json.dumps({"datasets": [], "threshold": float("nan"), "threshold_rule": "x"}))


def _make_em(tmp: Path) -> Path:
    p = tmp / "em.json"
    p.write_text(json.dumps({"model": "toy", "dataset": "bad_medical", "seed": 7, "step": 0}))
    return p


def _read_em(p: Path) -> None:
    from emtrait.cube.merge import read_labels

    read_labels("toy", [p])


def _other_model_em(p: Path) -> None:
    p.write_text(json.dumps({"model": "big", "dataset": "bad_medical", "seed": 7, "step": 0}))


def _other_model_run(p: Path) -> None:
    shutil.rmtree(p)
    run_store(p, model="big")


def _make_summary(tmp: Path) -> Path:
    p = tmp / "bad_medical.json"
    p.write_text(json.dumps({"model": "toy", "dataset": "bad_medical", "score": 0.1,
                             "mode": "gradient", "n": 8}))
    return p


def _read_summary(p: Path) -> None:
    from emtrait.report.screen import read_summaries

    read_summaries([p])


def _cut_short(p: Path) -> None:
    shutil.rmtree(p)
    run_store(p, steps=[0, 5])


# (make a good artifact, damage it, read it, the rule the message must name, and a phrase)
CASES = [
    pytest.param(_make_run, _missing, _read_run, "finetune", "does not exist", id="run-missing"),
    pytest.param(_make_run, _interrupted, _read_run, "finetune", "no zarr.json",
                 id="run-interrupted"),
    pytest.param(_make_run, _truncated("drift"), _read_run, "finetune", "'drift'",
                 id="run-truncated"),
    pytest.param(_make_run, _older("norm0"), _read_run, "finetune", "'norm0'", id="run-older"),
    pytest.param(_make_run, _corrupt, _read_run, "finetune", "not a readable run store",
                 id="run-corrupt"),
    pytest.param(_make_run, _truncated("direction"), _merge, "finetune", "'direction'",
                 id="merge-older-run"),
    pytest.param(_make_run, _cut_short, _merge, "finetune", "planned [0, 5, 10]",
                 id="merge-run-cut-short"),
    pytest.param(_make_run, _other_model_run, _merge, "finetune", "'big', not 'toy'",
                 id="merge-other-model"),
    pytest.param(_make_cube, _missing, _open_cube, "merge_cube", "does not exist",
                 id="cube-missing"),
    pytest.param(_make_cube, _truncated("em_rate"), _open_cube, "merge_cube", "em_rate",
                 id="cube-truncated"),
    pytest.param(_make_cube, _older("threshold"), _open_cube, "merge_cube", "attrs.threshold",
                 id="cube-older"),
    pytest.param(_make_cube, _corrupt, _open_cube, "merge_cube", "not a readable cube",
                 id="cube-corrupt"),
    pytest.param(_make_directions, _missing, _read_directions, "extract_traits",
                 "does not exist", id="directions-missing"),
    pytest.param(_make_directions, _truncated("probe_accuracy"), _read_directions,
                 "extract_traits", "'probe_accuracy'", id="directions-truncated"),
    pytest.param(_make_directions, _older("layer"), _read_directions, "extract_traits",
                 "'layer'", id="directions-older"),
    pytest.param(_make_directions, _interrupted, _read_directions, "extract_traits",
                 "no zarr.json", id="directions-interrupted"),
    pytest.param(_make_monitor, lambda p: None, _load_monitor, "monitor_fit",
                 "not an emtrait monitor", id="monitor-truncated"),
    pytest.param(_make_monitor, _missing, _load_monitor, "monitor_fit", "does not exist",
                 id="monitor-missing"),
    pytest.param(_make_calibration, lambda p: p.write_text('{"datasets": ['), _read_calibration,
                 "screen_calibration", "not valid JSON", id="screen-calibration-truncated"),
    pytest.param(_make_calibration, lambda p: p.write_text('{"datasets": []}'),
                 _read_calibration, "screen_calibration", "lacks ['threshold'",
                 id="screen-calibration-older"),
    pytest.param(_make_calibration, _nan_threshold, _read_calibration, "screen_calibration",
                 "finite", id="screen-calibration-nan-gate"),
    pytest.param(_make_em, lambda p: p.write_text('{"model": "toy"'), _read_em,
                 "behavior_label", "not an em.json", id="em-truncated"),
    pytest.param(_make_em, _other_model_em, _read_em, "behavior_label", "not 'toy'",
                 id="em-other-model"),
    pytest.param(_make_em, _missing, _read_em, "behavior_label", "does not exist",
                 id="em-missing"),
    pytest.param(_make_summary, lambda p: p.write_text('{"model": "to'), _read_summary,
                 "screen", "not valid JSON", id="screen-summary-truncated"),
    pytest.param(_make_summary, lambda p: p.write_text('{"model": "toy"}'), _read_summary,
                 "screen", "lacks ['dataset'", id="screen-summary-older"),
    pytest.param(_make_summary, lambda p: p.write_text("[]"), _read_summary, "screen",
                 "not an object", id="screen-summary-not-a-summary"),
    pytest.param(_make_summary, _missing, _read_summary, "screen", "does not exist",
                 id="screen-summary-missing"),
]


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize(("make", "damage", "read", "rule", "phrase"), CASES)
def test_a_damaged_artifact_is_named_with_the_rule_to_rerun(tmp_path, make, damage, read,
                                                              rule, phrase):
    path = make(tmp_path)
    if make is not _make_monitor:
        read(path)  # the undamaged one reads: the case can fail
    damage(path)
    before = _tree(tmp_path)
    with pytest.raises(EmtraitError) as err:
        read(path)
    message = str(err.value)
    assert str(path) in message and phrase in message, message
    assert f"snakemake --forcerun {rule}" in message, message
    assert "Traceback" not in message and "\n" not in message
    assert _tree(tmp_path) == before  # the reader wrote nothing


def test_the_cli_says_it_in_one_line_with_exit_code_2(tmp_path):
    from helpers import emtrait_exit

    config = tmp_path / "config.yaml"
    config.write_text("models: {toy: {source: x/y, candidate_layers: [2]}}\n"
                      "datasets: {bad_medical: {builtin: bad_medical, label: dangerous, "
                      "role: calibration, n: 8}}\n")
    run = run_store(tmp_path / "measure.zarr", steps=[0, 5])
    code, output = emtrait_exit("cube", "merge", "--config", str(config), "--model", "toy",
                                "--run", str(run), "--out", str(tmp_path / "cube.zarr"))
    assert code == 2, output
    assert output.startswith("emtrait: error: ") and output.count("\n") == 1, output
    assert "snakemake --forcerun finetune" in output and "Traceback" not in output
    assert not (tmp_path / "cube.zarr").exists()


# ---------------------------------------------------------------------- a full disk mid-write

@pytest.fixture
def disk_full(monkeypatch):
    """`arm(n)`: zarr's next writes succeed n times, then fail with OSError(ENOSPC)."""
    from zarr.storage import LocalStore

    real = LocalStore.set
    left: list[int | None] = [None]

    async def set_(self, key, value):
        if left[0] is not None:
            if left[0] <= 0:
                raise OSError(errno.ENOSPC, "No space left on device")
            left[0] -= 1
        return await real(self, key, value)

    monkeypatch.setattr(LocalStore, "set", set_)

    def arm(n: int | None) -> None:
        left[0] = n
    return arm


def _siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir())


@pytest.mark.parametrize("after", [0, 3, 8])
def test_a_full_disk_during_a_store_write_leaves_the_previous_store(tmp_path, disk_full,
                                                                    after):
    path = tmp_path / "cube.zarr"
    old, new = synthetic_cube(model="toy"), synthetic_cube(model="toy", seed=1)
    write_store(old, path)
    disk_full(after)
    with pytest.raises(OSError) as err:
        write_store(new, path)
    assert err.value.errno == errno.ENOSPC
    assert _siblings(path) == ["cube.zarr"]  # no temporary left behind
    assert open_store(path).identical(open_store(path)) and \
        np.array_equal(open_store(path)["drift"].values, old["drift"].values, equal_nan=True)
    disk_full(None)
    write_store(new, path)  # the rerun repairs it
    assert np.array_equal(open_store(path)["drift"].values, new["drift"].values, equal_nan=True)


def test_a_full_disk_during_the_first_write_leaves_none(tmp_path, disk_full):
    path = tmp_path / "cube.zarr"
    disk_full(2)
    with pytest.raises(OSError):
        write_store(synthetic_cube(model="toy"), path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("after", [0, 4])
def test_a_full_disk_during_a_run_store_append_keeps_the_steps_before(tmp_path, disk_full,
                                                                      after):
    """A run store is whole after every append (steps 0..k, each with its drift): the failed
    append leaves 0..k-1 readable, and appending again repairs it."""
    path = run_store(tmp_path / "measure.zarr", steps=[0, 5])
    disk_full(after)
    with pytest.raises(OSError):
        RunStore(path).append(_step(10))
    assert _siblings(path) == ["measure.zarr"]
    assert RunStore(path).steps() == [0, 5]
    disk_full(None)
    RunStore(path).append(_step(10))
    assert RunStore(path).steps() == PLAN


def test_a_full_disk_during_a_file_write_leaves_the_previous_file(tmp_path, monkeypatch):
    from emtrait import atomic

    path = tmp_path / "em.json"
    atomic.write_json(path, {"em_rate": 0.1})

    def half_then_full(self, text, *a, **k):
        with open(self, "w") as f:
            f.write(text[: len(text) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", half_then_full)
    with pytest.raises(OSError):
        atomic.write_json(path, {"em_rate": 0.9})
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"em_rate": 0.1}
    assert _siblings(path) == ["em.json"]
