"""External rubric sets (HealthBench, our own JSONL export) into the store, and from there into training rubrics.

An import keeps what the file says: HealthBench's penalising criteria (negative points), points above 5
or fractional, unknown categories are kept as they are and *flagged*, never dropped or re-signed.
`training_rubrics` is where they meet ROPD's schema (4–12 criteria, integer points 1–5, three categories):
it refuses a flagged criterion unless the caller chooses a `PointsMapping`.

A partly bad file imports nothing: every malformed line is reported, by number, in one error.
The imported rows are written to `data/imports/<sha256>.parquet` (the record, rebuilt into the store by
`ropd store rebuild`) and indexed into the store, which alone holds the import time.
"""

from __future__ import annotations

import hashlib
import json
from enum import StrEnum
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, ValidationError

from ropd.data.prompts import prompt_id as content_prompt_id
from ropd.io import atomic_write_parquet
from ropd.rubric.schema import (
    MAX_CRITERIA,
    MAX_POINTS,
    MAX_TEXT_CHARS,
    MIN_CRITERIA,
    MIN_POINTS,
    Category,
    Criterion,
    Rubric,
)
from ropd.store.db import DEFAULT_IMPORTS, Store
from ropd.store.tables import IMPORTED, StoreError

MAX_REPORTED = 50  # bad lines listed in one error; the count says how many more there were
NEGATED = "Avoids the following: "  # abs_capped's rewording of a penalising criterion


class ImportFormat(StrEnum):
    healthbench = "healthbench"
    jsonl = "jsonl"


class PointsMapping(StrEnum):
    """How `training_rubrics` brings flagged criteria into ROPD's 1–5 points.

    - `drop_negative`: leave penalising criteria (points < 0) out; every other criterion must already fit.
    - `abs_capped`: a penalising criterion becomes its negation (`Avoids the following: <text>`), worth
      |points|; every criterion's points are rounded and clamped into 1–5. Up to the clamp, the reward is
      then a rising linear function of HealthBench's score for the same verdicts, so rankings and the
      signs of group advantages are kept.
    """

    drop_negative = "drop_negative"
    abs_capped = "abs_capped"


class RubricImportError(StoreError):
    """A file that cannot be imported, or an imported set that cannot become training rubrics; names file and lines."""


class ImportedCriterion(BaseModel):
    model_config = ConfigDict(frozen=True)

    line: int
    position: int
    criterion_id: str
    category: str | None
    points: float  # as the file gives it
    text: str
    tags: list[str] = []
    flags: list[str] = []


class ImportedRubric(BaseModel):
    model_config = ConfigDict(frozen=True)

    line: int  # where the rubric starts in the file
    prompt_id: str
    question: str | None
    messages: list[dict[str, str]] | None
    rubric_id: str
    round: int | None
    criteria: list[ImportedCriterion]
    flags: list[str] = []  # rubric-level: too_few_criteria, too_many_criteria


class ImportedSet(BaseModel):
    """One imported file: its rubrics, and where they came from (the path as given and the file's sha256)."""

    model_config = ConfigDict(frozen=True)

    source_file: str
    file_sha256: str
    format: ImportFormat
    rubrics: list[ImportedRubric]


# -- parsing ---------------------------------------------------------------------------------------------
Points = StrictInt | StrictFloat  # a JSON number; true/"5" are malformed, not coerced


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: str
    content: str


class _HealthBenchItem(BaseModel):
    model_config = ConfigDict(extra="ignore")

    criterion: str = Field(min_length=1)
    points: Points
    tags: list[str] = []


class _HealthBenchRow(BaseModel):
    """One line of OpenAI simple-evals' HealthBench JSONL; its other keys (ideal completions, ...) are ignored."""

    model_config = ConfigDict(extra="ignore")

    prompt: list[_Message] = Field(min_length=1)
    rubrics: list[_HealthBenchItem] = Field(min_length=1)
    prompt_id: str | None = None
    example_tags: list[str] = []


class _JsonlRow(BaseModel):
    """One line of an `ropd export --format jsonl` rubrics.jsonl: a criterion with its rubric's keys."""

    model_config = ConfigDict(extra="ignore")

    prompt_id: str = Field(min_length=1)
    question: str | None = None
    round: int | None = None
    group_id: str | None = None
    rubric_id: str | None = None
    position: int | None = None
    criterion_id: str | None = None
    category: str | None = None
    points: Points
    text: str = Field(min_length=1)


def _tag(tags: list[str], key: str) -> str | None:
    return next((t.split(":", 1)[1] for t in tags if t.startswith(f"{key}:")), None)


