"""Runs configured from the Prefect UI: the deployment's form, its validation, and how a run is reproduced.

The end-to-end run with a form value is in tests/test_pipeline_e2e.py (it shares that file's project).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shlex
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from ropd.overrides import RoleOverride, RunOverrides, dvc_exp_command, effective
from ropd.params import ConfigError, Params

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def flows_from_this_repository(monkeypatch: pytest.MonkeyPatch) -> None:
    """`flows` as this repository holds it: a pipeline test before this one imported the package from a tiny
    project's copy, since deleted, and Python keeps that package and its search path."""
    for name in [m for m in sys.modules if m == "flows" or m.startswith("flows.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(ROOT))


@pytest.fixture
def params_file(tmp_path: Path) -> Path:
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    return tmp_path / "params.yaml"


def test_the_form_has_a_typed_field_for_each_setting() -> None:
    from prefect.utilities.callables import parameter_schema

    from flows.distill import distill

    schema = parameter_schema(distill).model_dump()
    props = schema["properties"]
    assert {"params_file", "run_id", "rounds", "method", "lr", "prompts_per_round", "n", "overlap", "tis_cap",
            "teacher", "rubricator", "verifier"} <= set(props)
    assert "integer" in json.dumps(props["n"]) and "number" in json.dumps(props["lr"])
    assert set(Params.model_fields["method"].annotation.__args__) <= set(json.dumps(props["method"]).split('"'))
    role = schema["definitions"]["RoleOverride"]["properties"]
    assert set(role) == {"model", "base_url", "reasoning_effort"} and "xhigh" in json.dumps(role["reasoning_effort"])


def test_form_values_go_through_the_params_model(params_file: Path) -> None:
    base = effective(params_file, RunOverrides())
    assert not base.changed and base.sets == [] and base.params.run_id == "demo"
    same = effective(params_file, RunOverrides(n=base.params.student.sampling.n))  # a value the file already has
    assert not same.changed and same.params.run_id == "demo"
    with pytest.raises(ConfigError, match=r"student\.sampling\.n: Input should be greater than or equal to 1"):
        effective(params_file, RunOverrides(n=0))
    with pytest.raises(ConfigError, match=r"run_id: String should match pattern"):
        effective(params_file, RunOverrides(run_id="a run/with a slash"))
    sft = effective(params_file, RunOverrides(method="sft", lr=3e-5))
    assert sft.params.sft.lr == 3e-5 and sft.params.grpo.lr == base.params.grpo.lr  # the method's own rate


def test_a_changed_run_gets_its_own_id_and_dvc_reproduces_it(params_file: Path) -> None:
    from dvc.utils.hydra import apply_overrides

    form = RunOverrides(rounds=3, lr=2e-6, n=8, rubricator=RoleOverride(
        model="gpt-5", base_url="http://judge.internal:8000/v1", reasoning_effort="high"))
    eff = effective(params_file, form)
    assert eff.changed and eff.params.run_id.startswith("demo-")
    assert effective(params_file, form).params.run_id == eff.params.run_id  # the same form: the same run
    assert eff.params.grpo.lr == 2e-6 and len(eff.params.rounds) == 3 and eff.params.student.sampling.n == 8
    assert eff.params.rubricator.base_url == "http://judge.internal:8000/v1"
    assert Params.model_validate(yaml.safe_load(eff.text)) == eff.params
    assert "# The one configuration of a run" in eff.text  # the user's comments survive
    args = shlex.split(dvc_exp_command(eff))
    assert args[:3] == ["dvc", "exp", "run"]
    apply_overrides(params_file, args[4::2])  # DVC's own parser and writer, as `dvc exp run -S` applies them
    assert Params.model_validate(yaml.safe_load(params_file.read_text())) == eff.params
    named = effective(params_file, RunOverrides(run_id="lr-sweep-1", lr=2e-6))
    assert named.params.run_id == "lr-sweep-1"
    # overlap alone: each round's sampling policy follows it, and so must the `-S` reproduction
    shutil.copy(ROOT / "params.yaml", params_file)
    over = effective(params_file, RunOverrides(overlap=True, tis_cap=2.0))
    assert [item.policy for item in over.params.rounds] == [0, 0] and over.params.grpo.tis_cap == 2.0
    apply_overrides(params_file, shlex.split(dvc_exp_command(over))[4::2])
    assert Params.model_validate(yaml.safe_load(params_file.read_text())) == over.params
    with pytest.raises(ConfigError, match=r"set grpo\.tis_cap"):  # the file has no cap: the params check's words
        effective(ROOT / "params.yaml", RunOverrides(overlap=True))


def test_a_bad_value_fails_the_flow_run_at_once(params_file: Path, prefect_harness: None,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.distill import distill

    monkeypatch.chdir(params_file.parent)
    state = distill(str(params_file), n=0, return_state=True)
    assert state.is_failed()
    assert "student.sampling.n: Input should be greater than or equal to 1 (got 0)" in state.message
    assert not state.message.startswith("Flow run encountered an exception")  # the reason, not a wrapped exception
    assert not (params_file.parent / "data").exists()  # nothing started


async def _judge_limit() -> int:
    from prefect import get_client

    from flows.distill import JUDGE_TAG

    async with get_client() as client:
        return (await client.read_concurrency_limit_by_tag(JUDGE_TAG)).concurrency_limit


async def _clear_judge_limit() -> None:
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    from flows.distill import JUDGE_TAG

    async with get_client() as client:
        with contextlib.suppress(ObjectNotFound):  # none set yet
            await client.delete_concurrency_limit_by_tag(JUDGE_TAG)


def test_serving_creates_or_keeps_the_judge_limit(prefect_harness: None) -> None:
    from flows.deploy import ensure_judge_limit

    asyncio.run(_clear_judge_limit())
    assert asyncio.run(ensure_judge_limit(None)) == 1 and asyncio.run(_judge_limit()) == 1  # created
    assert asyncio.run(ensure_judge_limit(3)) == 3 and asyncio.run(_judge_limit()) == 3  # set as asked
    assert asyncio.run(ensure_judge_limit(None)) == 3 and asyncio.run(_judge_limit()) == 3  # kept when not asked
    asyncio.run(_clear_judge_limit())


def test_judge_tasks_take_a_slot_only_while_the_tag_has_a_limit(prefect_harness: None) -> None:
    """Without a limit the judge tasks go untagged (each tag costs a server write, and about 2 s on SQLite); once
    a limit is set, the next judge task carries the tag, so Prefect holds it to the limit."""
    from flows.deploy import ensure_judge_limit
    from flows.distill import JUDGE_TAG, stage_task, task_options

    asyncio.run(_clear_judge_limit())
    try:
        unlimited = task_options("mine")
        assert unlimited["tags"] == [] and unlimited["retries"] == 2  # still retried
        assert stage_task.with_options(**unlimited).tags == set()
        assert task_options("qa") == {}  # no judge: no retries, no tag
        asyncio.run(ensure_judge_limit(2))
        for name in ("teacher", "judge_check", "mine", "verify", "evaluate"):
            assert stage_task.with_options(**task_options(name)).tags == {JUDGE_TAG}, name
        assert task_options("train") == {}
    finally:
        asyncio.run(_clear_judge_limit())
