"""`ropd report RUN`: one self-contained static HTML file for auditing a run.

Safety by construction: every piece of text goes through `tag`, which escapes it, and only `tag`
produces markup. A Content-Security-Policy with hashes admits exactly our own inline style and
script, so even a slip in escaping could not run a rollout's `<script>` or `onerror`. The page is a
pure function of the run's files, its what-if rescores and the imported rubric sets (no timestamp), so it
only changes when one of those does.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import duckdb

from ropd.eval.correctness import is_correct
from ropd.io import atomic_write_text
from ropd.llm.cost import usd_text
from ropd.store.db import DEFAULT_IMPORTS
from ropd.store.tables import create_schema, load_run

PAPER_AUC = 0.90
PALETTE = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c")
VOID = frozenset({"input", "meta"})


class Safe(str):
    """Markup that is already escaped."""


def esc(value: Any) -> Safe:
    if isinstance(value, Safe):
        return value
    return Safe(html.escape("" if value is None else str(value), quote=True))


def tag(name: str, /, *children: Any, **attrs: Any) -> Safe:
    """`<name attrs>children</name>`, every child and attribute escaped unless already `Safe`.

    Attribute names: a trailing `_` is dropped (`class_`), other `_` become `-` (`data_search`).
    """
    parts = []
    for key, value in attrs.items():
        if value is None or value is False:
            continue
        attr = key.rstrip("_").replace("_", "-")
        parts.append(f" {attr}" if value is True else f' {attr}="{esc(value)}"')
    if name in VOID:
        return Safe(f"<{name}{''.join(parts)}>")
    return Safe(f"<{name}{''.join(parts)}>{join(children)}</{name}>")


def join(children: Iterable[Any]) -> Safe:
    out = []
    for c in children:
        out.append(join(c) if isinstance(c, list | tuple) else esc(c))
    return Safe("".join(out))


def num(v: Any, digits: int = 3) -> str:
    if v is None:
        return "–"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _rows(con: duckdb.DuckDBPyConnection, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    cur = con.execute(sql, params)
    cols = [d[0] for d in cur.description or []]
    return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]


def _by_prompt(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        out[r["prompt_id"]].append(r)
    return out


STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1150px;padding:0 16px 48px;color:#111}
h1{font-size:22px}h2{font-size:18px;margin-top:28px}h4{margin:14px 0 6px}
table{border-collapse:collapse;margin:6px 0}td,th{border:1px solid #ddd;padding:3px 6px;vertical-align:top}
th{background:#f3f4f6;text-align:left}td.n{text-align:right;font-variant-numeric:tabular-nums}
.charts{display:flex;flex-wrap:wrap;gap:12px}.charts figure{margin:0;border:1px solid #e5e7eb;padding:6px}
figcaption{font-weight:600;font-size:13px}
details.prompt{border:1px solid #e5e7eb;border-radius:6px;margin:6px 0;padding:4px 10px}
details.prompt>summary{cursor:pointer}details.prompt[open]>summary{border-bottom:1px solid #e5e7eb;padding-bottom:4px}
.q{color:#374151}.badge{display:inline-block;background:#fef3c7;color:#92400e;border-radius:9px;padding:0 7px;
font-size:12px;margin-left:4px}.badge.err{background:#fee2e2;color:#991b1b}
pre{white-space:pre-wrap;word-break:break-word;background:#f9fafb;border:1px solid #eee;padding:6px;margin:4px 0}
td.pass{background:#dcfce7;text-align:center}td.fail{background:#fee2e2;text-align:center}
tr.teacher td:first-child,tr.teacher td:nth-child(2){background:#e0e7ff;font-weight:600}
.muted{color:#6b7280}.error{color:#991b1b}#tools{position:sticky;top:0;background:#fff;padding:8px 0;z-index:1}
#filter{width:340px;padding:4px 8px}.scroll{overflow-x:auto}
.verdict{font-size:16px;padding:6px 10px;border-radius:6px}.verdict-pass{background:#dcfce7}
.verdict-warn{background:#fef3c7}.verdict-fail{background:#fee2e2}.verdict-skipped{background:#f3f4f6}
"""

