"""ROPD as a reward function for `trl.GRPOTrainer`: the paper-exact inline mode.

At every step TRL hands over the batch's completions; this groups them by prompt, looks up the
cached teacher answers, induces one rubric per group from the *current* completions, verifies the
blind pool, and returns the weighted pass rates. Rollouts of a group whose judging failed get
`None`, which TRL turns into NaN and leaves out of the group baseline and the loss.

    reward = RopdReward(TeacherIndex.load(path), rubricator, verifier, run_dir="data/runs/my-trl-run")
    trainer = GRPOTrainer(model=..., reward_funcs=[reward], train_dataset=ds_with_prompt_id_column, ...)

With `run_dir`, every training step leaves the tables a staged round leaves (`round_<global_step>/`:
rollouts, rubrics, criteria, judgements, rewards, rubric_failures, diagnostics.json; prompts.parquet
and teacher.parquet beside them), so `ropd store ingest`, `ropd audit` and `ropd report` read a TRL
run as they read a pipeline run. Give the judges a `CallCache` at `run_dir/llm_cache.sqlite`: a rerun
of a step (a resumed training) then replays its judge calls and rewrites the same tables.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections import defaultdict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from ropd.config import EngineConfig
from ropd.io import atomic_dir, atomic_write_parquet
from ropd.llm.base import ChatModel
from ropd.rubric.engine import Group, GroupResult, score_groups
from ropd.rubric.prompts import RUBRICATOR_VERSION
from ropd.rubric.scoring import category_pass_rates
from ropd.rubric.tables import GroupMeta, failure_frame, result_frames
from ropd.store.tables import BY_NAME
from ropd.teacher import TeacherIndex, index_frame


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


def _messages(prompt: Any) -> list[dict[str, str]]:
    """The prompt as the contract's `messages` (role and plain-text content), whatever TRL's format."""
    if isinstance(prompt, list):
        return [{"role": str(m.get("role", "user")), "content": _text([m])} for m in prompt if isinstance(m, dict)]
    return [{"role": "user", "content": _text(prompt)}]


def _cell(columns: dict[str, Any], name: str, i: int) -> str | None:
    """Row `i` of an optional dataset column (TRL passes every column as a keyword), as text."""
    value = columns.get(name, [None] * (i + 1))[i]
    return None if value is None else str(value)


class RopdReward:
    """Async reward function; TRL awaits it on its own event loop, concurrently with other rewards.

    `run_dir`: where each step's contract tables go (see the module docstring); None writes nothing.
    The dataset's optional `reference_answer` and `source` columns fill the prompts table's, so the
    step's diagnostics can compute the reward's AUC against math-verify correctness.
    """

    def __init__(
        self,
        teacher: TeacherIndex | Mapping[str, list[str]],
        rubricator: ChatModel,
        verifier: ChatModel,
        engine: EngineConfig | None = None,
        *,
        prompt_id_column: str = "prompt_id",
        run_dir: Path | str | None = None,
    ) -> None:
        if run_dir is not None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            # Each process scores its own slice of the batch: one process's tables would replace another's.
            raise ValueError(f"run_dir={run_dir}: the inline mode's tables are written by one training process; "
                             f"WORLD_SIZE is {os.environ['WORLD_SIZE']}")
        self.__name__ = "ropd_rubric"  # TRL names the reward's metrics after it
        self.teacher = teacher
        self.rubricator = rubricator
        self.verifier = verifier
        self.engine = engine or EngineConfig()
        self.prompt_id_column = prompt_id_column
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.calls = 0
        self._steps_written: set[int] = set()

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
        # The trainer's step, not a call count, so a resumed training names its steps (and groups) as before.
        state = kwargs.get("trainer_state")
        step = int(state.global_step) if state is not None else self.calls
        self.calls += 1
        if self.run_dir is not None and step in self._steps_written:
            raise ValueError(f"run_dir={self.run_dir}: the reward was called twice at step {step} (steps_per_generation"
                             " below gradient_accumulation_steps, or an eval_dataset scored with this reward); one "
                             "round per step needs one call per step: evaluate with a RopdReward without run_dir")
        groups = [
            Group(group_id=f"{pid}@{step}", question=_question(prompts[idx[0]]),
                  teacher=self._teacher_answers(pid), student=[_text(completions[i]) for i in idx])
            for pid, idx in members.items()
        ]
        results = await score_groups(groups, self.rubricator, self.verifier, self.engine)
        if self.run_dir is not None:
            await asyncio.to_thread(self._write_step, step, prompts, completions, members, results, kwargs)
            self._steps_written.add(step)
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

    def _write_step(self, step: int, prompts: list[Any], completions: list[Any], members: dict[str, list[int]],
                    results: list[GroupResult], columns: dict[str, Any]) -> None:
        """The step's round directory, built whole in a temporary sibling and renamed into place, after the run's
        prompts and teacher answers (so a round never names a prompt the run's tables lack)."""
        from ropd.store.qa import pool_diagnostics  # DuckDB and math-verify: only where tables are written

        assert self.run_dir is not None
        run_id, first = self.run_dir.name, {pid: idx[0] for pid, idx in members.items()}
        run_prompts = self._upsert(BY_NAME["prompts"].file, pd.DataFrame(
            [{"prompt_id": pid, "question": _question(prompts[i]),
              "reference_answer": _cell(columns, "reference_answer", i), "split": "train",
              "source": _cell(columns, "source", i), "messages": json.dumps(_messages(prompts[i]))}
             for pid, i in first.items()], columns=BY_NAME["prompts"].file_columns))
        index = self.teacher if isinstance(self.teacher, TeacherIndex) else None
        self._upsert(BY_NAME["teacher_answers"].file, index_frame(
            [(pid, index.fingerprint_of(pid) if index else None, k, text)
             for pid in first for k, text in enumerate(self._teacher_answers(pid))]))
        metas = [GroupMeta(group_id=pid, prompt_id=pid, sample_indices=list(range(len(idx))))
                 for pid, idx in members.items()]
        ids = columns.get("completion_ids")
        rollouts = pd.DataFrame(
            [{"run_id": run_id, "round": step, "prompt_id": pid, "sample_idx": k, "text": _text(completions[i]),
              "n_tokens": None if ids is None else len(ids[i]), "finish_reason": None,
              "checkpoint": f"checkpoint-{step}"}  # TRL's name for the policy that sampled them
             for pid, idx in members.items() for k, i in enumerate(idx)],
            columns=["run_id", *BY_NAME["rollouts"].file_columns])
        fingerprint = self.rubricator.config.fingerprint(RUBRICATOR_VERSION)
        frames = {"rollouts": rollouts,
                  **result_frames(results, run_id=run_id, round=step, rubricator_fingerprint=fingerprint, metas=metas),
                  "rubric_failures": failure_frame(list(zip(metas, results, strict=True)), run_id=run_id, round=step)}
        rd = self.run_dir / f"round_{step}"
        with atomic_dir(rd) as tmp:
            for name, frame in frames.items():
                atomic_write_parquet(frame, tmp / str(BY_NAME[name].file))
        pool_diagnostics(rd, run_prompts)  # from the renamed directory: it reads the round under its own name

    def _upsert(self, file: str | None, frame: pd.DataFrame) -> pd.DataFrame:
        """Replace the rows of this step's prompts in a run-scope table (every step's prompts accumulate), sorted
        so that rerunning a step rewrites the same bytes."""
        assert self.run_dir is not None and file is not None
        path = self.run_dir / file
        if path.is_file():
            old = pd.read_parquet(path)
            frame = pd.concat([old[~old["prompt_id"].isin(frame["prompt_id"])], frame], ignore_index=True)
        frame = frame.sort_values([c for c in ("prompt_id", "answer_idx") if c in frame.columns], kind="stable")
        frame = frame.reset_index(drop=True)
        atomic_write_parquet(frame, path)
        return frame
