"""A small run in the exact contract layout, built as the pipeline builds it: mine → QA → verify → diagnostics.

Shared by the store, QA, audit and report tests (imported, not collected as tests). Verdicts come from
a deterministic rule so that rewards correlate with correctness, as a capable judge's would.
"""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pandas as pd

from ropd.io import atomic_write_parquet
from ropd.llm.cache import CallCache
from ropd.rubric.engine import GroupResult, GroupStatus, JudgeFailure
from ropd.rubric.pool import Source, blind_pool
from ropd.rubric.schema import Criterion, Rubric
from ropd.rubric.tables import result_frames
from ropd.store.qa import QAConfig, pool_diagnostics, run_qa

RUN_ID = "run-a"
FINGERPRINT = "rubricator-fp"
XSS = ("<script>document.title='XSS-SCRIPT'</script><img src=x onerror=\"document.title='XSS-IMG'\"> "
       "Answer: 27")

# (prompt_id, question, reference answer, teacher answers, student rollouts)
Prompt = tuple[str, str, str | None, list[str], list[str]]
PROMPTS: list[Prompt] = [
    ("p-pencils", "Mia buys 3 packs of 12 pencils and gives 9 away. How many are left?", "27",
     ["3 * 12 = 36, 36 - 9 = 27. Answer: \\boxed{27}", "36 pencils minus 9 leaves 27. Answer: 27"],
     ["3 * 12 = 36; 36 - 9 = 27. Answer: 27", "3 + 12 = 15, 15 - 9 = 6. Answer: 6", XSS,
      "36 - 9 = 28. Answer: 28"]),
    ("p-train", "A train goes 60 km/h for 4 h then 45 km/h for 2 h. How far?", "330",
     ["240 + 90 = 330. Answer: 330", "60*4 + 45*2 = 330. Answer: \\boxed{330}"],
     ["240 + 90 = 330. Answer: 330", "105 * 6 = 630. Answer: 630", "Answer: 240", "Answer: 330"]),
    ("p-cookies", "5 trays of 24 cookies, 18 break, boxes of 6. How many boxes?", "17",
     ["120 - 18 = 102, 102 / 6 = 17. Answer: 17", "Answer: \\boxed{17}"],
     ["Answer: 17", "Answer: 20", "102 / 6 = 17. Answer: 17", "Answer: 16"]),
    ("p-essay", "Write two sentences about rain.", None,
     ["Rain falls softly. It feeds the rivers."], ["Rain is wet. It falls.", "Rain.", "Clouds cry.", "Rain rain."]),
]

GOOD_TEXTS = [
    ("task_fulfilment", "Computes every intermediate quantity the question needs before combining them", 5),
    ("task_fulfilment", "States a single final numeric answer at the end of the response", 3),
    ("reasoning_quality", "Each arithmetic step follows from the previous one without unexplained jumps", 2),
    ("response_quality", "Labels the quantities it computes so a reader can follow them", 1),
    ("reasoning_quality", "Does not introduce quantities that are absent from the question", 2),
]


def good_rubric(tag: str = "") -> Rubric:
    """Five distinct criteria, one heavy, mixed weights: every QA check stays silent on it."""
    return Rubric(criteria=[Criterion(id=f"c{i + 1}", category=cat, text=text + tag, points=pts)
                            for i, (cat, text, pts) in enumerate(GOOD_TEXTS)])


def bad_rubric() -> Rubric:
    """Duplicates (exact after normalisation, and a paraphrase), three heavy criteria, a quoted reference."""
    rows = [
        ("task_fulfilment", "The final answer is 27.", 5),
        ("task_fulfilment", "States a single final numeric answer at the end of the response", 2),
        ("task_fulfilment", "states a single final numeric answer, at the end of the response!", 4),
        ("reasoning_quality", "Multiplies the number of packs by the pencils per pack", 4),
        ("reasoning_quality", "Multiplies the pack count by the number of pencils in each pack", 4),
        ("response_quality", "Labels the quantities it computes so a reader can follow them", 1),
    ]
    return Rubric(criteria=[Criterion(id=f"c{i + 1}", category=c, text=t, points=p)
                            for i, (c, t, p) in enumerate(rows)])


