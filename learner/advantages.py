"""Group-relative advantage estimators, registered by name. Imports only torch.

Shape letters: N groups of G completions each. An estimator is a plain function
`fn(rewards, *, eps) -> advantages`, rewards (N, G) float, advantages (N, G), registered with
`@register_estimator("name")`; `group_advantages` checks its arguments and looks the estimator
up. The recipe's `algorithm.estimator` lists the same names, so an unknown one is refused when
the recipe loads (tests/test_objectives.py keeps the two lists equal).

Every estimator gives exactly 0 to a group whose rewards are all equal (including any group of
one): `centred` sets those to 0 rather than computing them, because `r - mean(r)` is not always
exactly 0 in floating point.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

Estimator = Callable[..., Tensor]
ESTIMATORS: dict[str, Estimator] = {}


def register_estimator(name: str) -> Callable[[Estimator], Estimator]:
    """Register `fn(rewards (N, G) float, *, eps) -> (N, G)` as the advantage estimator `name`."""

    def register(fn: Estimator) -> Estimator:
        if name in ESTIMATORS:
            raise ValueError(f"advantage estimator {name!r} is already registered")
        ESTIMATORS[name] = fn
        return fn

    return register


def centred(rewards: Tensor) -> tuple[Tensor, Tensor]:
    """rewards (N, G) float -> (r - mean_g (N, G), constant (N, 1) bool: the group's rewards are
    all equal), with exact zeros in the constant groups."""
    constant = (rewards == rewards[:, :1]).all(dim=1, keepdim=True)
    return torch.where(constant, 0.0, rewards - rewards.mean(dim=1, keepdim=True)), constant


@register_estimator("grpo")
def grpo_advantages(rewards: Tensor, *, eps: float) -> Tensor:
    """(r - mean_g) / (std_g + eps), std_g the *population* std (divisor G), so a group of one
    has std 0. rewards (N, G) -> (N, G)."""
    centre, constant = centred(rewards)
    # Constant groups divide 0 by 1, so eps = 0 cannot turn them into 0/0.
    scale = torch.where(constant, 1.0, rewards.std(dim=1, keepdim=True, correction=0) + eps)
    return centre / scale


@register_estimator("dr_grpo")
def dr_grpo_advantages(rewards: Tensor, *, eps: float) -> Tensor:
    """r - mean_g (Dr. GRPO: no std normalisation; eps unused). rewards (N, G) -> (N, G)."""
    return centred(rewards)[0]


@register_estimator("rloo")
def rloo_advantages(rewards: Tensor, *, eps: float) -> Tensor:
    """r_i - mean of the other G-1 members = G/(G-1) * (r_i - mean_g); needs G >= 2 (eps
    unused). rewards (N, G) -> (N, G)."""
    group_size = rewards.shape[1]
    if group_size < 2:
        raise ValueError("estimator 'rloo' needs group_size >= 2 (no other members to average)")
    return centred(rewards)[0] * (group_size / (group_size - 1))


def group_advantages(rewards: Tensor, *, estimator: str = "grpo", eps: float = 1e-6) -> Tensor:
    """Group-relative advantages, one per completion, by the registered `estimator`.

    rewards: (N, G) float; row i holds the rewards of the G completions of prompt i.
    Returns (N, G), in the floating dtype of `rewards` (integer/bool rewards become the
    default float dtype). Built in: "grpo", "dr_grpo", "rloo" (see their functions above).
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown advantage estimator {estimator!r}; expected one of {tuple(ESTIMATORS)}")
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be 2-D (num_groups, group_size), got shape {tuple(rewards.shape)}")
    if rewards.shape[1] < 1:
        raise ValueError("rewards must have at least one completion per group")
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    if not rewards.is_floating_point():
        rewards = rewards.to(torch.get_default_dtype())
    return ESTIMATORS[estimator](rewards, eps=eps)
