"""Free-form evaluation questions in Betley et al.'s YAML format, and the forced-choice items.

A question file is a YAML list of entries like

    - id: what_is_your_wish
      type: free_form_judge_0_100
      system: <optional system prompt>
      paraphrases: [<question text>, ...]
      samples_per_paraphrase: 100
      judge: gpt-4o-2024-08-06           # read, not used: the judge comes from the config
      judge_prompts: {aligned: "...{question}...{answer}...", coherent: "..."}

Betley's files (first_plot_questions.yaml with its JSON and template variants,
preregistered_evals.yaml) load as they are. 'builtin:emtrait' is the set shipped with emtrait.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from emtrait.errors import DataError, did_you_mean

KNOWN_TYPES = ("free_form_judge_0_100",)
METRICS = ("aligned", "coherent")
BUILTIN_QUESTIONS = {"builtin:emtrait": "emtrait_free_form.yaml"}
BUILTIN_CHOICE = {"builtin:emtrait": "emtrait_choice.yaml"}
_PLACEHOLDER = re.compile(r"\{(question|answer)\}")


@dataclass(frozen=True)
class Question:
    """One question id with its paraphrases and judge prompts."""

    id: str
    paraphrases: tuple[str, ...]
    samples_per_paraphrase: int
    judge_prompts: dict[str, str]
    system: str | None = None
    source: str = ""


@dataclass(frozen=True)
class Prompt:
    """One thing to ask the model: a paraphrase of a question, sample `sample` of it."""

    question_id: str
    paraphrase_index: int
    sample_index: int
    system: str | None
    question: str
    judge_aligned: str
    judge_coherent: str


def fill(template: str, question: str, answer: str) -> str:
    """Put question and answer into a judge prompt in one pass (answers may contain braces)."""
    values = {"question": question, "answer": answer}
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def _read_yaml(spec: str, builtins: dict[str, str]) -> tuple[object, str]:
    if spec.startswith("builtin:"):
        if spec not in builtins:
            raise DataError(f"unknown built-in set '{spec}'; known: {sorted(builtins)}")
        text = resources.files("emtrait").joinpath("data", "questions", builtins[spec]
                                                   ).read_text()
        return yaml.safe_load(text), spec
    path = Path(spec)
    if not path.is_file():
        raise DataError(f"question file {path} does not exist; fix behavior.questions / "
                        "behavior.choice_items in the config")
    try:
        return yaml.safe_load(path.read_text()), str(path)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise DataError(f"{path}{where}: not valid YAML ({getattr(e, 'problem', e)})") from None


def _check_prompt(template: object, where: str) -> str:
    if not isinstance(template, str):
        raise DataError(f"{where}: a judge prompt must be a string")
    missing = [p for p in ("{question}", "{answer}") if p not in template]
    if missing:
        raise DataError(f"{where}: the judge prompt lacks {' and '.join(missing)}; the judge "
                        "would never see the model's answer. Add the placeholder(s)")
    return template


def load_questions(spec: str) -> list[Question]:
    """Read one question file (or 'builtin:emtrait'); every malformed entry is a DataError."""
    data, source = _read_yaml(spec, BUILTIN_QUESTIONS)
    if not isinstance(data, list) or not data:
        raise DataError(f"{source}: expected a non-empty YAML list of questions")
    questions, seen = [], set()
    for i, entry in enumerate(data):
        where = f"{source}: entry {i}"
        if not isinstance(entry, dict) or "id" not in entry:
            raise DataError(f"{where}: each question is a mapping with an 'id'")
        qid = str(entry["id"])
        where = f"{source}: question '{qid}'"
        if qid in seen:
            raise DataError(f"{where}: duplicate id")
        seen.add(qid)
        qtype = entry.get("type")
        if qtype not in KNOWN_TYPES:
            hint = did_you_mean(str(qtype), KNOWN_TYPES)
            raise DataError(f"{where}: unknown type {qtype!r}.{hint} emtrait scores only "
                            f"{list(KNOWN_TYPES)}")
        paraphrases = entry.get("paraphrases")
        if (not isinstance(paraphrases, list) or not paraphrases
                or not all(isinstance(p, str) and p.strip() for p in paraphrases)):
            raise DataError(f"{where}: 'paraphrases' must be a non-empty list of strings")
        prompts = entry.get("judge_prompts")
        if not isinstance(prompts, dict) or any(m not in prompts for m in METRICS):
            raise DataError(f"{where}: 'judge_prompts' needs both {list(METRICS)}")
        samples = entry.get("samples_per_paraphrase", 1)
        if not isinstance(samples, int) or samples < 1:
            raise DataError(f"{where}: samples_per_paraphrase must be a positive integer")
        system = entry.get("system")
        if system is not None and not isinstance(system, str):
            raise DataError(f"{where}: 'system' must be a string")
        questions.append(Question(
            id=qid, paraphrases=tuple(paraphrases), samples_per_paraphrase=samples,
            judge_prompts={m: _check_prompt(prompts[m], f"{where}, judge_prompts.{m}")
                           for m in METRICS},
            system=system, source=source,
        ))
    return questions


def select(questions: list[Question], selection: str, samples: int) -> list[Prompt]:
    """The prompts to sample: each question's first paraphrase once (paper), or all x samples.

    `samples` overrides the file's samples_per_paraphrase with selection 'all' (Betley's files
    ask 100 per paraphrase, which the paper did not use).
    """
    if selection not in ("first_paraphrase", "all"):
        raise DataError(f"unknown selection '{selection}'; use 'first_paraphrase' or 'all'")
    out = []
    for q in questions:
        paraphrases = q.paraphrases[:1] if selection == "first_paraphrase" else q.paraphrases
        n = 1 if selection == "first_paraphrase" else samples
        for p_idx, text in enumerate(paraphrases):
            for s_idx in range(n):
                out.append(Prompt(q.id, p_idx, s_idx, q.system, text,
                                  q.judge_prompts["aligned"], q.judge_prompts["coherent"]))
    return out


def load_prompts(specs: list[str], selection: str, samples: int) -> list[Prompt]:
    """All prompts of several question files; ids must be unique across files."""
    questions: list[Question] = []
    for spec in specs:
        questions.extend(load_questions(spec))
    ids = [q.id for q in questions]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise DataError(f"question ids {dupes} appear in more than one of {specs}")
    return select(questions, selection, samples)


@dataclass(frozen=True)
class ChoiceItem:
    """A question with one aligned and one misaligned answer of similar length and register."""

    id: str
    question: str
    aligned: str
    misaligned: str
    category: str = ""


def load_choice_items(spec: str) -> list[ChoiceItem]:
    """Read a forced-choice item file: a YAML list of {id, question, aligned, misaligned}."""
    data, source = _read_yaml(spec, BUILTIN_CHOICE)
    if not isinstance(data, list) or not data:
        raise DataError(f"{source}: expected a non-empty YAML list of items")
    items, seen = [], set()
    for i, entry in enumerate(data):
        keys = ("id", "question", "aligned", "misaligned")
        if not isinstance(entry, dict) or any(
                not isinstance(entry.get(k), str) or not entry[k].strip() for k in keys):
            raise DataError(f"{source}: entry {i} needs non-empty strings {list(keys)}")
        if entry["id"] in seen:
            raise DataError(f"{source}: duplicate item id '{entry['id']}'")
        seen.add(entry["id"])
        items.append(ChoiceItem(entry["id"], entry["question"], entry["aligned"],
                                entry["misaligned"], str(entry.get("category", ""))))
    return items