def degenerate_rubric() -> Rubric:
    """Four criteria, two of them the same sentence: QA leaves three, below the schema's minimum."""
    rows = [("task_fulfilment", "States a single final numeric answer at the end of the response", 3),
            ("task_fulfilment", "states a single final numeric answer at the end of the response.", 2),
            *GOOD_TEXTS[2:4]]
    return Rubric(criteria=[Criterion(id=f"c{i + 1}", category=c, text=t, points=p)
                            for i, (c, t, p) in enumerate(rows)])


def is_right(text: str, ref: str | None) -> bool:
    return ref is not None and text.rstrip().endswith((f"Answer: {ref}", f"\\boxed{{{ref}}}"))


def judge(rubric: Rubric, text: str, ref: str | None) -> list[bool]:
    """Right answers pass every criterion; others pass a criterion when a content hash says so (1 in 3)."""
    right = is_right(text, ref)
    return [right or int(hashlib.sha256(f"{c.id}|{text}".encode()).hexdigest(), 16) % 3 == 0
            for c in rubric.criteria]


def many_prompts(n: int) -> list[Prompt]:
    """n arithmetic prompts with two teacher answers and four rollouts (two right, two wrong) each."""
    return [(f"q{i:04d}", f"What is {i} + {i + 1}?", str(2 * i + 1),
             [f"{i} + {i + 1} = {2 * i + 1}. Answer: {2 * i + 1}", f"Answer: \\boxed{{{2 * i + 1}}}"],
             [f"Answer: {2 * i + 1}", f"Answer: {2 * i}", f"{i}+{i + 1} is {2 * i + 1}. Answer: {2 * i + 1}",
              "I am not sure."]) for i in range(n)]


def prompts_frame(prompts: list[Prompt] = PROMPTS) -> pd.DataFrame:
    return pd.DataFrame([{"prompt_id": p, "question": q, "reference_answer": ref, "split": "train", "source": "demo"}
                         for p, q, ref, _, _ in prompts])


