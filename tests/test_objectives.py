"""The learner's objective registry (learner/objectives.py) and how it meets the recipe and the driver.

Each registered objective's loss is checked on a one-row micro-batch whose values are worked out
by hand (float64, so that they compare tightly); the registry against the names the recipe's
schema accepts and the names the driver passes in `LearnerSpec.objective`.
"""

from __future__ import annotations

import ast
import math
import typing
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from cluster.recipe.schema import AlgorithmConfig
from learner.advantages import ESTIMATORS
from learner.batching import MicroBatch
from learner.losses import KL_KINDS, LOSS_AGGS
from learner.objectives import OBJECTIVES, Forward, objective_named, register_objective
from losses_helpers import LN2, close, t
from spec_helpers import learner_spec

REPO = Path(__file__).resolve().parent.parent
DRIVER_DIRS = ("cluster", "bench")  # where LearnerSpec.objective is chosen
SPEC = learner_spec("unused-model", tis_cap=2.0, loss_agg="token_mean", clip_low=0.2, clip_high=0.2,
                    dual_clip=0.0, kl_coef=0.0, entropy_coef=0.0)


# ---------------------------------------------------------------- the registry against recipe and driver


@pytest.mark.parametrize("key, registered", [("estimator", ESTIMATORS), ("loss_agg", LOSS_AGGS),
                                             ("kl_kind", KL_KINDS)])
def test_the_recipes_choices_are_the_learners_names(key, registered):
    # The schema's Literal refuses an unknown name when the recipe loads; it must list exactly
    # what the learner knows, or a valid recipe would fail mid-run (or a registered name be unusable).
    choices = typing.get_args(typing.get_type_hints(AlgorithmConfig)[key])
    assert choices and set(choices) == set(registered)


def _driver_objectives() -> set[str]:
    """Every objective name the drivers can put in a LearnerSpec, read from their source: the
    strings returned by functions named *objective*, defaults of parameters named `objective`,
    and `objective="..."` in calls."""
    found = set()

    def results(node) -> set[str]:  # the strings an expression can evaluate to: `"a" if cond else "b"`
        if isinstance(node, ast.IfExp):
            return results(node.body) | results(node.orelse)
        return {node.value} if isinstance(node, ast.Constant) and isinstance(node.value, str) else set()

    for path in (p for folder in DRIVER_DIRS for p in (REPO / folder).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.FunctionDef) and "objective" in node.name:
                found |= {s for r in ast.walk(node) if isinstance(r, ast.Return) and r.value for s in results(r.value)}
            if isinstance(node, ast.FunctionDef):
                args = node.args
                pairs = [*zip(args.args[len(args.args) - len(args.defaults):], args.defaults),
                         *zip(args.kwonlyargs, args.kw_defaults)]
                found |= {d.value for a, d in pairs if a.arg == "objective" and isinstance(d, ast.Constant)}
            if isinstance(node, ast.Call):
                found |= {k.value.value for k in node.keywords
                          if k.arg == "objective" and isinstance(k.value, ast.Constant)}
    return found


def test_every_objective_the_driver_chooses_is_registered():
    chosen = _driver_objectives()
    assert {"grpo", "sft", "distill"} <= chosen, "the scan no longer sees the driver's choices"
    assert chosen <= set(OBJECTIVES), f"chosen but not registered: {chosen - set(OBJECTIVES)}"


def test_an_unknown_objective_is_refused_naming_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown learner objective 'ppo'; known: distill, grpo, sft"):
        objective_named("ppo")


def test_a_learner_refuses_an_unknown_objective_when_it_is_built():
    from learner.learner import Learner

    with pytest.raises(ValueError, match="'dpo'.*grpo"):
        Learner(replace(SPEC, objective="dpo"), rank=0, world_size=1)  # before any set-up: no silent GRPO
    assert Learner(replace(SPEC, objective="sft"), rank=0, world_size=1).objective is OBJECTIVES["sft"]


def test_registering_adds_one_entry_and_a_name_twice_is_refused():
    @register_objective("test_half_nll", sum_metrics=("nll",))
    def half_nll(forward, spec):
        return OBJECTIVES["sft"].loss(forward, spec)

    try:
        entry = objective_named("test_half_nll")
        assert (entry.loss, entry.sum_metrics, entry.max_metrics, entry.uses_reference) == (half_nll, ("nll",), {},
                                                                                          False)
        with pytest.raises(ValueError, match="already registered"):
            register_objective("sft", sum_metrics=())(half_nll)
        assert OBJECTIVES["sft"].loss is not half_nll
    finally:
        del OBJECTIVES["test_half_nll"]


# ---------------------------------------------------------------- each objective's loss by hand

