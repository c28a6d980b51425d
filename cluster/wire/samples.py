"""Wire types: what flows between rollout workers, scorers and the learner.

Plain dataclasses of Python lists and numbers, so they cross Ray's object store cheaply and
import nothing heavy. Every sample records the weight version of the policy that produced it:
the learner uses it to check staleness, and the importance-sampling correction uses the
behaviour logprobs recorded here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

FinishReason = Literal["stop", "length", "abort"]


@dataclass(frozen=True)
class SamplingSpec:
    """How to sample one group: the recipe's rollout settings, in engine-neutral form.

    Built from the recipe by `cluster.startup.specs.sampling_spec` (no defaults here); evaluation and
    benchmarks vary it with `dataclasses.replace`.
    """

    group_size: int
    max_new_tokens: int
    temperature: float
    top_p: float
    top_k: int  # -1: no top-k
    stop: tuple[str, ...]
    seed: int | None  # a fixed seed makes the group reproducible; None: fresh per request
    ignore_eos: bool  # generate exactly max_new_tokens (benchmarks)


@dataclass(frozen=True)
class Sample:
    """One completion of a prompt. `logprobs[i]` is the engine's logprob of `completion_ids[i]`."""

    prompt_ids: list[int]
    completion_ids: list[int]
    text: str
    logprobs: list[float]
    finish_reason: FinishReason
    weight_version: int

    def __post_init__(self):
        if len(self.logprobs) != len(self.completion_ids):
            raise ValueError(f"{len(self.logprobs)} logprobs for {len(self.completion_ids)} completion tokens")


@dataclass
class Group:
    """The G samples of one prompt, with the dataset fields that reward functions read."""

    prompt_index: int
    prompt_text: str
    fields: dict[str, object]
    samples: list[Sample]
    rewards: list[float] = field(default_factory=list)
    advantages: list[float] = field(default_factory=list)
    components: list[dict[str, float]] = field(default_factory=list)  # per sample: reward name -> value
    # per sample: reward name -> why it failed (it got reward.failure_reward); absent if it succeeded
    failures: list[dict[str, str]] = field(default_factory=list)
    # On-policy distillation (`aha distill`), per sample: the teacher's view of each completion
    # token (cluster/wire/teacher.py's TeacherScore), and the per-token advantages built from it
    # (empty: the sample's advantage holds for all its tokens).
    teacher: list = field(default_factory=list)
    token_advantages: list[list[float]] = field(default_factory=list)
