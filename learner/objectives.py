"""Learner objectives, registered by name: each is one loss function and the names of its metrics.

The driver chooses an objective by name (`LearnerSpec.objective`); a `Learner` looks it up once,
when it is built, with `objective_named`, so an unknown name fails there, naming the known ones.
An objective's loss is a plain function of one micro-batch's forward pass and the spec,

    loss(forward: Forward, spec: LearnerSpec) -> LossOutput

returning the (numerator, denominator) pair the learner streams (learner/losses.py), with its
per-token metrics summed in `metric_sums` under the names the objective registers: `sum_metrics`
become token-weighted means over the step, `max_metrics` (name -> the per-token metric it is
the max of) maxima. A new objective is one registered function here; its name must also be one
the driver chooses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from learner.batching import MicroBatch
from learner.distill_loss import DISTILL_MAX_METRICS, DISTILL_SUM_METRICS, reverse_kl_loss
from learner.losses import MAX_METRICS, SUM_METRICS, LossOutput, entropy_from_logits, policy_loss
from learner.sft_loss import SFT_MAX_METRICS, SFT_SUM_METRICS, sft_loss
from learner.spec import LearnerSpec


@dataclass(frozen=True)
class Forward:
    """One micro-batch's forward pass: what an objective's loss is a function of.

    logits: (B, L, V) the policy's, differentiable; logp: (B, L-1) the policy's logprob of each
    target token, differentiable; ref_logp: (B, L-1) the frozen reference model's, or None (only
    objectives registered with `uses_reference` get it, and only when a reference is built).
    """

    batch: MicroBatch
    logits: Tensor
    logp: Tensor
    ref_logp: Tensor | None = None


Loss = Callable[[Forward, LearnerSpec], LossOutput]


@dataclass(frozen=True)
class Objective:
    """A registered objective: its name, loss, metric names and whether it reads the reference."""

    name: str
    loss: Loss
    sum_metrics: tuple[str, ...]
    max_metrics: dict[str, str] = field(default_factory=dict)
    uses_reference: bool = False  # the learner builds and runs the reference model only for these


OBJECTIVES: dict[str, Objective] = {}


def register_objective(name: str, *, sum_metrics: tuple[str, ...], max_metrics: dict[str, str] | None = None,
                       uses_reference: bool = False) -> Callable[[Loss], Loss]:
    """Register the decorated `loss(forward, spec) -> LossOutput` as the objective `name`."""

    def register(loss: Loss) -> Loss:
        if name in OBJECTIVES:
            raise ValueError(f"learner objective {name!r} is already registered")
        OBJECTIVES[name] = Objective(name, loss, tuple(sum_metrics), dict(max_metrics or {}), uses_reference)
        return loss

    return register


def objective_named(name: str) -> Objective:
    """The registered objective `name`; a ValueError naming the known ones otherwise."""
    if name not in OBJECTIVES:
        raise ValueError(f"unknown learner objective {name!r}; known: {', '.join(sorted(OBJECTIVES))}")
    return OBJECTIVES[name]


@register_objective("grpo", sum_metrics=SUM_METRICS, max_metrics=MAX_METRICS, uses_reference=True)
def grpo_objective(forward: Forward, spec: LearnerSpec) -> LossOutput:
    """GRPO's clipped policy loss (`learner.losses.policy_loss`) with the spec's settings.

    Without `batch.old_logp` (the first PPO epoch) the ratio is taken against the live logprobs,
    detached: 1 in value, the policy gradient in gradient. The entropy is always a metric and
    carries gradient only when it is part of the loss (entropy_coef > 0).
    """
    batch, logp = forward.batch, forward.logp
    with torch.set_grad_enabled(spec.entropy_coef > 0 and torch.is_grad_enabled()):
        entropy = entropy_from_logits(forward.logits[:, :-1].float())
    old_logp = batch.old_logp if batch.old_logp is not None else logp.detach()
    return policy_loss(
        logp, old_logp, batch.advantages, batch.loss_mask,
        behaviour_logp=batch.behaviour_logp, clip_low=spec.clip_low, clip_high=spec.clip_high,
        dual_clip=spec.dual_clip, tis_cap=spec.tis_cap, ref_logp=forward.ref_logp,
        kl_coef=spec.kl_coef, kl_kind=spec.kl_kind, entropy=entropy, entropy_coef=spec.entropy_coef,
        loss_agg=spec.loss_agg, max_len=spec.max_new_tokens, segments=batch.segments,
        num_sequences=batch.num_sequences,
    )


@register_objective("sft", sum_metrics=SFT_SUM_METRICS, max_metrics=SFT_MAX_METRICS)
def sft_objective(forward: Forward, spec: LearnerSpec) -> LossOutput:
    """Token NLL of the masked targets (`learner.sft_loss.sft_loss`); token accuracy as a metric."""
    batch = forward.batch
    with torch.no_grad():
        correct = forward.logits[:, :-1].argmax(dim=-1) == batch.input_ids[:, 1:]
    return sft_loss(forward.logp, batch.loss_mask, correct=correct)


@register_objective("distill", sum_metrics=DISTILL_SUM_METRICS, max_metrics=DISTILL_MAX_METRICS)
def distill_objective(forward: Forward, spec: LearnerSpec) -> LossOutput:
    """The pure distillation loss against the teacher's logprobs (`learner.distill_loss.reverse_kl_loss`)."""
    batch, logp = forward.batch, forward.logp
    # A top-up micro-batch (nothing to learn) carries no teacher logprobs: its mask is all 0.
    teacher = batch.teacher_logp if batch.teacher_logp is not None else torch.zeros_like(logp)
    return reverse_kl_loss(logp, teacher, batch.behaviour_logp, batch.loss_mask, tis_cap=spec.tis_cap)
