"""The GRPO update: clipped surrogate with separate ε_low/ε_high, token-mean loss, optional KL, masking.

It runs under `accelerate`: one CPU process by default, several (GPUs, or gloo on CPU) when the stage
is started under a launcher (`launch.command`, docs/scale.md). A round's rollouts are split into
mini-batches of whole prompt groups, one optimizer step each. The old log-probabilities are computed
for the whole round before the first step, so the later mini-batches are off-policy and the
importance ratio, the clip and (optionally) dual-clip act, as in the paper's
recipe. Optional truncated importance sampling (TIS) corrects for the sampler's log-probabilities
differing from the trainer's.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.utils.serialization
from accelerate import Accelerator
from pydantic import BaseModel, ConfigDict, model_validator
from safetensors import SafetensorError

from ropd.io import atomic_dir
from ropd.rollout.base import Rollout, check_logprobs, encode_prompt
from ropd.train.advantages import group_advantages
from ropd.train.config import GRPOConfig

log = logging.getLogger(__name__)

STATE_FILE = "trainer_state.json"
OPTIM_FILE = "optimizer.pt"


# What loading a damaged checkpoint raises: a missing or unreadable file, a bad config, torn weights.
LOAD_ERRORS: tuple[type[BaseException], ...] = (OSError, ValueError, RuntimeError, SafetensorError)


class CheckpointError(RuntimeError):
    """A checkpoint directory that is missing files or cannot be loaded."""


def build_samples(
    tokenizer: Any, prompts: dict[str, list[dict[str, str]]], rollouts: list[Rollout],
    rewards: dict[tuple[str, int], tuple[float | None, str]], *, scale_by_std: bool = False,
    chat_template_kwargs: Mapping[str, Any] | None = None,
) -> list[TrainSample]:
    """Rollouts + rewards (keyed by (prompt_id, sample_idx) → (reward, status)) → samples with advantages.

    `chat_template_kwargs` must be the ones the sampler used, so the trainer scores the same prompt tokens.
    """
    missing = [(r.prompt_id, r.sample_idx) for r in rollouts if (r.prompt_id, r.sample_idx) not in rewards]
    if missing:
        raise ValueError(f"no reward for {len(missing)} rollout(s), first: prompt {missing[0][0]} sample "
                         f"{missing[0][1]}")
    vals = [rewards[(r.prompt_id, r.sample_idx)] for r in rollouts]
    adv, mask = group_advantages([v[0] for v in vals], [r.prompt_id for r in rollouts],
                                 [v[1] == "ok" for v in vals], scale_by_std=scale_by_std)
    encoded = {pid: encode_prompt(tokenizer, msgs, chat_template_kwargs) for pid, msgs in prompts.items()}
    return [TrainSample(prompt_id=r.prompt_id, prompt_ids=encoded[r.prompt_id], completion_ids=r.token_ids,
                        advantage=a, mask=m, sampler_logprobs=r.logprobs)
            for r, a, m in zip(rollouts, adv, mask, strict=True)]


class TrainSample(BaseModel):
    """One rollout ready for the loss: prompt and completion token ids, advantage, and whether it counts.

    `prompt_id` names its group (mini-batches never split one); `sampler_logprobs`, one per completion
    token, are what truncated importance sampling compares the trainer's log-probs with.
    """

    model_config = ConfigDict(frozen=True)

    prompt_id: str
    prompt_ids: list[int]
    completion_ids: list[int]
    advantage: float
    mask: bool = True
    sampler_logprobs: list[float] | None = None

    @model_validator(mode="after")
    def _one_logprob_per_token(self) -> TrainSample:
        check_logprobs(self.sampler_logprobs, self.completion_ids, f"prompt {self.prompt_id}")
        return self


def prompt_mini_batches(samples: list[TrainSample], prompts_per_step: int | None) -> list[list[TrainSample]]:
    """Whole groups, `prompts_per_step` prompts per optimizer step (None: one step), in first-seen order.

    A group's advantages are relative to one another: a step that saw only part of a group would see
    its winners without its losers.
    """
    groups: dict[str, list[TrainSample]] = defaultdict(list)
    for s in samples:
        groups[s.prompt_id].append(s)
    chunks = list(groups.values())
    size = prompts_per_step or max(len(chunks), 1)
    return [[s for g in chunks[i : i + size] for s in g] for i in range(0, len(chunks), size)]


def _pad_batch(samples: list[TrainSample], pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Right-padded prompt+completion; `loss_mask` marks completion tokens of unmasked samples.

    `sampler_logp` (when every sample has sampler log-probs) sits at the same positions as
    `token_logprobs`' output: completion token k of a sample at position len(prompt) + k.
    """
    seqs = [s.prompt_ids + s.completion_ids for s in samples]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    loss_mask = torch.zeros((len(seqs), width), dtype=torch.float32)
    with_sampler = all(s.sampler_logprobs is not None for s in samples)
    sampler_logp = torch.zeros((len(seqs), width), dtype=torch.float32)
    for i, (s, seq) in enumerate(zip(samples, seqs, strict=True)):
        ids[i, : len(seq)] = torch.tensor(seq)
        attn[i, : len(seq)] = 1
        if s.mask:
            loss_mask[i, len(s.prompt_ids) : len(seq)] = 1.0
        if with_sampler:
            sampler_logp[i, len(s.prompt_ids) : len(seq)] = torch.tensor(s.sampler_logprobs)
    adv = torch.tensor([s.advantage for s in samples], dtype=torch.float32)
    batch = {"input_ids": ids, "attention_mask": attn, "loss_mask": loss_mask, "advantages": adv}
    if with_sampler:
        batch["sampler_logp"] = sampler_logp
    return {k: v.to(device) for k, v in batch.items()}


