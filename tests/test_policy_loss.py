"""Unit tests for learner.losses.policy_loss and its metrics on tiny tensors whose expected values
are worked out by hand.

Every expected value carries its hand computation in a comment. Tensors are float64 so that
hand values can be compared tightly. The terms it is built from are in test_loss_terms.py.
"""

from __future__ import annotations

import math

import pytest
import torch

from learner.losses import (MAX_METRICS, SUM_METRICS, MetricTotals, merge_metrics, metric_means, metric_totals,
                            policy_loss)
from losses_helpers import F64, LN2, MASK, close, t


def one_token(ratio: float, advantage: float, **kwargs):
    """policy_loss on a single token with old_logp = 0, so exp(logp) is the ratio.

    Returns (loss output, d numerator / d logp); with token_mean over one token the
    numerator is the per-token loss itself and the denominator is 1.
    """
    logp = t([[math.log(ratio)]], requires_grad=True)
    out = policy_loss(logp, t([[0.0]]), t([advantage]), t([[1.0]]), **kwargs)
    (grad,) = torch.autograd.grad(out.numerator, logp)
    return out, grad.item()



# ---------------------------------------------------------------- policy_loss: clipping


@pytest.mark.parametrize(
    "ratio, advantage, loss, grad, frac_low, frac_high",
    [
        # inside the band: -A r = -2 * 1.1; d/dlogp (-A e^(logp - old)) = -A r = -2.2
        (1.1, 2.0, -2.2, -2.2, 0, 0),
        # above 1 + 0.2 with A > 0: max(-2 * 1.5, -2 * 1.2) = -2.4, constant -> zero gradient
        (1.5, 2.0, -2.4, 0.0, 0, 1),
        # below 1 - 0.2 with A < 0: max(1 * 0.5, 1 * 0.8) = 0.8, constant -> zero gradient
        (0.5, -1.0, 0.8, 0.0, 1, 0),
        # below the band with A > 0 the unclipped term is the max: max(-2 * 0.5, -2 * 0.8) = -1
        (0.5, 2.0, -1.0, -1.0, 0, 0),
        # above the band with A < 0 likewise: max(1.5, 1.2) = 1.5, gradient -A r = 1.5
        (1.5, -1.0, 1.5, 1.5, 0, 0),
    ],
)
def test_clipping_values_and_gradients(ratio, advantage, loss, grad, frac_low, frac_high):
    out, g = one_token(ratio, advantage)
    close(out.numerator, loss)
    close(out.denominator, 1.0)
    close(g, grad)
    assert out.metric_sums["clip_frac_low"] == frac_low
    assert out.metric_sums["clip_frac_high"] == frac_high


def test_clip_higher_is_asymmetric():
    # ratio 1.25, A = 1: symmetric 0.2 clips at 1.2 -> loss -1.2, zero gradient;
    # clip_high 0.28 leaves it inside the band -> loss -1.25, gradient -A r = -1.25
    sym, g_sym = one_token(1.25, 1.0, clip_low=0.2, clip_high=0.2)
    dapo, g_dapo = one_token(1.25, 1.0, clip_low=0.2, clip_high=0.28)
    close(sym.numerator, -1.2)
    close(g_sym, 0.0)
    close(dapo.numerator, -1.25)
    close(g_dapo, -1.25)
    # the low edge is unchanged: ratio 0.75, A = -1 -> max(0.75, 0.8) = 0.8, zero gradient
    low, g_low = one_token(0.75, -1.0, clip_low=0.2, clip_high=0.28)
    close(low.numerator, 0.8)
    close(g_low, 0.0)


