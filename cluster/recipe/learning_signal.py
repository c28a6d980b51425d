"""Settings a training run would learn nothing from, refused before it starts.

Each is valid on its own and passes `check_recipe`; together with a training loop they waste
the run: every advantage 0 (the G samples of a group identical, or every reward 0), or a step
that is not what it says (more prompts per step than the training set holds). Only the
commands that train on the recipe's groups check them (cluster/startup/preflight.py,
`require_prompt_file`): `aha generate` may sample greedily, `aha eval` has a temperature of its
own, and `aha check` does not know which command a recipe is for. The recipe is passed in
duck-typed; nothing heavy is imported.
"""

from __future__ import annotations

from cluster.recipe.checks import RecipeError

# The estimators of learner/advantages.py that rank the samples within a group: each gives
# exactly 0 to a group whose rewards are all equal (tests/test_degenerate_settings.py holds this
# list to the registry, so a new estimator is a decision made here).
GROUP_RELATIVE_ESTIMATORS = ("grpo", "dr_grpo", "rloo")


def check_learning_signal(recipe, train_rows: int | None, rows_from: str = "") -> None:
    """RecipeError naming the key of the first setting that leaves a training run nothing to
    learn from. `train_rows`: the prompts the training set holds (None: not known yet), counted
    from `rows_from` (a file, or the setting that says how many)."""
    if not recipe.distill.teacher:  # distillation learns from the teacher's grade of every token
        _check_samples_differ(recipe)
        _check_rewards_vary(recipe)
    if train_rows is not None and recipe.rollout.prompts_per_step > train_rows:
        raise RecipeError("rollout.prompts_per_step",
                          f"{recipe.rollout.prompts_per_step} prompts per step, but the training set holds "
                          f"{train_rows} ({rows_from}): every step would train on some prompts twice; use at most "
                          f"{train_rows}, or more training prompts")


def synthetic_train_rows(recipe) -> tuple[int, str] | None:
    """The training prompts a `[data.synthetic]` recipe will have, and where that is said: the
    held-out rows are made apart, and the training rows exclude their prompts but keep their number
    (cluster/inputs/prepare.py). None without synthetic data."""
    synthetic = recipe.data.synthetic
    if synthetic is None:
        return None
    return synthetic.train_rows, f"data.synthetic.train_rows = {synthetic.train_rows}"


def _check_samples_differ(recipe) -> None:
    """Greedy decoding (temperature 0: vLLM's greedy mode) or top-k 1 gives G copies of one
    completion: one reward, repeated, and a group-relative advantage of 0 for each."""
    rollout, estimator = recipe.rollout, recipe.algorithm.estimator
    if estimator not in GROUP_RELATIVE_ESTIMATORS:
        return
    why = (f"the {rollout.group_size} completions of a group are identical, so estimator '{estimator}' gives every "
           "advantage 0 and the run learns nothing from its rewards")
    if rollout.temperature == 0:
        raise RecipeError("rollout.temperature", f"0 samples greedily: {why}; sample at a temperature > 0 (1.0 is "
                          "usual; greedy decoding is for aha eval, eval.temperature)")
    if rollout.top_k == 1:
        raise RecipeError("rollout.top_k", f"1 keeps only the most likely token: {why}; use -1 (off) or k >= 2")


def _check_rewards_vary(recipe) -> None:
    """Every reward weight 0 and no over-long penalty: every reward is 0."""
    reward = recipe.reward
    penalised = reward.overlong_buffer_tokens > 0 and reward.overlong_penalty > 0
    if all(weight == 0 for weight in reward.weights.values()) and not penalised:
        raise RecipeError("reward.weights", "every weight is 0, so every reward and every advantage is 0 and the "
                          "run learns nothing; give a reward function a non-zero weight")
