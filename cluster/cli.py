"""The `aha` command line.

Every subcommand that takes a recipe accepts `--section.key value` overrides after it. Bad
input (recipe, overrides, data files) ends in one line on stderr and exit code 2, never a
traceback. Heavy imports happen inside the subcommands, so `aha --help` and recipe checks
are quick.
"""

from __future__ import annotations

import argparse
import json
import sys

from cluster.recipe import Recipe, RecipeError, load_recipe, recipe_to_dict
from cluster.recipe.schema import TASK_NAMES, RolloutConfig, TinyModelConfig

EXIT_BAD_INPUT = 2


def _recipe(args: argparse.Namespace, overrides: list[str]) -> Recipe:
    return load_recipe(args.recipe, overrides)


def cmd_check(args: argparse.Namespace, overrides: list[str]) -> int:
    """Validate a recipe with its overrides and print it fully resolved, as JSON."""
    recipe = _recipe(args, overrides)
    print(json.dumps(recipe_to_dict(recipe), indent=2))
    return 0


def cmd_train(args: argparse.Namespace, overrides: list[str]) -> int:
    """Run the GRPO loop of a recipe (locally, or on the Ray cluster at cluster.address)."""
    from cluster.loop import train

    train(_recipe(args, overrides), resume=args.resume)
    return 0


def cmd_smoke(args: argparse.Namespace, overrides: list[str]) -> int:
    """Sample a few groups through a vLLM rollout worker in a Ray actor: a stack check, no training."""
    from cluster.smoke import run_smoke

    run_smoke(_recipe(args, overrides), num_prompts=args.prompts)
    return 0


def cmd_tiny_model(args: argparse.Namespace, overrides: list[str]) -> int:
    """Write a random-initialised tiny Qwen2 model and character tokenizer to a directory."""
    _no_overrides(overrides)
    from cluster.inputs.tiny_model import build_tiny_model, tiny_model_spec

    try:
        tiny = TinyModelConfig(hidden_size=args.hidden_size, num_layers=args.num_layers,
                               num_kv_heads=args.num_kv_heads, seed=args.seed)
        path = build_tiny_model(args.out, tiny_model_spec(tiny, RolloutConfig().max_model_len))
    except (ValueError, FileExistsError) as err:
        raise RecipeError("", str(err)) from None
    print(path)
    return 0


def cmd_data(args: argparse.Namespace, overrides: list[str]) -> int:
    """Write a built-in synthetic task (arithmetic, chain_sum, countdown) as a Parquet file."""
    _no_overrides(overrides)
    from cluster.inputs.tasks import write_task

    try:
        path = write_task(args.task, args.out, args.rows, seed=args.seed)
    except ValueError as err:
        raise RecipeError("", str(err)) from None
    print(path)
    return 0


def _no_overrides(overrides: list[str]) -> None:
    if overrides:
        raise RecipeError("", f"unexpected arguments: {' '.join(overrides)}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aha",
        description="Distributed actor/learner RL for reasoning models (GRPO, R1-Zero, distillation).",
        epilog="Recipe subcommands take overrides after the recipe: --section.key value",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser("train", help="run the GRPO loop of a recipe")
    train.add_argument("recipe", help="recipe TOML file")
    train.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    train.set_defaults(run=cmd_train)

    check = sub.add_parser("check", help="validate a recipe and print it resolved")
    check.add_argument("recipe", help="recipe TOML file")
    check.set_defaults(run=cmd_check)

    smoke = sub.add_parser("smoke", help="stack check: sample groups through a vLLM worker in a Ray actor, no training")
    smoke.add_argument("recipe", help="recipe TOML file")
    smoke.add_argument("--prompts", type=int, default=4, help="how many prompts to sample groups for")
    smoke.set_defaults(run=cmd_smoke)

    tiny = sub.add_parser("tiny-model", help="build a random-initialised tiny Qwen2 model")
    tiny.add_argument("out", help="directory to write")
    defaults = TinyModelConfig()  # the recipe's [model.tiny] defaults
    tiny.add_argument("--hidden-size", type=int, default=defaults.hidden_size)
    tiny.add_argument("--num-layers", type=int, default=defaults.num_layers)
    tiny.add_argument("--num-kv-heads", type=int, default=defaults.num_kv_heads)
    tiny.add_argument("--seed", type=int, default=defaults.seed)
    tiny.set_defaults(run=cmd_tiny_model)

    data = sub.add_parser("data", help="write a synthetic task's prompts as Parquet")
    data.add_argument("task", choices=TASK_NAMES)
    data.add_argument("out", help="Parquet file to write")
    data.add_argument("--rows", type=int, default=1000)
    data.add_argument("--seed", type=int, default=0)
    data.set_defaults(run=cmd_data)
    return parser


def main(argv: list[str] | None = None) -> int:
    from cluster.inputs.data import DataError

    parser = build_parser()
    args, overrides = parser.parse_known_args(argv)
    try:
        return args.run(args, overrides)
    except (RecipeError, DataError) as err:
        print(f"aha: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("aha: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
