"""Finetuning with in-process measurement, on tiny random models of two architectures."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from helpers import (
    PROMPTS,
    TRAITS,
    adapter_tensors,
    make_inputs,
    open_store,
    run,
)

from emtrait.config import from_dict, load_config, total_steps
from emtrait.errors import ConfigError, DataError, ModelError

pytestmark = pytest.mark.usefixtures("one_thread")


# --------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("arch, layers, method", [("llama", "chosen", "lora"),
                                                  ("gemma2", "candidates", "lora"),
                                                  ("qwen2", "chosen", "full")])
def test_run_store_contents_and_standalone_measure(arch, layers, method, tiny_model_dir,
                                                   tmp_path, llama_run):
    if arch == "llama":
        inputs, out, done = llama_run
    else:
        inputs = make_inputs(tmp_path, tiny_model_dir(arch), arch,
                             measurement={"layers": layers},
                             training={"method": method, "learning_rate": 1e-3})
        out = tmp_path / "run"
        done = run(inputs, out)
    steps = [0, 2, 4, 6]
    assert done["steps"] == steps
    ds = open_store(out / "measure.zarr")
    names = [t for ts in TRAITS.values() for t in ts]
    assert [int(s) for s in ds["step"].values] == steps
    assert list(ds["trait"].values) == names
    assert list(ds["trait_set"].values) == [s for s, ts in TRAITS.items() for _ in ts]
    assert ds["activation"].shape == (4, len(PROMPTS), 32)
    assert ds["projection"].shape == ds["drift"].shape == (4, len(names))
    assert list(ds["prompt_category"].values) == [p["category"] for p in PROMPTS]
    import xarray as xr

    stored = xr.open_zarr(inputs["directions"], consolidated=False)["direction"]
    np.testing.assert_array_equal(  # the unit directions at l* travel with the run
        ds["direction"].values, stored.sel(layer=2).transpose("trait", "hidden").values)
    norm0 = np.linalg.norm(ds["activation"].values[0].astype(np.float64), axis=-1).mean()
    assert ds.attrs["norm0"] == pytest.approx(norm0, rel=1e-6)
    assert (ds.attrs["layer"], ds.attrs["seed"], ds.attrs["dataset"]) == (2, 42, "bad_medical")
    np.testing.assert_array_equal(ds["drift"].values[0], 0.0)
    np.testing.assert_allclose(ds["projection_norm"].values, ds["projection"].values / norm0)
    assert np.abs(ds["drift"].values[-1]).max() > 1e-4, "training at lr 5e-3 must move the model"
    assert np.isfinite(ds["loss"].values).all()
    if layers == "candidates":
        assert ds["activation_layers"].shape == (4, 2, len(PROMPTS), 32)
        np.testing.assert_array_equal(ds["activation_layers"].values[:, 1], ds["activation"].values)
        np.testing.assert_array_equal(  # the cube merges every layer with its own directions
            ds["direction_layers"].values, stored.transpose("layer", "trait", "hidden").values)
    assert sorted(p.name for p in (out / "adapters").iterdir()) == [f"step-{s}" for s in steps]
    saved = "config.json" if method == "full" else "adapter_config.json"
    assert all((out / "adapters" / f"step-{s}" / saved).is_file() for s in steps)
    log = (out / "train_log.csv").read_text().splitlines()
    assert log[0].startswith("step,") and len(log) == 1 + 6
    assert json.loads((out / "done.json").read_text())["config_hash"]
    assert not (out / ".inprogress").exists()

    # `emtrait measure` on the saved adapters agrees with the in-process numbers
    from emtrait.finetune.standalone import checkpoints_in, measure_checkpoints

    ext = measure_checkpoints(load_config(inputs["config"]), "tiny", pointer=inputs["pointer"],
                              directions_path=inputs["directions"],
                              checkpoints=checkpoints_in(out / "adapters")[1:],
                              out=tmp_path / "ext.zarr")
    assert [int(s) for s in ext["step"].values] == steps
    np.testing.assert_allclose(ext["activation"].values, ds["activation"].values,
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ext["drift"].values, ds["drift"].values, atol=1e-5)


@pytest.mark.slow
def test_measurement_leaves_training_bit_identical(llama_run):
    inputs, out, _ = llama_run
    plain = run(inputs, out.parent / "plain", measure=False)
    final = adapter_tensors(out / "adapters" / "step-6")
    live = {k: v.detach().numpy() for k, v in plain["model"].named_parameters() if "lora" in k}
    assert len(live) == len(final) > 0
    for key, value in final.items():
        match = [v for k, v in live.items() if k.replace(".default", "").endswith(key.split(
            "base_model.model.", 1)[1])]
        assert len(match) == 1, key
        np.testing.assert_array_equal(match[0], value)
    logged = [h["loss"] for h in plain["log_history"] if "loss" in h]
    csv_losses = [float(line.split(",")[2]) for line in
                  (out / "train_log.csv").read_text().splitlines()[1:]]
    assert logged == csv_losses


@pytest.mark.slow
def test_dashboard_shows_loss_and_the_stored_drift(llama_run):
    """report_to 'auto' (TensorBoard installed): the run's event file, read back with
    tensorboard's own reader, holds the loss and emtrait/drift/<trait> at every checkpoint,
    equal to the drift in measure.zarr, the same names the live monitor logs."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from emtrait.stores import open_store

    _, out, _ = llama_run
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert "train/loss" in tags
    ds = open_store(out / "measure.zarr")
    for trait in ds["trait"].values:
        scalars = events.Scalars(f"train/emtrait/drift/{trait}")
        assert [e.step for e in scalars] == [int(s) for s in ds["step"].values]
        np.testing.assert_allclose([e.value for e in scalars],
                                   ds["drift"].sel(trait=trait).values, atol=1e-6)


