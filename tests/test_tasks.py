"""Tests for cluster.inputs.tasks: the arithmetic and countdown generators, write_parquet, write_task."""

from __future__ import annotations

import itertools
import re
from fractions import Fraction

import pytest

from cluster.inputs.data import load_prompt_rows
from cluster.inputs.tasks import (
    TASKS,
    arithmetic_rows,
    chain_sum_rows,
    countdown_rows,
    task_rows,
    write_parquet,
    write_task,
)

# ---------------------------------------------------------------- generators

ARITHMETIC_PROMPT = re.compile(r"^What is (\d+) ([-+*]) (\d+)\?$")


def test_arithmetic_answers_are_correct():
    rows = arithmetic_rows(200, seed=5, min_digits=1, max_digits=4, ops="+-*")
    ops_seen = set()
    for row in rows:
        match = ARITHMETIC_PROMPT.match(row["prompt"])
        assert match, row["prompt"]
        left, op, right = int(match[1]), match[2], int(match[3])
        ops_seen.add(op)
        expected = {"+": left + right, "-": left - right, "*": left * right}[op]
        assert row["answer"] == str(expected)
        assert 1 <= len(str(left)) <= 4 and 1 <= len(str(right)) <= 4
    assert ops_seen == {"+", "-", "*"}
    assert any(row["answer"].startswith("-") for row in rows)


def test_arithmetic_respects_digits_and_ops():
    for row in arithmetic_rows(50, seed=1, min_digits=3, max_digits=3, ops="+"):
        left, op, right = ARITHMETIC_PROMPT.match(row["prompt"]).groups()
        assert op == "+" and len(left) == 3 and len(right) == 3


def test_generators_are_deterministic_per_seed():
    assert arithmetic_rows(20, seed=1) == arithmetic_rows(20, seed=1)
    assert arithmetic_rows(20, seed=1) != arithmetic_rows(20, seed=2)
    assert countdown_rows(20, seed=1) == countdown_rows(20, seed=1)
    assert countdown_rows(20, seed=1) != countdown_rows(20, seed=2)


def reachable(numbers: list[int], target: int) -> bool:
    """Brute force: some ordering of all numbers, folded left with + - * /, gives target."""
    ops = [
        lambda a, b: a + b,
        lambda a, b: a - b,
        lambda a, b: a * b,
        lambda a, b: a / b if b else None,
    ]
    for order in itertools.permutations(numbers):
        for chosen in itertools.product(ops, repeat=len(numbers) - 1):
            value = Fraction(order[0])
            for op, number in zip(chosen, order[1:]):
                value = op(value, Fraction(number))
                if value is None:
                    break
            if value == target:
                return True
    return False


def test_countdown_rows_are_solvable():
    rows = countdown_rows(40, seed=11, num_numbers=4, max_number=50, max_target=200)
    for row in rows:
        numbers, target = row["numbers"], row["target"]
        assert len(numbers) == 4 and all(1 <= x <= 50 for x in numbers)
        assert isinstance(target, int) and 1 <= target <= 200
        assert str(numbers) in row["prompt"] and str(target) in row["prompt"]
        assert reachable(numbers, target), row
    assert not reachable([1, 1], 5)  # the checker itself can say no


def test_write_parquet_round_trip(tmp_path):
    rows = countdown_rows(5, seed=3, num_numbers=3)
    path = write_parquet(rows, tmp_path / "nested" / "dir" / "countdown.parquet")
    loaded = load_prompt_rows(path)
    assert [row.prompt for row in loaded] == [row["prompt"] for row in rows]
    assert [row.fields for row in loaded] == [
        {"numbers": row["numbers"], "target": row["target"]} for row in rows
    ]


def test_write_parquet_leaves_no_temp_files(tmp_path):
    path = tmp_path / "out.parquet"
    write_parquet(arithmetic_rows(3, seed=0), path)
    write_parquet(arithmetic_rows(4, seed=1), path)  # overwrite in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.parquet"]
    assert len(load_prompt_rows(path)) == 4


def test_write_parquet_failure_leaves_nothing(tmp_path):
    with pytest.raises(ValueError):
        write_parquet([{"prompt": "a", "x": 1}, {"prompt": "b", "x": "text"}], tmp_path / "bad.pq")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError):
        write_parquet([], tmp_path / "empty.parquet")
    assert list(tmp_path.iterdir()) == []


def test_write_task(tmp_path):
    path = write_task("arithmetic", tmp_path / "a.parquet", 6, seed=4, max_digits=2)
    loaded = load_prompt_rows(path)
    assert [row.fields["answer"] for row in loaded] == [
        row["answer"] for row in arithmetic_rows(6, seed=4, max_digits=2)
    ]
    assert set(TASKS) == {"arithmetic", "chain_sum", "countdown", "pair_sum"}


