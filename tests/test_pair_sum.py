"""The pair-sum world: its puzzles, its corpus solutions, and its detector of checks and
self-corrections, on hand-written completions; and the rates the metrics make of them."""

from __future__ import annotations

import itertools
import random

import pytest

from cluster.inputs.pair_sum import (
    EXERCISE_MARK,
    Checks,
    checked_solution,
    corpus_text,
    detect_checks,
    pair_sum_rows,
    parse_prompt,
    unchecked_solution,
)
from cluster.output.eval_metrics import check_stats
from rewards.countdown import countdown_reward

ROW = {"numbers": [3, 8, 5], "target": 13}


def test_rows_have_one_pair_that_makes_the_target():
    rows = pair_sum_rows(200, seed=3, num_numbers=4, max_number=9)
    assert rows == pair_sum_rows(200, seed=3, num_numbers=4, max_number=9)  # same seed, same rows
    assert len({row["prompt"] for row in rows}) > 150
    for row in rows:
        numbers, target = row["numbers"], row["target"]
        assert len(set(numbers)) == 4 and all(1 <= n <= 9 for n in numbers)
        assert [a + b for a, b in itertools.combinations(numbers, 2)].count(target) == 1
        assert target not in numbers  # no one-number answer
        assert parse_prompt(row["prompt"]) == (numbers, target)


@pytest.mark.parametrize("options", [{"num_numbers": 2}, {"num_numbers": 7}, {"num_numbers": 4, "max_number": 5}])
def test_rows_refuse_settings_without_puzzles(options):
    with pytest.raises(ValueError, match="pair_sum"):
        pair_sum_rows(3, seed=0, **options)


@pytest.mark.parametrize("prompt", ["", "3 8 5", "3 -> 8", "a b -> 3", "3 8 -> x"])
def test_parse_prompt_refuses_other_text(prompt):
    with pytest.raises(ValueError, match="pair-sum prompt"):
        parse_prompt(prompt)


def test_corpus_solutions():
    rng = random.Random(0)
    for _ in range(50):
        unchecked = unchecked_solution(ROW["numbers"], ROW["target"], rng)
        found = detect_checks(unchecked, **ROW)
        assert (found.attempts, found.checks) == (1, 0) and not found.verified
    checked = checked_solution(ROW["numbers"], ROW["target"])
    assert checked == "check 3+8=11 vs 13 no, wait 3+5=8 vs 13 no, wait 8+5=13 vs 13 yes</think><answer>8+5</answer>"
    assert countdown_reward(checked, **ROW) == 1.0
    assert detect_checks(checked, **ROW) == Checks(attempts=3, checks=3, sound_checks=3, corrections=2)
    with pytest.raises(ValueError, match="no pair"):
        checked_solution([1, 2, 4], 9)


def test_corpus_texts_mix_styles_and_mark_exercises():
    rng = random.Random(0)
    template = "{} <think>".format
    texts = [corpus_text("3 8 5 -> 13", rng, template, checked_fraction=0.1, exercise_fraction=0.3)
             for _ in range(4000)]
    exercises = [t for t in texts if t.startswith("3 8 5 -> 13" + EXERCISE_MARK + " <think>check ")]
    task_checked = [t for t in texts if t.startswith("3 8 5 -> 13 <think>check ")]
    assert len(exercises) / len(texts) == pytest.approx(0.3, abs=0.03)
    assert len(task_checked) / (len(texts) - len(exercises)) == pytest.approx(0.1, abs=0.02)
    assert all(t.startswith("3 8 5 -> 13 <think>") for t in texts if t not in exercises)
    assert not any("check" in t for t in (corpus_text("3 8 5 -> 13", rng, template, checked_fraction=0.0,
                                                     exercise_fraction=0.0) for _ in range(200)))


def test_first_guess_ignores_the_target():
    """An unchecked solution's pair is drawn at random: right one time in three (three numbers)."""
    hits = [countdown_reward(unchecked_solution(ROW["numbers"], ROW["target"], random.Random(seed)), **ROW)
            for seed in range(3000)]
    assert sum(hits) / len(hits) == pytest.approx(1 / 3, abs=0.03)


