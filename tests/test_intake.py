"""One step's intake (cluster/roles/intake.py): which groups are kept, and what the learner takes when
it is free. The real scorers, engines and learner ranks drive it in tests/test_stack_loop.py."""

import pytest

from actors.reward_scorer import Score
from cluster.inputs.data import PromptRow
from cluster.roles.intake import StepIntake, drop_reason, scored_group
from cluster.wire.errors import RunFailed
from cluster.wire.samples import Sample


def _group(index: int, rewards: list[float]):
    samples = [Sample(prompt_ids=[1], completion_ids=[2, 3], text="x", logprobs=[-0.5, -0.5], finish_reason="stop",
                      weight_version=0) for _ in rewards]
    scores = [Score(total=r, components={"r": r}) for r in rewards]
    return scored_group(PromptRow(index=index, prompt=f"p{index}", fields={}), samples, scores, "grpo")


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
