"""Unit tests for learner.losses on tiny tensors whose expected values are worked out by hand.

Every expected value carries its hand computation in a comment. Tensors are float64 so that
hand values can be compared tightly.
"""

from __future__ import annotations

import math

import pytest
import torch

from learner.losses import (
    LossOutput,
    aggregate,
    entropy_from_logits,
    group_advantages,
    kl_estimate,
    merge_metrics,
    policy_loss,
    tis_weights,
)

F64 = torch.float64
EPS = 1e-6
LN2 = math.log(2.0)


def t(values, **kwargs) -> torch.Tensor:
    return torch.tensor(values, dtype=F64, **kwargs)


def close(actual, expected, atol=1e-12) -> None:
    torch.testing.assert_close(torch.as_tensor(actual, dtype=F64), t(expected), atol=atol, rtol=0)


def one_token(ratio: float, advantage: float, **kwargs):
    """policy_loss on a single token with old_logp = 0, so exp(logp) is the ratio.

    Returns (loss output, d numerator / d logp); with token_mean over one token the
    numerator is the per-token loss itself and the denominator is 1.
    """
    logp = t([[math.log(ratio)]], requires_grad=True)
    out = policy_loss(logp, t([[0.0]]), t([advantage]), t([[1.0]]), **kwargs)
    (grad,) = torch.autograd.grad(out.numerator, logp)
    return out, grad.item()


# ---------------------------------------------------------------- group_advantages


def test_grpo_advantages_use_population_std():
    adv = group_advantages(t([[1.0, 0.0, 0.0, 1.0]]))
    # mean 0.5; population std sqrt(mean((±0.5)^2)) = 0.5 (the unbiased std would be 0.577)
    # -> ±0.5 / (0.5 + eps)
    a = 0.5 / (0.5 + EPS)
    close(adv, [[a, -a, -a, a]])


def test_grpo_groups_are_normalised_independently():
    adv = group_advantages(t([[3.0, 1.0], [10.0, 10.0]]))
    # group 0: mean 2, population std 1 -> ±1 / (1 + eps); group 1: all equal -> 0
    a = 1.0 / (1.0 + EPS)
    close(adv, [[a, -a], [0.0, 0.0]])


@pytest.mark.parametrize("estimator", ["grpo", "dr_grpo", "rloo"])
@pytest.mark.parametrize("eps", [1e-6, 0.0])
def test_zero_variance_group_gives_exact_zeros(estimator, eps):
    # 0.1 * 3 / 3 is not exactly 0.1 in floating point, so r - mean would be ~1e-17, not 0,
    # and with eps = 0 the grpo quotient would be 0 / 0.
    rewards = torch.full((2, 3), 0.1, dtype=F64)
    adv = group_advantages(rewards, estimator=estimator, eps=eps)
    assert torch.equal(adv, torch.zeros(2, 3, dtype=F64))


@pytest.mark.parametrize("estimator", ["grpo", "dr_grpo"])
def test_group_of_one_gives_zero_not_nan(estimator):
    adv = group_advantages(t([[3.0], [-2.0]]), estimator=estimator)
    # one member: r - mean = 0, std of one element defined as 0 -> 0 (never 0/0 = nan)
    assert torch.equal(adv, torch.zeros(2, 1, dtype=F64))


def test_dr_grpo_only_subtracts_the_mean():
    adv = group_advantages(t([[1.0, 0.0, 0.0, 1.0], [1.0, 2.0, 6.0, 3.0]]), estimator="dr_grpo")
    # group 0: mean 0.5 -> ±0.5; group 1: mean 12 / 4 = 3 -> [-2, -1, 3, 0]
    close(adv, [[0.5, -0.5, -0.5, 0.5], [-2.0, -1.0, 3.0, 0.0]])


def test_rloo_subtracts_the_mean_of_the_others():
    adv = group_advantages(t([[1.0, 0.0, 0.0, 1.0], [1.0, 2.0, 3.0, 6.0]]), estimator="rloo")
    # group 0: 1 - mean(0, 0, 1) = 1 - 1/3 = 2/3;  0 - mean(1, 0, 1) = -2/3
    # group 1: 1 - (2+3+6)/3 = -8/3;  2 - (1+3+6)/3 = -4/3;  3 - (1+2+6)/3 = 0;
    #          6 - (1+2+3)/3 = 4
    close(adv, [[2 / 3, -2 / 3, -2 / 3, 2 / 3], [-8 / 3, -4 / 3, 0.0, 4.0]])


def test_integer_rewards_are_accepted():
    adv = group_advantages(torch.tensor([[1, 0]]), estimator="dr_grpo")
    # mean 0.5 -> [0.5, -0.5], as floats
    assert adv.is_floating_point()
    close(adv, [[0.5, -0.5]])


