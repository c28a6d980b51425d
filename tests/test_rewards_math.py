"""The "math" reward against real math-verify: equal and unequal answers, hostile text, threads."""

import threading

import pytest

from rewards import REGISTRY
from rewards.math_reward import math_reward, math_strict_reward, normalize_answer, too_costly

# (completion, reference answer): each must score 1.0.
EQUAL = [
    ("<think>2+2</think> <answer>4</answer>", "4"),
    ("<answer>\\frac{1}{2}</answer>", "0.5"),
    ("<answer>0.5</answer>", "\\frac{1}{2}"),
    ("<answer>\\frac12</answer>", "1/2"),
    ("<answer>$\\dfrac{3}{4}$</answer>", "0.75"),
    ("<answer>1/2</answer>", "\\frac{1}{2}"),
    ("The answer is \\boxed{\\frac{1}{2}}.", "0.5"),
    ("so \\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{\\sqrt3}{2}"),
    ("first \\boxed{7}, corrected: \\boxed{8}", "8"),
    ("\\fbox{12}", "12"),
    ("<answer>the result is \\boxed{-\\frac{1}{3}}</answer>", "-1/3"),
    ("Natalia sold 48 + 24 = 72 clips.\n#### 72", "72"),
    ("#### 1,000", "1000"),
    ("so she has 18 dollars left", "18"),
    ("therefore x = -7", "-7"),
    ("<answer>50\\%</answer>", "50"),
    ("<answer>50%</answer>", "50\\%"),
    ("<answer>1,000</answer>", "1000"),
    ("<answer>1000</answer>", "1,000"),
    ("<answer>$1{,}234{,}567$</answer>", "1234567"),
    ("<answer>1,234.5</answer>", "1234.5"),
    ("<answer>\\$5</answer>", "5"),
    ("<answer>$12.50</answer>", "12.5"),
    ("<answer>[1, 2)</answer>", "[1,2)"),
    ("<answer>(-\\infty, 3]</answer>", "(-\\infty,3]"),
    ("<answer>\\{2,1\\}</answer>", "\\{1,2\\}"),
    ("<answer>\\{1, 2, 3\\}</answer>", "\\{3,2,1\\}"),
    ("<answer>-2</answer>", "-2"),
    ("<answer>\u22122</answer>", "-2"),
    ("<answer>x = 3</answer>", "3"),
    ("<answer>2\\sqrt{2}</answer>", "\\sqrt{8}"),
    ("<answer>\\pi/2</answer>", "\\frac{\\pi}{2}"),
    ("<answer>2^{10}</answer>", "1024"),
    ("<answer>5!</answer>", "120"),
    ("<answer>\\(42\\)</answer>", "42"),
    ("<answer>42.</answer>", "42"),
    ("<answer>5.0</answer>", "5"),
    ("<answer>x^2 + 2x + 1</answer>", "(x+1)^2"),
    ("<answer>\\boxed{6}</answer>", "The total is \\boxed{6}."),
    ("<answer>18</answer>", "She has 16 - 3 - 4 = 9 eggs, 9 * 2 = 18.\n#### 18"),
]

# (completion, reference answer): each must score 0.0.
NOT_EQUAL = [
    ("<answer>1/2</answer>", "12"),
    ("<answer>12</answer>", "1/2"),
    ("<answer>0.5</answer>", "5"),
    ("<answer>5</answer>", "0.5"),
    ("<answer>100</answer>", "1000"),
    ("<answer>1,000</answer>", "100"),
    ("<answer>1,2</answer>", "12"),
    ("<answer>2</answer>", "-2"),
    ("<answer>-2</answer>", "2"),
    ("<answer>[1, 2]</answer>", "[1,2)"),
    ("<answer>(1, 2)</answer>", "[1,2)"),
    ("<answer>\\{1,2\\}</answer>", "\\{1,2,3\\}"),
    ("<answer>0.333</answer>", "\\frac{1}{3}"),
    ("<think>it is 42</think> <answer>41</answer>", "42"),
    ("<think>maybe \\boxed{42}</think> <answer>41</answer>", "42"),
    ("<answer></answer> 42", "42"),
    ("", "42"),
    ("I have no idea.", "42"),
    ("the answer is 42, or maybe 41", "42"),
    ("<answer>x</answer>", "3"),
    ("<answer>\\frac{1}{2}</answer>", "\\frac{1}{3}"),
    ("#### 71", "72"),
]


@pytest.mark.parametrize(("completion", "answer"), EQUAL)
def test_equal_answers_score_one(completion, answer):
    assert math_reward(completion, answer=answer) == 1.0


@pytest.mark.parametrize(("completion", "answer"), NOT_EQUAL)
def test_unequal_answers_score_zero(completion, answer):
    assert math_reward(completion, answer=answer) == 0.0


def test_case_counts_meet_the_issue():
    assert len(EQUAL) + len(NOT_EQUAL) >= 40 and len(NOT_EQUAL) >= 12


def test_registered_and_ignores_other_row_fields():
    assert REGISTRY["math"] is math_reward
    row = {"answer": "7", "prompt": "What is 3 + 4?", "numbers": [3, 4], "source": "x"}
    assert REGISTRY["math"]("<answer>7</answer>", **row) == 1.0


