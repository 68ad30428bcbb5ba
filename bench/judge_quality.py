"""How much judge quality buys: the same ROPD runs under judges of known quality, scored by a gold judge.

    .venv/bin/python bench/judge_quality.py --preset small          # under 45 minutes on 2 CPU cores
    .venv/bin/python bench/judge_quality.py --preset small --arms rule-0,coin

Arms (one judge each; the same seeds, data, learning rate, rounds and sampling for all, none tuned):
- `rule-0`, `rule-0.2`, `rule-0.4`: the scripted rule judge with each verdict flipped with probability
  ε = 0, 0.2, 0.4 (`ropd.testing.server --noise`); `rule-0` runs with two seeds, for the seed spread;
- `coin`: verdicts that are pure coin flips (ε = 0.5);
- `smollm2`: the packaged 135M judge (params.yaml's rubricator and verifier).

After every round each arm's policy is scored on the same held-out prompts by the *gold* judge: the clean
(ε = 0) rule judge, the ground truth for the behaviour the rewards teach. Both its samples at the
rollout temperature (n per prompt) and its greedy answer are scored; the greedy answers also give
pass@1 by math-verify. Each arm also reports its training rewards' reward–correctness AUC per round
(`diagnostics.json`) and its judge check (`judge_check.json`), so the check's separation AUC can be
read against learning speed.

Writes <out>/judge_quality_<preset>.json (the table) and .png (gold score against rounds, one line per
arm and seed). The last line printed is JSON: each arm's gain in gold score (last round minus round 0,
the mean over its seeds), rule-0's seed-to-seed spread of that gain, and the wall time. Resumable: a
finished arm (named by a hash of its settings) is read back, and every LLM call is cached.
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
from _common import start_server, stop_server, study_args
from sample_efficiency import stage_seconds

from ropd.params import round_items

ROOT = Path(__file__).resolve().parent.parent
PRESETS: dict[str, dict[str, Any]] = {
    "small": {"rounds": 4, "prompts_per_round": 4, "n": 8, "max_new_tokens": 64, "lr": 1e-4, "mini_batch_prompts": 2,
              "heldout": 8, "check_prompts": 4, "batch_size": 32},
    "tiny": {"rounds": 1, "prompts_per_round": 2, "n": 2, "max_new_tokens": 8, "lr": 5e-5, "mini_batch_prompts": 1,
             "heldout": 1, "check_prompts": 1, "batch_size": 8},  # a smoke test of the harness, not a measurement
}
ARMS: dict[str, float | None] = {"rule-0": 0.0, "rule-0.2": 0.2, "rule-0.4": 0.4, "coin": 0.5, "smollm2": None}
SEEDS: dict[str, tuple[int, ...]] = {"rule-0": (0, 1)}  # the other arms run seed 0
HELDOUT_SEED = 10_001  # the demo generator's seed for the shared held-out set


def judge_roles(base: dict[str, Any], url: str | None, model: str) -> dict[str, Any]:
    """Rubricator and verifier blocks at a scripted server; the model name keeps each judge's calls apart in
    the call cache (its key holds the model, not the URL). `url` None keeps the base params' (local) judges."""
    if url is None:
        return {"rubricator": base["rubricator"], "verifier": base["verifier"]}
    judge = {"provider": "openai", "base_url": url, "model": model, "api_key_env": None, "max_tokens": 512}
    return {"rubricator": {**judge, "temperature": 0.7}, "verifier": {**judge, "temperature": 0.0}}


def heldout_set(base: dict[str, Any], preset: dict[str, Any], root: Path) -> Path:
    """The held-out problems every arm and seed is scored on: demo problems drawn with `HELDOUT_SEED`, none of
    them among any seed's training problems. One set for all, so a seed's gain and the seed spread come from
    the training alone, not from which problems were drawn to measure it. Written on every start (it takes
    milliseconds and is deterministic), so other base params never meet a set excluding another pool."""
    from ropd.data.load import load_prompts
    from ropd.io import atomic_write_parquet
    from ropd.params import DataParams
    from ropd.pipeline.data import demo_splits

    path = root / f"heldout-{preset['heldout']}.parquet"
    seeds = {s for arm in ARMS for s in SEEDS.get(arm, (0,))}
    train = {q for s in seeds for q in demo_splits(DataParams(**{**base["data"], "seed": s}))[0]["question"]}
    held = load_prompts("demo", "eval", n=preset["heldout"], seed=HELDOUT_SEED, exclude=train)
    atomic_write_parquet(held[["question", "reference_answer", "solutions"]], path)
    return path


