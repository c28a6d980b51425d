"""Held-out evaluation through the running rollout workers and scorers.

Greedy accuracy; pass@k and maj@k (majority vote over k samples) for the recipe's k; and
greedy accuracy against the max-token budget (inference-time scaling). A completion is
correct when the recipe's correctness reward (`eval.correctness`, by default the first of
`reward.weights`) gives it 1.0.
"""

from __future__ import annotations

from dataclasses import replace

from cluster.recipe import Recipe
from cluster.inputs.data import PromptRow
from cluster.inputs.prompts import encode_prompts
from cluster.output.eval_metrics import aggregate_eval, budget_curve
from cluster.specs import sampling_spec
from cluster.system import System
from rewards.extract import extract_final_answer


def correctness_reward(recipe: Recipe) -> str:
    return recipe.eval.correctness or next(iter(recipe.reward.weights))


def _graded(system: System, recipe: Recipe, rows: list[PromptRow], prompts, sampling) -> dict[int, list]:
    """Sample a group per prompt and grade each completion: index -> [(correct, answer)]."""
    name = correctness_reward(recipe)
    graded = {}
    for index, samples in system.pool.stream(prompts, sampling):
        scores = system.scorers.score([s.text for s in samples], rows[index].fields,
                                      [len(s.completion_ids) for s in samples])
        graded[index] = [(score.components[name] == 1.0, extract_final_answer(sample.text))
                         for sample, score in zip(samples, scores)]
    return graded


def evaluate(system: System, recipe: Recipe, rows: list[PromptRow]) -> dict[str, float]:
    """Every held-out metric of the recipe, keys prefixed "eval/"."""
    settings = recipe.eval
    rows = rows[: settings.num_prompts]
    prompts = encode_prompts(recipe, system.tokenizer, rows)
    greedy_sampling = replace(sampling_spec(recipe, seed=0), group_size=1, temperature=0.0)
    greedy = _graded(system, recipe, rows, prompts, greedy_sampling)
    per_prompt = [{"greedy_correct": greedy[i][0][0]} for i in range(len(rows))]
    if settings.k:
        sampled = _graded(system, recipe, rows, prompts, replace(
            sampling_spec(recipe, seed=1), group_size=max(settings.k), temperature=settings.temperature))
        for i, entry in enumerate(per_prompt):
            entry["samples_correct"] = [correct for correct, _ in sampled[i]]
            entry["sample_answers"] = [answer for _, answer in sampled[i]]
    metrics = aggregate_eval(per_prompt, settings.k)
    by_budget = {}
    for budget in settings.budgets:
        graded = _graded(system, recipe, rows, prompts, replace(greedy_sampling, max_new_tokens=budget))
        by_budget[budget] = [graded[i][0][0] for i in range(len(rows))]
    metrics.update(budget_curve(by_budget))
    return metrics
