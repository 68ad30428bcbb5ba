"""Student samplers: n on-policy rollouts per prompt, behind one interface."""

from ropd.rollout.base import Rollout, Sampler, SamplingParams, make_sampler

__all__ = ["Rollout", "Sampler", "SamplingParams", "make_sampler"]
