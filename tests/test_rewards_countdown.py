"""The "countdown" reward: exact evaluation without eval, number use, inputs built to hang it."""

import pytest

from rewards import REGISTRY
from rewards.countdown import (ExpressionError, countdown_all_reward, countdown_reward,
                               parse_expression)

NUMBERS = [3, 5, 7, 2]


def score(answer: str, target: int, numbers=NUMBERS, **options) -> float:
    return countdown_reward(f"<think>trying</think> <answer>{answer}</answer>", numbers=numbers,
                            target=target, **options)


@pytest.mark.parametrize(
    ("answer", "target"),
    [
        ("(3 + 5) * 7 - 2", 54),
        ("3 + 5 + 7 + 2", 17),
        ("7 * 2", 14),                    # at most once: unused numbers are fine
        ("(7 - 3) * (5 - 2)", 12),
        ("7 * 2 / (5 - 3)", 7),           # exact division
        ("(3 + 7) / 5", 2),               # 10 / 5
        ("7 / 2 * (5 - 3)", 7),           # a non-integer intermediate (3.5) is exact
        ("(3 + 5) * 7 - 2 = 54", 54),     # the target restated
        ("((3))+((5))", 8),
        ("-3 + 5", 2),
        ("3 - 5", -2),
        (" 3\t+ 5 ", 8),
    ],
)
def test_valid_answers_score_one(answer, target):
    assert score(answer, target) == 1.0


@pytest.mark.parametrize(
    ("answer", "target"),
    [
        ("(3 + 5) * 7 - 2", 55),          # wrong target
        ("(3 + 5) * 7 - 2 = 55", 55),     # claims the target, evaluates to 54
        ("(3 + 5) * 7 - 2 = 54", 55),     # restates a value that is not the target
        ("3 + 3", 6),                     # 3 reused
        ("3 * 5 * 5", 75),                # 5 reused
        ("3 + 4", 7),                     # 4 not given
        ("35 + 7", 42),                   # digits glued into a number not given
        ("7 / 2", 3),                     # 3.5 is not 3: no integer division
        ("3 + 5 =", 8),
        ("3 + 5 = 8 = 8", 8),
        ("3 + 5 = -", 8),
        ("3 + 5 = --8", 8),
        ("3 + 5 = 8.0", 8),
        ("3 + 5 = \u0668", 8),          # Arabic-Indic eight
        ("3 +", 3),
        ("(3 + 5", 8),
        ("3 + 5)", 8),
        ("", 0),
        ("3.0 + 5", 8),
        ("3 + 5 + x", 8),
        ("3 ++ 5 - ", 8),
    ],
)
def test_invalid_answers_score_zero(answer, target):
    assert score(answer, target) == 0.0


def test_division_by_zero_scores_zero():
    assert score("7 / (5 - 5)", 7, numbers=[7, 5, 5]) == 0.0
    assert score("7 / (5 - 5)", 7, numbers=[7, 5, 5], format_score=0.1) == 0.1


def test_use_all_requires_every_number_exactly_once():
    assert score("(3 + 5) * 7", 56) == 1.0
    assert score("(3 + 5) * 7", 56, use_all=True) == 0.0
    assert score("(3 + 5) * 7 * 2 / 2", 56, use_all=True) == 0.0      # 2 used twice
    assert score("(3 + 5) * 7 - 2", 54, use_all=True) == 1.0
    completion = "<answer>(3 + 5) * 7</answer>"
    assert countdown_all_reward(completion, numbers=NUMBERS, target=56) == 0.0
    assert countdown_all_reward("<answer>(3 + 5) * 7 - 2</answer>", numbers=NUMBERS, target=54) == 1.0
    assert REGISTRY["countdown_all"] is countdown_all_reward


def test_duplicate_numbers_may_each_be_used_once():
    assert score("5 * 5", 25, numbers=[5, 5]) == 1.0
    assert score("5 * 5 * 5", 125, numbers=[5, 5]) == 0.0


