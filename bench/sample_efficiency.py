"""Sample efficiency: held-out accuracy against prompts seen, for ROPD, static rubrics, SFT, T-Judge and LOPD.

    .venv/bin/python bench/sample_efficiency.py --preset small     # under an hour on 2 CPU cores
    .venv/bin/python bench/sample_efficiency.py --preset full      # a GPU, or an afternoon

Every method runs through the same pipeline (`ropd.pipeline.stages.run_all`) on the demo task with
the same seeds, prompts, budget per round and evaluation. The teacher is white-box, as in the
paper's white-box table: SmolLM2 fine-tuned on the reference solutions (the `teacher_sft` stage).
Its logits drive LOPD; its sampled text answers are what SFT imitates and what the ROPD rubricator
and the T-Judge see. The judges are the shipped params' (the packaged SmolLM2, unless `--params`
points at a file whose rubricator/verifier blocks name another endpoint).

The static-rubric arm (`method: static_rubric`, the Rubrics-as-Rewards-style baseline) verifies its
rollouts against rubrics written once, before training: the ROPD rubricator on every training prompt
of the study against the starting policy's answers (one round that holds them all, verified, never
trained), exported with `ropd export --format healthbench`. The same prompts, rubricator and
verifier as ROPD, but the rubrics cannot follow the policy as it moves. (The ROPD arm's own mined
rubrics would not do: each prompt is seen in one round only, against the very rollouts this arm
samples too, so the static arm would replay the ROPD arm exactly; a first version of this bench did.)

Every method gets the same learning rate (the preset's `lr`): at the paper's GRPO rate of 1e-6, four
optimizer steps leave a 135M policy's greedy answers unchanged, and a comparison of unequal rates
would measure the rates. Budget b = prompts seen after a round; b = 0 is the shared starting policy.
Each method is resumable: a run (named by a hash of its settings) whose last round was already
evaluated is read back, not rerun, and LLM calls are cached anyway.

Writes <out>/sample_efficiency_<preset>.json (the table) and .png (accuracy and mean rubric score
against prompts seen). The last line printed is JSON: each method's final accuracy and the prompts
each method needed to reach SFT's final accuracy (null if it never did).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import yaml

from ropd.params import round_items

ROOT = Path(__file__).resolve().parent.parent
METHODS = ("sft", "ropd", "static_rubric", "tjudge", "lopd")
PRESETS: dict[str, dict[str, Any]] = {
    "small": {"rounds": 4, "prompts_per_round": 4, "lr": 1e-5, "n": 4, "max_new_tokens": 96, "eval_prompts": 32,
              "k": 1, "eval_temperature": 0.0, "rubric_prompts": 3, "teacher_sft": {"n_prompts": 48, "epochs": 1}},
    "full": {"rounds": 12, "prompts_per_round": 16, "lr": 1e-5, "n": 8, "max_new_tokens": 128, "eval_prompts": 128,
             "k": 4, "eval_temperature": 0.6, "rubric_prompts": 16, "teacher_sft": {"n_prompts": 512, "epochs": 2}},
}


def method_params(base: dict[str, Any], preset: dict[str, Any], method: str, work: Path, tag: str) -> dict[str, Any]:
    data = json.loads(json.dumps(base))  # deep copy
    models = work / "data" / "models"
    data.update({"runs_dir": str(work / "data" / "runs"), "models_dir": str(models),
                 "method": method, "rounds": round_items(preset["rounds"])})
    data["data"].update({"prompts_per_round": preset["prompts_per_round"],  # the sampled teacher answers the pool
                         "pool_prompts": preset["prompts_per_round"] * preset["rounds"]})
    data["student"]["sampling"].update({"n": preset["n"], "max_new_tokens": preset["max_new_tokens"]})
    data["eval"] = {"n_prompts": preset["eval_prompts"], "k": preset["k"], "temperature": preset["eval_temperature"],
                    "max_new_tokens": preset["max_new_tokens"], "every": 1, "rubric_prompts": preset["rubric_prompts"]}
    data["teacher"] = {"m": 4, "role": {"provider": "local", "model": "teacher-sft",
                                        "model_path": str(models / "teacher-sft"), "api_key_env": None,
                                        "temperature": 0.7, "max_tokens": 160, "batch_size": 16}}
    data.setdefault("teacher_sft", {}).update(preset["teacher_sft"])
    for block in ("grpo", "sft", "lopd"):  # one learning rate for every method: only the method differs
        data.setdefault(block, {})["lr"] = preset["lr"]
    digest = hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:8]
    data["run_id"] = f"se-{tag}-{method}-{digest}"  # changed settings are a new run, never a stale resume
    return data


def static_rubric_set(settings: dict[str, Any], preset: dict[str, Any], work: Path, tag: str) -> Path:
    """Rubrics for every training prompt of the study, mined once against the starting policy's answers, as
    one HealthBench file (deterministic bytes). The same 16 prompts: the pool is the seeded shuffle's head."""
    from ropd.params import Params
    from ropd.pipeline.stages import SETUP_STAGES, RunPaths, run_stage
    from ropd.store.export import ExportFormat, export_run

    once = {**preset, "rounds": 1, "prompts_per_round": preset["prompts_per_round"] * preset["rounds"]}
    data = method_params(settings, once, "ropd", work, f"{tag}-rubrics")
    data["judge_check"] = {**data.get("judge_check", {}), "prompts": 0}  # the arms run their own
    params = Params.model_validate(data)
    run = RunPaths(params).run
    out = work / "static_rubrics" / run.name
    if not (out / "healthbench.jsonl").is_file():
        print(f"[static_rubric] writing rubrics for {once['prompts_per_round']} prompts", flush=True)
        for name in SETUP_STAGES:
            run_stage(params, name)
        for name in ("rollout", "mine", "qa", "verify"):  # no training: the rubrics of the starting policy
            run_stage(params, name, 0)
        export_run(run, out, ExportFormat.healthbench, rounds=[0])
    return out / "healthbench.jsonl"


