"""The course's experiments without running them: each run's recipe, the report's table and
figure from hand-made metrics, and the course document naming only figures that an experiment
makes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cluster.commands.course import EXPERIMENTS, course, run_recipe, write_report
from cluster.output.course_report import first_and_last, read_seeds, value_range, verify_table
from cluster.recipe import RecipeError

REPO = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _records(verify: tuple[float, float], accuracy: tuple[float, float], steps: int = 4) -> list[dict]:
    """Metrics of a run evaluated before and after RL, with a training verify rate per step."""
    before = {"step": 0, "eval/verify_rate": verify[0], "eval/correction_rate": 0.0, "eval/accuracy": accuracy[0],
              "eval/sampled/accuracy_verified": None, "eval/sampled/accuracy_unverified": accuracy[0]}
    middle = [{"step": s, "verify_rate": verify[0] + (verify[1] - verify[0]) * s / steps} for s in range(1, steps)]
    after = {"step": steps, "verify_rate": verify[1], "eval/verify_rate": verify[1], "eval/correction_rate": 0.4,
             "eval/accuracy": accuracy[1], "eval/sampled/accuracy_verified": 0.75,
             "eval/sampled/accuracy_unverified": 0.25}
    return [before, *middle, after]


def _write(run_dir: Path, records: list[dict]) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def test_each_run_gets_its_seed_folders_and_its_own_corpus(tmp_path):
    verify = EXPERIMENTS["verify"]
    checks, control = (run_recipe(verify, run, 3, tmp_path, ["--run.steps", "5"]) for run in verify.runs)
    for recipe, name in ((checks, "checks"), (control, "control")):
        assert (recipe.model.tiny.seed, recipe.model.pretrain.seed, recipe.run.seed) == (3, 3, 3)
        assert recipe.run.output_dir == str(tmp_path / "verify" / "seed-3" / name)
        assert recipe.model.path == str(tmp_path / "verify" / "seed-3" / f"{name}-base")
        assert recipe.data.eval_path == str(tmp_path / "verify" / "data" / "pair-sum-eval.parquet")
        assert recipe.run.steps == 5  # the user's overrides reach every run
    assert (checks.model.pretrain.checked_fraction, checks.model.pretrain.exercise_fraction) == (0.06, 0.4)
    assert (control.model.pretrain.checked_fraction, control.model.pretrain.exercise_fraction) == (0, 0)


def test_unknown_experiment_or_bad_override_is_one_error_before_anything_runs(tmp_path):
    with pytest.raises(RecipeError, match="unknown experiment 'nope' \\(experiments: verify, all\\)"):
        course("nope", seed=0, root=tmp_path, overrides=[])
    with pytest.raises(RecipeError, match="run.stepz"):
        course("verify", seed=0, root=tmp_path, overrides=["--run.stepz", "3"])
    assert not any(tmp_path.iterdir())


def test_report_table_and_figure_cover_every_finished_seed(tmp_path):
    home = tmp_path / "verify"
    _write(home / "seed-0" / "checks", _records((0.01, 0.9), (0.10, 0.70)))
    _write(home / "seed-0" / "control", _records((0.0, 0.0), (0.12, 0.15)))
    _write(home / "seed-1" / "checks", _records((0.02, 1.0), (0.08, 0.60)))
    _write(home / "seed-1" / "control", _records((0.0, 0.0), (0.10, 0.20)))
    _write(home / "seed-2" / "checks", _records((0.0, 0.5), (0.1, 0.3)))  # its control never ran: left out
    assert list(read_seeds(home, ["checks", "control"])) == [0, 1]

    table_path = write_report(EXPERIMENTS["verify"], tmp_path, figures=tmp_path / "figures")
    table = table_path.read_text()
    assert "| 0 | checks | 1.0% → 90.0% | 0.0% → 40.0% | 10.0% → 70.0% | 75.0% / 25.0% |" in table
    assert "| 1 | control | 0.0% → 0.0% | 0.0% → 40.0% | 10.0% → 20.0% | 75.0% / 25.0% |" in table
    assert "| all (2) | checks, after RL | 90.0–100.0% | 40.0% | 60.0–70.0% | 75.0% / 25.0% |" in table
    assert "| all (2) | control, after RL | 0.0% | 40.0% | 15.0–20.0% | 75.0% / 25.0% |" in table
    for figure in (tmp_path / "verify.png", tmp_path / "figures" / "verify.png"):
        assert figure.read_bytes().startswith(PNG_SIGNATURE)


def test_report_helpers():
    records = [{"step": 0, "x": 0.5}, {"step": 1}, {"step": 2, "x": True}, {"step": 3, "x": 0.25}]
    assert first_and_last(records, "x") == (0.5, 0.25)  # booleans and gaps are not values
    assert first_and_last(records, "y") == (None, None)
    assert value_range([0.2, None, 0.1]) == "10.0–20.0%"
    assert value_range([None]) == "–"
    assert verify_table({}).count("\n") == 2  # no seed yet: the header only


def test_the_course_document_shows_only_figures_an_experiment_makes():
    text = (REPO / "docs" / "course.md").read_text(encoding="utf-8")
    shown = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert shown, "docs/course.md shows no figure"
    made = {experiment.figure for experiment in EXPERIMENTS.values()}
    for link in shown:
        assert link.startswith("course/") and Path(link).name in made, link
        assert (REPO / "docs" / link).read_bytes().startswith(PNG_SIGNATURE), link
