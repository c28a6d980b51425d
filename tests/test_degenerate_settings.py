"""Settings a training run would learn nothing from are refused in one line, exit 2, before
anything is written (cluster/recipe/learning_signal.py, through cluster/startup/preflight.py's
`require_prompt_file`): greedy or top-1 sampling with a group-relative estimator (the G samples
of a group identical, every advantage 0), every reward weight 0, more prompts per step than the
training set holds. `aha generate` may sample greedily."""

import subprocess
import sys
import tomllib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from cluster.inputs.tiny_recipe import SAMPLING_ONLY, write_tiny_recipe
from cluster.recipe import RecipeError, load_recipe
from cluster.recipe.learning_signal import GROUP_RELATIVE_ESTIMATORS, check_learning_signal
from cluster.recipe.pipeline import load_pipeline
from cluster.startup.preflight import require_prompt_file
from learner.advantages import ESTIMATORS, group_advantages

AHA = str(Path(sys.executable).with_name("aha"))
REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted((REPO / "deploy" / "recipes").glob("*.toml"))


def _recipe(tmp_path, overrides=None, *args):
    return load_recipe(write_tiny_recipe(tmp_path / "recipe.toml", overrides), list(args))


def _refusal(recipe) -> str:
    with pytest.raises(RecipeError) as refused:
        require_prompt_file(recipe)
    assert "\n" not in str(refused.value)
    return str(refused.value)


@pytest.mark.parametrize("estimator", GROUP_RELATIVE_ESTIMATORS)
def test_greedy_or_top_1_sampling_gives_identical_samples_and_is_refused(tmp_path, estimator):
    said = _refusal(_recipe(tmp_path, None, "--rollout.temperature", "0", "--algorithm.estimator", estimator))
    assert said == (f"rollout.temperature: 0 samples greedily: the 4 completions of a group are identical, so "
                    f"estimator '{estimator}' gives every advantage 0 and the run learns nothing from its rewards; "
                    "sample at a temperature > 0 (1.0 is usual; greedy decoding is for aha eval, eval.temperature)")
    said = _refusal(_recipe(tmp_path, None, "--rollout.top_k", "1", "--algorithm.estimator", estimator))
    assert said.startswith("rollout.top_k: 1 keeps only the most likely token: the 4 completions of a group are "
                           f"identical, so estimator '{estimator}' gives every advantage 0")


def test_every_registered_estimator_is_group_relative():
    # The list the check uses is the learner's registry, and each gives 0 to identical samples.
    assert set(GROUP_RELATIVE_ESTIMATORS) == set(ESTIMATORS)
    identical = torch.tensor([[0.5, 0.5, 0.5, 0.5], [1.0, 1.0, 1.0, 1.0]])
    for name in ESTIMATORS:
        assert torch.equal(group_advantages(identical, estimator=name), torch.zeros(2, 4)), name


def test_rewards_that_are_all_zero_are_refused_unless_a_length_penalty_varies_them(tmp_path):
    zero = {"reward.weights": {"arithmetic": 0.0, "format": 0.0}}
    assert _refusal(_recipe(tmp_path, zero)).startswith("reward.weights: every weight is 0, so every reward and "
                                                         "every advantage is 0")
    require_prompt_file(_recipe(tmp_path, {**zero, "reward.overlong_buffer_tokens": 4}))


def test_more_prompts_per_step_than_the_synthetic_training_set_is_refused(tmp_path):
    said = _refusal(_recipe(tmp_path, {"data.synthetic.train_rows": 6, "rollout.prompts_per_step": 8}))
    assert said == ("rollout.prompts_per_step: 8 prompts per step, but the training set holds 6 "
                    "(data.synthetic.train_rows = 6): every step would train on some prompts twice; use at most 6, "
                    "or more training prompts")
    require_prompt_file(_recipe(tmp_path, {"data.synthetic.train_rows": 8, "rollout.prompts_per_step": 8}))


