"""Cost accounting and the budget: spend = usage × price (cached input and reasoning tokens included), a cache
replay costs nothing and a paid call counts once, old call caches gain the new columns, each round's
diagnostics.json and the report give tokens and spend per role, and `budget.max_usd` stops a judge stage
cleanly (exit 3, stopped.json, nothing written) before a round whose estimate would overrun it, resuming
once it is raised. Keys never reach any of these outputs."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import yaml

from ropd.config import Price, RoleConfig
from ropd.io import atomic_write_parquet
from ropd.llm.base import ChatRequest, ChatResult
from ropd.llm.cache import CallCache, CallTag
from ropd.llm.cost import Ledger, priced
from ropd.llm.openai_compat import OpenAICompatChat
from ropd.params import ConfigError, Params, load_params, round_items
from ropd.pipeline import stages
from ropd.testing.server import ScriptedServer
from tests.conftest import FAST, run
from tests.tiny import BIN, project_env, provide_models, tiny_params

PRICE = {"input": 2.0, "cached_input": 0.5, "output": 8.0}  # USD per million tokens
SECRET = "sk-cost-test-0123456789abcdef"
KEY_ENV = "ROPD_COST_TEST_KEY"


def hand_usd(tokens_in: int, cached: int, tokens_out: int, price: dict = PRICE) -> float:
    return ((tokens_in - cached) * price["input"] + cached * price["cached_input"] + tokens_out * price["output"]) / 1e6


def request(text: str = "What is 2 + 2?", role: str = "rubricator") -> ChatRequest:
    cfg = RoleConfig(base_url="http://127.0.0.1:9/v1", api_key_env=None)
    return ChatRequest.for_role(role, cfg, [{"role": "user", "content": text}])


# -- spend from usage × price ----------------------------------------------------------------------------
def test_price_arithmetic_by_hand() -> None:
    p = Price(**PRICE)
    assert p.usd(1000, 400, 500) == pytest.approx((600 * 2.0 + 400 * 0.5 + 500 * 8.0) / 1e6)
    assert Price(input=2.0, output=8.0).usd(1000, 400, 500) == pytest.approx((1000 * 2.0 + 500 * 8.0) / 1e6)
    assert "price" not in RoleConfig(price=p).sampling_identity()  # repricing never changes a fingerprint
    assert RoleConfig(price=p).fingerprint("v") == RoleConfig().fingerprint("v")


def test_spend_from_cached_usage_includes_cached_input_and_reasoning(tmp_path: Path) -> None:
    """A reasoning model's reply: 1000 prompt tokens of which 400 cached, 500 out of which 300 hidden reasoning."""
    cache = CallCache(tmp_path / "calls.sqlite", CallTag(run_id="r1", round=0, stage="mine"))
    req = request()
    cache.put_ok(req, ChatResult(call_id=req.key(), content="{}", tokens_in=1000, tokens_out=500,
                                 tokens_cached=400, tokens_reasoning=300))
    replay = cache.get(req)
    assert replay is not None and (replay.tokens_cached, replay.tokens_reasoning) == (400, 300)
    params = Params.model_validate({"rubricator": {"provider": "openai", "base_url": "http://h/v1", "price": PRICE}})
    spend = Ledger(params, cache.paid("r1")).by_role()["rubricator"]
    cache.close()
    assert (spend.calls, spend.tokens_in, spend.tokens_cached, spend.tokens_out, spend.tokens_reasoning) == \
        (1, 1000, 400, 500, 300)
    # reasoning tokens are part of tokens_out, billed once at the output price: 1200 + 200 + 4000 µ$
    assert spend.usd == pytest.approx(hand_usd(1000, 400, 500)) and spend.usd == pytest.approx(0.0054)
    assert priced(spend, None).usd is None  # no price: unknown, not 0


