"""Config check finds every value that cannot work, by class.

The schema half enumerates every field of the config's JSON-Schema: each constrained one
(range, pattern, choices, unique entries, URL, non-empty) gets a value that breaks its
constraint, each number NaN and infinity, and the loader must refuse each, naming the key. A new
constrained field is covered without a new line here; a constraint the schema states but the
loader does not enforce fails. The table half holds what the schema cannot say: names that must
resolve, and combinations later stages need (`emtrait config check`).
"""

from __future__ import annotations

import copy
import math
import re
from typing import Any

import pytest
import yaml
from helpers import emtrait_exit
from typer.testing import CliRunner

from emtrait.cli import app
from emtrait.config import from_dict, json_schema
from emtrait.errors import ConfigError

# Every optional section present, so every field of the schema has a place to be broken.
BASE: dict[str, Any] = {
    "models": {"m": {
        "source": "embedded:smollm2-135m-instruct", "num_layers": 30,
        "candidate_layers": [9, 12], "layer": 9, "resources": {"gpu_model": "a100"},
        "sae": {"release": "r", "id": "i", "layer": 9}}},
    "datasets": {
        "d": {"builtin": "bad_medical", "label": "dangerous", "role": "calibration", "n": 10},
        "b": {"path": "rows.jsonl", "columns": {"user": "u", "assistant": "a"},
              "label": "benign", "role": "calibration", "n": 10}},
    "training": {"seeds": [1, 2], "checkpoint_schedule": [{"every": 2, "until": 4}]},
    "behavior": {"judge": {"price_input_per_mtok": 1.0, "price_output_per_mtok": 1.0}},
    "screen": {"sample": 10, "max_length": 64},
    "traits": {"questions": 10, "sets": {"r": {"random": 3}, "alignment7": ["honesty"]},
               "monitor_set": "alignment7"},
    "organisms": {"o": {}},
    "variants": {"v": {"models": ["m"], "datasets": ["d"],
                       "start_from": {"dataset": "d", "seed": 1}}},
}
BAD_NAME = "-not a name"


def test_base_is_valid():
    """Every case below breaks one field of BASE, so BASE itself must load whole."""
    cfg = from_dict(copy.deepcopy(BASE))
    assert set(cfg.datasets) == {"d", "b"} and set(cfg.variants) == {"v"}
    assert cfg.training.seeds == [1, 2]


# ------------------------------------------------------------------ the schema, field by field

def _resolve(schema: dict, node: dict) -> dict:
    while "$ref" in node:
        node = {**schema["$defs"][node["$ref"].rsplit("/", 1)[-1]],
                **{k: v for k, v in node.items() if k != "$ref"}}
    return node


def _fields(schema: dict, node: dict, path: tuple) -> list[tuple[tuple, dict]]:
    """(path, schema of a leaf or constrained node) for every field; '*' = a dict entry,
    '[]' = a list item, '<key>' = the key of a dict entry."""
    node = _resolve(schema, node)
    out = [(path, node)] if path else []
    branches = [_resolve(schema, b) for b in node.get("anyOf", [node])]
    for branch in branches:
        for key, sub in branch.get("properties", {}).items():
            out += _fields(schema, sub, (*path, key))
        for pattern, sub in branch.get("patternProperties", {}).items():
            out.append(((*path, "<key>"), {"pattern": pattern}))
            out += _fields(schema, sub, (*path, "*"))
        if isinstance(branch.get("items"), dict) and branch["items"].get("$ref"):
            out += _fields(schema, branch["items"], (*path, "[]"))
    return out


CONSTRAINTS = ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum", "minLength",
               "minItems", "minProperties", "uniqueItems", "enum", "pattern", "format", "const")


def _constraints(node: dict) -> dict:
    found: dict = {}
    for branch in node.get("anyOf", [node]):
        found.update({k: branch[k] for k in CONSTRAINTS if k in branch})
        items = branch.get("items")
        if isinstance(items, dict) and "enum" in items:
            found["items_enum"] = items["enum"]
    return found


