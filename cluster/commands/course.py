"""`aha course EXPERIMENT`: the course's experiments, each a few runs of shipped recipes and a
report (a table and a figure) that compares them.

    aha course verify                 # self-verification emerging, and its control
    aha course verify --seed 1        # one more seed: the report shows every seed and the range
    aha course group-size             # a GRPO ablation on the demo's task
    aha course group-size --gpu       # the same comparison on its GPU recipe, at real scale
    aha course all                    # every experiment in turn
    aha course verify --run.steps 3   # overrides go to every run of the experiment

A run goes to <root>/<folder>/seed-<n>/<run>/ with its base model beside it, seeded by the seed
(model init, corpus, RL). A finished run with the same recipe is reused, so a second call only
redraws the report, and experiments that share a folder share their identical runs (the GRPO
ablations share their baseline); an unfinished or changed run runs afresh. The report,
<root>/<experiment>.md and .png, covers every seed under the folder; `--figures DIR` writes the
figure there too (docs/course/ holds the ones the course document shows).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from cluster.output.course import ablations, common, cot, reasoning, verify
from cluster.output.run_dir import RECIPE_FILE
from cluster.output.run_log import atomic_write, read_metrics
from cluster.recipe import Recipe, RecipeError, load_recipe, recipe_to_dict

RECIPES = Path(__file__).resolve().parents[2] / "deploy" / "recipes"

# What makes a run this run: fixed settings, or settings worked out from the recipe it runs on
# (with the user's overrides), e.g. a group size at the recipe's own samples per step.
RunSettings = Mapping[str, object] | Callable[[Recipe], Mapping[str, object]]


@dataclass(frozen=True)
class CourseRun:
    """One run of an experiment: a recipe (a file under deploy/recipes/) and its own settings,
    which win over the user's overrides: they are what the experiment compares."""

    name: str
    recipe: str
    settings: RunSettings = field(default_factory=dict)
    base: str = ""  # its base model's folder beside it; "": <name>-base (runs with one corpus share one)
    command: str = "train"  # train (GRPO) or sft (on traces the run's [data.synthetic] writes)


@dataclass(frozen=True)
class Experiment:
    """Runs and the report drawn from them: `table(seeds)` (markdown) and `plot(path, seeds)`."""

    name: str
    title: str
    runs: tuple[CourseRun, ...]
    table: Callable
    plot: Callable
    folder: str = ""  # where its runs go under the root ("": its name); shared folders share runs
    gpu_recipe: str = ""  # a file under deploy/recipes/ that every run uses instead with --gpu

    @property
    def figure(self) -> str:
        return f"{self.name}.png"

    def home(self, root: Path, gpu: bool = False) -> Path:
        return root / f"{self.folder or self.name}{'-gpu' if gpu else ''}"


