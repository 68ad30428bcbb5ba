"""Fixed rubrics from a file (`method: static_rubric`): the Rubrics-as-Rewards-style baseline.

The rubrics are read once per round from an imported set or an earlier run's export, instead of being
mined against the current rollouts; everything after (QA, the blind pool, the verifier, rewards, GRPO,
evaluation) is the ROPD path unchanged, so the comparison isolates on-policy mining.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from ropd.rubric.schema import Category, Rubric
from ropd.store.rubric_import import ImportFormat, PointsMapping, RubricImportError, parse_file, training_rubrics


class StaticRubricParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    file: str | None = Field(default=None, description="the rubric set (method static_rubric): HealthBench JSONL "
                             "or an `ropd export --format jsonl` rubrics.jsonl, one rubric per prompt_id")
    format: ImportFormat = ImportFormat.healthbench
    mapping: PointsMapping | None = Field(default=None, description="how criteria outside ROPD's 1-5 integer "
                                          "points enter training (drop_negative, abs_capped); null = refuse them")
    default_category: Category | None = Field(default=None, description="the category of a criterion the file "
                                              "gives none (HealthBench's own files); null = refuse it")


class StaticSet(BaseModel):
    """A file's rubrics keyed by prompt, and the fingerprint that stands in the tables for the rubricator's."""

    model_config = ConfigDict(frozen=True)

    fingerprint: str
    rubrics: dict[str, Rubric]


def load_static(cfg: StaticRubricParams) -> StaticSet:
    """Parse and map the whole file; every problem (bad line, unmapped criterion, two rubrics for one prompt)
    is a ValueError naming `static_rubric.file`, the line and the criterion."""
    if cfg.file is None:
        raise ValueError("method static_rubric needs static_rubric.file: an imported rubric set or an earlier "
                         "run's export (`ropd export RUN --format healthbench --out DIR`)")
    path = Path(cfg.file)
    try:
        imported = parse_file(path, cfg.format)
        mapped = training_rubrics(imported, cfg.mapping, cfg.default_category)
    except RubricImportError as exc:
        raise ValueError(f"static_rubric.file: {exc}") from exc
    lines: dict[str, list[int]] = {}
    for source in imported.rubrics:
        lines.setdefault(source.prompt_id, []).append(source.line)
    if twice := {pid: ln for pid, ln in lines.items() if len(ln) > 1}:
        listed = "; ".join(f"{pid} (lines {', '.join(map(str, ln))})" for pid, ln in sorted(twice.items())[:5])
        raise ValueError(f"static_rubric.file: {path}: {len(twice)} prompt(s) have more than one rubric, and a "
                         f"static rubric is one per prompt: {listed}. Export a run mined with shared_rubric: true, "
                         "or keep one rubric per prompt_id")
    return StaticSet(fingerprint=f"static:{cfg.format.value}:{imported.file_sha256[:16]}",
                     rubrics=dict(mapped))


def rubric_for(static: StaticSet, prompt_ids: list[str], file: str, r: int) -> dict[str, Rubric]:
    """The rubric of each of round `r`'s prompts; a prompt the file does not cover is an error, never a zero."""
    missing = sorted(set(prompt_ids) - static.rubrics.keys())
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ValueError(f"round {r}: static_rubric.file {file} has no rubric for {len(missing)} of the round's "
                         f"{len(set(prompt_ids))} prompts ({shown}). Rubrics match prompts by prompt_id: export a run "
                         "over the same data.source, or train on the prompts the set was written for")
    return {pid: static.rubrics[pid] for pid in prompt_ids}
