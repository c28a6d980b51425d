"""GRPO-family policy losses and their terms: pure functions of tensors, imports only torch.

Shape letters: B sequences in a (micro-)batch, T token positions, V vocabulary size. A `mask`
is 1 (or True) on completion tokens and 0 on prompt/padding; masked-out positions never
influence a value, a gradient or a metric, even when they hold garbage such as -inf logprobs
(they are replaced with `torch.where`, never multiplied by 0, because 0 * inf is nan).

Losses are returned as a (numerator, denominator) pair so that a learner streaming
micro-batches gets exactly the whole-batch loss as sum(numerators) / sum(denominators).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

# The advantage estimators live in their own registry; `learner.losses.group_advantages` stays
# the name the drivers use.
from learner.advantages import group_advantages  # noqa: F401

KL_KINDS = ("k1", "k2", "k3")
LOSS_AGGS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")
# The per-token metrics of a loss, summed over tokens and merged as token-weighted means, in a
# fixed order so that learner ranks can all-reduce them as one tensor.
SUM_METRICS = ("clip_frac_low", "clip_frac_high", "dual_clip_frac", "ratio_mean", "kl", "entropy",
               "tis_weight_mean", "pg_loss", "rollout_logprob_gap")
# Metrics merged by max across micro-batches: name -> the per-token metric it is the max of.
MAX_METRICS = {"ratio_max": "ratio_mean", "rollout_logprob_gap_max": "rollout_logprob_gap"}


def kl_estimate(logp: Tensor, ref_logp: Tensor, kind: str) -> Tensor:
    """Per-token estimate of KL(pi || pi_ref) from tokens sampled from pi (Schulman's k1/k2/k3).

    logp, ref_logp: (...) log-probabilities of the sampled tokens under pi and pi_ref.
    Returns (...), the same shape.  k1 is unbiased but can be negative; k2 and k3 are >= 0;
    k3 is unbiased and low-variance (the GRPO paper's choice).
    """
    if kind not in KL_KINDS:
        raise ValueError(f"unknown KL kind {kind!r}; expected one of {KL_KINDS}")
    log_ratio = logp - ref_logp
    if kind == "k1":
        return log_ratio
    if kind == "k2":
        return 0.5 * log_ratio**2
    return torch.exp(-log_ratio) + log_ratio - 1.0


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of softmax(logits) over the last dim.

    logits: (..., V). Returns (...). -inf logits (banned tokens) contribute 0, with a finite
    gradient: log-probabilities are clamped to the dtype's lowest finite value so that
    p * log p is 0 * finite instead of 0 * -inf.
    """
    logp = torch.log_softmax(logits, dim=-1)
    finite_logp = logp.clamp(min=torch.finfo(logp.dtype).min)
    return -(logp.exp() * finite_logp).sum(dim=-1)


def tis_weights(old_logp: Tensor, behaviour_logp: Tensor, cap: float) -> Tensor:
    """Truncated importance-sampling weights min(pi_old / pi_behaviour, cap), detached.

    old_logp: (...) the learner's logprobs of the sampled tokens; behaviour_logp: (...) the
    rollout engine's logprobs of the same tokens (they differ through kernels, precision or
    staleness). Returns (...). cap == 0 disables TIS: all ones. cap < 0 is a ValueError.
    """
    if cap < 0:
        raise ValueError(f"tis cap must be >= 0 (0 disables TIS), got {cap}")
    if cap == 0:
        return torch.ones_like(old_logp).detach()
    return torch.exp(old_logp - behaviour_logp).clamp(max=cap).detach()


def aggregate(
    per_token: Tensor, mask: Tensor, mode: str, *, max_len: int | None = None,
    segments: Tensor | None = None, num_sequences: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Reduce a per-token loss to (numerator, denominator), both 0-dim.

    per_token: (B, T); mask: (B, T), nonzero = counted. Rows are sequences unless `segments`
    (B, T, long) says which sequence each position belongs to (packed rows; -1 = none); the
    sequence count B is then `num_sequences` (which may also override B for padded rows, e.g.
    0 for a placeholder micro-batch). The loss is numerator / denominator,
    and for a batch split into parts by sequence, sum(numerators) / sum(denominators) equals
    the whole batch's loss, so micro-batches can be streamed exactly.

    - "token_mean" (DAPO):              sum(masked) / number of masked tokens.
    - "seq_mean_token_mean" (GRPO):     sum_b [sum_t masked / max(len_b, 1)] / B.
      A sequence with no masked token still counts in B but adds 0 to the numerator.
    - "seq_mean_token_sum_norm" (Dr. GRPO): sum_b [sum_t masked / max_len] / B, with
      max_len a constant (e.g. max new tokens), required and > 0.

    Sums accumulate in at least float32. The denominator is a float tensor without grad;
    it depends only on the mask, so a learner can know it before the losses are computed.
    """
    if mode not in LOSS_AGGS:
        raise ValueError(f"unknown loss aggregation {mode!r}; expected one of {LOSS_AGGS}")
    if per_token.dim() != 2 or mask.shape != per_token.shape:
        raise ValueError(
            "per_token and mask must both be (B, T), got "
            f"{tuple(per_token.shape)} and {tuple(mask.shape)}"
        )
    if mode == "seq_mean_token_sum_norm" and (max_len is None or max_len <= 0):
        raise ValueError(f"loss aggregation {mode!r} needs max_len > 0, got {max_len}")
    acc = torch.promote_types(per_token.dtype, torch.float32)
    keep = mask.bool()
    masked = torch.where(keep, per_token.to(acc), 0.0)
    if mode == "token_mean":
        return masked.sum(), keep.sum().to(acc)
    if segments is not None and num_sequences is None:
        raise ValueError("packed rows (segments) need num_sequences")
    count = per_token.shape[0] if num_sequences is None else num_sequences
    num_seqs = torch.tensor(float(count), dtype=acc, device=per_token.device)
    if mode == "seq_mean_token_sum_norm":
        return masked.sum() / max_len, num_seqs
    if segments is None:
        lengths = keep.sum(dim=1).clamp(min=1).to(acc)
        return (masked.sum(dim=1) / lengths).sum(), num_seqs
    # Packed: each token weighs 1 / (its sequence's masked length).
    if segments.shape != per_token.shape:
        raise ValueError(f"segments must be (B, T) = {tuple(per_token.shape)}, got {tuple(segments.shape)}")
    index = torch.where(keep, segments, 0).flatten()
    lengths = torch.zeros(max(count, 1), dtype=acc, device=per_token.device)
    lengths.index_add_(0, index, keep.flatten().to(acc))
    per_token_length = lengths[index].reshape(keep.shape).clamp(min=1)
    return (masked / per_token_length).sum(), num_seqs


@dataclass
class LossOutput:
    """One (micro-)batch's policy loss, in a form that adds up exactly across micro-batches.

    numerator: 0-dim, differentiable. denominator: 0-dim float, no grad.
    metric_sums: per-token metrics summed over the masked tokens, except "ratio_max", a max.
    num_tokens: number of masked tokens.
    """

    numerator: Tensor
    denominator: Tensor
    metric_sums: dict[str, float] = field(default_factory=dict)
    num_tokens: int = 0

    @property
    def loss(self) -> Tensor:
        """numerator / denominator, the loss when this output covers the whole batch.

        A batch with no tokens (denominator 0, numerator 0) gives 0 rather than nan.
        """
        return self.numerator / self.denominator.clamp(min=1.0)



@dataclass
class MetricTotals:
    """What loss outputs add up to before the means are taken: sums per SUM_METRICS, maxima
    per MAX_METRICS, the token count and the loss numerator. Totals of several learner ranks
    combine by adding `sums`, `num_tokens` and `numerator` and taking the max of `maxima`."""

    sums: list[float]
    maxima: list[float]
    num_tokens: float
    numerator: float


def metric_totals(outputs: list[LossOutput], sum_metrics: tuple[str, ...] = SUM_METRICS,
                  max_metrics: dict[str, str] = MAX_METRICS) -> MetricTotals:
    """The totals of `outputs` (one rank's micro-batches of a step); the metric names are the
    objective's (GRPO's by default; learner/sft_loss.py has SFT's)."""
    return MetricTotals(
        sums=[sum(o.metric_sums.get(name, 0.0) for o in outputs) for name in sum_metrics],
        maxima=[max((o.metric_sums.get(name, 0.0) for o in outputs), default=0.0) for name in max_metrics],
        num_tokens=float(sum(o.num_tokens for o in outputs)),
        numerator=float(sum(float(o.numerator) for o in outputs)),
    )


def metric_means(totals: MetricTotals, sum_metrics: tuple[str, ...] = SUM_METRICS,
                 max_metrics: dict[str, str] = MAX_METRICS) -> dict[str, float]:
    """Token-weighted means of the summed metrics and the maxima; over no tokens, every mean
    is 0.0."""
    tokens = totals.num_tokens
    merged = {name: value / tokens if tokens else 0.0 for name, value in zip(sum_metrics, totals.sums)}
    merged.update(zip(max_metrics, totals.maxima))
    return merged


def merge_metrics(outputs: list[LossOutput]) -> dict[str, float]:
    """The metrics of several outputs as one: what a single learner rank reports."""
    return metric_means(metric_totals(outputs))


def _check_policy_args(
    logp: Tensor,
    others: dict[str, Tensor | None],
    advantages: Tensor,
    *,
    clip_low: float,
    clip_high: float,
    dual_clip: float,
    tis_cap: float,
    kl_coef: float,
    kl_kind: str,
    entropy_coef: float,
) -> None:
    if logp.dim() != 2:
        raise ValueError(f"logp must be (B, T), got shape {tuple(logp.shape)}")
    for name, tensor in others.items():
        if tensor is not None and tensor.shape != logp.shape:
            raise ValueError(
                f"{name} must have logp's shape {tuple(logp.shape)}, got {tuple(tensor.shape)}"
            )
    if advantages.shape not in (logp.shape[:1], logp.shape):
        raise ValueError(
            f"advantages must be (B,) or (B, T) with (B, T) = {tuple(logp.shape)}, "
            f"got {tuple(advantages.shape)}"
        )
    if not 0 <= clip_low < 1:
        raise ValueError(f"clip_low must be in [0, 1), got {clip_low}")
    if clip_high < 0:
        raise ValueError(f"clip_high must be >= 0, got {clip_high}")
    if dual_clip != 0 and not dual_clip > 1:
        raise ValueError(f"dual_clip must be > 1 (or 0 to disable), got {dual_clip}")
    if tis_cap < 0:
        raise ValueError(f"tis_cap must be >= 0 (0 disables TIS), got {tis_cap}")
    if kl_kind not in KL_KINDS:
        raise ValueError(f"unknown KL kind {kl_kind!r}; expected one of {KL_KINDS}")
    if kl_coef < 0 or entropy_coef < 0:
        raise ValueError(
            f"kl_coef and entropy_coef must be >= 0, got {kl_coef} and {entropy_coef}"
        )
    if kl_coef > 0 and others["ref_logp"] is None:
        raise ValueError("kl_coef > 0 needs ref_logp (the reference model's logprobs)")
    if entropy_coef > 0 and others["entropy"] is None:
        raise ValueError("entropy_coef > 0 needs entropy")


def _clipped_pg(ratio: Tensor, adv: Tensor, clip_low: float, clip_high: float, dual_clip: float):
    """PPO's pessimistic clipped surrogate, with optional dual clip. All (B, T).

    Returns (pg, dual_active): the per-token loss and where the dual bound was chosen.
    """
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    pg = torch.maximum(unclipped, clipped)
    if dual_clip <= 0:
        return pg, torch.zeros_like(pg, dtype=torch.bool)
    # For A < 0 the max above is unbounded as the ratio grows; dual clip caps it at -A * c.
    bound = -adv * dual_clip
    dual_active = (adv < 0) & (pg > bound)
    return torch.where(dual_active, bound, pg), dual_active


def policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    behaviour_logp: Tensor | None = None,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float = 0.0,
    tis_cap: float = 2.0,
    ref_logp: Tensor | None = None,
    kl_coef: float = 0.0,
    kl_kind: str = "k3",
    entropy: Tensor | None = None,
    entropy_coef: float = 0.0,
    loss_agg: str = "token_mean",
    max_len: int | None = None,
    segments: Tensor | None = None,
    num_sequences: int | None = None,
) -> LossOutput:
    """GRPO-family clipped policy-gradient loss of one (micro-)batch.

    logp: (B, T) current policy's logprobs of the sampled tokens (differentiable).
    old_logp: (B, T) the policy's logprobs when the batch was sampled (learner side).
    advantages: (B,) one per sequence, broadcast over tokens, or (B, T).
    mask: (B, T) 1 on completion tokens.
    behaviour_logp: (B, T) rollout engine's logprobs; TIS is on only when it is given and
      tis_cap > 0 (either alone is a no-op).
    ref_logp: (B, T) reference model's logprobs; required when kl_coef > 0, and when given
      the "kl" metric is reported even with kl_coef == 0.
    entropy: (B, T) per-token entropy (may carry grad); required when entropy_coef > 0.
    segments, num_sequences: which sequence each position belongs to, for packed rows
      (see `aggregate`).

    Per token: ratio = exp(logp - old_logp); pg = max(-A*ratio, -A*clip(ratio, 1-clip_low,
    1+clip_high)); with dual_clip c > 1 and A < 0, pg = min(pg, -A*c); pg *= TIS weight;
    loss = pg + kl_coef * KL_kind - entropy_coef * entropy; then `aggregate(loss_agg)`.
    old_logp, behaviour_logp, ref_logp and advantages are treated as constants.
    """
    others = {
        "old_logp": old_logp, "mask": mask, "behaviour_logp": behaviour_logp,
        "ref_logp": ref_logp, "entropy": entropy,
    }
    _check_policy_args(
        logp, others, advantages, clip_low=clip_low, clip_high=clip_high, dual_clip=dual_clip,
        tis_cap=tis_cap, kl_coef=kl_coef, kl_kind=kl_kind, entropy_coef=entropy_coef,
    )
    keep = mask.bool()

    def clean(x: Tensor) -> Tensor:  # garbage at masked positions -> 0 before any arithmetic
        return torch.where(keep, x, 0.0)

    logp = clean(logp)
    old_logp = clean(old_logp.detach())
    adv = advantages.detach()
    adv = clean(adv.unsqueeze(-1).expand_as(logp) if adv.dim() == 1 else adv)
    ratio = torch.exp(logp - old_logp)
    pg, dual_active = _clipped_pg(ratio, adv, clip_low, clip_high, dual_clip)
    tis = torch.ones_like(pg)
    if behaviour_logp is not None and tis_cap > 0:
        tis = tis_weights(old_logp, clean(behaviour_logp.detach()), tis_cap)
    pg = pg * tis

    per_token = pg
    kl = None
    if ref_logp is not None:
        # With kl_coef == 0 the KL is only a metric: keep it off the autograd graph.
        kl = kl_estimate(logp if kl_coef > 0 else logp.detach(), clean(ref_logp.detach()), kl_kind)
        if kl_coef > 0:
            per_token = per_token + kl_coef * kl
    entropy = clean(entropy) if entropy is not None else None
    if entropy_coef > 0:
        per_token = per_token - entropy_coef * entropy
    numerator, denominator = aggregate(per_token, keep, loss_agg, max_len=max_len, segments=segments,
                                       num_sequences=num_sequences)

    # |learner - engine| logprob of the sampled tokens: ~0 when the engine holds the learner's
    # weights (on-policy), growing with staleness or a broken weight sync.
    gap = (old_logp - clean(behaviour_logp.detach())).abs() if behaviour_logp is not None else None
    metric_sums, num_tokens = _metric_sums(
        keep, adv, ratio, pg, tis, kl, entropy, gap, clip_low=clip_low, clip_high=clip_high,
        dual_active=dual_active,
    )
    return LossOutput(numerator, denominator.detach(), metric_sums, num_tokens)


@torch.no_grad()
def _metric_sums(keep, adv, ratio, pg, tis, kl, entropy, gap, *, clip_low, clip_high, dual_active):
    """Sums over masked tokens of each per-token metric (the MAX_METRICS: maxima), and the
    token count.

    All tensor arguments are (B, T) and already zero at masked positions; kl, entropy and gap
    (|learner - rollout engine| logprob) may be None (reported as 0).
    """
    acc = torch.promote_types(pg.dtype, torch.float32)  # bf16 cannot count past 256 exactly
    zeros = torch.zeros_like(pg)
    per_token = {
        "clip_frac_low": (adv < 0) & (ratio < 1.0 - clip_low),
        "clip_frac_high": (adv > 0) & (ratio > 1.0 + clip_high),
        "dual_clip_frac": dual_active,
        "ratio_mean": ratio,
        "kl": kl if kl is not None else zeros,
        "entropy": entropy if entropy is not None else zeros,
        "tis_weight_mean": tis,
        "pg_loss": pg,
        "rollout_logprob_gap": gap if gap is not None else zeros,
    }
    sums = [torch.where(keep, value.to(acc), 0.0).sum() for value in per_token.values()]
    # Both are >= 0, so 0 at masked positions never wins a max, and no tokens gives 0.
    maxima = [torch.where(keep, per_token[source].to(acc), 0.0).amax() if keep.numel()
              else keep.new_zeros((), dtype=acc) for source in MAX_METRICS.values()]
    # One device-to-host transfer for all metrics rather than one per metric.
    values = torch.stack([keep.sum().to(acc), *maxima, *sums]).tolist()
    metric_sums = dict(zip(per_token, values[1 + len(maxima):]))
    metric_sums.update(zip(MAX_METRICS, values[1:1 + len(maxima)]))
    return metric_sums, int(values[0])
