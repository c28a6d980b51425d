"""The `aha` command line.

Every subcommand that takes a recipe accepts `--section.key value` overrides after it. Bad
input (recipe, overrides, data files) ends in one line on stderr and exit code 2, never a
traceback; a run that fails for a reason the user can act on (`RunFailed`: a non-finite loss,
say) ends in one line and exit code 1. Heavy imports happen inside the subcommands, so
`aha --help` and recipe checks are quick.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

from cluster.recipe import Recipe, RecipeError, load_recipe, recipe_to_dict
from cluster.recipe.schema import TASK_NAMES, SyntheticDataConfig, TinyModelConfig
from cluster.wire.errors import RunFailed, RunInterrupted, original_failure

EXIT_BAD_INPUT = 2
EXIT_RUN_FAILED = 1


def _recipe(args: argparse.Namespace, overrides: list[str]) -> Recipe:
    return load_recipe(args.recipe, overrides)


def cmd_check(args: argparse.Namespace, overrides: list[str]) -> int:
    """Validate a recipe with its overrides, and what it points at (rewards, data files, model,
    memory: cluster/startup/preflight.py), then print it fully resolved, as JSON. Writes nothing."""
    from cluster.startup.preflight import check_before_start, check_existing, print_warnings

    if args.explain:  # no recipe: one key's reference
        from cluster.recipe.reference import print_explanation
        return print_explanation(args.explain, overrides)
    recipe = _recipe(args, overrides)
    with contextlib.redirect_stdout(sys.stderr):  # stdout is the JSON, whatever a user module prints
        warnings = check_before_start(recipe) + check_existing(recipe)
    print_warnings(warnings)
    print(json.dumps(recipe_to_dict(recipe), indent=2))
    return 0


def _run_job(driver, args: argparse.Namespace, overrides: list[str]) -> int:
    """A job that can resume or start afresh: `driver(recipe, resume=, overwrite=)`."""
    if args.resume and args.overwrite:
        raise RecipeError("", "--resume continues a run and --overwrite replaces it: pass one of them")
    driver(_recipe(args, overrides), resume=args.resume, overwrite=args.overwrite)
    return 0


def cmd_plan(args: argparse.Namespace, overrides: list[str]) -> int:
    """Where each role's actors would go (cluster/commands/plan.py). Starts no actor."""
    from cluster.commands.plan import plan

    print(f"placement of aha {args.command} {args.recipe} " + plan(_recipe(args, overrides), args.command,
                                                                  described=args.cluster))
    return 0


def cmd_submit(args: argparse.Namespace, overrides: list[str]) -> int:
    """An aha command on a running Ray cluster as a Ray job (cluster/commands/submit.py)."""
    from cluster.commands.submit import env_pairs, output_of, submit

    output_dir = output_of(args.command, args.recipe, overrides)
    return submit(args.command, output_dir, Path(args.recipe), overrides, address=args.address, python=args.python,
                  env=env_pairs(args.env), follow=args.follow, timeout_s=args.timeout,
                  submission_id=args.submission_id)


def cmd_train(args: argparse.Namespace, overrides: list[str]) -> int:
    """Run the GRPO loop of a recipe (locally, or on the Ray cluster at cluster.address)."""
    from cluster.commands.train import train

    return _run_job(train, args, overrides)


def cmd_generate(args: argparse.Namespace, overrides: list[str]) -> int:
    """Rejection sampling: sample completions of the recipe's prompts, keep the verified ones as traces."""
    from cluster.commands.generate import generate

    return _run_job(generate, args, overrides)


def cmd_sft(args: argparse.Namespace, overrides: list[str]) -> int:
    """Supervised fine-tuning of the recipe's model on a trace data set (sft.train_path)."""
    from cluster.commands.sft import sft

    return _run_job(sft, args, overrides)


def cmd_distill(args: argparse.Namespace, overrides: list[str]) -> int:
    """On-policy distillation of distill.teacher into the recipe's model."""
    from cluster.commands.distill import distill

    return _run_job(distill, args, overrides)


def cmd_course(args: argparse.Namespace, overrides: list[str]) -> int:
    """The course's experiments (cluster/commands/course.py); overrides go to every run."""
    from cluster.commands.course import course

    figures = Path(args.figures) if args.figures else None
    course(args.experiment, seed=args.seed, root=Path(args.root), overrides=overrides, figures=figures, gpu=args.gpu)
    return 0