def _criterion_flags(points: float, category: str | None, text: str) -> list[str]:
    flags = []
    if points < 0:
        flags.append("negative_points")
    elif not MIN_POINTS <= points <= MAX_POINTS:
        flags.append("points_out_of_range")
    if points != int(points):
        flags.append("non_integer_points")
    if category not in {c.value for c in Category}:
        flags.append("unknown_category")
    if len(text) > MAX_TEXT_CHARS:
        flags.append("text_too_long")
    return flags


def _rubric(line: int, prompt_id: str, question: str | None, messages: list[dict[str, str]] | None,
            rubric_id: str | None, round: int | None, items: list[tuple[int, str | None, str | None, float, str,
                                                                       list[str]]]) -> ImportedRubric:
    """items: (line, criterion id, category, points, text, tags) in order."""
    criteria = [ImportedCriterion(line=ln, position=i, criterion_id=cid or f"c{i + 1}", category=cat, points=pts,
                                  text=text, tags=tags, flags=_criterion_flags(pts, cat, text))
                for i, (ln, cid, cat, pts, text, tags) in enumerate(items)]
    content = json.dumps([prompt_id, [(c.criterion_id, c.category, c.points, c.text) for c in criteria]])
    flags = (["too_few_criteria"] if len(criteria) < MIN_CRITERIA else
             ["too_many_criteria"] if len(criteria) > MAX_CRITERIA else [])
    return ImportedRubric(line=line, prompt_id=prompt_id, question=question, messages=messages,
                          rubric_id=rubric_id or hashlib.sha256(content.encode()).hexdigest()[:16], round=round,
                          criteria=criteria, flags=flags)


def _healthbench(rows: list[tuple[int, _HealthBenchRow]]) -> list[ImportedRubric]:
    out = []
    for line, row in rows:
        messages = [m.model_dump() for m in row.prompt]
        question = next((m.content for m in reversed(row.prompt) if m.role == "user"), None)
        rnd = _tag(row.example_tags, "round")
        out.append(_rubric(line, row.prompt_id or content_prompt_id(messages), question, messages,
                           _tag(row.example_tags, "rubric"), int(rnd) if rnd and rnd.isdigit() else None,
                           [(line, _tag(i.tags, "criterion"), _tag(i.tags, "category"), float(i.points), i.criterion,
                             i.tags) for i in row.rubrics]))
    return out


def _jsonl(rows: list[tuple[int, _JsonlRow]]) -> list[ImportedRubric]:
    groups: dict[tuple[Any, ...], list[tuple[int, _JsonlRow]]] = {}
    for line, r in rows:
        groups.setdefault((r.prompt_id, r.round, r.group_id, r.rubric_id), []).append((line, r))
    out = []
    for (pid, rnd, _, rid), members in groups.items():
        members.sort(key=lambda m: (m[1].position is None, m[1].position or 0, m[0]))
        first = members[0][1]
        messages = [{"role": "user", "content": first.question}] if first.question else None
        out.append(_rubric(min(ln for ln, _ in members), pid, first.question, messages, rid, rnd,
                           [(ln, r.criterion_id, r.category, float(r.points), r.text, []) for ln, r in members]))
    return out


