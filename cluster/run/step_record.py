"""What a GRPO (or distillation) step leaves in the run's record: the step's metrics for
metrics.jsonl and TensorBoard, and one rollout row per completion for rollouts/."""

from __future__ import annotations

from cluster.inputs.tasks import check_detector
from cluster.output.eval_metrics import check_stats, group_stats, reflection_rate, response_stats, reward_failure_shares
from cluster.recipe import Recipe
from cluster.roles.evaluation import correctness_reward
from cluster.roles.intake import StepIntake
from cluster.roles.teacher_pool import distill_metrics
from cluster.wire.samples import Group


def step_metrics(recipe: Recipe, intake: StepIntake, learner: dict, timings: dict) -> dict:
    groups, staleness = intake.accepted, intake.staleness
    samples = [s for g in groups for s in g.samples]
    lengths = [len(s.completion_ids) for s in samples]
    components = [c for g in groups for c in g.components]
    correctness = correctness_reward(recipe)
    metrics = {
        **group_stats([g.rewards for g in groups]),
        "accuracy": sum(c[correctness] == 1.0 for c in components) / len(components),
        **response_stats(lengths, recipe.rollout.max_new_tokens, [s.finish_reason for s in samples]),
        "reflection_rate": reflection_rate([s.text for s in samples], recipe.run.reflection_words),
        "staleness_mean": sum(staleness) / len(staleness), "staleness_max": max(staleness),
        "dropped_stale_groups": intake.dropped["stale"], "dropped_flat_groups": intake.dropped["flat"],
        **{f"reward/{name}": sum(c[name] for c in components) / len(components) for name in components[0]},
        **reward_failure_shares(list(components[0]), [f for g in groups for f in g.failures]),
        **{f"learner/{k}": v for k, v in learner.items()},
        **{f"time/{k}": v for k, v in timings.items()},
    }
    # The learner's idle time: the part of the step it spent waiting for groups or the sync.
    # The driver only waits on the learner at the step's end, so the busy time is the rank's own.
    busy = learner.get("accumulate_s", 0.0) + learner.get("update_s", 0.0)
    metrics["time/learner_busy"] = busy
    metrics["time/idle"] = max(0.0, timings["step"] - busy)
    metrics["learner_idle_share"] = metrics["time/idle"] / max(timings["step"], 1e-9)
    metrics["tokens/sampled"] = sum(lengths)  # with learner/tokens (and distill/teacher_tokens): compute spent
    detect = check_detector(recipe)
    if detect is not None:
        found = [detect(s.text, **g.fields) for g in groups for s in g.samples]
        metrics.update(check_stats(found, [c[correctness] == 1.0 for c in components]))
    if groups[0].teacher:
        metrics.update(distill_metrics(groups))
    metrics["rollout_tokens_per_s"] = sum(lengths) / max(timings["generate"] + timings["train"], 1e-9)
    metrics["learner_tokens_per_s"] = learner.get("tokens", 0) / max(busy, 1e-9)
    return metrics


def rollout_rows(step: int, groups: list[Group]) -> list[dict]:
    return [
        {"step": step, "prompt_index": g.prompt_index, "prompt": g.prompt_text, "completion": s.text,
         "reward": r, **{f"reward/{k}": v for k, v in c.items()}, **{f"reward_failure/{k}": f.get(k, "") for k in c},
         "advantage": a, "weight_version": s.weight_version, "finish_reason": s.finish_reason,
         "num_tokens": len(s.completion_ids)}
        for g in groups for s, r, a, c, f in zip(g.samples, g.rewards, g.advantages, g.components, g.failures,
                                                 strict=True)
    ]
