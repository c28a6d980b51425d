"""Held-out evaluation through a running rollout pool and scorer pool.

One function, `evaluate`, serves both the GRPO loop's periodic evaluation and `aha eval`
(cluster/eval_job.py): greedy accuracy; pass@k and maj@k (majority vote over k samples) for
the recipe's k; greedy accuracy against the max-token budget (inference-time scaling); and the
greedy completions' mean length and reflection-word rate. A completion is correct when the
recipe's correctness reward (`eval.correctness`, by default the first of `reward.weights`)
gives it 1.0. Besides the metrics it returns one record per completion, which `aha eval`
writes out so every number can be recounted from the completions themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from cluster.inputs.data import PromptRow
from cluster.inputs.prompts import encode_prompts
from cluster.output.eval_metrics import aggregate_eval, budget_curve, reflection_rate, response_stats
from cluster.recipe import Recipe
from cluster.specs import sampling_spec
from rewards.extract import extract_final_answer

GREEDY, SAMPLED, BUDGET = "greedy", "sampled", "budget"  # the `kind` of a completion record


@dataclass
class Evaluation:
    """`metrics`: keys prefixed "eval/"; `records`: one dict per completion (see `_graded`)."""

    metrics: dict[str, float]
    records: list[dict]


def correctness_reward(recipe: Recipe) -> str:
    return recipe.eval.correctness or next(iter(recipe.reward.weights))


def evaluate(pool, scorers, tokenizer, recipe: Recipe, rows: list[PromptRow]) -> Evaluation:
    """Every held-out metric of the recipe on the first `eval.num_prompts` of `rows`, sampled
    by `pool` (a RolloutPool) with `tokenizer`'s prompts and graded by `scorers` (a ScorerPool)."""
    settings = recipe.eval
    rows = rows[: settings.num_prompts]
    prompts = encode_prompts(recipe, tokenizer, rows)
    greedy_sampling = replace(sampling_spec(recipe, seed=0), group_size=1, temperature=0.0)
    greedy = _graded(pool, scorers, recipe, rows, prompts, greedy_sampling, GREEDY)
    records = [r for group in greedy for r in group]
    per_prompt = [{"greedy_correct": group[0]["correct"]} for group in greedy]
    if settings.k:
        sampling = replace(sampling_spec(recipe, seed=1), group_size=max(settings.k),
                           temperature=settings.temperature)
        sampled = _graded(pool, scorers, recipe, rows, prompts, sampling, SAMPLED)
        for entry, group in zip(per_prompt, sampled):
            entry["samples_correct"] = [r["correct"] for r in group]
            entry["sample_answers"] = [r["answer"] for r in group]
        records += [r for group in sampled for r in group]
    metrics = aggregate_eval(per_prompt, settings.k)
    by_budget = {}
    for budget in settings.budgets:
        graded = _graded(pool, scorers, recipe, rows, prompts, replace(greedy_sampling, max_new_tokens=budget), BUDGET)
        by_budget[budget] = [group[0]["correct"] for group in graded]
        records += [r for group in graded for r in group]
    metrics.update(budget_curve(by_budget))
    metrics.update(greedy_text_stats(recipe, [group[0] for group in greedy]))
    return Evaluation(metrics=metrics, records=records)


def evaluate_during_run(pool, scorers, tokenizer, recipe: Recipe, rows: list[PromptRow], run_dir, step: int) -> dict:
    """`evaluate` inside a training run: the metrics for metrics.jsonl, and the completions
    kept in the run's heldout/ (what `aha pipeline` reuses instead of evaluating again)."""
    from cluster.output.eval_report import write_step_records

    done = evaluate(pool, scorers, tokenizer, recipe, rows)
    write_step_records(run_dir, step, done.records)
    return done.metrics


def greedy_text_stats(recipe: Recipe, greedy: list[dict]) -> dict[str, float]:
    """Length and reflection words of the greedy completions: the answers the accuracy grades
    (sampled ones run at eval.temperature and would mix in the sampling's own noise)."""
    stats = response_stats([r["num_tokens"] for r in greedy], recipe.rollout.max_new_tokens,
                           [r["finish_reason"] for r in greedy])
    return {
        "eval/response_length_mean": stats["response_length_mean"],
        "eval/truncated_fraction": stats["truncated_fraction"],
        "eval/reflection_rate": reflection_rate([r["completion"] for r in greedy], recipe.run.reflection_words),
    }


def _graded(pool, scorers, recipe: Recipe, rows: list[PromptRow], prompts, sampling, kind: str) -> list[list[dict]]:
    """Sample a group per prompt and grade each completion; per prompt (in row order), one
    record per completion in sampling order."""
    name = correctness_reward(recipe)
    graded: list[list[dict] | None] = [None] * len(rows)
    for index, samples in pool.stream(prompts, sampling):
        row = rows[index]
        scores = scorers.score([s.text for s in samples], row.fields, [len(s.completion_ids) for s in samples])
        graded[index] = [
            {"prompt_index": row.index, "prompt": row.prompt, "kind": kind, "sample_index": position,
             "max_new_tokens": sampling.max_new_tokens, "completion": sample.text,
             "correct": score.components[name] == 1.0, "answer": extract_final_answer(sample.text),
             "reward": score.total, "num_tokens": len(sample.completion_ids), "finish_reason": sample.finish_reason}
            for position, (sample, score) in enumerate(zip(samples, scores, strict=True))
        ]
    missing = [rows[i].index for i, group in enumerate(graded) if group is None]
    if missing:
        raise RuntimeError(f"evaluation: the rollout stream ended without groups for rows {missing[:5]}")
    return graded