def arm_params(base: dict[str, Any], preset: dict[str, Any], arm: str, seed: int, url: str | None, work: Path,
               tag: str, heldout: Path) -> dict[str, Any]:
    data = json.loads(json.dumps(base))  # deep copy
    data.update({"runs_dir": str(work / "data" / "runs"), "models_dir": str(work / "data" / "models"),
                 "method": "ropd", "rounds": round_items(preset["rounds"]),
                 **judge_roles(base, url, f"rule-judge-{arm}")})
    # the seed draws the training problems, the rollouts (data.seed) and the update's shuffles; the held-out
    # set is shared
    data["data"].update({"prompts_per_round": preset["prompts_per_round"], "seed": seed, "eval_source": str(heldout),
                         "pool_prompts": preset["prompts_per_round"] * preset["rounds"]})
    data["student"]["sampling"].update({"n": preset["n"], "max_new_tokens": preset["max_new_tokens"],
                                        "batch_size": preset["batch_size"]})
    data["grpo"].update({"lr": preset["lr"], "mini_batch_prompts": preset["mini_batch_prompts"], "seed": seed})
    data["judge_check"] = {"prompts": preset["check_prompts"], "enforce": False}
    # the pipeline's own evaluation only after the last round, accuracy only: the gold judge scores every round
    data["eval"] = {"n_prompts": preset["heldout"], "k": 1, "temperature": 0.0,
                    "max_new_tokens": preset["max_new_tokens"], "every": 10_000, "rubric_prompts": preset["heldout"]}
    ident = json.loads(json.dumps(data))
    for role in ("rubricator", "verifier"):
        ident[role].pop("base_url", None)  # a fresh port every run; the model name names the judge
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:8]
    data["run_id"] = f"jq-{tag}-{arm}-s{seed}-{digest}"
    return data


def gold_scores(params: Any, gold_url: str, checkpoint: Path, preset: dict[str, Any]) -> dict[str, Any]:
    """The clean rule judge's mean score of the policy's samples (n at the rollout temperature) and of its
    greedy answers on the held-out prompts, and the greedy answers' pass@1."""
    from ropd.eval.checkpoint import evaluate_checkpoint

    data = {**params.model_dump(mode="json"), **judge_roles({}, gold_url, "gold-rule-judge")}
    greedy = evaluate_checkpoint(type(params).model_validate(data), checkpoint)
    sampling = params.student.sampling
    data["eval"] = {**data["eval"], "k": sampling.n, "temperature": sampling.temperature}
    sampled = evaluate_checkpoint(type(params).model_validate(data), checkpoint)
    return {"gold_sampled": sampled.mean_rubric_score, "gold_greedy": greedy.mean_rubric_score,
            "pass_at_1": greedy.accuracy, "n_heldout": greedy.n_problems}


def run_arm(base: dict[str, Any], preset: dict[str, Any], arm: str, seed: int, gold_url: str, root: Path,
            tag: str, heldout: Path) -> list[dict[str, Any]]:
    """One arm and seed: the ROPD run, then the gold score of every round's policy (round 0 = the start)."""
    from ropd.params import Params
    from ropd.pipeline.stages import RunPaths, run_all

    work = root / f"seed{seed}"
    models = work / "data" / "models"
    models.mkdir(parents=True, exist_ok=True)
    smollm2 = ROOT / "data" / "models" / "smollm2-135m-instruct"
    if not (models / smollm2.name).exists():
        shutil.copytree(smollm2, models / smollm2.name, copy_function=os.link)
    os.chdir(work)  # the demo data, call cache and locks of this seed
    eps = ARMS[arm]
    proc, url = start_server(0.0, noise=eps) if eps is not None else (None, None)
    try:
        params = Params.model_validate(arm_params(base, preset, arm, seed, url, work, tag, heldout))
        paths = RunPaths(params)
        done = paths.run / "judge_quality.json"
        if done.is_file():
            return json.loads(done.read_text())
        t0 = time.monotonic()
        run_all(params)
        seconds = time.monotonic() - t0
    finally:
        if proc is not None:
            stop_server(proc)
    check = json.loads(paths.judge_check.read_text())
    figures = {f["name"]: f["value"] for f in check.get("figures", [])}
    rows = []
    for r in range(-1, preset["rounds"]):  # -1: the starting policy
        diag = json.loads((paths.round(r) / "diagnostics.json").read_text()) if r >= 0 else {}
        train = json.loads((paths.round(r) / "train_metrics.json").read_text()) if r >= 0 else {}
        rows.append({"arm": arm, "seed": seed, "round": r + 1, **gold_scores(params, gold_url, paths.checkpoint(r + 1),
                                                                               preset),
                     "train_reward": train.get("mean_reward"), "grad_norm": train.get("grad_norm"),
                     "reward_auc": diag.get("reward_auc"), "check_status": check["status"],
                     **{f"check_{k}": v for k, v in figures.items()}, "arm_seconds": round(seconds, 1),
                     "stage_seconds": round(stage_seconds(params), 1)})
    done.write_text(json.dumps(rows, indent=2) + "\n")
    return rows


