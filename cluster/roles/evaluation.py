"""Held-out evaluation through a running rollout pool and scorer pool.

One function, `evaluate`, serves both the GRPO loop's periodic evaluation and `aha eval`
(cluster/commands/eval.py): greedy accuracy; pass@k and maj@k (majority vote over k samples) for
the recipe's k; greedy accuracy against the max-token budget (inference-time scaling); and the
greedy completions' mean length and reflection-word rate. A completion is correct when the
recipe's correctness reward (`eval.correctness`, by default the first of `reward.weights`)
gives it 1.0. Besides the metrics it returns one record per completion, which `aha eval`
writes out so every number can be recounted from the completions themselves.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

from cluster.inputs.data import PromptRow
from cluster.inputs.prompts import encode_prompts
from cluster.inputs.tasks import check_detector
from cluster.output.eval_metrics import aggregate_eval, budget_curve, check_stats, reflection_rate, response_stats
from cluster.output.eval_report import write_step_records
from cluster.recipe import Recipe
from cluster.roles.rollout_pool import GroupStream
from cluster.roles.scoring import ScoredGroup, ScoresInFlight, consume_scored
from cluster.startup.ray import in_daemon_thread
from cluster.startup.specs import sampling_spec
from cluster.wire.samples import Sample, SamplingSpec
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
    # Every kind of completion the evaluation grades, one group per prompt each, sampled at
    # once so the engines batch across the kinds. A greedy completion under a token budget is
    # the full greedy completion's first `budget` tokens, so budgets within the full one's
    # max_new_tokens are cut from it, not sampled again.
    kinds = [_Kind(GREEDY, greedy_sampling)]
    if settings.k:
        kinds.append(_Kind(SAMPLED, replace(sampling_spec(recipe, seed=1), group_size=max(settings.k),
                                            temperature=settings.temperature)))
    cut_budgets = () if settings.force_answer else settings.budgets  # forced ones need the greedy answers first
    kinds += [_Kind(BUDGET, replace(greedy_sampling, max_new_tokens=budget),
                    cut_from=0 if budget <= greedy_sampling.max_new_tokens else None) for budget in cut_budgets]
    greedy_samples: dict[int, Sample] = {}
    graded = _graded(pool, scorers, tokenizer, recipe, rows, prompts, kinds, keep=greedy_samples)
    greedy = graded[0]
    records = [r for group in greedy for r in group]
    per_prompt = [{"greedy_correct": group[0]["correct"]} for group in greedy]
    if settings.k:
        sampled = graded[1]
        for entry, group in zip(per_prompt, sampled):
            entry["samples_correct"] = [r["correct"] for r in group]
            entry["sample_answers"] = [r["answer"] for r in group]
        records += [r for group in sampled for r in group]
    metrics = aggregate_eval(per_prompt, settings.k)
    by_budget = {}
    for kind, budgeted in zip(kinds, graded, strict=True):
        if kind.kind == BUDGET:
            by_budget[kind.sampling.max_new_tokens] = [group[0]["correct"] for group in budgeted]
            records += [r for group in budgeted for r in group]
    if settings.force_answer and settings.budgets:
        forced = _forced_budgets(pool, scorers, tokenizer, recipe, rows, prompts, greedy, greedy_samples)
        for budget, budgeted in forced.items():
            by_budget[budget] = [r["correct"] for r in budgeted]
            records += budgeted
    metrics.update(budget_curve(by_budget))
    metrics.update(greedy_text_stats(recipe, [group[0] for group in greedy]))
    detect = check_detector(recipe)
    if detect is not None:  # checks and corrections, greedy and (where sampled) at eval.temperature
        for prefix, part in (("eval/", greedy), ("eval/sampled/", graded[1] if settings.k else [])):
            found = [(detect(r["completion"], **rows[position].fields), r["correct"])
                     for position, group in enumerate(part) for r in group]
            if found:
                metrics.update(check_stats(*zip(*found), prefix=prefix))
    return Evaluation(metrics=metrics, records=records)


def evaluate_during_run(pool, scorers, tokenizer, recipe: Recipe, rows: list[PromptRow], run_dir, step: int) -> dict:
    """`evaluate` inside a training run: the metrics for metrics.jsonl, and the completions
    kept in the run's heldout/ (what `aha pipeline` reuses instead of evaluating again)."""

    done = evaluate(pool, scorers, tokenizer, recipe, rows)
    write_step_records(run_dir, step, done.records)
    return done.metrics