def token_logprobs(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """log π(token_t | tokens_<t) at every position (position 0 is 0 and never in the loss mask)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    targets = batch["input_ids"][:, 1:]
    # gather − logsumexp: the same values as log_softmax + gather without a second vocab-sized tensor.
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1).float()
    logp = picked - torch.logsumexp(logits.float(), dim=-1)
    return torch.nn.functional.pad(logp, (1, 0))


def surrogate_loss(
    logp: torch.Tensor, old_logp: torch.Tensor, batch: dict[str, torch.Tensor], cfg: GRPOConfig, n_tokens: float,
    ref_logp: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Σ over unmasked completion tokens of the clipped objective, divided by `n_tokens` (token mean).

    Per token, with r = π/π_old and advantage A: max(−r·A, −clip(r)·A). With `dual_clip` c and A < 0
    the loss is also capped at −c·A, so a token whose ratio ran far past the trust region on the wrong
    side cannot dominate the step (verl's dual-clip PPO). With `tis_cap` it is multiplied by
    min(π_old/π_sampler, cap), detached: truncated importance sampling between the sampler's and the
    trainer's log-probs (batch["sampler_logp"]). Dividing by the step's total token count (not per
    micro-batch) makes micro-batching and gradient accumulation give the same gradient as one big batch.
    Stats are sums over unmasked tokens (and `ratio_max`), for the caller to turn into fractions.
    """
    mask = batch["loss_mask"]
    live = mask > 0
    adv = batch["advantages"].unsqueeze(1)
    ratio = torch.exp(logp - old_logp)
    clipped = torch.clamp(ratio, 1 - cfg.eps_low, 1 + cfg.eps_high)
    per_token = torch.maximum(-ratio * adv, -clipped * adv)
    if cfg.dual_clip is not None:
        per_token = torch.where(adv < 0, torch.minimum(per_token, -cfg.dual_clip * adv), per_token)
    stats: dict[str, float] = {}
    if cfg.tis_cap is not None:
        # verl's token-level TIS: exp of the log-ratio clamped to ±20 for safety, then truncated at the cap.
        log_ratio = old_logp.detach() - batch["sampler_logp"]
        raw = torch.exp(torch.clamp(log_ratio, -20.0, 20.0))
        weight = raw.clamp(max=cfg.tis_cap)
        per_token = per_token * weight
        stats["tis_weight_sum"] = float((weight * mask).sum())
        stats["tis_truncated_sum"] = float((live & (raw > cfg.tis_cap)).sum())
        # How far the sampler's policy is from the trainer's: ~0 on-policy, larger for overlapped rounds.
        stats["tis_abs_log_ratio_sum"] = float((log_ratio.abs() * mask).sum())
    if ref_logp is not None and cfg.beta > 0:
        # k3 estimator of KL(π || π_ref): unbiased, non-negative.
        delta = ref_logp - logp
        kl = torch.exp(delta) - delta - 1
        per_token = per_token + cfg.beta * kl
        stats["kl_sum"] = float((kl.detach() * mask).sum())
    loss = (per_token * mask).sum() / max(n_tokens, 1.0)
    with torch.no_grad():
        r = ratio.detach()
        # Where each bound binds (its branch is taken and the gradient is zero), as verl counts them.
        stats["clip_low_sum"] = float((live & (adv < 0) & (r < 1 - cfg.eps_low)).sum())
        stats["clip_high_sum"] = float((live & (adv > 0) & (r > 1 + cfg.eps_high)).sum())
        dual = cfg.dual_clip is not None
        stats["clip_dual_sum"] = float((live & (adv < 0) & (r > cfg.dual_clip)).sum()) if dual else 0.0
        stats["ratio_sum"] = float((r * mask).sum())
        stats["ratio_max"] = float(r[live].max()) if bool(live.any()) else 0.0
    return loss, stats


class GRPOLearner:
    """Holds the policy, optimizer and (optionally) the frozen reference; one `train_round` per round."""

    def __init__(self, model: Any, tokenizer: Any, cfg: GRPOConfig, *, accelerator: Accelerator | None = None,
                 ref_model: Any | None = None, reference_path: str | None = None, step: int = 0) -> None:
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.accelerator = accelerator or Accelerator(cpu=not torch.cuda.is_available())
        if cfg.lora is not None and not is_peft(model):
            from peft import LoraConfig, get_peft_model

            model = get_peft_model(model, LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha,
                                                     lora_dropout=cfg.lora.dropout,
                                                     target_modules=cfg.lora.target_modules, task_type="CAUSAL_LM"))
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        self.ref_model = None
        if cfg.beta > 0:
            if ref_model is None:
                raise ValueError("beta > 0 needs a frozen reference model")
            self.ref_model = self.accelerator.prepare_model(ref_model.eval().requires_grad_(False),
                                                            evaluation_mode=True)
        self.reference_path = reference_path
        self.step = step
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    # -- the update ------------------------------------------------------------------------
    def _micro_batches(self, mini: list[TrainSample]) -> list[list[TrainSample]]:
        """This process's share of a mini-batch (every `world`-th sample), cut into micro-batches.

        Every process gets the same number of micro-batches, the short ones padded with a masked copy
        (zero loss, zero gradient): under DDP each backward is an all-reduce, and processes with
        different counts would pair one's micro-batch with another's next step, or hang.
        """
        world, rank, mb = self.accelerator.num_processes, self.accelerator.process_index, self.cfg.micro_batch_size
        shard = mini[rank::world]
        micros = [shard[i : i + mb] for i in range(0, len(shard), mb)]
        per_process = -(-len(mini) // world)
        filler = mini[0].model_copy(update={"mask": False})
        return micros + [[filler]] * (-(-per_process // mb) - len(micros))

    @torch.no_grad()
    def _logprobs(self, model: Any, micros: list[list[TrainSample]]) -> list[torch.Tensor]:
        model.eval()
        return [token_logprobs(model, _pad_batch(m, self.pad_id, self.accelerator.device)) for m in micros]

    def train_round(self, samples: list[TrainSample]) -> dict[str, float]:
        """One round: old log-probs first, then one optimizer step per mini-batch of `mini_batch_prompts` groups.

        Masked samples are dropped before the split, so they count towards neither a step's prompts
        nor its token mean. Fractions in the metrics are over the round's unmasked completion tokens.
        """
        live = [s for s in samples if s.mask]
        metrics = {"samples": float(len(samples)), "masked_samples": float(len(samples) - len(live)),
                   "steps": 0.0, "loss": 0.0, "grad_norm": 0.0, "tokens": 0.0, "clip_frac": 0.0,
                   "clip_low_frac": 0.0, "clip_high_frac": 0.0, "clip_dual_frac": 0.0, "ratio_mean": 0.0,
                   "ratio_max": 0.0, "tis_truncated_frac": 0.0}
        if self.cfg.tis_cap is not None:
            metrics.update(tis_weight_mean=0.0, tis_abs_log_ratio_mean=0.0)
        if not live:
            return metrics  # nothing to learn from: no step, optimizer state untouched
        bare = next((s for s in live if s.sampler_logprobs is None), None)
        if self.cfg.tis_cap is not None and bare is not None:
            raise ValueError(f"grpo.tis_cap is set, but a rollout of prompt {bare.prompt_id!r} has no sampler "
                             "log-probs: sample it again with a sampler that records them")
        world = self.accelerator.num_processes
        minis = [(mini, self._micro_batches(mini)) for mini in prompt_mini_batches(live, self.cfg.mini_batch_prompts)]
        # Old log-probs of every later mini-batch must come from the round's starting weights; the
        # first mini-batch's are the current ones, so its forward pass doubles as the old pass.
        olds = [None] + [self._logprobs(self.model, micros) for _, micros in minis[1:]]
        totals: dict[str, float] = defaultdict(float)
        for (mini, micros), old in zip(minis, olds, strict=True):
            n_tokens = float(sum(len(s.completion_ids) for s in mini))
            totals["shard_tokens"] += float(sum(len(s.completion_ids) for m in micros for s in m if s.mask))
            ref = self._logprobs(self.ref_model, micros) if self.ref_model is not None else None
            self.model.train()
            self.optimizer.zero_grad(set_to_none=True)
            loss_total = 0.0
            for j, micro in enumerate(micros):
                batch = _pad_batch(micro, self.pad_id, self.accelerator.device)
                logp = token_logprobs(self.model, batch)
                old_logp = old[j] if old is not None else logp.detach()
                # DDP averages gradients over processes; scale so the sum is the global token mean.
                loss, stats = surrogate_loss(logp, old_logp, batch, self.cfg, n_tokens / world,
                                             ref[j] if ref is not None else None)
                self.accelerator.backward(loss)
                loss_total += float(loss.detach())
                metrics["ratio_max"] = max(metrics["ratio_max"], stats.pop("ratio_max"))
                for key, value in stats.items():
                    totals[key] += value
            grad_norm = self.accelerator.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
            self.optimizer.step()
            self.step += 1
            metrics["steps"] += 1
            metrics["loss"] += self._across(loss_total) / world  # each process's loss is world × its share
            metrics["grad_norm"] += float(grad_norm)  # the mean over steps: a last step on one flat group has 0
            metrics["tokens"] += n_tokens
        metrics["loss"] /= max(metrics["steps"], 1)
        metrics["grad_norm"] /= max(metrics["steps"], 1)
        per_token = {"clip_low_frac": "clip_low_sum", "clip_high_frac": "clip_high_sum",
                     "clip_dual_frac": "clip_dual_sum", "ratio_mean": "ratio_sum",
                     "tis_truncated_frac": "tis_truncated_sum", "tis_weight_mean": "tis_weight_sum",
                     "tis_abs_log_ratio_mean": "tis_abs_log_ratio_sum"}
        totals = {key: self._across(value) for key, value in sorted(totals.items())}  # same order on every process
        for name, key in per_token.items():
            if name in metrics:
                metrics[name] = totals.get(key, 0.0) / max(totals["shard_tokens"], 1.0)  # over all processes
        metrics["clip_frac"] = metrics["clip_low_frac"] + metrics["clip_high_frac"]
        metrics["ratio_max"] = self._across(metrics["ratio_max"], "max")
        return metrics

    def _across(self, value: float, op: str = "sum") -> float:
        """A figure over all processes (itself when there is one), so every process reports the same metrics."""
        if self.accelerator.num_processes == 1:
            return value
        tensor = torch.tensor(value, dtype=torch.float64, device=self.accelerator.device)
        return float(self.accelerator.reduce(tensor, op))

    # -- checkpoints -----------------------------------------------------------------------
    def save(self, path: Path) -> Path:
        """Write model, tokenizer, optimizer and step to `path` atomically (temp dir + rename)."""
        path = Path(path)
        self.accelerator.wait_for_everyone()
        # On several processes every one takes part: FSDP and ZeRO-3 gather the full weights from the shards.
        weights = self.accelerator.get_state_dict(self.model) if self.accelerator.num_processes > 1 else None
        if not self.accelerator.is_main_process:
            return path
        with atomic_dir(path) as tmp:
            model = self.accelerator.unwrap_model(self.model)
            model.save_pretrained(tmp, state_dict=weights)
            self.tokenizer.save_pretrained(tmp)
            # torch.load never checks the zip's CRC32s, and computing them is most of the save (0.6 s a GB, 2x the
            # weights): the rename makes the file whole, and the manifest hashes the weights
            with torch.utils.serialization.config.patch({"save.compute_crc32": False}):
                torch.save(self.optimizer.state_dict(), tmp / OPTIM_FILE)
            state = {"step": self.step, "lora": is_peft(model), "config": self.cfg.model_dump()}
            if self.reference_path:
                state["reference"] = self.reference_path
            if is_peft(model):
                state["base_model"] = str(model.peft_config["default"].base_model_name_or_path)
            (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))
        return path

    @classmethod
    def load(cls, path: Path, cfg: GRPOConfig | None = None, *, device: str | None = None) -> GRPOLearner:
        """Resume from a checkpoint written by `save`, or start from a plain model directory."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = Path(path)
        if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
            raise CheckpointError(f"{path}: not a model checkpoint (no config.json or adapter_config.json)")
        state_path = path / STATE_FILE
        try:
            state = json.loads(state_path.read_text()) if state_path.is_file() else {"step": 0}
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{state_path}: unreadable trainer state ({exc})") from exc
        cfg = cfg or (GRPOConfig.model_validate(state["config"]) if "config" in state else GRPOConfig())
        dtype = torch.bfloat16 if (device or "").startswith("cuda") else torch.float32
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
            if state.get("lora"):
                from peft import PeftModel

                base = AutoModelForCausalLM.from_pretrained(state["base_model"], dtype=dtype)
                model = PeftModel.from_pretrained(base, path, is_trainable=True)
            else:
                model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        except LOAD_ERRORS as exc:
            raise CheckpointError(f"{path}: cannot load the model ({exc})") from exc
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        ref, ref_path = None, state.get("reference", str(path))
        if cfg.beta > 0:  # the reference is the model the run started from, not the latest checkpoint
            ref = AutoModelForCausalLM.from_pretrained(ref_path, dtype=dtype)
        learner = cls(model, tokenizer, cfg, ref_model=ref, reference_path=ref_path, step=int(state.get("step", 0)))
        optim_path = path / OPTIM_FILE
        if optim_path.is_file():
            try:
                learner.optimizer.load_state_dict(torch.load(optim_path, map_location="cpu", weights_only=True))
            except (RuntimeError, ValueError, KeyError) as exc:
                raise CheckpointError(f"{optim_path}: cannot restore the optimizer ({exc})") from exc
            for group in learner.optimizer.param_groups:  # torch restores the saved rate: a changed grpo.lr
                group.update(lr=cfg.lr, weight_decay=cfg.weight_decay)  # (a run extended at another rate) wins
        elif learner.step > 0:  # a trained checkpoint whose optimizer file was pruned to save disk
            log.warning("%s: no %s; this round starts a fresh AdamW state", path, OPTIM_FILE)
        return learner


def load_policy(path: Path, device: str = "cpu") -> tuple[Any, Any]:
    """A checkpoint (full or LoRA) as a plain model + tokenizer for sampling; LoRA weights are merged."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    state_path = path / STATE_FILE
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    try:
        if state.get("lora"):
            from peft import PeftModel

            base = AutoModelForCausalLM.from_pretrained(state["base_model"], dtype=dtype)
            model = PeftModel.from_pretrained(base, path).merge_and_unload()
        else:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except LOAD_ERRORS as exc:
        raise CheckpointError(f"{path}: cannot load the policy ({exc})") from exc
    return model.to(device).eval(), tokenizer


def is_peft(model: Any) -> bool:
    return hasattr(model, "peft_config")
