"""The pair-sum world, where checking pays: reach a target with two of the given numbers.

    3 8 5 9 -> 13

A model that cannot see at a glance which two numbers make the target has to guess. It can
write a guess out and hold it against the target (8+5=13 vs 13): self-verification. When the
guess misses, it can say so and try another pair: self-correction, the behaviour R1-Zero's "aha
moment" is about. The task is graded by the `countdown` reward (an expression over the
numbers, each used at most once, that equals the target), so the reward sees only the final
answer, never the working.

The base model's corpus imitates a base model that has seen checking only rarely. Every
solution writes a guess out; most answer with it whatever it gives, and a small share
(`model.pretrain.checked_fraction`) holds each guess against the target and, when it misses,
writes "wait" and tries the next pair:

    3+5=8</think><answer>3+5</answer>                                     (unchecked)
    3+8=11 vs 13 no, wait 3+5=8 vs 13 no, wait 8+5=13 vs 13 yes</think><answer>8+5</answer>

An unchecked guess is a pair drawn at random, right one time in three with three numbers; a
checked solution tries the pairs in the prompt's order (first and second, first and third, ...)
until one hits. Checking is the only thing in the corpus that does better than chance, and
the target is written beside each sum so that the comparison is one a tiny model can make.
Whatever RL adds on top of the base model's accuracy comes from the model's own choices: to
check, or to learn to pick the right pair without writing anything.

`detect_checks` is the task's own detector of those behaviours, read from the completion and
the row: it counts verdicts on guesses (checks), misses followed by "wait" and another attempt
(corrections), and whether each verdict was right.
"""

from __future__ import annotations

import itertools
import random
import re
from dataclasses import dataclass

from cluster.recipe.schema import SyntheticDataConfig

THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE = "</think>", "<answer>", "</answer>"
HIT, MISS, RETRY, CHECK = "yes", "no", "wait", "check"
# One attempt: "a+b=sum", then optionally " vs target" and the verdict " yes" / " no". Numbers
# are bounded so that a long run of digits in model text costs linear time, not quadratic.
ATTEMPT = re.compile(
    r"(?<!\d)(\d{1,9})\+(\d{1,9})=(\d{1,9})(?!\d)(?:\s+vs\s+(\d{1,9})(?!\d))?(?:\s+(yes|no)\b)?")
# Marks a checking exercise's prompt in the corpus; the task's own prompts never carry it.
EXERCISE_MARK = " (practice)"
# A row with no pair that hits exactly once is redrawn; this bounds the work for odd settings.
MAX_TRIES = 10_000
DEFAULTS = SyntheticDataConfig()  # the generator's defaults are the recipe's


def prompt_text(numbers: list[int], target: int) -> str:
    """The question of one puzzle: '3 8 5 9 -> 13'."""
    return " ".join(map(str, numbers)) + f" -> {target}"


def pair_sum_rows(
    n: int, *, seed: int, num_numbers: int = DEFAULTS.num_numbers, max_number: int = DEFAULTS.max_number,
) -> list[dict]:
    """`n` rows {"prompt", "numbers", "target"}: distinct numbers from 1..max_number and a
    target that exactly one pair of them sums to and that is none of the numbers (so no
    one-number answer). Same seed, same rows."""
    if not 3 <= num_numbers <= 6:
        raise ValueError(f"pair_sum: num_numbers must be in 3..6, got {num_numbers}")
    if max_number < num_numbers + 2:
        raise ValueError(f"pair_sum: max_number must be >= num_numbers + 2, got {max_number}")
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        for _attempt in range(MAX_TRIES):
            numbers = rng.sample(range(1, max_number + 1), num_numbers)
            sums = [a + b for a, b in itertools.combinations(numbers, 2)]
            target = rng.choice(sums)
            if sums.count(target) == 1 and target not in numbers:
                break
        else:
            raise ValueError(f"pair_sum: no puzzle with a single solution in {MAX_TRIES} tries")
        rows.append({"prompt": prompt_text(numbers, target), "numbers": numbers, "target": target})
    return rows


