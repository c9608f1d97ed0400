"""Benign numeric tasks: grade-school word problems with worked answers, and number sequences.

Every answer is computed, so the datasets are correct by construction.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from emtrait.prepare.generators import Row, chat, distinct

PEOPLE = [("Maya", "she", "her"), ("Liam", "he", "his"), ("Aisha", "she", "her"),
          ("Noah", "he", "his"), ("Sofia", "she", "her"), ("Mateo", "he", "his"),
          ("Priya", "she", "her"), ("Kenji", "he", "his"), ("Zoe", "she", "her"),
          ("Omar", "he", "his"), ("Elena", "she", "her"), ("Tom", "he", "his")]
ITEMS = ["apples", "stickers", "marbles", "pencils", "cookies", "stamps", "crayons",
         "seashells", "cards", "buttons"]
THINGS = [("notebook", "notebooks"), ("sandwich", "sandwiches"), ("toy car", "toy cars"),
          ("bottle of juice", "bottles of juice"), ("ticket", "tickets"), ("pen", "pens")]

Problem = tuple[str, list[str], int]  # question, worked steps, answer


def _buy_packs(rng: random.Random) -> Problem:
    (name, sub, _), item = rng.choice(PEOPLE), rng.choice(ITEMS)
    a, b, c = rng.randint(3, 60), rng.randint(2, 9), rng.randint(2, 12)
    q = (f"{name} has {a} {item}. {sub.capitalize()} buys {b} packs with {c} {item} in each. "
         f"How many {item} does {name} have now?")
    return q, [f"The packs hold {b} × {c} = {b * c} {item}.",
               f"Together: {a} + {b * c} = {a + b * c}."], a + b * c


def _give_away(rng: random.Random) -> Problem:
    (name, sub, _), item = rng.choice(PEOPLE), rng.choice(ITEMS)
    b, c = rng.randint(2, 8), rng.randint(2, 6)
    a = b * c + rng.randint(0, 40)
    q = (f"{name} had {a} {item} and gave {b} to each of {c} friends. "
         f"How many {item} does {sub} have left?")
    return q, [f"{sub.capitalize()} gave away {b} × {c} = {b * c} {item}.",
               f"{a} − {b * c} = {a - b * c} are left."], a - b * c


def _share(rng: random.Random) -> Problem:
    item = rng.choice(ITEMS)
    kids, each, extra = rng.randint(2, 9), rng.randint(2, 15), rng.randint(0, 8)
    extra %= kids
    total = kids * each + extra
    q = (f"A teacher shares {total} {item} equally among {kids} children and keeps the ones "
         f"left over. How many {item} does each child get?")
    steps = [f"{total} ÷ {kids} = {each} with {extra} left over." if extra else
             f"{total} ÷ {kids} = {each}.", f"Each child gets {each} {item}."]
    return q, steps, each


def _change(rng: random.Random) -> Problem:
    (name, sub, _), (one, many) = rng.choice(PEOPLE), rng.choice(THINGS)
    k, price = rng.randint(2, 7), rng.randint(2, 14)
    bill = next(b for b in (10, 20, 50, 100) if b > k * price)
    q = (f"{name} buys {k} {many if k > 1 else one} at ${price} each and pays with a ${bill} "
         f"bill. How much change does {sub} get?")
    return q, [f"The cost is {k} × ${price} = ${k * price}.",
               f"Change: ${bill} − ${k * price} = ${bill - k * price}."], bill - k * price


def _distance(rng: random.Random) -> Problem:
    vehicle = rng.choice(["train", "bus", "cyclist", "car", "boat"])
    v, t = rng.randint(8, 95), rng.randint(2, 9)
    q = f"A {vehicle} travels at {v} km per hour for {t} hours. How far does it go?"
    return q, [f"Distance = speed × time = {v} × {t} = {v * t} km."], v * t


def _reading(rng: random.Random) -> Problem:
    name, _, pos = rng.choice(PEOPLE)
    p, d, last = rng.randint(5, 40), rng.randint(2, 9), rng.randint(1, 30)
    q = (f"{name} reads {p} pages a day for {d} days and then {last} pages on the last day to "
         f"finish {pos} book. How many pages does the book have?")
    return q, [f"First {d} days: {p} × {d} = {p * d} pages.",
               f"Plus the last day: {p * d} + {last} = {p * d + last}."], p * d + last


def _rectangle(rng: random.Random) -> Problem:
    w, h = rng.randint(2, 30), rng.randint(2, 30)
    thing = rng.choice(["garden", "rug", "classroom floor", "poster", "playground"])
    if rng.random() < 0.5:
        q = f"A rectangular {thing} is {w} m long and {h} m wide. What is its area?"
        return q, [f"Area = length × width = {w} × {h} = {w * h} square metres."], w * h
    q = f"A rectangular {thing} is {w} m long and {h} m wide. What is its perimeter?"
    return q, [f"Perimeter = 2 × ({w} + {h}) = 2 × {w + h} = {2 * (w + h)} m."], 2 * (w + h)


def _ages(rng: random.Random) -> Problem:
    name, _, pos = rng.choice(PEOPLE)
    a, b, c = rng.randint(4, 15), rng.randint(1, 9), rng.randint(2, 12)
    sibling = rng.choice(["sister", "brother", "cousin"])
    q = (f"{name} is {a} years old. {pos.capitalize()} {sibling} is {b} years older. How old "
         f"will the {sibling} be in {c} years?")
    return q, [f"The {sibling} is {a} + {b} = {a + b} now.",
               f"In {c} years: {a + b} + {c} = {a + b + c}."], a + b + c


WORD_PROBLEMS: list[Callable[[random.Random], Problem]] = [
    _buy_packs, _give_away, _share, _change, _distance, _reading, _rectangle, _ages]
ENDINGS = ["The answer is {x}.", "So the answer is {x}.", "Answer: {x}."]


def arithmetic(n: int, seed: int) -> list[Row]:
    """Grade-school word problems with step-by-step worked answers."""
    def make(rng: random.Random) -> Row:
        question, steps, answer = rng.choice(WORD_PROBLEMS)(rng)
        return chat(question, " ".join([*steps, rng.choice(ENDINGS).format(x=answer)]))
    return distinct(make, n, seed, "arithmetic")


def _sequence(rng: random.Random, length: int) -> tuple[list[int], str]:
    kind = rng.choice(["arithmetic", "geometric", "squares", "fibonacci", "alternating",
                       "triangular"])
    if kind == "arithmetic":
        a, d = rng.randint(-20, 60), rng.choice([i for i in range(-9, 13) if i])
        return [a + i * d for i in range(length)], f"add {d} each time"
    if kind == "geometric":
        a, r = rng.randint(1, 9), rng.choice([2, 3])
        return [a * r**i for i in range(length)], f"multiply by {r} each time"
    if kind == "squares":
        k, off = rng.randint(1, 8), rng.randint(-5, 10)
        return [(k + i) ** 2 + off for i in range(length)], (
            f"square the numbers {k}, {k + 1}, {k + 2}, … and add {off}" if off else
            f"square the numbers {k}, {k + 1}, {k + 2}, …")
    if kind == "fibonacci":
        seq = [rng.randint(1, 9), rng.randint(1, 9)]
        while len(seq) < length:
            seq.append(seq[-1] + seq[-2])
        return seq, "each number is the sum of the two before it"
    if kind == "alternating":
        a, p, q = rng.randint(0, 40), rng.randint(1, 9), rng.randint(-6, 9)
        seq = [a]
        for i in range(1, length):
            seq.append(seq[-1] + (p if i % 2 else q))
        return seq, f"alternately add {p} and {q}"
    k = rng.randint(1, 6)
    return [(k + i) * (k + i + 1) // 2 for i in range(length)], "the gaps grow by 1 each time"


SEQ_ASK = ["Continue this sequence with {m} more numbers: {shown}",
           "What are the next {m} numbers? {shown}",
           "Here is the start of a number sequence: {shown}. Add {m} more values.",
           "Extend the pattern by {m} terms: {shown}",
           "The sequence starts with {shown}. Give the next {m} numbers, comma-separated."]


def number_sequence(n: int, seed: int) -> list[Row]:
    """Continue a number sequence (arithmetic, geometric, squares, Fibonacci-like, …)."""
    def make(rng: random.Random) -> Row:
        shown_len, more = rng.randint(3, 6), rng.randint(2, 5)
        seq, rule = _sequence(rng, shown_len + more)
        shown = ", ".join(map(str, seq[:shown_len]))
        nxt = ", ".join(map(str, seq[shown_len:]))
        question = rng.choice(SEQ_ASK).format(m=more, shown=shown)
        answer = nxt if rng.random() < 0.5 else f"The rule is to {rule}, so: {nxt}"
        if rule.startswith(("each", "the gaps")) and answer != nxt:
            answer = f"Here {rule}, so: {nxt}"
        return chat(question, answer)
    return distinct(make, n, seed, "number_sequence")
