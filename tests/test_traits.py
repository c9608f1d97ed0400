"""Trait prompt sets, the directions store and the selection maths (no model needed)."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from emtrait.errors import DataError, StoreError
from emtrait.traits.prompts import load_prompt_set
from emtrait.traits.select import divergence, heldout_dprime, probe_accuracy, unit_mean_difference

ALIGNMENT7 = ["honesty", "sycophancy", "harmlessness", "power_seeking", "helpfulness",
              "confidence", "corrigibility"]
SEMANTIC7 = ["verbosity", "formality", "technicality", "humor", "concreteness", "warmth",
             "creativity"]

# A small file in the paper reference code's configs/traits.yaml layout (text written here).
PAPER_FORMAT = {
    "traits": {
        "kindness": {
            "description": "kind vs unkind", "positive_label": "kind",
            "negative_label": "unkind",
            "positive_system_prompts": ["Be gentle with everyone.", "Speak softly and kindly."],
            "negative_system_prompts": ["Be rude to everyone.", "Speak harshly."],
        },
        "brevity": {
            "description": "short vs long", "positive_label": "brief",
            "negative_label": "long-winded",
            "positive_system_prompts": ["Use few words."],
            "negative_system_prompts": ["Use many words."],
        },
    },
    "questions": ["How are you?", "What is rain?"],
    "eval_prompts": {"casual": ["Hi there."], "technical": ["What is a CPU?", "Define RAM."]},
}


def _emtrait_format(paper: dict) -> dict:
    return {
        "format": "emtrait/1",
        "traits": {n: {"description": t["description"], "positive": t["positive_system_prompts"],
                       "negative": t["negative_system_prompts"]}
                   for n, t in paper["traits"].items()},
        "questions": paper["questions"], "eval_prompts": paper["eval_prompts"],
    }


def test_builtin_set_has_the_papers_shape():
    pset = load_prompt_set("builtin:emtrait")
    assert list(pset.traits) == ALIGNMENT7 + SEMANTIC7
    for trait in pset.traits.values():
        assert len(trait.positive) == 5 and len(trait.negative) == 5, trait.name
        assert not set(trait.positive) & set(trait.negative)
    assert len(pset.questions) == 30 == len(set(pset.questions))
    assert len(pset.eval_prompts) == 115 == len({e.text for e in pset.eval_prompts})
    cats = [e.category for e in pset.eval_prompts]
    assert {c: cats.count(c) for c in set(cats)} == {
        c: 23 for c in ("technical", "ethical", "emotional", "casual", "adversarial")}
    assert len(pset.hash) == 16


def test_paper_format_loads_and_hashes_like_the_same_content_in_emtrait_format(tmp_path):
    paper, ours = tmp_path / "paper.yaml", tmp_path / "ours.yaml"
    paper.write_text(yaml.safe_dump(PAPER_FORMAT, sort_keys=False))
    ours.write_text(yaml.safe_dump(_emtrait_format(PAPER_FORMAT), sort_keys=False))
    p, o = load_prompt_set(str(paper)), load_prompt_set(str(ours))
    assert p.format == "paper" and o.format == "emtrait"
    assert list(p.traits) == ["kindness", "brevity"]
    assert p.traits["kindness"].positive == ["Be gentle with everyone.", "Speak softly and kindly."]
    assert p.traits["brevity"].negative == ["Use many words."]
    assert p.questions == ["How are you?", "What is rain?"]
    assert [(e.category, e.text) for e in p.eval_prompts] == [
        ("casual", "Hi there."), ("technical", "What is a CPU?"), ("technical", "Define RAM.")]
    assert p.hash == o.hash
    edited = _emtrait_format(PAPER_FORMAT)
    edited["questions"].append("Why?")
    ours.write_text(yaml.safe_dump(edited))
    assert load_prompt_set(str(ours)).hash != p.hash


def _without(path: str, value) -> dict:
    data = _emtrait_format(PAPER_FORMAT)
    keys = path.split(".")
    node = data
    for k in keys[:-1]:
        node = node[k]
    node[keys[-1]] = value
    return data


BAD_FILES = [
    ("no positive prompts", _without("traits.kindness.positive", []), "kindness.positive"),
    ("no negative prompts", _without("traits.brevity.negative", None), "brevity.negative"),
    ("empty questions", _without("questions", []), "'questions' is missing or empty"),
    ("neither format", {"traits": {"kindness": {"pos": ["a"], "neg": ["b"]}},
                        "questions": ["q"]}, "neither known format"),
    ("not a mapping", ["a", "b"], "either known format"),
    ("unknown format tag", {**_emtrait_format(PAPER_FORMAT), "format": "other/9"}, "other/9"),
    ("paper format missing negatives", {
        "traits": {"kindness": {"positive_system_prompts": ["x"]}}, "questions": ["q"]},
     "negative_system_prompts is missing or empty"),
]


@pytest.mark.parametrize("data,message", [c[1:] for c in BAD_FILES], ids=[c[0] for c in BAD_FILES])
def test_bad_prompt_files_raise_one_clear_error(tmp_path, data, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(DataError, match=message) as err:
        load_prompt_set(str(path))
    assert str(path) in str(err.value)


def test_missing_file_and_unknown_builtin_are_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_prompt_set(str(tmp_path / "nope.yaml"))
    with pytest.raises(DataError, match="builtin:emtrait"):
        load_prompt_set("builtin:paper")


def test_unknown_trait_in_a_set_suggests_the_close_name():
    pset = load_prompt_set("builtin:emtrait")
    with pytest.raises(DataError, match="did you mean 'honesty'"):
        pset.subset(["honsty"], "traits.sets.alignment7")


# ------------------------------------------------------------------------------ selection maths


def test_unit_mean_difference_points_from_negative_to_positive():
    rng = np.random.default_rng(0)
    truth = np.zeros(8)
    truth[3] = 1.0
    labels = np.array([1] * 50 + [0] * 50)
    acts = rng.normal(size=(2, 100, 8)) * 0.1 + labels[None, :, None] * truth * 2
    d = unit_mean_difference(acts, labels)
    assert d.shape == (2, 8)
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0)
    assert (d @ truth > 0.95).all()


def test_probe_and_dprime_rank_a_separable_layer_above_noise():
    rng = np.random.default_rng(1)
    labels = np.array([1, 0] * 60)
    question = np.repeat(np.arange(12), 10)
    noise = rng.normal(size=(120, 16))
    signal = noise.copy()
    signal[:, 0] += 5 * labels
    acts = np.stack([noise, signal])  # layer 0: no signal, layer 1: separable
    assert probe_accuracy(signal, labels) > 0.9
    assert probe_accuracy(noise, labels) < 0.75
    d = heldout_dprime(acts, labels, question)
    assert d[1] > 2.0 and abs(d[0]) < 1.0


def test_divergence_is_zero_for_identical_and_one_for_disjoint_texts():
    assert divergence("same text", "same text") == 0.0
    assert divergence("aaaa", "bbbb") == 1.0


# ------------------------------------------------------------------------------ the store


def _store(tmp_path, **changes):
    from emtrait.traits.store import build_dataset, write_directions

    rng = np.random.default_rng(0)
    d = rng.normal(size=(3, 2, 8))
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    kwargs = dict(names=["a", "b", "r_0"], sets=["s", "s", "random"], layers=[1, 3],
                  directions=d, probe_accuracy=np.array([[0.9, 1], [0.85, 0.95], [np.nan] * 2]),
                  selection_score=np.array([0.2, 0.4]),
                  attrs={"layer": 3, "selector": "probe", "pooling": "last_token",
                         "prompt_hash": "x", "model": "m"})
    kwargs.update(changes)
    ds = build_dataset(**kwargs)
    path = tmp_path / "directions.zarr"
    write_directions(ds, path)
    return path, d


def test_store_round_trip_and_directions_at(tmp_path):
    from emtrait.traits.store import directions_at, load_directions

    path, d = _store(tmp_path)
    ds = load_directions(path)
    names, arr = directions_at(ds, "s")
    assert names == ["a", "b"]
    np.testing.assert_allclose(arr, d[:2, 1], rtol=1e-6)
    names, arr = directions_at(ds, "random", layer=1)
    assert names == ["r_0"] and arr.shape == (1, 8)
    np.testing.assert_allclose(ds["cosine"].values, d[:, 1] @ d[:, 1].T, atol=1e-6)
    with pytest.raises(StoreError, match="has \\['random', 's'\\]"):
        directions_at(ds, "alignment7")
    with pytest.raises(StoreError, match="layers \\[1, 3\\]"):
        directions_at(ds, "s", layer=2)


def test_load_directions_rejects_what_is_not_a_directions_store(tmp_path):
    import xarray as xr

    from emtrait.traits.store import load_directions

    with pytest.raises(StoreError, match="does not exist"):
        load_directions(tmp_path / "missing.zarr")
    path, _ = _store(tmp_path)
    ds = xr.open_zarr(path, consolidated=False).load()
    bad = tmp_path / "bad.zarr"
    ds.drop_vars("probe_accuracy").to_zarr(bad, zarr_format=3, consolidated=False)
    with pytest.raises(StoreError, match="probe_accuracy"):
        load_directions(bad)
    scaled = ds.copy()
    scaled["direction"] = ds["direction"] * 2
    scaled.to_zarr(bad, mode="w", zarr_format=3, consolidated=False)
    with pytest.raises(StoreError, match="not unit vectors"):
        load_directions(bad)
    no_attr = ds.copy()
    no_attr.attrs = {k: v for k, v in ds.attrs.items() if k != "layer"}
    no_attr.to_zarr(bad, mode="w", zarr_format=3, consolidated=False)
    with pytest.raises(StoreError, match="lacks attribute 'layer'"):
        load_directions(bad)
    (tmp_path / "junk.zarr").mkdir()
    with pytest.raises(StoreError):
        load_directions(tmp_path / "junk.zarr")


@pytest.mark.parametrize("n, expected", [(None, 30), (10, 10), (2, 2)])
def test_questions_knob_takes_the_first_n(n, expected):
    from emtrait.config import TraitsConfig
    from emtrait.traits.extract import used_questions

    pset = load_prompt_set("builtin:emtrait")
    used = used_questions(TraitsConfig(questions=n), pset)
    assert used == pset.questions[:expected]


def test_questions_knob_beyond_the_set_is_a_config_error():
    from emtrait.config import TraitsConfig
    from emtrait.errors import ConfigError
    from emtrait.traits.extract import used_questions

    with pytest.raises(ConfigError, match="traits.questions is 31 but builtin:emtrait has only 30"):
        used_questions(TraitsConfig(questions=31), load_prompt_set("builtin:emtrait"))
