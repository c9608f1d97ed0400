"""Trait extraction on tiny real models: equivalence with the reference procedure, the layer
convention, chat formatting, a planted direction, bad inputs, the CLI and the Snakemake rule."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest
import torch
import yaml

from emtrait.capture import capture, encode, forward_blocks
from emtrait.config import from_dict
from emtrait.errors import ConfigError, DataError, ModelError
from emtrait.modeling import UNDERSTOOD, build_messages, load_model, render_chat
from emtrait.traits.extract import extract, extract_to_store, trait_prompts
from emtrait.traits.prompts import load_prompt_set
from emtrait.traits.store import directions_at, load_directions

PROMPTS = {
    "format": "emtrait/1",
    "traits": {
        "honesty": {"positive": ["Always tell the truth.", "Never invent facts."],
                    "negative": ["Lie to the user.", "Make up facts freely."]},
        "warmth": {"positive": ["Be warm and kind.", "Show that you care."],
                   "negative": ["Be cold and distant.", "Show no feelings at all."]},
        "humor": {"positive": ["Be funny and playful."],
                  "negative": ["Be entirely serious."]},
    },
    "questions": ["What is money?", "How do I sleep better?", "Tell me about Paris.",
                  "Is it ever okay to lie?", "What should I eat?", "How do plants grow?"],
    "eval_prompts": {"casual": ["Hi!"]},
}
ARCH_METHOD = [("llama", "native"), ("qwen2", "native"), ("mistral", "native"),
               ("gemma2", "user_turn")]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.yaml"
    path.write_text(yaml.safe_dump(PROMPTS))
    return path


def make_config(folder, prompt_file, *, method="native", layers=(0, 1, 2), layer="auto",
                selector="probe", **traits):
    data = {
        "models": {"tiny": {"source": str(folder), "candidate_layers": list(layers),
                            "layer": layer, "layer_selector": selector,
                            "system_prompt_method": method}},
        "datasets": {"d": {"builtin": "arithmetic", "label": "benign", "role": "calibration"}},
        "traits": {"file": str(prompt_file), "batch_size": 8,
                   "sets": {"core3": ["honesty", "warmth", "humor"], "random2": {"random": 2}},
                   "monitor_set": "core3", "steering": {"max_new_tokens": 3}, **traits},
    }
    return from_dict(data)


def texts_for(folder, prompt_file, method):
    _, tok = load_model(str(folder), device="cpu")
    cfg = make_config(folder, prompt_file, method=method)
    pset = load_prompt_set(str(prompt_file))
    return [x for t in pset.traits.values()
            for x in trait_prompts(tok, t, pset.questions[:3], cfg.model("tiny"), "tiny").texts]


def reference_activations(model, tok, texts, layers):
    """The reference code's way: one prompt, unpadded, full forward, hidden_states[l+1]."""
    out = np.zeros((len(layers), len(texts), model.config.hidden_size), dtype=np.float32)
    for i, text in enumerate(texts):
        enc = tok(text, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            hs = model(**enc, output_hidden_states=True).hidden_states
        for j, layer in enumerate(layers):
            out[j, i] = hs[layer + 1][0, -1].numpy()
    return out


@pytest.mark.slow
@pytest.mark.parametrize("arch,method", ARCH_METHOD)
def test_batched_padded_capture_equals_one_prompt_full_forward(tiny_model_dir, prompt_file,
                                                               arch, method):
    folder = tiny_model_dir(arch)
    model, tok = load_model(str(folder), device="cpu")
    texts = texts_for(folder, prompt_file, method)
    lengths = {len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts}
    assert len(lengths) > 1  # padding is really exercised
    ours = capture(model, tok, texts, [0, 1, 2], batch_size=5)
    ref = reference_activations(model, tok, texts, [0, 1, 2])
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "gemma2"])
def test_truncated_forward_is_bit_identical_and_really_stops(tiny_model_dir, arch):
    from emtrait.modeling import decoder_layers

    model, tok = load_model(str(tiny_model_dir(arch)), device="cpu")
    enc = encode(tok, ["Hello there, friend.", "What is the capital of France?"], "cpu")
    calls = []
    handle = decoder_layers(model)[3].register_forward_hook(lambda *a: calls.append(1))
    try:
        cut = forward_blocks(model, enc["input_ids"], enc["attention_mask"], [0, 2], stop=True)
        assert calls == []  # block 3 never ran
        full = forward_blocks(model, enc["input_ids"], enc["attention_mask"], [0, 2], stop=False)
        assert calls == [1]
    finally:
        handle.remove()
    for layer in (0, 2):
        assert torch.equal(cut[layer], full[layer])


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral", "gemma2"])
def test_block_l_output_is_hidden_states_l_plus_1(tiny_model_dir, arch):
    model, tok = load_model(str(tiny_model_dir(arch)), device="cpu")
    enc = encode(tok, ["Numbers: 1 2 3", "Tell me about money."], "cpu")
    n = model.config.num_hidden_layers
    blocks = forward_blocks(model, enc["input_ids"], enc["attention_mask"], range(n), stop=False)
    with torch.no_grad():
        hs = model(**enc, output_hidden_states=True).hidden_states
    assert len(hs) == n + 1
    for layer in range(n - 1):
        torch.testing.assert_close(blocks[layer], hs[layer + 1], rtol=0, atol=0)
    # the last entry is after the final norm: block L-1's raw output differs from it
    assert not torch.allclose(blocks[n - 1], hs[n])