def test_a_cache_replay_costs_nothing_and_a_paid_call_counts_once(tmp_path: Path) -> None:
    path = tmp_path / "calls.sqlite"
    price = Price(**PRICE)
    params = Params.model_validate({"run_id": "a", "verifier": {"provider": "openai", "base_url": "http://h/v1",
                                                                "price": PRICE}})
    with ScriptedServer() as srv:
        def ask(tag: CallTag) -> ChatResult:
            cache = CallCache(path, tag)
            chat = OpenAICompatChat("verifier", RoleConfig(base_url=srv.base_url, api_key_env=None, price=price,
                                                           **FAST), cache=cache)
            try:
                return run(chat.complete(ChatRequest.for_role("verifier", chat.config,
                                                              [{"role": "user", "content": "2 + 2?"}])), chat)
            finally:
                cache.close()

        first = ask(CallTag(run_id="a", round=0, stage="verify"))
        again = ask(CallTag(run_id="a", round=0, stage="verify"))  # a resumed stage replays it
        other = ask(CallTag(run_id="b", round=3, stage="verify"))  # another run replays it
        assert sum(e["served"] for e in srv.log) == 1
    assert not first.cached and again.cached and other.cached
    a = Ledger.load(params, path)
    b = Ledger.load(params.model_copy(update={"run_id": "b"}), path)
    spend = a.by_role(round=0)["verifier"]
    assert spend.calls == 1 and spend.tokens_in == first.tokens_in and spend.tokens_in > 0
    assert spend.usd == pytest.approx(hand_usd(first.tokens_in, 0, first.tokens_out))  # type: ignore[arg-type]
    assert b.by_role() == {} and b.usd() == 0.0


def test_an_old_call_cache_gains_the_usage_columns(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as con:  # the schema before cost accounting
        con.execute("CREATE TABLE llm_calls (call_id TEXT PRIMARY KEY, role TEXT NOT NULL, model TEXT NOT NULL,"
                    " template TEXT, request TEXT NOT NULL, response TEXT, content TEXT, finish_reason TEXT,"
                    " status TEXT NOT NULL, error_type TEXT, error TEXT, latency_s REAL, tokens_in INTEGER,"
                    " tokens_out INTEGER, attempts INTEGER NOT NULL DEFAULT 1, created_at REAL NOT NULL)")
        req = request("old")
        con.execute("INSERT INTO llm_calls VALUES (?, 'rubricator', 'm', NULL, ?, NULL, 'old reply', 'stop', 'ok',"
                    " NULL, NULL, 0.1, 10, 5, 1, 0)", (req.key(), req.canonical()))
    cache = CallCache(path, CallTag(run_id="r", round=0, stage="mine"))
    CallCache(path).close()  # a second opener finds the columns there
    hit = cache.get(req)
    assert hit is not None and hit.content == "old reply" and hit.tokens_cached is None
    assert cache.paid("r") == []  # rows from before the tags belong to no run
    new = request("new")
    cache.put_ok(new, ChatResult(call_id=new.key(), content="x", tokens_in=7, tokens_out=3, tokens_cached=2))
    (tag, role, counts), = cache.paid("r")
    assert tag == CallTag(run_id="r", round=0, stage="mine") and role == "rubricator"
    assert (counts.tokens_in, counts.tokens_cached, counts.tokens_out) == (7, 2, 3)
    assert cache.usage()["rubricator"]["calls"] == 2
    cache.close()


def test_a_budget_needs_every_paid_role_priced(tmp_path: Path) -> None:
    f = tmp_path / "params.yaml"
    f.write_text(yaml.safe_dump({"budget": {"max_usd": 5},
                                 "verifier": {"provider": "openai", "base_url": "http://h/v1"}}))
    with pytest.raises(ConfigError, match=r"budget.max_usd is set but verifier \(provider openai\) has no price"):
        load_params(f)


# -- a tiny pipeline: diagnostics, report, cost estimate, budget stop ---------------------------------------
def ropd(proj: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ropd"), *args], cwd=proj, env=project_env(), capture_output=True, text=True,
                          timeout=600)


def set_budget(proj: Path, max_usd: float | None) -> None:
    data = yaml.safe_load((proj / "params.yaml").read_text())
    data["budget"] = {"max_usd": max_usd}
    (proj / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))


def round0_hand_usd(proj: Path) -> dict[str, float]:
    with sqlite3.connect(proj / "data" / "cache" / "llm_calls.sqlite") as con:
        rows = con.execute("SELECT role, sum(tokens_in), sum(coalesce(tokens_cached, 0)), sum(tokens_out) FROM "
                           "llm_calls WHERE status = 'ok' AND run_id = 'tiny' AND round = 0 GROUP BY role").fetchall()
    return {role: hand_usd(t_in, cached, t_out) for role, t_in, cached, t_out in rows}


