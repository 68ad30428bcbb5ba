"""Held-out evaluation of one policy checkpoint on a run's held-out split: the `evaluate` stage, `ropd eval`
and the study benches share it, so every method is measured the same way."""

from __future__ import annotations

from pathlib import Path

from ropd.eval.harness import EvalResult
from ropd.llm.base import ChatModel
from ropd.params import Params
from ropd.pipeline.resident import learner_config, sampling_policy
from ropd.pipeline.run import RunPaths, judge_questions, messages, read_prompts, teacher_role, with_chats
from ropd.rubric.engine import GroupResult
from ropd.teacher import TeacherIndex, fingerprint


def evaluate_checkpoint(params: Params, checkpoint: Path) -> EvalResult:
    """k samples per held-out problem graded by math-verify; the first `eval.rubric_prompts` problems are
    also judged (rubric induced against the teacher's answers, then blind verification)."""
    import asyncio

    from ropd.eval.harness import eval_groups, summarize
    from ropd.rollout.hf_sampler import TransformersSampler
    from ropd.rubric.engine import score_group

    paths = RunPaths(params)
    if not paths.prompts.is_file():
        raise ValueError(f"{paths.prompts} is missing: the held-out split is chosen by `ropd stage prepare`")
    prompts = read_prompts(paths)
    held = prompts[prompts["split"] == "eval"].head(params.eval.n_prompts)
    e = params.eval
    sampling = params.student.sampling.model_copy(update={"n": e.k, "temperature": e.temperature,
                                                          "max_new_tokens": e.max_new_tokens, "seed": 10_000})
    device = params.student.device
    with sampling_policy(checkpoint, device, learner_config(params)) as (model, tokenizer):
        samples = TransformersSampler(model, tokenizer, device, params.student.chat_template_kwargs).sample(
            {row["prompt_id"]: messages(row) for _, row in held.iterrows()}, sampling)
    del model  # a policy loaded for this evaluation only is freed before the judge runs
    refs = {str(k): str(v) for k, v in held.set_index("prompt_id")["reference_answer"].items()}
    teacher: dict[str, list[str]] = {}
    if e.rubric_prompts and paths.teacher.is_file():
        index = TeacherIndex.load(paths.teacher, fingerprint(teacher_role(params)))
        teacher = {pid: index.answers(pid) for pid in refs if index.has(pid)}
    groups = eval_groups(samples, judge_questions(held), teacher, e.rubric_prompts)
    judged = []
    if groups:
        async def judge(rubricator: ChatModel, verifier: ChatModel) -> list[GroupResult]:
            return list(await asyncio.gather(*(score_group(g, rubricator, verifier, params.engine) for g in groups)))

        results = with_chats(params, ("rubricator", "verifier"), judge, "evaluate")
        judged = list(zip(groups, results, strict=True))
    return summarize(checkpoint.name, samples, refs, e.k, judged)
