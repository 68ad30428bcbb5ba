"""params.yaml validation: every bad value names its key and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ropd.params import ConfigError, Params, load_params

ROOT = Path(__file__).resolve().parent.parent


def test_shipped_params_are_valid_and_paper_defaults() -> None:
    p = load_params(ROOT / "params.yaml")
    assert p.teacher.m == 4 and p.engine.blind and p.shared_rubric
    assert (p.grpo.eps_low, p.grpo.eps_high, p.grpo.beta, p.grpo.lr) == (0.2, 0.28, 0.0, 1e-6)
    assert p.rubricator.temperature == 0.7 and p.verifier.temperature == 0.0
    assert p.quality_gate.max_failed_share == 0.4
    assert [(i.r, i.next) for i in p.rounds] == [(0, 1), (1, 2)]
    assert p.student.sampling.n == 4 and p.data.prompts_per_round == 8


def write(tmp_path: Path, patch: dict) -> Path:
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    for dotted, value in patch.items():
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(("patch", "needle"), [
    ({"grpo.lr": -1}, r"grpo\.lr: Input should be greater than 0 \(got -1\)"),
    ({"grpo.learning_rate": 1e-5}, r"unknown key 'grpo\.learning_rate'; allowed here: .*eps_high.*lr"),
    ({"colour": "blue"}, r"unknown key 'colour'; allowed here: .*rounds"),
    ({"method": "magic"},
     r"method: Input should be 'ropd', 'static_rubric', 'sft', 'tjudge' or 'lopd' \(got 'magic'\)"),
    ({"verifier.provider": "ollama"}, r"verifier\.provider: Input should be 'openai', 'local' or 'dataset'"),
    ({"engine.min_criteria": 2}, r"engine\.min_criteria: Input should be greater than or equal to 4"),
    ({"teacher.m": 0}, r"teacher\.m: Input should be greater than or equal to 1"),
    ({"quality_gate.max_failed_share": 1.5}, r"quality_gate\.max_failed_share: .*less than or equal to 1"),
    ({"rounds": [{"r": 0, "next": 1, "policy": 0}, {"r": 2, "next": 3, "policy": 2}]},
     r"rounds\[1\] must be \{r: 1, next: 2, policy: 1\} with overlap: false"),
    ({"rounds": [{"r": 0, "next": 1}]}, r"rounds items need a `policy`.*`ropd rounds 1`"),
    ({"overlap": True}, r"rounds\[1\] must be \{r: 1, next: 2, policy: 0\} with overlap: true"),
    ({"overlap": True, "rounds": [{"r": 0, "next": 1, "policy": 0}, {"r": 1, "next": 2, "policy": 0}]},
     r"overlap: true samples each round from the policy before .*set grpo\.tis_cap"),
    ({"overlap": True, "method": "sft", "grpo.tis_cap": 2.0,
      "rounds": [{"r": 0, "next": 1, "policy": 0}, {"r": 1, "next": 2, "policy": 0}]},
     r"method sft has neither: set overlap: false"),
    ({"student.sampling.temprature": 1.0}, r"unknown key 'student\.sampling\.temprature'; allowed here: .*temperature"),
    ({"rounds": 50}, r"rounds: .*a list, one DVC foreach item per round: write it with `ropd rounds 50`"),
    ({"qa.merge": "fuzzy"}, r"qa\.merge: Input should be 'none', 'exact' or 'near'"),
])
def test_bad_values_name_the_key(tmp_path: Path, patch: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        load_params(write(tmp_path, patch))


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "none.yaml")
    (tmp_path / "bad.yaml").write_text("rounds: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_params(tmp_path / "list.yaml")


def test_secrets_are_not_params() -> None:
    assert "api_key" not in Params.model_fields["verifier"].annotation.model_fields  # type: ignore[union-attr]
