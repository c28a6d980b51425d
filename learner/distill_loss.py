"""On-policy distillation: the student samples, a frozen teacher scores every sampled token.
Imports only torch.

Both forms learn from the per-token reverse KL, KL(student ‖ teacher), estimated on the tokens
the student sampled: at token t, r_t = log π_student(y_t) − log π_teacher(y_t), whose mean over
the student's own samples is the reverse KL (the "k1" estimate). Its gradient is the policy
gradient with advantage −r_t (the score-function term; the other one has zero mean), hence:

- `distill_token_advantages`: −kl_coef·r_t as a per-token advantage inside the GRPO policy loss
  (clipping, truncated importance sampling and streaming as in RL), optionally plus the task's
  group advantage times `reward_weight` (r_t from the engine's logprobs: slime's form);
- `reverse_kl_loss`: a pure distillation loss, ½·(log π − log π_teacher)² per token with the
  learner's live logprobs (the "k2" form, whose gradient is exactly r_t·∇log π), weighted by
  the truncated importance ratio between the learner and the engine that sampled.

Like the other objectives, the loss is a (numerator, denominator) pair that adds up exactly
over streamed micro-batches.
"""

from __future__ import annotations

import torch
from torch import Tensor

from learner.losses import LossOutput

# Per-token metrics of the distillation loss, summed over the target tokens.
DISTILL_SUM_METRICS = ("reverse_kl", "tis_weight")
DISTILL_MAX_METRICS: dict[str, str] = {}


def distill_token_advantages(student_logp: Tensor, teacher_logp: Tensor, group_advantage: float, *,
                             kl_coef: float, reward_weight: float) -> Tensor:
    """Per-token advantages of one completion: reward_weight·A − kl_coef·(log π_s − log π_t).

    student_logp, teacher_logp: (T,) the sampling engine's and the teacher's logprob of each
    sampled token; group_advantage: the completion's task advantage (from `group_advantages`).
    Returns (T,). A student that matches the teacher gets exactly the task term.
    """
    if student_logp.shape != teacher_logp.shape or student_logp.dim() != 1:
        raise ValueError(f"student and teacher logprobs must both be (T,), got {tuple(student_logp.shape)} "
                         f"and {tuple(teacher_logp.shape)}")
    return reward_weight * group_advantage - kl_coef * (student_logp - teacher_logp)


def reverse_kl_loss(logp: Tensor, teacher_logp: Tensor, behaviour_logp: Tensor, mask: Tensor, *,
                    tis_cap: float) -> LossOutput:
    """The pure distillation loss of one (micro-)batch.

    logp: (B, T) the learner's logprob of each sampled token (differentiable); teacher_logp and
    behaviour_logp: (B, T) the teacher's and the sampling engine's (constants); mask: (B, T) 1 on
    the completion tokens. Per token w·½·(logp − teacher_logp)², w = min(exp(logp − behaviour),
    tis_cap) detached (tis_cap 0: w = 1). Returns numerator = the sum over the masked tokens,
    denominator = their count: the token mean. Metrics: "reverse_kl" (sum of logp − teacher_logp,
    the k1 estimate) and "tis_weight".
    """
    shapes = {tuple(t.shape) for t in (logp, teacher_logp, behaviour_logp, mask)}
    if len(shapes) != 1 or logp.dim() != 2:
        raise ValueError(f"logp, teacher_logp, behaviour_logp and mask must all be (B, T), got {sorted(shapes)}")
    keep = mask.bool()
    acc = torch.promote_types(logp.dtype, torch.float32)

    def clean(x: Tensor) -> Tensor:  # garbage at masked positions -> 0 before any arithmetic (0 * nan is nan)
        return torch.where(keep, x.to(acc), 0.0)

    logp, teacher_logp, behaviour_logp = clean(logp), clean(teacher_logp.detach()), clean(behaviour_logp.detach())
    gap = logp - teacher_logp
    with torch.no_grad():
        weight = torch.exp(logp.detach() - behaviour_logp)
        weight = torch.clamp(weight, max=tis_cap) if tis_cap > 0 else torch.ones_like(weight)
    per_token = torch.where(keep, weight * 0.5 * gap.square(), 0.0)
    numerator = per_token.sum()
    denominator = keep.sum().to(acc)
    with torch.no_grad():
        count, kl, weights = torch.stack([denominator, torch.where(keep, gap, 0.0).sum(),
                                          torch.where(keep, weight, 0.0).sum()]).tolist()
    return LossOutput(numerator, denominator.detach(), {"reverse_kl": kl, "tis_weight": weights}, int(count))
