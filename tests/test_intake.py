"""The GRPO step's pure decisions, without Ray: which groups are kept or dropped (and replaced),
what the learner takes when it is free, when the step is full, and where a resumed run draws
its prompts from (cluster/roles/intake.py, cluster/roles/prompt_feed.py). The real scorers,
engines and learner ranks drive the same code in tests/test_stack_loop.py."""

import pytest

from actors.reward_scorer import Score
from cluster.inputs.data import PromptRow
from cluster.roles.intake import StepIntake, drop_reason, scored_group
from cluster.roles.scoring import ScoredGroup
from cluster.wire.errors import RunFailed
from cluster.wire.samples import Sample


def _group(index: int, rewards: list[float], weight_version: int = 0):
    samples = [Sample(prompt_ids=[1], completion_ids=[2, 3], text="x", logprobs=[-0.5, -0.5], finish_reason="stop",
                      weight_version=weight_version) for _ in rewards]
    scores = [Score(total=r, components={"r": r}) for r in rewards]
    return scored_group(ScoredGroup(PromptRow(index=index, prompt=f"p{index}", fields={}), samples, scores), "grpo")


def test_a_group_is_dropped_when_stale_or_flat():
    assert drop_reason([0.0, 1.0], 2, max_staleness=1, dynamic_sampling=False) == "stale"
    assert drop_reason([1.0, 1.0], 0, max_staleness=0, dynamic_sampling=True) == "flat"
    assert drop_reason([1.0, 1.0], 0, max_staleness=0, dynamic_sampling=False) is None
    assert drop_reason([0.0, 1.0], 1, max_staleness=1, dynamic_sampling=True) is None


def test_advantages_are_group_relative():
    group = _group(3, [0.0, 1.0, 1.0, 2.0])
    assert group.prompt_index == 3 and group.rewards == [0.0, 1.0, 1.0, 2.0]
    std = 0.5 ** 0.5  # the population std of (0, 1, 1, 2): mean 1, squared deviations 1, 0, 0, 1
    assert group.advantages == pytest.approx([-1 / std, 0.0, 0.0, 1 / std], rel=1e-5)


def test_the_free_learner_takes_every_group_waiting_in_multiples_of_the_ranks_then_the_rest():
    intake = StepIntake(wanted=6, max_dropped=1)
    for index in range(3):
        intake.accept(_group(index, [0.0, 1.0]), 0)
    # Two ranks: three groups waiting, the learner takes two now and the third waits.
    assert [g.prompt_index for g in intake.take_untrained(2)] == [0, 1]
    assert [g.prompt_index for g in intake.untrained] == [2]
    assert intake.take_untrained(2) == []  # one group cannot be split over two ranks
    for index in range(3, 6):
        intake.accept(_group(index, [0.0, 1.0]), 0)
    assert intake.full
    # The step is full: everything that is left goes, in the order it came.
    assert [g.prompt_index for g in intake.take_untrained(2)] == [2, 3, 4, 5] and intake.untrained == []
    assert [g.prompt_index for g in intake.accepted] == list(range(6))


def test_a_step_that_cannot_be_filled_stops_in_one_line():
    intake = StepIntake(wanted=2, max_dropped=1)
    intake.drop("flat", step=4)
    with pytest.raises(RunFailed, match=r"^step 4: dropped 2 groups \(\{'flat': 1, 'stale': 1\}\)"):
        intake.drop("stale", step=4)


def test_offer_takes_a_group_with_its_staleness_or_drops_it_for_a_replacement():
    intake = StepIntake(wanted=2, max_dropped=4, max_staleness=1, dynamic_sampling=True)
    assert intake.offer(_group(0, [0.0, 1.0], weight_version=3), version=4, step=5)  # one version behind
    assert not intake.offer(_group(1, [0.0, 1.0], weight_version=2), version=4, step=5)  # two: stale
    assert not intake.offer(_group(2, [1.0, 1.0], weight_version=4), version=4, step=5)  # flat
    assert intake.dropped == {"stale": 1, "flat": 1} and not intake.full
    assert intake.offer(_group(3, [1.0, 0.0], weight_version=4), version=4, step=5)
    assert intake.full and intake.staleness == [1, 0] and [g.prompt_index for g in intake.accepted] == [0, 3]


