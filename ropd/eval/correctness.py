"""Ground-truth correctness of an answer (math-verify) and the AUC of a reward against it.

The AUC is hand-rolled (Mann–Whitney U with average ranks for ties) so that the paper's headline
diagnostic (rubric reward AUC 0.90) does not hinge on a plotting library, and so its tie handling is
explicit: a tied positive/negative pair counts one half.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from enum import StrEnum

from ropd.rubric.pool import strip_think

MAX_FINAL_ANSWER_CHARS = 60
_PARSE_TIMEOUT_S = 5


def _timeout() -> int | None:
    # math-verify times out with SIGALRM, which only the main thread may set; elsewhere run unbounded.
    return _PARSE_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


class Outcome(StrEnum):
    CORRECT = "correct"
    WRONG = "wrong"
    UNPARSEABLE = "unparseable"  # no final answer could be extracted: a rollout that never answers did not solve it
    NO_REFERENCE = "no_reference"  # the reference itself does not parse: there is no ground truth to compare with


def grade(answer_text: str, reference: str) -> Outcome:
    """The answer's final result against the reference, by math-verify."""
    from math_verify import parse, verify  # imports sympy (~0.6 s): only where correctness is checked

    t = _timeout()
    gold = parse(reference, parsing_timeout=t)
    if not gold:
        return Outcome.NO_REFERENCE
    pred = parse(strip_think(answer_text), parsing_timeout=t)
    if not pred:
        return Outcome.UNPARSEABLE
    return Outcome.CORRECT if verify(gold, pred, timeout_seconds=t) else Outcome.WRONG


def is_correct(answer_text: str, reference: str) -> bool | None:
    """True/False by `grade` (unparseable counts as False); None when the reference does not parse."""
    outcome = grade(answer_text, reference)
    return None if outcome == Outcome.NO_REFERENCE else outcome == Outcome.CORRECT


def auc(scores: Sequence[float], labels: Sequence[bool]) -> float | None:
    """P(score of a random positive > score of a random negative), ties counting 1/2.

    None when either class is empty, where the AUC is undefined.
    """
    if len(scores) != len(labels):
        raise ValueError(f"{len(scores)} scores for {len(labels)} labels")
    n_pos = sum(bool(y) for y in labels)
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    ranks = [0.0] * len(scores)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        for k in range(i, j + 1):  # ranks are 1-based; a tie block shares its average rank
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    rank_sum = sum(r for r, y in zip(ranks, labels, strict=True) if y)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def final_answer(reference: str) -> str | None:
    """The final answer inside a reference: the last `\\boxed{}`, the text after `####`, or the whole
    reference when it is short. None when no short final answer can be isolated (e.g. a full proof)."""
    boxed = _last_boxed(reference)
    if boxed is not None:
        ans = boxed
    elif "####" in reference:
        ans = reference.rsplit("####", 1)[1]
    else:
        ans = reference
    ans = ans.strip().rstrip(".").strip().strip("$").strip()
    return ans if 0 < len(ans) <= MAX_FINAL_ANSWER_CHARS else None


def _last_boxed(text: str) -> str | None:
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 1, start + len("\\boxed{")
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    return None


def quote_pattern(answer: str) -> str:
    """An RE2 pattern (DuckDB's regex engine) matching `answer` as a standalone token, case-insensitive:
    `42` matches in "is 42." but not in "420" or "4.42"."""
    parts = []
    for ch in answer:
        if ch.isspace():
            if parts and parts[-1] != r"\s*":
                parts.append(r"\s*")
        elif ch.isascii() and not ch.isalnum() and ch != "_":
            parts.append("\\" + ch)
        else:
            parts.append(ch)
    body = "".join(parts)
    return rf"(?i)(?:^|[^\w.]){body}(?:$|[^\w.]|\.(?:\D|$))"

