"""`ropd import rubrics`: round trips through our exports, HealthBench's negative points kept and flagged, the
training conversion's refusals and mappings, and an all-or-nothing import of a partly bad file."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest
from typer.testing import CliRunner

from ropd.cli import app
from ropd.rubric.schema import Category
from ropd.rubric.tables import rubric_id
from ropd.store.db import Store
from ropd.store.export import ExportFormat, export_run
from ropd.store.rubric_import import (
    NEGATED,
    ImportFormat,
    PointsMapping,
    RubricImportError,
    import_rubrics,
    parse_file,
    training_rubrics,
)
from tests.test_export import judged_criteria


def stored(db: Path, sql: str) -> list[tuple]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


@pytest.mark.parametrize(("fmt", "file"), [(ExportFormat.healthbench, "healthbench.jsonl"),
                                           (ExportFormat.jsonl, "rubrics.jsonl")])
def test_export_then_import_gives_the_same_criteria(fmt: ExportFormat, file: str, finished_run: Path,
                                                    tmp_path: Path) -> None:
    export_run(finished_run, tmp_path / "out", fmt)
    db, imports = tmp_path / "s.duckdb", tmp_path / "imports"
    imported = import_rubrics(tmp_path / "out" / file, ImportFormat(fmt.value), db, imports)
    rows = stored(db, "SELECT prompt_id, round, rubric_id, category, points::INT, text FROM imported_criteria "
                      "ORDER BY round, prompt_id, position")
    assert rows == judged_criteria(finished_run)
    assert not [f for r in imported.rubrics for c in r.criteria for f in c.flags]
    # The criteria come back whole: rebuilt as ROPD rubrics, they hash to the ids they were exported under.
    assert [rubric_id(r) for _, r in training_rubrics(imported)] == [r.rubric_id for r in imported.rubrics]
    # Provenance, and a store rebuilt from the imports directory keeps the set.
    (sha, source, line), = stored(db, "SELECT DISTINCT file_sha256, source_file, min(line) FROM imported_criteria "
                                      "GROUP BY ALL")
    assert source == str(tmp_path / "out" / file) and line == 1 and sha == imported.file_sha256
    import_rubrics(tmp_path / "out" / file, ImportFormat(fmt.value), db, imports)  # again: replaced, not added
    Store(db).rebuild(finished_run.parent, imports_dir=imports)
    assert stored(db, "SELECT count(*) FROM imported_criteria")[0][0] == len(rows)
    assert stored(db, "SELECT count(DISTINCT origin) FROM rubric_library")[0][0] == 2


HEALTHBENCH = [
    {"prompt": [{"role": "user", "content": "I have had a headache for three days. What should I do?"}],
     "prompt_id": "hb-1", "example_tags": ["theme:global_health"],
     "rubrics": [
         {"criterion": "Asks about red-flag symptoms such as fever or a stiff neck", "points": 5,
          "tags": ["axis:completeness", "category:task_fulfilment"]},
         {"criterion": "Advises seeing a doctor if the headache worsens", "points": 3,
          "tags": ["category:task_fulfilment"]},
         {"criterion": "Explains common causes in plain language", "points": 2, "tags": ["category:response_quality"]},
         {"criterion": "Recommends a prescription drug without knowing the history", "points": -6,
          "tags": ["category:reasoning_quality"]},
         {"criterion": "Keeps the answer short", "points": 1, "tags": ["category:response_quality"]},
     ]},
]


def test_negative_points_are_kept_flagged_and_refused_for_training(tmp_path: Path) -> None:
    path = tmp_path / "hb.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in HEALTHBENCH))
    imported = import_rubrics(path, ImportFormat.healthbench, tmp_path / "s.duckdb", tmp_path / "imports")
    assert stored(tmp_path / "s.duckdb", "SELECT points, flags FROM imported_criteria WHERE position = 3") == [
        (-6.0, ["negative_points"])]
    with pytest.raises(RubricImportError) as e:
        training_rubrics(imported)
    assert f"{path}: line 1: criterion c4 ('Recommends a prescription drug without" in str(e.value)
    assert "negative_points (points -6" in str(e.value) and "drop_negative or abs_capped" in str(e.value)
    (_, dropped), = training_rubrics(imported, PointsMapping.drop_negative)
    assert [c.id for c in dropped.criteria] == ["c1", "c2", "c3", "c5"]
    (_, negated), = training_rubrics(imported, PointsMapping.abs_capped)
    c4 = negated.criteria[3]
    assert c4.points == 5 and c4.text == NEGATED + "Recommends a prescription drug without knowing the history"


def test_unknown_categories_need_a_default(tmp_path: Path) -> None:
    path = tmp_path / "hb.jsonl"
    row = {**HEALTHBENCH[0], "rubrics": [{**i, "tags": ["axis:accuracy"]} for i in HEALTHBENCH[0]["rubrics"]
                                         if i["points"] > 0]}
    path.write_text(json.dumps(row) + "\n")
    imported = parse_file(path, ImportFormat.healthbench)
    assert all(c.flags == ["unknown_category"] for c in imported.rubrics[0].criteria)
    with pytest.raises(RubricImportError, match=r"line 1: criterion c1 .*unknown_category.*default_category"):
        training_rubrics(imported)
    (_, rubric), = training_rubrics(imported, default_category=Category.TASK)
    assert {c.category for c in rubric.criteria} == {Category.TASK}


def test_a_partly_bad_file_imports_nothing_and_names_every_bad_line(tmp_path: Path) -> None:
    good = json.dumps(HEALTHBENCH[0])
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join([good, '{"prompt": [', good, json.dumps({**HEALTHBENCH[0], "rubrics": [
        {"criterion": "x", "points": "five", "tags": []}]}), "[1, 2]"]) + "\n")
    db, imports = tmp_path / "s.duckdb", tmp_path / "imports"
    with pytest.raises(RubricImportError) as e:
        import_rubrics(path, ImportFormat.healthbench, db, imports)
    msg = str(e.value)
    assert "3 bad line(s), nothing imported" in msg and f"{path}: line 2: not valid JSON" in msg
    assert f"{path}: line 4: rubrics.0.points" in msg and f"{path}: line 5: expected a JSON object" in msg
    assert "line 1:" not in msg and "line 3:" not in msg
    assert not db.exists() and not imports.exists()
    result = CliRunner().invoke(app, ["import", "rubrics", str(path), "--format", "healthbench", "--db", str(db),
                                      "--imports", str(imports)])
    assert result.exit_code == 1 and "line 4" in result.output and "Traceback" not in result.output


def test_cli_import_and_audit_view(tmp_path: Path) -> None:
    path = tmp_path / "hb.jsonl"
    path.write_text(json.dumps(HEALTHBENCH[0]) + "\n")
    db = str(tmp_path / "s.duckdb")
    result = CliRunner().invoke(app, ["import", "rubrics", str(path), "-f", "healthbench", "--db", db,
                                      "--imports", str(tmp_path / "imports")])
    assert result.exit_code == 0 and "1 rubrics, 5 criteria; flagged: negative_points 1" in result.output
    result = CliRunner().invoke(app, ["audit", "imports", "-f", "json", "--db", db])
    (row,) = json.loads(result.output)
    assert row["prompt_id"] == "hb-1" and row["flags"] == ["negative_points"] and row["max_score"] == 11
