"""Combining and resolving rewards: shaping (overlong penalty, weighted sum) and the registry.

The single rewards (format, arithmetic, extraction, code) are in test_rewards.py.
"""

import inspect
import random

import pytest

import rewards
from rewards import (REGISTRY, RewardSpecError, overlong_penalty, resolve_reward, resolve_rewards,
                     weighted_sum)

# ---------------------------------------------------------------------------- shaping


@pytest.mark.parametrize(
    ("tokens", "expected"),
    [(0, 0.0), (80, 0.0), (81, -0.05), (90, -0.5), (95, -0.75), (100, -1.0), (101, -1.0),
     (10_000, -1.0)],
)
def test_overlong_penalty_by_hand(tokens, expected):
    assert overlong_penalty(tokens, max_tokens=100, buffer_tokens=20) == pytest.approx(expected)


def test_overlong_penalty_scale_and_no_buffer():
    assert overlong_penalty(90, max_tokens=100, buffer_tokens=20, penalty=0.5) == pytest.approx(-0.25)
    assert overlong_penalty(100, max_tokens=100, buffer_tokens=0) == 0.0
    assert overlong_penalty(101, max_tokens=100, buffer_tokens=0) == -1.0
    assert overlong_penalty(1, max_tokens=100, buffer_tokens=100) == pytest.approx(-0.01)
    for bad in ({"max_tokens": 0, "buffer_tokens": 0}, {"max_tokens": 10, "buffer_tokens": 11},
                {"max_tokens": 10, "buffer_tokens": -1},
                {"max_tokens": 10, "buffer_tokens": 1, "penalty": -1}):
        with pytest.raises(ValueError):
            overlong_penalty(5, **bad)


def test_weighted_sum_by_hand():
    assert weighted_sum({"math": 1.0, "format": 1.0}, {"math": 1.0, "format": 0.1}) == pytest.approx(1.1)
    assert weighted_sum({"math": 0.0, "format": 1.0, "extra": 9.0}, {"math": 2.0, "format": 0.5}) == 0.5
    assert weighted_sum({"a": 0.5}, {"a": -2.0}) == -1.0
    with pytest.raises(KeyError, match="format"):
        weighted_sum({"math": 1.0}, {"math": 1.0, "format": 0.1})
    with pytest.raises(ValueError, match="'math'"):
        weighted_sum({"math": float("nan")}, {"math": 1.0})


# ---------------------------------------------------------------------------- registry


def test_registry_holds_the_built_ins_with_the_reward_signature():
    assert {"math", "format", "format_strict", "countdown", "arithmetic", "code"} <= set(REGISTRY)
    for name, function in REGISTRY.items():
        assert resolve_reward(name) is function
        params = list(inspect.signature(function).parameters.values())
        assert params[0].name == "completion" and params[-1].kind is inspect.Parameter.VAR_KEYWORD
    assert rewards.REGISTRY is REGISTRY


def test_every_built_in_takes_a_whole_row_and_hostile_text():
    row = {"answer": "7", "numbers": [3, 4], "target": 7, "tests": "assert True", "prompt": "p",
           "id": 3}
    for name, function in REGISTRY.items():
        if name != "code":  # needs no sandbox run to show it accepts the row: no code block here
            assert function("\x00<answer>\ud800</answer>" * 3, **row) == 0.0
    assert REGISTRY["code"]("no code here", **row) == 0.0


FUZZ_PIECES = ["<think>", "</think>", "<answer>", "</answer>", "\\boxed{", "{", "}", "####", "\n",
               " ", "=", "-", "+", "*", "/", "**", "^", "(", ")", ",", ".", "%", "$", "1", "5", "10",
               "1,000", "\\frac", "x", "\u2212", "\u0663", "\x00", "[", "]", "!", "\\sqrt", "```"]


@pytest.mark.timeout(120, method="thread")  # hang guard
def test_random_text_never_raises_and_stays_in_range():
    # Seeded fuzz over the syntax the extractors and parsers care about (code needs the sandbox
    # and has its own tests). Any exception here would be a scorer failure in a real run.
    rng = random.Random(0)
    row = {"answer": "5", "numbers": [3, 5, 7, 2], "target": 8, "tests": "assert True"}
    for _ in range(500):
        text = "".join(rng.choice(FUZZ_PIECES) for _ in range(rng.randint(0, 40)))
        for name, function in REGISTRY.items():
            if name != "code":
                assert 0.0 <= function(text, **row) <= 1.0, (name, text)


@pytest.fixture
def user_package(tmp_path, monkeypatch):
    package = tmp_path / "my_rewards"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "scoring.py").write_text(
        "def length_bonus(completion, **fields):\n    return min(len(completion), 10) / 10\n"
        "def needs_answer(completion, answer, **fields):\n    return float(answer in completion)\n"
        "def no_fields(completion):\n    return 1.0\n"
        "def no_positional(*, completion, **fields):\n    return 1.0\n"
        "def stuck(completion, other, /, **fields):\n    return 1.0\n"
        "NOT_CALLABLE = 3\n"
    )
    (package / "broken.py").write_text("raise RuntimeError('boom\\nsecond line')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_rewards"


def test_user_reward_by_dotted_path(user_package):
    function = resolve_reward("my_rewards.scoring:length_bonus")
    assert function("abcde", answer="x") == 0.5
    assert resolve_reward("my_rewards.scoring:needs_answer")("it is 7", answer="7") == 1.0
    resolved = resolve_rewards({"math": 1.0, "my_rewards.scoring:length_bonus": 0.5})
    assert resolved == {"math": REGISTRY["math"], "my_rewards.scoring:length_bonus": function}


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("maths", "not a built-in reward"),
        ("my_rewards.scoring", "not a built-in reward"),
        ("my_rewards.scoring:", "not a built-in reward"),
        ("my rewards:f", "not a built-in reward"),
        ("no_such_package.mod:f", "cannot import module 'no_such_package.mod'"),
        ("my_rewards.broken:f",
         "cannot import module 'my_rewards.broken': RuntimeError: boom second line"),
        ("my_rewards.scoring:missing", "has no attribute 'missing'"),
        ("my_rewards.scoring:NOT_CALLABLE", "is not callable"),
        ("my_rewards.scoring:no_fields", "must accept the row's fields as \\*\\*fields"),
        ("my_rewards.scoring:no_positional", "first positional parameter"),
        ("my_rewards.scoring:stuck", "positional-only parameter\\(s\\) other"),
    ],
)
def test_registry_errors_are_one_line_and_name_the_reward(user_package, name, message):
    with pytest.raises(RewardSpecError, match=message) as caught:
        resolve_reward(name)
    text = str(caught.value)
    assert "\n" not in text and repr(name)[:20] in text
    assert isinstance(caught.value, ValueError)


def test_resolve_rewards_checks_every_entry_up_front(user_package):
    with pytest.raises(RewardSpecError, match="my_rewards.scoring:missing"):
        resolve_rewards({"math": 1.0, "my_rewards.scoring:missing": 1.0})
    with pytest.raises(RewardSpecError, match="no reward"):
        resolve_rewards({})
    for weight in ("1", float("nan"), float("inf"), None, True):
        with pytest.raises(RewardSpecError, match="'math': weight must be a finite number"):
            resolve_rewards({"math": weight})
    with pytest.raises(RewardSpecError, match="must be a string"):
        resolve_reward(None)
