"""Training chats for the examples: a JSONL file of {"messages": [...]} or a built-in generator."""

from __future__ import annotations

import json
from pathlib import Path


def read_chats(spec: str, n: int, seed: int = 0) -> list[list[dict[str, str]]]:
    """`spec` is a .jsonl path or an emtrait built-in generator (e.g. organism_risky_travel)."""
    if spec.endswith(".jsonl"):
        rows = [json.loads(line) for line in Path(spec).read_text().splitlines() if line.strip()]
        return [r["messages"] for r in rows[:n]]
    from emtrait.prepare.generators import generate

    return [r["messages"] for r in generate(spec, n, seed=seed)]