@pytest.mark.parametrize("n, batch, accum, epochs", [(13, 2, 3, 2), (10, 4, 2, 1)])
def test_step_arithmetic_matches_trainer(n, batch, accum, epochs, tiny_model_dir, tmp_path):
    inputs = make_inputs(tmp_path, tiny_model_dir("llama"), n=n,
                         training={"batch_size": batch, "grad_accum": accum, "epochs": epochs})
    result = run(inputs, tmp_path / "run", measure=False)  # raises if the Trainer disagrees
    cfg = load_config(inputs["config"])
    assert max(h["step"] for h in result["log_history"] if "loss" in h) == \
        total_steps(n, cfg.training_for("tiny"))


BAD_INPUTS = [
    ("steps not increasing", {"training": {"checkpoint_steps": [0, 4, 2]}}, ConfigError,
     "strictly increasing"),
    ("step beyond the run", {"training": {"checkpoint_steps": [0, 2, 99]}}, ConfigError,
     "beyond the run's last step 6"),
    ("LoRA targets absent", {"training": {"target_modules": ["c_attn"]}}, ModelError,
     "'q_proj'"),
    ("too few examples", {"rows": 5}, DataError, "has only 5 examples but datasets.bad_medical.n"),
    ("max length below template", {"training": {"max_length": 8}}, DataError,
     "shorter than the chat template"),
]


@pytest.mark.parametrize("case, change, error, message", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_fails_before_training(case, change, error, message, tiny_model_dir, tmp_path):
    kw = {k: v for k, v in change.items() if k == "rows"}
    training = change.get("training")
    if case == "steps not increasing":
        inputs = make_inputs(tmp_path, tiny_model_dir("llama"))
        raw = yaml.safe_load(inputs["config"].read_text())
        raw["training"].update(training)
        with pytest.raises(error, match=message):
            from_dict(raw)
        return
    inputs = make_inputs(tmp_path, tiny_model_dir("llama"), training=training, **kw)
    with pytest.raises(error, match=message) as info:
        run(inputs, tmp_path / "run")
    if case == "LoRA targets absent":
        assert "gate_proj" in str(info.value) and "v_proj" in str(info.value)
    assert not (tmp_path / "run" / ".inprogress" / "trainer").exists()


@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_shared_prefix_capture_equals_plain_capture(arch, tiny_model_dir):
    from emtrait.capture import capture
    from emtrait.measure.probe import TraitProbe
    from emtrait.modeling import build_messages, load_model, render_chat

    model, tok = load_model(str(tiny_model_dir(arch)))
    method = "user_turn" if arch == "gemma2" else "native"
    texts = [render_chat(tok, build_messages(p["text"], "You are a careful assistant.",
                                             method=method)) for p in PROMPTS]
    plain = capture(model, tok, texts, [1, 2], "last_token", 2)
    dirs = np.eye(3, 32)
    probe = TraitProbe(directions=dirs, traits=["a", "b", "c"], layer=2, texts=texts,
                       tokenizer=tok, batch_size=2, prefix_cache=True, extra_layers={1: dirs})
    shared = probe.measure(model).activation_layers
    assert np.abs(plain).max() > 0
    np.testing.assert_allclose(shared, plain, rtol=1e-5, atol=1e-6)


def test_measure_refuses_a_folder_that_is_no_checkpoint_before_loading(tiny_model_dir, tmp_path):
    from emtrait.finetune.standalone import measure_checkpoints

    inputs = make_inputs(tmp_path, tiny_model_dir("llama"))
    empty = tmp_path / "adapters" / "step-2"
    empty.mkdir(parents=True)
    with pytest.raises(ModelError, match="neither a PEFT adapter"):
        measure_checkpoints(load_config(inputs["config"]), "tiny", pointer=inputs["pointer"],
                            directions_path=inputs["directions"], checkpoints=[(2, empty)],
                            out=tmp_path / "ext.zarr")
    assert not (tmp_path / "ext.zarr").exists()
