"""`ropd export` (each format) and `ropd audit rescore` on the 1M-criteria round of bench/store_qa.py.

The criteria are `store_qa.synthesise`'s (10 per rubric, one 14-word sentence each), laid out as one
finished round of a run in the contract layout: one prompt and rubric per 10 criteria, 2 teacher
answers and 4 rollouts per prompt, a random verdict per (pool answer, criterion), rewards computed
from those verdicts as the engine computes them (so a rescore with no option changes no reward:
checked). 1M criteria make 100k rubrics, 6M judgements and 400k rollouts. Times are wall-clock of the
library calls the commands make (`export_run`, `rescore`), the fastest of --repeat each:

    .venv/bin/python bench/export_rescore.py [--rows 1000000] [--repeat 1] [--work DIR]

The last stdout line is one JSON object: {"rows": n, "rubrics": r, "judgements": j, "export_hf_s": …,
"export_hf_verdicts_s": …, (healthbench, jsonl likewise), "rescore_s": …, "rescore_drop_s": …,
"peak_mb": …}.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from store_qa import PER_RUBRIC, synthesise

from ropd.rubric.schema import Category
from ropd.store.export import ExportFormat, export_run
from ropd.store.rescore import RescoreOptions, rescore

TEACHERS, STUDENTS = 2, 4
CATEGORIES = [c.value for c in Category]


def write_run(run_dir: Path, rows: int, seed: int = 0) -> dict[str, int]:
    """The synthetic round as a run directory (round_0 and the run-scope files); returns its row counts."""
    crit, _ = synthesise(rows, dim=1, seed=seed)  # the embeddings are QA's input, not the contract's
    rng = np.random.default_rng(seed + 1)
    n_rub = len(crit) // PER_RUBRIC
    rk = crit["rk"].to_numpy()
    pid = np.char.add("p", np.arange(n_rub).astype(str)).astype(object)
    rid = np.char.add("r", np.arange(n_rub).astype(str)).astype(object)
    points = crit["points"].to_numpy().reshape(n_rub, PER_RUBRIC)
    max_score = points.sum(axis=1)
    base = {"run_id": run_dir.name, "round": 0}
    rd = run_dir / "round_0"
    rd.mkdir(parents=True)

    def put(path: Path, columns: dict[str, object]) -> int:
        n = max(len(v) for v in columns.values() if isinstance(v, np.ndarray | list))
        table = pa.table({k: v if isinstance(v, np.ndarray | list) else [v] * n for k, v in columns.items()})
        pq.write_table(table, path)
        return table.num_rows

    counts = {"prompts": put(run_dir / "prompts.parquet", {
        "prompt_id": pid, "question": np.char.add("How many items are left in problem ", pid.astype(str)).astype(
            object),
        "reference_answer": crit["ref_literal"].to_numpy()[::PER_RUBRIC], "split": "train", "source": "demo-arith",
        "messages": None})}
    t_pid = np.repeat(pid, TEACHERS)
    counts["teacher"] = put(run_dir / "teacher.parquet", {
        "prompt_id": t_pid, "teacher_fingerprint": "teacher-fp", "answer_idx": np.tile(np.arange(TEACHERS), n_rub),
        "text": np.char.add("The total is computed step by step. Answer: ", np.repeat(
            crit["ref_literal"].to_numpy()[::PER_RUBRIC], TEACHERS).astype(str)).astype(object)})
    counts["rubrics"] = put(rd / "rubrics.parquet", {
        **base, "group_id": pid, "prompt_id": pid, "rubric_id": rid, "n_criteria": PER_RUBRIC, "max_score": max_score,
        "rubricator_fingerprint": "rubricator-fp", "rubric_json": "{}"})
    counts["criteria"] = put(rd / "criteria.parquet", {
        **base, "group_id": pid[rk], "prompt_id": pid[rk], "rubric_id": rid[rk],
        "position": crit["position"].to_numpy(),
        "criterion_id": crit["criterion_id"].to_numpy(), "category": np.array(CATEGORIES, dtype=object)[
            crit["position"].to_numpy() % len(CATEGORIES)], "text": crit["text"].to_numpy(),
        "points": crit["points"].to_numpy(), "rubricator_fingerprint": "rubricator-fp"})
    # the blind pool: teachers then students here (the order does not matter to either command)
    pool = TEACHERS + STUDENTS
    verdicts = rng.random((n_rub, pool, PER_RUBRIC)) < 0.6
    answer_idx = np.tile(np.r_[np.arange(TEACHERS), np.arange(STUDENTS)], n_rub)
    source = np.tile(np.array(["teacher"] * TEACHERS + ["student"] * STUDENTS, dtype=object), n_rub)
    per_verdict = pool * PER_RUBRIC
    counts["judgements"] = put(rd / "judgements.parquet", {
        **base, "group_id": np.repeat(pid, per_verdict), "prompt_id": np.repeat(pid, per_verdict),
        "rubric_id": np.repeat(rid, per_verdict), "source": np.repeat(source, PER_RUBRIC),
        "answer_idx": np.repeat(answer_idx, PER_RUBRIC),
        "pool_position": np.tile(np.repeat(np.arange(pool), PER_RUBRIC), n_rub),
        "criterion_id": np.tile(crit["criterion_id"].to_numpy()[:PER_RUBRIC], n_rub * pool),
        "verdict": verdicts.ravel()})
    score = (verdicts[:, TEACHERS:, :] * points[:, None, :]).sum(axis=2)  # (rubric, student)
    s_pid = np.repeat(pid, STUDENTS)
    sample = np.tile(np.arange(STUDENTS), n_rub)
    counts["rollouts"] = put(rd / "rollouts.parquet", {
        **base, "prompt_id": s_pid, "sample_idx": sample,
        "text": np.char.add("I worked it out. Answer: ", sample.astype(str)).astype(object), "n_tokens": 40,
        "finish_reason": "stop", "checkpoint": "round_0"})
    counts["rewards"] = put(rd / "rewards.parquet", {
        **base, "group_id": s_pid, "prompt_id": s_pid, "sample_idx": sample, "rubric_id": np.repeat(rid, STUDENTS),
        "score": score.ravel(), "max_score": np.repeat(max_score, STUDENTS),
        "reward": (score / max_score[:, None]).ravel(), "status": "ok", "error_stage": None, "error_type": None})
    return counts


def timed(repeat: int, fn: Callable[[], object]) -> tuple[object, float]:
    """The fastest of `repeat` calls, with the last call's result."""
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000, help="criteria rows (10 per rubric)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per measurement; the fastest counts")
    ap.add_argument("--work", type=Path, default=None, help="scratch directory (default: a temporary one)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="export_rescore.", dir=args.work))
    try:
        t0 = time.perf_counter()
        run_dir = work / "runs" / "bench"
        counts = write_run(run_dir, args.rows)
        print(f"wrote {', '.join(f'{n:,} {k}' for k, n in counts.items())} in {time.perf_counter() - t0:.1f}s "
              f"on {os.cpu_count()} cores", flush=True)
        figures: dict[str, float] = {}
        for fmt in ExportFormat:
            for verdicts in (False, True):
                name = f"export_{fmt.value}{'_verdicts' if verdicts else ''}_s"
                out = work / "exports" / name
                _, figures[name] = timed(args.repeat,
                                         lambda o=out, f=fmt, v=verdicts: export_run(run_dir, o, f, None, v))
                size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
                print(f"{name[:-2]}: {figures[name]:.2f}s, {size / 2**20:.0f} MiB", flush=True)
                shutil.rmtree(out)
        same, figures["rescore_s"] = timed(args.repeat, lambda: rescore(run_dir, 0, RescoreOptions()))
        deltas = [d for p in same.prompts for d in p.deltas]  # type: ignore[attr-defined]
        if any(d is None or abs(d) > 1e-9 for d in deltas):
            raise SystemExit("a rescore with no option changed a reward: the fixture's rewards are not its verdicts'")
        print(f"rescore (no change): {figures['rescore_s']:.2f}s, {len(deltas):,} rewards unchanged", flush=True)
        drop = RescoreOptions(drop=["c3"])
        dropped, figures["rescore_drop_s"] = timed(args.repeat, lambda: rescore(run_dir, 0, drop))
        moved = sum(1 for p in dropped.prompts for d in p.deltas if d)  # type: ignore[attr-defined]
        print(f"rescore (drop c3 everywhere): {figures['rescore_drop_s']:.2f}s, {moved:,} rewards moved", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"rows": counts["criteria"], "rubrics": counts["rubrics"], "judgements": counts["judgements"],
                      **{k: round(v, 3) for k, v in figures.items()}, "peak_mb": round(peak),
                      "cores": os.cpu_count()}))


if __name__ == "__main__":
    main()
