"""Datasets from where users keep them: every format × source case goes through
`emtrait prepare dataset` and the finetune's reader (one rule), bad mappings and unreachable
hubs fail with the fix. Local datasets are written with `datasets` here (there is no hub)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers import make_inputs, run

from emtrait.chats import read_chats
from emtrait.config import from_dict
from emtrait.datasets import read_dataset
from emtrait.errors import ConfigError, DataError
from emtrait.prepare.dataset import prepare_dataset

ROWS, N, SEED = 12, 5, 3


def u(text):
    return {"role": "user", "content": text}


def a(text):
    return {"role": "assistant", "content": text}


def s(text):
    return {"role": "system", "content": text}


# format name -> (row i, the chat emtrait must make of it, entry keys beyond the source)
FORMATS = {
    "messages": (lambda i: {"messages": ([s(f"sys{i}")] if i % 2 else []) + [u(f"q{i}"),
                                                                               a(f"r{i}")],
                            "id": i},
                 lambda i: ([s(f"sys{i}")] if i % 2 else []) + [u(f"q{i}"), a(f"r{i}")], {}),
    "prompt_completion": (lambda i: {"prompt": f"q{i}", "completion": f"r{i}"},
                          lambda i: [u(f"q{i}"), a(f"r{i}")], {}),
    "prompt_completion_messages": (
        lambda i: {"prompt": [s(f"sys{i}"), u(f"q{i}")], "completion": [a(f"r{i}")]},
        lambda i: [s(f"sys{i}"), u(f"q{i}"), a(f"r{i}")], {}),
    "alpaca": (lambda i: {"instruction": f"q{i}", "input": f"x{i}" if i % 3 == 0 else "",
                          "output": f"r{i}", "text": "ignored"},
               lambda i: [u(f"q{i}\n\nx{i}" if i % 3 == 0 else f"q{i}"), a(f"r{i}")], {}),
    "question_answer": (lambda i: {"question": f"q{i}", "answer": f"r{i} #### {i}"},
                        lambda i: [u(f"q{i}"), a(f"r{i} #### {i}")], {}),
    "mapped": (lambda i: {"instruction": f"q{i}", "response": f"r{i}", "category": "c"},
               lambda i: [u(f"q{i}"), a(f"r{i}")],
               {"columns": {"user": "instruction", "assistant": "response"}}),
    "mapped_system": (lambda i: {"persona": f"sys{i}" if i % 2 else "", "ask": f"q{i}",
                                 "reply": f"r{i}"},
                      lambda i: ([s(f"sys{i}")] if i % 2 else []) + [u(f"q{i}"), a(f"r{i}")],
                      {"columns": {"system": "persona", "user": "ask", "assistant": "reply"}}),
    "mapped_messages": (lambda i: {"conversation": [u(f"q{i}"), a(f"r{i}")]},
                        lambda i: [u(f"q{i}"), a(f"r{i}")],
                        {"columns": {"messages": "conversation"}}),
}


def write(source: str, rows: list[dict], folder: Path) -> tuple[str, dict]:
    """Write rows with `datasets` as `source`; the path and extra entry keys to read it back."""
    import datasets

    ds = datasets.Dataset.from_list(rows)
    if source == "jsonl":
        ds.to_json(folder / "data.jsonl")
        return str(folder / "data.jsonl"), {}
    if source == "json":  # one JSON array, not lines
        ds.to_json(folder / "data.json", lines=False, orient="records")
        return str(folder / "data.json"), {}
    if source == "csv":
        ds.to_csv(folder / "data.csv", index=False)
        return str(folder / "data.csv"), {}
    if source == "parquet":
        ds.to_parquet(folder / "data.parquet")
        return str(folder / "data.parquet"), {}
    if source == "disk":
        ds.save_to_disk(folder / "disk")
        return str(folder / "disk"), {}
    if source == "disk_split":  # a DatasetDict: the entry's split picks one
        other = datasets.Dataset.from_list(rows[:2])
        datasets.DatasetDict({"train": other, "test": ds}).save_to_disk(folder / "dict")
        return str(folder / "dict"), {"split": "test"}
    raise AssertionError(source)


# every format at least once, every source at least once (CSV holds only text columns)
CASES = [
    ("messages", "jsonl"), ("messages", "parquet"), ("messages", "disk"),
    ("prompt_completion", "csv"), ("prompt_completion_messages", "json"),
    ("alpaca", "parquet"), ("alpaca", "csv"), ("question_answer", "jsonl"),
    ("question_answer", "disk_split"), ("mapped", "csv"), ("mapped_system", "parquet"),
    ("mapped_messages", "jsonl"),
]


def config(path: str, extra: dict, n: int = N, select: str = "seeded") -> dict:
    return {"models": {"m": {"source": "x", "candidate_layers": [1]}},
            "datasets": {"d": {"path": path, "label": "benign", "role": "calibration",
                               "n": n, "seed": SEED, "select": select, **extra}}}


def ids_of(chats: list[list[dict]]) -> list[int]:
    return [int(next(m for m in c if m["role"] == "user")["content"][1:].split("\n")[0])
            for c in chats]


@pytest.mark.parametrize("fmt, source", CASES, ids=[f"{f}-{s}" for f, s in CASES])
def test_format_and_source_prepare_and_finetune_read_alike(fmt, source, tmp_path):
    make_row, expected, keys = FORMATS[fmt]
    path, extra = write(source, [make_row(i) for i in range(ROWS)], tmp_path)
    cfg = from_dict(config(path, {**extra, **keys}))
    out, stats = tmp_path / "out" / "d.jsonl", tmp_path / "out" / "d.stats.json"
    summary = prepare_dataset(cfg, "d", out, stats)
    prepared = [json.loads(line)["messages"] for line in out.read_text().splitlines()]
    ids = ids_of(prepared)
    assert len(set(ids)) == N and ids == sorted(ids)  # seeded draw, source order kept
    assert prepared == [expected(i) for i in ids]
    assert summary["available"] == ROWS and summary["count"] == N
    # the finetune reads the raw source and the prepared file to the same chats, same order
    assert read_chats(path, cfg.dataset("d"), "d") == prepared
    assert read_chats(out, cfg.dataset("d"), "d") == prepared
    # another seed draws other rows
    other = from_dict({**config(path, {**extra, **keys}), "datasets": {"d": {
        **config(path, {**extra, **keys})["datasets"]["d"], "seed": SEED + 1}}})
    assert ids_of(read_dataset(other.dataset("d"), "d").chats) != ids


@pytest.mark.parametrize("source", ["parquet", "csv", "jsonl", "disk"])
def test_select_first_takes_the_leading_rows(source, tmp_path):
    """`first` streams a file (IterableDataset.take): the leading n rows, nothing more read."""
    rows = [FORMATS["question_answer"][0](i) for i in range(ROWS)]
    path, extra = write(source, rows, tmp_path)
    cfg = from_dict(config(path, extra, select="first"))
    examples = read_dataset(cfg.dataset("d"), "d")
    assert ids_of(examples.chats) == list(range(N))
    assert examples.available == (ROWS if source == "disk" else None)  # a stream has no length


def test_existing_jsonl_selection_is_unchanged(tmp_path):
    """The JSONL rule before emtrait.datasets: random.Random(seed).sample, sorted (pinned)."""
    path, _ = write("jsonl", [FORMATS["messages"][0](i) for i in range(ROWS)], tmp_path)
    chats = read_dataset(from_dict(config(path, {})).dataset("d"), "d").chats
    assert ids_of(chats) == [2, 3, 5, 8, 9]


BAD = [
    ("missing-mapped-column", "mapped", "parquet",
     {"columns": {"user": "instruction", "assistant": "answer"}},
     ["assistant: 'answer'", "the columns are ['category', 'instruction', 'response']"]),
    ("unrecognised-format", "mapped", "csv", {},
     ["columns ['category', 'instruction', 'response'] are in no recognised format",
      "columns: {user: <column>, assistant: <column>}"]),
    ("no-assistant", "messages", "jsonl", {"columns": {"messages": "messages"}}, None),
    ("too-few", "alpaca", "disk", {}, ["has only 12 examples", "datasets.d.n is 40"]),
    ("no-such-split", "question_answer", "disk_split", {"split": "validation"},
     ["splits ['test', 'train']", "not 'validation'"]),
]


@pytest.mark.parametrize("case, fmt, source, keys, expected", BAD, ids=[b[0] for b in BAD])
def test_bad_source_names_the_fix(case, fmt, source, keys, expected, tmp_path):
    rows = [FORMATS[fmt][0](i) for i in range(ROWS)]
    if case == "no-assistant":
        rows[4]["messages"] = [u("q4")]
        expected = [":5:", "no assistant turn"]
    path, extra = write(source, rows, tmp_path)
    cfg = from_dict(config(path, {**extra, **keys}, n=40 if case == "too-few" else N))
    with pytest.raises(DataError) as err:
        prepare_dataset(cfg, "d", tmp_path / "o.jsonl", tmp_path / "o.json")
    for part in expected:
        assert part in str(err.value), str(err.value)
    assert not (tmp_path / "o.jsonl").exists()


def test_text_file_that_is_not_utf8_names_file_and_line(tmp_path):
    (tmp_path / "data.csv").write_bytes(b"question,answer\nq0,r0\nq1,caf\xe9\n")
    cfg = from_dict(config(str(tmp_path / "data.csv"), {}, n=1))
    with pytest.raises(DataError, match=r"data\.csv:3: not UTF-8 \(byte 0xe9"):
        read_dataset(cfg.dataset("d"), "d")


@pytest.mark.parametrize("entry, message", [
    ({"path": "x.jsonl", "builtin": "arithmetic"}, "exactly one of 'path'"),
    ({"path": "x.jsonl", "config": "main"}, "apply to 'hub' datasets only"),
    ({"hub": "a/b", "columns": {"user": "q"}}, "give 'user' and 'assistant'"),
    ({"builtin": "arithmetic", "columns": {"user": "q", "assistant": "r"}}, "not apply"),
    ({"builtin": "arithmetik"}, "Did you mean 'arithmetic'"),
])
def test_bad_entries_fail_at_config_load(entry, message):
    raw = config("x", {})
    raw["datasets"]["d"] = {"label": "benign", "role": "calibration", **entry}
    with pytest.raises(ConfigError, match=message):
        from_dict(raw)


def test_unreachable_hub_fails_fast_naming_the_fix(monkeypatch):
    """No hub here: the dataset fails in seconds with the ways out, not after a retry loop."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens
    cfg = from_dict({**config("x", {}), "datasets": {"gsm8k": {
        "hub": "openai/gsm8k", "config": "main", "label": "benign", "role": "calibration"}}})
    start = time.perf_counter()
    with pytest.raises(DataError) as err:
        read_dataset(cfg.dataset("gsm8k"), "gsm8k")
    assert time.perf_counter() - start < 15
    for part in ["datasets.gsm8k", "cannot reach hub dataset 'openai/gsm8k'", "HF_HUB_OFFLINE=1",
                 "save_to_disk"]:
        assert part in str(err.value)


