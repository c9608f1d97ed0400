"""MonitorCallback in a real transformers Trainer and a real TRL SFTTrainer on tiny models.

The monitors are real format-2 files fitted on the tiny model (tests/helpers.py). Readings
are checked where users see them: TensorBoard's own event file, the run store, the Trainer's
log history; alarms act on the real Trainer (stop, save); resume goes through the Trainer's
own checkpoint mechanism.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from helpers import fit_tiny_monitor, tiny_dataset_texts


@pytest.fixture(scope="module")
def monitors(tiny_model_dir, tmp_path_factory):
    """Paths of monitors on the tiny llama: 'plain' (never alarms at this scale) and 'after3'
    (alarms at the first reading after step 3)."""
    folder = tmp_path_factory.mktemp("monitors")
    model_dir = tiny_model_dir("llama")
    return {"plain": fit_tiny_monitor(model_dir, folder / "plain.skops", threshold=0.5),
            "after3": fit_tiny_monitor(model_dir, folder / "after3.skops", alarm_after_step=3)}


def make_trainer(model_dir: Path, out: Path, callbacks: list, *, max_steps: int = 6,
                 save_steps: int | None = None, report_to: str = "none", seed: int = 0):
    """A real Trainer finetuning the tiny model on short chats (full-sequence loss)."""
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    set_seed(seed)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    rows = []
    for chat in tiny_dataset_texts(16):  # plain text: some tests use a template-less tokenizer
        ids = tok(" ".join(m["content"] for m in chat))
        rows.append({**ids, "labels": list(ids["input_ids"])})
    args = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=2, max_steps=max_steps,
        learning_rate=1e-2, logging_steps=1, report_to=report_to, use_cpu=True, seed=seed,
        save_strategy="steps" if save_steps else "no", save_steps=save_steps or 500,
        disable_tqdm=True, dataloader_num_workers=0,
    )
    return Trainer(model=model, args=args, train_dataset=rows, processing_class=tok,
                   data_collator=DataCollatorForSeq2Seq(tok), callbacks=callbacks)


def store_of(out: Path):
    from emtrait.stores import open_store

    return open_store(out / "emtrait" / "measure.zarr")


# -- bad input: one clear error each, before training, no store ---------------------------------


@pytest.mark.parametrize("kwargs, match", [
    ({"on_alarm": "explode"}, "on_alarm='explode'"),
    ({"on_alarm": 3}, "on_alarm=3"),
    ({"every": 0}, "every=0"),
    ({"every": 2.5}, "every=2.5"),
])
def test_bad_options_are_refused_at_construction(kwargs, match):
    from emtrait.errors import ConfigError
    from emtrait.live.callback import MonitorCallback

    with pytest.raises(ConfigError, match=match):
        MonitorCallback("never-read.skops", **kwargs)


@pytest.mark.parametrize("content, match", [
    (None, "does not exist"),
    (b"not a zip archive", "not an emtrait monitor"),
])
def test_missing_or_corrupt_monitor_file_is_refused_at_construction(tmp_path, content, match):
    from emtrait.errors import StoreError
    from emtrait.live.callback import MonitorCallback

    path = tmp_path / "monitor.skops"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(StoreError, match=match):
        MonitorCallback(path)


@pytest.mark.parametrize("keep", ["all", "step0"])
def test_record_only_rows_keep_activations_by_the_policy(tmp_path, keep):
    """The record-only mode's rows (the workflow's finetune): with `keep_activations="step0"`
    only step 0's activations are stored; projections, drift and loss at every step."""
    import numpy as np

    from emtrait.live.callback import RunRecord
    from emtrait.measure.probe import Measurement
    from emtrait.measure.store import RunStore

    rng = np.random.default_rng(0)
    record = RunRecord(attrs={"model": "tiny"}, prompt_categories=["a", "b", "c"],
                       trait_sets=["alignment7", "alignment7"],
                       directions=np.eye(2, 4, dtype=np.float32), keep_activations=keep)
    store = RunStore(tmp_path / "measure.zarr")
    for step, loss in [(0, 2.0), (2, 1.5)]:
        act = rng.normal(size=(3, 4)).astype(np.float32)
        m = Measurement(activation=act, projection=(act.astype(np.float64) @ np.eye(2, 4).T
                                                    ).mean(axis=0))
        store.append(record.row(["honesty", "sycophancy"], step, m, loss), record.attrs)
    ds = store.load()
    assert [int(s) for s in ds["step"].values] == [0, 2]
    assert np.isfinite(ds["activation"].sel(step=0).values).all()
    assert np.isfinite(ds["activation"].sel(step=2).values).all() == (keep == "all")
    assert np.isfinite(ds["drift"].values).all() and list(ds["loss"].values) == [2.0, 1.5]
    assert ds.attrs["model"] == "tiny" and list(ds["trait_set"].values) == ["alignment7"] * 2


