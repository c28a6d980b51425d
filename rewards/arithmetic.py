"""The `"arithmetic"` reward: an exact integer answer for the built-in arithmetic task.

The reference (`answer` field) is an integer written as text, e.g. "-519". The completion's
answer is compared as an integer, exactly: no floating point, no tolerance, and none of the
rewrites that could join digits ("1,2" stays a non-number, never 12).
"""

from __future__ import annotations

import re

from rewards.extract import extract_final_answer, last_number

MAX_DIGITS = 100  # the task's answers have at most 37 digits; longer text only costs time

# An integer as people write it: optional sign (a space may follow it), digits either plain
# or in strict groups of three ("1,234,567" or "1 234 567"), and an optional ".0…" tail.
_INTEGER = re.compile(r"([+-]?) ?(\d{1,3}(?:,\d{3})+|\d{1,3}(?: \d{3})+|\d+)(?:\.0*)?", re.ASCII)


def parse_integer(text: str) -> int | None:
    """The integer `text` spells, or None.

    Accepts "-519", "+519", "- 519", "1,234", "1 234", and "519.0"/"519.": a decimal with
    only zeros after the point is an exact integer value, so it counts. "519.5", "5 19",
    "1,2", "0x1F", "5e2", non-ASCII digits and anything longer than MAX_DIGITS digits do not.
    """
    if not isinstance(text, str) or len(text) > 2 * MAX_DIGITS:
        return None
    match = _INTEGER.fullmatch(text.strip())
    if match is None:
        return None
    digits = match.group(2).replace(",", "").replace(" ", "")
    if len(digits) > MAX_DIGITS:
        return None
    value = int(digits)
    return -value if match.group(1) == "-" else value


def arithmetic_reward(
    completion: str, answer: object = None, *, fallback_last_number: bool = True, **fields: object
) -> float:
    """1.0 if the completion's answer is exactly the integer `answer`, else 0.0.

    The answer is the last `<answer>` block (a `\\boxed{}` inside wins); if that text is not
    a clean integer, its last number is used ("<answer>3 + 4 = 7</answer>" -> 7). With no
    answer tag, `\\boxed{}` or `####`, the completion's last number is used when
    `fallback_last_number` (default True). Raises ValueError only when the reference itself
    is not an integer (a bad dataset row); never on model text.
    """
    expected = None
    if isinstance(answer, (str, int)) and not isinstance(answer, bool):
        expected = parse_integer(str(answer))
    if expected is None:
        raise ValueError(f"arithmetic: row field 'answer' must be an integer, got {answer!r:.80}")
    if not isinstance(completion, str):
        return 0.0
    found = extract_final_answer(completion, fallback_last_number=fallback_last_number)
    if found is None:
        return 0.0
    value = parse_integer(found)
    if value is None:
        number = last_number(found)
        value = parse_integer(number) if number is not None else None
    return 1.0 if value is not None and value == expected else 0.0
