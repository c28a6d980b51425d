"""Rewards besides math and countdown: format, arithmetic, extraction, code.

Shaping and the registry (built-in and user rewards) are in test_rewards_registry.py.
"""

import json

import pytest

from rewards import REGISTRY
from rewards.arithmetic import arithmetic_reward, parse_integer
from rewards.code_reward import code_reward, final_code_block, normalize_output, parse_tests
from rewards.extract import (BOXED_WINDOW_CHARS, answer_tag, boxed, extract_final_answer, gsm8k_final,
                             last_number)
from rewards.format_reward import format_reward, format_strict_reward

# ---------------------------------------------------------------------------- format

LENIENT_OK = [
    " 3 + 4 is 7 </think> <answer>7</answer>",          # starts inside the think block
    "<think>3 + 4 is 7</think><answer>7</answer>",
    "<think>\n3 + 4\n</think>\n<answer>\n7\n</answer>\n",
    "preamble <think>x</think> <answer>7</answer>",        # lenient: text before <think>
    "<think></think><answer></answer>",                    # lenient: anything inside
    "x</think>\n\n<answer>7</answer>   \n\t",
]
LENIENT_BAD = [
    "",
    "3 + 4 is 7",
    "<answer>7</answer>",                                  # no </think>
    "<think>x</think>",                                    # no answer
    "<think>x</think> <answer>7",                          # answer not closed
    "<think>x</think> <answer>7</answer> extra",           # text after the answer
    "<think>x</think> so <answer>7</answer>",              # text between the blocks
    "<think>x</think> <answer>7</answer><answer>8</answer>",
    "<think>x</think> y </think> <answer>7</answer>",
    "<think><think>x</think> <answer>7</answer>",
    "x</think> <think> <answer>7</answer>",                # <think> after </think>
    "<answer>7</answer> <think>x</think>",                 # wrong order
    "<think>x <answer>7</answer></think>",                 # answer inside think
    "<think>x</think> </answer>7<answer>",
    "<THINK>x</THINK> <ANSWER>7</ANSWER>",
]
STRICT_OK = [
    "<think>\n3 + 4 is 7\n</think>\n<answer>\n7\n</answer>",
    "<think>\n3 + 4 is 7\n</think>\n<answer>\n7\n</answer>\n",
    "\n3 + 4 is 7\n</think>\n<answer>\n7\n</answer>",      # starts inside the think block
    "<think>\nline one\nline two\n</think>\n<answer>\nx = 7\n</answer>",
]
STRICT_BAD = [
    " 3 + 4 is 7 </think> <answer>7</answer>",
    "<think>3 + 4 is 7</think><answer>7</answer>",
    " <think>\nx\n</think>\n<answer>\n7\n</answer>",       # text (a space) before <think>
    "<think>\nx\n</think><answer>\n7\n</answer>",
    "<think>\nx\n</think>\n\n<answer>\n7\n</answer>",
    "<think>\nx\n</think>\n<answer>7\n</answer>",
    "<think>\nx\n</think>\n<answer>\n7</answer>",
    "<think>\n\n</think>\n<answer>\n7\n</answer>",         # blank reasoning
    "<think>\nx\n</think>\n<answer>\n \n</answer>",        # blank answer
    "<think>\nx\n</think>\n<answer>\n7\n</answer>\nmore",
    "<think>\nx\n</think>\n<answer>\n7\n</answer>\n<answer>\n7\n</answer>",
    "",
]


@pytest.mark.parametrize("completion", LENIENT_OK)
def test_format_lenient_accepts(completion):
    assert format_reward(completion) == 1.0


@pytest.mark.parametrize("completion", LENIENT_BAD)
def test_format_lenient_rejects(completion):
    assert format_reward(completion) == 0.0


@pytest.mark.parametrize("completion", STRICT_OK)
def test_format_strict_accepts(completion):
    assert format_strict_reward(completion) == 1.0
    assert format_reward(completion) == 1.0  # strict implies lenient


@pytest.mark.parametrize("completion", STRICT_BAD)
def test_format_strict_rejects(completion):
    assert format_strict_reward(completion) == 0.0


@pytest.mark.timeout(10)  # hang guard
def test_format_on_huge_and_odd_input():
    huge = "<think>" * 2_000_000 + "</think><answer>1</answer>"
    assert format_reward(huge) == 0.0 and format_strict_reward(huge) == 0.0
    long_ok = "x" * 10_000_000 + "</think><answer>1</answer>"
    assert format_reward(long_ok) == 1.0
    assert format_reward(None) == 0.0 and format_strict_reward(b"</think><answer>1</answer>") == 0.0
    assert REGISTRY["format"]("a</think><answer>1</answer>", answer="1", numbers=[1]) == 1.0


# ---------------------------------------------------------------------------- arithmetic