def test_dual_clip_bounds_negative_advantage_losses():
    # A = -1, ratio 5: PPO gives max(5, 0.8) = 5; dual clip 3 caps it at -A * 3 = 3, zero grad
    plain, _ = one_token(5.0, -1.0)
    close(plain.numerator, 5.0)
    dual, g = one_token(5.0, -1.0, dual_clip=3.0)
    close(dual.numerator, 3.0)
    close(g, 0.0)
    assert dual.metric_sums["dual_clip_frac"] == 1
    # ratio 2 < 3: max(2, 0.8) = 2 is below the bound, gradient -A r = 2
    under, g_under = one_token(2.0, -1.0, dual_clip=3.0)
    close(under.numerator, 2.0)
    close(g_under, 2.0)
    assert under.metric_sums["dual_clip_frac"] == 0
    # A > 0 is untouched: max(-5, -1.2) = -1.2
    pos, _ = one_token(5.0, 1.0, dual_clip=3.0)
    close(pos.numerator, -1.2)
    assert pos.metric_sums["dual_clip_frac"] == 0


# ---------------------------------------------------------------- policy_loss: TIS, KL, entropy


def test_tis_scales_the_policy_gradient():
    logp = t([[math.log(0.5)]], requires_grad=True)
    old, behaviour, adv, mask = t([[math.log(0.5)]]), t([[math.log(0.25)]]), t([1.0]), t([[1.0]])
    # ratio 1, A = 1: pg = -1; TIS weight min(0.5 / 0.25, 1.5) = 1.5 -> -1.5, gradient -A r w
    out = policy_loss(logp, old, adv, mask, behaviour_logp=behaviour, tis_cap=1.5)
    (g,) = torch.autograd.grad(out.numerator, logp)
    close(out.numerator, -1.5)
    close(g.item(), -1.5)
    assert out.metric_sums["tis_weight_mean"] == pytest.approx(1.5)
    assert out.metric_sums["pg_loss"] == pytest.approx(-1.5)
    # |old - behaviour| = ln 2, reported as a sum and a max
    assert out.metric_sums["rollout_logprob_gap"] == pytest.approx(math.log(2))
    assert out.metric_sums["rollout_logprob_gap_max"] == pytest.approx(math.log(2))
    # cap 0 (off), or no behaviour logprobs: weight 1 -> -1
    for kwargs in ({"behaviour_logp": behaviour, "tis_cap": 0.0}, {"tis_cap": 1.5}):
        off = policy_loss(logp, old, adv, mask, **kwargs)
        close(off.numerator, -1.0)
        assert off.metric_sums["tis_weight_mean"] == 1.0


@pytest.mark.parametrize(
    "kind, kl, grad",
    [
        # logp ln 0.5, ref ln 0.25. k1 = ln 2, d/dlogp = 1
        ("k1", LN2, 1.0),
        # k2 = (ln 2)^2 / 2, d/dlogp = logp - ref = ln 2
        ("k2", 0.5 * LN2**2, LN2),
        # k3 = e^(ref - logp) + logp - ref - 1 = ln 2 - 0.5, d/dlogp = 1 - e^(ref - logp) = 0.5
        ("k3", LN2 - 0.5, 0.5),
    ],
)
def test_kl_term_is_added_with_its_coefficient(kind, kl, grad):
    logp = t([[math.log(0.5)]], requires_grad=True)
    # ratio 1 and A = 0, so the pg term is 0 and its gradient -A r is 0
    args = (logp, t([[math.log(0.5)]]), t([0.0]), t([[1.0]]))
    out = policy_loss(*args, ref_logp=t([[math.log(0.25)]]), kl_coef=0.1, kl_kind=kind)
    (g,) = torch.autograd.grad(out.numerator, logp)
    close(out.numerator, 0.1 * kl)
    close(g.item(), 0.1 * grad)
    assert out.metric_sums["kl"] == pytest.approx(kl)
    # kl_coef 0: not in the loss, still reported as a metric; without ref_logp reported as 0
    watch = policy_loss(*args, ref_logp=t([[math.log(0.25)]]), kl_kind=kind)
    close(watch.numerator, 0.0)
    assert watch.metric_sums["kl"] == pytest.approx(kl)
    assert policy_loss(*args).metric_sums["kl"] == 0.0


