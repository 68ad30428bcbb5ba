"""Seeded grade-school arithmetic word problems with reference solutions in several styles.

The demo needs a task whose answers can be checked exactly (so reward AUC and accuracy mean
something) and whose teacher answers differ in style (so the rubric cannot just copy one). Every
problem has a numeric ground truth and three step-by-step solutions written differently.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from pydantic import BaseModel

from ropd.data.prompts import prompt_id

NAMES = ["Mia", "Omar", "Lena", "Ravi", "Zoe", "Kofi", "Ines", "Tariq", "Ana", "Sam", "Yuki", "Leo"]
ITEMS = ["pencils", "apples", "stickers", "marbles", "cookies", "cards", "shells", "stamps", "books", "coins"]


class Problem(BaseModel):
    question: str
    answer: int
    solutions: list[str]


Template = Callable[[random.Random], Problem]


def _styles(steps: list[tuple[str, str]], answer: int, unit: str) -> list[str]:
    """Three renderings of the same steps: labelled lines, prose, and bare equations."""
    labelled = "\n".join(f"{label}: {eq}" for label, eq in steps) + f"\nAnswer: {answer}"
    prose = " ".join(f"{label[0].upper() + label[1:]} is {eq}." for label, eq in steps) + \
        f" So the result is {answer} {unit}.\nAnswer: {answer}"
    bare = "\n".join(eq for _, eq in steps) + f"\nAnswer: {answer}"
    return [labelled, prose, bare]


def _packs(rng: random.Random) -> Problem:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    packs, per, given = rng.randint(2, 9), rng.randint(4, 25), rng.randint(1, 15)
    total = packs * per
    given = min(given, total - 1)
    q = (f"{name} buys {packs} packs of {item} with {per} {item} in each pack. {name} gives {given} {item} "
         f"to a friend. How many {item} does {name} have left?")
    steps = [("the total bought", f"{packs} * {per} = {total}"), ("what is left", f"{total} - {given} = {total - given}")]
    return Problem(question=q, answer=total - given, solutions=_styles(steps, total - given, item))


def _trip(rng: random.Random) -> Problem:
    s1, h1, s2, h2 = rng.randint(20, 90), rng.randint(1, 6), rng.randint(20, 90), rng.randint(1, 6)
    d1, d2 = s1 * h1, s2 * h2
    q = (f"A train travels at {s1} km per hour for {h1} hours, then at {s2} km per hour for {h2} hours. "
         "How many kilometres does it travel in total?")
    steps = [("the first part", f"{s1} * {h1} = {d1}"), ("the second part", f"{s2} * {h2} = {d2}"),
             ("the total distance", f"{d1} + {d2} = {d1 + d2}")]
    return Problem(question=q, answer=d1 + d2, solutions=_styles(steps, d1 + d2, "km"))


def _boxes(rng: random.Random) -> Problem:
    per_box, boxes, trays, per_tray = rng.randint(3, 8), rng.randint(3, 12), rng.randint(2, 6), rng.randint(10, 30)
    made = trays * per_tray
    broken = made - per_box * boxes
    if broken < 0:
        return _boxes(rng)
    q = (f"A baker makes {trays} trays of {per_tray} cookies. {broken} cookies break. He packs the rest in "
         f"boxes of {per_box}. How many boxes does he fill?")
    steps = [("the cookies baked", f"{trays} * {per_tray} = {made}"), ("the unbroken cookies",
             f"{made} - {broken} = {made - broken}"), ("the boxes", f"{made - broken} / {per_box} = {boxes}")]
    return Problem(question=q, answer=boxes, solutions=_styles(steps, boxes, "boxes"))


def _weekly(rng: random.Random) -> Problem:
    name = rng.choice(NAMES)
    per_day, days, extra = rng.randint(5, 40), rng.randint(2, 6), rng.randint(5, 60)
    base = per_day * days
    q = (f"{name} reads {per_day} pages a day for {days} days and {extra} pages on the next day. "
         "How many pages does {name} read in total?").replace("{name}", name)
    steps = [("the pages over the first days", f"{per_day} * {days} = {base}"),
             ("the total", f"{base} + {extra} = {base + extra}")]
    return Problem(question=q, answer=base + extra, solutions=_styles(steps, base + extra, "pages"))


def _share(rng: random.Random) -> Problem:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    friends, each, keep = rng.randint(2, 8), rng.randint(2, 12), rng.randint(1, 20)
    given = friends * each
    q = (f"{name} gives {each} {item} to each of {friends} friends and keeps {keep} {item}. "
         f"How many {item} did {name} have at the start?")
    steps = [("the amount given away", f"{friends} * {each} = {given}"),
             ("the starting amount", f"{given} + {keep} = {given + keep}")]
    return Problem(question=q, answer=given + keep, solutions=_styles(steps, given + keep, item))


TEMPLATES: list[Template] = [_packs, _trip, _boxes, _weekly, _share]


def generate(n: int, seed: int, exclude: set[str] | None = None) -> list[Problem]:
    """`n` distinct problems, deterministic in `seed`; questions in `exclude` are skipped (train/eval split)."""
    rng = random.Random(seed)
    seen = set(exclude or ())
    out: list[Problem] = []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise RuntimeError(f"could not generate {n} distinct problems")
        p = rng.choice(TEMPLATES)(rng)
        if p.question not in seen:
            seen.add(p.question)
            out.append(p)
    return out


def as_rows(problems: list[Problem], split: str) -> list[dict]:
    """Rows of the prompts table (design §3)."""
    return [{"prompt_id": prompt_id([{"role": "user", "content": p.question}]), "question": p.question,
             "reference_answer": str(p.answer), "solutions": p.solutions, "split": split, "source": "demo-arith"}
            for p in problems]