@pytest.fixture(scope="module")
def judged(module_tmp: Path, smollm2_dir: Path) -> Iterator[tuple[Path, ScriptedServer]]:
    """Two rounds of 2 prompts × 2 rollouts against priced stand-in judges with a key: round 0 judged, and
    round 1 given round 0's rollout texts under its own prompts (sampling and training are not what this
    tests, and each costs a model load). cwd is the project."""
    with ScriptedServer() as srv, pytest.MonkeyPatch.context() as mp:
        data = tiny_params(srv.base_url, smollm2_dir.parent)
        provide_models(module_tmp, smollm2_dir.parent)
        data["rounds"] = round_items(2)
        data["data"]["pool_prompts"] = 4
        for role in ("rubricator", "verifier"):
            data[role].update({"price": PRICE, "api_key_env": KEY_ENV})
        (module_tmp / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
        mp.setenv(KEY_ENV, SECRET)
        mp.chdir(module_tmp)
        params = load_params("params.yaml")
        for name in ("demo_data", "prepare", "teacher"):
            stages.run_stage(params, name)
        for name in ("rollout", "mine", "qa", "verify"):
            stages.run_stage(params, name, 0)
        paths = stages.RunPaths(params)
        rollouts = pd.read_parquet(paths.round(0) / "rollouts.parquet")
        prompts = pd.read_parquet(paths.prompts)
        ids = dict(zip(sorted(rollouts["prompt_id"].unique()), sorted(prompts[prompts["round"] == 1]["prompt_id"]),
                       strict=True))
        atomic_write_parquet(rollouts.assign(prompt_id=rollouts["prompt_id"].map(ids), round=1),
                             paths.round(1) / "rollouts.parquet")
        yield module_tmp, srv


def test_round_diagnostics_and_report_give_tokens_and_spend(judged: tuple[Path, ScriptedServer]) -> None:
    proj, _ = judged
    rd = proj / "data" / "runs" / "tiny" / "round_0"
    diag = json.loads((rd / "diagnostics.json").read_text())
    assert "reward_auc" in diag  # the pool figures are still there
    usage, hand = diag["usage"], round0_hand_usd(proj)
    assert set(usage) == {"rubricator", "verifier"} == set(hand)
    for role in usage:
        assert usage[role]["calls"] == 2 and usage[role]["tokens_in"] > 0 and usage[role]["tokens_out"] > 0
        assert usage[role]["usd"] == pytest.approx(hand[role])
    assert diag["spend_usd"] == pytest.approx(sum(hand.values()))
    assert diag["run_spend_usd"] == pytest.approx(diag["spend_usd"])  # the dataset teacher paid nothing

    params = load_params("params.yaml")
    stages.run_stage(params, "summarize")
    stages.run_stage(params, "report")
    page = (proj / "data" / "runs" / "tiny.report.html").read_text()
    assert "LLM tokens and spend" in page and "Run total" in page
    assert f"${diag['run_spend_usd']:.4g}" in page and f"${usage['verifier']['usd']:.4g}" in page
    history = json.loads((proj / "data" / "runs" / "tiny.history.json").read_text())
    assert history[0]["spend_usd"] == pytest.approx(diag["spend_usd"])
    for text in (page, json.dumps(diag), json.dumps(history)):
        assert SECRET not in text


def test_budget_stops_a_round_its_estimate_would_overrun_and_resumes_when_raised(
        judged: tuple[Path, ScriptedServer]) -> None:
    proj, srv = judged
    rd0, rd1 = (proj / "data" / "runs" / "tiny" / f"round_{r}" for r in (0, 1))
    spent = sum(round0_hand_usd(proj).values())
    round0 = sorted((p.name, p.stat().st_mtime_ns) for p in rd0.iterdir())
    served = len(srv.log)

    # spent + round 1's estimate (the mean of round 0: ≈ spent again) > 1.5 × spent
    set_budget(proj, spent * 1.5)
    proc = ropd(proj, "stage", "mine", "--round", "1")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 3, out
    assert "Traceback" not in out and "budget.max_usd" in out
    stopped = json.loads((rd1 / "stopped.json").read_text())
    assert stopped["stopped"] is True and stopped["kind"] == "budget" and stopped["stage"] == "mine"
    assert stopped["round"] == 1 and stopped["max_usd"] == pytest.approx(spent * 1.5)
    assert stopped["spent_usd"] == pytest.approx(spent)
    assert stopped["estimate_usd"] == pytest.approx(spent)  # round 0's mine and verify, as round 1's estimate
    assert [e["basis"] for e in stopped["estimate"]] == ["round 0", "round 0"]
    assert "ropd stage mine --round 1" in stopped["reason"]
    assert sorted(p.name for p in rd1.iterdir()) == ["rollouts.parquet", "stopped.json"]  # none of mine's outputs
    assert len(srv.log) == served  # not one call sent
    assert sorted((p.name, p.stat().st_mtime_ns) for p in rd0.iterdir()) == round0

    # the forecast: round 1 as round 0 again, per role
    proc = ropd(proj, "cost", "estimate")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    fc = json.loads(proc.stdout.strip().splitlines()[-1])
    assert fc["spent_usd"] == pytest.approx(spent) and fc["remaining_usd"] == pytest.approx(spent)
    assert fc["roles"]["verifier"]["remaining_usd"] == pytest.approx(round0_hand_usd(proj)["verifier"])
    assert "OVER" in proc.stdout
    estimate_out = proc.stdout + proc.stderr

    # raised: the stage runs, and the stale stop is gone
    set_budget(proj, spent * 100)
    proc = ropd(proj, "stage", "mine", "--round", "1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (rd1 / "rubrics.parquet").is_file() and not (rd1 / "stopped.json").exists()
    assert len(srv.log) > served

    # verify checks too: with a budget just above what is spent, its own estimate overruns it
    params = load_params("params.yaml")
    paid = Ledger.load(params, Path("data/cache/llm_calls.sqlite")).usd()
    stages.run_stage(params, "qa", 1)
    tight = params.model_copy(update={"budget": params.budget.model_copy(update={"max_usd": paid * 1.01})})
    with pytest.raises(stages.BudgetStop, match="round 1 verify"):
        stages.run_stage(tight, "verify", 1)
    assert not (rd1 / "rewards.parquet").exists() and json.loads((rd1 / "stopped.json").read_text())["kind"] == "budget"
    stages.run_stage(params, "verify", 1)
    diag1 = json.loads((rd1 / "diagnostics.json").read_text())
    assert diag1["usage"]["rubricator"]["calls"] == 2 and diag1["usage"]["verifier"]["calls"] == 2
    assert diag1["run_spend_usd"] == pytest.approx(spent + diag1["spend_usd"])
    for text in (json.dumps(stopped), out, estimate_out, proc.stdout, json.dumps(diag1)):
        assert SECRET not in text


def test_budget_stops_a_paid_teacher_before_its_first_call(judged: tuple[Path, ScriptedServer]) -> None:
    """An LLM teacher (run `tiny-teacher`, sharing the tiny run's prompts): estimated from request sizes."""
    proj, srv = judged
    teacher = {"provider": "openai", "base_url": srv.base_url, "model": "stand-in-judge", "api_key_env": KEY_ENV,
               "max_tokens": 256, "price": PRICE}
    data = {**yaml.safe_load((proj / "params.yaml").read_text()), "run_id": "tiny-teacher"}
    data["teacher"] = {"m": 2, "role": teacher}
    params = Params.model_validate({**data, "budget": {"max_usd": 1e-6}})
    paths = stages.RunPaths(params)
    paths.run.mkdir(parents=True)
    (paths.run / "prompts.parquet").write_bytes((proj / "data" / "runs" / "tiny" / "prompts.parquet").read_bytes())
    served = len(srv.log)
    with pytest.raises(stages.BudgetStop, match="teacher: the run has spent"):
        stages.run_stage(params, "teacher")
    stopped = json.loads((paths.run / "stopped.json").read_text())
    assert stopped["kind"] == "budget" and stopped["estimate"][0]["basis"] == "request sizes"
    assert stopped["estimate_usd"] > 1e-6 and not paths.teacher.exists() and len(srv.log) == served
    stages.run_stage(params.model_copy(update={"budget": params.budget.model_copy(update={"max_usd": 10.0})}),
                     "teacher")
    assert paths.teacher.is_file() and not (paths.run / "stopped.json").exists()
    spend = Ledger.load(params, Path("data/cache/llm_calls.sqlite")).by_role(round=None, stages=["teacher"])
    assert spend["teacher"].calls == len(srv.log) - served > 0 and spend["teacher"].usd > 0  # type: ignore[operator]
    assert SECRET not in json.dumps(stopped)