def _other_tiny_model(tiny_model_dir, kind: str) -> Path:
    if kind == "layers":
        return tiny_model_dir("llama", layers=3)
    return tiny_model_dir("qwen2")  # same width, other architecture and weights


@pytest.mark.slow
@pytest.mark.parametrize("case, error, match", [
    ("no_chat_template", "ModelError", "no chat template"),
    ("other_layer_count", "ModelMismatchError", "decoder block count"),
    ("other_architecture", "ModelMismatchError", "architecture"),
])
def test_refused_when_the_trainer_is_built_and_no_store_is_written(
        tiny_model_dir, monitors, tmp_path, case, error, match):
    import shutil

    from emtrait import errors
    from emtrait.live.callback import MonitorCallback
    from emtrait.monitor import artifact

    model_dir = tiny_model_dir("llama")
    if case == "no_chat_template":
        model_dir = Path(shutil.copytree(model_dir, tmp_path / "no-template"))
        (model_dir / "chat_template.jinja").unlink(missing_ok=True)
        cfg = model_dir / "tokenizer_config.json"
        import json

        data = json.loads(cfg.read_text())
        data.pop("chat_template", None)
        cfg.write_text(json.dumps(data))
    elif case == "other_layer_count":
        model_dir = _other_tiny_model(tiny_model_dir, "layers")
    else:
        model_dir = _other_tiny_model(tiny_model_dir, "arch")
    cls = getattr(errors, error, None) or getattr(artifact, error)
    out = tmp_path / "out"
    with pytest.raises(cls, match=match):
        make_trainer(model_dir, out, [MonitorCallback(monitors["plain"])])
    assert not (out / "emtrait").exists()


@pytest.mark.slow
def test_foreign_model_allowed_on_request(tiny_model_dir, monitors, tmp_path):
    from emtrait.live.callback import MonitorCallback

    cb = MonitorCallback(monitors["plain"], every=3, allow_foreign_model=True)
    make_trainer(tiny_model_dir("qwen2"), tmp_path, [cb], max_steps=3).train()
    assert [r.step for r in cb.readings] == [0, 3]


# -- readings where users see them --------------------------------------------------------------


