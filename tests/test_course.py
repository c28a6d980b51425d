"""The course's experiments without running them: each run's recipe, the report's table and
figure from hand-made metrics, and the course document naming only figures that an experiment
makes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cluster.commands.course import EXPERIMENTS, course, run_recipe, write_report
from cluster.output.course.ablations import GROUP_SIZE, KL, ablation_table
from cluster.output.course.common import first_and_last, number_range, read_seeds, value_range
from cluster.output.course.verify import verify_table
from cluster.recipe import RecipeError, recipe_to_dict
from cluster.recipe.placement import cluster_spec_from_toml, plan_placement

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
    with pytest.raises(RecipeError, match="unknown experiment 'nope' \\(experiments: verify, reasoning, cot, group-size, "
                                          "estimators, kl, all\\)"):
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


# ---------------------------------------------------------------- the GRPO ablations

def _ablation_recipes(name: str, *overrides: str, root: Path, gpu: bool = False) -> dict:
    experiment = EXPERIMENTS[name]
    return {run.name: run_recipe(experiment, run, 2, root, list(overrides), gpu) for run in experiment.runs}


def test_group_sizes_keep_the_samples_per_step_and_share_one_base_and_data_set(tmp_path):
    runs = _ablation_recipes("group-size", root=tmp_path)
    assert {n: (r.rollout.group_size, r.rollout.prompts_per_step) for n, r in runs.items()} == \
        {"g2": (2, 64), "g4": (4, 32), "g8": (8, 16), "g16": (16, 8)}
    for name, recipe in runs.items():
        assert recipe.run.output_dir == str(tmp_path / "grpo" / "seed-2" / name)
        assert recipe.model.path == str(tmp_path / "grpo" / "seed-2" / "base")  # one pre-training per seed
        assert recipe.data.train_path == str(tmp_path / "grpo" / "data" / "chain-sum-train.parquet")
        assert (recipe.algorithm.estimator, recipe.algorithm.kl_coef) == ("grpo", 0.0)
    # the user's samples per step are kept too; the run's own group size wins over the user's
    small = _ablation_recipes("group-size", "--rollout.prompts_per_step", "4", "--rollout.group_size", "4",
                              root=tmp_path)
    assert {n: (r.rollout.group_size, r.rollout.prompts_per_step) for n, r in small.items()} == \
        {"g2": (2, 8), "g4": (4, 4), "g8": (8, 2), "g16": (16, 1)}


def test_the_baseline_is_one_run_shared_by_the_three_ablations(tmp_path):
    baselines = [recipe_to_dict(_ablation_recipes(name, root=tmp_path)["g8"])
                 for name in ("group-size", "estimators", "kl")]
    assert baselines[0] == baselines[1] == baselines[2]  # same folder, same recipe: trained once, reused
    estimators = _ablation_recipes("estimators", root=tmp_path)
    assert {n: r.algorithm.estimator for n, r in estimators.items()} == {"g8": "grpo", "dr_grpo": "dr_grpo",
                                                                         "rloo": "rloo"}
    kl = _ablation_recipes("kl", root=tmp_path)
    assert {n: r.algorithm.kl_coef for n, r in kl.items()} == {"g8": 0.0, "kl-0.1": 0.1, "kl-1": 1.0}


def test_groups_that_do_not_divide_the_samples_are_refused_before_anything_runs(tmp_path):
    with pytest.raises(RecipeError, match="rollout.prompts_per_step: 24 samples per step do not make groups of 16"):
        course("group-size", seed=0, root=tmp_path, overrides=["--rollout.prompts_per_step", "3"])
    assert not any(tmp_path.iterdir())


def test_gpu_recipes_run_the_same_comparison_and_fit_one_node(tmp_path):
    node = cluster_spec_from_toml(REPO / "deploy" / "clusters" / "one-node-8xh100.toml")
    for name in ("group-size", "estimators", "kl"):
        for run, recipe in _ablation_recipes(name, root=tmp_path, gpu=True).items():
            assert recipe.cluster.device == "cuda" and recipe.model.tiny is None
            assert recipe.run.output_dir == str(tmp_path / "grpo-gpu" / "seed-2" / run)
            plan_placement(recipe, node)
    gsm8k = _ablation_recipes("group-size", root=tmp_path, gpu=True)
    assert {r.rollout.group_size * r.rollout.prompts_per_step for r in gsm8k.values()} == {1024}
    with pytest.raises(RecipeError, match="experiment 'verify' has no GPU recipe yet"):
        course("verify", seed=0, root=tmp_path, overrides=[], gpu=True)
    assert not any(tmp_path.iterdir())


def _curve(accuracy: list[float], signal: str, values: list[float]) -> list[dict]:
    """Evaluations every 2 steps with `accuracy`, and the training signal per step."""
    records = [{"step": 0, "eval/accuracy": accuracy[0]}]
    for step, value in enumerate(values, 1):
        record = {"step": step, signal: value}
        if step % 2 == 0:
            record["eval/accuracy"] = accuracy[step // 2]
        records.append(record)
    return records


def test_ablation_report_shows_every_evaluation_and_the_signal(tmp_path):
    home = tmp_path / "grpo"
    for seed, shift in ((0, 0.0), (1, 0.1)):
        for name, end in (("g2", 0.5), ("g4", 0.6), ("g8", 0.8), ("g16", 0.7)):
            _write(home / f"seed-{seed}" / name,
                   _curve([0.1, 0.3, end + shift], "zero_adv_group_fraction", [0.5, 0.25, 0.25, 0.0]))
    table = write_report(EXPERIMENTS["group-size"], tmp_path, figures=tmp_path / "figures").read_text()
    assert "| 0 | G=2 | 10.0% → 30.0% → 50.0% | 25.0% / 0.0% |" in table
    assert "| 1 | G=16 | 10.0% → 30.0% → 80.0% | 25.0% / 0.0% |" in table
    assert "| all (2) | G=8 | 10.0% → 80.0–90.0% | 25.0% (mean) |" in table
    for figure in (tmp_path / "group-size.png", tmp_path / "figures" / "group-size.png"):
        assert figure.read_bytes().startswith(PNG_SIGNATURE)
    kl = {0: {"g8": _curve([0.1, 0.9], "learner/kl", [0.0, 0.0]), "kl-1": _curve([0.1, 0.4], "learner/kl", [0.02, 0.5])}}
    text = ablation_table(KL, kl)
    assert "| 0 | KL, weight 1 | 10.0% → 40.0% | 0.26 / 0.5 |" in text
    assert "| 0 | no KL | 10.0% → 90.0% | – / – |" in text  # no reference model: its KL is not measured
    assert "| all (1) | no KL | 10.0% → 90.0% | – (mean) |" in text
    assert ablation_table(GROUP_SIZE, {}).count("\n") == 4  # no seed yet: the title and header only
    assert number_range([0.5, None, 0.25]) == "0.25–0.5" and number_range([None]) == "–"


# ---------------------------------------------------------------- chain of thought

def test_cot_runs_share_one_base_and_differ_in_room_to_think(tmp_path):
    from cluster.inputs.pretrain import corpus_template

    experiment = EXPERIMENTS["cot"]
    think, at_once = (run_recipe(experiment, run, 0, tmp_path, []) for run in experiment.runs)
    assert think.model.path == at_once.model.path == str(tmp_path / "cot" / "seed-0" / "base")
    assert corpus_template(think) == corpus_template(at_once) == think.data.template == "{prompt}=? <think>"
    assert at_once.data.template == "{prompt}=? <think></think><answer>"  # the thinking closed by the prompt
    assert think.eval.force_answer == "</think><answer>" and think.eval.budgets[0] == 0
    assert at_once.eval.budgets == ()


def test_cot_report_shows_accuracy_by_thinking_budget(tmp_path):
    def run(before: float, after: float, budgets: dict[int, tuple[float, float]]) -> list[dict]:
        first = {"step": 0, "eval/accuracy": before, **{f"eval/acc@budget={b}": v[0] for b, v in budgets.items()}}
        final = {"step": 2, "eval/accuracy": after, **{f"eval/acc@budget={b}": v[1] for b, v in budgets.items()}}
        return [first, {"step": 1, "accuracy": 0.5}, final]

    home = tmp_path / "cot" / "seed-0"
    _write(home / "think", run(0.2, 0.9, {0: (0.05, 0.1), 16: (0.1, 0.5), 48: (0.2, 0.9)}))
    _write(home / "answer-at-once", run(0.05, 0.1, {}))
    table = write_report(EXPERIMENTS["cot"], tmp_path).read_text()
    assert "| 0 | think | 20.0% → 90.0% | 5.0% → 10.0% | 0: 10.0%, 16: 50.0%, 48: 90.0% |" in table
    assert "| 0 | answer-at-once | 5.0% → 10.0% | – | – |" in table
    assert "| all (1) | think, after RL | 90.0% | 10.0% | |" in table
    assert (tmp_path / "cot.png").read_bytes().startswith(PNG_SIGNATURE)


# ---------------------------------------------------------------- reasoning vs direct answers

def test_the_direct_answer_model_is_sft_on_answers_alone_from_the_reasoning_models_base(tmp_path):
    experiment = EXPERIMENTS["reasoning"]
    runs = {run.name: (run, run_recipe(experiment, run, 1, tmp_path, [])) for run in experiment.runs}
    (rl, reasoning), (sft, direct) = runs["reasoning"], runs["direct"]
    assert (rl.command, sft.command) == ("train", "sft")
    assert reasoning.model.path == direct.model.path == str(tmp_path / "reasoning" / "seed-1" / "base")
    traces = str(tmp_path / "reasoning" / "data" / "direct-traces.parquet")
    assert direct.sft.train_path == direct.data.synthetic.cold_start_path == traces
    assert direct.data.synthetic.cold_start_style == "direct"
    assert direct.data.synthetic.cold_start_traces == direct.data.synthetic.train_rows
    for recipe in (reasoning, direct):  # measured alike: samples for pass@k / maj@k, forced budgets
        assert recipe.eval.k == (1, 4, 16) and recipe.eval.budgets[0] == 0 and recipe.eval.force_answer


def test_reasoning_report_puts_the_three_models_side_by_side(tmp_path):
    def evaluation(step: int, accuracy: float, tokens: float, forced: float) -> dict:
        return {"step": step, "eval/accuracy": accuracy, "eval/pass@16": min(1.0, 2 * accuracy),
                "eval/maj@16": accuracy, "eval/response_length_mean": tokens, "eval/acc@budget=0": forced,
                "eval/acc@budget=24": accuracy, "eval/pass@1": accuracy / 2, "eval/pass@4": accuracy}

    for seed, shift in ((0, 0.0), (1, 0.1)):
        home = tmp_path / "reasoning" / f"seed-{seed}"
        _write(home / "reasoning", [evaluation(0, 0.1, 6.0, 0.0), {"step": 1}, evaluation(40, 0.8 + shift, 24.0, 0.0)])
        _write(home / "direct", [evaluation(0, 0.1, 6.0, 0.0), evaluation(250, 0.3, 5.0, 0.3 + shift)])
    table = write_report(EXPERIMENTS["reasoning"], tmp_path).read_text()
    assert "| 0 | base | 10.0% | 20.0% | 10.0% | 6 | 0.0% |" in table
    assert "| 1 | direct | 30.0% | 60.0% | 30.0% | 5 | 40.0% |" in table
    assert "| 0 | reasoning | 80.0% | 100.0% | 80.0% | 24 | 0.0% |" in table
    assert "| all (2) | reasoning | 80.0–90.0% | 100.0% | 80.0–90.0% | 24 | 0.0% |" in table
    assert (tmp_path / "reasoning.png").read_bytes().startswith(PNG_SIGNATURE)