def cmd_export(args: argparse.Namespace, overrides: list[str]) -> int:
    """Turn a run's checkpoint into a Hugging Face model directory."""
    _no_overrides(overrides)
    from cluster.commands.export import export_checkpoint

    print(export_checkpoint(args.run_dir, args.out, step=args.step, overwrite=args.overwrite))
    return 0


def cmd_eval(args: argparse.Namespace, overrides: list[str]) -> int:
    """Held-out evaluation of one or more models through rollout workers and scorers."""
    from cluster.commands.eval import run_eval

    run_eval(_recipe(args, overrides), args.model or [], out=args.out, overwrite=args.overwrite)
    return 0


def cmd_pipeline(args: argparse.Namespace, overrides: list[str]) -> int:
    """Run a pipeline recipe's stages in order, skipping finished ones, then evaluate each stage's model."""
    from cluster.recipe.pipeline import load_pipeline

    pipeline = load_pipeline(args.recipe, overrides)  # every stage's recipe checked before anything runs
    if args.overwrite and args.start_from:
        raise RecipeError("", "--overwrite reruns every stage and --from the stages from one on: pass one of them")
    from cluster.commands.pipeline import run_pipeline

    run_pipeline(pipeline, overwrite=args.overwrite, start_from=args.start_from)
    return 0


def cmd_smoke(args: argparse.Namespace, overrides: list[str]) -> int:
    """Sample a few groups through a vLLM rollout worker in a Ray actor: a stack check, no training."""
    from cluster.commands.smoke import run_smoke

    if args.prompts < 1:
        raise RecipeError("--prompts", f"must be >= 1, got {args.prompts}")
    run_smoke(_recipe(args, overrides), num_prompts=args.prompts)
    return 0


def cmd_tiny_model(args: argparse.Namespace, overrides: list[str]) -> int:
    """Write a random-initialised tiny Qwen2 model and character tokenizer to a directory."""
    _no_overrides(overrides)
    from cluster.commands.tiny_model import tiny_model

    tiny = TinyModelConfig(hidden_size=args.hidden_size, num_layers=args.num_layers,
                           num_kv_heads=args.num_kv_heads, seed=args.seed)
    print(tiny_model(args.out, tiny, overwrite=args.overwrite))
    return 0


