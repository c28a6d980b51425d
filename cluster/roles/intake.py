"""One step's intake of groups: scoring in flight, which groups are kept, what the learner takes.

The GRPO step (`cluster/commands/train.py`) waits on one thing at a time only when there is
nothing else to do: a group arriving from the engines, a score coming back, the learner
finishing a call. Groups come scored from cluster/roles/scoring.py; `scored_group` gives them
their advantages; `StepIntake` decides which the step takes and keeps them until the learner
is free; `LearnerFeed` then hands the learner all of them in one call.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import torch

from cluster.roles.scoring import ScoredGroup
from cluster.roles.teacher_pool import with_teacher_scores
from cluster.wire.errors import RunFailed
from cluster.wire.samples import Group
from learner.batching import TrainSequence
from learner.losses import group_advantages


def drop_reason(rewards: list[float], staleness: int, *, max_staleness: int, dynamic_sampling: bool) -> str | None:
    """Why a scored group is not trained on, or None to keep it.

    "stale": made by weights more than `max_staleness` versions old (async mode's bound).
    "flat": every reward equal, so every advantage is 0 and it teaches nothing (DAPO's
    dynamic sampling drops it and draws another prompt instead).
    """
    if staleness > max_staleness:
        return "stale"
    if dynamic_sampling and len(set(rewards)) == 1:
        return "flat"
    return None


@dataclass
class StepIntake:
    """The groups one step trains on, taken as they finish.

    `offer` keeps a scored group or drops it (`drop_reason`); accepted groups wait in
    `untrained` until the learner is free; dropped groups are counted by reason, and the step
    fails once more than `max_dropped` were dropped (a task the policy always solves or always
    fails cannot fill a dynamic-sampling step). Pure bookkeeping: no Ray, no clock.
    """

    wanted: int
    max_dropped: int
    max_staleness: int = 0
    dynamic_sampling: bool = False
    accepted: list[Group] = field(default_factory=list)
    staleness: list[int] = field(default_factory=list)
    untrained: list[Group] = field(default_factory=list)
    dropped: Counter = field(default_factory=Counter)

    @property
    def full(self) -> bool:
        return len(self.accepted) == self.wanted

    def offer(self, group: Group, version: int, step: int) -> bool:
        """Take `group` into the step, or drop it: whether it was taken. `version` is the
        learner's weight version now; a group's staleness is how far behind it its oldest
        sample's weights are. A dropped group is to be replaced by a fresh prompt."""
        staleness = version - min(s.weight_version for s in group.samples)
        reason = drop_reason(group.rewards, staleness, max_staleness=self.max_staleness,
                             dynamic_sampling=self.dynamic_sampling)
        if reason is not None:
            self.drop(reason, step)
            return False
        self.accept(group, staleness)
        return True

    def accept(self, group: Group, staleness: int) -> None:
        self.accepted.append(group)
        self.staleness.append(staleness)
        self.untrained.append(group)

    def take_untrained(self, multiple: int = 1) -> list[Group]:
        """The waiting groups, as many as divide evenly into `multiple` (the learner ranks);
        all of them once the step is full (the step's count divides evenly)."""
        count = len(self.untrained) if self.full else len(self.untrained) // multiple * multiple
        taken, self.untrained = self.untrained[:count], self.untrained[count:]
        return taken

    def drop(self, reason: str, step: int) -> None:
        self.dropped[reason] += 1
        if sum(self.dropped.values()) > self.max_dropped:
            raise RunFailed(f"step {step}: dropped {sum(self.dropped.values())} groups ({dict(self.dropped)}); "
                            "the step cannot be filled: every group was stale or its rewards were all equal "
                            "(a task the policy always solves or always fails, or a reward that always fails)")


class LearnerFeed:
    """The learner's forward/backward calls during one step: one call in flight at a time,
    handed every accepted group waiting whenever the learner is free, so the learner computes
    while the rest of the step is still generating and scoring."""

    def __init__(self, learners, num_ranks: int):
        self.learners, self.num_ranks, self.call = learners, num_ranks, None

    def refs(self) -> list:
        """What to wait on beside the stream: the call in flight, if any."""
        return list(self.call or [])

    def feed(self, intake: StepIntake, *, idle: bool) -> None:
        """Collect the call in flight once it has answered (or now, when the driver has nothing
        else to wait for: `idle`), then hand the learner what is waiting, in rank multiples."""
        if self.call is not None and (idle or self.learners.answered(self.call)):
            self.learners.finish(self.call)
            self.call = None
        if self.call is None and (taken := intake.take_untrained(self.num_ranks)):
            self.call = self.learners.submit([train_sequences(g) for g in taken], end_of_step=intake.full)

    def finish_step(self, intake: StepIntake) -> None:
        """The step's last groups, if the learner was busy when they came."""
        if self.call is not None:
            self.learners.finish(self.call)
            self.call = None
        if intake.untrained:
            self.learners.accumulate([train_sequences(g) for g in intake.take_untrained()], end_of_step=True)


def train_sequences(group: Group) -> list[TrainSequence]:
    """The learner's view of a scored group: one sequence per sample, with its advantage."""
    if len(group.advantages) != len(group.samples):
        raise ValueError(f"group {group.prompt_index}: {len(group.advantages)} advantages for "
                         f"{len(group.samples)} samples")
    teacher = group.teacher or [None] * len(group.samples)
    token_advantages = group.token_advantages or [None] * len(group.samples)
    return [
        TrainSequence(prompt_ids=s.prompt_ids, completion_ids=s.completion_ids,
                      behaviour_logprobs=s.logprobs, advantage=a, weight_version=s.weight_version,
                      token_advantages=per_token, teacher_logprobs=None if scored is None else scored.logprobs)
        for s, a, scored, per_token in zip(group.samples, group.advantages, teacher, token_advantages, strict=True)
    ]


def scored_group(scored: ScoredGroup, estimator: str, distill=None) -> Group:
    """A scored group (its `key` the prompt's dataset row) with its rewards and group-relative
    advantages (`estimator`); distilling (`distill`: the recipe's [distill]), with the teacher's
    score of every token and, for distill.loss = "advantage", the per-token advantages."""
    row, samples, scores = scored.key, scored.samples, scored.scores
    rewards = [s.total for s in scores]
    advantages = group_advantages(torch.tensor([rewards], dtype=torch.float64), estimator=estimator)[0]
    group = Group(prompt_index=row.index, prompt_text=row.prompt, fields=row.fields, samples=samples,
                  rewards=rewards, advantages=advantages.tolist(), components=[s.components for s in scores],
                  failures=[s.failures for s in scores])
    return with_teacher_scores(group, scored.teacher, distill) if scored.teacher is not None else group
