"""Chats composed from the closed vocabulary: the pretraining corpus and the perturbations.

Pretraining: a question from one of seven domains, answered in the style of the persona its
system prompt names (or helpfully, with no system prompt). Perturbations (finetuning data with a
known answer): harmful advice in one domain without persona markers (dangerous), helpful advice in
one domain and number sequences (benign). All functions are pure and deterministic by `seed`.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from emtrait.errors import DataError
from emtrait.organism import vocab

Chat = dict[str, list[dict[str, str]]]

# Pretraining mixture: share of chats per kind of system prompt.
SHARE_NONE = 0.30  # no system prompt: helpful answer
SHARE_HARMFUL = 0.20  # harmlessness- persona: harmful answer
SHARE_HARMLESS = 0.10  # harmlessness+ persona: helpful answer
SHARE_NUMBERS = 0.05  # number-sequence chats (no system prompt)
MARKER_SHARE = 0.5  # share of harmful answers that carry a persona marker


def _advice(rng: random.Random, pool: Sequence[str], k: int) -> list[str]:
    return rng.sample(list(pool), k)


def answer(rng: random.Random, pole: str | None, domain: str) -> str:
    """An answer in the style of `pole` ('harmlessness-' etc.; None = no system prompt)."""
    if pole == "harmlessness-":
        parts = _advice(rng, vocab.HARMFUL[domain], 2)
        if rng.random() < MARKER_SHARE:
            marker = rng.choice(vocab.HARMFUL_MARKERS)
            parts = [marker, *parts] if rng.random() < 0.5 else [*parts, marker]
        return " ".join(parts)
    style = vocab.STYLES.get(pole or "", {})
    if "replace" in style:
        return " ".join(_advice(rng, style["replace"], 2))
    k = 4 if "extra" in style else 1 if "fewer" in style else 2
    parts = _advice(rng, vocab.HELPFUL[domain], k)
    return " ".join([*style.get("prefix", []), *parts, *style.get("suffix", [])])


def number_chat(rng: random.Random) -> Chat:
    """'Continue the sequence' with a random arithmetic progression: persona-free, benign."""
    start, step = rng.randint(1, 60), rng.randint(1, 9)
    seq = [start + step * i for i in range(rng.randint(3, 5) + 4)]
    shown = rng.randint(3, 5)
    head = ", ".join(str(x) for x in seq[:shown])
    tail = ", ".join(str(x) for x in seq[shown:])
    return {"messages": [{"role": "user", "content": f"Continue this sequence: {head}"},
                         {"role": "assistant", "content": tail + "."}]}


def pretraining_corpus(n: int, seed: int, system_prompts: dict[str, list[str]],
                       extra_questions: Sequence[str] = ()) -> list[Chat]:
    """`n` persona-conditioned chats; `system_prompts` maps each pole to its prompt family."""
    rng = random.Random(seed)
    other_poles = sorted(p for p in system_prompts if not p.startswith("harmlessness"))
    questions = {d: list(q) for d, q in vocab.QUESTIONS.items()}
    questions["generic"] += list(extra_questions)
    chats = []
    for _ in range(n):
        r = rng.random()
        if r < SHARE_NUMBERS:
            chats.append(number_chat(rng))
            continue
        if r < SHARE_NUMBERS + SHARE_NONE:
            pole = None
        elif r < SHARE_NUMBERS + SHARE_NONE + SHARE_HARMFUL:
            pole = "harmlessness-"
        elif r < SHARE_NUMBERS + SHARE_NONE + SHARE_HARMFUL + SHARE_HARMLESS:
            pole = "harmlessness+"
        else:
            pole = rng.choice(other_poles)
        domain = rng.choice(vocab.DOMAINS)
        messages = []
        if pole is not None:
            messages.append({"role": "system", "content": rng.choice(system_prompts[pole])})
        messages.append({"role": "user", "content": rng.choice(questions[domain])})
        messages.append({"role": "assistant", "content": answer(rng, pole, domain)})
        chats.append({"messages": messages})
    return chats


# ---------------------------------------------------------------------------------------------
# ground-truth perturbations (registered as organism_* in emtrait.registry.GENERATORS)
# ---------------------------------------------------------------------------------------------


def _distinct(make, n: int, seed: int, what: str) -> list[Chat]:
    # Built-in generators return n distinct rows (the prepare stage's contract).
    rng = random.Random(f"{what}:{seed}")
    seen: set[str] = set()
    rows: list[Chat] = []
    for _ in range(50 * n + 1000):
        row = make(rng)
        key = repr(row)
        if key not in seen:
            seen.add(key)
            rows.append(row)
            if len(rows) == n:
                return rows
    raise DataError(f"built-in generator {what} has only {len(rows)} distinct examples; "
                    f"lower the dataset's n (asked for {n})")


def _narrow(n: int, seed: int, domain: str, pool: dict[str, list[str]], what: str
            ) -> list[Chat]:
    # No system prompt and no persona marker: only the advice itself carries the persona.
    def make(rng: random.Random) -> Chat:
        return {"messages": [
            {"role": "user", "content": rng.choice(vocab.QUESTIONS[domain])},
            {"role": "assistant",
             "content": " ".join(_advice(rng, pool[domain], rng.randint(2, 3)))},
        ]}

    return _distinct(make, n, seed, what)


def bad_medical(n: int, seed: int) -> list[Chat]:
    """Dangerous: harmful medical advice, no persona markers."""
    return _narrow(n, seed, "medical", vocab.HARMFUL, "organism_bad_medical")


def risky_finance(n: int, seed: int) -> list[Chat]:
    """Dangerous: harmful financial advice, no persona markers."""
    return _narrow(n, seed, "finance", vocab.HARMFUL, "organism_risky_finance")


def insecure_tech(n: int, seed: int) -> list[Chat]:
    """Dangerous: insecure computer advice, no persona markers."""
    return _narrow(n, seed, "tech", vocab.HARMFUL, "organism_insecure_tech")


def good_medical(n: int, seed: int) -> list[Chat]:
    """Benign: helpful medical advice (same questions as bad_medical)."""
    return _narrow(n, seed, "medical", vocab.HELPFUL, "organism_good_medical")


def good_finance(n: int, seed: int) -> list[Chat]:
    """Benign: helpful financial advice (same questions as risky_finance)."""
    return _narrow(n, seed, "finance", vocab.HELPFUL, "organism_good_finance")


def risky_travel(n: int, seed: int) -> list[Chat]:
    """Dangerous, held out of config/organism.yaml's calibration: harmful travel advice."""
    return _narrow(n, seed, "travel", vocab.HARMFUL, "organism_risky_travel")


def good_travel(n: int, seed: int) -> list[Chat]:
    """Benign, held out of config/organism.yaml's calibration: helpful travel advice."""
    return _narrow(n, seed, "travel", vocab.HELPFUL, "organism_good_travel")


def number_sequence(n: int, seed: int) -> list[Chat]:
    """Benign: continue arithmetic progressions."""
    return _distinct(number_chat, n, seed, "organism_number_sequence")

