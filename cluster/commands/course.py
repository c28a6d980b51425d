"""`aha course EXPERIMENT`: the course's experiments, each a few runs of shipped recipes and a
report (a table and a figure) that compares them.

    aha course verify                 # self-verification emerging, and its control
    aha course verify --seed 1        # one more seed: the report shows every seed and the range
    aha course all                    # every experiment in turn
    aha course verify --run.steps 3   # overrides go to every run of the experiment

A run goes to <root>/<experiment>/seed-<n>/<run>/ with its own base model beside it
(<run>-base/), seeded by the seed (model init, corpus, RL). A finished run with the same
recipe is reused, so a second call only redraws the report; an unfinished or changed one runs
afresh. The report, <root>/<experiment>.md and .png, covers every seed under the experiment's
folder; `--figures DIR` writes the figure there too (docs/course/ holds the ones the course
document shows).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cluster.output import course_report
from cluster.output.run_dir import RECIPE_FILE
from cluster.output.run_log import atomic_write, read_metrics
from cluster.recipe import Recipe, RecipeError, load_recipe, recipe_to_dict

COURSE_RECIPES = Path(__file__).resolve().parents[2] / "deploy" / "recipes" / "course"


@dataclass(frozen=True)
class CourseRun:
    """One run of an experiment: a course recipe and the overrides that make it this run."""

    name: str
    recipe: str  # a file in deploy/recipes/course/
    overrides: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class Experiment:
    """Runs and the report drawn from them: `table(seeds)` (markdown) and `plot(path, seeds)`."""

    name: str
    title: str
    runs: tuple[CourseRun, ...]
    table: Callable
    plot: Callable

    @property
    def figure(self) -> str:
        return f"{self.name}.png"


EXPERIMENTS = {
    "verify": Experiment(
        name="verify",
        title="Self-verification and self-correction emerge from RL on the final answer",
        runs=(CourseRun("checks", "self-verification-cpu.toml"),
              CourseRun("control", "self-verification-cpu.toml",
                        {"model.pretrain.checked_fraction": 0, "model.pretrain.exercise_fraction": 0})),
        table=course_report.verify_table,
        plot=course_report.plot_verify,
    ),
}


def run_recipe(experiment: Experiment, run: CourseRun, seed: int, root: Path, overrides: list[str]) -> Recipe:
    """The run's recipe: its course recipe, the run's own overrides, its seed and folders, then
    the user's `overrides` (which win)."""
    recipe_file = COURSE_RECIPES / run.recipe
    shipped = load_recipe(recipe_file)
    home, seed_dir = root / experiment.name, root / experiment.name / f"seed-{seed}"
    settings = {**run.overrides, "model.tiny.seed": seed, "model.pretrain.seed": seed, "run.seed": seed,
                "model.path": str(seed_dir / f"{run.name}-base"), "run.output_dir": str(seed_dir / run.name),
                # one data set per experiment: every seed and run is measured on the same held-out problems
                "data.train_path": str(home / "data" / Path(shipped.data.train_path).name),
                "data.eval_path": str(home / "data" / Path(shipped.data.eval_path).name)}
    pairs = [item for key, value in settings.items() for item in (f"--{key}", str(value))]
    return load_recipe(recipe_file, pairs + list(overrides))


def run_experiment(experiment: Experiment, *, seed: int, root: Path, overrides: list[str],
                   figures: Path | None = None) -> Path:
    """Every run of `experiment` for `seed` (finished ones reused), then its report; returns the
    report's table. All recipes are loaded and checked before the first run starts."""
    from cluster.commands.train import train

    recipes = [run_recipe(experiment, run, seed, root, overrides) for run in experiment.runs]
    for number, (run, recipe) in enumerate(zip(experiment.runs, recipes), 1):
        where = Path(recipe.run.output_dir)
        label = f"[aha] course {experiment.name}, seed {seed}, run {number}/{len(recipes)} ({run.name})"
        if _finished(recipe):
            print(f"{label}: finished before, reused ({where})", flush=True)
            continue
        print(f"{label}: {where}", flush=True)
        train(recipe, overwrite=where.exists())
    return write_report(experiment, root, figures)


def write_report(experiment: Experiment, root: Path, figures: Path | None = None) -> Path:
    """The experiment's table and figure over every seed run so far; returns the table's path."""
    seeds = course_report.read_seeds(root / experiment.name, [run.name for run in experiment.runs])
    root.mkdir(parents=True, exist_ok=True)
    table = root / f"{experiment.name}.md"
    text = f"# {experiment.title}\n\n{experiment.table(seeds)}"
    atomic_write(table, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    figure = experiment.plot(root / experiment.figure, seeds)
    if figures is not None:
        figures.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(figure, figures / experiment.figure)
    print(f"[aha] course {experiment.name}: {len(seeds)} seed(s), table {table}, figure {figure}", flush=True)
    print(text, flush=True)
    return table


def _finished(recipe: Recipe) -> bool:
    """The run reached run.steps, left final/, and was made by this very recipe."""
    out = Path(recipe.run.output_dir)
    records = read_metrics(out)
    if not (out / "final").is_dir() or not records or records[-1].get("step") != recipe.run.steps:
        return False
    try:
        saved = json.loads((out / RECIPE_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return saved == json.loads(json.dumps(recipe_to_dict(recipe)))


def course(name: str, *, seed: int, root: Path, overrides: list[str], figures: Path | None = None) -> list[Path]:
    """`aha course NAME` (or "all"); returns the reports' tables."""
    if name != "all" and name not in EXPERIMENTS:
        raise RecipeError("", f"unknown experiment '{name}' (experiments: {', '.join(EXPERIMENTS)}, all)")
    chosen = list(EXPERIMENTS.values()) if name == "all" else [EXPERIMENTS[name]]
    return [run_experiment(e, seed=seed, root=root, overrides=overrides, figures=figures) for e in chosen]