def tensorboard_scalars(folder: Path) -> dict[str, dict[int, float]]:
    """tag -> {step: value} from the event files under `folder`, read with tensorboard itself."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out: dict[str, dict[int, float]] = {}
    for events in sorted(folder.rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, {}).update({e.step: e.value for e in acc.Scalars(tag)})
    return out


@pytest.mark.slow
def test_readings_reach_tensorboard_the_log_history_and_the_store(tiny_model_dir, monitors,
                                                                  tmp_path):
    import numpy as np

    from emtrait.live.callback import MonitorCallback
    from emtrait.monitor.artifact import load_monitor, run_drift

    cb = MonitorCallback(monitors["plain"], every=2)
    trainer = make_trainer(tiny_model_dir("llama"), tmp_path, [cb], max_steps=6, save_steps=3,
                           report_to="tensorboard")
    trainer.train()
    steps = [r.step for r in cb.readings]
    assert steps == [0, 2, 3, 4, 6]  # step 0, every 2 updates, and the save at 3 (6 is both)

    scalars = tensorboard_scalars(tmp_path)
    emtrait_tags = {t for t in scalars if "emtrait/" in t}
    wanted = {"emtrait/pred_em", "emtrait/alarm_prob", "emtrait/drift/honesty",
              "emtrait/drift/harmlessness"}
    assert {t.split("/", 1)[1] for t in emtrait_tags} >= wanted  # logged as train/emtrait/...
    for tag in wanted:
        got = scalars[f"train/{tag}"]
        assert sorted(got) == steps, tag
        for r in cb.readings:
            want = r.pred_em if tag.endswith("pred_em") else (
                r.alarm_prob if tag.endswith("alarm_prob") else r.drift[tag.rsplit("/", 1)[1]])
            assert got[r.step] == pytest.approx(want, rel=1e-6, abs=1e-7)
    assert "train/loss" in scalars and len(scalars["train/loss"]) == 6  # the Trainer's own logs

    logged = [h for h in trainer.state.log_history if "emtrait/pred_em" in h]
    assert [h["step"] for h in logged] == steps

    store = store_of(tmp_path)
    assert [int(s) for s in store["step"].values] == steps
    assert store.attrs["source"] == "emtrait.live.MonitorCallback"
    drift = store["drift"].sel(trait=["honesty", "harmlessness"]).values
    want = np.array([[r.drift["honesty"], r.drift["harmlessness"]] for r in cb.readings])
    np.testing.assert_allclose(drift, want, rtol=1e-9, atol=1e-12)
    assert np.isfinite(store["loss"].values).all()
    # `emtrait monitor score` reads the store like a workflow run store
    score_steps, score_drift = run_drift(load_monitor(monitors["plain"]), tmp_path / "emtrait"
                                         / "measure.zarr")
    assert list(score_steps) == steps
    np.testing.assert_allclose(score_drift, want, rtol=1e-9, atol=1e-12)


@pytest.mark.slow
def test_stop_ends_training_at_the_predicted_step(tiny_model_dir, monitors, tmp_path):
    from emtrait.live.callback import MonitorCallback

    cb = MonitorCallback(monitors["after3"], every=2, on_alarm="stop")
    trainer = make_trainer(tiny_model_dir("llama"), tmp_path, [cb], max_steps=10)
    trainer.train()
    # pred_em = 0.05 * step / 3 crosses the 0.05 threshold after step 3: the reading at 4
    assert trainer.state.global_step == 4
    assert cb.stopped_at == 4 and [r.alarm for r in cb.readings] == [False, False, True]
    reasons = [h["emtrait/stop_reason"] for h in trainer.state.log_history
               if "emtrait/stop_reason" in h]
    assert len(reasons) == 1 and "step 4" in reasons[0]
    store = store_of(tmp_path)
    assert [int(s) for s in store["step"].values] == [0, 2, 4]
    assert store.attrs["stopped_at_step"] == 4 and "stopped" in store.attrs["stop_reason"]


@pytest.mark.slow
def test_checkpoint_on_alarm_forces_a_save(tiny_model_dir, monitors, tmp_path):
    from emtrait.live.callback import MonitorCallback

    cb = MonitorCallback(monitors["after3"], every=2, on_alarm="checkpoint")
    make_trainer(tiny_model_dir("llama"), tmp_path, [cb], max_steps=6).train()  # no saves
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-4",
                                                                      "checkpoint-6"]
    assert (tmp_path / "checkpoint-4" / "emtrait_monitor.json").is_file()


@pytest.mark.slow
def test_callable_on_alarm_gets_the_reading_and_the_trainer_state(tiny_model_dir, monitors,
                                                                  tmp_path):
    from emtrait.live.callback import MonitorCallback

    seen = []
    cb = MonitorCallback(monitors["after3"], every=2, store=None,
                         on_alarm=lambda reading, state, control: seen.append(
                             (reading.step, state.global_step)))
    make_trainer(tiny_model_dir("llama"), tmp_path, [cb], max_steps=4).train()
    assert seen == [(4, 4)]
    assert not (tmp_path / "emtrait").exists()


@pytest.mark.slow
def test_final_weights_are_bit_identical_with_and_without_the_callback(tiny_model_dir, monitors,
                                                                        tmp_path):
    import torch

    from emtrait.live.callback import MonitorCallback

    model_dir = tiny_model_dir("llama")
    plain = make_trainer(model_dir, tmp_path / "plain", [], max_steps=5)
    plain.train()
    watched = make_trainer(model_dir, tmp_path / "watched",
                           [MonitorCallback(monitors["plain"], every=1)], max_steps=5)
    watched.train()
    a, b = plain.model.state_dict(), watched.model.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert watched.model.training == plain.model.training


class Interrupt(Exception):
    pass


@pytest.mark.slow
def test_resumed_trainer_continues_the_store_without_duplicate_or_missing_steps(
        tiny_model_dir, monitors, tmp_path):
    import numpy as np
    from transformers import TrainerCallback

    from emtrait.live.callback import MonitorCallback

    class KillAt(TrainerCallback):  # a crash after step 7, past checkpoint-4 and reading 6
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 7:
                raise Interrupt

    model_dir = tiny_model_dir("llama")
    whole = MonitorCallback(monitors["plain"], every=2)
    make_trainer(model_dir, tmp_path / "whole", [whole], max_steps=10, save_steps=4).train()

    out = tmp_path / "resumed"
    with pytest.raises(Interrupt):
        make_trainer(model_dir, out, [MonitorCallback(monitors["plain"], every=2), KillAt()],
                     max_steps=10, save_steps=4).train()
    assert [int(s) for s in store_of(out)["step"].values] == [0, 2, 4, 6]  # 6: after ckpt 4
    again = MonitorCallback(monitors["plain"], every=2)
    make_trainer(model_dir, out, [again], max_steps=10, save_steps=4).train(
        resume_from_checkpoint=True)
    assert [r.step for r in again.readings] == [6, 8, 10]
    resumed, reference = store_of(out), store_of(tmp_path / "whole")
    assert [int(s) for s in resumed["step"].values] == [0, 2, 4, 6, 8, 10]
    assert resumed.attrs["norm0"] == reference.attrs["norm0"]
    np.testing.assert_allclose(resumed["drift"].values, reference["drift"].values,
                               rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_resume_from_a_checkpoint_saved_without_the_callback_is_refused(
        tiny_model_dir, monitors, tmp_path):
    from emtrait.errors import StoreError
    from emtrait.live.callback import MonitorCallback

    model_dir = tiny_model_dir("llama")
    make_trainer(model_dir, tmp_path, [], max_steps=2, save_steps=2).train()
    trainer = make_trainer(model_dir, tmp_path, [MonitorCallback(monitors["plain"])],
                           max_steps=4, save_steps=2)
    with pytest.raises(StoreError, match="not saved with MonitorCallback"):
        trainer.train(resume_from_checkpoint=True)
    assert not (tmp_path / "emtrait").exists()


@pytest.mark.slow
def test_a_second_run_into_the_same_output_dir_is_refused(tiny_model_dir, monitors, tmp_path):
    from emtrait.errors import StoreError
    from emtrait.live.callback import MonitorCallback

    model_dir = tiny_model_dir("llama")
    make_trainer(model_dir, tmp_path, [MonitorCallback(monitors["plain"])], max_steps=1).train()
    before = [int(s) for s in store_of(tmp_path)["step"].values]
    with pytest.raises(StoreError, match="already holds a run"):
        make_trainer(model_dir, tmp_path, [MonitorCallback(monitors["plain"])],
                     max_steps=1).train()
    assert [int(s) for s in store_of(tmp_path)["step"].values] == before


# -- TRL and plain loops --------------------------------------------------------------------


@pytest.mark.slow
def test_trl_sft_trainer_with_lora_unchanged(tiny_model_dir, monitors, tmp_path):
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from emtrait.live.callback import MonitorCallback

    model_dir = tiny_model_dir("llama")
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    data = Dataset.from_list([{"messages": chat} for chat in tiny_dataset_texts(16)])
    cb = MonitorCallback(monitors["plain"], every=2)
    trainer = SFTTrainer(
        model=model, processing_class=tok, train_dataset=data, callbacks=[cb],
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
        args=SFTConfig(output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=4,
                       learning_rate=5e-2, logging_steps=1, report_to="none", use_cpu=True,
                       save_strategy="no", max_length=64, disable_tqdm=True),
    )
    trainer.train()
    assert [r.step for r in cb.readings] == [0, 2, 4]
    assert cb.readings[0].drift == {"honesty": 0.0, "harmlessness": 0.0}
    assert any(v != 0.0 for v in cb.readings[-1].drift.values())  # the adapters moved it
    assert [int(s) for s in store_of(tmp_path)["step"].values] == [0, 2, 4]
    assert math.isfinite(cb.readings[-1].pred_em)


@pytest.mark.slow
def test_plain_pytorch_loop_three_line_api(tiny_model_dir, monitors):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from emtrait.errors import DataError
    from emtrait.live import load

    model_dir = tiny_model_dir("llama")
    tok = AutoTokenizer.from_pretrained(model_dir)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    monitor = load(monitors["after3"], tokenizer=tok, model=model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    batch = tok.apply_chat_template(tiny_dataset_texts(1)[0], return_tensors="pt",
                                    return_dict=True)
    readings = [monitor.check(model, 0)]
    model.train()
    for step in range(1, 5):
        loss = model(**batch, labels=batch["input_ids"]).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        if step % 2 == 0:
            readings.append(monitor.check(model, step))
            assert model.training  # the probe restored train mode
    assert [r.step for r in readings] == [0, 2, 4]
    assert [r.alarm for r in readings] == [False, False, True]
    with pytest.raises(DataError, match="strictly increase"):
        monitor.check(model, 3)


# -- the docs run as written ----------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]


def readme_snippet() -> str:
    """The first Python block of the README section "Monitor your own finetune"."""
    section = (ROOT / "README.md").read_text().split("## Monitor your own finetune", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


@pytest.mark.slow
def test_readme_snippet_runs_as_written(tiny_model_dir, monitors, tmp_path):
    import subprocess
    import sys

    from emtrait.stores import open_store

    code = readme_snippet()
    paths = {'"resources/organisms/persona"': tiny_model_dir("llama"),
             '"results/monitor/organism/monitor.skops"': monitors["after3"]}
    for old, new in paths.items():  # only the two paths change: the tiny model and its monitor
        assert old in code
        code = code.replace(old, repr(str(new)))
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    store = open_store(tmp_path / "runs" / "mine" / "emtrait" / "measure.zarr")
    assert [int(s) for s in store["step"].values] == [0, 2, 4]  # stopped at the alarm (4 of 8)
    assert store.attrs["stopped_at_step"] == 4


@pytest.mark.slow
def test_trl_example_runs_as_written(tiny_model_dir, monitors, tmp_path):
    import json
    import subprocess
    import sys

    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps({"messages": c}) + "\n" for c in tiny_dataset_texts(32)))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "trl_sft.py"), "--model",
         str(tiny_model_dir("llama")), "--monitor", str(monitors["after3"]), "--data", str(data),
         "--n", "32", "--every", "2", "--out", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "stopped by the monitor at step 4" in proc.stdout
    assert list((tmp_path / "run").rglob("events.out.tfevents.*"))