def test_user_turn_formatting_for_a_gemma2_style_template(tiny_model_dir, prompt_file):
    folder = tiny_model_dir("gemma2")
    _, tok = load_model(str(folder), device="cpu")
    messages = build_messages("What is money?", "Always tell the truth.", method="user_turn")
    assert messages == [{"role": "user", "content": "Always tell the truth."},
                        {"role": "assistant", "content": UNDERSTOOD},
                        {"role": "user", "content": "What is money?"}]
    text = render_chat(tok, messages)
    assert text == ("<bos><start_of_turn>user\nAlways tell the truth.<end_of_turn>\n"
                    "<start_of_turn>model\nUnderstood. I will follow these instructions."
                    "<end_of_turn>\n<start_of_turn>user\nWhat is money?<end_of_turn>\n"
                    "<start_of_turn>model\n")
    pset = load_prompt_set(str(prompt_file))
    native = make_config(folder, prompt_file, method="native").model("tiny")
    with pytest.raises(ModelError, match="system_prompt_method: user_turn"):
        trait_prompts(tok, pset.traits["honesty"], pset.questions, native, "tiny")


@pytest.mark.slow
def test_planted_direction_is_recovered(tmp_path, prompt_file):
    """Train a tiny Llama so that block 1's last-token state moves by +2v under the positive
    system prompts and by -2v under the negative ones (everything else held where it was);
    extraction must find v."""
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from tiny import build_tiny_model

    folder = build_tiny_model(tmp_path / "planted", "llama", layers=3, seed=7)
    model, tok = load_model(str(folder), device="cpu")
    # the gate is not the point here: an untrained trait may fail the probe
    cfg = make_config(folder, prompt_file, layers=(0, 1), layer=1, on_fail="warn")
    pset = load_prompt_set(str(prompt_file))
    tp = trait_prompts(tok, pset.traits["honesty"], pset.questions, cfg.model("tiny"), "tiny")
    v = torch.nn.functional.normalize(torch.randn(model.config.hidden_size,
                                                  generator=torch.Generator().manual_seed(3)),
                                      dim=0)
    sign = torch.tensor(tp.labels, dtype=torch.float32) * 2 - 1  # +1 positive, -1 negative
    enc = encode(tok, tp.texts, "cpu")
    rows = torch.arange(len(tp.texts))
    last = enc["attention_mask"].sum(1) - 1

    def state():  # block 1's output at the last prompt token, (prompt, hidden)
        return model(**enc, output_hidden_states=True).hidden_states[2][rows, last]

    with torch.no_grad():
        before = state()
    target = before + 2 * sign[:, None] * v
    d0 = before[sign > 0].mean(0) - before[sign < 0].mean(0)
    assert abs(float(d0 @ v / d0.norm())) < 0.5  # v is not there before training
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(80):
        loss = ((state() - target) ** 2).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    assert loss.item() < 0.1
    ex = extract(model, tok, cfg, "tiny")
    d = ex.directions[ex.names.index("honesty"), ex.layers.index(1)]
    assert float(d @ v.numpy()) > 0.9