SCRIPT = """
(function () {
  var input = document.getElementById("filter");
  var flagged = document.getElementById("flagged");
  var count = document.getElementById("count");
  var items = Array.prototype.slice.call(document.querySelectorAll("details.prompt"));
  function apply() {
    var q = input.value.trim().toLowerCase();
    var shown = 0;
    items.forEach(function (el) {
      var hit = (!q || el.dataset.search.indexOf(q) >= 0) && (!flagged.checked || el.dataset.flagged === "1");
      el.hidden = !hit;
      if (hit) { shown += 1; }
    });
    count.textContent = shown + " of " + items.length + " prompts";
  }
  input.addEventListener("input", apply);
  flagged.addEventListener("change", apply);
  var m = /[#&]q=([^&]*)/.exec(location.hash);
  if (m) { input.value = decodeURIComponent(m[1]); }
  apply();
})();
"""


def _csp_hash(source: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(source.encode()).digest()).decode() + "'"


def line_chart(title: str, rounds: list[int], series: dict[str, list[float | None]],
               reference: tuple[str, float] | None = None) -> Safe:
    """An inline SVG line chart over rounds, y in [0, 1]; missing values break the line."""
    w, h, left, right, top, bottom = 340, 190, 34, 10, 10, 40
    pw, ph = w - left - right, h - top - bottom
    span = max(rounds[-1] - rounds[0], 1) if rounds else 1

    def x(r: int) -> float:
        return left + (pw / 2 if len(rounds) == 1 else (r - rounds[0]) / span * pw)

    def y(v: float) -> float:
        return top + (1 - v) * ph

    parts: list[Safe] = [tag("title", title)]
    for g in (0, 0.25, 0.5, 0.75, 1):
        parts += [tag("line", x1=left, x2=left + pw, y1=y(g), y2=y(g), stroke="#e5e7eb"),
                  tag("text", f"{g:g}", x=left - 4, y=y(g) + 4, text_anchor="end", font_size=10, fill="#6b7280")]
    step = max(1, len(rounds) // 8)
    parts += [tag("text", r, x=x(r), y=top + ph + 14, text_anchor="middle", font_size=10, fill="#6b7280")
              for r in rounds[::step]]
    if reference is not None:
        label, value = reference
        parts += [tag("line", x1=left, x2=left + pw, y1=y(value), y2=y(value), stroke="#9ca3af",
                      stroke_dasharray="4 3"),
                  tag("text", label, x=left + pw, y=y(value) - 3, text_anchor="end", font_size=10, fill="#6b7280")]
    if not any(v is not None for values in series.values() for v in values):
        parts.append(tag("text", "no data", x=left + pw / 2, y=top + ph / 2, text_anchor="middle", fill="#9ca3af"))
    for i, (name, values) in enumerate(series.items()):
        color = PALETTE[i % len(PALETTE)]
        segments: list[list[tuple[float, float]]] = [[]]
        for r, v in zip(rounds, values, strict=True):
            if v is None:
                segments.append([])
            else:
                segments[-1].append((x(r), y(v)))
        parts += [tag("polyline", points=" ".join(f"{a:.1f},{b:.1f}" for a, b in seg), fill="none", stroke=color,
                      stroke_width=2) for seg in segments if len(seg) > 1]
        parts += [tag("circle", cx=f"{a:.1f}", cy=f"{b:.1f}", r=3, fill=color) for seg in segments for a, b in seg]
        lx = left + (i % 2) * (pw / 2)
        ly = top + ph + 26 + (i // 2) * 12
        parts += [tag("rect", x=lx, y=ly - 8, width=10, height=3, fill=color),
                  tag("text", name, x=lx + 14, y=ly - 4, font_size=10, fill="#374151")]
    h_total = h + 12 * max(0, (len(series) - 1) // 2)
    svg = tag("svg", parts, xmlns="http://www.w3.org/2000/svg", width=w, height=h_total,
              viewBox=f"0 0 {w} {h_total}", role="img", aria_label=title)
    return tag("figure", tag("figcaption", title), svg)


def _table(rows: list[dict[str, Any]], columns: list[str]) -> Safe:
    head = tag("tr", [tag("th", c) for c in columns])
    body = [tag("tr", [tag("td", num(r[c]), class_="n" if isinstance(r[c], int | float) else None)
                       for c in columns]) for r in rows]
    return tag("table", tag("thead", head), tag("tbody", body))


def _rubric_block(crit: list[dict[str, Any]], merges: list[dict[str, Any]]) -> Safe:
    first = crit[0]
    flags = [tag("span", f, class_="badge") for f in first["flags"] or []]
    if first["degenerate"]:
        flags.append(tag("span", "degenerate" if first["is_clean"] else "degenerate: judged with the raw rubric",
                         class_="badge err"))
    head = tag("p", f"Rubric {first['rubric_id']} · {len(crit)} criteria · max {sum(c['points'] for c in crit)} ",
               *flags)
    table = tag("table", tag("tr", tag("th", "id"), tag("th", "category"), tag("th", "pts"), tag("th", "criterion")),
                [tag("tr", tag("td", c["criterion_id"]), tag("td", c["category"]), tag("td", c["points"], class_="n"),
                     tag("td", c["text"])) for c in crit])
    merged = tag("details", tag("summary", f"{len(merges)} merged duplicate(s)"), tag("ul", [
        tag("li", f"{m['kind']} (cosine {m['similarity']:.3f}): ", tag("q", m["dropped_text"]),
            f" ({m['dropped_points']} pts) merged into {m['kept_criterion_id']} ({m['kept_points']} pts)")
        for m in merges])) if merges else Safe("")
    return join([head, table, merged])


def _matrix(crit: list[dict[str, Any]], rows: list[dict[str, Any]]) -> Safe:
    head = tag("tr", tag("th", "pool #"), tag("th", "answer"), [tag("th", c["criterion_id"], title=c["text"])
                                                               for c in crit], tag("th", "score"))
    body = []
    for r in rows:
        teacher = r["source"] == "teacher"
        cells = [tag("td", "✓" if v else "✗", class_="pass" if v else "fail") for v in r["verdicts"]]
        body.append(tag("tr", tag("td", r["pool_position"] + 1, class_="n"),
                        tag("td", f"{'teacher' if teacher else 'student'} {r['answer_idx']}"), cells,
                        tag("td", num(r["weighted"]), class_="n"), class_="teacher" if teacher else "student"))
    return tag("table", tag("thead", head), tag("tbody", body), class_="matrix")


def _rollouts(rows: list[dict[str, Any]], reference: str | None) -> Safe:
    items = []
    for r in rows:
        correct = is_correct(r["text"], reference) if reference is not None and r["text"] is not None else None
        label = [f"#{r['sample_idx']} · reward {num(r['reward'])} · {r['status']}"]
        if correct is not None:
            label.append(" · correct" if correct else " · wrong")
        if r["error_type"]:
            label.append(f" · {r['error_stage']}/{r['error_type']}")
        items.append(tag("details", tag("summary", *label), tag("pre", r["text"])))
    return tag("details", tag("summary", f"Rollouts ({len(rows)})"), items)


Rows = list[dict[str, Any]]


def _prompt_section(pid: str, prompt: dict[str, Any] | None, teacher: Rows,
                    parts: dict[str, dict[tuple[int, str | None], Rows]], imported: list[Rows]) -> Safe:
    """One collapsed section per prompt: question, teacher answers, the imported rubrics of the prompt, then
    per round each group's rubric, merges and verdict matrix, and the round's rollouts. `parts` maps a section
    name to rows by (round, group), the group being None for rollouts."""
    question = (prompt or {}).get("question") or ""
    reference = (prompt or {}).get("reference_answer")
    keys = sorted({k for section in parts.values() for k in section}, key=lambda k: (k[0], k[1] or ""))
    rounds = sorted({r for r, _ in keys})
    flags = sorted({f for rows in parts["rubric"].values() for f in (rows[0]["flags"] or [])})
    errors = any(r["status"] == "judge_error" for rows in parts["rollouts"].values() for r in rows)
    rewards = [r["reward"] for rows in parts["rollouts"].values() for r in rows if r["reward"] is not None]
    summary = tag("summary", tag("code", pid), " ", tag("span", question[:140], class_="q"),
                  tag("span", f"rounds {', '.join(map(str, rounds))}", class_="badge") if rounds else "",
                  [tag("span", f, class_="badge") for f in flags],
                  tag("span", "judge error", class_="badge err") if errors else "",
                  tag("span", f" mean reward {sum(rewards) / len(rewards):.3f}", class_="muted") if rewards else "")
    body: list[Any] = [tag("p", question)]
    if reference is not None:
        body.append(tag("p", "Reference answer: ", tag("code", reference)))
    if teacher:
        body.append(tag("details", tag("summary", f"Teacher answers ({len(teacher)})"),
                        [tag("pre", f"[{t['answer_idx']}] ", t["text"]) for t in teacher]))
    body += [_imported_block(crit) for crit in imported]
    for rnd in rounds:
        body.append(tag("h4", f"Round {rnd}"))
        for key in (k for k in keys if k[0] == rnd and k[1] is not None):
            if key[1] != pid:  # several groups per prompt (one rubric per rollout): name the group
                body.append(tag("p", tag("strong", f"group {key[1]}")))
            for f in parts["failures"].get(key, []):
                body.append(tag("p", f"rubric failed: {f['stage']}/{f['error_type']}: {f['message']}",
                                class_="error"))
            crit = parts["rubric"].get(key, [])
            if crit:
                body.append(_rubric_block(crit, parts["merges"].get(key, [])))
            if parts["matrix"].get(key):
                body.append(tag("div", _matrix(crit, parts["matrix"][key]), class_="scroll"))
        if parts["rollouts"].get((rnd, None)):
            body.append(_rollouts(parts["rollouts"][(rnd, None)], reference))
    search = " ".join([pid, question]).lower()
    return tag("details", summary, tag("div", body), class_="prompt", data_search=search,
               data_flagged="1" if flags or errors else "0")


USAGE_COLUMNS = ("calls", "tokens_in", "tokens_cached", "tokens_out", "tokens_reasoning", "usd")


def _spend_section(diagnostics: list[tuple[int, dict[str, Any]]]) -> Safe:
    """Tokens and spend per round and role (the calls paid in that round, from each diagnostics.json), the
    rounds' total per role, and the run's total as of its last verified round."""
    rows, totals = [], {}
    for rnd, doc in diagnostics:
        for role, u in sorted((doc.get("usage") or {}).items()):
            rows.append({"round": rnd, "role": role, **{c: u.get(c) for c in USAGE_COLUMNS}})
            t = totals.setdefault(role, {"round": "all", "role": role, **dict.fromkeys(USAGE_COLUMNS)})
            for c in USAGE_COLUMNS:
                if u.get(c) is not None:
                    t[c] = (t[c] or 0) + u[c]
    if not rows:
        return tag("p", "No token usage recorded: these rounds were verified before cost accounting.",
                   class_="muted")
    cells = [{**r, "usd": usd_text(r["usd"])} for r in [*rows, *totals.values()]]
    last_round, last = diagnostics[-1]
    run_total = last.get("run_spend_usd")
    line = (f"Run total {usd_text(run_total)}: every call the run had paid when round {last_round} was verified, "
            "teacher and evaluations included; cache replays cost nothing." if run_total is not None else
            "No role has a price (role.price), so spend is not known; the token counts are.")
    return join([tag("div", _table(cells, ["round", "role", *USAGE_COLUMNS]), class_="scroll"), tag("p", line)])


def _judge_check_section(run_dir: Path) -> Safe:
    """The judge check's verdict, first thing on the page: a FAIL explains a run that learns nothing."""
    f = run_dir / "judge_check.json"
    if not f.is_file():
        return tag("p", "No judge check: this run predates it (ropd judge check --params FILE measures one).",
                   class_="muted")
    doc = json.loads(f.read_text())
    verdict = tag("p", tag("strong", f"Judge check: {doc['status']}"), f" — {doc['reason']}",
                  class_=f"verdict verdict-{str(doc['status']).lower()}")
    judges = tag("p", f"rubricator {doc['rubricator']} · verifier {doc['verifier']} · {doc['n_prompts']} prompt(s), "
                      "teacher answers against known-bad corruptions of them", class_="muted")
    figures = [{"figure": x["name"], "value": num(x["value"]), "status": x["status"], "bounds": x["bounds"],
                "what it measures": x["reason"]} for x in doc.get("figures", [])]
    per = [{"corruption": k, "separation AUC": num(v), "mean score": num((doc.get("mean_bad_score") or {}).get(k))}
           for k, v in (doc.get("separation_by_corruption") or {}).items()]
    parts = [verdict, judges]
    if figures:
        parts.append(tag("div", _table(figures, ["figure", "value", "status", "bounds", "what it measures"]),
                         class_="scroll"))
    if per:
        parts.append(tag("p", f"teacher answers' mean score {num(doc.get('mean_teacher_score'))}; by corruption:"))
        parts.append(tag("div", _table(per, ["corruption", "separation AUC", "mean score"]), class_="scroll"))
    return join(parts)


def _rescore_section(run_dir: Path) -> Safe:
    """The what-if rescores an auditor ran on this run (`ropd audit rescore`): did a flagged criterion matter?"""
    from ropd.store.rescore import rescore_dir, rescore_summaries

    rows = [x.model_dump() for x in rescore_summaries(run_dir)]
    if not rows:
        return tag("p", f"None yet: `ropd audit rescore {run_dir.name} --round R --drop-criterion ID` recomputes a "
                        f"round's rewards and advantages from its verdicts (no judge call) and writes "
                        f"{rescore_dir(run_dir)}/, which this page then shows.", class_="muted")
    cells = [{**r, "mean_abs_delta": num(r["mean_abs_delta"]), "min_spearman": num(r["min_spearman"])} for r in rows]
    columns = ["round", "options", "rollouts", "changed", "mean_abs_delta", "sign_flips", "prompts_flipped",
               "min_spearman", "file"]
    return join([tag("div", _table(cells, columns), class_="scroll"),
                 tag("p", "changed: rollouts whose reward moved; sign_flips: rollouts whose group advantage changed "
                          "sign (the update would push them the other way); min_spearman: the lowest per-prompt rank "
                          "correlation with the stored rewards.", class_="muted")])


def _imports(con: duckdb.DuckDBPyConnection, imports_dir: Path | None) -> Rows:
    """The imported criteria (`ropd import rubrics`) of this run's prompts, from the import records."""
    if imports_dir is None or not any(imports_dir.glob("*.parquet")):
        return []
    # by name: a file whose column is all null (no tags, no round) has no type of its own for it
    return _rows(con, "SELECT * FROM read_parquet($glob, union_by_name = true) "
                      "WHERE prompt_id IN (SELECT prompt_id FROM prompts) ORDER BY source_file, rubric_line, position",
                 {"glob": str(imports_dir / "*.parquet")})


def _imports_section(imported: Rows, imports_dir: Path | None) -> Safe:
    if not imported:
        return tag("p", f"No imported rubric set covers this run's prompts ({imports_dir or 'no imports directory'}; "
                        "`ropd import rubrics FILE --format healthbench|jsonl` adds one).", class_="muted")
    sets: dict[str, Rows] = defaultdict(list)
    for c in imported:
        sets[c["source_file"]].append(c)
    rows = [{"file": name, "format": cs[0]["format"], "sha256": cs[0]["file_sha256"][:16],
             "prompts": len({c["prompt_id"] for c in cs}), "rubrics": len({c["rubric_line"] for c in cs}),
             "criteria": len(cs), "flagged criteria": sum(bool(c["flags"]) for c in cs),
             "flags": ", ".join(sorted({f for c in cs for f in c["flags"]})) or "—"}
            for name, cs in sorted(sets.items())]
    return tag("div", _table(rows, list(rows[0])), class_="scroll")


def _imported_block(crit: Rows) -> Safe:
    first = crit[0]
    head = tag("p", f"Imported rubric {first['rubric_id']} · {first['source_file']} line {first['rubric_line']} "
                    f"({first['format']}) · {len(crit)} criteria ",
               [tag("span", f, class_="badge") for f in first["rubric_flags"]])
    table = tag("table", tag("tr", tag("th", "id"), tag("th", "category"), tag("th", "pts"), tag("th", "criterion"),
                             tag("th", "flags")),
                [tag("tr", tag("td", c["criterion_id"]), tag("td", c["category"] or "—"),
                     tag("td", num(c["points"]), class_="n"), tag("td", c["text"]),
                     tag("td", [tag("span", f, class_="badge err") for f in c["flags"]])) for c in crit])
    return join([head, table])


def write_report(run_dir: Path, out: Path | None = None, imports_dir: Path | None = DEFAULT_IMPORTS) -> Path:
    """Write the run's audit report (default `run_dir/report.html`) and return its path.

    Beside the run's own files it shows the run's what-if rescores and the imported rubric sets that cover
    its prompts, so the page changes when an auditor adds either."""
    out = out or run_dir / "report.html"
    con = duckdb.connect()
    create_schema(con)
    load_run(con, run_dir)
    trends = _rows(con, "SELECT * FROM round_trends")
    diagnostics = [(r["round"], json.loads(r["diagnostics"]) if isinstance(r["diagnostics"], str) else r["diagnostics"])
                   for r in _rows(con, "SELECT round, diagnostics FROM round_metrics WHERE diagnostics IS NOT NULL "
                                       "ORDER BY round")]
    prompts = {r["prompt_id"]: r for r in _rows(con, "SELECT * FROM prompts")}
    teacher = _by_prompt(_rows(con, "SELECT * FROM teacher_answers ORDER BY prompt_id, answer_idx"))
    queries = {
        "rubric": "SELECT * FROM rubric_criteria ORDER BY group_id, round, position",
        "merges": "SELECT * FROM merges ORDER BY group_id, round, dropped_criterion_id",
        "matrix": "SELECT * FROM verdict_matrix ORDER BY group_id, round, pool_position",
        "rollouts": "SELECT * FROM rollout_rewards ORDER BY prompt_id, round, sample_idx",
        "failures": "SELECT * FROM rubric_failures ORDER BY group_id, round",
    }
    per_prompt: dict[str, dict[str, dict[tuple[int, str | None], Rows]]] = defaultdict(
        lambda: {name: defaultdict(list) for name in queries})
    for name, sql in queries.items():
        for row in _rows(con, sql):
            # A round's rollouts are shown together, whichever groups they were judged in.
            group = None if name == "rollouts" else row["group_id"]
            per_prompt[row["prompt_id"]][name][(row["round"], group)].append(row)
    imported = _imports(con, imports_dir)
    con.close()
    by_import: dict[str, dict[tuple[str, int], Rows]] = defaultdict(lambda: defaultdict(list))
    for c in imported:
        by_import[c["prompt_id"]][(c["source_file"], c["rubric_line"])].append(c)

    # Only prompts some round used: prompts.parquet also lists future rounds' and held-out prompts.
    sections = [_prompt_section(pid, prompts.get(pid), teacher.get(pid, []), per_prompt[pid],
                                [by_import[pid][k] for k in sorted(by_import[pid])]) for pid in sorted(per_prompt)]
    audit = join([tag("h2", "What-if rescores"), _rescore_section(run_dir),
                  tag("h2", "Imported rubric sets"), _imports_section(imported, imports_dir)])
    atomic_write_text(_page(run_dir.name, trends, f"{len(sections)} prompt(s) used, of {len(prompts)} in "
                            "prompts.parquet", sections, _spend_section(diagnostics), _judge_check_section(run_dir),
                            audit), out)
    return out


def _page(run_id: str, trends: list[dict[str, Any]], prompts_line: str, sections: list[Safe], spend: Safe,
          judge: Safe, audit: Safe) -> str:
    rounds = [t["round"] for t in trends]

    def series(*cols: str) -> dict[str, list[float | None]]:
        return {c.removeprefix("pass_"): [t[c] for t in trends] for c in cols}

    pass_cols = [c for c in (trends[0] if trends else {}) if c.startswith("pass_")]
    charts = tag("div", [
        line_chart("Reward (student) and teacher score", rounds, series("mean_reward", "teacher_mean")),
        line_chart("Rubric reward AUC vs correctness", rounds, series("reward_auc"),
                   (f"paper {PAPER_AUC:.2f}", PAPER_AUC)),
        line_chart("Pass rate by category", rounds, series(*pass_cols)),
        line_chart("Failure rates", rounds, series("judge_error_rate", "non_discriminative_rate",
                                                   "teacher_below_student_rate")),
    ], class_="charts")
    last = trends[-1] if trends else {}
    facts = tag("p", f"{len(trends)} round(s) · {prompts_line} · last round: mean reward "
                     f"{num(last.get('mean_reward'))}, reward AUC {num(last.get('reward_auc'))}, "
                     f"judge error rate {num(last.get('judge_error_rate'))}")
    columns = list(trends[0]) if trends else []
    columns = [c for c in columns if c != "run_id"]
    tools = tag("div", tag("input", id="filter", type="search", placeholder="filter prompts: id or question text",
                           aria_label="filter prompts"), " ",
                tag("label", tag("input", id="flagged", type="checkbox"), " flagged or failed only"), " ",
                tag("span", id="count", class_="muted"), id="tools")
    csp = (f"default-src 'none'; style-src {_csp_hash(STYLE)}; script-src {_csp_hash(SCRIPT)}; "
           "base-uri 'none'; form-action 'none'")
    head = join([tag("meta", charset="utf-8"), tag("meta", http_equiv="Content-Security-Policy", content=csp),
                 tag("meta", name="viewport", content="width=device-width, initial-scale=1"),
                 tag("title", f"ropd report — {run_id}"), Safe(f"<style>{STYLE}</style>")])
    body = join([tag("h1", f"ropd report — run {run_id}"), facts,
                 tag("h2", "Is the judge good enough to train on?"), judge,
                 tag("h2", "Across rounds"), charts,
                 tag("h2", "Per round"), tag("div", _table(trends, columns), class_="scroll"),
                 tag("h2", "LLM tokens and spend"), spend, audit,
                 tag("h2", "Prompts"), tools, sections,
                 Safe(f"<script>{SCRIPT}</script>")])
    return f'<!doctype html>\n<html lang="en"><head>{head}</head><body>{body}</body></html>\n'