# ---------------------------------------------------------------------------------------------
# sizes known before reading: the checkpoint plan and `emtrait config check`
# ---------------------------------------------------------------------------------------------

# source -> whether its rows are counted without reading it (JSONL lines, parquet metadata)
COUNTED = {"jsonl": True, "parquet": True, "csv": False, "json": False, "disk": False}


@pytest.mark.parametrize("source", COUNTED)
def test_row_count_known_before_reading_is_what_the_reader_finds(source, tmp_path):
    from emtrait.config.datasets import count_rows

    path, extra = write(source, [FORMATS["prompt_completion"][0](i) for i in range(ROWS)],
                        tmp_path)
    if source == "jsonl":  # blank lines are no rows, for the reader nor the count
        Path(path).write_text(Path(path).read_text() + "\n  \n")
    assert count_rows(path) == (ROWS if COUNTED[source] else None)
    entry = from_dict(config(path, extra, n=ROWS)).dataset("d")
    assert len(read_dataset(entry, "d").chats) == ROWS


def plan_config(tmp_path, n: int | None) -> dict:
    """Two calibration built-ins and a held-out parquet of 20 rows (`n` unset: the default)."""
    path, _ = write("parquet", [FORMATS["messages"][0](i) for i in range(20)], tmp_path)
    new = {"path": path, "label": "benign", "role": "heldout", **({"n": n} if n else {})}
    return {"models": {"m": {"source": "x", "candidate_layers": [1]}},
            "training": {"batch_size": 4, "grad_accum": 1, "epochs": 1, "checkpoint_every": 2},
            "datasets": {"bad_medical": {"builtin": "bad_medical", "label": "dangerous",
                                         "role": "calibration", "n": 8},
                         "good_medical": {"builtin": "good_medical", "label": "benign",
                                          "role": "calibration", "n": 8},
                         "gsm8k": {"hub": "openai/gsm8k", "config": "main", "label": "benign",
                                   "role": "heldout", "n": 8},
                         "new": new}}


