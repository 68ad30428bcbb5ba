"""The judge check: known-bad answers, the figures, PASS for the clean rule judge and FAIL for a coin-flip
judge over real HTTP, a figure for the packaged judge, and an enforced FAIL stopping a run before round 0."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest
import yaml

from ropd.config import EngineConfig, LimitsConfig, RoleConfig
from ropd.data import arith
from ropd.eval.corruptions import Corruption, change_final, corruptions, final_line_only, swap, truncate_third
from ropd.eval.judge_check import CheckItem, JudgeCheckParams, JudgeCheckResult, judge_check, render_summary
from ropd.llm.base import run_closing
from ropd.llm.limits import CallLimiter
from ropd.llm.local import LocalChat
from ropd.llm.openai_compat import OpenAICompatChat
from ropd.rubric.pool import blind_pool
from ropd.testing.judge import flip_verdicts
from ropd.testing.server import ScriptedServer
from tests.tiny import BIN, make_project, project_env

WORKED = "the first part: 28 * 3 = 84\nthe second part: 35 * 4 = 140\nthe total: 84 + 140 = 224\nAnswer: 224"
OTHER = "29 * 3 = 87\n87 + 11 = 98\nAnswer: 98"
ENGINE = EngineConfig(min_criteria=4, max_criteria=6, max_criterion_chars=80)


# -- corruptions -----------------------------------------------------------------------------------------
def test_final_changed_changes_the_result_wherever_it_stands() -> None:
    got = change_final(WORKED, OTHER)
    assert got.text == WORKED.replace("224", "225") and "224 → 225" in got.note
    boxed = change_final("So $x = 3$, hence \\boxed{3}.", OTHER)
    assert boxed.text == "So $x = 3$, hence \\boxed{4}."  # only the boxed result, not every 3
    prose = change_final("Paris is in France.\nThe capital is Paris.", "Rome is the capital.")
    assert prose.text == "Paris is in France.\nRome is the capital." and "another prompt" in prose.note
    assert change_final("The capital is Paris.", "The capital is Paris.").text is None


def test_truncation_keeps_the_first_third_at_a_word_boundary() -> None:
    text = "one two three four five six seven eight nine"
    got = truncate_third(text)
    assert got.text == "one two three" and text.startswith(got.text)
    assert truncate_third("too short").text is None and "2 words" in truncate_third("too short").note


def test_final_only_and_swap() -> None:
    assert final_line_only(WORKED).text == "Answer: 224"
    single = final_line_only("Answer: 224")
    assert single.text is None and "no working" in single.note
    assert swap(WORKED, OTHER).text == OTHER
    assert swap(WORKED, WORKED).text is None and swap(WORKED, "").text is None
    assert [c.kind for c in corruptions(WORKED, OTHER)] == list(Corruption)


# -- judges of known quality -------------------------------------------------------------------------------
def test_noise_flips_at_its_rate_and_is_deterministic_per_request() -> None:
    reply = {"answers": {f"a{i}": [True, False] * 50 for i in range(1, 21)}}  # 2000 verdicts
    for eps in (0.1, 0.3):
        noisy = flip_verdicts(reply, eps, "request-1")
        flips = sum(a != b for k in reply["answers"] for a, b in zip(reply["answers"][k], noisy["answers"][k],
                                                                     strict=True))
        assert abs(flips / 2000 - eps) < 4 * math.sqrt(eps * (1 - eps) / 2000), (eps, flips)
        assert flip_verdicts(reply, eps, "request-1") == noisy  # the same request, the same flips
        assert flip_verdicts(reply, eps, "request-2") != noisy
    assert flip_verdicts(reply, 0.0, "request-1") == reply


def _check(srv: ScriptedServer, n: int = 4) -> JudgeCheckResult:
    items = [CheckItem(prompt_id=f"p{i}", question=p.question, teacher=p.solutions)
             for i, p in enumerate(arith.generate(n, seed=3))]
    limiter = CallLimiter(LimitsConfig(max_in_flight=16))
    rub = OpenAICompatChat("rubricator", RoleConfig(base_url=srv.base_url, api_key_env=None), limiter=limiter)
    ver = OpenAICompatChat("verifier", RoleConfig(base_url=srv.base_url, api_key_env=None, temperature=0.0),
                           limiter=limiter)
    return run_closing(judge_check(items, rub, ver, ENGINE, JudgeCheckParams(), ("rule", "rule")), rub, ver)


def test_noise_through_the_server_is_deterministic_and_at_rate() -> None:
    """Over HTTP: the same verification request gets the same noisy reply; across requests the flip rate is ε."""
    with ScriptedServer(noise=0.25) as noisy, ScriptedServer() as clean:
        first, again, truth = _check(noisy), _check(noisy), _check(clean)
    assert first.model_dump() == again.model_dump()
    agree = first.figure("order_agreement").value
    # two independent orders agree where both or neither flipped: (1-ε)² + ε²
    assert abs(agree - (0.75 ** 2 + 0.25 ** 2)) < 0.1, agree
    assert truth.figure("order_agreement").value == 1.0


def test_clean_rule_judge_passes_and_a_coin_flip_judge_fails() -> None:
    with ScriptedServer() as srv:
        clean = _check(srv)
    assert clean.status == "PASS", render_summary(clean)
    assert clean.figure("separation_auc").value == 1.0 and clean.figure("injection_gain").value == 0.0
    assert set(clean.separation_by_corruption) == {c.value for c in Corruption}
    with ScriptedServer(noise=0.5) as srv:
        coin = _check(srv)
    assert coin.status == "FAIL", render_summary(coin)
    assert coin.figure("separation_auc").status == "FAIL" and coin.figure("order_agreement").status == "FAIL"
    assert "separation_auc" in coin.reason and "FAIL" in render_summary(coin).splitlines()[0]


def test_second_order_is_another_order_of_the_same_pool() -> None:
    from ropd.eval.judge_check import second_order

    first = blind_pool("g", ["t1", "t2"], ["s1", "s2", "s3"])
    again = second_order("g", ["t1", "t2"], ["s1", "s2", "s3"], first)
    assert sorted(map(str, again)) == sorted(map(str, first)) and again != first


def test_packaged_judge_gets_a_figure(smollm2_dir: Path, tmp_path: Path) -> None:
    """The 135M judge in a tiny configuration: one prompt, short replies; whatever it writes, a verdict."""
    base = RoleConfig(provider="local", model="smollm2-135m-instruct", model_path=str(smollm2_dir),
                      api_key_env=None, batch_size=8, max_repairs=0)
    rub = LocalChat("rubricator", base.model_copy(update={"temperature": 0.7, "max_tokens": 200}))
    ver = LocalChat("verifier", base.model_copy(update={"temperature": 0.0, "max_tokens": 80}))
    p = arith.generate(1, seed=5)[0]
    items = [CheckItem(prompt_id="p0", question=p.question, teacher=p.solutions[:1])]
    cfg = EngineConfig(min_criteria=4, max_criteria=4, max_criterion_chars=60)
    result = run_closing(judge_check(items, rub, ver, cfg, JudgeCheckParams(), ("smollm2", "smollm2")), rub, ver)
    assert result.status in ("PASS", "WARN", "FAIL") and len(result.figures) == 5
    judged = result.figure("error_share").value == 0.0
    assert result.figure("separation_auc").value is not None or not judged, render_summary(result)
    print(render_summary(result))


# -- in the pipeline -------------------------------------------------------------------------------------
def test_enforced_fail_stops_before_round_0(tmp_path: Path, smollm2_dir: Path, prefect_harness: None,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Under `ropd run` (exit 3) and under the Prefect flow: a Failed flow run whose message is the reason,
    with the judge check run once (a clean stop is not retried like a judge fault)."""
    with ScriptedServer(noise=0.5) as srv:
        proj = make_project(tmp_path, srv.base_url, smollm2_dir.parent,
                            {"judge_check": {"prompts": 2, "enforce": True}})
        proc = subprocess.run([str(BIN / "ropd"), "run"], cwd=proj, capture_output=True, text=True,
                              env=project_env(), timeout=600)
        by_hand = subprocess.run([str(BIN / "ropd"), "stage", "rollout", "--round", "0"], cwd=proj,
                                 capture_output=True, text=True, env=project_env(), timeout=600)
        monkeypatch.chdir(proj)
        from flows.distill import distill

        state = distill("params.yaml", return_state=True)
    assert state.is_failed() and state.message.startswith("judge check FAILED"), state.message
    assert "Traceback" not in state.message
    import asyncio

    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async def task_runs() -> list:
        async with get_client() as client:
            return await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))

    [check] = [t for t in asyncio.run(task_runs()) if t.name.startswith("judge_check")]
    assert check.run_count == 1 and check.state.is_failed()
    assert proc.returncode == 3, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert by_hand.returncode == 2 and "judge check has not passed" in by_hand.stdout, by_hand.stdout[-2000:]
    run = proj / "data" / "runs" / "tiny"
    assert "judge check FAILED" in proc.stdout and "Nothing was trained" in proc.stdout
    stopped = json.loads((run / "stopped.json").read_text())
    assert stopped["kind"] == "judge_check" and stopped["status"] == "FAIL"
    assert json.loads((run / "judge_check.json").read_text())["status"] == "FAIL"
    assert not (run / "judge_check.gate").exists() and not (run / "round_0").exists()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["round_0", "round_0.json"]  # nothing trained


@pytest.mark.parametrize("status", ["PASS"])
def test_stand_alone_check_on_any_params_file(tmp_path: Path, smollm2_dir: Path, status: str) -> None:
    """`ropd judge check --params F` prepares what it needs, writes judge_check.json, prints the verdict first."""
    with ScriptedServer() as srv:
        proj = make_project(tmp_path, srv.base_url, smollm2_dir.parent, {"judge_check": {"prompts": 2}})
        params = yaml.safe_load((proj / "params.yaml").read_text())
        (proj / "other.yaml").write_text(yaml.safe_dump({**params, "run_id": "checked"}))
        proc = subprocess.run([str(BIN / "ropd"), "judge", "check", "--params", "other.yaml"], cwd=proj,
                              capture_output=True, text=True, env=project_env(), timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stdout.lstrip().startswith(f"judge check: {status}")
    doc = json.loads((proj / "data" / "runs" / "checked" / "judge_check.json").read_text())
    assert doc["status"] == status and doc["n_prompts"] == 2
