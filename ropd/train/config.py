"""Training hyperparameters: GRPO (defaults are the paper's, design §1) and the TRL baselines."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class LoraSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    r: int = Field(default=8, ge=1)
    alpha: int = Field(default=16, ge=1)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj"]


class GRPOConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lr: float = Field(default=1e-6, gt=0)
    eps_low: float = Field(default=0.2, ge=0)
    eps_high: float = Field(default=0.28, ge=0)
    beta: float = Field(default=0.0, ge=0, description="KL weight to the frozen reference; 0 = no reference model")
    scale_adv_by_std: bool = Field(default=False, description="divide advantages by the group std")
    grad_clip: float = Field(default=1.0, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    micro_batch_size: int = Field(default=8, ge=1, description="sequences per forward/backward")
    mini_batch_prompts: int | None = Field(default=None, ge=1, description="prompts (whole groups) per optimizer "
                                           "step; None = one step per round. Later steps of a round are "
                                           "off-policy, so the ratio and clip act (paper: 32 prompts, 8 per step)")
    dual_clip: float | None = Field(default=None, gt=1, description="dual-clip c for negative advantages: the "
                                    "loss of a token is capped at -c·A; None = off (paper: 3)")
    tis_cap: float | None = Field(default=None, gt=0, description="truncated importance sampling: weigh each "
                                  "token by min(π_trainer/π_sampler, cap), detached; needs the sampler's log-probs; "
                                  "None = off (paper: 2)")
    lora: LoraSettings | None = None
    seed: int = 0


class SFTSettings(BaseModel):
    """SFTTrainer settings; also used by the `teacher_sft` stage that builds the white-box teacher."""

    model_config = ConfigDict(extra="forbid")

    lr: float = Field(default=1e-5, gt=0)
    epochs: float = Field(default=1.0, gt=0)
    batch_size: int = Field(default=8, ge=1)
    max_length: int = Field(default=384, ge=16, description="prompt + answer tokens; longer examples are cut")


class LOPDSettings(BaseModel):
    """DistillationTrainer settings: on-policy generation, generalized JSD against the teacher's logits."""

    model_config = ConfigDict(extra="forbid")

    lr: float = Field(default=1e-6, gt=0)
    beta: float = Field(default=1.0, ge=0, le=1, description="0 forward KL, 0.5 JSD, 1 reverse KL (GKD)")
    temperature: float = Field(default=1.0, gt=0)
    max_completion_length: int = Field(default=96, ge=1)
    batch_size: int = Field(default=4, ge=1)
    teacher_path: str | None = Field(default=None, description="white-box teacher (same tokenizer); "
                                     "default: the teacher_sft stage's model")