@pytest.mark.parametrize(
    "rewards, kwargs, match",
    [
        (torch.zeros(2, 3), {"estimator": "ppo"}, "ppo"),
        (torch.zeros(4), {}, "2-D"),
        (torch.zeros(2, 2, 2), {}, "2-D"),
        (torch.zeros(2, 0), {}, "at least one"),
        (torch.zeros(3, 1), {"estimator": "rloo"}, "rloo"),
        (torch.zeros(2, 3), {"eps": -1e-6}, "eps"),
    ],
)
def test_group_advantages_rejects_bad_arguments(rewards, kwargs, match):
    with pytest.raises(ValueError, match=match):
        group_advantages(rewards, **kwargs)


# ---------------------------------------------------------------- kl_estimate


def test_kl_estimates_by_hand():
    logp = t([math.log(0.5), math.log(0.25), math.log(0.3)])
    ref = t([math.log(0.25), math.log(0.5), math.log(0.3)])
    # log ratios: ln 2, -ln 2, 0
    close(kl_estimate(logp, ref, "k1"), [LN2, -LN2, 0.0])
    # k2 = (log ratio)^2 / 2
    close(kl_estimate(logp, ref, "k2"), [0.5 * LN2**2, 0.5 * LN2**2, 0.0])
    # k3 = exp(ref - logp) - (ref - logp) - 1:
    #   exp(-ln 2) + ln 2 - 1 = ln 2 - 0.5;  exp(ln 2) - ln 2 - 1 = 1 - ln 2;  1 - 0 - 1 = 0
    close(kl_estimate(logp, ref, "k3"), [LN2 - 0.5, 1 - LN2, 0.0])


def test_kl_estimate_keeps_shape():
    assert kl_estimate(torch.zeros(2, 5), torch.zeros(2, 5), "k3").shape == (2, 5)


def test_kl_estimate_rejects_unknown_kind():
    with pytest.raises(ValueError, match="k4"):
        kl_estimate(torch.zeros(1), torch.zeros(1), "k4")


# ---------------------------------------------------------------- entropy_from_logits


def test_entropy_of_uniform_and_of_a_known_distribution():
    half, quarter = math.log(0.5), math.log(0.25)
    logits = t([[0.0, 0.0, 0.0, 0.0], [7.0, 7.0, 7.0, 7.0], [half, quarter, quarter, -math.inf]])
    # uniform over 4 (any constant logits): ln 4
    # [1/2, 1/4, 1/4, 0]: 1/2 ln 2 + 2 * 1/4 ln 4 = 1.5 ln 2 (the banned token adds 0)
    close(entropy_from_logits(logits), [math.log(4), math.log(4), 1.5 * LN2])


def test_entropy_of_one_hot_is_zero_with_finite_gradient():
    logits = t([[0.0, -math.inf, -math.inf], [200.0, 0.0, 0.0]], requires_grad=True)
    ent = entropy_from_logits(logits)
    # one-hot: -1 * ln 1 = 0; logits [200, 0, 0]: 2 e^-200 (200 + ...) ~ 1e-85, i.e. 0
    close(ent, [0.0, 0.0])
    (grad,) = torch.autograd.grad(ent.sum(), logits)
    assert torch.isfinite(grad).all()


def test_entropy_shape_drops_the_last_dim():
    assert entropy_from_logits(torch.randn(2, 3, 5)).shape == (2, 3)


# ---------------------------------------------------------------- tis_weights


def test_tis_weights_are_capped_ratios_and_detached():
    old = t([math.log(0.5), math.log(0.25), math.log(0.9)], requires_grad=True)
    behaviour = t([math.log(0.25), math.log(0.5), math.log(0.1)])
    weights = tis_weights(old, behaviour, cap=3.0)
    # ratios 0.5/0.25 = 2, 0.25/0.5 = 0.5, 0.9/0.1 = 9 -> capped at 3 (no floor below)
    close(weights, [2.0, 0.5, 3.0])
    assert not weights.requires_grad
    # cap 1.5: [min(2, 1.5), 0.5, 1.5]
    close(tis_weights(old, behaviour, cap=1.5), [1.5, 0.5, 1.5])


def test_tis_cap_zero_disables():
    assert torch.equal(tis_weights(t([0.0, -3.0]), t([-5.0, 0.0]), cap=0.0), t([1.0, 1.0]))


def test_tis_rejects_negative_cap():
    with pytest.raises(ValueError, match="cap"):
        tis_weights(torch.zeros(1), torch.zeros(1), cap=-1.0)


# ---------------------------------------------------------------- aggregate

# 2 sequences x 3 positions; lengths 2 and 1; padded positions hold garbage.
PER_TOKEN = t([[1.0, 2.0, math.inf], [4.0, math.nan, -math.inf]])
MASK = t([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])


