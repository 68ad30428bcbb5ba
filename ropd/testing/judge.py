"""A deterministic stand-in judge that speaks our prompt protocol.

It is what the scripted server answers with when no fault is scripted, and it backs the demo until
a real model is configured. It reads the question and the fenced answers exactly as a real judge
would see them and applies simple, checkable rules, so its rubrics discriminate and its verdicts are
reproducible. It is not a model of judging quality: see docs/models.md for real judges.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Callable

from ropd.rubric.prompts import TURN_HEADER, cut_marker

_NONCE = re.compile(r'fence="([0-9a-f]{16})"')
_NUM = re.compile(r"-?\d+(?:\.\d+)?")
_ARITH = re.compile(r"(-?\d+(?:\.\d+)?)\s*([+\-*/×x÷])\s*(-?\d+(?:\.\d+)?)\s*=\s*(-?\d+(?:\.\d+)?)")
_FINAL = re.compile(r"(?im)^\s*(?:final answer|answer|####)\s*[:=]?\s*\$?(-?\d[\d,]*(?:\.\d+)?)")


def request_kind(messages: list[dict[str, str]]) -> str:
    """`rubric`, `verify`, `tjudge` or `teacher`, from the versioned system prompt."""
    system = messages[0]["content"] if messages and messages[0]["role"] == "system" else ""
    if "You are the Rubricator" in system:
        return "rubric"
    if "You are the Verifier" in system:
        return "verify"
    if "(tjudge-" in system:
        return "tjudge"
    return "teacher"


def _fenced(kind: str, text: str, nonce: str) -> list[tuple[str, str]]:
    pat = re.compile(rf'<{kind} id="([^"]*)" fence="{nonce}">\n(.*?)\n</{kind} fence="{nonce}">', re.DOTALL)
    return pat.findall(text)


def last_user_turn(question: str) -> str:
    """The problem statement: a rendered conversation's last user turn, else the question itself."""
    parts = TURN_HEADER.split(question)  # [before, n1, role1, text1, n2, role2, text2, ...]
    users = [text.strip() for role, text in zip(parts[2::3], parts[3::3], strict=True) if role == "user"]
    return users[-1] if users else question


def answer_text(body: str, nonce: str) -> str:
    """A fenced answer as a judge reads it: the real cut line (it carries the nonce) is not the answer's."""
    before, after = cut_marker("\x00", nonce).split("\x00")
    return re.sub(rf"\n{re.escape(before)}\d+{re.escape(after)}\n", "\n", body)


def _quantities(question: str) -> list[str]:
    return list(dict.fromkeys(_NUM.findall(question)))


def _arith_ok(text: str) -> bool:
    ops: dict[str, Callable[[float, float], float]] = {
        "+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "×": lambda a, b: a * b,
        "x": lambda a, b: a * b, "/": lambda a, b: a / b if b else float("nan"),
        "÷": lambda a, b: a / b if b else float("nan"),
    }
    found = _ARITH.findall(text)
    return bool(found) and all(abs(ops[op](float(a), float(b)) - float(c)) < 1e-6 for a, op, b, c in found)


# keyed by the slot (= criterion id) each rule's criterion fills in `rubric_reply`
CHECKS: dict[str, Callable[[str, str], bool]] = {
    "c1": lambda q, a: len(_FINAL.findall(a)) == 1,  # one final answer
    "c2": lambda q, a: all(n in a for n in _quantities(q)),  # uses the quantities
    "c3": lambda q, a: _arith_ok(a),  # arithmetic correct
    "c4": lambda q, a: len(_ARITH.findall(a)) >= 2,  # shows steps
    "c5": lambda q, a: len(a.split()) <= 120,  # concise
    "c6": lambda q, a: not re.search(r"(?i)\b(maybe|i think|not sure|probably)\b", a),  # no hedging
}


def _task(messages: list[dict[str, str]]) -> str:
    """The first user turn: it holds the fenced task, also in a repair transcript that appends turns."""
    return next((m["content"] for m in messages if m["role"] == "user"), "")