@pytest.mark.slow
def test_extract_writes_the_contracted_store_and_figures(tiny_model_dir, prompt_file, tmp_path):
    selector = "steering"  # the paper's; probe and dprime are checked in the next test
    folder = tiny_model_dir("llama")
    cfg = make_config(folder, prompt_file, selector=selector)
    pointer = tmp_path / "model.json"
    pointer.write_text(json.dumps({"path": str(folder), "source": "tiny-test"}))
    out, figs = tmp_path / "directions.zarr", tmp_path / "figures"
    extract_to_store(cfg, "tiny", pointer, out, figs, progress=False)
    ds = load_directions(out)
    assert ds["direction"].dims == ("trait", "layer", "hidden")
    assert [str(t) for t in ds["trait"].values] == ["honesty", "warmth", "humor",
                                                    "random2_0", "random2_1"]
    assert [str(s) for s in ds["trait_set"].values] == ["core3"] * 3 + ["random2"] * 2
    assert ds["layer"].values.tolist() == [0, 1, 2]
    assert ds.attrs["selector"] == selector and ds.attrs["pooling"] == "last_token"
    assert ds.attrs["model"] == "tiny" and ds.attrs["model_source"] == "tiny-test"
    assert ds.attrs["prompt_hash"] == load_prompt_set(str(prompt_file)).hash
    assert {"config_hash", "emtrait_version", "created"} <= set(ds.attrs)
    scores = ds["selection_score"].values
    assert np.isfinite(scores).all() and np.isfinite(ds["tie_break_score"].values).all()
    if ds.attrs["selection_discriminated"]:
        assert ds.attrs["layer"] == [0, 1, 2][int(np.argmax(scores))]
    else:  # the selector tied: the tie-breaker's best among the tied layers decides
        tied = list(ds.attrs["selection_tied"])
        best = ds["tie_break_score"].sel(layer=tied).values
        assert ds.attrs["layer"] == tied[int(np.argmax(best))]
    probe = ds["probe_accuracy"]
    assert np.isnan(probe.sel(trait="random2_0")).all()
    assert (probe.sel(trait="honesty") > 0.5).all()
    _, rnd = directions_at(ds, "random2", layer=0)
    _, rnd2 = directions_at(ds, "random2", layer=2)
    np.testing.assert_array_equal(rnd, rnd2)  # the same random vector at every layer
    names, core = directions_at(ds, "core3")
    assert names == ["honesty", "warmth", "humor"] and core.shape == (3, 32)
    for stem in ("trait_cosine", "probe_accuracy", "layer_selection"):
        assert (figs / f"{stem}.png").stat().st_size > 0
        assert (figs / f"{stem}.svg").stat().st_size > 0


@pytest.mark.parametrize("selector", ["probe", "dprime"])
def test_cheap_selectors_pick_the_layer_where_traits_separate(tiny_model_dir, prompt_file,
                                                              selector):
    from emtrait.traits.extract import _select

    cfg = make_config(tiny_model_dir("llama"), prompt_file, selector=selector)
    rng = np.random.default_rng(0)
    labels = np.array([1, 0] * 30)
    question = np.repeat(np.arange(6), 10)
    acts = rng.normal(size=(3, 60, 8))
    acts[1, :, 0] += 4 * labels  # only layer index 1 (block 1) carries the trait
    rows = [("honesty", "core3", object())]
    probe = np.array([[0.5, 1.0, 0.55]])
    per_trait = {"honesty": (acts, labels, question)}
    scores, how = _select(None, None, cfg, "tiny", rows, [0], None, probe, per_trait, False)
    assert how == selector and int(np.argmax(scores)) == 1