def plot(rows: list[dict[str, Any]], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for arm, seed in dict.fromkeys((r["arm"], r["seed"]) for r in rows):
        mine = sorted((r for r in rows if r["arm"] == arm and r["seed"] == seed), key=lambda r: r["round"])
        for ax, key in zip(axes, ("gold_sampled", "gold_greedy"), strict=True):
            ax.plot([r["round"] for r in mine], [r[key] for r in mine], marker="o", label=f"{arm} (seed {seed})")
    for ax, label in zip(axes, ("gold score, samples at the rollout temperature", "gold score, greedy answer"),
                         strict=True):
        ax.set_xlabel("rounds trained")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def gains(rows: list[dict[str, Any]], key: str) -> dict[str, list[float]]:
    """Per arm, each seed's last-round gold score minus its round-0 score."""
    out: dict[str, list[float]] = {}
    for arm, seed in dict.fromkeys((r["arm"], r["seed"]) for r in rows):
        mine = sorted((r for r in rows if r["arm"] == arm and r["seed"] == seed), key=lambda r: r["round"])
        if mine[0][key] is not None and mine[-1][key] is not None:
            out.setdefault(arm, []).append(mine[-1][key] - mine[0][key])
    return out


def main() -> None:
    args, arms = study_args(__doc__ or "", list(PRESETS), "arms", list(ARMS), "base params (GRPO, the 135M judge)")
    preset = PRESETS[args.preset]
    base = yaml.safe_load(args.params.read_text())
    root = (args.work / f"judge_quality-{args.preset}").resolve()
    out_dir = args.out.resolve()
    if not (ROOT / "data" / "models" / "smollm2-135m-instruct").is_dir():
        from ropd.models import prepare_smollm2

        prepare_smollm2(ROOT / "data" / "models")
    os.environ.setdefault("TQDM_DISABLE", "1")
    t0 = time.monotonic()
    heldout = heldout_set(base, preset, root)
    gold_proc, gold_url = start_server(0.0)
    rows: list[dict[str, Any]] = []
    try:
        for arm in arms:
            for seed in SEEDS.get(arm, (0,)):
                print(f"[{arm} seed {seed}] {preset['rounds']} rounds x {preset['prompts_per_round']} prompts "
                      f"x n={preset['n']}", flush=True)
                rows += run_arm(base, preset, arm, seed, gold_url, root, args.preset, heldout)
                last = rows[-1]
                print(f"[{arm} seed {seed}] gold sampled {rows[-1 - preset['rounds']]['gold_sampled']} -> "
                      f"{last['gold_sampled']}, check {last['check_status']} (separation "
                      f"{last.get('check_separation_auc')})", flush=True)
    finally:
        stop_server(gold_proc)
    wall = time.monotonic() - t0
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"judge_quality_{args.preset}"
    (stem.with_suffix(".json")).write_text(json.dumps({"preset": args.preset, "settings": preset, "rows": rows},
                                                      indent=2) + "\n")
    plot(rows, stem.with_suffix(".png"), f"ROPD on the demo task under judges of known quality ({args.preset})")
    sampled, greedy = gains(rows, "gold_sampled"), gains(rows, "gold_greedy")
    spread = {arm: round(max(g) - min(g), 4) for arm, g in sampled.items() if len(g) > 1}
    print(f"{'arm':9} {'gain sampled':>13} {'gain greedy':>12} {'check':>6} {'separation':>11}")
    for arm in dict.fromkeys(r["arm"] for r in rows):
        last = [r for r in rows if r["arm"] == arm][-1]
        mean_s = sum(sampled.get(arm, [0])) / max(len(sampled.get(arm, [])), 1)
        mean_g = sum(greedy.get(arm, [0])) / max(len(greedy.get(arm, [])), 1)
        print(f"{arm:9} {mean_s:13.3f} {mean_g:12.3f} {last['check_status']:>6} "
              f"{last.get('check_separation_auc')!s:>11}")
    print(f"table: {stem.with_suffix('.json')}  plot: {stem.with_suffix('.png')}")
    print(json.dumps({"preset": args.preset,
                      "gain_gold_sampled": {a: round(sum(g) / len(g), 4) for a, g in sampled.items()},
                      "gain_gold_greedy": {a: round(sum(g) / len(g), 4) for a, g in greedy.items()},
                      "gain_by_seed": {a: [round(x, 4) for x in g] for a, g in sampled.items()},
                      "seed_spread": spread, "seconds": round(wall, 1)}))


if __name__ == "__main__":
    main()
