"""`trl.GRPOTrainer` runs with the ROPD reward, judged inline by the local constrained backend."""

from __future__ import annotations

from pathlib import Path

from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer

from ropd.config import EngineConfig, RoleConfig
from ropd.integrations.trl import RopdReward
from ropd.llm.local import LocalChat
from ropd.testing.server import Fail, ScriptedServer
from tests.conftest import run


def test_grpo_trainer_two_steps_with_local_judge(smollm2_dir: Path, tmp_path: Path) -> None:
    questions = ["What is 3 times 12?", "What is 45 plus 17?"]
    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": q}], "prompt_id": f"p{i}"}
                            for i, q in enumerate(questions)])
    teacher = {"p0": ["3 * 12 = 36\nAnswer: 36"], "p1": ["45 + 17 = 62\nAnswer: 62"]}
    cfg = RoleConfig(provider="local", model="smollm2", model_path=str(smollm2_dir), api_key_env=None,
                     max_tokens=220)
    reward = RopdReward(teacher, LocalChat("rubricator", cfg.model_copy(update={"temperature": 0.7})),
                        LocalChat("verifier", cfg), EngineConfig(min_criteria=4, max_criteria=4,
                                                                 max_criterion_chars=40))
    args = GRPOConfig(output_dir=str(tmp_path / "out"), use_cpu=True, bf16=False, beta=0.0, num_generations=2,
                      per_device_train_batch_size=2, max_completion_length=16, max_steps=2, logging_steps=1,
                      report_to="none", save_strategy="no", seed=0)
    trainer = GRPOTrainer(model=str(smollm2_dir), reward_funcs=[reward], args=args, train_dataset=ds)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "reward" in h]
    assert len(logs) == 2 and reward.calls == 2
    for h in logs:
        assert 0.0 <= h["rewards/ropd_rubric/mean"] <= 1.0
        assert h["ropd/judge_failure_rate"] == 0.0
        assert any(k.startswith("ropd/pass_rate/") for k in h)


def test_failed_group_returns_none(tmp_path: Path) -> None:
    """Directly, through the stand-in server: a failed group's rollouts get None, not 0."""
    from tests.conftest import FAST

    with ScriptedServer() as srv:
        srv.push(Fail(400), kind="verify")
        cfg = RoleConfig(base_url=srv.base_url, api_key_env=None, **FAST)
        from ropd.llm.openai_compat import OpenAICompatChat

        rub, ver = OpenAICompatChat("rubricator", cfg), OpenAICompatChat("verifier", cfg)
        reward = RopdReward({"a": ["1 + 2 = 3\nAnswer: 3"], "b": ["2 + 2 = 4\nAnswer: 4"]}, rub, ver)
        metrics: dict[str, float] = {}
        prompts = [[{"role": "user", "content": "What is 1 plus 2?"}]] * 2 + [
            [{"role": "user", "content": "What is 2 plus 2?"}]] * 2
        completions = [[{"role": "assistant", "content": t}] for t in ["1 + 2 = 3\nAnswer: 3", "Answer: 4",
                                                                        "2 + 2 = 4\nAnswer: 4", "5"]]
        out = run(reward(prompts, completions, log_metric=metrics.__setitem__, prompt_id=["a", "a", "b", "b"]),
                  rub, ver)
    assert metrics["ropd/judge_failure_rate"] == 0.5
    failed = [i for i in range(4) if out[i] is None]
    assert failed in ([0, 1], [2, 3])  # one whole group masked, the other scored
    assert all(isinstance(out[i], float) for i in range(4) if i not in failed)