def cmd_data(args: argparse.Namespace, overrides: list[str]) -> int:
    """Write a built-in synthetic task (arithmetic, chain_sum, countdown, pair_sum) as Parquet or JSONL (by suffix)."""
    _no_overrides(overrides)
    from cluster.inputs.tasks import write_task

    try:
        path = write_task(args.task, args.out, args.rows, seed=args.seed, overwrite=args.overwrite)
    except (ValueError, FileExistsError) as err:
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
    train.add_argument("--resume", action="store_true", help="continue from the run's last complete checkpoint")
    train.add_argument("--overwrite", action="store_true",
                       help="start afresh in an output directory whose earlier run has checkpoints (deletes them)")
    train.set_defaults(run=cmd_train)

    from cluster.recipe.placement import JOBS

    plan = sub.add_parser("plan", help="print where each role's actors go on a cluster (starts nothing)")
    plan.add_argument("recipe", help="recipe TOML file")
    plan.add_argument("--cluster", default="", help="a cluster description (deploy/clusters/*.toml) or NxG[xC]: "
                      "N nodes of G GPUs (and C CPUs, default 16 per GPU); default: the running cluster at "
                      "cluster.address, else this machine")
    plan.add_argument("--command", choices=JOBS, default="train",
                      help="the aha command whose actors to place (train; sft starts rollout workers and scorers "
                      "only with data.eval_path, generate and eval no learner)")
    plan.set_defaults(run=cmd_plan)

    from cluster.commands.submit import COMMANDS, default_address

    submit = sub.add_parser("submit", help="run an aha command on a running Ray cluster as a Ray job")
    submit.add_argument("recipe", help="recipe TOML file, inside this directory (it is shipped as the job's)")
    submit.add_argument("--command", choices=COMMANDS, default="train", help="the aha command to run (train)")
    submit.add_argument("--address", default=default_address(),
                        help="the cluster's job API (dashboard) URL; default: $RAY_ADDRESS or %(default)s")
    submit.add_argument("--python", default="python", help="the cluster's Python that has aha's dependencies")
    submit.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="an environment variable for the job (repeatable)")
    submit.add_argument("--follow", action="store_true", help="stream the job's logs; exit with its status")
    submit.add_argument("--timeout", type=float, default=0.0,
                        help="with --follow: stop following after this many seconds (0: until the job ends)")
    submit.add_argument("--submission-id", default="", help="the job's id (default: Ray makes one)")
    submit.set_defaults(run=cmd_submit)

    generate = sub.add_parser("generate", help="rejection sampling: sample completions of the recipe's prompts, "
                              "keep the verified ones as a trace data set")
    generate.add_argument("recipe", help="recipe TOML file ([generate], data.train_path, [rollout], [reward])")
    generate.add_argument("--resume", action="store_true",
                          help="continue an interrupted run, skipping the prompts it finished")
    generate.add_argument("--overwrite", action="store_true",
                          help="start afresh in an output directory holding an earlier generate run (deletes it)")
    generate.set_defaults(run=cmd_generate)

    sft = sub.add_parser("sft", help="supervised fine-tuning on a trace data set (prompt + completion, or messages)")
    sft.add_argument("recipe", help="recipe TOML file ([sft], [learner], data.template; data.eval_path for accuracy)")
    sft.add_argument("--resume", action="store_true", help="continue from the run's last complete checkpoint")
    sft.add_argument("--overwrite", action="store_true",
                     help="start afresh in an output directory whose earlier run has checkpoints (deletes them)")
    sft.set_defaults(run=cmd_sft)

    distill = sub.add_parser("distill", help="on-policy distillation: the student samples, a frozen teacher "
                             "grades every token (per-token reverse KL)")
    distill.add_argument("recipe", help="recipe TOML file ([distill] teacher, loss, kl_coef; the student is "
                         "model.path)")
    distill.add_argument("--resume", action="store_true", help="continue from the run's last complete checkpoint")
    distill.add_argument("--overwrite", action="store_true",
                         help="start afresh in an output directory whose earlier run has checkpoints (deletes them)")
    distill.set_defaults(run=cmd_distill)

    export = sub.add_parser("export", help="write a run's checkpoint as a Hugging Face model directory")
    export.add_argument("run_dir", help="the run's output directory")
    export.add_argument("out", help="the model directory to write (new or empty)")
    export.add_argument("--step", type=int, default=None, help="the step of a kept checkpoint (default: the newest)")
    export.add_argument("--overwrite", action="store_true", help="replace an earlier export in OUT")
    export.set_defaults(run=cmd_export)

    evaluate = sub.add_parser("eval", help="held-out accuracy, pass@k, maj@k and accuracy by token budget of "
                              "one or more models, side by side")
    evaluate.add_argument("recipe", help="recipe TOML file (data.eval_path, template, rewards, [eval])")
    evaluate.add_argument("--model", action="append", metavar="PATH_OR_HUB_ID",
                          help="a model to evaluate: hub id, local directory or a run's final/; repeat to compare "
                               "(default: the recipe's model.path)")
    evaluate.add_argument("--out", default=None,
                          help="output directory: new, empty, or an earlier aha eval's (default: runs/<run.name>-eval)")
    evaluate.add_argument("--overwrite", action="store_true", help="replace an earlier evaluation's results in --out")
    evaluate.set_defaults(run=cmd_eval)

    pipeline = sub.add_parser("pipeline", help="run chained stages (sft, train, generate, eval), each from an "
                              "earlier stage's final/; a rerun skips finished stages")
    pipeline.add_argument("recipe", help="pipeline recipe TOML file: a base recipe, [pipeline] and [stages.<name>]")
    pipeline.add_argument("--overwrite", action="store_true", help="run every stage afresh (deletes their outputs)")
    pipeline.add_argument("--from", dest="start_from", metavar="STAGE", default=None,
                          help="run this stage and every later one afresh; the earlier ones must be finished")
    pipeline.set_defaults(run=cmd_pipeline)

    course = sub.add_parser("course", help="run a course experiment (verify, group-size, estimators, kl, ...) and "
                                           "draw its report: a table and a figure over every seed run")
    course.add_argument("experiment", help="an experiment's name, or all")
    course.add_argument("--seed", type=int, default=0, help="seed of the runs' model init, corpus and RL (default 0)")
    course.add_argument("--root", default="runs/course", help="where the runs and reports go (default runs/course)")
    course.add_argument("--figures", default=None, metavar="DIR", help="also write each report's figure into DIR")
    course.add_argument("--gpu", action="store_true", help="run the experiment's GPU recipe instead (real models "
                                                           "and data, a GPU cluster): the same comparison at scale")
    course.set_defaults(run=cmd_course)

    check = sub.add_parser("check", help="validate a recipe and print it resolved")
    what = check.add_mutually_exclusive_group(required=True)
    what.add_argument("recipe", nargs="?", help="recipe TOML file")
    what.add_argument("--explain", metavar="KEY", help="print a key's (algorithm.clip_high) or a table's (rollout) "
                                                       "type, default, whether --resume may change it, and meaning")
    check.set_defaults(run=cmd_check)

    smoke = sub.add_parser("smoke", help="stack check: sample groups through a vLLM worker in a Ray actor, no training")
    smoke.add_argument("recipe", help="recipe TOML file")
    smoke.add_argument("--prompts", type=int, default=4, help="how many prompts to sample groups for")
    smoke.set_defaults(run=cmd_smoke)

    tiny = sub.add_parser("tiny-model", help="build a random-initialised tiny Qwen2 model")
    tiny.add_argument("out", help="directory to write (new or empty)")
    tiny.add_argument("--overwrite", action="store_true", help="replace a model directory aha wrote there")
    defaults = TinyModelConfig()  # the recipe's [model.tiny] defaults
    tiny.add_argument("--hidden-size", type=int, default=defaults.hidden_size)
    tiny.add_argument("--num-layers", type=int, default=defaults.num_layers)
    tiny.add_argument("--num-kv-heads", type=int, default=defaults.num_kv_heads)
    tiny.add_argument("--seed", type=int, default=defaults.seed)
    tiny.set_defaults(run=cmd_tiny_model)

    data = sub.add_parser("data", help="write a synthetic task's prompts as Parquet")
    data.add_argument("task", choices=TASK_NAMES)
    data.add_argument("out", help="file to write: .parquet/.pq or .jsonl/.json")
    data.add_argument("--overwrite", action="store_true", help="replace an existing file")
    synthetic = SyntheticDataConfig()  # [data.synthetic]'s defaults: `aha data` writes what a recipe would
    data.add_argument("--rows", type=int, default=synthetic.train_rows)
    data.add_argument("--seed", type=int, default=synthetic.seed)
    data.set_defaults(run=cmd_data)
    return parser