# One row of L = 3 tokens, so two targets (input ids 1 and 0), both learned from.
INPUT_IDS = torch.tensor([[0, 1, 0]])
# Position 0: uniform over V = 2, entropy ln 2, argmax 0 (ties go to the first) != target 1.
# Position 1: probabilities 1/4, 3/4, entropy ln 4 - (3/4) ln 3, argmax 1 != target 0.
LOGITS = [[[0.0, 0.0], [0.0, math.log(3.0)], [0.0, 0.0]]]
ENTROPY_SUM = LN2 + 2 * LN2 - 0.75 * math.log(3.0)
LOGP = [[math.log(0.5), math.log(0.25)]]


def _forward(*, advantage=2.0, old_logp=None, teacher_logp=None, ref_logp=None, mask=(1.0, 1.0), logits=LOGITS):
    logp = t(LOGP, requires_grad=True)
    batch = MicroBatch(input_ids=INPUT_IDS, attention_mask=torch.ones(1, 3, dtype=torch.long),
                       loss_mask=t([mask]), behaviour_logp=t(LOGP), advantages=t([advantage]),
                       old_logp=old_logp, num_sequences=1, teacher_logp=teacher_logp)
    return Forward(batch, t(logits, requires_grad=True), logp, ref_logp)


def test_grpo_objective_by_hand():
    forward = _forward()
    out = OBJECTIVES["grpo"].loss(forward, SPEC)
    # No old_logp (first PPO epoch): ratio exp(logp - logp.detach()) = 1; behaviour = logp: TIS
    # weight 1; per token -A * 1 = -2; token_mean over 2 tokens -> numerator -4, denominator 2
    close(out.numerator, -4.0)
    close(out.denominator, 2.0)
    close(out.metric_sums["entropy"], ENTROPY_SUM, atol=1e-6)  # a metric even with entropy_coef 0; float32
    out.numerator.backward()
    close(forward.logp.grad, [[-2.0, -2.0]])  # d(-A * exp(logp - c))/dlogp = -A * ratio = -2
    assert forward.logits.grad is None  # entropy_coef 0: the entropy is a metric, not in the loss


def test_grpo_objective_clips_against_old_logprobs_and_adds_kl_and_entropy():
    # tis_cap 0: no importance weight, which would otherwise undo the ratio (old vs behaviour)
    spec = replace(SPEC, kl_coef=0.1, kl_kind="k1", entropy_coef=0.5, tis_cap=0.0)
    old = t(LOGP) - math.log(1.1)  # ratio 1.1, inside the clip band [0.8, 1.2]
    forward = _forward(old_logp=old, ref_logp=t(LOGP) - LN2)
    out = OBJECTIVES["grpo"].loss(forward, spec)
    # per token -2 * 1.1 + 0.1 * k1 (logp - ref = ln 2); summed over 2 tokens, minus
    # 0.5 * (entropy summed over the tokens; computed in float32)
    close(out.numerator, 2 * (-2.2 + 0.1 * LN2) - 0.5 * ENTROPY_SUM, atol=1e-6)
    out.numerator.backward()
    assert forward.logits.grad is not None and forward.logits.grad.abs().sum() > 0  # the entropy bonus trains


def test_sft_objective_by_hand():
    out = OBJECTIVES["sft"].loss(_forward(), SPEC)
    # NLL: -ln 0.5 - ln 0.25 = 3 ln 2 over 2 tokens; argmax 0 vs target 1 wrong, argmax 1 vs target 0 wrong
    close(out.numerator, 3 * LN2)
    close(out.denominator, 2.0)
    assert out.metric_sums == pytest.approx({"nll": 3 * LN2, "token_accuracy": 0.0})
    right = [[[0.0, 1.0], [1.0, 0.0], [0.0, 0.0]]]  # argmax 1 == target 1, argmax 0 == target 0
    assert OBJECTIVES["sft"].loss(_forward(logits=right), SPEC).metric_sums["token_accuracy"] == 2.0


def test_distill_objective_by_hand():
    out = OBJECTIVES["distill"].loss(_forward(teacher_logp=t([[math.log(0.25), math.log(0.25)]])), SPEC)
    # behaviour = logp: weight 1; per token 1/2 (logp - teacher)^2 = 1/2 (ln 2)^2 and 0
    close(out.numerator, 0.5 * LN2**2)
    close(out.denominator, 2.0)
    assert out.metric_sums == pytest.approx({"reverse_kl": LN2, "tis_weight": 2.0})


def test_distill_objective_on_a_top_up_micro_batch_without_teacher_logprobs_is_zero():
    out = OBJECTIVES["distill"].loss(_forward(mask=(0.0, 0.0)), SPEC)
    assert (out.numerator.item(), out.denominator.item(), out.num_tokens) == (0.0, 0.0, 0)


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_each_objective_reports_exactly_its_registered_metrics(name):
    # The learner all-reduces the registered names; a name the loss does not report would read 0.
    objective = OBJECTIVES[name]
    forward = _forward(teacher_logp=t(LOGP), ref_logp=t(LOGP))
    out = objective.loss(forward, SPEC)
    assert set(out.metric_sums) == set(objective.sum_metrics) | set(objective.max_metrics)
    assert set(objective.max_metrics.values()) <= set(objective.sum_metrics)
