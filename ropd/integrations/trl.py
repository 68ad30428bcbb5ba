"""ROPD as a reward function for `trl.GRPOTrainer`: the paper-exact inline mode.

At every step TRL hands over the batch's completions; this groups them by prompt, looks up the
cached teacher answers, induces one rubric per group from the *current* completions, verifies the
blind pool, and returns the weighted pass rates. Rollouts of a group whose judging failed get
`None`, which TRL turns into NaN and leaves out of the group baseline and the loss.

    reward = RopdReward(TeacherIndex.load(path), rubricator, verifier)
    trainer = GRPOTrainer(model=..., reward_funcs=[reward], train_dataset=ds_with_prompt_id_column, ...)
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import Any

from ropd.config import EngineConfig
from ropd.llm.base import ChatModel
from ropd.rubric.engine import Group, score_groups
from ropd.rubric.scoring import category_pass_rates
from ropd.teacher import TeacherIndex


def _text(x: Any) -> str:
    """A TRL prompt or completion, conversational (list of messages) or plain, as text."""
    if isinstance(x, str):
        return x
    if isinstance(x, list) and x and isinstance(x[-1], dict):
        content = x[-1].get("content", "")
        if isinstance(content, list):  # content blocks
            return "".join(part.get("text", "") for part in content if isinstance(part, dict))
        return str(content)
    raise TypeError(f"unsupported prompt/completion format: {type(x).__name__}")


def _question(prompt: Any) -> str:
    """The last user turn of a conversational prompt, or the prompt itself."""
    if isinstance(prompt, list):
        users = [m for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        return _text(users[-1:] or prompt)
    return _text(prompt)


class RopdReward:
    """Async reward function; TRL awaits it on its own event loop, concurrently with other rewards."""

    def __init__(
        self,
        teacher: TeacherIndex | Mapping[str, list[str]],
        rubricator: ChatModel,
        verifier: ChatModel,
        engine: EngineConfig | None = None,
        *,
        prompt_id_column: str = "prompt_id",
    ) -> None:
        self.__name__ = "ropd_rubric"  # TRL names the reward's metrics after it
        self.teacher = teacher
        self.rubricator = rubricator
        self.verifier = verifier
        self.engine = engine or EngineConfig()
        self.prompt_id_column = prompt_id_column
        self.calls = 0

    def _teacher_answers(self, prompt_id: str) -> list[str]:
        if isinstance(self.teacher, TeacherIndex):
            return self.teacher.answers(prompt_id)
        if prompt_id not in self.teacher:
            raise KeyError(f"prompt {prompt_id}: no teacher answers")
        return list(self.teacher[prompt_id])

    async def __call__(
        self,
        prompts: list[Any],
        completions: list[Any],
        log_metric: Callable[[str, float], None] | None = None,
        **kwargs: Any,
    ) -> list[float | None]:
        if self.prompt_id_column not in kwargs:
            raise KeyError(f"the training dataset needs a {self.prompt_id_column!r} column to find teacher answers")
        prompt_ids = [str(p) for p in kwargs[self.prompt_id_column]]
        members: dict[str, list[int]] = defaultdict(list)
        for i, pid in enumerate(prompt_ids):
            members[pid].append(i)
        step = self.calls
        self.calls += 1
        groups = [
            Group(group_id=f"{pid}@{step}", question=_question(prompts[idx[0]]),
                  teacher=self._teacher_answers(pid), student=[_text(completions[i]) for i in idx])
            for pid, idx in members.items()
        ]
        results = await score_groups(groups, self.rubricator, self.verifier, self.engine)
        rewards: list[float | None] = [None] * len(completions)
        per_category: dict[str, list[float]] = defaultdict(list)
        for (_, idx), res in zip(members.items(), results, strict=True):
            for i, r in zip(idx, res.rewards, strict=True):
                rewards[i] = r
            if res.ok and res.rubric is not None:
                for cat, rate in category_pass_rates(res.rubric, res.student_verdicts).items():
                    per_category[cat].append(rate)
        if log_metric is not None:
            log_metric("ropd/judge_failure_rate", sum(not r.ok for r in results) / max(len(results), 1))
            for cat, rates in per_category.items():
                log_metric(f"ropd/pass_rate/{cat}", sum(rates) / len(rates))
        return rewards
