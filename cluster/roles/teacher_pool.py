"""The frozen teachers from the driver's side: N teacher actors, used round-robin.

The distillation driver hands each group of G samples to the next teacher. `submit` returns
at once, so scoring overlaps generation; `collect` waits, bounded by `cluster.timeout_s`. A
teacher that died, hung, or was handed ids outside its vocabulary stops the run with a
one-line `RunFailed`, never a hang or a remote traceback.
"""

from __future__ import annotations

import itertools
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace

from actors.teacher import Teacher
from cluster.roles.bundles import bundle_of, in_bundle, placed_group, remove_group
from cluster.roles.calls import answered, get_all
from cluster.roles.recovery import one_line
from cluster.wire.errors import RunFailed
from cluster.wire.samples import Group
from cluster.wire.teacher import TeacherInfo, TeacherScore, TeacherSpec
from learner.distill_loss import distill_token_advantages


@dataclass(frozen=True)
class PendingScores:
    """A scoring call in flight: `ref` (a Ray ObjectRef, for `ray.wait`) and which teacher has it."""

    ref: object
    teacher: int
    deadline: float  # when the driver stops waiting for it (cluster.timeout_s after submit)


class TeacherPool:
    """N teacher actors, used round-robin; every wait bounded."""

    def __init__(self, spec: TeacherSpec, num_teachers: int, *, cpus_per_teacher: float, gpus_per_teacher: float,
                 timeout_s: float, nodes: list[str] | None = None):
        import ray

        self._ray, self.timeout_s = ray, timeout_s
        actor, resources = ray.remote(Teacher), {"num_cpus": cpus_per_teacher, "num_gpus": gpus_per_teacher}
        self.placement = placed_group(ray, bundle_of(cpus_per_teacher, gpus_per_teacher), num_teachers, nodes,
                                      timeout_s, "teachers")
        self.teachers = [actor.options(**resources, **in_bundle(self.placement, i)).remote(spec)
                         for i in range(num_teachers)]
        try:
            with _one_line_failures("teacher start"):
                self.infos: list[TeacherInfo] = get_all(ray, [t.model_info.remote() for t in self.teachers],
                                                        timeout_s, "teacher start")
        except RunFailed:
            self.shutdown()  # the teachers that did start would hold their resources until Ray ends
            raise
        self._turn = itertools.cycle(range(num_teachers))

    def submit(self, prompts: list[list[int]], completions: list[list[int]]) -> PendingScores:
        """Start scoring (prompt ids, completion ids) pairs on the next teacher; returns at once."""
        teacher = next(self._turn)
        return PendingScores(self.teachers[teacher].score.remote(prompts, completions), teacher,
                             time.monotonic() + self.timeout_s)

    def ready(self, pending: PendingScores) -> bool:
        """Whether `collect` would return (or fail: a dead teacher, the deadline) without waiting."""
        return answered(self._ray, [pending.ref]) or time.monotonic() >= pending.deadline

    def collect(self, pending: PendingScores) -> list[TeacherScore]:
        """The scores of a submitted call, one per pair; waits at most `timeout_s`."""
        what = f"teacher {pending.teacher}"
        from ray.exceptions import GetTimeoutError

        with _one_line_failures(what):
            try:  # the deadline counts from submit: the call may have been running a while
                return self._ray.get(pending.ref, timeout=max(pending.deadline - time.monotonic(), 0.0))
            except GetTimeoutError:
                raise TimeoutError(f"{what} did not answer within {self.timeout_s:g} s (cluster.timeout_s)") from None

    def score(self, prompts: list[list[int]], completions: list[list[int]]) -> list[TeacherScore]:
        """Score pairs now: `submit` then `collect`."""
        return self.collect(self.submit(prompts, completions))

    def shutdown(self) -> None:
        for teacher in self.teachers:
            self._ray.kill(teacher)
        remove_group(self.placement)


@contextmanager
def _one_line_failures(what: str):
    """A dead, silent or refusing teacher, as a one-line RunFailed saying which and why."""
    from ray.exceptions import RayActorError, RayTaskError

    try:
        yield
    except RayActorError as err:
        origin = err.args[0] if err.args else None
        if isinstance(origin, RayTaskError):  # Ray's form of "its __init__ raised"
            raise RunFailed(f"{what}: the teacher could not start: {one_line(origin)}") from None
        raise RunFailed(f"{what}: the teacher actor died ({one_line(err)}); see the Ray logs") from None
    except RayTaskError as err:
        # Ray re-raises the remote error with the whole traceback as its text; the cause
        # (e.g. a token id outside the teacher's vocabulary) has the one line.
        raise RunFailed(f"{what}: {one_line(err)}") from None
    except TimeoutError as err:  # after RayTaskError: a remote TimeoutError is one too
        raise RunFailed(str(err)) from None


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
