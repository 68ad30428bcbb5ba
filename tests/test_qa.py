"""The QA stage: every check fires on a crafted bad rubric and stays silent on a good one; pool diagnostics."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from pydantic import ValidationError

from ropd.io import atomic_write_parquet
from ropd.rubric.engine import GroupResult, GroupStatus
from ropd.rubric.schema import Criterion, Rubric
from ropd.rubric.tables import result_frames, rubric_id
from ropd.store.qa import FLAGS, QAConfig, QAError, pool_diagnostics, run_qa
from ropd.store.tables import StoreError
from tests.test_store_fixtures import GOOD_TEXTS, good_rubric

REF = pd.DataFrame({"prompt_id": ["p"], "reference_answer": ["\\boxed{27}"]})


def rubric(*rows: tuple[str, int] | tuple[str, int, str]) -> Rubric:
    return Rubric(criteria=[Criterion(id=f"c{i + 1}", category=r[2] if len(r) > 2 else "task_fulfilment", text=r[0],
                                      points=r[1]) for i, r in enumerate(rows)])


def mine(tmp_path: Path, rubrics: dict[str, Rubric], failures: tuple[str, ...] = ()) -> Path:
    """A round directory holding what the mine stage writes (the zero-padded directory name works too)."""
    rdir = tmp_path / "run" / "round_000"
    frames = result_frames([GroupResult(group_id=p, status=GroupStatus.OK, rubric=r) for p, r in rubrics.items()],
                           run_id="run", round=0, rubricator_fingerprint="fp")
    atomic_write_parquet(frames["rubrics"], rdir / "rubrics.parquet")
    atomic_write_parquet(frames["criteria"], rdir / "criteria.parquet")
    if failures:
        ids = [f"f{i}" for i in range(len(failures))]
        atomic_write_parquet(pd.DataFrame({"run_id": "run", "round": 0, "group_id": ids, "prompt_id": ids,
                                           "stage": "rubric", "error_type": list(failures), "message": "bad"}),
                             rdir / "rubric_failures.parquet")
    return rdir


def qa(tmp_path: Path, r: Rubric, prompts: pd.DataFrame | None = REF) -> tuple[dict, pd.Series, pd.DataFrame]:
    rdir = mine(tmp_path, {"p": r})
    metrics = run_qa(rdir, prompts, QAConfig())
    clean = pd.read_parquet(rdir / "rubrics_clean.parquet").iloc[0]
    return metrics, clean, pd.read_parquet(rdir / "merges.parquet")


def test_good_rubric_passes_through_unchanged(tmp_path: Path) -> None:
    good = good_rubric()
    metrics, clean, merges = qa(tmp_path, good)
    rdir = tmp_path / "run" / "round_000"
    assert metrics["flags"]["flagged_rubrics"] == 0 and metrics["dedup"]["merges"] == 0 and len(merges) == 0
    assert list(clean["flags"]) == [] and not clean["degenerate"]
    assert clean["rubric_id"] == clean["raw_rubric_id"] == rubric_id(good)
    assert clean["rubric_json"] == good.model_dump_json()
    raw = pd.read_parquet(rdir / "criteria.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(rdir / "criteria_clean.parquet"), raw, check_dtype=False)
    assert json.loads((rdir / "qa.json").read_text()) == metrics
    assert "flagged rubrics: 0" in (rdir / "qa.md").read_text()


def test_exact_duplicates_merge_keeping_the_higher_weight(tmp_path: Path) -> None:
    r = rubric(("Gives the final answer.", 2), *[(t, p) for _, t, p in GOOD_TEXTS[:3]],
               ("  gives the FINAL answer!! ", 4))
    metrics, clean, merges = qa(tmp_path, r)
    assert metrics["dedup"] == {"mode": "near", "threshold": 0.92, "merges": 1, "exact": 1, "near": 0,
                                "rubrics_merged": 1, "points_removed": 2, "points_removed_by_group": {"p": 2}}
    m = merges.iloc[0]
    assert (m["kind"], m["kept_criterion_id"], m["kept_points"], m["dropped_criterion_id"]) == ("exact", "c5", 4, "c1")
    merged = Rubric.model_validate_json(clean["rubric_json"])
    assert merged.ids == ["c2", "c3", "c4", "c5"] and clean["n_criteria"] == 4 and clean["max_score"] == 14
    assert clean["rubric_id"] == rubric_id(merged) != clean["raw_rubric_id"] == m["raw_rubric_id"]
    crit = pd.read_parquet(tmp_path / "run" / "round_000" / "criteria_clean.parquet")
    assert list(crit["position"]) == [0, 1, 2, 3] and set(crit["rubric_id"]) == {clean["rubric_id"]}


def test_near_duplicates_merge_by_embedding(tmp_path: Path) -> None:
    r = rubric(*[(t, p) for _, t, p in GOOD_TEXTS],
               ("Multiplies the number of packs by the pencils per pack", 2),
               ("Multiplies the pack count by the number of pencils in each pack", 3))
    metrics, clean, merges = qa(tmp_path, r)
    assert metrics["dedup"]["near"] == 1 and metrics["dedup"]["exact"] == 0
    m = merges.iloc[0]
    assert m["kind"] == "near" and m["similarity"] >= 0.92
    assert (m["kept_criterion_id"], m["dropped_criterion_id"]) == ("c7", "c6")
    assert clean["n_criteria"] == 6 and list(clean["flags"]) == []
    # A stricter threshold than this pair's cosine keeps both.
    rdir = tmp_path / "run" / "round_000"
    assert run_qa(rdir, REF, QAConfig(near_dup_threshold=0.99))["dedup"]["merges"] == 0


@pytest.mark.parametrize("mode, merges", [("none", 0), ("exact", 1), ("near", 2)])
def test_merge_switch(tmp_path: Path, mode: str, merges: int) -> None:
    """`qa.merge` picks what is merged; with none the rubric verification sees is the mined one, unchanged."""
    r = rubric(("Gives the final answer.", 2), *[(t, p) for _, t, p in GOOD_TEXTS[:3]], ("gives the FINAL answer", 4),
               ("Multiplies the number of packs by the pencils per pack", 2),
               ("Multiplies the pack count by the number of pencils in each pack", 3))
    rdir = mine(tmp_path, {"p": r})
    d = run_qa(rdir, REF, QAConfig(merge=mode))["dedup"]
    clean = pd.read_parquet(rdir / "rubrics_clean.parquet").iloc[0]
    assert (d["mode"], d["merges"]) == (mode, merges)
    assert d["points_removed"] == {"none": 0, "exact": 2, "near": 4}[mode]
    assert d["points_removed_by_group"] == ({} if mode == "none" else {"p": d["points_removed"]})
    assert (clean["rubric_json"] == r.model_dump_json()) == (mode == "none")
    if mode == "none":
        assert clean["rubric_id"] == rubric_id(r) and len(pd.read_parquet(rdir / "merges.parquet")) == 0


def test_merging_below_the_minimum_marks_the_rubric_degenerate(tmp_path: Path) -> None:
    r = rubric(("States the answer", 3), ("states the answer.", 2), *[(t, p) for _, t, p in GOOD_TEXTS[2:4]])
    metrics, clean, _ = qa(tmp_path, r)
    assert list(clean["flags"]) == ["too_few_criteria"] and clean["degenerate"]
    assert metrics["degenerate"] == metrics["flags"]["too_few_criteria"] == 1
    assert clean["n_criteria"] == 3 and len(json.loads(clean["rubric_json"])["criteria"]) == 3
    with pytest.raises(ValidationError):  # what the design forbids: verification masks this group
        Rubric.model_validate_json(clean["rubric_json"])


@pytest.mark.parametrize(("rows", "flag"), [
    ([("Computes 3 * 12", 5), ("Subtracts the 9 given away", 4), ("Checks the result", 4), ("Labels steps", 1)],
     "too_many_heavy"),
    ([("Computes 3 * 12", 1), ("Subtracts the 9 given away", 1), ("Checks the result", 1), ("Labels steps", 1)],
     "all_min_points"),
    ([("The final answer is 27.", 3), ("Subtracts the 9 given away", 2), ("Checks the result", 1),
      ("Labels steps", 1)], "quotes_reference"),
])
def test_each_flag_fires_alone(tmp_path: Path, rows: list, flag: str) -> None:
    metrics, clean, _ = qa(tmp_path, rubric(*rows))
    assert list(clean["flags"]) == [flag] and not clean["degenerate"]
    assert metrics["flags"] == {**dict.fromkeys(FLAGS, 0), flag: 1, "flagged_rubrics": 1, "flagged_rate": 1.0}


@pytest.mark.parametrize("text", ["Uses 270 pencils in total", "Computes 2.7 per pack", "Does not guess"])
def test_quote_check_needs_the_answer_as_a_token(tmp_path: Path, text: str) -> None:
    _, clean, _ = qa(tmp_path, rubric((text, 3), *[(t, p) for _, t, p in GOOD_TEXTS[1:4]]))
    assert list(clean["flags"]) == []


def test_quote_check_is_off_without_a_reference(tmp_path: Path) -> None:
    r = rubric(("The final answer is 27.", 3), *[(t, p) for _, t, p in GOOD_TEXTS[1:4]])
    no_ref = pd.DataFrame({"prompt_id": ["p"], "reference_answer": [None]})
    assert list(qa(tmp_path, r, no_ref)[1]["flags"]) == []
    assert list(qa(tmp_path, r, None)[1]["flags"]) == []


def test_validation_summary_counts_failures_by_type(tmp_path: Path) -> None:
    rdir = mine(tmp_path, {"p": good_rubric()}, failures=("schema", "schema", "parse"))
    v = run_qa(rdir, None, QAConfig())["validation"]
    assert v == {"groups": 4, "failed": 3, "failure_rate": 0.75, "by_type": {"parse": 1, "schema": 2}}
    assert "3 group(s) failed validation: parse 1, schema 2" in (rdir / "qa.md").read_text()


def test_several_rubrics_only_the_bad_one_changes(tmp_path: Path) -> None:
    rdir = mine(tmp_path, {"a": good_rubric(), "b": rubric(("Same text", 1), ("same text", 5),
                                                          *[(t, p) for _, t, p in GOOD_TEXTS[:4]]),
                           "c": good_rubric(" again")})
    metrics = run_qa(rdir, None, QAConfig())
    clean = pd.read_parquet(rdir / "rubrics_clean.parquet").set_index("prompt_id")
    assert metrics["rubrics"] == 3 and metrics["criteria_in"] == 16 and metrics["criteria_out"] == 15
    assert (clean["rubric_id"] == clean["raw_rubric_id"]).to_dict() == {"a": True, "b": False, "c": True}
    crit = pd.read_parquet(rdir / "criteria_clean.parquet")
    assert crit.groupby("prompt_id").size().to_dict() == {"a": 5, "b": 5, "c": 5}
    assert crit.loc[crit["prompt_id"] == "b", "points"].tolist()[0] == 5  # the kept duplicate has weight 5


def test_inconsistent_inputs_are_named(tmp_path: Path) -> None:
    rdir = mine(tmp_path, {"p": good_rubric()})
    crit = pd.read_parquet(rdir / "criteria.parquet")
    atomic_write_parquet(crit.assign(points=crit["points"].where(crit["position"] != 0, 1)), rdir / "criteria.parquet")
    with pytest.raises(QAError, match=r"criteria\.parquet: the rows of rubric \w+ of group p disagree"):
        run_qa(rdir, None, QAConfig())
    atomic_write_parquet(crit.drop(columns=["category"]), rdir / "criteria.parquet")
    with pytest.raises(StoreError, match=r"criteria\.parquet: missing column\(s\) category"):
        run_qa(rdir, None, QAConfig())
    with pytest.raises(QAError, match="prompts: missing column"):
        run_qa(mine(tmp_path, {"p": good_rubric()}), pd.DataFrame({"prompt_id": ["p"]}), QAConfig())
    (rdir / "rubrics.parquet").unlink()
    with pytest.raises(QAError, match=r"rubrics\.parquet: missing"):
        run_qa(rdir, None, QAConfig())


def test_a_round_where_every_group_failed(tmp_path: Path) -> None:
    rdir = mine(tmp_path, {}, failures=("timeout",))
    metrics = run_qa(rdir, None, QAConfig())
    assert metrics["rubrics"] == 0 and metrics["validation"]["by_type"] == {"timeout": 1}
    assert len(pd.read_parquet(rdir / "rubrics_clean.parquet")) == 0


def write_verified(rdir: Path, rewards: list[tuple[float, str]], verdicts: dict[tuple[str, int], list[bool]],
                   r: Rubric) -> None:
    """A verified round of one prompt `p`, written directly: rollouts, clean rubric, judgements, rewards."""
    base = {"run_id": "run", "round": 0, "prompt_id": "p"}
    rid = rubric_id(r)
    frames = result_frames([GroupResult(group_id="p", status=GroupStatus.OK, rubric=r)], run_id="run", round=0,
                           rubricator_fingerprint="fp")
    atomic_write_parquet(frames["criteria"], rdir / "criteria_clean.parquet")
    atomic_write_parquet(frames["rubrics"].assign(raw_rubric_id=rid, degenerate=False, flags=[[]]),
                         rdir / "rubrics_clean.parquet")
    atomic_write_parquet(pd.DataFrame([{**base, "sample_idx": i, "text": text, "n_tokens": 3, "finish_reason": "stop",
                                        "checkpoint": "c0"} for i, (_, text) in enumerate(rewards)]),
                         rdir / "rollouts.parquet")
    atomic_write_parquet(pd.DataFrame([{**base, "sample_idx": i, "rubric_id": rid, "score": None, "max_score": None,
                                        "reward": reward, "status": "ok", "error_stage": None, "error_type": None}
                                       for i, (reward, _) in enumerate(rewards)]), rdir / "rewards.parquet")
    atomic_write_parquet(pd.DataFrame([{**base, "rubric_id": rid, "source": src, "answer_idx": idx,
                                        "pool_position": pos, "criterion_id": c.id, "verdict": v}
                                       for pos, ((src, idx), row) in enumerate(verdicts.items())
                                       for c, v in zip(r.criteria, row, strict=True)]), rdir / "judgements.parquet")


def test_pool_diagnostics_by_hand(tmp_path: Path) -> None:
    rdir = tmp_path / "run" / "round_000"
    r = rubric(("Computes 36", 3, "task_fulfilment"), ("Subtracts 9", 1, "reasoning_quality"),
               ("Is concise", 1, "response_quality"), ("Shows work", 1, "reasoning_quality"))
    # Rewards vs correctness. Positives 0.9, 0.5; negatives 0.5, 0.2, and an unparseable-reference-free wrong
    # answer 0.95. Pairs (pos > neg): 0.9 beats 0.5 and 0.2, loses to 0.95 → 2; 0.5 ties 0.5 (½), beats 0.2,
    # loses to 0.95 → 1.5. AUC = 3.5 / (2 · 3) = 7/12.
    rewards = [(0.9, "Answer: 27"), (0.5, "so \\boxed{27}"), (0.5, "Answer: 26"), (0.2, "no idea"),
               (0.95, "Answer: 28")]
    verdicts = {("teacher", 0): [True, True, True, False],   # teacher scores 5/6
                ("student", 4): [True, True, True, True],    # a student scores 6/6 > teacher: teacher below student
                ("student", 0): [True, False, True, True],
                ("student", 1): [True, True, True, False]}   # c1 and c3 pass everywhere: non-discriminative
    write_verified(rdir, rewards, verdicts, r)
    d = pool_diagnostics(rdir, REF)
    assert d["reward_auc"] == pytest.approx(7 / 12)
    assert d["auc_n"] == 5 and d["accuracy"] == pytest.approx(2 / 5)
    assert d["non_discriminative_rate"] == pytest.approx(2 / 4)
    assert d["teacher_below_student_rate"] == 1.0
    assert d["pass_rate_by_category"] == {"reasoning_quality": pytest.approx(5 / 8), "response_quality": 1.0,
                                          "task_fulfilment": 1.0}
    assert d["pass_rate_by_category_source"]["teacher"]["reasoning_quality"] == 0.5
    assert (d["n_groups"], d["n_groups_ok"], d["judge_error_rate"]) == (1, 1, 0.0)
    assert json.loads((rdir / "diagnostics.json").read_text()) == json.loads(json.dumps(d))
    assert pool_diagnostics(rdir, None)["reward_auc"] is None  # no references, no AUC


def test_reward_auc_is_null_for_a_single_class(tmp_path: Path) -> None:
    rdir = tmp_path / "run" / "round_000"
    write_verified(rdir, [(0.9, "Answer: 27"), (0.4, "Answer: 27")],
                   {("student", 0): [True] * 4, ("student", 1): [True, False, False, False]}, good_rubric_4())
    d = pool_diagnostics(rdir, REF)
    assert d["reward_auc"] is None and d["accuracy"] == 1.0 and d["teacher_below_student_rate"] is None


def good_rubric_4() -> Rubric:
    return rubric(*[(t, p, c) for c, t, p in GOOD_TEXTS[:4]])