class _RecordingLearners:
    """The learner group's driver-side calls, recorded: what LearnerFeed decides to send when."""

    def __init__(self):
        self.calls, self.answers = [], False

    def submit(self, groups, *, end_of_step):
        self.calls.append(("submit", len(groups), end_of_step))
        return [f"ref{len(self.calls)}"]

    def answered(self, refs):
        return self.answers

    def finish(self, refs):
        self.calls.append(("finish", refs))

    def accumulate(self, groups, *, end_of_step):
        self.calls.append(("accumulate", len(groups), end_of_step))


def test_the_learner_feed_keeps_one_call_in_flight_and_ends_the_step_with_the_rest():
    from cluster.roles.intake import LearnerFeed

    learners, intake = _RecordingLearners(), StepIntake(wanted=3, max_dropped=0)
    feed = LearnerFeed(learners, num_ranks=1)
    intake.accept(_group(0, [0.0, 1.0]), 0)
    feed.feed(intake, idle=False)  # the learner is free: it takes the waiting group
    assert learners.calls == [("submit", 1, False)] and feed.refs() == ["ref1"]
    intake.accept(_group(1, [0.0, 1.0]), 0)
    feed.feed(intake, idle=False)  # busy, not answered: nothing more is sent, the group waits
    assert len(learners.calls) == 1 and len(intake.untrained) == 1
    learners.answers = True
    intake.accept(_group(2, [0.0, 1.0]), 0)
    feed.feed(intake, idle=False)  # answered: collected, and both waiting groups go, ending the step
    assert learners.calls[1:] == [("finish", ["ref1"]), ("submit", 2, True)]
    feed.finish_step(intake)
    assert learners.calls[3:] == [("finish", ["ref3"])] and feed.call is None and intake.untrained == []


def test_the_learner_feed_sends_the_steps_leftovers_when_the_learner_was_busy():
    from cluster.roles.intake import LearnerFeed

    learners, intake = _RecordingLearners(), StepIntake(wanted=2, max_dropped=0)
    feed = LearnerFeed(learners, num_ranks=2)
    intake.accept(_group(0, [0.0, 1.0]), 0)
    feed.feed(intake, idle=False)  # one group cannot be split over two ranks: it waits
    assert learners.calls == []
    intake.accept(_group(1, [0.0, 1.0]), 0)
    feed.finish_step(intake)  # the step is full: what waits goes in one last call
    assert learners.calls == [("accumulate", 2, True)]


class _RecordingStream:
    def __init__(self, prompts):
        self.prompts = list(prompts)

    def add(self, prompts, sampling):
        self.prompts += prompts


class _RecordingPool:
    def __init__(self):
        self.streams = []

    def stream(self, prompts, sampling):
        self.streams.append(_RecordingStream(prompts))
        return self.streams[-1]


def test_the_prompt_feed_draws_ahead_replaces_drops_and_resumes_before_the_lookahead(tiny_model_dir):
    from dataclasses import replace

    from transformers import AutoTokenizer

    from cluster.inputs.data import PromptSampler
    from cluster.recipe import Recipe
    from cluster.roles.prompt_feed import PromptFeed

    recipe = Recipe()
    recipe = replace(recipe, rollout=replace(recipe.rollout, prompts_per_step=2),
                     algorithm=replace(recipe.algorithm, max_staleness=1))
    rows = [PromptRow(index=i, prompt=f"{i}+1", fields={}) for i in range(10)]
    sampler, pool = PromptSampler(rows, seed=0, shuffle=False), _RecordingPool()
    feed = PromptFeed(recipe, AutoTokenizer.from_pretrained(tiny_model_dir), sampler, pool, sampling=None)
    first = feed.next_batch()  # async, one step ahead: this step's and the next step's prompts generate
    assert [r.index for r in first.rows] == [0, 1] and len(pool.streams) == 2
    resumed = PromptSampler(rows, seed=0, shuffle=False)
    resumed.load_state_dict(feed.sampler_state())  # a checkpoint now re-draws the step generating ahead
    assert [r.index for r in resumed.next_batch(2)] == [2, 3]
    feed.replace_dropped(first)  # a dropped group's replacement: the next fresh prompt, same stream
    assert [r.index for r in first.rows] == [0, 1, 4] and len(pool.streams[0].prompts) == 3
