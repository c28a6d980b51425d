"""Pure reward functions (completion text in, float out) and the code sandbox.

Imports nothing of the rest of the project: reward code runs in scorer worker processes and
must stay small and self-contained.

`REGISTRY` maps built-in names to functions `fn(completion: str, **fields) -> float`, the
fields being the dataset row's columns; `resolve_reward` also accepts a user reward given as
"package.module:function". The sandbox (`rewards.sandbox`) is imported only where code is
graded.
"""

from rewards.registry import REGISTRY, RewardSpecError, resolve_reward, resolve_rewards
from rewards.shaping import overlong_penalty, weighted_sum

__all__ = [
    "REGISTRY",
    "RewardSpecError",
    "overlong_penalty",
    "resolve_reward",
    "resolve_rewards",
    "weighted_sum",
]
