"""Rollout and train on 2 CPU processes (torchrun, gloo) give what one process gives.

The round is uneven on purpose: 3 rollouts per prompt, one prompt per optimizer step and one sample
per micro-batch, so each step's 3 samples split 2/1 across the processes, and the 6 rollouts in
batches of 2 make 3 sampling batches, split 2/1 too. Unequal numbers of backward passes would
desynchronise DDP's gradient all-reduce (wrong averages, or a hang).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file

from ropd.params import load_params
from ropd.pipeline import stages
from ropd.testing.server import ScriptedServer
from tests.tiny import BIN, provide_models, tiny_params

LR = 1e-5


@pytest.fixture(scope="module")
def judged(module_tmp: Path, smollm2_dir: Path) -> Iterator[Path]:
    """Round 0 judged, then rolled out and trained once in this process; the outputs are kept aside."""
    with ScriptedServer() as srv, pytest.MonkeyPatch.context() as mp:
        data = tiny_params(srv.base_url, smollm2_dir.parent)
        provide_models(module_tmp, smollm2_dir.parent)
        data["student"]["sampling"].update({"n": 3, "batch_size": 2})
        data["grpo"].update({"micro_batch_size": 1, "mini_batch_prompts": 1, "lr": LR})
        (module_tmp / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
        mp.chdir(module_tmp)
        params = load_params("params.yaml")
        for name in ("demo_data", "prepare", "teacher"):
            stages.run_stage(params, name)
        for name in ("rollout", "mine", "qa", "verify", "train"):
            stages.run_stage(params, name, 0)
        run = stages.RunPaths(params).run
        shutil.move(run / "checkpoints" / "round_1", module_tmp / "one_process_ckpt")
        shutil.copy(run / "round_0" / "train_metrics.json", module_tmp / "one_process_metrics.json")
        shutil.copy(run / "round_0" / "rollouts.parquet", module_tmp / "one_process_rollouts.parquet")
        data["launch"] = {"command": [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2"]}
        (module_tmp / "params.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
        params = load_params("params.yaml")
        stages.run_stage(params, "rollout", 0)
        stages.run_stage(params, "train", 0)
        yield module_tmp


def test_two_processes_sample_the_same_rollouts(judged: Path) -> None:
    one = pd.read_parquet(judged / "one_process_rollouts.parquet")
    two = pd.read_parquet(judged / "data" / "runs" / "tiny" / "round_0" / "rollouts.parquet")
    assert len(two) == 6 and list(two.columns) == list(one.columns)
    pd.testing.assert_frame_equal(one.drop(columns="logprobs"), two.drop(columns="logprobs"))
    for a, b in zip(one["logprobs"], two["logprobs"], strict=True):
        assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-4


def test_two_processes_make_the_same_update(judged: Path) -> None:
    run = judged / "data" / "runs" / "tiny"
    start = load_file(run / "checkpoints" / "round_0" / "model.safetensors")
    one = load_file(judged / "one_process_ckpt" / "model.safetensors")
    two = load_file(run / "checkpoints" / "round_1" / "model.safetensors")
    worst, moved, off, total = 0.0, 0.0, 0, 0
    for name, w0 in start.items():
        d1, d2 = one[name] - w0, two[name] - w0
        diff = (d1 - d2).abs()
        worst, off, total = max(worst, float(diff.max())), off + int((diff > LR / 20).sum()), total + diff.numel()
        moved = max(moved, float(d1.abs().max()))
    assert moved > LR / 2, "the one-process step did not move the weights: nothing to compare"
    # Adam divides by sqrt(v) + eps: where a gradient is of the order of eps, a last-bit difference in the
    # all-reduced sum moves that weight's step by a fraction of lr (4 of 134M weights, up to lr/10, on a CPU
    # without AVX). A desynchronised all-reduce or a lost sample moves most weights; the AdamW moments
    # below compare the gradients themselves.
    assert off <= total // 1_000_000 and worst < LR / 2, \
        f"{off} of {total} weights differ by more than lr/20, the worst by {worst:.3g} (lr {LR})"
    m1 = json.loads((judged / "one_process_metrics.json").read_text())
    m2 = json.loads((run / "round_0" / "train_metrics.json").read_text())
    assert m1["steps"] == m2["steps"] == 2 and m1["tokens"] == m2["tokens"]
    for key in ("loss", "grad_norm", "ratio_mean", "clip_frac"):
        assert m2[key] == pytest.approx(m1[key], rel=1e-4, abs=1e-7), key
    s1 = json.loads((judged / "one_process_ckpt" / "trainer_state.json").read_text())
    s2 = json.loads((run / "checkpoints" / "round_1" / "trainer_state.json").read_text())
    assert s1 == s2
    o1 = torch.load(judged / "one_process_ckpt" / "optimizer.pt", weights_only=True)
    o2 = torch.load(run / "checkpoints" / "round_1" / "optimizer.pt", weights_only=True)
    for k, st in o1["state"].items():  # the gradients: a sum over processes in another order cancels to
        scale = float(st["exp_avg"].abs().max())  # another last bit, so the tolerance follows each tensor's scale
        torch.testing.assert_close(o2["state"][k]["exp_avg"], st["exp_avg"], rtol=1e-3, atol=max(1e-5 * scale, 1e-12))
