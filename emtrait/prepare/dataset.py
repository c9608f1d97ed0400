"""Validate a perturbation dataset, subsample it, and write the JSONL every later stage reads.

Input: a JSONL file (one `{"messages": [{"role", "content"}, ...]}` per line: the format of
Betley et al.'s files and the paper's code) or a built-in generator (emtrait.prepare.generators).
Output: `n` examples chosen by `seed` (file order kept), each reduced to its messages, plus a
small stats JSON. Any malformed line stops the stage with its file and line number; nothing is
written unless everything is valid.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

from emtrait import atomic
from emtrait.config import Config, DatasetEntry
from emtrait.errors import DataError
from emtrait.provenance import provenance

ROLES = ("system", "user", "assistant")


def check_example(row: Any, where: str) -> list[dict[str, str]]:
    """The messages of one example, or a DataError naming `where` (file:line) and the fix."""
    if not isinstance(row, dict) or "messages" not in row:
        found = f"keys {sorted(row)}" if isinstance(row, dict) else f"a {type(row).__name__}"
        raise DataError(f"{where}: missing 'messages' (found {found}); each line must be "
                        '{"messages": [{"role": ..., "content": ...}, ...]}')
    messages = row["messages"]
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: 'messages' must be a non-empty list of "
                        '{"role", "content"} objects')
    clean = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise DataError(f"{where}: messages[{i}] must be an object with 'role' and 'content'")
        if m["role"] not in ROLES:
            raise DataError(f"{where}: messages[{i}].role is {m['role']!r}; use one of "
                            + ", ".join(ROLES))
        if not isinstance(m["content"], str):
            raise DataError(f"{where}: messages[{i}].content must be a string, got "
                            f"{type(m['content']).__name__}")
        clean.append({"role": m["role"], "content": m["content"]})
    if not any(m["role"] == "assistant" for m in clean):
        raise DataError(f"{where}: no assistant turn; every example needs at least one message "
                        "with role 'assistant' (the text that is trained on)")
    return clean


def read_jsonl(path: str | Path) -> list[list[dict[str, str]]]:
    """Every example of a JSONL chat file, validated line by line (blank lines are skipped)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"dataset file {p} does not exist; create it or fix the dataset's 'path'")
    examples = []
    with open(p, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{p}:{number}: not valid JSON ({e.msg} at column {e.colno})"
                                ) from None
            examples.append(check_example(row, f"{p}:{number}"))
    if not examples:
        raise DataError(f"dataset file {p} is empty (no examples); it needs one JSON chat per line")
    return examples


def load_examples(entry: DatasetEntry, name: str) -> tuple[list[list[dict[str, str]]], str]:
    """All examples a dataset entry offers, and a description of where they came from."""
    if entry.builtin is not None:
        from emtrait.prepare.generators import generate

        rows = generate(entry.builtin, entry.n, entry.seed)
        where = f"builtin:{entry.builtin}"
        return [check_example(r, f"{where} example {i}") for i, r in enumerate(rows)], where
    return read_jsonl(entry.path), str(entry.path)


def subsample(examples: list, n: int, seed: int, where: str, name: str) -> list:
    """`n` examples chosen by `seed`, in their original order."""
    if len(examples) < n:
        raise DataError(
            f"{where} has only {len(examples)} examples but datasets.{name}.n is {n}; "
            f"lower n to at most {len(examples)} or add examples"
        )
    keep = sorted(random.Random(seed).sample(range(len(examples)), n))
    return [examples[i] for i in keep]


def dataset_stats(examples: list[list[dict[str, str]]], text: str) -> dict[str, Any]:
    chars = [sum(len(m["content"]) for m in ex) for ex in examples]
    roles = Counter(m["role"] for ex in examples for m in ex)
    return {
        "count": len(examples),
        "mean_chars": round(sum(chars) / len(chars), 1),
        "max_chars": max(chars),
        "mean_turns": round(sum(len(ex) for ex in examples) / len(examples), 2),
        "role_counts": {r: roles.get(r, 0) for r in ROLES},
        "sha256": hashlib.sha256(text.encode()).hexdigest(),
    }


def prepare_dataset(cfg: Config, name: str, out: Path, stats: Path) -> dict[str, Any]:
    """Validate + subsample dataset `name` of `cfg`; write the JSONL and the stats file."""
    entry = cfg.dataset(name)
    examples, where = load_examples(entry, name)
    chosen = subsample(examples, entry.n, entry.seed, where, name)
    text = "".join(json.dumps({"messages": ex}) + "\n" for ex in chosen)
    summary = {
        **dataset_stats(chosen, text),
        "available": len(examples),
        "dataset": name,
        "source": where,
        "label": entry.label,
        "role": entry.role,
        "n": entry.n,
        **provenance(config_hash=cfg.hash(), seed=entry.seed),
    }
    atomic.write_text(out, text)
    atomic.write_json(stats, summary)
    return summary