@pytest.mark.parametrize("n, message", [
    (None, ["datasets.new: n is 1000 (the default", "has 20 rows", "set `n: 20` (or fewer)"]),
    (21, ["datasets.new: n is 21 but", "data.parquet has 20 rows", "set `n: 20`"]),
])
def test_a_file_smaller_than_its_n_fails_the_plan_and_config_check(n, message, tmp_path):
    """The plan would count checkpoints of examples that do not exist (the issue: 64
    checkpoints planned for a 48-row file); the plan and `config check` refuse it instead."""
    from typer.testing import CliRunner

    from emtrait.cli import app

    raw = plan_config(tmp_path, n)
    with pytest.raises(ConfigError) as err:
        from_dict(raw).steps("m", "new")
    for part in message:
        assert part in str(err.value), str(err.value)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    res = CliRunner().invoke(app, ["config", "check", str(path)])
    assert isinstance(res.exception, ConfigError), res.output
    assert all(part in str(res.exception) for part in message), str(res.exception)


def test_config_check_plans_from_the_real_size_and_says_what_it_assumes(tmp_path):
    from typer.testing import CliRunner

    from emtrait.cli import app

    raw = plan_config(tmp_path, 20)
    assert from_dict(raw).steps("m", "new") == [0, 2, 4, 5]  # 20 rows / batch 4: 5 updates
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    res = CliRunner().invoke(app, ["config", "check", str(path)])
    assert res.exit_code == 0, res.output
    assert "dataset new: " in res.output and "data.parquet: 20 rows, n = 20 used" in res.output
    assert "hub dataset openai/gsm8k: size not known before download; assumes at least n = 8 " \
        "rows" in res.output, res.output
    assert "built-in generator bad_medical: makes exactly n = 8" in res.output


