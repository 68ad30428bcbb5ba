"""Audit queries over the store: canned views, one prompt's full story, and ad-hoc SQL with bound parameters.

Every query here reads the views of `ropd.store.tables`, so `ropd audit`, the report and a user's own
SQL agree on what "the rubric", "the verdict matrix" and "the reward" of a group are.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import duckdb

from ropd.store.tables import StoreError

_SCOPE = "($run IS NULL OR run_id = $run) AND ($round IS NULL OR round = $round)"
_PROMPT = f"prompt_id = $prompt AND {_SCOPE}"

CANNED: dict[str, str] = {
    # Most issues first (flags + non-discriminative criteria + a teacher scored below a student), then the
    # rubrics that separate teacher from student answers least.
    "worst-rubrics": f"""
        SELECT run_id, round, prompt_id, group_id, issues, flags, non_discriminative, n_criteria, merges,
               round(teacher_mean, 3) AS teacher_mean, round(student_mean, 3) AS student_mean, teacher_below_student
        FROM rubric_health WHERE {_SCOPE}
        ORDER BY issues DESC, teacher_mean - student_mean ASC NULLS LAST, run_id, round, group_id LIMIT $limit""",
    # Failed by most answers; among equals, those that even the teacher fails (likely wrong or unfair criteria).
    "failed-criteria": f"""
        SELECT run_id, round, group_id, criterion_id, category, points, round(fail_rate, 3) AS fail_rate,
               round(1 - teacher_pass_rate, 3) AS teacher_fail_rate,
               round(1 - student_pass_rate, 3) AS student_fail_rate, n_answers, text
        FROM criterion_stats WHERE {_SCOPE}
        ORDER BY fail_rate DESC, teacher_fail_rate DESC NULLS LAST, n_answers DESC, run_id, round, group_id,
                 criterion_id LIMIT $limit""",
    "trends": f"SELECT * FROM round_trends WHERE {_SCOPE} LIMIT $limit",
    # External rubric sets (`ropd import rubrics`); they belong to no run, so --run leaves none.
    "imports": """
        SELECT source_file, rubric_line, prompt_id, rubric_id, round, n_criteria, max_score, flags, file_sha256,
               imported_at
        FROM imported_rubrics WHERE $run IS NULL AND ($round IS NULL OR round = $round)
        ORDER BY source_file, rubric_line LIMIT $limit""",
}

# The columns that matter most in a terminal table, first; the rest follow if they fit (ropd/store/terminal.py).
TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    "worst-rubrics": ("run_id", "round", "prompt_id", "group_id", "issues", "flags", "teacher_mean", "student_mean",
                      "non_discriminative", "teacher_below_student"),
    "failed-criteria": ("run_id", "round", "group_id", "criterion_id", "fail_rate", "teacher_fail_rate", "text"),
    "trends": ("run_id", "round", "mean_reward", "teacher_mean", "reward_auc", "judge_error_rate", "flagged",
               "merges"),
    "imports": ("source_file", "rubric_line", "prompt_id", "n_criteria", "flags"),
    "prompt": ("question", "reference_answer"),
    "rollouts": ("run_id", "round", "group_id", "sample_idx", "reward", "status", "text"),
    "rubric": ("run_id", "round", "group_id", "rubric_id", "criterion_id", "points", "text", "category"),
    "merges": ("run_id", "round", "group_id", "kind", "similarity", "kept_criterion_id", "dropped_criterion_id",
               "dropped_text"),
    "verdict matrix": ("run_id", "round", "group_id", "pool_position", "source", "answer_idx", "verdicts",
                       "weighted", "criterion_ids"),
    "failures": ("run_id", "round", "group_id", "stage", "error_type", "message"),
}

STORY: dict[str, str] = {
    "prompt": "SELECT run_id, question, reference_answer, split, source FROM prompts WHERE prompt_id = $prompt"
              " AND ($run IS NULL OR run_id = $run) ORDER BY run_id",
    "teacher answers": "SELECT run_id, answer_idx, text FROM teacher_answers WHERE prompt_id = $prompt"
                       " AND ($run IS NULL OR run_id = $run) ORDER BY run_id, answer_idx",
    "rollouts": f"""SELECT run_id, round, sample_idx, group_id, reward, status, finish_reason, n_tokens, text
                    FROM rollout_rewards WHERE {_PROMPT} ORDER BY run_id, round, sample_idx""",
    "rubric": f"""SELECT run_id, round, group_id, rubric_id, degenerate, flags, position, criterion_id, category,
                         points, text
                  FROM rubric_criteria WHERE {_PROMPT} ORDER BY run_id, round, group_id, position""",
    "merges": f"""SELECT run_id, round, group_id, kind, round(similarity, 3) AS similarity, kept_criterion_id,
                         kept_points, dropped_criterion_id, dropped_points, dropped_text
                  FROM merges WHERE {_PROMPT} ORDER BY run_id, round, group_id, dropped_criterion_id""",
    "verdict matrix": f"""SELECT run_id, round, group_id, pool_position, source, answer_idx, criterion_ids, verdicts,
                                 score, max_score, round(weighted, 3) AS weighted
                          FROM verdict_matrix WHERE {_PROMPT} ORDER BY run_id, round, group_id, pool_position""",
    "failures": f"""SELECT run_id, round, group_id, stage, error_type, message FROM rubric_failures
                    WHERE {_PROMPT} ORDER BY run_id, round, group_id""",
}


@dataclass
class Result:
    """`table`: the columns a terminal table shows first (`TABLE_COLUMNS`); CSV and JSON show all of them."""

    title: str
    columns: list[str]
    rows: list[tuple[Any, ...]]
    table: tuple[str, ...] = ()

    def records(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, r, strict=True)) for r in self.rows]


class QueryError(StoreError):
    """DuckDB rejected a query; the message is DuckDB's own."""


