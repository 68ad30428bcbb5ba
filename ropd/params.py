"""`params.yaml`: the one configuration of a run, validated, with errors that name the key.

DVC reads the same file for `${...}` templating and `params:` dependencies, so the pipeline's
structure (rounds) and its settings live in one place.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ropd.config import EngineConfig, LimitsConfig, QualityGate, RoleConfig
from ropd.eval.judge_check import JudgeCheckParams
from ropd.pipeline.checkpoints import CheckpointParams
from ropd.pipeline.launch import LaunchParams
from ropd.rollout.base import SamplingParams
from ropd.rubric.static import StaticRubricParams
from ropd.store.qa import QAConfig
from ropd.tracking import TrackingParams
from ropd.train.config import GRPOConfig, LOPDSettings, SFTSettings


class ConfigError(ValueError):
    """A bad params.yaml: the message names every offending key and what is allowed there."""


class DataParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str = Field(default="demo", description="'demo' (generated arithmetic), or a .jsonl/.parquet path, "
                        "or hf://dataset[:split] when a hub is reachable")
    eval_source: str | None = Field(default=None, description="held-out set; default: the demo eval split")
    n_train: int = Field(default=512, ge=1, description="demo generator: training problems")
    n_eval: int = Field(default=128, ge=1, description="demo generator: held-out problems")
    prompts_per_round: int = Field(default=8, ge=1)
    pool_prompts: int | None = Field(default=None, ge=1, description="training prompts the rounds draw from, "
                                     "the first of the seeded shuffle; the teacher answers each once. null = every "
                                     "prompt of the source. Rounds never change it, so a run extends without rerunning")
    seed: int = 0


class TeacherParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    m: int = Field(default=4, ge=1, le=16, description="teacher answers per prompt")
    role: RoleConfig = RoleConfig(provider="dataset", model="demo-reference-solutions")


class StudentParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model_path: str | None = Field(default=None, description="initial policy; default: the prepared SmolLM2")
    device: str = "cpu"
    sampling: SamplingParams = SamplingParams(n=4, temperature=1.0, max_new_tokens=96, batch_size=8)
    chat_template_kwargs: dict[str, Any] = Field(default_factory=dict, description="passed to the student's chat "
                                                 "template wherever a prompt is encoded, e.g. {enable_thinking: "
                                                 "false} for a Qwen3 student (the paper's setting)")


class EvalParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n_prompts: int = Field(default=16, ge=1)
    k: int = Field(default=1, ge=1, description="samples per held-out problem; pass@1 is averaged over k")
    temperature: float = Field(default=0.0, ge=0.0)
    max_new_tokens: int = Field(default=96, ge=1)
    every: int = Field(default=1, ge=1, description="evaluate after every N-th round (and always after the last)")
    rubric_prompts: int = Field(default=4, ge=0, description="held-out prompts also judged by rubricator + verifier "
                                "(mean rubric score, reward-correctness AUC); 0 = accuracy only")


class TeacherSFTParams(SFTSettings):
    """The white-box teacher for LOPD: SmolLM2 fine-tuned on the reference solutions of the train split."""

    n_prompts: int = Field(default=256, ge=1, description="train problems used (all their reference solutions)")
    lr: float = Field(default=5e-5, gt=0)
    epochs: float = Field(default=2.0, gt=0)


class BudgetParams(BaseModel):
    """A spending cap for the run's paid LLM calls (every role's `price`), checked before each judge stage."""

    model_config = ConfigDict(extra="forbid")

    max_usd: float | None = Field(default=None, gt=0, description="stop (exit 3, stopped.json) before a teacher, "
                                  "mine or verify stage whose estimate would take the run's spend above this; "
                                  "null = no budget")


class RoundItem(BaseModel):
    """One DVC `foreach` item: round `r` samples from policy `round_<policy>`, updates `round_<r>` and writes
    `round_<next>`. DVC's templating has no arithmetic, so each index is spelled out (`round_items`)."""

    model_config = ConfigDict(extra="forbid")

    r: int = Field(ge=0)
    next: int = Field(ge=1)
    policy: int = Field(ge=0, description="the policy round r's rollouts come from: r, or r-1 with overlap")


def sampling_policy(r: int, overlap: bool) -> int:
    """With overlap, round r's rollouts are drawn from policy r-1 while round r-1 is still being judged."""
    return max(r - 1, 0) if overlap else r