def main(argv: list[str] | None = None) -> int:
    from cluster.run.chaos import ChaosError
    from cluster.recipe.placement import ClusterSpecError, PlacementError
    from cluster.inputs.data import DataError
    from cluster.output.checkpoints import CheckpointError
    from cluster.output.run_dir import RunDirError
    from cluster.run.stop import RunStopped, resume_command

    parser = build_parser()
    args, overrides = parser.parse_known_args(argv)
    try:
        return args.run(args, overrides)
    except (RecipeError, DataError, RunDirError, CheckpointError, ChaosError, PlacementError, ClusterSpecError) as err:
        print(f"aha: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except RunFailed as err:  # also a Ray actor's error that wraps one (Ray makes it an instance of both)
        failure = original_failure(err)
        print(f"aha: error: {failure}", file=sys.stderr)
        if isinstance(failure, RunInterrupted) and failure.checkpoint is not None:  # it can go on from there
            command = sys.argv[1:] if argv is None else argv
            if failure.checkpoint:
                print(f"aha: the last complete checkpoint, {failure.checkpoint}, is intact; resume with: "
                      f"{resume_command(command)}", file=sys.stderr)
            else:
                print("aha: no checkpoint was written yet; start the run again (with --overwrite)", file=sys.stderr)
        return EXIT_RUN_FAILED
    except RunStopped as stopped:  # asked to stop (SIGTERM, Ctrl-C): the checkpoint is written
        print(f"[aha] {stopped}; resume with: {resume_command(sys.argv[1:] if argv is None else argv)}", flush=True)
        return 0
    except KeyboardInterrupt:
        print("aha: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