def test_entropy_bonus_is_subtracted():
    entropy = t([[0.7]], requires_grad=True)
    # ratio 1, A = 0 -> pg 0; loss = -0.01 * 0.7 = -0.007, d/d entropy = -0.01
    out = policy_loss(
        t([[0.0]]), t([[0.0]]), t([0.0]), t([[1.0]]), entropy=entropy, entropy_coef=0.01
    )
    (g,) = torch.autograd.grad(out.numerator, entropy)
    close(out.numerator, -0.007)
    close(g.item(), -0.01)
    assert out.metric_sums["entropy"] == pytest.approx(0.7)


def test_per_sequence_and_per_token_advantages_agree():
    logp = t([[-0.1, -0.2], [-0.3, -0.4]])
    old = t([[-0.2, -0.2], [-0.2, -0.2]])
    mask = t([[1.0, 1.0], [1.0, 1.0]])
    a = policy_loss(logp, old, t([1.0, -1.0]), mask)
    b = policy_loss(logp, old, t([[1.0, 1.0], [-1.0, -1.0]]), mask)
    # ratios e^0.1, 1, e^-0.1, e^-0.2 (all within [0.8, 1.2]):
    # pg = -e^0.1 - 1 + e^-0.1 + e^-0.2, token mean over 4
    expected = (-math.exp(0.1) - 1 + math.exp(-0.1) + math.exp(-0.2)) / 4
    close(a.loss, expected)
    close(b.loss, expected)


def test_only_logp_and_entropy_carry_gradient():
    # old_logp, advantages, behaviour_logp and ref_logp are constants of the loss even when
    # the caller hands in tensors that are still attached to a graph.
    logp = t([[-0.5, -1.0]], requires_grad=True)
    entropy = t([[0.3, 0.4]], requires_grad=True)
    values = ([[-0.6, -0.9]], [1.0], [[-0.7, -0.8]], [[-0.4, -1.1]])
    constants = [t(v, requires_grad=True) for v in values]
    old, adv, behaviour, ref = constants
    out = policy_loss(logp, old, adv, t([[1.0, 1.0]]), behaviour_logp=behaviour, tis_cap=2.0,
                      ref_logp=ref, kl_coef=0.1, entropy=entropy, entropy_coef=0.01)
    grads = torch.autograd.grad(out.numerator, [logp, entropy, *constants], allow_unused=True)
    assert grads[0] is not None and grads[1] is not None
    assert all(g is None for g in grads[2:])


# ---------------------------------------------------------------- policy_loss: masking


def padded_batch(garbage: float):
    """2 x 3 batch, lengths 2 and 1, every input holding `garbage` at padded positions."""
    g = garbage

    def fill(valid):
        return t([[valid[0], valid[1], g], [valid[2], g, g]])

    logp = fill([math.log(0.6), math.log(0.3), math.log(0.9)]).requires_grad_()
    entropy = fill([0.5, 1.0, 0.2]).requires_grad_()
    inputs = dict(
        logp=logp,
        old_logp=fill([math.log(0.5), math.log(0.5), math.log(0.2)]),
        advantages=fill([1.0, 1.0, -1.0]),
        mask=MASK,
        behaviour_logp=fill([math.log(0.4), math.log(0.6), math.log(0.25)]),
        ref_logp=fill([math.log(0.5), math.log(0.2), math.log(0.8)]),
        entropy=entropy,
    )
    return inputs, (logp, entropy)