def round_items(n: int, overlap: bool = False) -> list[dict[str, int]]:
    """The `rounds:` list for n rounds: what `ropd rounds N` writes."""
    return [{"r": r, "next": r + 1, "policy": sampling_policy(r, overlap)} for r in range(n)]


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run_id: str = Field(default="demo", pattern=r"^[A-Za-z0-9_.-]+$")
    runs_dir: str = "data/runs"
    models_dir: str = "data/models"
    method: Literal["ropd", "static_rubric", "sft", "tjudge", "lopd"] = Field(
        default="ropd", description="ropd (rubric rewards), static_rubric (fixed rubrics from a file), sft (teacher "
        "answers), tjudge (scalar judge reward), lopd (teacher logits, white-box)")
    rounds: list[RoundItem] = Field(default_factory=lambda: [RoundItem(**item) for item in round_items(2)],
                                    min_length=1)
    overlap: bool = Field(default=False, description="sample round r+1 from policy r while round r is judged "
                          "(one step off-policy, corrected by grpo.tis_cap); false = strictly in turn")
    data: DataParams = DataParams()
    teacher: TeacherParams = TeacherParams()
    student: StudentParams = StudentParams()
    rubricator: RoleConfig = RoleConfig(provider="local", model="smollm2-135m-instruct", api_key_env=None,
                                        temperature=0.7, max_tokens=800, max_repairs=1)
    verifier: RoleConfig = RoleConfig(provider="local", model="smollm2-135m-instruct", api_key_env=None,
                                      temperature=0.0, max_tokens=600, max_repairs=1)
    engine: EngineConfig = EngineConfig(min_criteria=4, max_criteria=6, max_criterion_chars=80)
    shared_rubric: bool = Field(default=True, description="one rubric per group (paper); false = one per rollout")
    degenerate_rubrics: Literal["verify_raw", "mask"] = Field(
        default="verify_raw", description="a rubric QA leaves with too few criteria: verify with the raw rubric "
        "(flagged in qa.json) or mask its group")
    limits: LimitsConfig = LimitsConfig()
    grpo: GRPOConfig = GRPOConfig()
    quality_gate: QualityGate = QualityGate()
    qa: QAConfig = QAConfig()
    eval: EvalParams = EvalParams()
    sft: SFTSettings = SFTSettings()
    lopd: LOPDSettings = LOPDSettings()
    teacher_sft: TeacherSFTParams = TeacherSFTParams()
    budget: BudgetParams = BudgetParams()
    judge_check: JudgeCheckParams = JudgeCheckParams()
    launch: LaunchParams = LaunchParams()
    checkpoints: CheckpointParams = CheckpointParams()
    static_rubric: StaticRubricParams = StaticRubricParams()
    tracking: TrackingParams = TrackingParams()

    @field_validator("rounds", mode="before")
    @classmethod
    def _rounds_list(cls, value: object) -> object:
        if isinstance(value, int) and not isinstance(value, bool):
            raise ValueError(f"rounds must be a list, one DVC foreach item per round: write it with "
                             f"`ropd rounds {value}`")
        if isinstance(value, list) and any(isinstance(item, dict) and "policy" not in item for item in value):
            raise ValueError(f"rounds items need a `policy` (the policy each round samples from): rewrite the "
                             f"list with `ropd rounds {len(value)}`")
        return value

    @model_validator(mode="after")
    def _consecutive_rounds(self) -> Params:
        for i, item in enumerate(self.rounds):
            want = {"r": i, "next": i + 1, "policy": sampling_policy(i, self.overlap)}
            if item.model_dump() != want:
                shown = ", ".join(f"{k}: {v}" for k, v in want.items())
                raise ValueError(f"rounds[{i}] must be {{{shown}}} with overlap: {str(self.overlap).lower()}: "
                                 f"rounds run 0, 1, 2, … in order; `ropd rounds {len(self.rounds)}` writes the list")
        return self

    @model_validator(mode="after")
    def _overlap_is_corrected(self) -> Params:
        if not self.overlap:
            return self
        if self.method in ("sft", "lopd"):
            raise ValueError(f"overlap: true overlaps rollouts with judging; method {self.method} has neither: set "
                             "overlap: false")
        if self.grpo.tis_cap is None:
            raise ValueError("overlap: true samples each round from the policy before the one it updates: set "
                             "grpo.tis_cap (paper: 2) so the update weighs tokens by the importance ratio")
        return self

    @model_validator(mode="after")
    def _static_needs_file(self) -> Params:
        if self.method == "static_rubric" and self.static_rubric.file is None:
            raise ValueError("method static_rubric needs static_rubric.file: a rubric set imported with "
                             "`ropd import rubrics` or an earlier run's `ropd export` (docs/audit.md)")
        return self

    @model_validator(mode="after")
    def _budget_needs_prices(self) -> Params:
        if self.budget.max_usd is None:
            return self
        roles = {"teacher.role": self.teacher.role, "rubricator": self.rubricator, "verifier": self.verifier}
        if unpriced := [name for name, cfg in roles.items() if cfg.provider == "openai" and cfg.price is None]:
            raise ValueError(f"budget.max_usd is set but {', '.join(unpriced)} (provider openai) has no price; add "
                             "price: {input: USD/Mtok, output: USD/Mtok} to each, or set budget.max_usd to null")
        return self

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.run_id

    @property
    def teacher_sft_dir(self) -> Path:
        return Path(self.models_dir) / "teacher-sft"

    @property
    def needs_teacher_sft(self) -> bool:
        """LOPD without an explicit teacher, or a local teacher role reading the teacher_sft model."""
        role = self.teacher.role
        uses_dir = role.provider == "local" and role.model_path is not None and \
            Path(role.model_path).resolve() == self.teacher_sft_dir.resolve()
        return uses_dir or (self.method == "lopd" and self.lopd.teacher_path is None)

    @property
    def lopd_teacher(self) -> Path:
        return Path(self.lopd.teacher_path) if self.lopd.teacher_path else self.teacher_sft_dir

    def evaluates_after(self, r: int) -> bool:
        return (r + 1) % self.eval.every == 0 or r == self.rounds[-1].r


def _allowed_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """The field names allowed at `loc` (the parent of an unknown key)."""
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        ann = getattr(field, "annotation", None) if field else None
        for cand in (ann, *getattr(ann, "__args__", ())):
            if isinstance(cand, type) and issubclass(cand, BaseModel):
                model = cand
                break
        else:
            return []
    return sorted(model.model_fields)


def describe_errors(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        key = ".".join(str(p) for p in loc) or "<root>"
        if err["type"] == "extra_forbidden":
            allowed = _allowed_keys(Params, loc[:-1])
            lines.append(f"{source}: unknown key {key!r}; allowed here: {', '.join(allowed)}")
        else:
            got = f" (got {err['input']!r})" if "input" in err and not isinstance(err["input"], dict) else ""
            lines.append(f"{source}: {key}: {err['msg']}{got}")
    return "\n".join(lines)


def load_params(path: Path | str = "params.yaml") -> Params:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: not found") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(describe_errors(exc, str(path))) from exc
