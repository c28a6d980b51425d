"""The SFT objective: token negative log-likelihood of the target tokens. Imports only torch.

Like the policy loss (learner/losses.py) it returns a (numerator, denominator) pair, so a
learner that streams micro-batches gets exactly the whole step's token mean: the sum of the
numerators over the sum of the denominators.
"""

from __future__ import annotations

import torch
from torch import Tensor

from learner.losses import LossOutput

# The per-token metrics of the SFT loss, summed over target tokens (token-weighted means).
SFT_SUM_METRICS = ("nll", "token_accuracy")
SFT_MAX_METRICS: dict[str, str] = {}


def sft_loss(logp: Tensor, mask: Tensor, *, correct: Tensor | None = None) -> LossOutput:
    """Token NLL of one (micro-)batch.

    logp: (B, T) the model's logprob of each target token (differentiable); mask: (B, T) 1 on
    the target tokens learned from (completion / assistant tokens, EOS included), 0 on prompt
    and padding — masked positions never influence the loss or a gradient, whatever they hold.
    correct: (B, T) bool, whether the model's most likely token is the target (a metric), or
    None. Returns numerator = sum of -logp over the targets, denominator = their count.
    """
    if logp.dim() != 2 or mask.shape != logp.shape:
        raise ValueError(f"logp and mask must both be (B, T), got {tuple(logp.shape)} and {tuple(mask.shape)}")
    if correct is not None and correct.shape != logp.shape:
        raise ValueError(f"correct must be (B, T) = {tuple(logp.shape)}, got {tuple(correct.shape)}")
    keep = mask.bool()
    acc = torch.promote_types(logp.dtype, torch.float32)
    nll = torch.where(keep, -logp.to(acc), 0.0)
    numerator = nll.sum()
    denominator = keep.sum().to(acc)
    with torch.no_grad():
        hits = torch.where(keep, correct, False).sum() if correct is not None else torch.zeros((), device=logp.device)
        count, total, right = torch.stack([denominator, numerator.detach(), hits.to(acc)]).tolist()
    return LossOutput(numerator, denominator.detach(), {"nll": total, "token_accuracy": right}, int(count))
