"""The QA stage: a round's raw rubrics → clean rubrics plus a QA report; and the pool diagnostics after verification.

The set-wise work (normalising, pairing criteria within a rubric, cosine similarity, flags, counts) is
DuckDB SQL; Python does only what SQL cannot: validating rubric JSON with the pydantic schema,
embedding texts, the order-dependent merge resolution over the few duplicate pairs, and math-verify.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any, Literal

import duckdb
import pandas as pd
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ropd.eval.correctness import auc, final_answer, is_correct, quote_pattern
from ropd.io import atomic_write_parquet, atomic_write_text
from ropd.rubric.schema import MAX_CRITERIA, MIN_CRITERIA, Criterion, Rubric
from ropd.rubric.tables import rubric_id
from ropd.store.embed import embed
from ropd.store.tables import BY_NAME, StoreError, create_schema, load_round, round_key

HEAVY_POINTS = 4  # 4 = strong discriminator, 5 = decisive: the paper expects only 1–2 of these per rubric
FLAGS = ("too_few_criteria", "too_many_heavy", "all_min_points", "quotes_reference")
# Lowercase, then every run of characters that is not a letter or digit becomes one space. Written as
# "each such character → space, then runs of spaces → one": the same result as '[^\p{L}\p{N}]+' → ' ',
# three times faster in RE2, where a repeated Unicode class is slow.
NORM_SQL = r"trim(regexp_replace(regexp_replace(lower(text), '[^\p{L}\p{N} ]', ' ', 'g'), '  +', ' ', 'g'))"


class QAConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    merge: Literal["none", "exact", "near"] = Field("near", description="which duplicate criteria of a rubric are "
                                                  "merged before verification (weights change): none = the mined "
                                                  "rubric is verified as written (the official recipe), exact = "
                                                  "same text once normalised, near = also MiniLM near-duplicates")
    near_dup_threshold: float = Field(0.92, gt=0.0, le=1.0, description="MiniLM cosine at or above which two "
                                      "criteria of one rubric are duplicates (merge: near)")
    min_criteria: int = Field(MIN_CRITERIA, ge=MIN_CRITERIA, le=MAX_CRITERIA,
                              description="a rubric left with fewer after merging is flagged and degenerate")
    max_heavy: int = Field(2, ge=0, description="criteria at 4–5 points above which a rubric is flagged")
    embed_batch: int = Field(64, ge=1, description="texts per MiniLM forward pass")


class QAError(StoreError):
    """A round's rubric files are inconsistent (bad rubric_json, criteria rows that disagree with it)."""


