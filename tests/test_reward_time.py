"""What a reward costs is visible: each reward's busy seconds on the scorers and the driver's
wait for scores reach the step's metrics apart from generation, and a step that mostly waited
for a reward names it in one warning line."""

from cluster.output.eval_metrics import reward_time_warnings
from cluster.recipe import Recipe
from cluster.recipe.schema import RewardConfig
from cluster.roles.intake import StepIntake, scored_group
from cluster.roles.scoring import ScoredGroup
from cluster.inputs.data import PromptRow
from cluster.run.step_record import step_metrics
from cluster.wire.samples import Sample
from actors.reward_scorer import Score


def test_a_step_that_mostly_waited_for_scores_names_the_busiest_reward():
    metrics = {"time/step": 41.0, "time/score_wait": 36.9, "time/reward/slow": 38.2, "time/reward/format": 0.1,
               "time/generate": 2.0}
    assert reward_time_warnings(5, metrics) == [
        "[aha] warning: step 5: reward 'slow' took 38.2 s of scorer busy time in the 41.0 s step, which waited "
        "36.9 s for scores: it is what the step waits for"]


def test_no_warning_while_scoring_hides_behind_generation():
    # Busy for longer than the step (several workers) but the driver hardly waited for it.
    assert reward_time_warnings(2, {"time/step": 10.0, "time/score_wait": 0.4, "time/reward/code": 30.0}) == []
    assert reward_time_warnings(2, {"time/step": 10.0, "time/score_wait": 5.0, "time/reward/code": 4.0}) == []
    assert reward_time_warnings(2, {"time/step": 1.0, "time/score_wait": 0.9}) == []  # no reward timed


def test_the_timings_of_scoring_reach_the_steps_metrics():
    recipe = Recipe(reward=RewardConfig(weights={"slow": 1.0}))
    samples = [Sample(prompt_ids=[1], completion_ids=[2], text=str(i), logprobs=[-1.0], finish_reason="stop",
                      weight_version=0) for i in range(2)]
    scores = [Score(total=float(i), components={"slow": float(i)}, seconds={"slow": 2.0}) for i in range(2)]
    intake = StepIntake(wanted=1, max_dropped=0)
    intake.accept(scored_group(ScoredGroup(PromptRow(index=0, prompt="p", fields={}), samples, scores), "grpo"), 0)
    timings = {"step": 5.0, "generate": 0.5, "score": 0.01, "score_wait": 4.0, "reward/slow": 4.0, "train": 0.4}
    metrics = step_metrics(recipe, intake, {"tokens": 4}, timings)
    assert metrics["time/score_wait"] == 4.0 and metrics["time/reward/slow"] == 4.0
    assert metrics["time/generate"] == 0.5