def equal_samples(group_size: int) -> Callable[[Recipe], dict]:
    """GRPO with `group_size` completions per prompt, and as many prompts as keep the recipe's
    samples per step: every run of the ablation pays the same generation and training."""
    def settings(recipe: Recipe) -> dict:
        samples = recipe.rollout.prompts_per_step * recipe.rollout.group_size
        if samples % group_size:
            raise RecipeError("rollout.prompts_per_step", f"{samples} samples per step do not make groups of "
                                                          f"{group_size}")
        return {**GRPO, "rollout.group_size": group_size, "rollout.prompts_per_step": samples // group_size}
    return settings


# The GRPO ablations run on the demo's recipe; each run sets all three things compared, so the
# baseline is the same recipe in all three experiments (run once, shared). Evaluations every 5
# steps, greedy only: the curve is what the figures show.
DEMO, ABLATIONS = "arith-zero-cpu.toml", "grpo"
GRPO = {"algorithm.estimator": "grpo", "algorithm.kl_coef": 0.0, "eval.every": 5, "eval.k": "[]",
        "eval.budgets": "[]"}
KL_COEFS = (0.1, 1.0)  # per token, k3: a usual weight, and one strong enough to hold the policy near its base
ABLATION_GPU = "gsm8k-qwen2.5-1.5b.toml"
BASELINE = CourseRun("g8", DEMO, equal_samples(8), base="base")


def _ablation(name: str, **settings: object) -> CourseRun:
    def with_baseline_groups(recipe: Recipe) -> dict:
        return {**BASELINE.settings(recipe), **settings}
    return CourseRun(name, DEMO, with_baseline_groups, base="base")


def _ablation_experiment(name: str, title: str, view: ablations.Ablation, runs: tuple) -> Experiment:
    """A GRPO ablation: runs in the shared folder, the ablation's table and figure, its GPU recipe."""
    return Experiment(name=name, title=title, runs=runs, table=partial(ablations.ablation_table, view),
                      plot=partial(ablations.plot_ablation, view), folder=ABLATIONS, gpu_recipe=ABLATION_GPU)


# Chain of thought: the demo's RL with room to think, and with the answer forced at once (the
# template closes the thinking: the hasty answers of the base corpus follow it). Both evaluated
# every 5 steps; the one that thinks also under thinking budgets forced as s1 does.
FORCE_ANSWER = "</think><answer>"
THINKING_BUDGETS = "[0, 4, 8, 12, 16, 20, 24, 32, 48]"
COT = {"eval.every": 5, "eval.k": "[]", "algorithm.kl_coef": 0.0,
       "model.pretrain.template": "{prompt}=? <think>"}  # one base: both corpora written as the demo's


# Reasoning model vs standard model: one base made a reasoning model (the demo's R1-Zero run) and
# a direct-answer model (SFT on the right answers alone, no working), each measured before (the
# base) and after on the same problems: accuracy, pass@k, maj@k, tokens, forced thinking budgets.
MEASURE = {"eval.every": 0, "eval.k": "[1, 4, 16]", "eval.budgets": THINKING_BUDGETS, "eval.force_answer": FORCE_ANSWER,
           "algorithm.kl_coef": 0.0}
DIRECT = {**MEASURE, "data.synthetic.cold_start_traces": 4000, "data.synthetic.cold_start_style": "direct",
          "sft.epochs": 2, "sft.batch_size": 32, "learner.lr": 3e-4}


EXPERIMENTS = {
    "verify": Experiment(
        name="verify",
        title="Self-verification and self-correction emerge from RL on the final answer",
        runs=(CourseRun("checks", "course/self-verification-cpu.toml"),
              CourseRun("control", "course/self-verification-cpu.toml",
                        {"model.pretrain.checked_fraction": 0, "model.pretrain.exercise_fraction": 0})),
        table=verify.verify_table,
        plot=verify.plot_verify,
    ),
    "reasoning": Experiment(
        name="reasoning",
        title="A reasoning model against a direct-answer model made from the same base",
        runs=(CourseRun("reasoning", DEMO, MEASURE, base="base"),
              CourseRun("direct", DEMO, DIRECT, base="base", command="sft")),
        table=reasoning.reasoning_table,
        plot=reasoning.plot_reasoning,
    ),
    "cot": Experiment(
        name="cot",
        title="Chain of thought: room to think against the answer forced at once",
        runs=(CourseRun("think", DEMO, {**COT, "eval.budgets": THINKING_BUDGETS, "eval.force_answer": FORCE_ANSWER},
                        base="base"),
              CourseRun("answer-at-once", DEMO, {**COT, "eval.budgets": "[]", "data.max_prompt_tokens": 48,
                                                 "data.template": "{prompt}=? <think>" + FORCE_ANSWER}, base="base")),
        table=cot.cot_table,
        plot=cot.plot_cot,
    ),
    "group-size": _ablation_experiment(
        "group-size", "GRPO's group size at equal samples per step", ablations.GROUP_SIZE,
        tuple(CourseRun(f"g{g}", DEMO, equal_samples(g), base="base") if g != 8 else BASELINE for g in (2, 4, 8, 16))),
    "estimators": _ablation_experiment(
        "estimators", "Group-relative advantage estimators: GRPO, Dr. GRPO, RLOO", ablations.ESTIMATORS,
        (BASELINE, _ablation("dr_grpo", **{"algorithm.estimator": "dr_grpo"}),
         _ablation("rloo", **{"algorithm.estimator": "rloo"}))),
    "kl": _ablation_experiment(
        "kl", "A KL penalty to the frozen base model, against none", ablations.KL,
        (BASELINE, *(_ablation(f"kl-{coef:g}", **{"algorithm.kl_coef": coef}) for coef in KL_COEFS))),
}


def run_recipe(experiment: Experiment, run: CourseRun, seed: int, root: Path, overrides: list[str],
               gpu: bool = False) -> Recipe:
    """The run's recipe: its recipe file (the experiment's GPU recipe with `gpu`), the user's
    `overrides`, then the run's own settings and its seed and folders."""
    recipe_file = RECIPES / (experiment.gpu_recipe if gpu else run.recipe)
    users = load_recipe(recipe_file, overrides)
    own = run.settings(users) if callable(run.settings) else run.settings
    home = experiment.home(root, gpu)
    seed_dir = home / f"seed-{seed}"
    settings = {**own, "run.seed": seed, "run.output_dir": str(seed_dir / run.name)}
    if users.model.tiny is not None:  # built here: each seed its own init, beside the runs
        settings.update({"model.tiny.seed": seed, "model.path": str(seed_dir / (run.base or f"{run.name}-base"))})
    if users.model.pretrain is not None:
        settings["model.pretrain.seed"] = seed
    if users.data.synthetic is not None:  # one data set per folder: every run measured on the same problems
        settings.update({"data.train_path": str(home / "data" / Path(users.data.train_path).name),
                         "data.eval_path": str(home / "data" / Path(users.data.eval_path).name)})
    if run.command == "sft":  # it trains on the traces its [data.synthetic] writes, beside the data
        traces = str(home / "data" / f"{run.name}-traces.parquet")
        settings.update({"data.synthetic.cold_start_path": traces, "sft.train_path": traces})
    pairs = [item for key, value in settings.items() for item in (f"--{key}", str(value))]
    return load_recipe(recipe_file, list(overrides) + pairs)


def run_experiment(experiment: Experiment, recipes: list[Recipe], *, seed: int, root: Path,
                   figures: Path | None = None, gpu: bool = False) -> Path:
    """Every run of `experiment` for `seed`, from its checked `recipes` (`run_recipe`, one per run;
    finished ones reused), then its report; returns the report's table."""
    from cluster.commands.sft import sft
    from cluster.commands.train import train

    for number, (run, recipe) in enumerate(zip(experiment.runs, recipes), 1):
        where = Path(recipe.run.output_dir)
        label = f"[aha] course {experiment.name}, seed {seed}, run {number}/{len(recipes)} ({run.name})"
        if _finished(recipe, run.command):
            print(f"{label}: finished before, reused ({where})", flush=True)
            continue
        print(f"{label}: {where}", flush=True)
        (sft if run.command == "sft" else train)(recipe, overwrite=where.exists())
    return write_report(experiment, root, figures, gpu)


def write_report(experiment: Experiment, root: Path, figures: Path | None = None, gpu: bool = False) -> Path:
    """The experiment's table and figure over every seed run so far; returns the table's path."""
    seeds = common.read_seeds(experiment.home(root, gpu), [run.name for run in experiment.runs])
    root.mkdir(parents=True, exist_ok=True)
    name = f"{experiment.name}{'-gpu' if gpu else ''}"
    table = root / f"{name}.md"
    text = f"# {experiment.title}\n\n{experiment.table(seeds)}"
    atomic_write(table, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    figure = experiment.plot(root / f"{name}.png", seeds)
    if figures is not None:
        figures.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(figure, figures / figure.name)
    print(f"[aha] course {name}: {len(seeds)} seed(s), table {table}, figure {figure}", flush=True)
    print(text, flush=True)
    return table


def _finished(recipe: Recipe, command: str = "train") -> bool:
    """The run left final/ (GRPO: after run.steps) and was made by this very recipe."""
    out = Path(recipe.run.output_dir)
    records = read_metrics(out)
    if not (out / "final").is_dir() or not records:
        return False
    if command == "train" and records[-1].get("step") != recipe.run.steps:
        return False
    try:
        saved = json.loads((out / RECIPE_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return saved == json.loads(json.dumps(recipe_to_dict(recipe)))


def course(name: str, *, seed: int, root: Path, overrides: list[str], figures: Path | None = None,
           gpu: bool = False) -> list[Path]:
    """`aha course NAME` (or "all"); returns the reports' tables. With `gpu`, each experiment's
    runs use its GPU recipe (`all`: every experiment that has one)."""
    if name != "all" and name not in EXPERIMENTS:
        raise RecipeError("", f"unknown experiment '{name}' (experiments: {', '.join(EXPERIMENTS)}, all)")
    chosen = list(EXPERIMENTS.values()) if name == "all" else [EXPERIMENTS[name]]
    if gpu:
        if name != "all" and not chosen[0].gpu_recipe:
            with_gpu = ", ".join(e.name for e in EXPERIMENTS.values() if e.gpu_recipe)
            raise RecipeError("", f"experiment '{name}' has no GPU recipe yet (--gpu: {with_gpu})")
        chosen = [e for e in chosen if e.gpu_recipe]
    # every run's recipe loaded and checked before the first run starts
    planned = [(e, [run_recipe(e, run, seed, root, overrides, gpu) for run in e.runs]) for e in chosen]
    return [run_experiment(e, recipes, seed=seed, root=root, figures=figures, gpu=gpu) for e, recipes in planned]