@pytest.mark.parametrize("mode", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
def test_garbage_in_padding_changes_nothing(mode):
    options = dict(
        dual_clip=3.0, tis_cap=2.0, kl_coef=0.1, entropy_coef=0.01, loss_agg=mode, max_len=3
    )
    results = []
    for garbage in (0.0, -math.inf, math.inf, math.nan):
        inputs, leaves = padded_batch(garbage)
        out = policy_loss(**inputs, **options)
        grads = torch.autograd.grad(out.numerator, leaves)
        assert torch.isfinite(out.numerator)
        for grad in grads:
            assert torch.isfinite(grad).all()
            assert (grad[MASK == 0] == 0).all()
        results.append((out, grads))
    clean, clean_grads = results[0]
    for out, grads in results[1:]:
        assert out.numerator.item() == clean.numerator.item()
        assert out.metric_sums == clean.metric_sums
        for grad, clean_grad in zip(grads, clean_grads):
            assert torch.equal(grad, clean_grad)


@pytest.mark.parametrize("mode", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
def test_policy_loss_streams_exactly(mode):
    gen = torch.Generator().manual_seed(1)
    logp = (-torch.rand(4, 5, generator=gen, dtype=F64)).requires_grad_()
    old = logp.detach() + 0.3 * torch.randn(4, 5, generator=gen, dtype=F64)
    adv = torch.randn(4, generator=gen, dtype=F64)
    mask = (torch.arange(5) < torch.tensor([5, 1, 3, 2])[:, None]).to(F64)
    kwargs = dict(loss_agg=mode, max_len=5)
    whole = policy_loss(logp, old, adv, mask, **kwargs)
    (whole_grad,) = torch.autograd.grad(whole.loss, logp)
    parts = [
        policy_loss(logp[s], old[s], adv[s], mask[s], **kwargs)
        for s in (slice(0, 1), slice(1, 4))
    ]
    total = sum(p.numerator for p in parts) / sum(p.denominator for p in parts)
    (part_grad,) = torch.autograd.grad(total, logp)
    close(total, whole.loss.item())
    torch.testing.assert_close(part_grad, whole_grad, atol=1e-12, rtol=0)


# ---------------------------------------------------------------- metrics


def two_outputs():
    # Batch 1: A = [1, -1]; sequence 0 has ratios 1.5 and 1.0, sequence 1 has ratio 0.5.
    ratios = t([[1.5, 1.0], [0.5, 1.0]])
    mask = t([[1.0, 1.0], [1.0, 0.0]])
    first = policy_loss(ratios.log(), torch.zeros(2, 2, dtype=F64), t([1.0, -1.0]), mask)
    # Batch 2: one token, A = 1, ratio 2.
    second = policy_loss(t([[LN2]]), t([[0.0]]), t([1.0]), t([[1.0]]))
    return first, second


def test_metric_sums_by_hand():
    first, second = two_outputs()
    assert first.num_tokens == 3
    m = first.metric_sums
    # clip high: token (A=1, r=1.5 > 1.2); clip low: token (A=-1, r=0.5 < 0.8)
    assert (m["clip_frac_low"], m["clip_frac_high"], m["dual_clip_frac"]) == (1, 1, 0)
    # ratios 1.5 + 1.0 + 0.5 = 3, max 1.5 (the padded 1.0 is not counted either way)
    assert m["ratio_mean"] == pytest.approx(3.0)
    assert m["ratio_max"] == pytest.approx(1.5)
    # pg: max(-1.5, -1.2) = -1.2;  -1;  max(0.5, 0.8) = 0.8  -> sum -1.4
    assert m["pg_loss"] == pytest.approx(-1.4)
    close(first.numerator, -1.4)
    close(first.loss, -1.4 / 3)
    # TIS off: weight 1 per token; no ref_logp / entropy: 0
    assert (m["tis_weight_mean"], m["kl"], m["entropy"]) == (3.0, 0.0, 0.0)
    assert (m["rollout_logprob_gap"], m["rollout_logprob_gap_max"]) == (0.0, 0.0)  # no behaviour logprobs
    # second: one token, clipped high, pg max(-2, -1.2) = -1.2
    assert second.num_tokens == 1
    assert second.metric_sums["pg_loss"] == pytest.approx(-1.2)


def test_merge_metrics_is_token_weighted_and_ratio_max_is_a_max():
    first, second = two_outputs()
    empty = policy_loss(t([[0.0]]), t([[0.0]]), t([1.0]), t([[0.0]]))
    assert empty.num_tokens == 0 and empty.metric_sums["ratio_max"] == 0.0
    merged = merge_metrics([first, second, empty])
    # 4 tokens in all
    assert merged["clip_frac_high"] == pytest.approx(2 / 4)  # (1 + 1) / 4
    assert merged["clip_frac_low"] == pytest.approx(1 / 4)  # 1 / 4
    assert merged["ratio_mean"] == pytest.approx(5 / 4)  # (3 + 2) / 4
    assert merged["pg_loss"] == pytest.approx(-2.6 / 4)  # (-1.4 - 1.2) / 4
    assert merged["tis_weight_mean"] == pytest.approx(1.0)  # (3 + 1) / 4
    assert merged["ratio_max"] == pytest.approx(2.0)  # max(1.5, 2, 0), not a sum or a mean
    assert merge_metrics([first, second]) == merged
    assert set(merge_metrics([])) == set(SUM_METRICS) | set(MAX_METRICS)
    assert all(value == 0.0 for value in merge_metrics([]).values())
    assert merge_metrics([empty])["ratio_mean"] == 0.0


def test_rank_totals_combine_into_the_whole_steps_metrics():
    # What the learner does across ranks: add the totals (max for the maxima), then take means.
    first, second = two_outputs()
    a, b = metric_totals([first]), metric_totals([second])
    combined = MetricTotals(sums=[x + y for x, y in zip(a.sums, b.sums)],
                            maxima=[max(x, y) for x, y in zip(a.maxima, b.maxima)],
                            num_tokens=a.num_tokens + b.num_tokens, numerator=a.numerator + b.numerator)
    assert metric_means(combined) == pytest.approx(merge_metrics([first, second]))
    assert combined.num_tokens == 4 and combined.numerator == pytest.approx(a.numerator + b.numerator)


def test_loss_of_an_empty_batch_is_zero():
    empty = policy_loss(t([[0.0]]), t([[0.0]]), t([1.0]), t([[0.0]]))
    # 0 tokens: numerator 0, denominator 0 -> 0, not nan
    assert empty.loss.item() == 0.0


# ---------------------------------------------------------------- policy_loss: bad arguments


@pytest.mark.parametrize(
    "change, match",
    [
        ({"logp": torch.zeros(2)}, "logp"),
        ({"old_logp": torch.zeros(2, 4)}, "old_logp"),
        ({"mask": torch.ones(3, 3)}, "mask"),
        ({"advantages": torch.zeros(3)}, "advantages"),
        ({"behaviour_logp": torch.zeros(2, 2)}, "behaviour_logp"),
        ({"clip_low": -0.1}, "clip_low"),
        ({"clip_low": 1.0}, "clip_low"),
        ({"clip_high": -0.1}, "clip_high"),
        ({"dual_clip": 1.0}, "dual_clip"),
        ({"dual_clip": 0.5}, "dual_clip"),
        ({"dual_clip": -3.0}, "dual_clip"),
        ({"tis_cap": -1.0}, "tis_cap"),
        ({"kl_coef": 0.1}, "ref_logp"),
        ({"kl_coef": -0.1, "ref_logp": torch.zeros(2, 3)}, "kl_coef"),
        ({"kl_kind": "k4"}, "k4"),
        ({"entropy_coef": 0.01}, "entropy"),
        ({"entropy_coef": -0.01, "entropy": torch.zeros(2, 3)}, "entropy_coef"),
        ({"loss_agg": "mean"}, "mean"),
        ({"loss_agg": "seq_mean_token_sum_norm"}, "max_len"),
    ],
)
def test_policy_loss_rejects_bad_arguments(change, match):
    kwargs = dict(logp=torch.zeros(2, 3), old_logp=torch.zeros(2, 3), advantages=torch.zeros(2),
                  mask=torch.ones(2, 3))
    kwargs.update(change)
    with pytest.raises(ValueError, match=match):
        policy_loss(**kwargs)