def parse_file(path: Path, fmt: ImportFormat) -> ImportedSet:
    """Read and check a whole file; if any line is bad, raise one error naming every bad line (nothing is kept)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise RubricImportError(f"{path}: cannot read ({e.strerror or e})") from e
    errors: list[str] = []
    rows: list[tuple[int, Any]] = []
    row_model = _HealthBenchRow if fmt is ImportFormat.healthbench else _JsonlRow
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RubricImportError(f"{path}: not UTF-8 text ({e})") from e
    for lineno, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as e:
            errors.append(f"line {lineno}: not valid JSON ({e.msg} at column {e.colno})")
            continue
        if not isinstance(obj, dict):
            errors.append(f"line {lineno}: expected a JSON object, got {type(obj).__name__}")
            continue
        try:
            rows.append((lineno, row_model.model_validate(obj)))
        except ValidationError as e:
            errors.append(f"line {lineno}: " + "; ".join(
                f"{'.'.join(map(str, err['loc'])) or 'line'}: {err['msg']}" for err in e.errors()))
    if errors:
        more = f"\n… and {len(errors) - MAX_REPORTED} more" if len(errors) > MAX_REPORTED else ""
        raise RubricImportError(f"{path}: {len(errors)} bad line(s), nothing imported:\n"
                                + "\n".join(f"{path}: {e}" for e in errors[:MAX_REPORTED]) + more)
    if not rows:
        raise RubricImportError(f"{path}: no rubrics in the file")
    rubrics = (_healthbench if fmt is ImportFormat.healthbench else _jsonl)(rows)
    return ImportedSet(source_file=str(path), file_sha256=hashlib.sha256(data).hexdigest(), format=fmt,
                       rubrics=rubrics)


# -- the store -------------------------------------------------------------------------------------------
def import_frame(imported: ImportedSet) -> pd.DataFrame:
    """The set as `imported_criteria` rows, minus the import time (which only the store holds)."""
    rows = [{"file_sha256": imported.file_sha256, "source_file": imported.source_file, "format": imported.format.value,
             "rubric_line": r.line, "line": c.line, "prompt_id": r.prompt_id, "question": r.question,
             "messages": json.dumps(r.messages, ensure_ascii=False) if r.messages is not None else None,
             "rubric_id": r.rubric_id, "round": r.round, "position": c.position, "criterion_id": c.criterion_id,
             "category": c.category, "points": c.points, "text": c.text, "tags": c.tags, "flags": c.flags,
             "rubric_flags": r.flags}
            for r in imported.rubrics for c in r.criteria]
    return pd.DataFrame(rows, columns=[c for c, _ in IMPORTED.columns if c != "imported_at"])


def import_path(imports_dir: Path, file_sha256: str) -> Path:
    return imports_dir / f"{file_sha256[:16]}.parquet"


def write_import(imported: ImportedSet, imports_dir: Path = DEFAULT_IMPORTS) -> Path:
    """Write the set's record; importing the same file again rewrites the same file, never a second one."""
    path = import_path(imports_dir, imported.file_sha256)
    atomic_write_parquet(import_frame(imported), path)
    return path


def import_rubrics(path: Path, fmt: ImportFormat, db: Path, imports_dir: Path = DEFAULT_IMPORTS) -> ImportedSet:
    """Check the whole file, write its record under `imports_dir`, and index it into the store at `db`."""
    imported = parse_file(path, fmt)
    Store(db).ingest_import(write_import(imported, imports_dir))
    return imported


# -- training --------------------------------------------------------------------------------------------
def training_rubrics(imported: ImportedSet, mapping: PointsMapping | None = None,
                     default_category: Category | None = None) -> list[tuple[str, Rubric]]:
    """(prompt_id, Rubric) for every imported rubric, ready for the verify stage and GRPO.

    Without `mapping`, a criterion whose points ROPD cannot express is refused; a criterion with no ROPD
    category takes `default_category` or is refused. Every refusal is listed, each naming the file, the
    line and the criterion.
    """
    errors, out = [], []
    for r in imported.rubrics:
        before = len(errors)
        kept: list[Criterion] = []
        for c in r.criteria:
            where = f"{imported.source_file}: line {c.line}: criterion {c.criterion_id} ({_short(c.text)})"
            points, text = c.points, c.text
            if mapping is PointsMapping.drop_negative and points < 0:
                continue
            if mapping is PointsMapping.abs_capped:
                text = NEGATED + text if points < 0 else text
                points = float(min(max(int(abs(points) + 0.5), MIN_POINTS), MAX_POINTS))
            bad = [f for f in _criterion_flags(points, c.category or None, text)
                   if not (f == "unknown_category" and default_category is not None)]
            if bad:
                hint = ("choose a points mapping (drop_negative or abs_capped)"
                        if {"negative_points", "points_out_of_range", "non_integer_points"} & set(bad) else
                        "give a default_category" if bad == ["unknown_category"] else "fix the criterion")
                errors.append(f"{where}: {', '.join(bad)} (points {c.points:g}, category {c.category}); "
                              f"ROPD criteria have integer points {MIN_POINTS}–{MAX_POINTS} and a category of "
                              f"{', '.join(x.value for x in Category)}: {hint}")
                continue
            category = Category(c.category) if c.category in {x.value for x in Category} else default_category
            kept.append(Criterion(id=c.criterion_id, category=category, text=text, points=int(points)))
        if len(errors) == before:
            try:
                out.append((r.prompt_id, Rubric(criteria=kept)))
            except ValidationError as e:
                errors.append(f"{imported.source_file}: line {r.line}: rubric {r.rubric_id} of prompt {r.prompt_id}: "
                              + "; ".join(err["msg"] for err in e.errors()))
    if errors:
        raise RubricImportError(f"{len(errors)} criterion/rubric problem(s) keep this set from training:\n"
                                + "\n".join(errors))
    return out


def _short(text: str, n: int = 40) -> str:
    return repr(text if len(text) <= n else text[:n - 1] + "…")
