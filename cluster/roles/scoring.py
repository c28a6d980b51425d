"""The one stream -> score -> consume path: training, evaluation and generation all use it.

Groups finish on the rollout workers one by one (`GroupStream.next_event`); each goes to the
reward scorers (and, distilling, the teacher) the moment it arrives, so scoring overlaps
generation instead of blocking the driver per group; `ScoresInFlight` hands them back scored,
in the order they arrived, without waiting on any still out. `consume_scored` is the whole loop
for a command that only consumes (evaluation, generation); the GRPO step runs the same two
calls in its own loop, beside the learner's.

What scoring costs is booked apart from generation: each reward's busy seconds on the scorers
(`reward/<name>`, measured there) and the driver's waits for scores once the engines had
delivered their last group (`score_wait`).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from cluster.wire.phases import timed


@dataclass
class ScoredGroup:
    """A group back from scoring: what the caller submitted it with (`key`: a dataset row, a
    position), its samples, one Score per sample, and the teacher's scores when distilling."""

    key: object
    samples: list
    scores: list
    teacher: list | None = None


@dataclass
class _Pending:
    key: object
    samples: list
    ticket: object  # a ScoreTicket (cluster/roles/scorer_pool.py)
    teacher: object = None  # the teacher's PendingScores (cluster/roles/teacher_pool.py)


class ScoresInFlight:
    """Groups sent to the scorers (and the teacher) as they arrive, handed back scored in the
    order they arrived. `timings` (optional) adds the seconds spent collecting to "score" and
    "teacher", each reward's busy seconds on the scorers to "reward/<name>", and to
    "score_wait" the caller's waits that a score ended after the latest group had come (taken
    out of "generate", where the caller times its waits): with the engines done, the time the
    driver stood waiting for rewards. A wait a score ended is booked at once and given back
    should another group come after it: the engines were still being waited for then."""

    def __init__(self, scorers, teacher=None, timings: dict | None = None):
        self.scorers, self.teacher = scorers, teacher
        self.timings = timings if timings is not None else {}
        self.timings.setdefault("score_wait", 0.0)
        self._queue: deque[_Pending] = deque()
        self._waiting_since: float | None = None  # when the caller last took refs() to wait on
        self._since_group = 0.0  # score_wait booked since the latest group came

    @property
    def pending(self) -> int:
        return len(self._queue)

    def submit(self, key, fields: dict, samples: list) -> None:
        """Score `samples` with the dataset row's `fields`; the teacher scores them too, if any."""
        ticket = self.scorers.submit([s.text for s in samples], fields, [len(s.completion_ids) for s in samples])
        teacher = (self.teacher.submit([s.prompt_ids for s in samples], [s.completion_ids for s in samples])
                   if self.teacher is not None else None)
        self._queue.append(_Pending(key, samples, ticket, teacher))
        self._waiting_since = None  # this wait ended with a group: the engines were waited for
        self._book_score_wait(-self._since_group)  # and so were they in the waits since the last one

    def refs(self) -> list:
        """What to wait on beside the stream: the oldest group's score (and teacher) call."""
        if not self._queue:
            return []
        self._waiting_since = time.perf_counter()
        head = self._queue[0]
        return [head.ticket.ref] + ([head.teacher.ref] if head.teacher is not None else [])

    def take_ready(self) -> list[ScoredGroup]:
        """The groups whose scores are in, oldest first, without waiting on any still out (a
        scorer past its deadline is replaced and the group scored again: that does wait)."""
        ready = []
        if self._waiting_since is not None and self._queue and self._head_ready():
            self._book_score_wait(time.perf_counter() - self._waiting_since)
        self._waiting_since = None
        while self._queue and self._head_ready():
            item = self._queue.popleft()
            with timed(self.timings, "score"):
                scores = self.scorers.collect(item.ticket)
            for score in scores:
                for name, seconds in score.seconds.items():
                    self.timings[f"reward/{name}"] = self.timings.get(f"reward/{name}", 0.0) + seconds
            teacher = None
            if item.teacher is not None:
                with timed(self.timings, "teacher"):
                    teacher = self.teacher.collect(item.teacher)
            ready.append(ScoredGroup(item.key, item.samples, scores, teacher))
        return ready

    def _book_score_wait(self, seconds: float) -> None:
        """Move `seconds` of the caller's waits from "generate" to "score_wait" (back, if negative)."""
        if "generate" in self.timings:  # the caller's own clock of its waits
            seconds = min(seconds, self.timings["generate"])
            self.timings["generate"] -= seconds
        self.timings["score_wait"] += seconds
        self._since_group += seconds

    def _head_ready(self) -> bool:
        head = self._queue[0]
        if not self.scorers.ready(head.ticket):
            return False
        return head.teacher is None or self.teacher.ready(head.teacher)


def consume_scored(stream, scoring: ScoresInFlight, on_group: Callable, on_scored: Callable[[ScoredGroup], None]) -> None:
    """Until `stream` has ended and every group is scored: `on_group(index, samples)` for each
    finished group (it submits to `scoring`, and may add prompts to the stream), `on_scored`
    for each scored one. Every wait is the stream's or the scorers' own, bounded."""
    while not (stream.ended and not scoring.pending):
        event = stream.next_event(also=scoring.refs())
        if event.group is not None:
            on_group(*event.group)
        for scored in scoring.take_ready():
            on_scored(scored)