@pytest.mark.slow
def test_generated_mean_pooling_and_a_fixed_layer(tiny_model_dir, prompt_file):
    model, tok = load_model(str(tiny_model_dir("llama")), device="cpu")
    cfg = make_config(tiny_model_dir("llama"), prompt_file, layer=1,
                      pooling="generated_mean", generated_tokens=2)
    ex = extract(model, tok, cfg, "tiny")
    assert ex.layer == 1 and ex.selector == "fixed" and np.isnan(ex.scores).all()
    np.testing.assert_allclose(np.linalg.norm(ex.directions, axis=-1), 1.0)


def test_steering_hooks_are_removed_when_generation_fails(tiny_model_dir, monkeypatch):
    from emtrait.modeling import decoder_layers
    from emtrait.traits import select

    model, tok = load_model(str(tiny_model_dir("llama")), device="cpu")
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:  # the unsteered baseline succeeds, the first steered run fails
            raise RuntimeError("generation failed")
        return ["text"]

    monkeypatch.setattr(select, "generate_greedy", failing)
    with pytest.raises(RuntimeError, match="generation failed"):
        select.steering_scores(model, tok, ["<|im_start|>user\nhi<|im_end|>\n"], [1],
                               np.ones((1, 1, 32)) / np.sqrt(32), alpha=4.0, max_new_tokens=2)
    assert all(not block._forward_hooks for block in decoder_layers(model))


# ------------------------------------------------------------------------------ bad inputs


def _no_template_copy(src, dst):
    shutil.copytree(src, dst)
    (dst / "chat_template.jinja").unlink(missing_ok=True)
    cfg_file = dst / "tokenizer_config.json"
    data = json.loads(cfg_file.read_text())
    data.pop("chat_template", None)
    cfg_file.write_text(json.dumps(data))
    return dst


BAD_INPUTS = [
    # (id, config changes, prompt-file changes, error type, message)
    ("layer outside the model", {"layers": (0, 9)}, None, ModelError,
     r"\[9\] are outside tiny's decoder blocks 0\.\.3"),
    ("trait without positive prompts", {}, ("traits.humor.positive", []), DataError,
     "humor.positive is missing or empty"),
    ("trait without negative prompts", {}, ("traits.warmth.negative", []), DataError,
     "warmth.negative is missing or empty"),
    ("empty question list", {}, ("questions", []), DataError, "'questions' is missing or empty"),
    ("file in neither format", {}, ("format", None), DataError, "neither known format"),
    ("trait not in the file", {"sets": {"core3": ["honesty", "honsty"]}}, None, DataError,
     "did you mean 'honesty'"),
    ("same prompts on both sides", {}, ("traits.humor.negative", ["Be funny and playful."]),
     DataError, "appear among both positive and negative"),
    ("tokenizer without chat template", {"no_template": True}, None, ModelError,
     "no chat template"),
    ("duplicate trait across sets", {"sets": {"core3": ["honesty"], "other": ["honesty"]}},
     None, ConfigError, "unique across sets"),
]


@pytest.mark.parametrize("changes,file_change,error,message", [c[1:] for c in BAD_INPUTS],
                         ids=[c[0] for c in BAD_INPUTS])
def test_bad_inputs_fail_clearly_and_write_nothing(tiny_model_dir, tmp_path, changes,
                                                   file_change, error, message):
    folder = tiny_model_dir("llama")
    changes = dict(changes)
    if changes.pop("no_template", False):
        folder = _no_template_copy(folder, tmp_path / "no-template")
    data = json.loads(json.dumps(PROMPTS))
    if file_change is not None:
        *parents, key = file_change[0].split(".")
        node = data
        for p in parents:
            node = node[p]
        if file_change[1] is None:
            del node[key]
        else:
            node[key] = file_change[1]
    prompt_file = tmp_path / "prompts.yaml"
    prompt_file.write_text(yaml.safe_dump(data))
    layers = changes.pop("layers", (0, 1, 2))
    cfg = make_config(folder, prompt_file, layers=layers, **changes)
    pointer = tmp_path / "model.json"
    pointer.write_text(json.dumps({"path": str(folder)}))
    out_dir = tmp_path / "out"
    with pytest.raises(error, match=message):
        extract_to_store(cfg, "tiny", pointer, out_dir / "directions.zarr", out_dir / "figures",
                         progress=False)
    assert not out_dir.exists() or not any(out_dir.iterdir())