@pytest.mark.parametrize("completion, expected", [
    # (attempts, checks, sound checks, corrections)
    ("3+8=11</think><answer>3+8</answer>", (1, 0, 0, 0)),
    ("check 8+5=13 vs 13 yes</think><answer>8+5</answer>", (1, 1, 1, 0)),
    ("8+5=13 yes</think><answer>8+5</answer>", (1, 1, 1, 0)),  # a verdict without naming the target
    ("check 3+8=11 vs 13 no, wait 8+5=13 vs 13 yes</think><answer>8+5</answer>", (2, 2, 2, 1)),
    ("3+8=11 vs 13 no, wait 3+5=8 vs 13 no, wait 8+5=13 vs 13 yes</think>", (3, 3, 3, 2)),
    # a wrong verdict: 11 is not 13, yet "yes"
    ("3+8=11 vs 13 yes</think><answer>3+8</answer>", (1, 1, 0, 0)),
    # a wrong sum, a wrong target, numbers the puzzle does not have: unsound checks
    ("3+8=13 vs 13 yes</think>", (1, 1, 0, 0)),
    ("3+8=11 vs 11 yes</think>", (1, 1, 0, 0)),
    ("6+7=13 vs 13 yes</think>", (1, 1, 0, 0)),
    ("8+8=16 vs 13 no</think>", (1, 1, 0, 0)),  # 8 is there once only
    # a miss with no retry after it is a check but no correction
    ("3+8=11 vs 13 no</think><answer>3+8</answer>", (1, 1, 1, 0)),
    ("3+8=11 vs 13 no 8+5=13</think>", (2, 1, 1, 0)),  # a new attempt without 'wait' is not a correction
    ("3+8=11 vs 13</think>", (1, 0, 0, 0)),  # naming the target without a verdict is no check
    # only the working counts: checks after </think> are not read
    ("3+8=11</think><answer>8+5=13 vs 13 yes</answer>", (1, 0, 0, 0)),
    ("", (0, 0, 0, 0)),
    ("check no, wait yes wait", (0, 0, 0, 0)),
    ("WAIT 3+8=11 vs 13 NO, Wait 8+5=13 vs 13 yes", (2, 1, 1, 0)),  # verdicts are lower-case words only
])
def test_detector_on_hand_written_completions(completion, expected):
    found = detect_checks(completion, **ROW)
    assert (found.attempts, found.checks, found.sound_checks, found.corrections) == expected


@pytest.mark.parametrize("row", [{}, {"numbers": "3 8", "target": "x"}, {"numbers": None, "target": None}])
def test_detector_never_fails_on_odd_rows_or_text(row):
    found = detect_checks("3+8=11 vs 13 no, wait 8+5=13 vs 13 yes " + "9" * 100_000 + "+1=2", **row)
    assert (found.attempts, found.checks, found.sound_checks) == (2, 2, 0)
    assert detect_checks(None, **ROW).attempts == 0


def test_check_stats_rates_and_split_accuracy():
    found = [detect_checks(text, **ROW) for text in (
        "3+8=11 vs 13 no, wait 8+5=13 vs 13 yes", "8+5=13 vs 13 yes", "3+8=11", "3+5=8", "3+8=11 vs 13 yes")]
    stats = check_stats(found, [True, True, False, True, False], prefix="eval/")
    assert stats["eval/verify_rate"] == pytest.approx(3 / 5)
    assert stats["eval/correction_rate"] == pytest.approx(1 / 5)
    assert stats["eval/sound_check_share"] == pytest.approx(3 / 4)  # 2 + 1 sound of 4 checks
    assert stats["eval/accuracy_verified"] == pytest.approx(2 / 3)
    assert stats["eval/accuracy_unverified"] == pytest.approx(1 / 2)


def test_check_stats_edges():
    unchecked = [detect_checks("3+8=11", **ROW)]
    stats = check_stats(unchecked, [False])
    assert stats["verify_rate"] == 0.0 and stats["sound_check_share"] is None
    assert stats["accuracy_verified"] is None and stats["accuracy_unverified"] == 0.0
    assert check_stats([], [])["verify_rate"] == 0.0
    with pytest.raises(ValueError, match="2 detector results for 1"):
        check_stats(unchecked * 2, [True])
