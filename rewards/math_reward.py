"""The `"math"` reward: the completion's final answer equals the reference answer, by math-verify.

math-verify (HuggingFace) parses both sides to SymPy and compares them: fractions vs decimals,
LaTeX, percents, intervals, sets, equations. Three things are added around it here:

- extraction is ours (`rewards.extract`), so the graded text is exactly the final answer
  (answer tag, boxed, `####`, optionally the last number) and never a number from the reasoning;
- small normalisations it misses (`\\$`, `1{,}000`, math delimiters) that never merge digits,
  so 1/2 stays apart from 12, 0.5 from 5 and 100 from 1000;
- a cost guard: SymPy evaluates `10^{10^{10}}` or `(10^{10})!` in C code that no timeout can
  interrupt, so answers that could explode are graded 0.0 before SymPy sees them.

math-verify times out with `signal.alarm`, which only works in a process's main thread; off
the main thread its timeout is switched off and the cost guard is what bounds the work.
"""

from __future__ import annotations

import logging
import math
import re
import threading

from rewards.extract import boxed, extract_final_answer, gsm8k_final

MAX_ANSWER_CHARS = 1_000      # a final answer longer than this is not an answer
MAX_LITERAL_DIGITS = 100      # longer integer literals only serve to make SymPy slow
MAX_EXPONENT = 10_000         # 2^{2023} is a real answer; 10^{10^{10}} is an attack
MAX_FACTORIAL = 10_000        # 1000! is computed in milliseconds; (10^{10})! never ends
MAX_HEAVY_LITERAL = 100       # bound on literals inside sums, products, binomials, Gamma, ...
DEFAULT_TIMEOUT_S = 5

# Whole-answer thousands grouping: "1,000" / "-12,345.5" / "1{,}000" after the {,} rewrite.
_THOUSANDS = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?", re.ASCII)
_DIGITS = re.compile(r"\d+", re.ASCII)
# An exponent: `^{...}` (content checked separately) or `^`/`**` followed by one token.
_POWER = re.compile(r"\^|\*\*")
# Operators whose value can be astronomically expensive to compute from small-looking input.
_HEAVY = re.compile(
    r"\\(?:[dt]?binom|choose|sum|prod|int|iint|oint|lim|Gamma)|binomial|factorial|gamma")
_OUTER_DELIMITERS = (("\\(", "\\)"), ("\\[", "\\]"))

log = logging.getLogger(__name__)


def math_reward(
    completion: str,
    answer: object = None,
    *,
    fallback_last_number: bool = True,
    timeout_s: int | None = DEFAULT_TIMEOUT_S,
    **fields: object,
) -> float:
    """1.0 if the completion's final answer equals `answer` (the reference), else 0.0.

    `fallback_last_number`: when the completion has no answer tag, `\\boxed{}` or `####`,
    grade its last number (True, the default) or give 0.0 (False; registered as
    "math_strict"). `timeout_s`: math-verify's per-step timeout in whole seconds when called
    in the main thread (None disables it, e.g. when the caller owns SIGALRM). Never raises on
    model text; other row fields are ignored.
    """
    try:
        return _grade(completion, answer, fallback_last_number, timeout_s)
    except Exception:  # model text must never crash a scorer; the cause is logged for debugging
        log.debug("math reward failed", exc_info=True)
        return 0.0


def math_strict_reward(completion: str, answer: object = None, **fields: object) -> float:
    """`math_reward` without the last-number fallback: an answer tag, box or `####` is needed."""
    fields.pop("fallback_last_number", None)
    return math_reward(completion, answer, fallback_last_number=False, **fields)


def _grade(completion, answer, fallback_last_number, timeout_s) -> float:
    if not isinstance(completion, str) or answer is None:
        return 0.0
    predicted = extract_final_answer(completion, fallback_last_number=fallback_last_number)
    if predicted is None:
        return 0.0
    reference = str(answer)
    # Some datasets give the whole reference solution (MATH's \boxed{}, GSM8K's "#### 18").
    reference = boxed(reference) or gsm8k_final(reference) or reference
    predicted, reference = normalize_answer(predicted), normalize_answer(reference)
    if not predicted or not reference or too_costly(predicted) or too_costly(reference):
        return 0.0
    if predicted == reference:
        return 1.0
    return 1.0 if _verify(reference, predicted, timeout_s) else 0.0


def normalize_answer(text: str) -> str:
    """Rewrites math-verify may miss; none of them joins or splits digits.

    `\\$` and `$` (currency and math delimiters) go, `\\(…\\)`/`\\[…\\]` around the whole
    answer go, LaTeX's `{,}` thousands separator becomes a comma, the `\\!` thin space goes,
    U+2212 becomes "-", a final full stop goes, and a whole-answer thousands grouping
    "1,000" becomes "1000". A list such as "1,2" is left alone.
    """
    text = text.strip()
    for opening, closing in _OUTER_DELIMITERS:
        wrapped = text.startswith(opening) and text.endswith(closing)
        if wrapped and len(text) > len(opening) + len(closing):
            text = text[len(opening):-len(closing)].strip()
    for old, new in (("\\$", ""), ("$", ""), ("{,}", ","), ("\\!", ""), ("\u2212", "-")):
        text = text.replace(old, new)
    text = text.strip()
    text = text.rstrip(".").strip()  # a sentence's full stop, never a decimal point
    if _THOUSANDS.fullmatch(text):
        text = text.replace(",", "")
    return text