def _is_number(node: dict) -> bool:
    return any(b.get("type") == "number" for b in node.get("anyOf", [node]))


def _get(data: Any, path: tuple) -> Any:
    for part in path:
        if part == "*":
            data = next(iter(data.values()))
        elif part == "[]":
            data = data[0]
        else:
            data = data.get(part) if isinstance(data, dict) else None
        if data is None:
            return None
    return data


def _set(data: dict, path: tuple, value: Any) -> str:
    """Put `value` at `path` of `data`; returns the dotted key pydantic's error names."""
    node, where = data, []
    for part in path[:-1]:
        if part == "*":
            part = next(iter(node))
        elif part == "[]":
            part = 0
        node = node.setdefault(part, {}) if isinstance(node, dict) else node[part]
        where.append(str(part))
    last = path[-1]
    if last == "<key>":
        first = next(iter(node))
        node[BAD_NAME] = node.pop(first)
        return ".".join([*where, BAD_NAME])
    node[last] = value
    return ".".join([*where, last])


def _breaking(path: tuple, rule: str, bound: Any) -> Any:
    """A value that breaks one schema constraint (None: the rule is not one to break here)."""
    current = _get(BASE, path)
    if rule == "minimum":
        return bound - 1
    if rule in ("exclusiveMinimum", "exclusiveMaximum"):
        return bound
    if rule == "maximum":
        return bound + 1
    if rule == "minLength":
        return ""
    if rule == "minItems":
        return []
    if rule == "minProperties":
        return {}
    if rule == "uniqueItems":
        item = current[0] if isinstance(current, list) and current else "x"
        return [item, item]
    if rule in ("enum", "items_enum"):
        return ["no-such-choice"] if rule == "items_enum" else "no-such-choice"
    if rule == "pattern":
        assert not re.search(bound, BAD_NAME)
        return BAD_NAME
    if rule == "const":
        return f"not-{bound}"
    if rule == "format":
        return "not a url"
    raise AssertionError(rule)


SCHEMA = json_schema()
FIELDS = _fields(SCHEMA, SCHEMA, ())
CONSTRAINED = [(path, rule, bound) for path, node in FIELDS
               for rule, bound in _constraints(node).items()
               if not (rule == "minimum" and bound is None)]
NUMBERS = [path for path, node in FIELDS if _is_number(node)]


def _refused(path: tuple, value: Any) -> str:
    data = copy.deepcopy(BASE)
    key = _set(data, path, value)
    with pytest.raises(ConfigError) as err:
        from_dict(data)
    assert "Traceback" not in str(err.value)
    return key, str(err.value)


def test_the_schema_has_constrained_fields_to_try():
    """The enumeration reaches every section (a walker that stopped early would pass vacuously)."""
    sections = {p[0] for p, _, _ in CONSTRAINED}
    assert sections >= {"models", "datasets", "training", "behavior", "monitor", "screen",
                        "traits", "organisms", "variants", "measurement"}
    assert len(CONSTRAINED) > 60 and len(NUMBERS) > 10


# schema keywords that describe or structure, and constrain nothing
STRUCTURE = {"$schema", "$defs", "$ref", "title", "description", "default", "type", "anyOf",
             "properties", "patternProperties", "additionalProperties", "items", "required"}


def _keywords(node: object) -> set[str]:
    if isinstance(node, dict):
        return set(node) | {k for key, v in node.items() if key not in ("default",)
                            for k in _keywords(v if key not in ("properties", "$defs",
                                                                "patternProperties")
                                               else list(v.values()))}
    if isinstance(node, list):
        return {k for v in node for k in _keywords(v)}
    return set()


def test_every_schema_keyword_is_one_this_file_knows_how_to_break():
    """A new kind of constraint (multipleOf, maxItems, ...) fails here until `_breaking`
    learns to break it, instead of passing untested."""
    assert _keywords(SCHEMA) - STRUCTURE - set(CONSTRAINTS) == set()


