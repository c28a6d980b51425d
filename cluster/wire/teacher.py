"""Wire types of the frozen teacher (on-policy distillation): what it is built from and what it
returns for each completion the student sampled.

Inputs are token ids in the vocabulary the student and the teacher share: the student's ids go
to the teacher unchanged. Cross-tokenizer distillation (a teacher with another vocabulary) will
come as a text-based entry point beside `Teacher.score` that re-tokenizes and aligns; these
types stay as they are, indexed by the student's completion positions.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TeacherSpec:
    """What a teacher actor loads and how it runs; built from the recipe, no defaults here."""

    model_path: str
    tokenizer_path: str  # empty: the model's own (read only by a text-based entry point)
    dtype: str  # "auto" (float32 on CPU, bfloat16 on CUDA), "float32", "bfloat16", "float16"
    device: str  # "auto" (CUDA when there is one), "cpu", "cuda"
    max_batch_tokens: int  # the most padded tokens in one forward; a longer sequence goes alone
    cpu_threads: int  # torch threads on CPU; 0: leave torch's choice
    trust_remote_code: bool


@dataclass(frozen=True)
class TeacherScore:
    """The teacher's view of one completion, position by position.

    `logprobs[i]` is the teacher's log-probability of completion token i given the prompt and
    completion[:i]; `greedy_ids[i]` the teacher's most likely token there (agreement with the
    student's choice is a metric).
    """

    logprobs: list[float]
    greedy_ids: list[int]

    def __post_init__(self):
        length = len(self.logprobs)
        if len(self.greedy_ids) != length:
            raise ValueError(f"{len(self.greedy_ids)} greedy ids for {length} logprobs")


@dataclass(frozen=True)
class TeacherInfo:
    """What a teacher actor runs, for the run's log."""

    model_path: str
    dtype: str
    device: str
    num_parameters: int
    vocab_size: int
