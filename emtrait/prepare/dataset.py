"""Prepare a perturbation dataset: read it once, validated and subsampled, into the JSONL every
later stage reads.

Reading, format recognition and the one subsampling rule live in emtrait.datasets (the finetune
uses the same function on a raw file). Output: the `n` chosen examples, each reduced to its
`{"messages": [...]}`, plus a small stats JSON. A malformed row stops the stage naming its file
and line (or row); nothing is written unless everything read is valid.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any

from emtrait import atomic
from emtrait.config import Config
from emtrait.datasets import ROLES, check_messages, read_dataset
from emtrait.errors import DataError
from emtrait.provenance import provenance


def check_example(row: Any, where: str) -> list[dict[str, str]]:
    """The messages of one `{"messages": [...]}` row, or a DataError naming `where` and the fix."""
    if not isinstance(row, dict) or "messages" not in row:
        found = f"keys {sorted(row)}" if isinstance(row, dict) else f"a {type(row).__name__}"
        raise DataError(f"{where}: missing 'messages' (found {found}); each line must be "
                        '{"messages": [{"role": ..., "content": ...}, ...]}')
    return check_messages(row["messages"], where)


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
    """Read dataset `name` of `cfg` (validated, subsampled); write the JSONL and the stats file."""
    entry = cfg.dataset(name)
    examples = read_dataset(entry, name)
    text = "".join(json.dumps({"messages": ex}) + "\n" for ex in examples.chats)
    summary = {
        **dataset_stats(examples.chats, text),
        "available": examples.available,
        "dataset": name,
        "source": examples.where,
        "select": entry.select,
        "label": entry.label,
        "role": entry.role,
        "n": entry.n,
        **provenance(config_hash=cfg.hash(), seed=entry.seed),
    }
    atomic.write_text(out, text)
    atomic.write_json(stats, summary)
    return summary