class EvaluationBesideFirstStep:
    """The held-out evaluation before RL, in a thread while step 1 already samples and trains.

    Step 1 samples on the same base weights, so the engines batch the two and the learner does
    not wait for the evaluation to start. `result` must come before step 1's weight push, which
    would change the weights the evaluation samples. Every wait inside the evaluation is bounded
    by cluster.timeout_s, so the thread ends; a worker or scorer that dies meanwhile is replaced
    once, whichever thread finds it (the pools replace under a lock)."""

    def __init__(self, pool, scorers, tokenizer, recipe: Recipe, rows: list[PromptRow], run_dir):
        self._started = time.perf_counter()
        self._future = in_daemon_thread(
            lambda: evaluate_during_run(pool, scorers, tokenizer, recipe, rows, run_dir, 0), "aha-evaluation")

    def result(self) -> tuple[dict, float]:
        """The evaluation's metrics once it is done (its error, if it failed), and its seconds."""
        metrics = self._future.result()
        return metrics, time.perf_counter() - self._started


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


@dataclass(frozen=True)
class _Kind:
    """One kind of completion the evaluation grades: its record `kind`, how it is sampled, and
    `cut_from`, the index of the greedy kind whose completions, cut to this kind's
    max_new_tokens, are these (None: sampled itself)."""

    kind: str
    sampling: SamplingSpec
    cut_from: int | None = None


def cut_to_budget(sample: Sample, budget: int, tokenizer) -> Sample:
    """The greedy completion `sample` as greedy decoding with max_new_tokens = `budget` would
    have made it: its first `budget` tokens (finish reason "length" where it went on). Greedy
    decoding picks each token from the ones before it alone, and a stop string or EOS within
    the budget ended `sample` there too, so the two are the same completion."""
    if len(sample.completion_ids) <= budget:
        return sample
    ids = sample.completion_ids[:budget]
    return Sample(prompt_ids=sample.prompt_ids, completion_ids=ids,
                  text=tokenizer.decode(ids, skip_special_tokens=True), logprobs=sample.logprobs[:budget],
                  finish_reason="length", weight_version=sample.weight_version)


def forced_prompt(prompt_ids: list[int], greedy: Sample, budget: int, tokenizer, force_ids: list[int],
                  think_end: str) -> tuple[list[int], str] | None:
    """Budget forcing (s1): None where the greedy completion needs no forcing at `budget` (it
    ended within the budget, or wrote `think_end` in its first `budget` tokens: its own answer
    stands); else the prompt that makes the model answer now (the prompt, the completion's first
    `budget` tokens, `force_ids`) and the text those completion tokens and `force_ids` read as."""
    cut = greedy.completion_ids[:budget]
    thought = tokenizer.decode(cut, skip_special_tokens=True)
    if len(greedy.completion_ids) <= budget or think_end in thought:
        return None
    return prompt_ids + cut + force_ids, thought + tokenizer.decode(force_ids, skip_special_tokens=True)


