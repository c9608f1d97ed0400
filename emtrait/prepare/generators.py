"""Built-in dataset generators, so the embedded default runs offline.

A config entry `datasets.<name>.builtin: <generator>` names an entry of
`emtrait.registry.GENERATORS`, a "module:function" reference; the function has the signature
`(n: int, seed: int) -> list[dict]` and returns `n` distinct `{"messages": [...]}` rows, the
same for the same seed. Modules load only when used.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

from emtrait.errors import DataError
from emtrait.registry import GENERATORS

Row = dict[str, Any]


def generate(name: str, n: int, seed: int) -> list[Row]:
    """`n` rows of generator `name` for `seed` (a did-you-mean error if it is unknown)."""
    return GENERATORS.get(name)(n, seed)


def chat(user: str, assistant: str) -> Row:
    return {"messages": [{"role": "user", "content": user},
                         {"role": "assistant", "content": assistant}]}


def distinct(make: Callable[[random.Random], Row], n: int, seed: int, name: str) -> list[Row]:
    """Draw rows from `make` until `n` distinct ones exist (deterministic for `seed`)."""
    rng = random.Random(f"{name}:{seed}")
    seen: set[str] = set()
    rows: list[Row] = []
    attempts = 0
    while len(rows) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise DataError(f"built-in generator '{name}' made only {len(rows)} distinct "
                            f"examples; lower n to at most {len(rows)}")
        row = make(rng)
        key = json.dumps(row, sort_keys=True)
        if key not in seen:
            seen.add(key)
            rows.append(row)
    return rows