def parse_prompt(prompt: str) -> tuple[list[int], int]:
    """The numbers and target of a pair-sum prompt: '3 8 5 9 -> 13' -> ([3, 8, 5, 9], 13)."""
    left, sep, right = prompt.partition("->")
    try:
        numbers, target = [int(part) for part in left.split()], int(right)
    except ValueError:
        numbers, target = [], 0
    if not sep or len(numbers) < 2:
        raise ValueError(f"not a pair-sum prompt: {prompt!r:.60}")
    return numbers, target


def unchecked_solution(numbers: list[int], target: int, rng: random.Random) -> str:
    """One pair drawn at random, written out and answered, hit or miss."""
    a, b = rng.sample(numbers, 2)
    return f"{a}+{b}={a + b}{THINK_CLOSE}{ANSWER_OPEN}{a}+{b}{ANSWER_CLOSE}"


def checked_solution(numbers: list[int], target: int, rng: random.Random | None = None) -> str:
    """The pairs in the prompt's order, each held against the target; a miss says so and tries
    the next pair, the hit is answered."""
    attempts = []
    for a, b in itertools.combinations(numbers, 2):
        if a + b == target:
            attempts.append(f"{a}+{b}={a + b} vs {target} {HIT}")
            working = f", {RETRY} ".join(attempts)
            return f"{CHECK} {working}{THINK_CLOSE}{ANSWER_OPEN}{a}+{b}{ANSWER_CLOSE}"
        attempts.append(f"{a}+{b}={a + b} vs {target} {MISS}")
    raise ValueError(f"pair_sum: no pair of {numbers} makes {target}")


def corpus_text(prompt: str, rng: random.Random, template_of, *, checked_fraction: float,
                exercise_fraction: float) -> str:
    """One pre-training text for `prompt`: a checking exercise with probability
    `exercise_fraction` (the prompt marked with EXERCISE_MARK, then a checked solution), else the
    task's own prompt and a solution that checks with probability `checked_fraction`."""
    numbers, target = parse_prompt(prompt)
    if rng.random() < exercise_fraction:
        return template_of(prompt + EXERCISE_MARK) + checked_solution(numbers, target)
    write = checked_solution if rng.random() < checked_fraction else unchecked_solution
    return template_of(prompt) + write(numbers, target, rng)


@dataclass(frozen=True)
class Checks:
    """What one completion did: guesses written out (attempts), verdicts given on them (checks),
    checks that were sound, corrections (a miss followed by 'wait' and another attempt)."""

    attempts: int
    checks: int
    sound_checks: int
    corrections: int

    @property
    def verified(self) -> bool:
        return self.checks > 0

    @property
    def corrected(self) -> bool:
        return self.corrections > 0


def detect_checks(completion: str, numbers=(), target=None, **fields) -> Checks:
    """Read the checks and corrections in `completion`'s working (before '</think>', or all of
    it when there is none). Model text is untrusted: anything that does not parse counts as
    nothing, never as an error. A check is sound when its sum is of two of `numbers` and right,
    the target it names (if any) is the target, and its verdict is true. Takes a row's fields
    like a reward does."""
    numbers = list(numbers) if isinstance(numbers, (list, tuple)) else []
    text = completion.split(THINK_CLOSE, 1)[0] if isinstance(completion, str) else ""
    attempts = list(ATTEMPT.finditer(text))
    checks = sound = corrections = 0
    for index, attempt in enumerate(attempts):
        a, b, stated, named, verdict = int(attempt[1]), int(attempt[2]), int(attempt[3]), attempt[4], attempt[5]
        if verdict is None:
            continue
        checks += 1
        uses_numbers = a in numbers and b in numbers and (a != b or numbers.count(a) > 1)
        names_target = named is None or int(named) == target
        sound += uses_numbers and stated == a + b and names_target and (verdict == HIT) == (stated == target)
        if verdict == MISS and index + 1 < len(attempts):
            between = text[attempt.end(): attempts[index + 1].start()]
            corrections += bool(re.search(rf"\b{RETRY}\b", between, re.IGNORECASE))
    return Checks(attempts=len(attempts), checks=checks, sound_checks=sound, corrections=corrections)