def test_more_prompts_per_step_than_the_users_file_holds_is_refused(tmp_path):
    rows = [{"prompt": f"{i}+1", "answer": str(i + 1)} for i in range(3)]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "mine.parquet")
    mine = {"data.synthetic": None, "data.eval_path": None, "data.train_path": str(tmp_path / "mine.parquet")}
    assert _refusal(_recipe(tmp_path, mine)).startswith(
        f"rollout.prompts_per_step: 4 prompts per step, but the training set holds 3 ('{tmp_path / 'mine.parquet'}')")
    require_prompt_file(_recipe(tmp_path, mine, "--rollout.prompts_per_step", "2", "--learner.num_ranks", "1"))
    # A missing file is not counted here: the checks after this one say what is wrong with it.
    require_prompt_file(_recipe(tmp_path, {**mine, "data.train_path": str(tmp_path / "none.parquet")}))


def test_distillation_learns_from_the_teacher_even_from_identical_samples(tmp_path):
    teacher = {"distill.teacher": "some/teacher", "cluster.num_cpus": 5}
    no_task_signal = {"rollout.temperature": 0.0, "reward.weights": {"arithmetic": 0.0}}
    require_prompt_file(_recipe(tmp_path, {**teacher, **no_task_signal}))
    # Its steps are aha train's: more prompts than the training set holds is refused alike.
    assert "rollout.prompts_per_step" in _refusal(_recipe(tmp_path, {**teacher, "data.synthetic.train_rows": 2}))


def test_the_shipped_recipes_and_pipelines_train_on_a_signal():
    for path in SHIPPED:
        if "pipeline" in tomllib.loads(path.read_text(encoding="utf-8")):
            recipes = [stage.recipe for stage in load_pipeline(path).stages if stage.kind in ("train", "distill")]
        else:
            recipes = [load_recipe(path)]
        for recipe in recipes:
            synthetic = recipe.data.synthetic
            check_learning_signal(recipe, synthetic.train_rows if synthetic else None, path.name)


def _aha(tmp_path, command, *args):
    return subprocess.run([AHA, command, str(tmp_path / "recipe.toml"), *args], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)


@pytest.mark.parametrize("args, says", [
    (["--rollout.temperature", "0"], "aha: error: rollout.temperature: 0 samples greedily: "),
    (["--rollout.top_k", "1"], "aha: error: rollout.top_k: 1 keeps only the most likely token: "),
    (["--rollout.prompts_per_step", "128"], "aha: error: rollout.prompts_per_step: 128 prompts per step, but the "
                                            "training set holds 64 (data.synthetic.train_rows = 64)"),
    (["--reward.weights", "{ arithmetic = 0.0 }"], "aha: error: reward.weights: every weight is 0"),
])
def test_aha_train_refuses_in_one_line_and_writes_nothing(tmp_path, args, says):
    write_tiny_recipe(tmp_path / "recipe.toml")
    done = _aha(tmp_path, "train", *args)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr[-3000:]
    assert done.stderr.startswith(says) and "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recipe.toml"]  # no run, no data, no model


def test_aha_generate_may_sample_greedily_from_a_small_file(tmp_path):
    pq.write_table(pa.Table.from_pylist([{"prompt": "1+2", "answer": "3"}]), tmp_path / "one.parquet")
    write_tiny_recipe(tmp_path / "recipe.toml", {**SAMPLING_ONLY, "data.train_path": "{root}/one.parquet",
                                                 "data.eval_path": None, "rollout.temperature": 0.0,
                                                 "model.path": "/nonexistent/model", "run.output_dir": "{root}/gen"})
    # Greedy, and 16 prompts per step from one row: neither is generate's business; it stops at the model.
    generated = _aha(tmp_path, "generate")
    assert generated.returncode == 2, generated.stderr[-3000:]
    assert generated.stderr.startswith("aha: error: model.path: '/nonexistent/model' does not exist")