def _forced_budgets(pool, scorers, tokenizer, recipe: Recipe, rows: list[PromptRow], prompts,
                    greedy: list[list[dict]], samples: dict[int, Sample]) -> dict[int, list[dict]]:
    """Per thinking budget, one graded record per prompt: the greedy one where it needs no
    forcing, else the model's greedy answer after `forced_prompt` (one more batch of requests,
    all budgets at once)."""
    settings, force_ids = recipe.eval, tokenizer(recipe.eval.force_answer, add_special_tokens=False)["input_ids"]
    out = {budget: [{**greedy[p][0], "kind": BUDGET, "max_new_tokens": budget}
                    for p in range(len(rows))] for budget in settings.budgets}
    jobs = [(budget, p, made) for budget in settings.budgets for p in range(len(rows))
            if (made := forced_prompt(prompts[p], samples[p], budget, tokenizer, force_ids, settings.think_end))]
    if not jobs:
        return out
    room = min(recipe.rollout.max_new_tokens, recipe.rollout.max_model_len - max(len(ids) for _, _, (ids, _) in jobs))
    if room < 1:
        raise RuntimeError(f"eval.force_answer: a forced prompt of {recipe.rollout.max_model_len - room} tokens leaves "
                           f"no room for the answer within rollout.max_model_len={recipe.rollout.max_model_len}: "
                           "lower the largest eval.budgets")
    answering = replace(sampling_spec(recipe, seed=0), group_size=1, temperature=0.0, max_new_tokens=room)
    graded = _graded(pool, scorers, tokenizer, recipe, [rows[p] for _, p, _ in jobs], [ids for _, _, (ids, _) in jobs],
                     [_Kind(BUDGET, answering)], prefixes=[text for _, _, (_, text) in jobs])[0]
    for (budget, position, (ids, _)), group in zip(jobs, graded, strict=True):
        written = len(ids) - len(prompts[position])  # the thinking kept and the forcing text
        out[budget][position] = {**group[0], "max_new_tokens": budget,
                                 "num_tokens": written + group[0]["num_tokens"]}
    return out


def _graded(pool, scorers, tokenizer, recipe: Recipe, rows: list[PromptRow], prompts, kinds: list[_Kind], *,
            keep: dict[int, Sample] | None = None, prefixes: list[str] | None = None) -> list[list[list[dict]]]:
    """Per kind, per prompt (in row order), one graded record per completion in sampling order.

    Every sampled kind's prompts go into one stream at once; each group, and the groups cut
    from it (which share its prompt's fields), go to the scorers in one call as it arrives,
    while the rest are still sampling (cluster/roles/scoring.py). `keep` gets the first kind's
    first completion per row position; `prefixes[position]` is text the model did not write
    this time but that belongs to the completion (graded and recorded with it)."""
    name = correctness_reward(recipe)
    stream = GroupStream(pool)
    origin: dict[int, tuple[int, int]] = {}  # stream index -> (kind, row position)
    for number, kind in enumerate(kinds):
        if kind.cut_from is None:
            origin.update((index, (number, position))
                          for position, index in enumerate(stream.add(prompts, kind.sampling)))
    graded: list[list[list[dict] | None]] = [[None] * len(rows) for _ in kinds]

    def submit(index: int, samples: list[Sample]) -> None:
        number, position = origin[index]
        if prefixes is not None:
            samples = [replace(s, text=prefixes[position] + s.text) for s in samples]
        if keep is not None and number == 0:
            keep[position] = samples[0]
        parts = [(number, samples)] + [
            (other, [cut_to_budget(s, kind.sampling.max_new_tokens, tokenizer) for s in samples])
            for other, kind in enumerate(kinds) if kind.cut_from == number]
        scoring.submit((position, parts), rows[position].fields, [s for _, group in parts for s in group])

    def grade(scored: ScoredGroup) -> None:
        (position, parts), row, start = scored.key, rows[scored.key[0]], 0
        for number, samples in parts:
            kind, scores, start = kinds[number], scored.scores[start:start + len(samples)], start + len(samples)
            graded[number][position] = [
                {"prompt_index": row.index, "prompt": row.prompt, "kind": kind.kind, "sample_index": place,
                 "max_new_tokens": kind.sampling.max_new_tokens, "completion": sample.text,
                 "correct": score.components[name] == 1.0, "answer": extract_final_answer(sample.text),
                 "reward": score.total, "num_tokens": len(sample.completion_ids), "finish_reason": sample.finish_reason}
                for place, (sample, score) in enumerate(zip(samples, scores, strict=True))
            ]

    scoring = ScoresInFlight(scorers)
    consume_scored(stream, scoring, submit, grade)
    missing = sorted({rows[position].index for per_kind in graded
                      for position, group in enumerate(per_kind) if group is None})
    if missing:
        raise RuntimeError(f"evaluation: the rollout stream ended without groups for rows {missing[:5]}")
    return graded