def too_costly(text: str) -> bool:
    """True when SymPy might spend unbounded time on this answer (see the module docstring).

    Rejects: overlong text, integer literals over MAX_LITERAL_DIGITS digits, power towers
    (an exponent holding a power or factorial, or followed by another power as in 9**9**9),
    exponents over MAX_EXPONENT, factorials of anything but a symbol or a literal up to
    MAX_FACTORIAL, and sums/products/binomials/Gamma/integrals/limits over big literals or
    powers. Best effort against number explosions; symbolic blow-ups are handled in
    `_verify` for numeric references, and the scorer's per-call limit is the final bound.
    """
    if len(text) > MAX_ANSWER_CHARS:
        return True
    literals = _DIGITS.findall(text)
    if any(len(digits) > MAX_LITERAL_DIGITS for digits in literals):
        return True
    big_literal = any(int(digits) > MAX_HEAVY_LITERAL for digits in literals)
    if _HEAVY.search(text) and (big_literal or _POWER.search(text)):
        return True  # \binom{10^{100}}{…}, \sum_{i=1}^{10^9}, \Gamma(10^{90}): huge results
    return _has_huge_power(text) or _has_huge_factorial(text)


def _has_huge_power(text: str) -> bool:
    for match in _POWER.finditer(text):
        exponent, end = _exponent_at(text, match.end())
        if _POWER.search(exponent) or "!" in exponent or _POWER.match(text[end:].lstrip()):
            return True
        if any(int(digits) > MAX_EXPONENT for digits in _DIGITS.findall(exponent)):
            return True
    return False


def _has_huge_factorial(text: str) -> bool:
    for match in re.finditer("!", text):
        before = text[:match.start()].rstrip()
        digits = re.search(r"\d+$", before, re.ASCII)
        if digits:
            if int(digits.group()) > MAX_FACTORIAL:
                return True
        elif not (before and before[-1].isalpha()):
            return True  # "(…)!", "{…}!", "!!": an operand not bounded cheaply; "n!" is fine
    return False


def _exponent_at(text: str, start: int) -> tuple[str, int]:
    """The exponent starting at `start` (a braced/parenthesised group or one token) and the
    index just after it. Answers are at most MAX_ANSWER_CHARS long, so the scan is cheap."""
    while start < len(text) and text[start] == " ":
        start += 1
    if start >= len(text):
        return "", start
    opening = text[start]
    if opening in "{(":
        closing = "}" if opening == "{" else ")"
        depth = 0
        for index in range(start, len(text)):
            depth += {opening: 1, closing: -1}.get(text[index], 0)
            if depth == 0:
                return text[start + 1:index], index + 1
        return text[start + 1:], len(text)  # unbalanced: the rest is the exponent
    digits = _DIGITS.match(text, start)
    token = digits.group() if digits else text[start]
    return token, start + len(token)


def _verify(reference: str, predicted: str, timeout_s: int | None) -> bool:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    # signal.alarm raises off the main thread; there math-verify must run without a timeout.
    if threading.current_thread() is not threading.main_thread():
        timeout_s = None
    elif timeout_s is not None:
        timeout_s = max(1, math.ceil(timeout_s))  # signal.alarm takes whole seconds
    config = [LatexExtractionConfig(), ExprExtractionConfig()]

    def parse_answer(text: str) -> list:
        # As math ("$…$") first: "1,2" is then a set and "[1,2)" an interval, where the
        # plain-text extractor would read 1.2 and 2. Plain text only if that finds nothing.
        for candidate in (f"${text}$", text):
            parsed = parse(candidate, extraction_config=config, parsing_timeout=timeout_s)
            if parsed:
                return parsed
        return []

    gold, guess = parse_answer(reference), parse_answer(predicted)
    guess = _drop_symbolic_guesses(gold, guess)
    if not gold or not guess:
        return False
    return bool(verify(gold, guess, timeout_seconds=timeout_s))


def _drop_symbolic_guesses(gold: list, guess: list) -> list:
    """Against a purely numeric reference, drop guessed expressions with free symbols.

    Such a guess cannot be the number (SymPy already folds x - x + 5 to 5), and simplifying
    it can take forever: (a+b+c+d+e+f)^{10} hangs `verify` with no timeout to stop it.
    Equations (x = 3) and sets are kept: math-verify matches x = 3 against 3.
    """
    from sympy import Expr

    exprs = [g for g in gold if not isinstance(g, str)]
    if not exprs or any(not isinstance(g, Expr) or g.free_symbols for g in exprs):
        return guess
    return [g for g in guess if isinstance(g, str) or not (isinstance(g, Expr) and g.free_symbols)]
