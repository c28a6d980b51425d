"""Turning scored groups into padded micro-batches for the learner.

Pure tensor code: the learner runs each micro-batch through forward/backward as soon as its
group arrives. Positions are aligned to *targets*: column t of `loss_mask`, `behaviour_logp`
and the learner's logprobs all refer to the token at `input_ids[:, t + 1]`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TrainSequence:
    """One completion to learn from: its prompt, its tokens, and what the rollout recorded."""

    prompt_ids: list[int]
    completion_ids: list[int]
    behaviour_logprobs: list[float]  # the rollout engine's logprob of each completion token
    advantage: float
    weight_version: int = 0

    def __post_init__(self):
        if not self.prompt_ids:
            raise ValueError("a training sequence needs at least one prompt token")
        if len(self.behaviour_logprobs) != len(self.completion_ids):
            raise ValueError(
                f"{len(self.behaviour_logprobs)} behaviour logprobs for {len(self.completion_ids)} completion tokens"
            )


@dataclass
class MicroBatch:
    """Right-padded tensors for B sequences of at most L tokens.

    input_ids, attention_mask: (B, L). loss_mask, behaviour_logp: (B, L-1), target-aligned,
    loss_mask 1 exactly on completion tokens. advantages: (B,). old_logp: (B, L-1) or None,
    filled in by the learner when it needs the pre-update logprobs later (ppo_epochs > 1).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    loss_mask: torch.Tensor
    behaviour_logp: torch.Tensor
    advantages: torch.Tensor
    old_logp: torch.Tensor | None = None

    @property
    def num_tokens(self) -> int:
        return int(self.loss_mask.sum())

    def to(self, device) -> "MicroBatch":
        moved = {name: None if t is None else t.to(device) for name, t in vars(self).items()}
        return MicroBatch(**moved)


def collate(sequences: list[TrainSequence], pad_id: int) -> MicroBatch:
    """Pad `sequences` on the right into one MicroBatch (shapes in MicroBatch's docstring)."""
    if not sequences:
        raise ValueError("cannot collate an empty list of sequences")
    length = max(len(s.prompt_ids) + len(s.completion_ids) for s in sequences)
    batch = len(sequences)
    input_ids = torch.full((batch, length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((batch, length), dtype=torch.long)
    loss_mask = torch.zeros((batch, length - 1), dtype=torch.float32)
    behaviour_logp = torch.zeros((batch, length - 1), dtype=torch.float32)
    for row, seq in enumerate(sequences):
        prompt, completion = len(seq.prompt_ids), len(seq.completion_ids)
        input_ids[row, : prompt + completion] = torch.tensor(seq.prompt_ids + seq.completion_ids)
        attention_mask[row, : prompt + completion] = 1
        # The first completion token is predicted from the last prompt position.
        loss_mask[row, prompt - 1 : prompt - 1 + completion] = 1.0
        behaviour_logp[row, prompt - 1 : prompt - 1 + completion] = torch.tensor(seq.behaviour_logprobs)
    advantages = torch.tensor([s.advantage for s in sequences], dtype=torch.float32)
    return MicroBatch(input_ids, attention_mask, loss_mask, behaviour_logp, advantages)


def micro_batches(sequences: list[TrainSequence], micro_batch_size: int, pad_id: int) -> list[MicroBatch]:
    """Split `sequences` in order into micro-batches of at most `micro_batch_size` sequences."""
    if micro_batch_size < 1:
        raise ValueError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
    return [
        collate(sequences[start : start + micro_batch_size], pad_id)
        for start in range(0, len(sequences), micro_batch_size)
    ]


def token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Logprob of each next token: logits (B, L, V), input_ids (B, L) -> (B, L-1), fp32."""
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    return logp.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