@pytest.mark.parametrize(
    ("completion", "answer", "expected"),
    [
        ("<think>482 + 37</think> <answer>519</answer>", "519", 1.0),
        ("<answer>-519</answer>", "-519", 1.0),
        ("<answer>- 519</answer>", "-519", 1.0),
        ("<answer>\u2212519</answer>", "-519", 1.0),
        ("<answer>519</answer>", "-519", 0.0),
        ("<answer>1,519</answer>", "1519", 1.0),
        ("<answer>1 519</answer>", "1519", 1.0),
        ("<answer>519.0</answer>", "519", 1.0),             # an exact integer value counts
        ("<answer>519.</answer>", "519", 1.0),
        ("<answer>519.5</answer>", "519", 0.0),
        ("<answer>519.01</answer>", "519", 0.0),
        ("<answer>5 19</answer>", "519", 0.0),              # never joins digits
        ("<answer>51,9</answer>", "519", 0.0),
        ("<answer>5e2</answer>", "500", 0.0),
        ("<answer>0x1F</answer>", "31", 0.0),
        ("<answer>\uff15\uff11\uff19</answer>", "519", 0.0),  # full-width digits
        ("<answer>482 + 37 = 519</answer>", "519", 1.0),    # last number of the tag's text
        ("<answer>nineteen</answer>", "19", 0.0),
        ("<answer></answer>", "19", 0.0),
        ("<think>it is 519</think> <answer>518</answer>", "519", 0.0),
        ("so the sum is 519", "519", 1.0),                   # last-number fallback
        ("\\boxed{519}", "519", 1.0),
        ("", "519", 0.0),
        ("<answer>" + "9" * 5000 + "</answer>", "9", 0.0),    # int() of it would raise
        ("<answer>" + "9" * 100 + "</answer>", "9" * 100, 1.0),  # MAX_DIGITS still reads
        ("<answer>12</answer>", 12, 1.0),
    ],
)
def test_arithmetic(completion, answer, expected):
    assert arithmetic_reward(completion, answer=answer, prompt="What is ...?") == expected


def test_arithmetic_fallback_switch_and_bad_rows():
    assert arithmetic_reward("the sum is 519", answer="519", fallback_last_number=False) == 0.0
    assert arithmetic_reward(None, answer="519") == 0.0
    for bad in (None, "abc", "5.5", True, 5.0):
        with pytest.raises(ValueError, match="arithmetic: row field 'answer'"):
            arithmetic_reward("<answer>5</answer>", answer=bad)


@pytest.mark.parametrize(
    ("text", "value"),
    [("42", 42), ("+42", 42), ("-42", -42), (" 1,234,567 ", 1234567), ("1,2345", None),
     ("12,34", None), ("007", 7), ("42.000", 42), ("", None), ("-", None), ("4 2", None)],
)
def test_parse_integer(text, value):
    assert parse_integer(text) == value


# ---------------------------------------------------------------------------- extraction


def test_answer_tag_takes_the_last_complete_block():
    assert answer_tag("<answer>1</answer> then <answer> 2 </answer>") == "2"
    assert answer_tag("<answer>1</answer> then <answer>2") == "1"
    assert answer_tag("no tags") is None and answer_tag("</answer>") is None
    assert answer_tag("<answer></answer>") == ""


