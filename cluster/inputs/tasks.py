"""Built-in synthetic tasks: generate prompt rows and write them as Parquet or JSONL datasets.

These give a run something to train on with no download: `arithmetic` (exact integer answers,
graded by the `arithmetic` reward), `chain_sum` (the sum of a few small numbers, which a tiny
model gets right by adding step by step; also graded by `arithmetic`; the CPU demo's task) and
TinyZero's `countdown` (reach a target from a set of numbers, graded by the `countdown` reward).
Generation is deterministic per seed, so the same recipe always trains on the same data. The
generators' defaults are the recipe's `[data.synthetic]` defaults (`SyntheticDataConfig`), so
`aha data` and a recipe left at its defaults write the same rows. Only the standard library,
pyarrow and the recipe schema are imported.
"""

from __future__ import annotations

import inspect
import json
import os
import random
import tempfile
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq

from cluster.inputs.data import JSONL_SUFFIXES, PARQUET_SUFFIXES
from cluster.inputs.pair_sum import detect_checks, pair_sum_rows
from cluster.recipe.schema import SyntheticDataConfig

ARITHMETIC_OPS = "+-*"
COUNTDOWN_OPS = "+-*/"
MAX_DIGITS = 18
# A row whose target never lands in range is redrawn; this bounds the work for odd settings.
COUNTDOWN_MAX_TRIES = 10_000
DEFAULTS = SyntheticDataConfig()  # every generator option's default, defined once in the schema