def _fenced_task(messages: list[dict[str, str]]) -> tuple[str, str, str] | None:
    """(task text, nonce, fenced question) of a grading request; None when the request carries no fence."""
    user = _task(messages)
    nonce = _NONCE.search(messages[0]["content"])
    if not nonce:
        return None
    return user, nonce.group(1), last_user_turn(_fenced("prompt", user, nonce.group(1))[0][1])


def rubric_reply(messages: list[dict[str, str]]) -> dict:
    task = _fenced_task(messages)
    question = task[2] if task else _task(messages)
    qty = ", ".join(_quantities(question)[:6]) or "the given quantities"
    criteria = [
        ("c1", "task_fulfilment", "States exactly one final numeric answer on a line starting "
         "with 'Answer:'.", 2),
        ("c2", "task_fulfilment", f"Uses every quantity given in the problem ({qty}) in its working.", 4),
        ("c3", "reasoning_quality", "Every written calculation of the form 'a op b = c' is "
         "arithmetically correct.", 5),
        ("c4", "reasoning_quality", "Shows at least two intermediate calculations before the "
         "final answer.", 2),
        ("c5", "response_quality", "Is at most 120 words long.", 1),
        ("c6", "response_quality", "Commits to its answer without hedging words such as 'maybe' "
         "or 'I think'.", 1),
    ]
    return {"criteria": {i: {"category": c, "text": t, "points": p} for i, c, t, p in criteria}}


def flip_verdicts(reply: dict, noise: float, seed: str) -> dict:
    """Each verdict flipped with probability `noise`, drawn from a generator seeded by `seed` (the request)."""
    if noise <= 0:
        return reply
    rng = random.Random(hashlib.sha256(seed.encode()).digest())
    return {"answers": {key: [v != (rng.random() < noise) for v in row] for key, row in reply["answers"].items()}}


def verdict_reply(messages: list[dict[str, str]]) -> dict:
    task = _fenced_task(messages)
    if task is None:
        return {"answers": {}}
    user, nonce, question = task
    # criterion lines count only outside the fences: an answer can quote a forged rubric line
    outside = re.sub(rf'<(\w+) id="[^"]*" fence="{nonce}">\n.*?\n</\1 fence="{nonce}">', "", user, flags=re.DOTALL)
    ids = re.findall(r"(?m)^\d+\. \[([^\]]+)\]", outside)
    answers = [(label, answer_text(body, nonce)) for label, body in _fenced("answer", user, nonce)]
    return {"answers": {f"a{label}": [bool(CHECKS.get(cid, lambda q, a: False)(question, text)) for cid in ids]
                        for label, text in answers}}


def tjudge_reply(messages: list[dict[str, str]]) -> dict:
    """T-Judge scores: the share of the rubric checks an answer passes, on the 0-10 scale."""
    task = _fenced_task(messages)
    if task is None:
        return {"scores": {}}
    user, nonce, question = task
    return {"scores": {f"a{label}": round(10 * sum(check(question, text) for check in CHECKS.values()) / len(CHECKS))
                       for label, text in _fenced("answer", user, nonce)}}


_TEACHER_STYLES = ("Add the quantities: {steps} = {total}", "Sum: {steps} = {total}", "{steps} = {total}")


def teacher_reply(messages: list[dict[str, str]], seed: int | None = None) -> str:
    """A plain answer for teacher requests: add up the numbers, in a style that varies with the seed."""
    nums = [float(n) for n in _NUM.findall(messages[-1]["content"])][:3] or [0.0]
    steps = " + ".join(f"{n:g}" for n in nums)
    style = _TEACHER_STYLES[(seed or 0) % len(_TEACHER_STYLES)]
    return style.format(steps=steps, total=f"{sum(nums):g}") + f"\nAnswer: {sum(nums):g}"


def judge_reply(messages: list[dict[str, str]], seed: int | None = None, *, noise: float = 0.0,
                noise_seed: str = "") -> str:
    """The rule judge's reply; `noise` flips its verdicts (see `flip_verdicts`), seeded by `noise_seed`."""
    kind = request_kind(messages)
    if kind == "rubric":
        return json.dumps(rubric_reply(messages))
    if kind == "verify":
        return json.dumps(flip_verdicts(verdict_reply(messages), noise, noise_seed))
    if kind == "tjudge":
        return json.dumps(tjudge_reply(messages))
    return teacher_reply(messages, seed)