def test_boxed_matches_nested_braces():
    assert boxed("\\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert boxed("\\boxed{a} and later \\boxed{ {b}c }") == "{b}c"
    assert boxed("\\fbox{7}") == "7" and boxed("\\boxed {7}") == "7"
    assert boxed("\\boxed{1} and a cut-off \\boxed{2") == "1"
    assert boxed("} stray \\boxed{3} {") == "3"
    assert boxed("\\boxed{\\boxed{4}}") == "4"
    assert boxed("\\boxed{") is None and boxed("no box {1}") is None
    deep = "\\boxed{" + "{" * 40_000 + "x" + "}" * 40_000 + "}"
    assert boxed(deep) == "{" * 40_000 + "x" + "}" * 40_000
    # Only the tail is scanned: a box further back than BOXED_WINDOW_CHARS is not seen.
    assert boxed("\\boxed{5}" + " " * BOXED_WINDOW_CHARS) is None
    assert boxed("\\boxed{5}" + " " * (BOXED_WINDOW_CHARS - 20)) == "5"


def test_gsm8k_final():
    assert gsm8k_final("work\n#### 1,234\n") == "1,234"
    assert gsm8k_final("#### 1\n#### 2") == "2"
    assert gsm8k_final("####   \n") is None and gsm8k_final("42") is None


@pytest.mark.parametrize(
    ("text", "number"),
    [("I have 3 apples and 4 pears", "4"), ("x = -7.", "-7"), ("5-3", "3"), ("(-2)", "-2"),
     ("total: 1,234 kg", "1,234"), ("1,2,3", "3"), ("3/4 cup", "3/4"), ("2.5 hours", "2.5"),
     ("\u22125", "-5"), ("no digits", None), ("", None), ("version 1.2.3", "3")],
)
def test_last_number(text, number):
    assert last_number(text) == number


def test_last_number_does_not_return_half_of_a_cut_number():
    assert last_number("1" * 20_000) is None
    assert last_number("1" * 20_000 + " and 7") == "7"


def test_extract_final_answer_order():
    assert extract_final_answer("\\boxed{1} <answer>2</answer>") == "2"
    assert extract_final_answer("<answer>so \\boxed{3}</answer>") == "3"
    assert extract_final_answer("\\boxed{1} #### 2") == "1"
    assert extract_final_answer("#### 2\nand then 5") == "2"
    assert extract_final_answer("it is 5") == "5"
    assert extract_final_answer("it is 5", fallback_last_number=False) is None
    assert extract_final_answer("<answer> </answer> 5") is None   # a present tag is authoritative
    assert extract_final_answer(None) is None


# ---------------------------------------------------------------------------- code


def test_final_code_block_prefers_the_last_python_block():
    text = "```python\nprint(1)\n```\n```\nplain\n```\n```py\nprint(2)\n```\n```bash\nls\n```"
    assert final_code_block(text) == "print(2)\n"
    assert final_code_block("```\nprint(3)\n```") == "print(3)\n"
    assert final_code_block("```python title=x.py\nprint(4)\n```") == "print(4)\n"
    assert final_code_block("```python\nprint(1)\n```\n```python\nprint(5)") == "print(1)\n"
    assert final_code_block("no code") is None and final_code_block(None) is None


def test_parse_tests_forms():
    cases = [{"stdin": "1\n", "stdout": "2\n"}]
    assert parse_tests(cases) == [("1\n", "2\n")]
    assert parse_tests(json.dumps(cases)) == [("1\n", "2\n")]
    apps_style = {"inputs": ["1\n", "2\n"], "outputs": ["2", "4"]}
    assert parse_tests(apps_style) == [("1\n", "2"), ("2\n", "4")]
    assert parse_tests("assert f(1) == 2") == "assert f(1) == 2"
    assert parse_tests(({"stdin": "", "stdout": "1"},)) == [("", "1")]
    for bad in (None, [], "", [{"stdin": "1"}], [{"stdin": 1, "stdout": "2"}], 42, b"[]",
                {"inputs": ["1"], "outputs": []}):
        with pytest.raises(ValueError, match="code:"):
            parse_tests(bad)


def test_normalize_output():
    assert normalize_output("\n 1  \n2\t\n\n") == "1\n2"
    assert normalize_output("1\n 2") == "1\n 2"  # leading spaces inside are kept


DOUBLER = "```python\nn = int(input())\nprint(n * 2)\n```"
IO_TESTS = [{"stdin": "1\n", "stdout": "2\n"}, {"stdin": "5\n", "stdout": "10"},
            {"stdin": "-3\n", "stdout": "-6  \n"}, {"stdin": "7\n", "stdout": "15\n"}]


def test_code_io_cases_give_the_fraction_passed():
    assert code_reward("Here:\n" + DOUBLER, tests=IO_TESTS) == 0.75
    assert code_reward(DOUBLER, tests=json.dumps(IO_TESTS[:3])) == 1.0


def test_code_assertions_pass_or_fail_as_a_whole():
    solution = "```python\ndef double(n):\n    return 2 * n\n```"
    assert code_reward(solution, tests="assert double(2) == 4\nassert double(-1) == -2") == 1.0
    assert code_reward(solution, tests="assert double(2) == 4\nassert double(3) == 7") == 0.0


def test_code_cannot_skip_the_assertions_by_exiting_early():
    cheat = "```python\nimport sys\ndef double(n):\n    return 0\nsys.exit(0)\n```"
    assert code_reward(cheat, tests="assert double(2) == 4") == 0.0
    cheat_os = "```python\nimport os\nprint('ok')\nos._exit(0)\n```"
    assert code_reward(cheat_os, tests="assert False") == 0.0


def test_code_failures_score_zero():
    crash = "```python\nraise SystemExit(3)\n```"
    assert code_reward(crash, tests=IO_TESTS[:1]) == 0.0
    prints_then_crashes = "```python\nprint(2)\nraise ValueError\n```"
    assert code_reward(prints_then_crashes, tests=IO_TESTS[:1]) == 0.0
    assert code_reward("no code block", tests=IO_TESTS) == 0.0
    assert code_reward("```python\n\n```", tests=IO_TESTS) == 0.0


@pytest.mark.timeout(60)
def test_code_timeout_is_a_failed_case():
    spin = "```python\nwhile True:\n    pass\n```"
    assert code_reward(spin, tests=IO_TESTS[:1], timeout_s=1) == 0.0


def test_code_bad_tests_field_raises():
    with pytest.raises(ValueError, match="code: row field 'tests'"):
        code_reward(DOUBLER, tests=None)
