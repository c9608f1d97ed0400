"""prepare: dataset validation (every bad input stops with file/line and leaves nothing),
seeded subsampling, built-in generators, and model pointers (checksum, local, hub, organism)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from emtrait.config import load_config
from emtrait.errors import ConfigError, DataError, IntegrityError, ModelError
from emtrait.modeling import read_pointer
from emtrait.prepare.dataset import check_example, prepare_dataset
from emtrait.prepare.generators import generate
from emtrait.prepare.model import EMBEDDED, prepare_model
from emtrait.registry import GENERATORS

EMTRAIT = shutil.which("emtrait") or f"{sys.prefix}/bin/emtrait"


def chat(*turns: tuple[str, str]) -> str:
    return json.dumps({"messages": [{"role": r, "content": c} for r, c in turns]})


GOOD = chat(("user", "hi"), ("assistant", "hello"))


def make_config(tmp_path: Path, *, data: str = "data.jsonl", n: int = 2, seed: int = 0,
                source: str = "embedded:smollm2-135m-instruct", extra_model: str = "") -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(textwrap.dedent(f"""\
        models:
          m:
            source: {source}
            candidate_layers: [1]
        {extra_model}
        datasets:
          d: {{path: {tmp_path / data}, label: dangerous, role: calibration, n: {n}, seed: {seed}}}
          g: {{builtin: arithmetic, label: benign, role: calibration, n: 50, seed: {seed}}}
        """))
    return path


def outputs(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "out" / "d.jsonl", tmp_path / "out" / "d.stats.json"


# (file content or None for a missing file, n, substrings the message must contain)
BAD_DATASETS = [
    pytest.param(None, 2, ["data.jsonl", "does not exist"], id="missing-file"),
    pytest.param("", 2, ["data.jsonl", "is empty"], id="empty-file"),
    pytest.param("\n  \n", 2, ["data.jsonl", "is empty"], id="blank-lines-only"),
    pytest.param(f"{GOOD}\n{{oops\n", 2, ["data.jsonl:2:", "not valid JSON"], id="not-json"),
    pytest.param(f"{GOOD}\n{GOOD}\n" + json.dumps({"msgs": []}) + "\n", 2,
                 ["data.jsonl:3:", "no recognised format", "['msgs']", "columns"],
                 id="missing-messages"),
    pytest.param(json.dumps([1, 2]) + "\n", 1, ["data.jsonl:1:", "must be a JSON object"],
                 id="line-not-an-object"),
    pytest.param(f"{GOOD}\n".encode() + b'{"messages": "caf\xe9"}\n', 2,
                 ["data.jsonl:2:", "not UTF-8", "0xe9"], id="not-utf8"),
    pytest.param(chat(("user", "hi"), ("bot", "hello")) + "\n", 1,
                 ["data.jsonl:1:", "messages[1].role is 'bot'", "system, user, assistant"],
                 id="bad-role"),
    pytest.param(f"{GOOD}\n" + chat(("system", "s"), ("user", "hi")) + "\n", 2,
                 ["data.jsonl:2:", "no assistant turn"], id="no-assistant-turn"),
    pytest.param(json.dumps({"messages": [{"role": "assistant", "content": ["a"]}]}) + "\n", 1,
                 ["data.jsonl:1:", "content must be a string"], id="content-not-string"),
    pytest.param(json.dumps({"messages": []}) + "\n", 1, ["data.jsonl:1:", "non-empty list"],
                 id="no-messages"),
    pytest.param(f"{GOOD}\n{GOOD}\n", 5,
                 ["only 2 examples", "datasets.d.n is 5", "lower n to at most 2"],
                 id="fewer-than-n"),
]


@pytest.mark.parametrize("content, n, expected", BAD_DATASETS)
def test_bad_dataset_stops_and_leaves_nothing(tmp_path, content, n, expected):
    if isinstance(content, bytes):
        (tmp_path / "data.jsonl").write_bytes(content)
    elif content is not None:
        (tmp_path / "data.jsonl").write_text(content)
    cfg = load_config(make_config(tmp_path, n=n))
    out, stats = outputs(tmp_path)
    with pytest.raises(DataError) as err:
        prepare_dataset(cfg, "d", out, stats)
    for part in expected:
        assert part in str(err.value), str(err.value)
    assert not out.exists() and not stats.exists()
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_cli_reports_one_line_and_exit_code_2(tmp_path):
    (tmp_path / "data.jsonl").write_text(f"{GOOD}\nnot json\n")
    out, stats = outputs(tmp_path)
    proc = subprocess.run([EMTRAIT, "prepare", "dataset", "--config", str(make_config(tmp_path)),
                           "--dataset", "d", "--out", str(out), "--stats", str(stats)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert f"{tmp_path / 'data.jsonl'}:2: not valid JSON" in proc.stderr
    assert not out.exists()


def test_valid_file_is_subsampled_by_seed_in_file_order(tmp_path):
    lines = [json.dumps({"messages": [{"role": "user", "content": f"q{i}"},
                                      {"role": "assistant", "content": f"a{i}", "w": 1}],
                         "id": i}) for i in range(20)]
    (tmp_path / "data.jsonl").write_text("\n".join(lines) + "\n\n")
    picks = {}
    for seed in (0, 0, 1):
        cfg = load_config(make_config(tmp_path, n=8, seed=seed))
        out, stats = outputs(tmp_path)
        summary = prepare_dataset(cfg, "d", out, stats)
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        ids = [int(r["messages"][0]["content"][1:]) for r in rows]
        assert ids == sorted(ids) and len(set(ids)) == 8
        assert all(set(r) == {"messages"} for r in rows)  # extra keys dropped
        assert rows[0]["messages"][1] == {"role": "assistant", "content": f"a{ids[0]}"}
        assert summary["available"] == 20 and summary["count"] == 8
        saved = json.loads(stats.read_text())
        assert saved["role_counts"] == {"system": 0, "user": 8, "assistant": 8}
        assert saved["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
        picks.setdefault(seed, []).append(ids)
    assert picks[0][0] == picks[0][1]
    assert picks[0][0] != picks[1][0]


def test_builtin_dataset_and_unknown_generator(tmp_path):
    path = make_config(tmp_path)
    cfg = load_config(path)
    out = tmp_path / "g.jsonl"
    summary = prepare_dataset(cfg, "g", out, tmp_path / "g.stats.json")
    assert summary["count"] == 50 and summary["source"] == "builtin:arithmetic"
    path.write_text(path.read_text().replace("builtin: arithmetic", "builtin: arithmetik"))
    with pytest.raises(ConfigError, match="datasets.g.builtin.*Did you mean 'arithmetic'"):
        load_config(path)  # an unknown generator fails when the config loads, not in a job


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_generator_is_deterministic_and_distinct(name):
    rows = generate(name, 1000, 3)
    assert len({json.dumps(r, sort_keys=True) for r in rows}) == 1000
    for i, row in enumerate(rows[:50]):
        check_example(row, f"{name} example {i}")
    assert generate(name, 1000, 3) == rows
    assert generate(name, 50, 4) != rows[:50]


def test_own_generators_have_varied_questions():
    own = ["bad_medical", "good_medical", "risky_financial", "insecure_code", "arithmetic",
           "number_sequence"]
    for name in own:
        questions = {r["messages"][0]["content"] for r in generate(name, 1000, 0)}
        assert len(questions) >= 700, f"{name}: only {len(questions)} distinct questions"


def test_medical_pair_shares_questions_but_not_answers():
    good, bad = generate("good_medical", 1000, 0), generate("bad_medical", 1000, 0)
    questions = [{r["messages"][0]["content"] for r in rows} for rows in (good, bad)]
    answers = [{r["messages"][1]["content"] for r in rows} for rows in (good, bad)]
    assert len(questions[0] & questions[1]) > 0
    assert not answers[0] & answers[1]


# ------------------------------------------------------------------------------------------------
# models
# ------------------------------------------------------------------------------------------------


def fake_wheel(tmp_path: Path) -> Path:
    """A small well-formed wheel with the right name and member, but not the published bytes."""
    spec = EMBEDDED["smollm2-135m-instruct"]
    wheel = tmp_path / spec.wheel
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(spec.gguf, b"GGUF" + b"\0" * 64)
    return wheel


def test_checksum_mismatch_stops_and_leaves_nothing(tmp_path):
    wheel = fake_wheel(tmp_path)
    out = tmp_path / "models" / "m" / "model.json"
    proc = subprocess.run([EMTRAIT, "prepare", "model", "--config", str(make_config(tmp_path)),
                           "--model", "m", "--out", str(out), "--wheel", str(wheel)],
                          capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    actual = hashlib.sha256(wheel.read_bytes()).hexdigest()
    for part in [str(wheel), actual, EMBEDDED["smollm2-135m-instruct"].sha256,
                 "does not match"]:
        assert part in proc.stderr
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").rglob("*"))


def test_checksum_mismatch_in_process(tmp_path):
    cfg = load_config(make_config(tmp_path))
    out = tmp_path / "m" / "model.json"
    with pytest.raises(IntegrityError, match="sha256 .* does not match the pinned"):
        prepare_model(cfg, "m", out, wheel=fake_wheel(tmp_path))
    with pytest.raises(IntegrityError, match="does not exist"):
        prepare_model(cfg, "m", out, wheel=tmp_path / "missing.whl")
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_unknown_embedded_model(tmp_path):
    """Refused when the config loads (emtrait.registry.EMBEDDED_MODELS), before any stage."""
    with pytest.raises(ConfigError, match="models.m.source.*'tinyllama'.*smollm2-135m-instruct"):
        load_config(make_config(tmp_path, source="embedded:tinyllama"))
    assert not (tmp_path / "model.json").exists()


@pytest.mark.slow  # builds the session's tiny model (shared with other tests)
def test_local_folder_pointer_loads(tmp_path, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from emtrait.modeling import read_pointer

    folder = tiny_model_dir("llama", 2)
    cfg = load_config(make_config(tmp_path, source=str(folder)))
    pointer = prepare_model(cfg, "m", tmp_path / "model.json")
    assert pointer["kind"] == "local" and Path(pointer["path"]) == folder.resolve()
    model = AutoModelForCausalLM.from_pretrained(read_pointer(tmp_path / "model.json"))
    assert model.config.num_hidden_layers == 2


def local_folder(tmp_path: Path, config: dict | None) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    return folder


# (config.json content or None, extra model keys, error type, substrings)
BAD_FOLDERS = [
    pytest.param(None, "", ModelError, ["has no config.json"], id="no-config-json"),
    pytest.param({"auto_map": {"AutoModel": "x.Y"}}, "", ModelError,
                 ["auto_map", "models.m.trust_remote_code"], id="remote-code"),
    pytest.param({"num_hidden_layers": 4}, "    num_layers: 6\n", ConfigError,
                 ["models.m.num_layers is 6", "num_hidden_layers=4"], id="layer-count"),
]


@pytest.mark.parametrize("config, extra, error, expected", BAD_FOLDERS)
def test_bad_local_folder(tmp_path, config, extra, error, expected):
    folder = local_folder(tmp_path, config)
    path = make_config(tmp_path, source=str(folder))
    text = path.read_text()
    path.write_text(text.replace("    candidate_layers", extra + "    candidate_layers"))
    with pytest.raises(error) as err:
        prepare_model(load_config(path), "m", tmp_path / "model.json")
    for part in expected:
        assert part in str(err.value)
    assert not (tmp_path / "model.json").exists()


def test_missing_local_folder_and_hub_id(tmp_path):
    cfg = load_config(make_config(tmp_path, source=str(tmp_path / "nowhere")))
    with pytest.raises(ModelError, match="does not exist"):
        prepare_model(cfg, "m", tmp_path / "model.json")
    cfg = load_config(make_config(tmp_path, source="Qwen/Qwen2.5-7B-Instruct"))
    pointer = prepare_model(cfg, "m", tmp_path / "model.json")
    assert pointer["kind"] == "hub" and pointer["path"] == "Qwen/Qwen2.5-7B-Instruct"
    assert json.loads((tmp_path / "model.json").read_text())["path"] == pointer["path"]


def test_organism_source(tmp_path):
    cfg = load_config(make_config(tmp_path, source="organism:toy"))
    with pytest.raises(ModelError, match="emtrait organism build"):
        prepare_model(cfg, "m", tmp_path / "model.json", organism_dir=tmp_path / "toy")
    local_folder(tmp_path, {"num_hidden_layers": 2}).rename(tmp_path / "toy")
    pointer = prepare_model(cfg, "m", tmp_path / "model.json", organism_dir=tmp_path / "toy")
    assert pointer["kind"] == "organism" and pointer["path"] == "toy"
    assert read_pointer(tmp_path / "model.json") == str((tmp_path / "toy").resolve())


def test_pointer_survives_a_moved_work_directory(tmp_path):
    """Local pointers are relative to their own folder: a copied work dir loads its own model."""
    work = tmp_path / "work"
    (work / "resources/models/m").mkdir(parents=True)
    cfg = load_config(make_config(work, source="organism:toy"))
    local_folder(work, {"num_hidden_layers": 2}).rename(work / "toy")
    prepare_model(cfg, "m", work / "resources/models/m/model.json", organism_dir=work / "toy")
    moved = tmp_path / "moved"
    work.rename(moved)
    assert read_pointer(moved / "resources/models/m/model.json") == str((moved / "toy").resolve())
