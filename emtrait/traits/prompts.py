"""Trait prompt sets: the contrasting system prompts, extraction questions and eval prompts.

One loader reads two formats, so a user can reproduce the paper by pointing `traits.file` at its
reference `configs/traits.yaml`:

- emtrait's own (`format: emtrait/1`, shipped as `builtin:emtrait`): traits{name: {description,
  positive: [...], negative: [...]}}, questions [...], eval_prompts {category: [...]};
- the paper reference format: traits{name: {description, positive_label, negative_label,
  positive_system_prompts, negative_system_prompts}}, questions, eval_prompts {category: [...]}.

Both become the same `PromptSet`; its `hash` covers only the content that changes activations.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from emtrait.errors import DataError
from emtrait.provenance import stable_hash

BUILTIN = {"emtrait": "emtrait.yaml"}
EMTRAIT_FORMAT = "emtrait/1"


@dataclass(frozen=True)
class Trait:
    """One trait: system prompts that push towards it (`positive`) and away from it."""

    name: str
    description: str
    positive: list[str]
    negative: list[str]


@dataclass(frozen=True)
class EvalPrompt:
    """A user-only prompt measured at every checkpoint."""

    category: str
    text: str


@dataclass(frozen=True)
class PromptSet:
    """Everything extraction and measurement need from a trait file."""

    traits: dict[str, Trait]
    questions: list[str]
    eval_prompts: list[EvalPrompt]
    source: str = ""
    format: str = EMTRAIT_FORMAT
    hash: str = field(default="")

    def subset(self, names: list[str], set_name: str = "traits.sets") -> list[Trait]:
        """The named traits in order; an unknown name is an error listing the known ones."""
        missing = [n for n in names if n not in self.traits]
        if missing:
            import difflib

            hints = [f"'{m}' (did you mean '{c[0]}'?)" if (c := difflib.get_close_matches(
                m, list(self.traits), n=1)) else f"'{m}'" for m in missing]
            raise DataError(
                f"{set_name} names traits {', '.join(hints)} that {self.source} does not define; "
                f"known traits: {sorted(self.traits)}"
            )
        return [self.traits[n] for n in names]


def _read(spec: str) -> tuple[str, Any]:
    if spec.startswith("builtin:"):
        name = spec.split(":", 1)[1]
        if name not in BUILTIN:
            raise DataError(
                f"unknown built-in prompt set '{spec}'; known: "
                f"{', '.join('builtin:' + k for k in BUILTIN)} (or give a file path)"
            )
        text = resources.files("emtrait").joinpath("data", "prompts", BUILTIN[name]).read_text()
        return spec, yaml.safe_load(text)
    path = Path(spec)
    if not path.is_file():
        raise DataError(
            f"prompt-set file {path} does not exist; set traits.file to 'builtin:emtrait' "
            "or to an existing YAML file"
        )
    try:
        return str(path), yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise DataError(f"{path}{where}: not valid YAML ({getattr(e, 'problem', e)})") from None


def _strings(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise DataError(f"{where} must be a list of non-empty strings")
    return [v.strip() for v in value]


def _detect(data: Any, source: str) -> str:
    if not isinstance(data, dict) or not isinstance(data.get("traits"), dict):
        raise DataError(
            f"{source}: not a trait prompt set in either known format; expected a mapping with "
            "'traits' (name -> prompts), 'questions' and 'eval_prompts' (emtrait's 'format: "
            "emtrait/1' or the paper's configs/traits.yaml)"
        )
    if data.get("format") == EMTRAIT_FORMAT:
        return "emtrait"
    entries = [t for t in data["traits"].values() if isinstance(t, dict)]
    if entries and all("positive_system_prompts" in t or "negative_system_prompts" in t
                       for t in entries):
        return "paper"
    if "format" in data:
        raise DataError(f"{source}: unknown format '{data['format']}' (known: {EMTRAIT_FORMAT})")
    raise DataError(
        f"{source}: traits are in neither known format; emtrait's needs 'format: "
        f"{EMTRAIT_FORMAT}' and positive/negative lists, the paper's needs "
        "positive_system_prompts/negative_system_prompts per trait"
    )


def parse_prompt_set(data: Any, source: str = "prompt set") -> PromptSet:
    """Validate parsed YAML in either format into a PromptSet (errors name the key at fault)."""
    kind = _detect(data, source)
    pos_key, neg_key = (("positive", "negative") if kind == "emtrait"
                        else ("positive_system_prompts", "negative_system_prompts"))
    traits: dict[str, Trait] = {}
    for name, entry in data["traits"].items():
        where = f"{source}: traits.{name}"
        if not isinstance(entry, dict):
            raise DataError(f"{where} must be a mapping with {pos_key} and {neg_key}")
        for key in (pos_key, neg_key):
            if not entry.get(key):
                raise DataError(
                    f"{where}.{key} is missing or empty; a direction needs system prompts on "
                    "both sides (add at least one; the paper uses 5)"
                )
        trait = Trait(
            name=str(name), description=str(entry.get("description", "")),
            positive=_strings(entry[pos_key], f"{where}.{pos_key}"),
            negative=_strings(entry[neg_key], f"{where}.{neg_key}"),
        )
        both = sorted(set(trait.positive) & set(trait.negative))
        if both:
            raise DataError(f"{where}: {both} appear among both {pos_key} and {neg_key}; "
                            "each system prompt belongs to one side")
        traits[str(name)] = trait
    if not traits:
        raise DataError(f"{source}: 'traits' is empty")
    if not data.get("questions"):
        raise DataError(
            f"{source}: 'questions' is missing or empty; extraction pairs every system prompt "
            "with each question (the paper uses 30)"
        )
    questions = _strings(data["questions"], f"{source}: questions")
    evals = data.get("eval_prompts") or {}
    if not isinstance(evals, dict):
        raise DataError(f"{source}: eval_prompts must map a category to a list of prompts")
    eval_prompts = [EvalPrompt(str(cat), text) for cat, texts in evals.items()
                    for text in _strings(texts, f"{source}: eval_prompts.{cat}")]
    content = {"traits": {n: [t.positive, t.negative] for n, t in traits.items()},
               "questions": questions, "eval_prompts": [[e.category, e.text] for e in eval_prompts]}
    return PromptSet(traits=traits, questions=questions, eval_prompts=eval_prompts,
                     source=source, format=kind, hash=stable_hash(content))


def load_prompt_set(spec: str) -> PromptSet:
    """Load 'builtin:emtrait' or a YAML file in emtrait's or the paper's format."""
    source, data = _read(spec)
    return parse_prompt_set(data, source)
