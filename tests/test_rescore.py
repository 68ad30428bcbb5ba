"""`ropd audit rescore`: no option gives the stored rewards back exactly; each option matches a hand computation
from the round's own parquet files."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from ropd.cli import app
from ropd.rubric.schema import Category
from ropd.store.export import ExportError
from ropd.store.rescore import RescoreOptions, rescore
from ropd.store.tables import StoreError
from tests.test_store_fixtures import GOOD_TEXTS


@pytest.fixture
def run(finished_run: Path, tmp_path: Path) -> Path:
    shutil.copytree(finished_run, tmp_path / "runs" / "demo")
    return tmp_path / "runs" / "demo"


def student_verdicts(run: Path, rnd: int, prompt: str) -> dict[int, dict[str, bool]]:
    """sample_idx → criterion id → verdict, straight from judgements.parquet."""
    j = pd.read_parquet(run / f"round_{rnd}" / "judgements.parquet")
    j = j[(j["prompt_id"] == prompt) & (j["source"] == "student")]
    return {int(s): dict(zip(g["criterion_id"], g["verdict"], strict=True)) for s, g in j.groupby("answer_idx")}


def new_rewards(result_path: Path, prompt: str) -> dict[int, float]:
    df = pd.read_parquet(result_path)
    df = df[df["prompt_id"] == prompt]
    return dict(zip(df["sample_idx"].astype(int), df["new_reward"], strict=True))


def test_no_option_reproduces_the_stored_rewards_exactly(run: Path) -> None:
    for rnd in (0, 1):
        done = rescore(run, rnd, RescoreOptions())
        df = pd.read_parquet(done.path)
        stored = pd.read_parquet(run / f"round_{rnd}" / "rewards.parquet")
        assert len(df) == len(stored)
        ok = df[df["status"] == "ok"]
        assert ok["new_reward"].tolist() == ok["reward"].tolist()  # bit for bit, not approximately
        assert df[df["status"] != "ok"]["new_reward"].isna().all()
        assert not df["sign_flip"].any() and all(p.spearman in (1.0, None) for p in done.prompts)
        assert done.path.parent == run.parent / ".rescore" / "demo"


POINTS = {f"c{i + 1}": pts for i, (_, _, pts) in enumerate(GOOD_TEXTS)}  # p-train's round-0 rubric: 13 points


def test_dropping_a_criterion_matches_a_hand_computation(run: Path) -> None:
    done = rescore(run, 0, RescoreOptions(drop=["p-train:c1"]))
    verdicts = student_verdicts(run, 0, "p-train")
    want = {s: sum(POINTS[c] for c, ok in v.items() if ok and c != "c1") / (13 - 5) for s, v in verdicts.items()}
    assert new_rewards(done.path, "p-train") == want  # exactly: integer points
    # Only p-train's rubric lost c1; the other prompts' rewards are untouched.
    df = pd.read_parquet(done.path)
    other = df[(df["prompt_id"] != "p-train") & (df["status"] == "ok")]
    assert other["new_reward"].tolist() == other["reward"].tolist()
    change = next(p for p in done.prompts if p.prompt_id == "p-train")
    assert change.deltas == [want[s] - r for s, r in sorted(
        pd.read_parquet(run / "round_0" / "rewards.parquet").query("prompt_id == 'p-train'")[
            ["sample_idx", "reward"]].itertuples(index=False))]


def test_weights_caps_and_merges_match_hand_computations(run: Path) -> None:
    verdicts = student_verdicts(run, 0, "p-train")
    # task_fulfilment (c1: 5, c2: 3) capped at 4 points: scaled by 4/8; response_quality (c4) doubled.
    weights = {"c1": 2.5, "c2": 1.5, "c3": 2, "c4": 2, "c5": 2}
    done = rescore(run, 0, RescoreOptions(caps={Category.TASK: 4}, weights={Category.QUALITY: 2}))
    want = {s: sum(weights[c] for c, ok in v.items() if ok) / sum(weights.values()) for s, v in verdicts.items()}
    assert new_rewards(done.path, "p-train") == pytest.approx(want)
    # p-pencils' QA merged c2 (2 points) into c3 and c5 (4 points) into c4: back, with their absorbers' verdicts.
    pencils = student_verdicts(run, 0, "p-pencils")
    kept = {"c1": 5, "c3": 4, "c4": 4, "c6": 1}
    done = rescore(run, 0, RescoreOptions(ignore_merges=True))
    want = {s: (sum(kept[c] for c, ok in v.items() if ok) + 2 * v["c3"] + 4 * v["c4"]) / 20
            for s, v in pencils.items()}
    assert new_rewards(done.path, "p-pencils") == pytest.approx(want)


def test_refusals(run: Path) -> None:
    with pytest.raises(ExportError, match=r"run demo has no round 9"):
        rescore(run, 9, RescoreOptions())
    with pytest.raises(StoreError, match=r"--drop-criterion p-train:c9: no such criterion"):
        rescore(run, 0, RescoreOptions(drop=["p-train:c9"]))


def test_cli(run: Path) -> None:
    args = ["audit", "rescore", "demo", "--runs", str(run.parent), "--round", "0"]
    result = CliRunner().invoke(app, [*args, "--drop-criterion", "c1", "-f", "json"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["prompt_id"] for r in rows] == ["p-cookies", "p-essay", "p-pencils", "p-train"]
    assert all(len(r["reward_deltas"]) == 4 and isinstance(r["sign_flips"], int) for r in rows)
    result = CliRunner().invoke(app, [*args, "--ignore-merges"], env={"COLUMNS": "80"})
    assert result.exit_code == 0 and "p-pencils" in result.stdout
    assert max(len(line) for line in result.stdout.splitlines()) <= 80
    result = CliRunner().invoke(app, [*args, "--weight", "formatting=2"])
    assert result.exit_code == 1 and "CATEGORY one of task_fulfilment" in result.output
    result = CliRunner().invoke(app, ["audit", "rescore", "demo", "--runs", str(run.parent)])
    assert result.exit_code == 1 and "needs a run and a round" in result.output


def test_the_report_shows_rescores_and_imported_sets(run: Path, tmp_path: Path) -> None:
    from ropd.store.report import write_report
    from ropd.store.rescore import rescore_summaries
    from ropd.store.rubric_import import ImportFormat, import_rubrics

    imports = tmp_path / "imports"
    page = write_report(run, tmp_path / "before.html", imports_dir=imports).read_text(encoding="utf-8")
    assert "None yet: `ropd audit rescore demo --round R" in page and "No imported rubric set covers" in page
    done = rescore(run, 0, RescoreOptions(drop=["p-train:c1"]))
    (summary,) = rescore_summaries(run)
    assert (summary.file, summary.round, summary.options) == (done.path.name, 0, '{"drop":["p-train:c1"]}')
    deltas = [d for p in done.prompts for d in p.deltas]
    assert summary.rollouts == len(deltas) and summary.changed == sum(d is not None and abs(d) > 1e-12 for d in deltas)
    assert summary.sign_flips == sum(p.sign_flips for p in done.prompts)
    assert summary.min_spearman == min(p.spearman for p in done.prompts if p.spearman is not None)
    hb = tmp_path / "hb.jsonl"
    hb.write_text(json.dumps({"prompt_id": "p-train", "prompt": [{"role": "user", "content": "How far?"}], "rubrics": [
        *({"criterion": f"States the distance in km, check {i}", "points": 2, "tags": ["category:task_fulfilment"]}
          for i in range(4)), {"criterion": "Guesses without computing", "points": -4, "tags": []}]}) + "\n")
    import_rubrics(hb, ImportFormat.healthbench, tmp_path / "s.duckdb", imports)
    page = write_report(run, tmp_path / "after.html", imports_dir=imports).read_text(encoding="utf-8")
    assert done.path.name in page and "{&quot;drop&quot;:[&quot;p-train:c1&quot;]}" in page
    section = page[page.index("<code>p-train</code>"):]
    section = section[:section.index('<details class="prompt"')] if '<details class="prompt"' in section else section
    assert re.search(rf"Imported rubric \w+ · {re.escape(str(hb))} line 1 \(healthbench\) · 5 criteria", section)
    assert "Guesses without computing" in section and "negative_points" in section
    assert f"<td>{hb}</td>" in page  # the sets table: one set, one prompt of this run, one flagged criterion