@pytest.mark.parametrize(("path", "rule", "bound"), CONSTRAINED,
                         ids=[f"{'.'.join(p)}:{r}" for p, r, _ in CONSTRAINED])
def test_every_constrained_field_refuses_a_value_breaking_its_constraint(path, rule, bound):
    key, message = _refused(path, _breaking(path, rule, bound))
    assert key in message, message


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("path", NUMBERS, ids=[".".join(p) for p in NUMBERS])
def test_every_number_refuses_nan_and_infinity(path, bad):
    key, message = _refused(path, bad)
    assert key in message and "finite" in message, message


# ------------------------------------------------------- what the schema cannot say: a table

def _with(**changes: Any) -> dict:
    data = copy.deepcopy(BASE)
    for dotted, value in changes.items():
        _set(data, tuple(dotted.split("__")), value)
    return data


# (changes as key__path=value, substrings the message must contain)
NAMES_AND_STRINGS = [
    pytest.param(_with(models__m__source="embedded:smollm2-135m"),
                 ["models.m.source", "smollm2-135m", "Did you mean 'smollm2-135m-instruct'"],
                 id="embedded-model"),
    pytest.param(_with(models__m__source="organism:"), ["models.m.source", "organism:<name"],
                 id="organism-empty"),
    pytest.param(_with(datasets__d__builtin="bad_medicle"), ["datasets.d.builtin",
                 "Did you mean 'bad_medical'"], id="generator"),
    pytest.param(_with(behavior__judge__kind="opneai"), ["judge", "Did you mean 'openai'"],
                 id="judge"),
    pytest.param(_with(traits__monitor_set="alignment8"), ["monitor_set", "alignment8"],
                 id="trait-set"),
    pytest.param(_with(traits__file="builtin:emtrai"), ["traits.file", "emtrai",
                 "Did you mean 'emtrait'"], id="builtin-traits-file"),
    pytest.param(_with(behavior__questions=["builtin:nope"]), ["behavior.questions", "nope"],
                 id="builtin-questions"),
    pytest.param(_with(behavior__choice_items="builtin:nope"), ["behavior.choice_items", "nope"],
                 id="builtin-choice-items"),
    pytest.param(_with(variants__v__start_from={"variant": "w", "dataset": "d", "seed": 1}),
                 ["variants.v.start_from.variant", "'w'"], id="start-variant"),
    pytest.param(_with(variants__v__start_from={"dataset": "d", "seed": 7}),
                 ["variants.v.start_from", "seed 7"], id="start-run"),
    pytest.param(_with(variants__v__models=["n"]), ["variants.v.models", "'n'"],
                 id="variant-model"),
    pytest.param(_with(behavior__judge__base_url="api.openai.com/v1"),
                 ["behavior.judge.base_url", "http(s) URL"], id="url-no-scheme"),
    pytest.param(_with(behavior__judge__base_url="https://"),
                 ["behavior.judge.base_url", "http(s) URL"], id="url-no-host"),
    pytest.param(_with(models__m__candidate_layers=[9, 9]), ["models.m.candidate_layers"],
                 id="layers-unique"),
    pytest.param(_with(models__m__training={"seeds": [3, 3]}), ["models.m.training.seeds",
                 "unique"], id="override-seeds-unique"),
    pytest.param(_with(training__checkpoint_steps=[0, 4, 4], training__checkpoint_schedule=None),
                 ["training.checkpoint_steps"], id="steps-unique"),
    pytest.param(_with(traits__sets={"alignment7": ["honesty", "honesty"]}),
                 ["traits.sets.alignment7", "unique"], id="trait-set-unique"),
]