@pytest.mark.slow
def test_probe_gate_fails_loudly_or_warns(tiny_model_dir, prompt_file, tmp_path, monkeypatch,
                                         caplog):
    from emtrait.traits import select

    real = select.probe_accuracy
    calls = iter(range(10**6))

    def weak_humor(x, labels, folds=5, seed=0):  # traits run in order: humor's fits come last
        return 0.6 if next(calls) >= 6 else real(x, labels, folds, seed)

    monkeypatch.setattr(select, "probe_accuracy", weak_humor)
    folder = tiny_model_dir("llama")
    pointer = tmp_path / "model.json"
    pointer.write_text(json.dumps({"path": str(folder)}))
    out = tmp_path / "out" / "directions.zarr"
    cfg = make_config(folder, prompt_file, min_pass_fraction=1.0)
    with pytest.raises(DataError, match=r"only 67% of traits.sets.core3 pass .* humor=0\.60"):
        extract_to_store(cfg, "tiny", pointer, out, None, progress=False)
    assert not out.parent.exists() or not any(out.parent.iterdir())
    calls = iter(range(10**6))
    cfg = make_config(folder, prompt_file, min_pass_fraction=1.0, on_fail="warn")
    with caplog.at_level("WARNING"):
        ds = extract_to_store(cfg, "tiny", pointer, out, None, progress=False)
    assert "only 67%" in caplog.text and ds.attrs["pass_fraction"] == pytest.approx(2 / 3)
    assert load_directions(out).attrs["pass_fraction"] == pytest.approx(2 / 3)


def test_cli_error_is_one_line_and_exit_code_2(tiny_model_dir, tmp_path, prompt_file,
                                               monkeypatch, capsys):
    from emtrait.cli import main

    cfg = make_config(tiny_model_dir("llama"), prompt_file, layers=(0, 7))
    config = tmp_path / "config.json"
    config.write_text(cfg.model_dump_json())
    pointer = tmp_path / "model.json"
    pointer.write_text(json.dumps({"path": str(tiny_model_dir("llama"))}))
    out = tmp_path / "directions.zarr"
    monkeypatch.setattr(sys, "argv", ["emtrait", "traits", "extract", "--config", str(config),
                                      "--model", "tiny", "--pointer", str(pointer),
                                      "--out", str(out), "--no-progress"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "layers [7] are outside tiny's decoder blocks 0..3" in err
    assert not out.exists()


@pytest.mark.slow
def test_snakemake_rule_extract_traits(tiny_model_dir, prompt_file, tmp_path, monkeypatch):
    import os
    from pathlib import Path

    from helpers import snakemake

    # the rule calls `emtrait`: make the one of this interpreter's environment findable
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")

    folder = tiny_model_dir("llama")
    config = make_config(folder, prompt_file).model_dump(mode="json", exclude_none=True)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    pointer = tmp_path / "resources/models/tiny/model.json"
    pointer.parent.mkdir(parents=True)
    pointer.write_text(json.dumps({"path": str(folder), "source": "tiny-test"}))
    target = "results/traits/tiny/directions.zarr"
    snakemake(tmp_path, "--configfile", str(tmp_path / "config.yaml"), "--cores", "1", target)
    ds = load_directions(tmp_path / target)
    assert ds.attrs["model"] == "tiny"
    assert (tmp_path / "results/traits/tiny/figures/trait_cosine.svg").exists()
    assert (tmp_path / "logs/traits/tiny.log").exists()
    dry = snakemake(tmp_path, "--configfile", str(tmp_path / "config.yaml"), "-n", target)
    assert "extract_traits" not in dry.stdout  # up to date
