"""The frozen teachers from the driver's side: N teacher actors, used round-robin.

The distillation driver hands each group of G samples to the next teacher. `submit` returns
at once, so scoring overlaps generation; `collect` waits, bounded by `cluster.timeout_s`. Like
a reward scorer, a teacher is pure: one that dies or stops answering is replaced (at most
`cluster.max_restarts` times a run) and every group it was grading is graded again on the
replacement, nothing lost or graded twice into the step. A teacher that cannot start, or that
is handed ids outside its vocabulary, stops the run with a one-line `RunFailed`, never a hang
or a remote traceback.
"""

from __future__ import annotations

import itertools
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace

from actors.teacher import Teacher
from cluster.roles.bundles import RolePlacement, bundle_of
from cluster.roles.calls import answered, get_all
from cluster.roles.recovery import Recovery, is_death, one_line, resend_after_replacing
from cluster.wire.errors import RunFailed
from cluster.wire.samples import Group
from cluster.wire.teacher import TeacherInfo, TeacherScore, TeacherSpec
from learner.distill_loss import distill_token_advantages


@dataclass
class PendingScores:
    """A scoring call in flight: `ref` (a Ray ObjectRef, for `ray.wait`), which teacher has it
    (its index and the actor itself: a replaced teacher's calls are sent again, not counted
    as a second death), the pairs (to grade them again) and when the driver stops waiting."""

    ref: object
    teacher: int
    actor: object
    pairs: tuple[list[list[int]], list[list[int]]]
    deadline: float  # cluster.timeout_s after the call was sent


class TeacherPool:
    """N teacher actors, used round-robin; every wait bounded, the dead replaced."""

    def __init__(self, spec: TeacherSpec, num_teachers: int, *, cpus_per_teacher: float, gpus_per_teacher: float,
                 timeout_s: float, nodes: list[str] | None = None, recovery: Recovery | None = None):
        import ray

        self._ray, self.timeout_s, self.spec = ray, timeout_s, spec
        self.recovery = recovery or Recovery(max_restarts=0)
        self._actor = ray.remote(Teacher)
        self._resources = {"num_cpus": cpus_per_teacher, "num_gpus": gpus_per_teacher}
        self.placed = RolePlacement(ray, bundle_of(cpus_per_teacher, gpus_per_teacher), num_teachers, nodes,
                                    timeout_s, "teachers")
        self.placement = self.placed.group  # placement.json reads it
        self.teachers = [self._launch(i) for i in range(num_teachers)]
        try:
            self.infos: list[TeacherInfo] = self._started(self.teachers, "teacher start")
        except RunFailed:
            self.shutdown()  # the teachers that did start would hold their resources until Ray ends
            raise
        self._turn = itertools.cycle(range(num_teachers))

    def _launch(self, index: int, where: dict | None = None):
        where = where or self.placed.options(index)
        return self._actor.options(**self._resources, **where).remote(self.spec)

    def _started(self, teachers: list, what: str) -> list[TeacherInfo]:
        """Wait (bounded) for `teachers` to load their models; one that cannot is a RunFailed."""
        try:
            with _one_line_failures(what):
                return get_all(self._ray, [t.model_info.remote() for t in teachers], self.timeout_s, what)
        except _TeacherLost as lost:  # at start there is nothing to go back to
            raise RunFailed(f"{what}: the teacher {lost.why}") from None

    def submit(self, prompts: list[list[int]], completions: list[list[int]]) -> PendingScores:
        """Start scoring (prompt ids, completion ids) pairs on the next teacher; returns at once."""
        teacher = next(self._turn)
        actor = self.teachers[teacher]
        return PendingScores(actor.score.remote(prompts, completions), teacher, actor, (prompts, completions),
                             time.monotonic() + self.timeout_s)

    def ready(self, pending: PendingScores) -> bool:
        """Whether `collect` would return (or replace a teacher: dead, past the deadline) without waiting."""
        return answered(self._ray, [pending.ref]) or time.monotonic() >= pending.deadline

    def collect(self, pending: PendingScores) -> list[TeacherScore]:
        """The scores of a submitted call, one per pair; waits at most until its deadline. A
        teacher that died or missed it is replaced and the pairs graded again there."""
        from ray.exceptions import GetTimeoutError

        while True:
            what = f"teacher {pending.teacher}"
            try:
                with _one_line_failures(what):
                    try:  # the deadline counts from submit: the call may have been running a while
                        return self._ray.get(pending.ref, timeout=max(pending.deadline - time.monotonic(), 0.0))
                    except GetTimeoutError:
                        raise _TeacherLost(f"did not answer within {self.timeout_s:g} s (cluster.timeout_s)") from None
            except _TeacherLost as lost:
                resend_after_replacing(pending, self.teachers, pending.teacher,
                                       lambda why=lost.why: self._replace(pending.teacher, why),
                                       lambda actor: actor.score.remote(*pending.pairs), self.timeout_s)

    def _replace(self, index: int, why: str) -> None:
        started = time.perf_counter()
        self.recovery.allow_restart("teacher", f"teacher {index} {why}")
        self._ray.kill(self.teachers[index], no_restart=True)
        self.teachers[index] = self._launch(index, self.placed.for_replacement(index, f"teacher {index}"))
        self._started([self.teachers[index]], f"replacement teacher {index} start")
        self.recovery.recovered(started, f"teacher {index} replaced")

    def score(self, prompts: list[list[int]], completions: list[list[int]]) -> list[TeacherScore]:
        """Score pairs now: `submit` then `collect`."""
        return self.collect(self.submit(prompts, completions))

    def shutdown(self) -> None:
        for teacher in self.teachers:
            self._ray.kill(teacher)
        self.placed.remove()


