"""Reward lookup: built-in names and user rewards given as "package.module:function".

`resolve_rewards` runs at start-up on the recipe's `reward.weights`, so a typo in a name, a
module that does not import or a function with the wrong signature stops the run before any
GPU time is spent, with one line naming the reward.
"""

from __future__ import annotations

import importlib
import inspect
import math
import re
from collections.abc import Callable, Mapping

from rewards.arithmetic import arithmetic_reward
from rewards.code_reward import code_reward
from rewards.countdown import countdown_all_reward, countdown_reward
from rewards.format_reward import format_reward, format_strict_reward
from rewards.math_reward import math_reward, math_strict_reward

RewardFn = Callable[..., float]

REGISTRY: dict[str, RewardFn] = {
    "math": math_reward,
    "math_strict": math_strict_reward,
    "format": format_reward,
    "format_strict": format_strict_reward,
    "countdown": countdown_reward,
    "countdown_all": countdown_all_reward,
    "arithmetic": arithmetic_reward,
    "code": code_reward,
}

_POSITIONAL = (
    inspect.Parameter.POSITIONAL_ONLY,
    inspect.Parameter.POSITIONAL_OR_KEYWORD,
    inspect.Parameter.VAR_POSITIONAL,
)
_DOTTED = re.compile(r"([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*):([A-Za-z_]\w*)", re.ASCII)


class RewardSpecError(ValueError):
    """A reward name or "package.module:function" path that cannot be used; one line."""


def resolve_reward(name: str) -> RewardFn:
    """The reward function for a built-in name or a "package.module:function" path.

    A user function must take the completion as its first positional parameter and accept
    the row's fields as keywords (`**fields`; named keyword parameters such as `answer` may
    come before it). Every problem is a RewardSpecError.
    """
    if not isinstance(name, str):
        raise RewardSpecError(f"reward name must be a string, got {name!r:.80}")
    if name in REGISTRY:
        return REGISTRY[name]
    match = _DOTTED.fullmatch(name)
    if match is None:
        known = ", ".join(sorted(REGISTRY))
        raise RewardSpecError(
            f"reward {name!r:.100}: not a built-in reward ({known}) "
            "nor a 'package.module:function' path"
        )
    module_name, function_name = match.groups()
    try:
        module = importlib.import_module(module_name)
    except (Exception, SystemExit) as exc:  # any import-time failure of user code (sys.exit too)
        raise RewardSpecError(
            f"reward {name!r}: cannot import module {module_name!r}: "
            f"{type(exc).__name__}: {_one_line(exc)}"
        ) from exc
    if not hasattr(module, function_name):
        raise RewardSpecError(
            f"reward {name!r}: module {module_name!r} has no attribute {function_name!r}")
    function = getattr(module, function_name)
    if not callable(function):
        raise RewardSpecError(f"reward {name!r}: {function_name!r} is not callable")
    _check_signature(name, function)
    return function


def resolve_rewards(weights: Mapping[str, float]) -> dict[str, RewardFn]:
    """Resolve every reward named in `weights` (the recipe's reward.weights), failing on the first
    bad one; weights must be finite numbers."""
    if not weights:
        raise RewardSpecError("reward weights name no reward function")
    resolved = {}
    for name, weight in weights.items():
        number = isinstance(weight, (int, float)) and not isinstance(weight, bool)
        finite = number and math.isfinite(weight)
        if not finite:
            raise RewardSpecError(
                f"reward {name!r}: weight must be a finite number, got {weight!r:.80}")
        resolved[name] = resolve_reward(name)
    return resolved


def required_fields(function: RewardFn) -> list[str]:
    """The row fields `function(completion, **fields)` needs, read from its signature.

    A named parameter after the completion is a row field. It is needed when it has no default,
    or when a positional-or-keyword one defaults to None: that is how the built-ins take a field
    that must be there (`answer=None`), so that a row without it scores `failure_reward` with a
    reason rather than a TypeError. Keyword-only parameters with a default are options
    (`timeout_s`), never fields.
    """
    params = list(inspect.signature(function).parameters.values())[1:]
    return [
        p.name for p in params
        if (p.kind is p.POSITIONAL_OR_KEYWORD and (p.default is p.empty or p.default is None))
        or (p.kind is p.KEYWORD_ONLY and p.default is p.empty)
    ]


def _check_signature(name: str, function: RewardFn) -> None:
    """`function(completion, **row)` must be a valid call: a positional first parameter for the
    completion and a **fields catch-all, since every reward receives the whole row."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError) as exc:
        message = f"reward {name!r}: cannot read its signature ({_one_line(exc)})"
        raise RewardSpecError(message) from exc
    params = list(signature.parameters.values())
    if not params or params[0].kind not in _POSITIONAL:
        raise RewardSpecError(
            f"reward {name!r}: must take the completion as its first positional parameter "
            f"(signature {signature})"
        )
    if not any(p.kind is p.VAR_KEYWORD for p in params):
        raise RewardSpecError(
            f"reward {name!r}: must accept the row's fields as **fields (signature {signature})"
        )
    # Row fields arrive as keywords, so a second positional-only parameter could never be given.
    stuck = [p.name for p in params[1:] if p.kind is p.POSITIONAL_ONLY and p.default is p.empty]
    if stuck:
        raise RewardSpecError(
            f"reward {name!r}: positional-only parameter(s) {', '.join(stuck)} cannot be given "
            f"(signature {signature})"
        )


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:200]