def _check_int(name: str, value: object, low: int, high: int | None = None) -> int:
    """Validate an integer argument in [low, high], naming it in the error."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in {low}..{high}"
        raise ValueError(f"{name} must be {bound}, got {value}")
    return value


def _random_with_digits(rng: random.Random, digits: int) -> int:
    """A non-negative integer with exactly `digits` decimal digits (0..9 for one digit)."""
    low = 0 if digits == 1 else 10 ** (digits - 1)
    return rng.randint(low, 10**digits - 1)


def _apply(op: str, left: int, right: int) -> int:
    """Integer result of `left op right`; division is only ever called when it is exact."""
    if op == "+":
        return left + right
    if op == "-":
        return left - right
    if op == "*":
        return left * right
    return left // right


def arithmetic_rows(
    n: int, *, seed: int, min_digits: int = DEFAULTS.min_digits, max_digits: int = DEFAULTS.max_digits,
    ops: str = DEFAULTS.ops,
) -> list[dict]:
    """`n` rows {"prompt": "What is 482 + 37?", "answer": "519"} with exact integer answers.

    Each operand has between `min_digits` and `max_digits` digits; the operator is drawn
    from `ops` (a non-empty subset of "+-*"). Same seed, same rows.
    """
    _check_int("n", n, 1)
    _check_int("seed", seed, 0)
    _check_int("min_digits", min_digits, 1, MAX_DIGITS)
    _check_int("max_digits", max_digits, min_digits, MAX_DIGITS)
    if not isinstance(ops, str) or not ops or not set(ops) <= set(ARITHMETIC_OPS):
        raise ValueError(f"ops must be a non-empty subset of {ARITHMETIC_OPS!r}, got {ops!r}")
    op_choices = sorted(set(ops))  # sorted so "+-" and "-+" give the same rows
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        left = _random_with_digits(rng, rng.randint(min_digits, max_digits))
        right = _random_with_digits(rng, rng.randint(min_digits, max_digits))
        op = rng.choice(op_choices)
        answer = str(_apply(op, left, right))
        rows.append({"prompt": f"What is {left} {op} {right}?", "answer": answer})
    return rows


def chain_sum_rows(
    n: int, *, seed: int, min_terms: int = DEFAULTS.min_terms, max_terms: int = DEFAULTS.max_terms,
    max_term: int = DEFAULTS.max_term,
) -> list[dict]:
    """`n` rows {"prompt": "4+7+2+9", "answer": "22"}: sums of `min_terms`..`max_terms` terms.

    Terms are drawn from 1..max_term. Written without spaces, so a character tokenizer spends
    one token per digit or sign. Same seed, same rows.
    """
    _check_int("n", n, 1)
    _check_int("seed", seed, 0)
    _check_int("min_terms", min_terms, 2, 20)
    _check_int("max_terms", max_terms, min_terms, 20)
    _check_int("max_term", max_term, 1, 10**6)
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        terms = [rng.randint(1, max_term) for _ in range(rng.randint(min_terms, max_terms))]
        rows.append({"prompt": "+".join(map(str, terms)), "answer": str(sum(terms))})
    return rows


def _countdown_target(rng: random.Random, numbers: list[int]) -> int:
    """Combine all `numbers` in a random order with random ops; returns the resulting integer.

    Division is only offered when it is exact, so the result is always an integer reachable
    as ((a op b) op c) op ... — which is what makes every generated puzzle solvable.
    """
    order = rng.sample(numbers, len(numbers))
    value = order[0]
    for number in order[1:]:
        ops = COUNTDOWN_OPS if value % number == 0 else ARITHMETIC_OPS
        value = _apply(rng.choice(ops), value, number)
    return value


def _countdown_prompt(numbers: list[int], target: int) -> str:
    """The question text of one Countdown puzzle."""
    return (
        f"Using the numbers {numbers}, create an equation that equals {target}. "
        "You can use +, -, * and /, and each number must be used exactly once. "
        "Give the equation as your answer, for example (1 + 2) * 3."
    )


def countdown_rows(
    n: int, *, seed: int, num_numbers: int = DEFAULTS.num_numbers, max_number: int = DEFAULTS.max_number,
    max_target: int = DEFAULTS.max_target,
) -> list[dict]:
    """`n` solvable Countdown rows {"prompt", "numbers": list[int], "target": int}.

    Numbers are drawn from 1..max_number; the target is built by combining all of them, so a
    solution always exists, and lies in 1..max_target. Same seed, same rows.
    """
    _check_int("n", n, 1)
    _check_int("seed", seed, 0)
    _check_int("num_numbers", num_numbers, 2, 6)
    _check_int("max_number", max_number, 1)
    _check_int("max_target", max_target, 1)
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        for _attempt in range(COUNTDOWN_MAX_TRIES):
            numbers = [rng.randint(1, max_number) for _ in range(num_numbers)]
            target = _countdown_target(rng, numbers)
            if 1 <= target <= max_target:
                break
        else:
            raise ValueError(
                f"countdown: no target in 1..{max_target} found in {COUNTDOWN_MAX_TRIES} tries "
                f"(num_numbers={num_numbers}, max_number={max_number}); raise max_target"
            )
        prompt = _countdown_prompt(numbers, target)
        rows.append({"prompt": prompt, "numbers": numbers, "target": target})
    return rows


def write_parquet(rows: list[dict], path: str | Path) -> Path:
    """Write `rows` (dicts with the same keys) to a Parquet file atomically; returns the path."""
    if not rows:
        raise ValueError("write_parquet needs at least one row")
    try:
        table = pa.Table.from_pylist(rows)
    except (pa.ArrowException, TypeError) as exc:
        raise ValueError(f"cannot build a table for '{path}': {exc}") from exc
    return _write_atomic(Path(path), lambda handle: pq.write_table(table, handle))


def write_jsonl(rows: list[dict], path: str | Path) -> Path:
    """Write `rows` as JSON Lines (one object per line, UTF-8) atomically; returns the path."""
    if not rows:
        raise ValueError("write_jsonl needs at least one row")
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")
    return _write_atomic(Path(path), lambda handle: handle.write(text))


def write_rows(rows: list[dict], path: str | Path, file_format: str = "auto") -> Path:
    """Write `rows` in the format `file_format` names, or for "auto" the one the suffix says
    (.parquet/.pq or .jsonl/.json); any other suffix is a ValueError, never a mislabelled file."""
    suffix = Path(path).suffix.lower()
    if file_format == "auto":
        file_format = "parquet" if suffix in PARQUET_SUFFIXES else "jsonl" if suffix in JSONL_SUFFIXES else ""
    if file_format == "parquet":
        return write_parquet(rows, path)
    if file_format == "jsonl":
        return write_jsonl(rows, path)
    raise ValueError(f"'{path}': cannot tell the format from suffix {suffix or '(none)'!r} "
                     f"(use one of {', '.join(PARQUET_SUFFIXES + JSONL_SUFFIXES)})")


def _write_atomic(path: Path, write) -> Path:
    """Call write(binary file) on a temporary beside `path`, fsync it, rename it over `path`:
    a crash never leaves a half-written dataset behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as tmp_file:
            write(tmp_file)
            tmp_file.flush()
            os.fsync(tmp_file.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


TASKS: dict[str, Callable[..., list[dict]]] = {
    "arithmetic": arithmetic_rows,
    "chain_sum": chain_sum_rows,
    "countdown": countdown_rows,
    "pair_sum": pair_sum_rows,
}
# Task -> its detector of checks and self-corrections: (completion, **row fields) -> an object
# with verified, corrected, checks and sound_checks (cluster.output.eval_metrics.check_stats).
CHECK_DETECTORS: dict[str, Callable] = {"pair_sum": detect_checks}
# The [data.synthetic] keys each task's generator takes.
TASK_OPTIONS = {
    "arithmetic": ("min_digits", "max_digits", "ops"),
    "chain_sum": ("min_terms", "max_terms", "max_term"),
    "countdown": ("num_numbers", "max_number", "max_target"),
    "pair_sum": ("num_numbers", "max_number"),
}
# A draw whose rows are all excluded is retried with a new seed; this bounds the retries.
MAX_EXCLUSION_ROUNDS = 100


def task_options(synthetic) -> dict[str, object]:
    """The generator options of a [data.synthetic] table's task, from that table."""
    return {name: getattr(synthetic, name) for name in TASK_OPTIONS[synthetic.task]}


def check_detector(recipe) -> Callable | None:
    """The detector `run.check_detector` names: for "auto", data.synthetic.task's own, if any."""
    name = recipe.run.check_detector
    if name == "auto":
        synthetic = recipe.data.synthetic
        name = synthetic.task if synthetic is not None else "none"
    return CHECK_DETECTORS.get(name)


def task_rows(
    task: str, n: int, *, seed: int, exclude: frozenset[str] = frozenset(), unique: bool = False,
    **options: object,
) -> list[dict]:
    """`n` rows of a built-in task whose prompt is not in `exclude` (e.g. the held-out set);
    with `unique`, no prompt twice (what a held-out set needs, so no problem counts double).

    Excluded rows are dropped and the gap is filled from further draws with derived seeds, so
    the result is deterministic. `options` are the generator's keyword arguments (e.g.
    `max_digits` for arithmetic); an unknown task or option is a ValueError naming it and the
    known ones, and so is an exclusion that leaves (almost) nothing to draw.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r} (known tasks: {', '.join(sorted(TASKS))})")
    generator = TASKS[task]
    known = [
        name
        for name, param in inspect.signature(generator).parameters.items()
        if param.kind is inspect.Parameter.KEYWORD_ONLY and name != "seed"
    ]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(
            f"task {task!r} has no option {', '.join(unknown)} (options: {', '.join(known)})"
        )
    rows: list[dict] = []
    seen = set(exclude)
    for round_ in range(MAX_EXCLUSION_ROUNDS):
        for row in generator(n - len(rows), seed=seed + round_ * 7_919, **options):
            if row["prompt"] not in seen:
                rows.append(row)
                if unique:
                    seen.add(row["prompt"])
        if len(rows) == n:
            return rows
    raise ValueError(f"task {task!r}: fewer than {n} rows left after excluding {len(exclude)} prompts "
                     f"in {MAX_EXCLUSION_ROUNDS} draws; widen the task's settings")


def write_task(
    task: str, path: str | Path, n: int, *, seed: int, exclude: frozenset[str] = frozenset(),
    unique: bool = False, overwrite: bool = False, **options: object,
) -> Path:
    """Generate `n` rows of a built-in task (see `task_rows`) and write them to `path`, Parquet
    or JSONL by its suffix. An existing file is replaced only with `overwrite` (FileExistsError)."""
    if Path(path).exists() and not overwrite:
        raise FileExistsError(f"'{path}' exists; pass --overwrite to replace it, or choose another file")
    return write_rows(task_rows(task, n, seed=seed, exclude=exclude, unique=unique, **options), path)
