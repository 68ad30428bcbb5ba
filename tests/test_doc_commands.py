"""Every `ropd` command in the fenced code blocks of README.md and docs/audit.md runs as printed.

The commands run in order, in a scratch directory laid out as `make run` leaves the repository
(`data/runs/demo` holds a finished run built by tests/test_store_fixtures.py), at 80 columns.
"""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ropd.cli import app

ROOT = Path(__file__).resolve().parent.parent
DOCS = ("README.md", "docs/audit.md")
# Commands the fixture run cannot serve, each with why; everything else must exit 0.
SKIP = {
    "ropd run": "runs the whole pipeline: models, rollouts, judges",
    "ropd stage": "a pipeline stage needs the run's models or judges",
    "ropd judge check": "calls the configured judge LLM",
    "ropd eval": "loads a policy checkpoint and calls the judges",
}
PLACEHOLDERS = {"<prompt_id>": "p-pencils"}
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.M | re.S)


def doc_commands(doc: str) -> list[str]:
    """The `ropd ...` lines of a document's code blocks, continuation lines joined, `.venv/bin/` dropped."""
    commands = []
    for block in FENCE.findall((ROOT / doc).read_text(encoding="utf-8")):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = line.strip().removeprefix(".venv/bin/")
            if line.startswith("ropd "):
                commands.append(line)
    return commands


def run_doc_command(line: str, cwd: Path) -> tuple[int, str]:
    """Run one printed command through the CLI; `> FILE` is honoured, `# comments` are dropped."""
    for key, value in PLACEHOLDERS.items():
        line = line.replace(key, value)
    # shlex keeps the backslash of `\$` inside double quotes, where bash drops it.
    args = [a.replace("\\$", "$") for a in shlex.split(line, comments=True)[1:]]
    target = None
    if ">" in args:
        at = args.index(">")
        args, target = args[:at], args[at + 1]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "80"})
    if target is not None:
        (cwd / target).write_text(result.stdout)
    crash = "" if result.exception is None or isinstance(result.exception, SystemExit) else repr(result.exception)
    return result.exit_code, result.output + crash


@pytest.mark.parametrize("doc", DOCS)
def test_every_documented_command_runs(doc: str, finished_run: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copytree(finished_run, tmp_path / "data" / "runs" / "demo")
    monkeypatch.chdir(tmp_path)
    commands = doc_commands(doc)
    assert any(c.startswith("ropd audit --sql") for c in commands), f"{doc}: no commands found"
    failed = []
    for line in commands:
        if any(line.startswith(s + " ") or line == s for s in SKIP):
            continue
        code, out = run_doc_command(line, tmp_path)
        if code != 0:
            failed.append(f"{line}\n  exit {code}: {out.strip()[-400:]}")
    assert not failed, f"{doc}: commands that fail as printed:\n" + "\n".join(failed)


def test_documented_queries_run(finished_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ```sql examples of docs/audit.md, each through `ropd audit --sql` against the fixture's store."""
    shutil.copytree(finished_run, tmp_path / "data" / "runs" / "demo")
    monkeypatch.chdir(tmp_path)
    assert CliRunner().invoke(app, ["store", "rebuild"]).exit_code == 0
    text = (ROOT / "docs/audit.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```sql\n(.*?)^```", text, re.M | re.S)
    queries = [q.strip() for b in blocks for q in re.sub(r"--[^\n]*", "", b).split(";") if q.strip()]
    assert len(queries) >= 5
    for sql in queries:
        result = CliRunner().invoke(app, ["audit", "--sql", sql, "--format", "json"])
        assert result.exit_code == 0, f"{sql}\n{result.output}"