def dedup_and_flag(con: duckdb.DuckDBPyConnection, cfg: QAConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Merge duplicate criteria and flag rubrics, over a table `crit` already in `con`.

    `crit` has one row per criterion: rk (rubric key), position, criterion_id, points, text, emb
    (FLOAT[d], unit norm) and the rubric's reference answer as ref_pattern (RE2) and ref_literal (the
    answer's longest whitespace-free piece, lowercase: a text that matches the pattern contains it),
    both null when the prompt has none. Leaves temp tables `merge_plan`, `clean` (the kept criteria,
    positions renumbered) and `flags` in `con` and returns (merge plan, flags) as frames; the bench
    times exactly this function.
    """
    pairs = con.execute(f"""
        WITH c AS (SELECT rk, position, points, emb, {NORM_SQL} AS norm FROM crit),
        p AS (
          SELECT a.rk, a.position AS pos_a, a.points AS pts_a, b.position AS pos_b, b.points AS pts_b,
                 a.norm = b.norm AS exact, array_cosine_similarity(a.emb, b.emb) AS sim
          FROM c a JOIN c b ON a.rk = b.rk AND a.position < b.position)
        SELECT * FROM p WHERE $mode != 'none' AND (exact OR ($mode = 'near' AND sim >= $t))
        ORDER BY rk, pos_a, pos_b""", {"t": cfg.near_dup_threshold, "mode": cfg.merge}).df()
    merges = resolve_merges(pairs)
    con.register("_resolved", merges)
    con.execute("CREATE OR REPLACE TEMP TABLE merge_plan AS SELECT * FROM _resolved")
    con.unregister("_resolved")
    con.execute("""
        CREATE OR REPLACE TEMP TABLE clean AS
        SELECT c.* EXCLUDE (position, emb), c.position AS raw_position,
               (row_number() OVER (PARTITION BY c.rk ORDER BY c.position) - 1)::INTEGER AS position
        FROM crit c ANTI JOIN merge_plan m ON c.rk = m.rk AND c.position = m.dropped_position""")
    con.execute(r"""
        CREATE OR REPLACE TEMP TABLE flags AS
        WITH q AS (
          -- CASE, not AND: DuckDB evaluates every operand of an AND in a select list, and a per-row pattern
          -- is compiled per row; the cheap literal test must gate the regex.
          SELECT *, CASE WHEN contains(lower(text), ref_literal) THEN regexp_matches(text, ref_pattern)
                         ELSE false END AS quotes
          FROM clean)
        SELECT rk, count(*)::INTEGER AS n_criteria, sum(points)::INTEGER AS max_score,
               count(*) < $min AS too_few_criteria,
               count(*) FILTER (WHERE points >= $heavy) > $max_heavy AS too_many_heavy,
               bool_and(points = 1) AS all_min_points,
               bool_or(quotes) AS quotes_reference,
               coalesce(list(criterion_id ORDER BY position) FILTER (WHERE quotes), []) AS quoting
        FROM q GROUP BY rk""", {"min": cfg.min_criteria, "heavy": HEAVY_POINTS, "max_heavy": cfg.max_heavy})
    return merges, con.execute("SELECT * FROM flags ORDER BY rk").df()


def resolve_merges(pairs: pd.DataFrame) -> pd.DataFrame:
    """Turn duplicate pairs into merges, per rubric, without chaining.

    Criteria are visited by rank (points descending, then position); each is merged into the
    highest-ranked criterion already kept that it duplicates, else kept. So every dropped criterion
    is itself a duplicate of the one that absorbs it, and the kept one has the higher weight.
    """
    rows = []
    records = pairs[["rk", "pos_a", "pts_a", "pos_b", "pts_b", "exact", "sim"]].itertuples(index=False, name=None)
    for rk, group in itertools.groupby(records, key=lambda r: r[0]):
        dup: dict[tuple[int, int], tuple[bool, float]] = {}
        points: dict[int, int] = {}
        for _, pos_a, pts_a, pos_b, pts_b, exact, sim in group:
            dup[(pos_a, pos_b)] = (bool(exact), float(sim))
            points[pos_a], points[pos_b] = pts_a, pts_b
        kept: list[int] = []
        for p in sorted(points, key=lambda q: (-points[q], q)):
            target = next((k for k in kept if (min(k, p), max(k, p)) in dup), None)
            if target is None:
                kept.append(p)
                continue
            exact, sim = dup[(min(target, p), max(target, p))]
            rows.append((rk, target, p, "exact" if exact else "near", sim))
    return pd.DataFrame(rows, columns=["rk", "kept_position", "dropped_position", "kind", "similarity"]).astype(
        {"rk": "int64", "kept_position": "int64", "dropped_position": "int64", "similarity": "float64"})


def run_qa(round_dir: Path, prompts: pd.DataFrame | None, cfg: QAConfig) -> dict[str, Any]:
    """Read a round's raw rubrics, write rubrics_clean, criteria_clean, merges, qa.json and qa.md; return the metrics.

    A rubric left with fewer than `min_criteria` criteria keeps its merged criteria (so the audit shows
    what merging did) and is marked `degenerate`; its rubric_json then fails the schema's 4-criterion
    minimum, so verification judges that group with its raw rubric or masks it, never with this one.
    """
    run_id, rnd = round_key(round_dir)
    if not (round_dir / "rubrics.parquet").exists():
        raise QAError(f"{round_dir / 'rubrics.parquet'}: missing; QA runs after the mine stage")
    con = duckdb.connect()
    create_schema(con)
    load_round(con, round_dir, only=("rubrics", "criteria", "rubric_failures"))
    con.execute("""CREATE TEMP TABLE rub AS SELECT row_number() OVER (ORDER BY group_id, rubric_id) AS rk, *
                   FROM rubrics""")
    _check_rubrics(con, round_dir)
    con.register("_refs", _reference_frame(_references(prompts)))
    texts = [r[0] for r in con.execute("SELECT DISTINCT text FROM criteria ORDER BY text").fetchall()]
    vecs = embed(texts, cfg.embed_batch)
    con.register("_emb", pa.table({"text": pa.array(texts, pa.string()), "emb": pa.FixedSizeListArray.from_arrays(
        pa.array(vecs.ravel(), pa.float32()), vecs.shape[1])}))
    con.execute("""
        CREATE TEMP TABLE crit AS
        SELECT r.rk, c.position, c.criterion_id, c.category, c.text, c.points, e.emb, f.ref_literal, f.ref_pattern
        FROM criteria c
        JOIN rub r USING (group_id, rubric_id) JOIN _emb e USING (text) LEFT JOIN _refs f ON f.prompt_id = r.prompt_id
        """)
    merges, _ = dedup_and_flag(con, cfg)
    con.register("_rebuilt", _rebuild(con.execute(
        "SELECT * FROM clean WHERE rk IN (SELECT rk FROM merge_plan) ORDER BY rk, position").df()))
    flag_list = ", ".join(f"CASE WHEN f.{f} THEN '{f}' END" for f in FLAGS)
    con.execute(f"""
        CREATE TEMP TABLE out_rubrics AS
        SELECT r.rk, r.group_id, r.prompt_id, coalesce(n.rubric_id, r.rubric_id) AS rubric_id, f.n_criteria,
               f.max_score, r.rubricator_fingerprint, coalesce(n.rubric_json, r.rubric_json) AS rubric_json,
               r.rubric_id AS raw_rubric_id, f.too_few_criteria AS degenerate,
               list_filter([{flag_list}], lambda x: x IS NOT NULL) AS flags, f.quoting
        FROM rub r JOIN flags f USING (rk) LEFT JOIN _rebuilt n USING (rk)""")
    base = {"run": run_id, "round": rnd}
    outputs = {
        "rubrics_clean": "SELECT $run AS run_id, $round AS round, * EXCLUDE (rk, quoting) FROM out_rubrics",
        "criteria_clean": """
            SELECT $run AS run_id, $round AS round, r.group_id, r.prompt_id, r.rubric_id, c.position, c.criterion_id,
                   c.category, c.text, c.points, r.rubricator_fingerprint
            FROM clean c JOIN out_rubrics r USING (rk) ORDER BY c.rk, c.position""",
        "merges": """
            SELECT $run AS run_id, $round AS round, r.group_id, r.prompt_id, r.raw_rubric_id, r.rubric_id, m.kind,
                   m.similarity,
                   k.criterion_id AS kept_criterion_id, k.points AS kept_points, k.text AS kept_text,
                   d.criterion_id AS dropped_criterion_id, d.points AS dropped_points, d.text AS dropped_text
            FROM merge_plan m JOIN out_rubrics r USING (rk)
              JOIN crit k ON k.rk = m.rk AND k.position = m.kept_position
              JOIN crit d ON d.rk = m.rk AND d.position = m.dropped_position
            ORDER BY m.rk, m.dropped_position""",
    }
    frames = {name: _contract_order(con.execute(sql, base).df(), name) for name, sql in outputs.items()}
    metrics = _qa_metrics(con, merges, run_id, rnd, cfg)
    for name, df in frames.items():
        atomic_write_parquet(df, round_dir / f"{name}.parquet")
    atomic_write_text(json.dumps(metrics, indent=2) + "\n", round_dir / "qa.json")
    atomic_write_text(_qa_markdown(metrics, con.execute("SELECT * FROM out_rubrics WHERE len(flags) > 0 "
                                                        "ORDER BY group_id").df(), frames["merges"]),
                      round_dir / "qa.md")
    con.close()
    return metrics


def _contract_order(df: pd.DataFrame, table: str) -> pd.DataFrame:
    return df[[c for c, _ in BY_NAME[table].columns]]


def _check_rubrics(con: duckdb.DuckDBPyConnection, round_dir: Path) -> None:
    """Hold reloaded rubrics to the schema, their content hash, and their criteria rows; name the culprit."""
    dup = con.execute("SELECT group_id, count(*) FROM rub GROUP BY 1 HAVING count(*) > 1 LIMIT 1").fetchone()
    if dup is not None:
        raise QAError(f"{round_dir / 'rubrics.parquet'}: group {dup[0]} has {dup[1]} rubrics; a group has one")
    crit_rows = con.execute("""SELECT group_id, rubric_id, position, criterion_id, category, text, points
                               FROM criteria ORDER BY group_id, rubric_id, position""").fetchall()
    by_rubric = {k: [r[3:] for r in g] for k, g in itertools.groupby(crit_rows, key=lambda r: (r[0], r[1]))}
    for gid, rid, js in con.execute("SELECT group_id, rubric_id, rubric_json FROM rub ORDER BY rk").fetchall():
        where = f"{round_dir / 'rubrics.parquet'}: rubric {rid} of group {gid}"
        try:
            rubric = Rubric.model_validate_json(js)
        except ValidationError as e:
            raise QAError(f"{where}: rubric_json fails the schema: {e}") from e
        if rubric_id(rubric) != rid:
            raise QAError(f"{where}: rubric_id is not the content hash of rubric_json ({rubric_id(rubric)})")
        want = [(c.id, c.category.value, c.text, c.points) for c in rubric.criteria]
        if by_rubric.pop((gid, rid), None) != want:
            raise QAError(f"{round_dir / 'criteria.parquet'}: the rows of rubric {rid} of group {gid} "
                          "disagree with its rubric_json in rubrics.parquet")
    if by_rubric:
        gid, rid = next(iter(by_rubric))
        raise QAError(f"{round_dir / 'criteria.parquet'}: rubric {rid} of group {gid} is not in rubrics.parquet")


def _references(prompts: pd.DataFrame | None) -> pd.DataFrame:
    """prompt_id, reference_answer (no reference at all when `prompts` is None)."""
    cols = ["prompt_id", "reference_answer"]
    if prompts is None:
        return pd.DataFrame({c: pd.Series(dtype="string") for c in cols})
    if missing := set(cols) - set(prompts.columns):
        raise QAError(f"prompts: missing column(s) {', '.join(sorted(missing))}")
    return prompts[cols]


def _reference_frame(refs: pd.DataFrame) -> pd.DataFrame:
    """prompt_id → the reference's final answer as an RE2 token pattern and a literal that prefilters it."""
    rows = []
    for pid, ref in refs.itertuples(index=False):
        ans = final_answer(ref) if isinstance(ref, str) else None
        if ans is not None:
            rows.append((pid, max(ans.lower().split(), key=len), quote_pattern(ans)))
    return pd.DataFrame(rows, columns=["prompt_id", "ref_literal", "ref_pattern"], dtype="string")


def _rebuild(clean: pd.DataFrame) -> pd.DataFrame:
    """New rubric_id and rubric_json for each rubric that merging changed (rk, rubric_id, rubric_json)."""
    rows = []
    for rk, g in clean.groupby("rk", sort=False):
        crits = [Criterion(id=r.criterion_id, category=r.category, text=r.text, points=int(r.points))
                 for r in g.itertuples(index=False)]
        # Too few criteria for the schema: built unvalidated so that the degenerate rubric keeps a faithful JSON.
        rubric = Rubric(criteria=crits) if len(crits) >= MIN_CRITERIA else Rubric.model_construct(criteria=crits)
        rows.append((rk, rubric_id(rubric), rubric.model_dump_json()))
    return pd.DataFrame(rows, columns=["rk", "rubric_id", "rubric_json"]).astype({"rk": "int64"})


def _qa_metrics(con: duckdb.DuckDBPyConnection, merges: pd.DataFrame, run_id: str, rnd: int,
                cfg: QAConfig) -> dict[str, Any]:
    failures = dict(con.execute("SELECT error_type, count(*) FROM rubric_failures GROUP BY 1 ORDER BY 1").fetchall())
    n_failed = sum(failures.values())
    counts = ", ".join(f"count(*) FILTER (WHERE {f})" for f in FLAGS)
    n_rubrics, flagged, degenerate, *per_flag = con.execute(
        f"SELECT count(*), count(*) FILTER (WHERE len(flags) > 0), count(*) FILTER (WHERE degenerate), {counts} "
        "FROM out_rubrics JOIN flags USING (rk)").fetchone()  # type: ignore[misc]
    n_in, n_out = con.execute("SELECT (SELECT count(*) FROM crit), (SELECT count(*) FROM clean)").fetchone()  # type: ignore[misc]
    # Points each merge took out of its rubric's total: the weight shift verification sees.
    removed = dict(con.execute("""SELECT r.group_id, sum(c.points)::INTEGER FROM merge_plan m
                                  JOIN crit c ON c.rk = m.rk AND c.position = m.dropped_position
                                  JOIN rub r ON r.rk = m.rk GROUP BY 1 ORDER BY 1""").fetchall())
    return {
        "run_id": run_id,
        "round": rnd,
        "rubrics": n_rubrics,
        "criteria_in": n_in,
        "criteria_out": n_out,
        "validation": {"groups": n_rubrics + n_failed, "failed": n_failed,
                       "failure_rate": _rate(n_failed, n_rubrics + n_failed), "by_type": failures},
        "dedup": {"mode": cfg.merge, "threshold": cfg.near_dup_threshold, "merges": len(merges),
                  "exact": int((merges["kind"] == "exact").sum()), "near": int((merges["kind"] == "near").sum()),
                  "rubrics_merged": int(merges["rk"].nunique()),
                  "points_removed": sum(removed.values()), "points_removed_by_group": removed},
        "flags": {**dict(zip(FLAGS, per_flag, strict=True)), "flagged_rubrics": flagged,
                  "flagged_rate": _rate(flagged, n_rubrics)},
        "degenerate": degenerate,
    }


def _rate(n: int, d: int) -> float | None:
    return n / d if d else None


def _md(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _qa_markdown(m: dict[str, Any], flagged: pd.DataFrame, merges: pd.DataFrame, limit: int = 20) -> str:
    v, d, f = m["validation"], m["dedup"], m["flags"]
    lines = [
        f"# QA — run {_md(m['run_id'])}, round {m['round']}", "",
        f"- rubrics: {m['rubrics']} ({v['failed']} group(s) failed validation"
        + (": " + ", ".join(f"{k} {n}" for k, n in v["by_type"].items()) if v["by_type"] else "") + ")",
        f"- criteria: {m['criteria_in']} in, {m['criteria_out']} out; merge mode {d['mode']}: {d['merges']} merge(s) "
        f"({d['exact']} exact, {d['near']} near at cosine ≥ {d['threshold']}) in {d['rubrics_merged']} rubric(s), "
        f"{d['points_removed']} point(s) removed",
        f"- flagged rubrics: {f['flagged_rubrics']}; degenerate (masked from verification): {m['degenerate']}",
        "", "| flag | rubrics |", "|---|---|", *(f"| {k} | {f[k]} |" for k in FLAGS),
    ]
    if len(flagged):
        lines += ["", "## Flagged rubrics", "", "| group | rubric | criteria | flags | quoting |",
                  "|---|---|---|---|---|"]
        lines += [f"| {_md(r.group_id)} | {r.rubric_id} | {r.n_criteria} | {', '.join(r.flags)} | "
                  f"{_md(', '.join(r.quoting))} |" for r in flagged.head(limit).itertuples(index=False)]
    if len(merges):
        lines += ["", "## Merges", "", "| group | kind | cosine | kept (points) | dropped (points) |",
                  "|---|---|---|---|---|"]
        lines += [f"| {_md(r.group_id)} | {r.kind} | {r.similarity:.3f} | {_md(r.kept_text)} ({r.kept_points}) | "
                  f"{_md(r.dropped_text)} ({r.dropped_points}) |" for r in merges.head(limit).itertuples(index=False)]
    for what, frame in (("flagged rubrics", flagged), ("merges", merges)):
        if len(frame) > limit:
            lines.append(f"\n… {len(frame) - limit} more {what}: see rubrics_clean.parquet / merges.parquet")
    return "\n".join(lines) + "\n"


def pool_diagnostics(round_dir: Path, prompts: pd.DataFrame | None) -> dict[str, Any]:
    """After verification: how well the round's rubrics separate answers. Writes diagnostics.json."""
    run_id, rnd = round_key(round_dir)
    con = duckdb.connect()
    create_schema(con)
    load_round(con, round_dir)
    groups = con.execute("""
        SELECT count(DISTINCT group_id), count(DISTINCT group_id) FILTER (WHERE status = 'ok'),
               count(DISTINCT group_id) FILTER (WHERE status = 'judge_error'),
               count(DISTINCT group_id) FILTER (WHERE status = 'masked'),
               avg(reward) FILTER (WHERE status = 'ok')
        FROM rewards""").fetchone()
    n_groups, n_ok, n_err, n_masked, mean_reward = groups  # type: ignore[misc]
    non_disc = con.execute("SELECT avg(non_discriminative::INT) FROM criterion_stats").fetchone()[0]  # type: ignore[index]
    tbs = con.execute("SELECT avg(teacher_below_student::INT) FROM rubric_health").fetchone()[0]  # type: ignore[index]
    by_cat, by_source = {}, {}
    for cat, source, rate in con.execute("""
            SELECT c.category, j.source, avg(j.verdict::INT)
            FROM judgements j JOIN criteria_final c USING (run_id, round, group_id, rubric_id, criterion_id)
            GROUP BY GROUPING SETS ((c.category), (c.category, j.source)) ORDER BY ALL""").fetchall():
        if source is None:
            by_cat[cat] = rate
        else:
            by_source.setdefault(source, {})[cat] = rate
    labelled = _labelled_rewards(con, prompts)
    metrics = {
        "run_id": run_id, "round": rnd,
        "n_groups": n_groups, "n_groups_ok": n_ok,
        "judge_error_rate": _rate(n_err, n_groups), "masked_rate": _rate(n_masked, n_groups),
        "mean_reward": mean_reward,
        "non_discriminative_rate": non_disc,
        "teacher_below_student_rate": tbs,
        "pass_rate_by_category": by_cat,
        "pass_rate_by_category_source": by_source,
        "reward_auc": auc(labelled["reward"].tolist(), labelled["correct"].tolist()) if len(labelled) else None,
        "auc_n": len(labelled),
        "accuracy": float(labelled["correct"].mean()) if len(labelled) else None,
    }
    con.close()
    atomic_write_text(json.dumps(metrics, indent=2) + "\n", round_dir / "diagnostics.json")
    return metrics


def _labelled_rewards(con: duckdb.DuckDBPyConnection, prompts: pd.DataFrame | None) -> pd.DataFrame:
    """Scored rollouts of prompts with a reference answer, with math-verify correctness (unjudgeable ones dropped)."""
    con.register("_prompts", _references(prompts))
    rows = con.execute("""
        SELECT o.text, p.reference_answer, o.reward FROM rollout_rewards o JOIN _prompts p USING (prompt_id)
        WHERE o.status = 'ok' AND o.reward IS NOT NULL AND o.text IS NOT NULL AND p.reference_answer IS NOT NULL
        ORDER BY o.prompt_id, o.sample_idx""").fetchall()
    con.unregister("_prompts")
    labelled = [(reward, ok) for text, ref, reward in rows if (ok := is_correct(text, ref)) is not None]
    return pd.DataFrame(labelled, columns=["reward", "correct"])