def write_round(run_dir: Path, rnd: int, raw: dict[str, Rubric], failed: dict[str, str],
                prompt_set: list[Prompt] = PROMPTS) -> Path:
    """One round: rollouts, mined rubrics (and failures), QA, verification, diagnostics."""
    rdir = run_dir / f"round_{rnd}"  # the pipeline's layout; QA tests use the zero-padded form
    run_id = run_dir.name
    prompts = prompts_frame(prompt_set)
    atomic_write_parquet(pd.DataFrame([
        {"run_id": run_id, "round": rnd, "prompt_id": pid, "sample_idx": i, "text": s, "n_tokens": len(s.split()),
         "finish_reason": "stop", "checkpoint": f"ckpt-{rnd}"}
        for pid, _, _, _, students in prompt_set for i, s in enumerate(students)]), rdir / "rollouts.parquet")
    mined = result_frames([GroupResult(group_id=pid, status=GroupStatus.OK, rubric=r) for pid, r in raw.items()],
                          run_id=run_id, round=rnd, rubricator_fingerprint=FINGERPRINT)
    atomic_write_parquet(mined["rubrics"], rdir / "rubrics.parquet")
    atomic_write_parquet(mined["criteria"], rdir / "criteria.parquet")
    atomic_write_parquet(pd.DataFrame(
        [{"run_id": run_id, "round": rnd, "prompt_id": pid, "stage": "rubric", "error_type": et,
          "message": f"{et} failure"} for pid, et in failed.items()],
        columns=["run_id", "round", "prompt_id", "stage", "error_type", "message"]), rdir / "rubric_failures.parquet")
    run_qa(rdir, prompts, QAConfig())

    clean = pd.read_parquet(rdir / "rubrics_clean.parquet").set_index("prompt_id")
    results = []
    for pid, _, ref, teacher, students in prompt_set:
        if pid in failed or pid not in clean.index:
            results.append(GroupResult(group_id=pid, status=GroupStatus.JUDGE_ERROR, rewards=[None] * len(students),
                                       error=JudgeFailure(stage="rubric", type=failed.get(pid, "schema"),
                                                          message="failed")))
            continue
        # As the pipeline by default (`degenerate_rubrics: verify_raw`): a degenerate group is judged raw.
        degenerate = bool(clean.loc[pid, "degenerate"])
        rubric = raw[pid] if degenerate else Rubric.model_validate_json(clean.loc[pid, "rubric_json"])
        pool = blind_pool(pid, teacher, students)
        rows = [judge(rubric, it.text, ref) for it in pool]
        by = {s: [row for it, row in zip(pool, rows, strict=True) if it.source == s] for s in Source}
        scores = {s: [sum(c.points for c, v in zip(rubric.criteria, row, strict=True) if v) / rubric.max_score
                      for row in by[s]] for s in Source}
        by_student = sorted(zip((it.index for it in pool if it.source == Source.STUDENT), by[Source.STUDENT],
                                scores[Source.STUDENT], strict=True))
        results.append(GroupResult(
            group_id=pid, status=GroupStatus.OK, rubric=rubric, pool=pool, verdicts=rows,
            student_verdicts=[v for _, v, _ in by_student],
            teacher_verdicts=by[Source.TEACHER], student_scores=[s for _, _, s in by_student],
            teacher_scores=scores[Source.TEACHER], rewards=[s for _, _, s in by_student]))
    verified = result_frames(results, run_id=run_id, round=rnd, rubricator_fingerprint=FINGERPRINT)
    atomic_write_parquet(verified["judgements"], rdir / "judgements.parquet")
    atomic_write_parquet(verified["rewards"], rdir / "rewards.parquet")
    pool_diagnostics(rdir, prompts)
    return rdir


def write_prompts(run_dir: Path, prompts: list[Prompt]) -> None:
    atomic_write_parquet(prompts_frame(prompts), run_dir / "prompts.parquet")
    atomic_write_parquet(pd.DataFrame([
        {"prompt_id": pid, "teacher_fingerprint": "teacher-fp", "answer_idx": i, "text": t}
        for pid, _, _, teacher, _ in prompts for i, t in enumerate(teacher)]), run_dir / "teacher.parquet")


def write_run(runs_root: Path, run_id: str = RUN_ID) -> Path:
    """Round 0 holds the bad rubric (p-pencils); round 1 a degenerate one verified raw (p-cookies) and a failed
    group (p-essay)."""
    run_dir = runs_root / run_id
    write_prompts(run_dir, PROMPTS)
    write_round(run_dir, 0, {"p-pencils": bad_rubric(), **{p[0]: good_rubric() for p in PROMPTS[1:]}}, {})
    write_round(run_dir, 1, {**{p[0]: good_rubric(" (r1)") for p in PROMPTS[:2]}, "p-cookies": degenerate_rubric()},
                {"p-essay": "schema"})
    cache = CallCache(run_dir / "llm_cache.sqlite")
    cache.close()
    with sqlite3.connect(run_dir / "llm_cache.sqlite") as con:
        con.executemany(
            "INSERT INTO llm_calls (call_id, role, model, request, status, error_type, latency_s, tokens_in,"
            " tokens_out, created_at) VALUES (?, ?, 'm', '{}', ?, ?, 0.5, 100, 50, 0)",
            [("call-1", "rubricator", "ok", None), ("call-2", "verifier", "ok", None),
             ("call-3", "verifier", "error", "timeout")])
    return run_dir