class _TeacherLost(Exception):
    """A teacher's process is gone or it missed its deadline: replace it. `why` says which."""

    def __init__(self, why: str):
        super().__init__(why)
        self.why = why


@contextmanager
def _one_line_failures(what: str):
    """A teacher that cannot start or refuses its input, as a one-line RunFailed saying which
    and why; one that died or did not answer, as _TeacherLost (collect replaces it)."""
    from ray.exceptions import RayActorError, RayTaskError

    try:
        yield
    except RayActorError as err:
        origin = err.args[0] if err.args else None
        if isinstance(origin, RayTaskError):  # Ray's form of "its __init__ raised"
            raise RunFailed(f"{what}: the teacher could not start: {one_line(origin)}") from None
        raise _TeacherLost(f"died ({one_line(err)})") from None
    except RayTaskError as err:
        if is_death(err):
            raise _TeacherLost(f"died ({one_line(err)})") from None
        # Ray re-raises the remote error with the whole traceback as its text; the cause
        # (e.g. a token id outside the teacher's vocabulary) has the one line.
        raise RunFailed(f"{what}: {one_line(err)}") from None
    except TimeoutError as err:  # after RayTaskError: a remote TimeoutError is one too (get_all's own, at start)
        raise _TeacherLost(f"did not answer: {err}") from None


def with_teacher_scores(group: Group, scores: list, distill) -> Group:
    """`group` with the teacher's score of every sampled token and, for distill.loss =
    "advantage", the per-token advantages reward_weight·A − kl_coef·(log π_student − log π_teacher)."""
    import torch


    token_advantages = []
    if distill.loss == "advantage":
        token_advantages = [
            distill_token_advantages(torch.tensor(s.logprobs, dtype=torch.float64),
                                     torch.tensor(score.logprobs, dtype=torch.float64), advantage,
                                     kl_coef=distill.kl_coef, reward_weight=distill.reward_weight).tolist()
            for s, score, advantage in zip(group.samples, scores, group.advantages, strict=True)]
    return replace(group, teacher=scores, token_advantages=token_advantages)


def distill_metrics(groups: list[Group]) -> dict[str, float]:
    """The step's reverse KL per sampled token (the engine's logprob minus the teacher's, mean
    over tokens), how often the student sampled the teacher's own top token, and token counts."""
    gaps, agree, tokens = 0.0, 0, 0
    for group in groups:
        for sample, score in zip(group.samples, group.teacher, strict=True):
            gaps += sum(s - t for s, t in zip(sample.logprobs, score.logprobs, strict=True))
            agree += sum(a == b for a, b in zip(sample.completion_ids, score.greedy_ids, strict=True))
            tokens += len(sample.completion_ids)
    return {"distill/reverse_kl": gaps / max(tokens, 1), "distill/teacher_agreement": agree / max(tokens, 1),
            "distill/teacher_tokens": tokens}
