"""Bad input reaching the pipeline's entry points: each stops with an error that names the culprit.

The loaders' own rules are proven in tests/test_data.py, tests/test_params.py and tests/test_models.py;
here the same faults go through the prepare stage and the `ropd stage` command a user runs, and a
corrupt checkpoint goes through the loaders that the rollout, train and evaluate stages call.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from ropd.data.load import DatasetError
from ropd.models import ModelPrepError
from ropd.params import load_params, round_items
from ropd.pipeline.data import prepare
from ropd.train.grpo import CheckpointError, GRPOLearner, load_policy
from tests.tiny import BIN, project_env

CLEAR = (ValueError, LookupError, ModelPrepError)  # among what `ropd stage` reports in one line, exit 2


def write_params(where: Path, smollm2_dir: Path, **top: object) -> Path:
    data = {"run_id": "bad", "student": {"model_path": str(smollm2_dir)}, **top}
    (where / "params.yaml").write_text(yaml.safe_dump(data))
    return where / "params.yaml"


@pytest.mark.parametrize(("rows", "needle"), [
    ([b'{"prompt": "ok"}', b'{"question": "caf\xe9?"}'], r"bad\.jsonl: line 2: not UTF-8"),
    ([b'{"prompt": "ok"}', b'{"answer": 3}'], r"bad\.jsonl: line 2: .*needs one of the columns"),
    ([b'{"prompt": "ok"}', b'{"prompt": ""}'], r"bad\.jsonl: line 2: .*the prompt is empty"),
    ([b'{"prompt": "ok"}', b'{"prompt": ["a", "b"]}'], r"bad\.jsonl: line 2: prompt: Input should be a valid string"),
    ([b'{"prompt": "same"}', b'{"prompt": "x"}', b'{"prompt": "same"}'], r"bad\.jsonl: line 3: duplicate prompt"),
], ids=["non_utf8", "missing_column", "empty_prompt", "wrong_type", "duplicate_prompt"])
def test_prepare_names_the_bad_dataset_row(rows: list[bytes], needle: str, tmp_path: Path, smollm2_dir: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.jsonl").write_bytes(b"\n".join(rows) + b"\n")
    params = load_params(write_params(tmp_path, smollm2_dir, data={"source": "bad.jsonl"}))
    with pytest.raises(DatasetError, match=needle):
        prepare(params)
    assert not (tmp_path / "data" / "runs" / "bad" / "prompts.parquet").exists()


@pytest.mark.parametrize(("top", "needle"), [
    ({"grpo": {"lr": 1e-6, "learning_rate": 1e-5}}, "unknown key 'grpo.learning_rate'"),
    ({"quality_gate": {"max_failed_share": 2}}, r"quality_gate.max_failed_share: Input should be less than or equal"),
    ({"data": {"source": "bad.jsonl"}}, "bad.jsonl: line 1: not JSON"),
    ({"data": {"source": "demo"}}, "data/demo/train.parquet is missing: run `ropd stage demo_data` first"),
], ids=["params_unknown_key", "params_out_of_range", "dataset_not_json", "demo_data_not_run"])
def test_cli_reports_the_culprit_in_one_line(top: dict, needle: str, tmp_path: Path, smollm2_dir: Path) -> None:
    (tmp_path / "bad.jsonl").write_text("{prompt: unquoted}\n")
    write_params(tmp_path, smollm2_dir, **top)
    proc = subprocess.run([str(BIN / "ropd"), "stage", "prepare"], cwd=tmp_path, env=project_env(),
                          capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2 and needle in " ".join(out.split()), out[-2000:]
    assert "Traceback" not in out


def test_missing_student_model_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.jsonl").write_text('{"prompt": "a"}\n{"prompt": "b"}\n')
    data = {"run_id": "bad", "student": {"model_path": str(tmp_path / "no-such-model")},
            "data": {"source": "p.jsonl", "eval_source": "p.jsonl", "prompts_per_round": 1},
            "rounds": round_items(1)}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(CLEAR, match="no-such-model"):
        prepare(load_params("params.yaml"))


@pytest.fixture
def checkpoint(smollm2_dir: Path, tmp_path: Path) -> Path:
    """A copy of a policy checkpoint: small files copied, the weights hard-linked (or copied)."""
    ckpt = tmp_path / "checkpoints" / "round_1"
    ckpt.mkdir(parents=True)
    for f in smollm2_dir.iterdir():
        if f.name != "model.safetensors":
            shutil.copy(f, ckpt / f.name)
    return ckpt


def test_checkpoint_without_config_is_named(checkpoint: Path, smollm2_dir: Path) -> None:
    (checkpoint / "config.json").unlink()
    with pytest.raises(CheckpointError, match=str(checkpoint)):
        load_policy(checkpoint)
    with pytest.raises(CheckpointError, match=rf"{checkpoint}: not a model checkpoint"):
        GRPOLearner.load(checkpoint)


def test_checkpoint_with_unreadable_config_is_named(checkpoint: Path) -> None:
    (checkpoint / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=str(checkpoint)):
        load_policy(checkpoint)


@pytest.mark.parametrize("loader", ["load_policy", "GRPOLearner.load"])
def test_truncated_weights_are_named(loader: str, checkpoint: Path, smollm2_dir: Path) -> None:
    with (smollm2_dir / "model.safetensors").open("rb") as src:
        (checkpoint / "model.safetensors").write_bytes(src.read(1_000_000))  # a copy cut short, as by a full disk
    (checkpoint / "trainer_state.json").write_text(json.dumps({"step": 1}))
    load = load_policy if loader == "load_policy" else GRPOLearner.load
    with pytest.raises(CheckpointError, match=str(checkpoint)):
        load(checkpoint)


def test_cli_names_a_corrupt_checkpoint_in_one_line(tmp_path: Path, smollm2_dir: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    model = smollm2_dir.resolve()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.jsonl").write_text('{"prompt": "a"}\n{"prompt": "b"}\n')
    write_params(tmp_path, model, data={"source": "p.jsonl", "eval_source": "p.jsonl", "prompts_per_round": 1},
                 rounds=round_items(1))
    prepare(load_params("params.yaml"))
    weights = tmp_path / "data" / "runs" / "bad" / "checkpoints" / "round_0" / "model.safetensors"
    weights.unlink()  # a hard link to the shared model: replace it, never write through it
    weights.write_bytes(b"\0" * 1000)
    proc = subprocess.run([str(BIN / "ropd"), "stage", "rollout", "--round", "0"], cwd=tmp_path, env=project_env(),
                          capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "checkpoints/round_0: cannot load the policy" in out, out[-2000:]
    assert "Traceback" not in out
