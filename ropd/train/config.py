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
    mini_batch_size: int | None = Field(default=None, ge=1, description="sequences per optimizer step; "
                                        "None = one step per round")
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
