"""Unit tests for the terms of learner.losses (group_advantages and its registered estimators in
learner.advantages, kl_estimate, entropy_from_logits, tis_weights, aggregate) on tiny tensors
whose expected values are worked out by hand.

Every expected value carries its hand computation in a comment. Tensors are float64 so that
hand values can be compared tightly. policy_loss and its metrics are in test_policy_loss.py.
"""

from __future__ import annotations

import math

import pytest
import torch

from learner.advantages import ESTIMATORS, grpo_advantages, register_estimator, rloo_advantages
from learner.losses import (
    aggregate,
    entropy_from_logits,
    group_advantages,
    kl_estimate,
    tis_weights,
)
from losses_helpers import F64, LN2, MASK, close, t

EPS = 1e-6


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


def test_the_built_in_estimators_are_registered_by_their_recipe_names():
    assert list(ESTIMATORS) == ["grpo", "dr_grpo", "rloo"]
    with pytest.raises(ValueError, match=r"'ppo'; expected one of \('grpo', 'dr_grpo', 'rloo'\)"):
        group_advantages(t([[1.0, 0.0]]), estimator="ppo")


def test_registered_estimators_are_plain_functions_by_hand():
    rewards = t([[3.0, 1.0, 2.0]])
    # mean 2; population std sqrt((1 + 1 + 0) / 3) = sqrt(2/3); eps 0 -> (r - 2) / sqrt(2/3)
    close(grpo_advantages(rewards, eps=0.0), [[1 / math.sqrt(2 / 3), -1 / math.sqrt(2 / 3), 0.0]])
    # rloo: 3 - (1+2)/2 = 1.5; 1 - (3+2)/2 = -1.5; 2 - (3+1)/2 = 0
    close(rloo_advantages(rewards, eps=0.0), [[1.5, -1.5, 0.0]])
    with pytest.raises(ValueError, match="rloo"):
        rloo_advantages(t([[1.0]]), eps=0.0)


def test_group_advantages_looks_the_estimator_up_and_a_name_registers_once():
    @register_estimator("test_max_minus")
    def max_minus(rewards, *, eps):  # r - max_g, a stand-in that no built-in computes
        return rewards - rewards.amax(dim=1, keepdim=True)

    try:
        # integer rewards arrive as floats; [1, 4] - 4 = [-3, 0]
        close(group_advantages(torch.tensor([[1, 4]]), estimator="test_max_minus"), [[-3.0, 0.0]])
        with pytest.raises(ValueError, match="already registered"):
            register_estimator("grpo")(max_minus)
        assert ESTIMATORS["grpo"] is grpo_advantages
    finally:
        del ESTIMATORS["test_max_minus"]


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
# MASK (from losses_helpers): [[1, 1, 0], [1, 0, 0]]


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