@pytest.mark.parametrize(("data", "expected"), NAMES_AND_STRINGS)
def test_names_must_resolve_and_strings_must_parse(data, expected):
    with pytest.raises(ConfigError) as err:
        from_dict(data)
    for text in expected:
        assert text in str(err.value), str(err.value)


# ------------------------------------------- combinations: `emtrait config check`, exit code 2

def _config(tmp_path, datasets: dict, source: str = "embedded:smollm2-135m-instruct",
            **extra: Any):
    data = {"models": {"m": {"source": source, "candidate_layers": [9]}},
            "datasets": datasets, "training": {"seeds": [1]}, **extra}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _ds(label: str, role: str = "calibration", builtin: str = "bad_medical") -> dict:
    return {"builtin": builtin, "label": label, "role": role, "n": 10}


EMBEDDED = "embedded:smollm2-135m-instruct"
COMBINATIONS = [  # (datasets, the model's source, substrings of the message)
    pytest.param({"a": _ds("dangerous"), "b": _ds("dangerous")}, EMBEDDED,
                 ["no calibration dataset has label 'benign'", "label: benign"], id="no-benign"),
    pytest.param({"a": _ds("benign"), "b": _ds("benign")}, EMBEDDED,
                 ["no calibration dataset has label 'dangerous'"], id="no-dangerous"),
    pytest.param({"a": _ds("dangerous"), "b": _ds("benign", "heldout")}, EMBEDDED,
                 ["1 with role 'calibration'", "leave-one-perturbation-out"], id="lopo"),
    pytest.param({"a": _ds("dangerous"), "b": _ds("benign", builtin="number_sequence"),
                  "c": {**_ds("dangerous", "heldout"), "seed": 3}}, EMBEDDED,
                 ["datasets.c: role 'heldout'", "calibration dataset 'a'", "builtin: bad_medical",
                  "other data"], id="heldout-is-calibration-data"),
    pytest.param({"a": _ds("dangerous"), "b": _ds("benign"), "c": _ds("unknown")}, EMBEDDED,
                 ["datasets ['c']", "label 'unknown'"], id="unknown-class"),
    pytest.param({"a": _ds("dangerous"), "b": _ds("benign")}, "organism:persona",
                 ["models.m.source", "no organism 'persona'", "build_organism"],
                 id="organism"),
]


@pytest.mark.parametrize(("datasets", "source", "expected"), COMBINATIONS)
def test_config_check_refuses_combinations_later_stages_cannot_use(tmp_path, datasets, source,
                                                                   expected):
    path = _config(tmp_path, datasets, source)
    code, output = emtrait_exit("config", "check", str(path))
    assert code == 2, output
    assert "Traceback" not in output and output.startswith("emtrait: error: ")
    for text in expected:
        assert text in output, output
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]  # nothing left behind


def test_config_check_notes_a_zero_width_interval_and_missing_files(tmp_path):
    """One run per class and a question file not yet there: it runs, but check says so."""
    path = _config(tmp_path, {"a": _ds("dangerous"), "b": _ds("benign")},
                   behavior={"questions": ["absent.yaml"]})
    res = CliRunner().invoke(app, ["config", "check", str(path)])
    assert res.exit_code == 0, res.output
    assert "zero width" in res.output and "absent.yaml" in res.output


def test_the_registries_name_what_the_stages_ship():
    """Config checks names in emtrait.registry; the stages own the files and specs."""
    from emtrait.behavior.questions import BUILTIN_CHOICE, BUILTIN_QUESTIONS
    from emtrait.prepare.model import EMBEDDED
    from emtrait.registry import BUILTIN_FILES, EMBEDDED_MODELS
    from emtrait.traits.prompts import BUILTIN

    assert EMBEDDED_MODELS.names() == list(EMBEDDED)
    assert set(BUILTIN_FILES.names()) == set(BUILTIN)
    assert {f"builtin:{n}" for n in BUILTIN_FILES.names()} == set(BUILTIN_QUESTIONS) \
        == set(BUILTIN_CHOICE)