def run_query(con: duckdb.DuckDBPyConnection, sql: str, params: dict[str, Any] | None = None,
              title: str = "query") -> Result:
    try:
        cur = con.execute(sql, params or {})
        columns = [d[0] for d in cur.description or []]
        rows = cur.fetchall() if cur.description else []
    except duckdb.Error as e:
        raise QueryError(str(e)) from e
    return Result(title, columns, rows, TABLE_COLUMNS.get(title, ()))


def canned(con: duckdb.DuckDBPyConnection, view: str, run: str | None = None, round: int | None = None,
           limit: int = 20) -> Result:
    if view not in CANNED:
        raise QueryError(f"unknown view {view!r}; choose one of {', '.join([*CANNED, 'prompt'])}")
    return run_query(con, CANNED[view], {"run": run, "round": round, "limit": limit}, title=view)


def prompt_story(con: duckdb.DuckDBPyConnection, prompt_id: str, run: str | None = None,
                 round: int | None = None) -> list[Result]:
    """Everything about one prompt: question, teacher answers, rollouts, rubric, merges, verdicts, failures.

    `prompt_id` may be a unique prefix, such as the 8 characters a terminal table shows of a hash id.
    """
    prompt_id = resolve_prompt(con, prompt_id)
    results = []
    for title, sql in STORY.items():
        params = {"prompt": prompt_id, "run": run} | ({} if title in ("prompt", "teacher answers") else
                                                      {"round": round})
        results.append(run_query(con, sql, params, title=title))
    if not any(r.rows for r in results):
        raise QueryError(f"prompt {prompt_id!r} is not in the store" + (f" for run {run!r}" if run else ""))
    return [r for r in results if r.rows]


def resolve_prompt(con: duckdb.DuckDBPyConnection, prefix: str) -> str:
    """The prompt id `prefix` names: itself if it is one, else the one id it starts; ambiguity is an error."""
    ids = [r[0] for r in con.execute(
        "SELECT DISTINCT prompt_id FROM (SELECT prompt_id FROM prompts UNION ALL SELECT prompt_id FROM rewards "
        "UNION ALL SELECT prompt_id FROM rubrics) WHERE starts_with(prompt_id, $p) ORDER BY 1 LIMIT 6",
        {"p": prefix}).fetchall()]
    if len(ids) > 1 and prefix not in ids:
        raise QueryError(f"prompt id prefix {prefix!r} is ambiguous: {', '.join(ids[:5])}"
                         + (", …" if len(ids) > 5 else ""))
    return ids[0] if len(ids) == 1 else prefix


def parse_param(item: str) -> tuple[str, Any]:
    """`name=value`; the value is read as JSON where it parses (numbers, true/false, null), else as a string."""
    name, sep, raw = item.partition("=")
    if not sep or not name.strip():
        raise QueryError(f"--param {item!r}: expected name=value")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return name.strip(), value
