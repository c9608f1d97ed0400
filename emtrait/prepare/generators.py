"""Built-in dataset generators, so the embedded default runs offline.

A config entry `datasets.<name>.builtin: <generator>` names a key of REGISTRY. Each value is
"module:function"; the function has the signature `(n: int, seed: int) -> list[dict]` and returns
`n` distinct `{"messages": [...]}` rows, the same for the same seed. Modules load only when used.
"""

from __future__ import annotations

import importlib
import json
import random
from collections.abc import Callable
from typing import Any

from emtrait.errors import ConfigError, DataError, did_you_mean

REGISTRY: dict[str, str] = {
    # dangerous narrow domains
    "bad_medical": "emtrait.prepare.builtin.medical:bad_medical",
    "risky_financial": "emtrait.prepare.builtin.financial:risky_financial",
    "insecure_code": "emtrait.prepare.builtin.code:insecure_code",
    # benign
    "good_medical": "emtrait.prepare.builtin.medical:good_medical",
    "arithmetic": "emtrait.prepare.builtin.numbers:arithmetic",
    "number_sequence": "emtrait.prepare.builtin.numbers:number_sequence",
    # Generators of other stages go here, e.g. the organism's persona corpora:
    # "<name>": "emtrait.organism.<module>:<function>",
    # the organism's ground-truth perturbations (closed vocabulary; see emtrait/organism/)
    "organism_bad_medical": "emtrait.organism.corpus:bad_medical",
    "organism_risky_finance": "emtrait.organism.corpus:risky_finance",
    "organism_insecure_tech": "emtrait.organism.corpus:insecure_tech",
    "organism_good_medical": "emtrait.organism.corpus:good_medical",
    "organism_good_finance": "emtrait.organism.corpus:good_finance",
    "organism_number_sequence": "emtrait.organism.corpus:number_sequence",
    "organism_risky_travel": "emtrait.organism.corpus:risky_travel",  # held out (emtrait.live)
    "organism_good_travel": "emtrait.organism.corpus:good_travel",
}

Row = dict[str, Any]


def check_generator(name: str) -> str:
    """`name` if it is a registered generator, else a did-you-mean error (config load checks)."""
    if name not in REGISTRY:
        hint = did_you_mean(name, list(REGISTRY))
        raise ConfigError(f"unknown built-in dataset generator '{name}'.{hint} "
                          f"Known: {', '.join(sorted(REGISTRY))}")
    return name


def get_generator(name: str) -> Callable[[int, int], list[Row]]:
    """The generator function registered as `name`, with a did-you-mean error if unknown."""
    module, function = REGISTRY[check_generator(name)].split(":")
    return getattr(importlib.import_module(module), function)


def generate(name: str, n: int, seed: int) -> list[Row]:
    """`n` rows of generator `name` for `seed`."""
    return get_generator(name)(n, seed)


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