def test_last_number_fallback_is_configurable():
    completion = "3 + 4 makes 7"
    assert math_reward(completion, answer="7") == 1.0
    assert math_reward(completion, answer="7", fallback_last_number=False) == 0.0
    assert math_strict_reward(completion, answer="7") == 0.0
    assert math_strict_reward("<answer>7</answer>", answer="7") == 1.0
    assert REGISTRY["math_strict"] is math_strict_reward


def test_unclosed_answer_tag_is_not_an_answer_tag():
    # A cut-off "<answer>42" is no tag: only the last-number fallback can read it.
    assert math_reward("<answer>42", answer="42") == 1.0
    assert math_strict_reward("<answer>42", answer="42") == 0.0


def test_timeout_can_be_disabled_in_the_main_thread():
    assert math_reward("<answer>\\frac{2}{4}</answer>", answer="0.5", timeout_s=None) == 1.0


@pytest.mark.parametrize(
    ("raw", "normal"),
    [("1,000", "1000"), ("$1{,}000$", "1000"), ("\\$5", "5"), ("\\(x\\)", "x"), ("42.", "42"),
     ("1,2", "1,2"), ("0.5", "0.5"), ("1/2", "1/2"), ("-12,345.5", "-12345.5"), ("1,23", "1,23")],
)
def test_normalisation_never_joins_digits(raw, normal):
    assert normalize_answer(raw) == normal


@pytest.mark.parametrize(
    "answer",
    ["9^{9^{9^{9}}}", "10^{10^{10}}", "9**9**9", "2^3^4", "(10^{10})!", "100001!", "2^{100000}",
     "\\binom{10^{100}}{10^{50}}", "\\Gamma(10^{90})", "\\sum_{i=1}^{10000} i^{10000}",
     "1" * 101, "x" * 1001],
)
def test_cost_guard_rejects_explosive_answers(answer):
    assert too_costly(answer)


@pytest.mark.parametrize(
    "answer", ["2^{2023}", "1000!", "n!", "x^{2}+1", "\\binom{10}{3}", "10^{-3}", "e^{i\\pi}"])
def test_cost_guard_keeps_ordinary_answers(answer):
    assert not too_costly(answer)


HOSTILE = [
    "9" * 10_000_000,
    "<answer>" * 1_000_000 + "</answer>",
    "\\boxed{" + "{" * 100_000 + "1" + "}" * 100_000 + "}",
    "\\boxed{" * 100_000 + "1",
    "{" * 100_000 + "}" * 50_000,
    "<answer>" + "{" * 100_000 + "</answer>",
    "<answer>\x00\x01\x02\x1b[31m\ud800\uffff\u202e42\u0000</answer>",
    "<answer>9^{9^{9^{9}}}</answer>",
    "<answer>(10^{10})!</answer>",
    "<answer>(a+b+c+d+e+f)^{10}</answer>",
    "<answer>" + "1," * 400 + "1</answer>",
    "#### " + "(" * 5000,
    "1,234," * 2000 + "7",
]


# Hang guards, not speed checks. The thread method, because math-verify's own signal.alarm
# would cancel pytest-timeout's signal-based timer.
@pytest.mark.timeout(10, method="thread")
@pytest.mark.parametrize("completion", HOSTILE, ids=lambda text: f"{len(text)}chars")
def test_hostile_completions_score_zero_without_hanging(completion):
    assert math_reward(completion, answer="5") == 0.0


@pytest.mark.timeout(10, method="thread")
def test_ten_megabyte_completion_still_finds_its_answer():
    completion = "blah " * 2_000_000 + "<answer>5</answer>"
    assert math_reward(completion, answer="5") == 1.0


@pytest.mark.parametrize("bad", [None, 42, b"<answer>5</answer>", ["<answer>5</answer>"]])
def test_non_text_completion_scores_zero(bad):
    assert math_reward(bad, answer="5") == 0.0


@pytest.mark.parametrize("reference", [None, "", "   ", "\\boxed{}"])
def test_missing_or_empty_reference_scores_zero(reference):
    assert math_reward("<answer>5</answer>", answer=reference) == 0.0


@pytest.mark.timeout(60, method="thread")
def test_runs_in_a_non_main_thread_with_correct_results():
    # math-verify's signal.alarm raises off the main thread; the reward must switch it off there.
    cases = EQUAL[:12] + NOT_EQUAL[:12] + [("<answer>(a+b+c+d+e+f)^{10}</answer>", "5")]
    expected = [1.0] * 12 + [0.0] * 13
    results: list = []
    errors: list = []

    def work():
        try:
            results.extend(math_reward(c, answer=a) for c, a in cases)
        except BaseException as exc:  # surfaced below: the thread must not die silently
            errors.append(exc)

    worker = threading.Thread(target=work)
    worker.start()
    worker.join(50)
    assert not worker.is_alive() and errors == []
    assert results == expected


def test_threads_in_parallel_agree_with_main_thread():
    cases = EQUAL[:6] + NOT_EQUAL[:6]
    in_main = [math_reward(c, answer=a) for c, a in cases]
    outputs: dict[int, list] = {}

    def work(slot):
        outputs[slot] = [math_reward(c, answer=a) for c, a in cases]

    workers = [threading.Thread(target=work, args=(slot,)) for slot in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert [outputs.get(slot) for slot in range(4)] == [in_main] * 4

