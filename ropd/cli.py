"""`ropd` command line."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ropd.config import EngineConfig, LimitsConfig, RoleConfig
from ropd.data.prompts import load_sample
from ropd.io import atomic_write_parquet, atomic_write_text
from ropd.llm.base import run_closing
from ropd.llm.cache import CallCache
from ropd.llm.limits import CallLimiter
from ropd.models import DEFAULT_MODELS_DIR, ModelPrepError, prepare_all
from ropd.rubric.engine import Group, score_groups
from ropd.rubric.prompts import RUBRICATOR_VERSION
from ropd.rubric.tables import result_frames, teacher_below_student_rate
from ropd.store.cli import audit, export, import_app, report, store_app
from ropd.teacher import TeacherIndex, TeacherPrompt, dataset_index, fingerprint

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Rubric-based On-policy Distillation")
console = Console()


@app.callback()
def _root() -> None:
    """Rubric-based On-policy Distillation."""


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="run directory for tables and the call cache")] = Path("data/runs/demo"),
    base_url: Annotated[str | None, typer.Option(help="OpenAI-compatible judge endpoint; default: local stand-in")]
    = None,
    model: Annotated[str, typer.Option(help="judge model name at that endpoint")] = "stand-in-judge",
    api_key_env: Annotated[str, typer.Option(help="environment variable holding the judge's key")] = "OPENAI_API_KEY",
    max_in_flight: Annotated[int, typer.Option(min=1, help="judge calls in flight, all groups together")] = 16,
    teacher_m: Annotated[int, typer.Option(min=1, help="teacher answers per prompt")] = 4,
) -> None:
    """Score the shipped sample with the reward engine: rubric induction, then blind verification."""
    t0 = time.monotonic()
    sample = load_sample()
    teacher_cfg = RoleConfig(provider="dataset", model="ropd-sample-solutions")
    prompts = [TeacherPrompt(prompt_id=g.prompt_id, question=g.question, solutions=g.solutions) for g in sample]
    dataset_index(prompts, teacher_cfg, teacher_m, out / "teacher.parquet")
    index = TeacherIndex.load(out / "teacher.parquet", fingerprint(teacher_cfg))
    groups = [Group(group_id=g.prompt_id, question=g.question, teacher=index.answers(g.prompt_id),
                    student=g.student) for g in sample]

    from ropd.llm.openai_compat import OpenAICompatChat  # here: every `ropd stage` starts without openai's 0.5 s
    from ropd.testing.server import ScriptedServer

    server = None if base_url else ScriptedServer().start()
    url = base_url or server.base_url  # type: ignore[union-attr]
    key_env = api_key_env if base_url else None
    rubricator_cfg = RoleConfig(base_url=url, model=model, api_key_env=key_env, temperature=0.7, max_tokens=2048)
    verifier_cfg = RoleConfig(base_url=url, model=model, api_key_env=key_env, temperature=0.0, max_tokens=2048)
    cache = CallCache(out / "llm_cache.sqlite")
    limiter = CallLimiter(LimitsConfig(max_in_flight=max_in_flight))
    rubricator = OpenAICompatChat("rubricator", rubricator_cfg, cache=cache, limiter=limiter)
    verifier = OpenAICompatChat("verifier", verifier_cfg, cache=cache, limiter=limiter)
    try:
        results = run_closing(score_groups(groups, rubricator, verifier, EngineConfig()), rubricator, verifier)
    finally:
        if server is not None:
            server.stop()
        cache.close()

    frames = result_frames(results, run_id=out.name, round=0,
                           rubricator_fingerprint=rubricator_cfg.fingerprint(RUBRICATOR_VERSION))
    for name, df in frames.items():
        atomic_write_parquet(df, out / f"{name}.parquet")
    summary = {
        "groups": len(results),
        "ok": sum(r.ok for r in results),
        "judge_error": sum(not r.ok for r in results),
        "calls_sent": rubricator.calls_sent + verifier.calls_sent,
        "cache_hits": cache.hits,
        "teacher_below_student_rate": teacher_below_student_rate(results),
        "seconds": round(time.monotonic() - t0, 2),
    }
    atomic_write_text(json.dumps(summary, indent=2) + "\n", out / "summary.json")

    table = Table(title=f"ROPD rewards — {len(results)} groups, judge at {'stand-in' if server else url}")
    for col in ("prompt", "status", "criteria", "student rewards", "teacher mean"):
        table.add_column(col)
    for g, r in zip(groups, results, strict=True):
        rewards = " ".join("—" if x is None else f"{x:.2f}" for x in r.rewards)
        teacher = f"{sum(r.teacher_scores) / len(r.teacher_scores):.2f}" if r.teacher_scores else "—"
        status = r.status.value if r.ok else f"{r.status.value} ({r.error.stage}/{r.error.type})"  # type: ignore[union-attr]
        table.add_row(g.question[:48] + "…", status, str(len(r.rubric.criteria)) if r.rubric else "—",
                      rewards, teacher)
    console.print(table)
    console.print(f"[bold]summary[/bold] {json.dumps(summary)}")
    console.print(f"outputs: {out}/{{teacher,rubrics,criteria,judgements,rewards}}.parquet, "
                  f"call cache {out}/llm_cache.sqlite")


def _fail(exc: Exception, code: int = 2) -> typer.Exit:
    console.print(f"[red]error:[/red] {exc}", soft_wrap=True)  # unwrapped: messages name paths and keys
    return typer.Exit(code)


@contextmanager
def _pipeline_errors() -> Iterator[None]:
    """What a user can fix (params, data, a checkpoint, a locked run, the disk) as one line and exit 2; a
    clean stop (quality gate, budget: see `stopped.json`) as exit 3. Imported here so `ropd --help` does not
    load torch."""
    from ropd.params import ConfigError
    from ropd.pipeline.lock import RunLocked
    from ropd.pipeline.stages import RunStop
    from ropd.train.grpo import CheckpointError

    try:
        yield
    except RunStop as exc:
        raise _fail(exc, code=3) from exc
    except (ConfigError, RunLocked, ValueError, LookupError, ModelPrepError, CheckpointError, OSError) as exc:
        raise _fail(exc) from exc


@app.command()
def stage(
    name: Annotated[str, typer.Argument(help="demo_data, prepare, teacher_sft, teacher, judge_check, rollout, mine, "
                                             "qa, verify, train, evaluate, summarize, report")],
    round: Annotated[int | None, typer.Option("--round", "-r", help="round number, for the per-round stages")] = None,
    params: Annotated[Path, typer.Option(help="the run's configuration")] = Path("params.yaml"),
) -> None:
    """Run one pipeline stage: what `dvc repro` and the Prefect flow call."""
    from ropd.params import load_params
    from ropd.pipeline.stages import RUN_STAGES, run_stage

    with _pipeline_errors():
        run_stage(load_params(params), name, round)
    console.print(f"stage {name}{'' if name in RUN_STAGES else f' (round {round})'}: done")


@app.command()
def run(params: Annotated[Path, typer.Option(help="the run's configuration")] = Path("params.yaml")) -> None:
    """Every stage in order in this process (no DVC, no Prefect); `dvc repro` and the flow do the same."""
    from ropd.params import load_params
    from ropd.pipeline.stages import run_all

    with _pipeline_errors():
        run_all(load_params(params))
    summary(params)


@app.command("eval")
def eval_checkpoint(
    checkpoint: Annotated[Path, typer.Argument(help="a policy checkpoint directory (any method, any run)")],
    params: Annotated[Path, typer.Option(help="the run whose held-out split, teacher and judges to use")]
    = Path("params.yaml"),
    out: Annotated[Path | None, typer.Option(help="also write the result here as JSON")] = None,
) -> None:
    """Held-out accuracy (pass@1 over eval.k samples, math-verify), mean rubric score and reward–correctness AUC."""
    from ropd.eval.checkpoint import evaluate_checkpoint
    from ropd.params import load_params

    with _pipeline_errors():
        result = evaluate_checkpoint(load_params(params), checkpoint)
    table = Table(title=f"{checkpoint}: held-out evaluation")
    table.add_column("figure")
    table.add_column("value")
    for key, value in result.model_dump().items():
        table.add_row(key, "—" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value))
    console.print(table)
    if out is not None:
        atomic_write_text(result.model_dump_json(indent=2) + "\n", out)


@app.command()
def rounds(
    n: Annotated[int, typer.Argument(min=1, help="how many rounds the run has in all")],
    params: Annotated[Path, typer.Option(help="the params file to rewrite")] = Path("params.yaml"),
) -> None:
    """Set the number of rounds: rewrites the `rounds:` list (DVC needs one item per round), comments kept.

    Raising it extends a run: `dvc repro`, the flow and `ropd run` then train only the new rounds."""
    from ropd.presets import edit_params

    with _pipeline_errors():
        p = edit_params(params, [f"rounds={n}"])
    console.print(f"{params}: {len(p.rounds)} rounds × {p.data.prompts_per_round} prompts")


@app.command()
def preset(
    name: Annotated[str, typer.Argument(help="a shipped preset (paper) or a preset file")],
    out: Annotated[Path, typer.Option(help="the params file to write")] = Path("params.yaml"),
    set_: Annotated[list[str] | None, typer.Option("--set", help="dotted.key=value override, repeatable")] = None,
    force: Annotated[bool, typer.Option(help="overwrite an existing params file")] = False,
) -> None:
    """Write a params file from a preset plus overrides, validated; `dvc repro` then runs it."""
    from ropd.presets import load_preset

    with _pipeline_errors():
        text, p = load_preset(name, set_ or [])
        if out.exists() and not force:
            raise ValueError(f"{out} exists; pass --force to replace it (the demo params.yaml is in git)")
        atomic_write_text(text, out)
    console.print(f"{out}: preset {name}, method {p.method}, {len(p.rounds)} rounds × {p.data.prompts_per_round} "
                  f"prompts × n={p.student.sampling.n}, student {p.student.model_path or 'packaged SmolLM2'}")


@app.command("check-params")
def check_params(
    params: Annotated[Path, typer.Argument(help="a params file")] = Path("params.yaml"),
) -> None:
    """Validate a params file with the same model every stage uses; nothing runs."""
    from ropd.params import load_params

    with _pipeline_errors():
        p = load_params(params)
    roles = ", ".join(f"{r}={getattr(p, r).provider}:{getattr(p, r).model}" for r in ("rubricator", "verifier"))
    console.print(f"{params}: valid. method {p.method}, {len(p.rounds)} rounds × {p.data.prompts_per_round} prompts, "
                  f"teacher {p.teacher.role.provider}:{p.teacher.role.model}, {roles}")


@app.command()
def summary(params: Annotated[Path, typer.Option(help="the run's configuration")] = Path("params.yaml")) -> None:
    """Where a run's outputs are, its per-round figures, and how to open the report, the UI and the audit CLI."""
    from ropd.params import load_params
    from ropd.pipeline.stages import RunPaths

    p = load_params(params)
    paths = RunPaths(p)
    if paths.judge_check.is_file():  # first: a FAIL is why a run's loss and advantages are 0
        from ropd.eval.judge_check import JudgeCheckResult, render_summary

        check = JudgeCheckResult.model_validate_json(paths.judge_check.read_text())
        colour = {"PASS": "green", "WARN": "yellow", "FAIL": "red"}.get(check.status, "white")
        console.print(render_summary(check), style=f"bold {colour}", soft_wrap=True, markup=False)
        if check.status == "FAIL":
            console.print("  Rewards from a judge that FAILs say little about answer quality: GRPO then learns nothing "
                          "(equal rewards give zero advantages, as with the demo's 135M judge) or learns noise "
                          "(docs/results.md).", soft_wrap=True)
    if paths.history.is_file():
        rows = json.loads(paths.history.read_text())
        table = Table(title=f"run {p.run_id}: per-round figures")
        cols = ["round", "mean_reward", "judge_error_rate", "reward_auc", "accuracy", "mean_rubric_score", "loss"]
        for c in cols:
            table.add_column(c)
        for row in rows:
            table.add_row(*[("—" if row.get(c) is None else f"{row[c]:.3g}") for c in cols])
        console.print(table)
    console.print(f"""[bold]outputs[/bold]
  run directory   {paths.run}/  (prompts, teacher answers, round_<r>/ tables, checkpoints/)
  HTML report     {paths.report.resolve()}   → open it in a browser
  metrics         dvc metrics show      plots: dvc plots show (writes dvc_plots/index.html)
  audit the rubrics
                  ropd store rebuild && ropd audit worst-rubrics
                  ropd audit --sql "select * from rubric_criteria limit 5"
  Prefect UI      prefect server start, then python flows/deploy.py (see README)""")