def test_format_score_for_well_formed_but_wrong_answers():
    assert score("3 + 5", 9, format_score=0.1) == 0.1     # wrong value
    assert score("3 + 4", 7, format_score=0.1) == 0.1     # number not given
    assert score("3 + 5", 8, format_score=0.1) == 1.0
    assert score("three", 8, format_score=0.1) == 0.0     # not an expression at all
    assert countdown_reward("no answer", numbers=NUMBERS, target=8, format_score=0.1) == 0.0


def test_last_line_fallback_and_its_switch():
    completion = "Let me see.\nSo 3 + 5 = 8\nDone."
    assert countdown_reward(completion, numbers=NUMBERS, target=8) == 1.0
    assert countdown_reward(completion, numbers=NUMBERS, target=8, fallback_last_line=False) == 0.0
    # The answer tag wins over any equation in the reasoning.
    assert countdown_reward("3 + 5 = 8 <answer>3 + 7</answer>", numbers=NUMBERS, target=8) == 0.0


def test_whole_row_is_accepted_and_extra_fields_ignored():
    row = {"prompt": "Using the numbers ...", "numbers": NUMBERS, "target": 54, "split": "train"}
    assert REGISTRY["countdown"]("<answer>(3 + 5) * 7 - 2</answer>", **row) == 1.0


def test_numpy_like_integer_fields_are_accepted():
    class Int64:  # what a NumPy scalar looks like to operator.index
        def __init__(self, value):
            self.value = value

        def __index__(self):
            return self.value

    numbers = (Int64(3), Int64(5))
    assert countdown_reward("<answer>3 + 5</answer>", numbers=numbers, target=Int64(8)) == 1.0


@pytest.mark.parametrize(
    "row", [{"numbers": None, "target": 8}, {"numbers": [3, 5], "target": None},
            {"numbers": "3,5", "target": 8}, {"numbers": [3.0, 5], "target": 8},
            {"numbers": [3, 5], "target": "8"}, {"numbers": [True, 5], "target": 8}],
)
def test_bad_dataset_rows_raise(row):
    with pytest.raises(ValueError, match="countdown: row field"):
        countdown_reward("<answer>3 + 5</answer>", **row)


HOSTILE = [
    "9**9**9",
    "9 ** 9 ** 9",
    "2^100",
    "2 ^ 1000000",
    "3 +" + " " * 100_000 + "5",  # right value, but far over the length limit
    "+".join(["3"] * 50_000),
    "(" * 10_000 + "3" + ")" * 10_000,
    "-" * 10_000 + "3",
    "3" * 7 + " + 5",
    "9" * 100_000,
    "\uff13 + \uff15",            # full-width digits
    "\u0663 + \u0665",            # Arabic-Indic digits
    "\u00b3 + 5",                 # superscript three
    "3 \u00d7 5",                 # multiplication sign
    "__import__('os').system('echo hi')",
    "(lambda: 8)()",
    "3 + 5\x00",
    "3 + 5 = " + "8" * 5000,
]


@pytest.mark.timeout(10)  # a hang guard, not a speed check
@pytest.mark.parametrize("answer", HOSTILE, ids=lambda text: f"{text[:12]!r}x{len(text)}")
def test_hostile_answers_score_zero(answer):
    assert score(answer, 8) == 0.0
    assert score(answer, 8, format_score=0.1) in (0.0, 0.1)


@pytest.mark.timeout(10)
def test_huge_completion_without_tags_scores_zero():
    assert countdown_reward("=" * 10_000_000, numbers=NUMBERS, target=8) == 0.0
    assert countdown_reward("3+5" * 3_000_000 + "=8", numbers=NUMBERS, target=8) == 0.0


@pytest.mark.parametrize(
    "text", ["9**9", "2^3", "1000001", "(" * 60 + "1" + ")" * 60, "1 +" * 150 + "1", "3 . 5", "3,5"],
)
def test_parser_rejects_beyond_its_limits(text):
    with pytest.raises(ExpressionError):
        parse_expression(text)


def test_parser_builds_exact_trees():
    assert parse_expression("1 - 2 - 3") == ("-", ("-", ("num", 1), ("num", 2)), ("num", 3))
    assert parse_expression("2 + 3 * 4") == ("+", ("num", 2), ("*", ("num", 3), ("num", 4)))
    assert parse_expression("-(2)") == ("neg", ("num", 2))