def stage_seconds(params: Any) -> float:
    f = Path(params.runs_dir) / ".timings" / f"{params.run_id}.jsonl"
    return sum(json.loads(line)["seconds"] for line in f.read_text().splitlines()) if f.is_file() else 0.0


def prompts_to_reach(points: list[tuple[int, float | None]], target: float | None) -> int | None:
    if target is None:
        return None
    return next((b for b, acc in sorted(points) if acc is not None and acc >= target), None)


def plot(rows: list[dict[str, Any]], methods: list[str], out: Path, title: str, teacher_acc: float | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for m in methods:
        pts = sorted((r["prompts_seen"], r["accuracy"], r["mean_rubric_score"]) for r in rows if r["method"] == m)
        axes[0].plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=m)
        axes[1].plot([p[0] for p in pts], [p[2] for p in pts], marker="o", label=m)
    if teacher_acc is not None:
        axes[0].axhline(teacher_acc, color="grey", linestyle="--", label="white-box teacher")
    for ax, label in zip(axes, ("held-out accuracy (pass@1, math-verify)", "mean rubric score (held-out)"),
                         strict=True):
        ax.set_xlabel("training prompts seen")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    from _common import study_args  # here: tests import this file by path, without bench/ on sys.path

    args, methods = study_args(__doc__ or "", list(PRESETS), "methods", list(METHODS),
                               "base params (judges, GRPO, ...)")
    preset = PRESETS[args.preset]
    base = yaml.safe_load(args.params.read_text())
    work = (args.work / f"sample_efficiency-{args.preset}").resolve()
    smollm2 = ROOT / "data" / "models" / "smollm2-135m-instruct"
    if not smollm2.is_dir():
        from ropd.models import prepare_smollm2

        smollm2 = prepare_smollm2(ROOT / "data" / "models")
    target = work / "data" / "models" / smollm2.name
    if not target.exists():
        shutil.copytree(smollm2, target, copy_function=os.link)
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.chdir(work)  # the call cache, demo data and locks live under the work directory

    from ropd.eval.checkpoint import evaluate_checkpoint
    from ropd.params import Params
    from ropd.pipeline.stages import RunPaths, run_all

    def finished(method: str, settings: dict[str, Any]) -> Any:
        """The method's run, run first unless its last round was already evaluated."""
        params = Params.model_validate(method_params(settings, preset, method, work, args.preset))
        last = RunPaths(params).round(params.rounds[-1].r) / "eval.json"
        if not (last.is_file() and "accuracy" in json.loads(last.read_text())):
            print(f"[{method}] running {len(params.rounds)} rounds x {preset['prompts_per_round']} prompts", flush=True)
            run_all(params)
        return params

    rows: list[dict[str, Any]] = []
    wall: dict[str, float] = {}
    for method in methods:
        t0 = time.monotonic()
        settings = base
        if method == "static_rubric":  # rubrics written before training, then fixed
            settings = {**base, "static_rubric": {"file": str(static_rubric_set(base, preset, work, args.preset)),
                                                  "format": "healthbench"}}
        params = finished(method, settings)
        paths = RunPaths(params)
        wall[method] = round(stage_seconds(params), 1)
        print(f"[{method}] done in {time.monotonic() - t0:.0f}s (stage time {wall[method]}s)", flush=True)
        base_eval = work / "eval_base.json"
        if not base_eval.is_file():  # budget 0: the starting policy, identical for every method
            base_eval.write_text(evaluate_checkpoint(params, paths.checkpoint(0)).model_dump_json(indent=2))
        evals = [(0, json.loads(base_eval.read_text()))]
        round_evals = [json.loads((paths.round(i.r) / "eval.json").read_text()) for i in params.rounds]
        evals += [(ev["prompts_seen"], ev) for ev in round_evals]
        for seen, ev in evals:
            rows.append({"method": method, "prompts_seen": seen, "accuracy": ev["accuracy"],
                         "mean_rubric_score": ev["mean_rubric_score"], "reward_auc": ev["reward_auc"],
                         "unparseable": ev["unparseable"], "n_samples": ev["n_samples"]})

    teacher_eval = work / "eval_teacher.json"  # the white-box teacher on the same held-out set: the ceiling
    if not teacher_eval.is_file() and params.teacher_sft_dir.joinpath("config.json").is_file():
        teacher_eval.write_text(evaluate_checkpoint(params, params.teacher_sft_dir).model_dump_json(indent=2))
    teacher_acc = json.loads(teacher_eval.read_text())["accuracy"] if teacher_eval.is_file() else None
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"sample_efficiency_{args.preset}"
    final = {m: max((r for r in rows if r["method"] == m), key=lambda r: r["prompts_seen"])["accuracy"]
             for m in methods}
    sft_final = final.get("sft")
    reach = {m: prompts_to_reach([(r["prompts_seen"], r["accuracy"]) for r in rows if r["method"] == m], sft_final)
             for m in methods}
    table = {"preset": args.preset, "settings": preset, "teacher_accuracy": teacher_acc, "stage_seconds": wall,
             "rows": rows}
    (stem.with_suffix(".json")).write_text(json.dumps(table, indent=2) + "\n")
    plot(rows, methods, stem.with_suffix(".png"),
         f"demo task, preset {args.preset}: {preset['eval_prompts']} held-out problems, k={preset['k']}", teacher_acc)
    print(f"{'method':8} " + " ".join(f"{b:>7}" for b in sorted({r['prompts_seen'] for r in rows})))
    for m in methods:
        accs = [r["accuracy"] for r in sorted((r for r in rows if r["method"] == m), key=lambda r: r["prompts_seen"])]
        print(f"{m:8} " + " ".join(f"{a:7.3f}" for a in accs))
    print(f"table: {stem.with_suffix('.json')}  plot: {stem.with_suffix('.png')}")
    print(f"white-box teacher accuracy: {teacher_acc}")
    print(json.dumps({"preset": args.preset, "final_accuracy": final, "sft_final_accuracy": sft_final,
                      "prompts_to_reach_sft_final": reach}))


if __name__ == "__main__":
    main()