@pytest.mark.parametrize(
    "mode, max_len, numerator, denominator",
    [
        # DAPO: (1 + 2 + 4) / 3 tokens
        ("token_mean", None, 7.0, 3.0),
        # GRPO: seq 0 (1 + 2) / 2 = 1.5, seq 1 4 / 1 = 4 -> 5.5 / 2 sequences
        ("seq_mean_token_mean", None, 5.5, 2.0),
        # Dr. GRPO, max_len 4: (1 + 2) / 4 + 4 / 4 = 1.75 -> 1.75 / 2 sequences
        ("seq_mean_token_sum_norm", 4, 1.75, 2.0),
    ],
)
def test_aggregate_by_hand_ignoring_padding(mode, max_len, numerator, denominator):
    num, den = aggregate(PER_TOKEN, MASK, mode, max_len=max_len)
    assert num.dim() == 0 and den.dim() == 0
    close(num, numerator)
    close(den, denominator)
    assert den.is_floating_point() and not den.requires_grad


def test_aggregate_accepts_a_bool_mask():
    num, den = aggregate(PER_TOKEN, MASK.bool(), "token_mean")
    # as above: 7 / 3
    close(num, 7.0)
    close(den, 3.0)


def test_empty_sequence_counts_in_seq_mean_but_adds_nothing():
    per_token, mask = t([[1.0, 2.0], [3.0, 4.0]]), t([[1.0, 1.0], [0.0, 0.0]])
    num, den = aggregate(per_token, mask, "seq_mean_token_mean")
    # seq 0: (1 + 2) / 2 = 1.5; seq 1 has no tokens: 0 / max(0, 1) = 0; B = 2 -> loss 0.75
    close(num, 1.5)
    close(den, 2.0)


def test_aggregate_gradient_is_the_mask_for_token_sum():
    per_token = t([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], requires_grad=True)
    num, _ = aggregate(per_token, MASK, "seq_mean_token_mean")
    (grad,) = torch.autograd.grad(num, per_token)
    # d/dx of x00/2 + x01/2 + x10/1
    close(grad, [[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]])


def test_aggregate_counts_bf16_tokens_exactly():
    # bf16 holds integers exactly only up to 256: 257 would round to 256 without float32 sums.
    num, den = aggregate(torch.ones(1, 257, dtype=torch.bfloat16), torch.ones(1, 257), "token_mean")
    assert num.item() == 257.0 and den.item() == 257.0


@pytest.mark.parametrize("mode", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
def test_aggregate_split_equals_whole(mode):
    gen = torch.Generator().manual_seed(0)
    per_token = torch.randn(5, 7, generator=gen, dtype=F64)
    lengths = torch.tensor([7, 3, 0, 5, 1])
    mask = (torch.arange(7) < lengths[:, None]).to(F64)
    whole_num, whole_den = aggregate(per_token, mask, mode, max_len=7)
    for cuts in ([2], [1, 4], [1, 2, 3, 4]):
        parts = [aggregate(p, m, mode, max_len=7)
                 for p, m in zip(per_token.tensor_split(cuts), mask.tensor_split(cuts))]
        num = sum(n for n, _ in parts)
        den = sum(d for _, d in parts)
        close(num / den, (whole_num / whole_den).item())
    # The naive mean of the parts' losses is not the whole loss here, so the check has teeth.
    halves = [aggregate(p, m, mode, max_len=7)
              for p, m in zip(per_token.tensor_split([2]), mask.tensor_split([2]))]
    naive = sum(n / d for n, d in halves) / 2
    assert abs(naive - whole_num / whole_den) > 1e-3


@pytest.mark.parametrize(
    "per_token, mask, mode, max_len, match",
    [
        (torch.zeros(2, 3), torch.ones(2, 3), "sum", None, "sum"),
        (torch.zeros(2, 3), torch.ones(2, 3), "seq_mean_token_sum_norm", None, "max_len"),
        (torch.zeros(2, 3), torch.ones(2, 3), "seq_mean_token_sum_norm", 0, "max_len"),
        (torch.zeros(2, 3), torch.ones(2, 3), "seq_mean_token_sum_norm", -4, "max_len"),
        (torch.zeros(2, 3), torch.ones(2, 4), "token_mean", None, "mask"),
        (torch.zeros(6), torch.ones(6), "token_mean", None, r"\(B, T\)"),
    ],
)
def test_aggregate_rejects_bad_arguments(per_token, mask, mode, max_len, match):
    with pytest.raises(ValueError, match=match):
        aggregate(per_token, mask, mode, max_len=max_len)


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
    assert LossOutput.merge_metrics([first, second]) == merged
    assert merge_metrics([]) == {}
    assert merge_metrics([empty])["ratio_mean"] == 0.0


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
