"""Known-bad answers, made from good ones by controlled corruption, so that their quality is known.

The judge check (`ropd judge check`) scores them against the teacher's answers. Each corruption is
meant for any task, not only arithmetic; where one cannot apply to an answer, `corrupt` says why
instead of returning a copy that would pass as "bad".
"""

from __future__ import annotations

import re
from enum import StrEnum

from pydantic import BaseModel

_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?![\w.])")
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")


class Corruption(StrEnum):
    FINAL_CHANGED = "final_changed"  # the final answer changed, the working kept
    TRUNCATED = "truncated"  # cut to its first third
    FINAL_ONLY = "final_only"  # the working removed, the final line kept
    SWAPPED = "swapped"  # another prompt's answer


class Corrupted(BaseModel):
    """A corruption's result: the bad answer, or why this corruption does not apply (`text` None)."""

    kind: Corruption
    text: str | None
    note: str = ""


def _lines(text: str) -> list[str]:
    return [line for line in text.strip().splitlines() if line.strip()]


def _shifted(value: str) -> str:
    """A different number of the same form: 41 → 42, 2.5 → 3.5."""
    if "." in value:
        whole, frac = value.split(".")
        return f"{int(whole) + 1}.{frac}"
    return str(int(value) + 1)


def change_final(answer: str, other: str) -> Corrupted:
    """A `\\boxed{}` or final-line number replaced everywhere it stands as a result (so a working step that
    derives it is wrong too); with no number, the final line replaced by the other answer's final line."""
    kind = Corruption.FINAL_CHANGED
    lines = _lines(answer)
    if not lines:
        return Corrupted(kind=kind, text=None, note="empty answer")
    boxed = _BOXED.findall(answer)
    if boxed:
        new = _shifted(boxed[-1]) if _NUMBER.fullmatch(boxed[-1].strip()) else f"not {boxed[-1]}"
        return Corrupted(kind=kind, text=answer.replace(f"\\boxed{{{boxed[-1]}}}", f"\\boxed{{{new}}}"),
                         note="boxed answer changed")
    numbers = _NUMBER.findall(lines[-1])
    if numbers:
        old, new = numbers[-1], _shifted(numbers[-1])
        pattern = re.compile(rf"(?<![\w.]){re.escape(old)}(?![\w.])")
        return Corrupted(kind=kind, text=pattern.sub(new, answer), note=f"final number {old} → {new}")
    other_lines = _lines(other)
    if not other_lines or other_lines[-1].strip() == lines[-1].strip():
        return Corrupted(kind=kind, text=None, note="no number in the final line and no other final line to use")
    return Corrupted(kind=kind, text="\n".join([*lines[:-1], other_lines[-1]]),
                     note="final line taken from another prompt's answer")


def truncate_third(answer: str) -> Corrupted:
    """The first third of the answer, cut where a word ends (its layout kept)."""
    text = answer.strip()
    if len(text.split()) < 3:
        return Corrupted(kind=Corruption.TRUNCATED, text=None, note=f"only {len(text.split())} words")
    third = len(text) // 3
    cut = max(text.rfind(" ", 0, third + 1), text.rfind("\n", 0, third + 1))
    if cut <= 0:  # one long first word: keep it whole
        cut = min((i for i in (text.find(" ", third), text.find("\n", third)) if i > 0), default=third)
    return Corrupted(kind=Corruption.TRUNCATED, text=text[:cut].rstrip())


def final_line_only(answer: str) -> Corrupted:
    lines = _lines(answer)
    if len(lines) < 2:
        return Corrupted(kind=Corruption.FINAL_ONLY, text=None, note="a one-line answer has no working to remove")
    return Corrupted(kind=Corruption.FINAL_ONLY, text=lines[-1].strip())


def swap(answer: str, other: str) -> Corrupted:
    if not other.strip() or other.strip() == answer.strip():
        return Corrupted(kind=Corruption.SWAPPED, text=None, note="no different answer to swap in")
    return Corrupted(kind=Corruption.SWAPPED, text=other, note="another prompt's teacher answer")


def corruptions(answer: str, other: str) -> list[Corrupted]:
    """Every corruption of `answer`, in `Corruption` order; `other` is a teacher answer to another prompt."""
    return [change_final(answer, other), truncate_third(answer), final_line_only(answer), swap(answer, other)]