judge_app = typer.Typer(no_args_is_help=True, help="Is the configured judge good enough to train on?")
app.add_typer(judge_app, name="judge")


@judge_app.command("check")
def judge_check(params: Annotated[Path, typer.Option(help="the run's configuration")] = Path("params.yaml")) -> None:
    """The judge check on the run's prompts and teacher answers, before any training; exit 3 on FAIL.

    Runs the setup stages it needs first (data, prepare, teacher) when their outputs are missing, and writes
    judge_check.json into the run directory, as the pipeline's judge_check stage does."""
    from ropd.params import load_params
    from ropd.pipeline.dag import stage_io
    from ropd.pipeline.stages import SETUP_STAGES, RunPaths, run_stage

    with _pipeline_errors():
        p = load_params(params)
        for name in SETUP_STAGES[:SETUP_STAGES.index("judge_check")]:
            if name == "demo_data" and p.data.source != "demo":
                continue
            if not all(out.exists() for out in stage_io(p, name)[1]):
                run_stage(p, name)
        run_stage(p, "judge_check")
    status = json.loads(RunPaths(p).judge_check.read_text())["status"]
    if status == "FAIL":
        raise typer.Exit(3)


app.add_typer(store_app, name="store")
app.command("audit")(audit)
app.command("report")(report)
app.command("export")(export)
app.add_typer(import_app, name="import")

