"""Every name a config can choose an implementation by, in one place, with one lookup.

A `Registry` maps names to entries and answers `names()`, `check(name)` (a did-you-mean
`ConfigError`) and `get(name)`. The six implementation registries below hold `Ref`s: a
"module:attribute" string that is imported only by `get`, so the config package checks names
(and a judge's modes) at load time without importing any stage module. A new selector,
generator, judge, choice rule, feature set or regressor is one entry here plus its function.

This is a core module: it imports nothing of emtrait but `errors`.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from emtrait.errors import ConfigError, did_you_mean

T = TypeVar("T")


@dataclass(frozen=True)
class Ref:
    """A lazily imported implementation, plus what config-load checks need to know of it."""

    target: str  # "package.module:attribute"
    about: str = ""  # what it does, one line (for docs and `emtrait config` help)
    modes: tuple[str, ...] = ()  # judges only: the behavior.judge.mode values it supports

    def load(self) -> Any:
        """Import the module and return the attribute."""
        module, attribute = self.target.split(":")
        return getattr(importlib.import_module(module), attribute)


class Registry(Generic[T]):
    """Named entries of one kind (`what`, e.g. "layer selector") chosen by config key `key`."""

    def __init__(self, what: str, key: str, entries: Mapping[str, T]) -> None:
        self.what, self.key, self._entries = what, key, dict(entries)

    def names(self) -> list[str]:
        """The registered names, in registration order."""
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def check(self, name: str, key: str | None = None, *, also: Iterable[str] = (),
              fix: str = "") -> str:
        """`name` if it is registered (or among `also`), else a ConfigError with did-you-mean.

        `key` names the config key at fault (default: the registry's; "" inside a pydantic
        validator, whose error already carries the location); `fix` is appended to the message.
        """
        extra = [a for a in also if a not in self._entries]
        if name in self._entries or name in extra:
            return name
        known = [*self._entries, *extra]
        where = self.key if key is None else key
        raise ConfigError(f"{where + ': ' if where else ''}no {self.what} '{name}'."
                          f"{did_you_mean(name, known)} Known: {sorted(known)}{fix}")

    def entry(self, name: str, key: str | None = None) -> T:
        """The entry registered as `name` (for a `Ref`: the reference, not yet imported)."""
        return self._entries[self.check(name, key)]

    def get(self, name: str, key: str | None = None) -> Any:
        """The implementation registered as `name`: a `Ref` is imported, other entries as is."""
        found = self.entry(name, key)
        return found.load() if isinstance(found, Ref) else found


# ------------------------------------------------------------------------ the six registries

SELECTORS: Registry[Ref] = Registry("layer selector", "layer_selector", {
    "steering": Ref("emtrait.traits.select:steering_scores",
                    "mean divergence of ±alpha-steered from unsteered greedy text (the paper's; "
                    "needs generation: slow on CPU)"),
    "probe": Ref("emtrait.traits.select:probe_scores",
                 "mean k-fold logistic-probe accuracy over the monitor traits (saturates at "
                 "1.00 when traits separate at every layer)"),
    "dprime": Ref("emtrait.traits.select:dprime_scores",
                  "mean held-out d' of projections on a direction fit on the other half of the "
                  "questions (keeps growing where probe accuracy saturates)"),
})

# `datasets.<name>.builtin`: functions `(n: int, seed: int) -> list[row]` returning n distinct
# `{"messages": [...]}` rows, the same for the same seed.
GENERATORS: Registry[Ref] = Registry("built-in dataset generator", "builtin", {
    # dangerous narrow domains
    "bad_medical": Ref("emtrait.prepare.builtin.medical:bad_medical"),
    "risky_financial": Ref("emtrait.prepare.builtin.financial:risky_financial"),
    "insecure_code": Ref("emtrait.prepare.builtin.code:insecure_code"),
    # benign
    "good_medical": Ref("emtrait.prepare.builtin.medical:good_medical"),
    "arithmetic": Ref("emtrait.prepare.builtin.numbers:arithmetic"),
    "number_sequence": Ref("emtrait.prepare.builtin.numbers:number_sequence"),
    # the organism's ground-truth perturbations (closed vocabulary; see emtrait/organism/)
    "organism_bad_medical": Ref("emtrait.organism.corpus:bad_medical"),
    "organism_risky_finance": Ref("emtrait.organism.corpus:risky_finance"),
    "organism_insecure_tech": Ref("emtrait.organism.corpus:insecure_tech"),
    "organism_good_medical": Ref("emtrait.organism.corpus:good_medical"),
    "organism_good_finance": Ref("emtrait.organism.corpus:good_finance"),
    "organism_number_sequence": Ref("emtrait.organism.corpus:number_sequence"),
    "organism_risky_travel": Ref("emtrait.organism.corpus:risky_travel"),  # held out (live)
    "organism_good_travel": Ref("emtrait.organism.corpus:good_travel"),
})

# `behavior.judge.kind`: each target is an emtrait.behavior.judges.JudgeKind.
JUDGES: Registry[Ref] = Registry("judge", "behavior.judge.kind", {
    "openai": Ref("emtrait.behavior.judges:OPENAI", "any OpenAI-compatible server",
                  ("logprob", "text")),
    "hf": Ref("emtrait.behavior.judges:HF", "a local transformers model", ("logprob",)),
    # the lexical judge scores directly; judge.mode does not change what it does
    "lexical": Ref("emtrait.behavior.judges:LEXICAL", "the organism's keyword judge",
                   ("logprob", "text")),
})

# `behavior.choice_rule`: functions (shift, margin, threshold) -> count of EM items.
CHOICE_RULES: Registry[Ref] = Registry("choice rule", "behavior.choice_rule", {
    "net_shift": Ref("emtrait.behavior.choice:net_shift_count"),
    "shift": Ref("emtrait.behavior.choice:shift_count"),
    "absolute": Ref("emtrait.behavior.choice:absolute_count"),
})

# `monitor.baselines` the monitor computes itself (a config's trait sets are feature sets too).
FEATURE_SETS: Registry[Ref] = Registry("feature set", "monitor.baselines", {
    "pc1": Ref("emtrait.monitor.features:pc1_features"),
    "loss": Ref("emtrait.monitor.features:loss_features"),
    "pca7": Ref("emtrait.monitor.features:pca7_features"),
    "sae": Ref("emtrait.monitor.features:sae_features"),
})

# `monitor.regressors`: functions seed -> a fresh, seeded scikit-learn regressor.
REGRESSORS: Registry[Ref] = Registry("regressor", "monitor.regressors", {
    "random_forest": Ref("emtrait.monitor.protocol:random_forest"),
    "ridge": Ref("emtrait.monitor.protocol:ridge"),
    "gradient_boosting": Ref("emtrait.monitor.protocol:gradient_boosting"),
})

# `models.<name>.source: embedded:<name>`: the models `emtrait prepare model` builds offline
# (their specs: emtrait.prepare.model.EMBEDDED, kept in step by tests/test_checks_config.py).
EMBEDDED_MODELS: Registry[Ref] = Registry("embedded model", "source", {
    "smollm2-135m-instruct": Ref("emtrait.prepare.model:EMBEDDED",
                                 "SmolLM2-135M-Instruct, converted from a PyPI wheel"),
})

# `builtin:<name>` files shipped with emtrait: the trait prompt set (traits.file), the free-form
# questions (behavior.questions) and the forced-choice items (behavior.choice_items).
BUILTIN_FILES: Registry[Ref] = Registry("built-in file", "builtin", {
    "emtrait": Ref("emtrait.traits.prompts:BUILTIN", "emtrait's own prompts and questions"),
})


def check_builtin(spec: str) -> str:
    """`spec` unless it is a `builtin:<name>` that emtrait does not ship (did-you-mean)."""
    if spec.startswith("builtin:"):
        BUILTIN_FILES.check(spec.split(":", 1)[1], "",
                            fix=" (write builtin:<name>, or give a file path)")
    return spec


def check_judge(kind: str, mode: str) -> str:
    """Config-load check: judge `kind` exists and supports `mode` (fails before any job runs)."""
    modes = JUDGES.entry(kind).modes
    if mode not in modes:
        raise ConfigError(f"behavior.judge.mode '{mode}' is not supported by judge kind '{kind}'"
                          f"; use one of {list(modes)}")
    return kind


def check_feature_set(name: str, trait_sets: Iterable[str], key: str = "monitor.baselines") -> str:
    """`name` if it is a registered feature set or one of `trait_sets`, else did-you-mean."""
    sets = sorted(set(trait_sets))
    return FEATURE_SETS.check(
        name, key, also=sets, fix=f" (the feature sets {', '.join(FEATURE_SETS)} and the trait "
        f"sets; traits.sets defines only {sets}: add a set there to extract it and compare it as a "
        "baseline)")
