"""Reward shaping: DAPO's soft over-long penalty and the recipe's weighted sum of rewards.

Pure arithmetic on floats, so the scorer can report every component next to the total.
"""

from __future__ import annotations

import math
from collections.abc import Mapping


def overlong_penalty(
    num_tokens: int, *, max_tokens: int, buffer_tokens: int, penalty: float = 1.0
) -> float:
    """DAPO's soft over-long penalty for a completion of `num_tokens` tokens, in [-penalty, 0].

    0 up to `max_tokens - buffer_tokens`; then linear down to `-penalty` at `max_tokens`;
    `-penalty` beyond. With `buffer_tokens == 0` it is a hard step at `max_tokens`. Example
    (max 100, buffer 20, penalty 1): 80 tokens -> 0, 90 -> -0.5, 100 -> -1, 120 -> -1.
    """
    if max_tokens <= 0 or buffer_tokens < 0 or buffer_tokens > max_tokens or penalty < 0:
        raise ValueError(
            "overlong_penalty needs max_tokens > 0, 0 <= buffer_tokens <= max_tokens and "
            f"penalty >= 0 (got {max_tokens}, {buffer_tokens}, {penalty})"
        )
    free = max_tokens - buffer_tokens
    if num_tokens <= free:
        return 0.0
    if num_tokens >= max_tokens:
        return -float(penalty)
    return -float(penalty) * (num_tokens - free) / buffer_tokens


def weighted_sum(components: Mapping[str, float], weights: Mapping[str, float]) -> float:
    """Sum of `weights[name] * components[name]` over the weights' names.

    Every weighted component must be present and finite: a missing or NaN component is a
    scoring bug to surface, not a zero to train on. Components without a weight (extra
    diagnostics) are ignored.
    """
    missing = [name for name in weights if name not in components]
    if missing:
        raise KeyError(f"weighted_sum: no value for reward component(s) {', '.join(missing)}")
    total = 0.0
    for name, weight in weights.items():
        value = float(components[name])
        if not math.isfinite(value):
            raise ValueError(f"weighted_sum: reward component {name!r} is {value}")
        total += float(weight) * value
    return total