def test_write_task_rejects_unknown_task_and_option(tmp_path):
    with pytest.raises(ValueError, match=r"'sudoku'.*arithmetic, chain_sum, countdown, pair_sum"):
        write_task("sudoku", tmp_path / "x.parquet", 3, seed=0)
    with pytest.raises(ValueError, match="max_digit"):
        write_task("countdown", tmp_path / "x.parquet", 3, seed=0, max_digit=2)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("generator", "kwargs", "name"),
    [
        (arithmetic_rows, {"n": 0}, "n"),
        (arithmetic_rows, {"n": 2.5}, "n"),
        (arithmetic_rows, {"seed": -1}, "seed"),
        (arithmetic_rows, {"min_digits": 0}, "min_digits"),
        (arithmetic_rows, {"max_digits": 19}, "max_digits"),
        (arithmetic_rows, {"min_digits": 3, "max_digits": 2}, "max_digits"),
        (arithmetic_rows, {"ops": ""}, "ops"),
        (arithmetic_rows, {"ops": "+/"}, "ops"),
        (chain_sum_rows, {"min_terms": 1}, "min_terms"),
        (chain_sum_rows, {"min_terms": 4, "max_terms": 3}, "max_terms"),
        (chain_sum_rows, {"max_term": 0}, "max_term"),
        (countdown_rows, {"n": 0}, "n"),
        (countdown_rows, {"num_numbers": 1}, "num_numbers"),
        (countdown_rows, {"num_numbers": 7}, "num_numbers"),
        (countdown_rows, {"num_numbers": True}, "num_numbers"),
        (countdown_rows, {"max_number": 0}, "max_number"),
        (countdown_rows, {"max_target": 0}, "max_target"),
    ],
)
def test_generators_reject_bad_arguments(generator, kwargs, name):
    arguments = {"n": 3, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=rf"^{name} "):
        generator(arguments.pop("n"), **arguments)


# ---------------------------------------------------------------- chain sums, exclusion


def test_chain_sum_rows_add_up_and_respect_settings():
    rows = chain_sum_rows(300, seed=2, min_terms=2, max_terms=5, max_term=7)
    lengths = set()
    for row in rows:
        terms = [int(t) for t in row["prompt"].split("+")]
        lengths.add(len(terms))
        assert all(1 <= t <= 7 for t in terms) and row["answer"] == str(sum(terms))
    assert lengths == {2, 3, 4, 5}
    assert chain_sum_rows(5, seed=1) == chain_sum_rows(5, seed=1) != chain_sum_rows(5, seed=2)
    assert chain_sum_rows(1, seed=0, min_terms=3, max_terms=3, max_term=1)[0] == {"prompt": "1+1+1", "answer": "3"}


def test_task_rows_without_exclusion_are_the_generator_rows():
    assert task_rows("chain_sum", 20, seed=5) == chain_sum_rows(20, seed=5)


def test_task_rows_leave_out_excluded_prompts_and_refill():
    # Two terms of 1..3: nine possible prompts; exclude five of them.
    everything = {f"{a}+{b}" for a in range(1, 4) for b in range(1, 4)}
    excluded = frozenset(sorted(everything)[:5])
    rows = task_rows("chain_sum", 50, seed=0, exclude=excluded, min_terms=2, max_terms=2, max_term=3)
    assert len(rows) == 50 and not excluded & {r["prompt"] for r in rows}
    assert rows == task_rows("chain_sum", 50, seed=0, exclude=excluded, min_terms=2, max_terms=2, max_term=3)


def test_task_rows_unique_never_repeat_a_prompt():
    rows = task_rows("chain_sum", 9, seed=0, unique=True, min_terms=2, max_terms=2, max_term=3)
    assert sorted(r["prompt"] for r in rows) == sorted(f"{a}+{b}" for a in range(1, 4) for b in range(1, 4))


def test_task_rows_fail_cleanly_when_exclusion_leaves_too_little():
    with pytest.raises(ValueError, match="fewer than 10 rows"):
        task_rows("chain_sum", 10, seed=0, unique=True, min_terms=2, max_terms=2, max_term=3)


def test_the_cli_offers_every_task():
    from cluster.cli import build_parser

    data_parser = build_parser()._subparsers._group_actions[0].choices["data"]
    task_action = next(a for a in data_parser._actions if a.dest == "task")
    assert sorted(task_action.choices) == sorted(TASKS)


@pytest.mark.parametrize("task", sorted(TASKS))
def test_aha_data_and_a_recipes_synthetic_table_write_the_same_file(tmp_path, task):
    # The generators' defaults are the schema's: `aha data` (no task options) and a recipe's
    # [data.synthetic] left at its defaults, with the same rows and seed, write identical bytes.
    from cluster.cli import main
    from cluster.inputs.prepare import prepare_data
    from cluster.recipe import load_recipe

    assert main(["data", task, str(tmp_path / "cli.parquet"), "--rows", "40", "--seed", "3"]) == 0
    recipe = load_recipe(None, ["--model.path", "m", "--data.train_path", str(tmp_path / "recipe.parquet"),
                                "--data.synthetic.task", task, "--data.synthetic.train_rows", "40",
                                "--data.synthetic.eval_rows", "0", "--data.synthetic.seed", "3",
                                "--cluster.num_cpus", "8"])
    assert prepare_data(recipe) == [tmp_path / "recipe.parquet"]
    assert (tmp_path / "cli.parquet").read_bytes() == (tmp_path / "recipe.parquet").read_bytes()


def test_aha_data_defaults_to_the_recipes_rows_and_seed():
    from cluster.cli import build_parser
    from cluster.recipe.schema import SyntheticDataConfig

    args = build_parser().parse_args(["data", "arithmetic", "out.parquet"])
    assert (args.rows, args.seed) == (SyntheticDataConfig().train_rows, SyntheticDataConfig().seed)