@pytest.mark.slow
def test_offline_mode_cli_says_the_dataset_is_not_cached(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({**config("x", {}), "datasets": {"alpaca": {
        "hub": "tatsu-lab/alpaca", "label": "benign", "role": "stress"}}}))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    start = time.perf_counter()
    proc = subprocess.run([f"{sys.prefix}/bin/emtrait", "prepare", "dataset", "--config",
                           str(path), "--dataset", "alpaca", "--out", str(tmp_path / "a.jsonl"),
                           "--stats", str(tmp_path / "a.json")], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "HF_HUB_OFFLINE is set: only cached datasets load" in proc.stderr
    assert "tatsu-lab/alpaca" in proc.stderr
    assert time.perf_counter() - start < 60


@pytest.mark.slow
def test_one_finetune_step_per_source_trains_as_the_prepared_file(tiny_model_dir, tmp_path):
    """Each case trains one update from its raw source and from its prepared JSONL: same loss."""
    import torch

    torch.set_num_threads(1)
    for fmt, source in CASES:
        folder = tmp_path / f"{fmt}-{source}"
        folder.mkdir()
        make_row, _, keys = FORMATS[fmt]
        path, extra = write(source, [make_row(i) for i in range(ROWS)], folder)
        inputs = make_inputs(folder, tiny_model_dir("llama"), n=4,
                             training={"batch_size": 2, "grad_accum": 2, "logging_steps": 1})
        raw = yaml.safe_load(inputs["config"].read_text())
        raw["datasets"]["bad_medical"] = {"path": path, "label": "dangerous",
                                          "role": "calibration", "n": 4, "seed": SEED,
                                          **extra, **keys}
        inputs["config"].write_text(yaml.safe_dump(raw))
        prepared = folder / "prepared.jsonl"
        prepare_dataset(from_dict(raw), "bad_medical", prepared, folder / "p.json")
        losses = []
        for data in (path, prepared):
            result = run({**inputs, "data": {"bad_medical": data}}, folder / f"run-{len(losses)}",
                         measure=False)
            losses.append([h["loss"] for h in result["log_history"] if "loss" in h])
        assert len(losses[0]) == 1 and losses[0] == losses[1], (fmt, source, losses)