cost_app = typer.Typer(no_args_is_help=True, help="What a run's LLM calls cost (roles' `price`, `budget`)")
app.add_typer(cost_app, name="cost")


@cost_app.command("estimate")
def cost_estimate(params: Annotated[Path, typer.Option(help="the run's configuration")] = Path("params.yaml")) -> None:
    """Spent so far per role (from the call cache) and a forecast of the judge stages left in params.rounds.

    A stage is forecast at the mean of its other rounds, or from request sizes before any round ran."""
    from ropd.llm.cost import Ledger, forecast, usd_text
    from ropd.params import load_params
    from ropd.pipeline.judging import cost_plan
    from ropd.pipeline.run import CACHE_FILE

    with _pipeline_errors():
        p = load_params(params)
        fc = forecast(Ledger.load(p, CACHE_FILE), cost_plan(p))
    table = Table(title=f"run {p.run_id}: spend per role, {fc.rounds} rounds" + ("" if fc.priced else
                                                                                 " (no role has a price)"))
    for col in ("role", "calls paid", "tokens in", "cached", "out", "reasoning", "spent", "forecast left", "total"):
        table.add_column(col, justify="left" if col == "role" else "right")
    for role, f in fc.roles.items():
        s = f.spent
        table.add_row(role, str(s.calls), str(s.tokens_in), str(s.tokens_cached), str(s.tokens_out),
                      str(s.tokens_reasoning), usd_text(s.usd), usd_text(f.remaining_usd),
                      usd_text(None if f.remaining_usd is None else (s.usd or 0.0) + f.remaining_usd))
    table.add_row("all", "", "", "", "", "", usd_text(fc.spent_usd), usd_text(fc.remaining_usd),
                  usd_text(fc.total_usd))
    console.print(table)
    if fc.max_usd is not None and fc.total_usd is not None:
        console.print(f"budget.max_usd {usd_text(fc.max_usd)}: the forecast total is "
                      f"{'within' if fc.total_usd <= fc.max_usd else 'OVER'} it")
    print(fc.model_dump_json())


models_app = typer.Typer(no_args_is_help=True, help="Models shipped in PyPI packages")
app.add_typer(models_app, name="models")


@models_app.command("prepare")
def models_prepare(
    models_dir: Annotated[Path, typer.Option(help="where converted models are kept")] = DEFAULT_MODELS_DIR,
) -> None:
    """Convert the packaged SmolLM2 once (checksummed) and locate the packaged MiniLM; never downloads."""
    try:
        prepared = prepare_all(models_dir)
    except ModelPrepError as exc:
        raise _fail(exc) from exc
    for name, path in prepared.items():
        console.print(f"{name}: {path}")


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
