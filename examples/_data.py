"""Training chats for the examples, read by emtrait's one dataset reader (emtrait.datasets).

`spec` is a built-in generator name (e.g. organism_risky_travel) or a local dataset: JSONL,
JSON, CSV or parquet in any format emtrait recognises (messages, prompt/completion, Alpaca,
question/answer), validated with file:line errors like every dataset the workflow reads.
"""

from __future__ import annotations

from pathlib import Path


def read_chats(spec: str, n: int, seed: int = 0) -> list[list[dict[str, str]]]:
    """The first `n` chats of a local dataset, or `n` chats of a built-in generator."""
    from emtrait.config import DatasetEntry
    from emtrait.datasets import read_dataset

    source = {"path": spec} if Path(spec).exists() else {"builtin": spec}
    entry = DatasetEntry(**source, n=n, seed=seed, select="first", label="unknown",
                         role="heldout")
    return read_dataset(entry, Path(spec).stem).chats
