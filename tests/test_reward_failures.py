"""Reward failures are visible: a NaN or inf reward is a failed score like an exception, and
every failure is counted per component in the step's metrics, explained in the rollout
Parquet, and warned about when a component fails for most of a step.

The scorer is the real one (its real worker processes, no Ray); the loop's helpers run on
plain wire types.
"""

import textwrap

import pyarrow.parquet as pq
import pytest

from actors.reward_scorer import RewardScorer, Score
from cluster.inputs.data import PromptRow
from cluster.roles.intake import StepIntake, scored_group
from cluster.roles.scoring import ScoredGroup
from cluster.run.step_record import rollout_rows, step_metrics
from cluster.output.eval_metrics import reward_failure_shares, reward_failure_warnings
from cluster.output.run_log import RunLog
from cluster.recipe import Recipe
from cluster.recipe.schema import RewardConfig
from cluster.wire.samples import Sample
from spec_helpers import scorer_spec

ODD_REWARDS = textwrap.dedent('''
    def odd(completion, **fields):
        """What a careless user reward returns: NaN for 0/0, inf for x/0, text, None."""
        return {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf"), "text": "high",
                "none": None, "one": True}.get(completion, 0.5)
''')


@pytest.fixture
def scorer(tmp_path, monkeypatch):
    (tmp_path / "odd_rewards.py").write_text(ODD_REWARDS)
    monkeypatch.syspath_prepend(str(tmp_path))  # spawned workers start with the parent's sys.path
    scorer = RewardScorer(scorer_spec(weights={"odd_rewards:odd": 1.0, "format": 0.5}, num_workers=1,
                                      failure_reward=-1.0, timeout_s=30.0, start_timeout_s=120.0))
    yield scorer
    scorer.close()


def test_non_finite_and_non_numeric_rewards_get_the_failure_reward_with_the_reason(scorer):
    pids = scorer.worker_pids()
    texts = ["nan", "inf", "-inf", "text", "none", "one", "fine"]
    scores = scorer.score_group(texts, {})
    odd = [s.components["odd_rewards:odd"] for s in scores]
    assert odd == [-1.0, -1.0, -1.0, -1.0, -1.0, 1.0, 0.5]
    reasons = [s.failures.get("odd_rewards:odd", "") for s in scores]
    assert reasons[:3] == ["returned nan, not a finite number", "returned inf, not a finite number",
                           "returned -inf, not a finite number"]
    assert reasons[3].startswith("ValueError: could not convert string to float")
    assert reasons[4].startswith("TypeError: float() argument must be")
    assert reasons[5:] == ["", ""]
    assert all("format" not in s.failures for s in scores)  # the other component still scored
    assert [s.total for s in scores] == [-1.0] * 5 + [1.0, 0.5]  # format is 0 for all: no tags
    assert scorer.worker_pids() == pids  # a bad value is the reward's fault, not the worker's


def _group(index, failures, components):
    samples = [Sample(prompt_ids=[1], completion_ids=[2, 3], text=f"c{index}-{i}", logprobs=[-1.0, -1.0],
                      finish_reason="stop", weight_version=0) for i in range(len(failures))]
    scores = [Score(total=sum(c.values()), components=c, failures=f) for c, f in zip(components, failures)]
    return scored_group(ScoredGroup(PromptRow(index=index, prompt=f"p{index}", fields={}), samples, scores), "grpo")


def test_a_steps_failures_reach_its_metrics_rollouts_and_warning(tmp_path):
    recipe = Recipe(reward=RewardConfig(weights={"x": 1.0, "y": 0.5}))
    ok = {"x": 1.0, "y": 0.5}
    x_failed = {"x": -1.0, "y": 0.5}
    groups = [
        _group(0, [{"x": "ValueError: boom"}, {"x": "ValueError: boom"}, {}], [x_failed, x_failed, ok]),
        _group(1, [{"x": "returned nan, not a finite number"}, {}, {}], [x_failed, ok, ok]),
    ]
    assert groups[0].failures[0] == {"x": "ValueError: boom"}
    intake = StepIntake(wanted=2, max_dropped=0)
    for group in groups:
        intake.accept(group, 0)
    metrics = step_metrics(recipe, intake, {"tokens": 12}, {"step": 1.0, "train": 0.5, "generate": 0.5})
    assert metrics["reward_failures/x"] == pytest.approx(3 / 6) and metrics["reward_failures/y"] == 0.0
    # Half is not most: no warning yet; one more failure makes it 4 of 6.
    failures = [f for g in groups for f in g.failures]
    assert reward_failure_warnings(1, failures) == []
    failures[2] = {"x": "ValueError: boom"}
    assert reward_failure_warnings(3, failures) == [
        "[aha] warning: step 3: reward 'x' failed for 4 of 6 completions: ValueError: boom"]

    with RunLog(tmp_path, tensorboard=False) as log:
        log.write_rollouts(1, rollout_rows(1, groups))
        log.write_rollouts(2, rollout_rows(2, groups[1:2]))
        log.write_rollouts(3, [{**row, "reward_failure/x": None} for row in rollout_rows(3, groups[1:])])
    table = pq.read_table(tmp_path / "rollouts")  # every step's file reads back as one table
    assert str(table.schema.field("reward_failure/x").type) == "string"
    rows = [r for r in table.to_pylist() if r["step"] == 1]
    assert [r["reward_failure/x"] for r in rows] == ["ValueError: boom", "ValueError: boom", "",
                                                   "returned nan, not a finite number", "", ""]
    assert {r["reward_failure/y"] for r in rows} == {""}


def test_failure_shares_and_warnings_by_hand():
    failures = [{"a": "timeout after 10 s"}, {"a": "timeout after 10 s", "b": "worker died (exit code 9)"},
                {"a": "KeyError: 'answer'"}, {}]
    assert reward_failure_shares(["a", "b", "c"], failures) == {
        "reward_failures/a": 0.75, "reward_failures/b": 0.25, "reward_failures/c": 0.0}
    assert reward_failure_shares(["a"], []) == {"reward_failures/a": 0.0}
    # The most common reason is the one shown; a multi-line reason stays one line.
    assert reward_failure_warnings(7, failures) == [
        "[aha] warning: step 7: reward 'a' failed for 3 of 4 completions: timeout after 10 s"]
    assert reward_failure_warnings(2, [{"a": "Boom:\n  line two"}]) == [
        "[aha] warning: step 2: reward 'a' failed for 1 of 1 completions: Boom: line two"]
