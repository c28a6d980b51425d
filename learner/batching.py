"""Turning training sequences into micro-batches for the learner: padded or packed.

Pure tensor code. Positions are aligned to *targets*: column t of `loss_mask`,
`behaviour_logp` and the learner's logprobs all refer to the token at `input_ids[:, t + 1]`.

Two layouts, one function (`micro_batches`):
- padded: one sequence per row, right-padded to the micro-batch's longest (`collate`);
- packed (padding-free): several sequences per row (`pack_rows` plans which), each with its
  own position ids starting at 0. Given position ids and no attention mask, transformers
  builds a block-diagonal causal mask from where the positions restart, so a packed sequence
  attends only to itself (flash-attention runs varlen from the same ids). The learner must
  then call the model with `attention_mask=None` and `use_cache=False` (a cache turns the
  detection off).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TrainSequence:
    """One completion to learn from: its prompt, its tokens, and what the rollout recorded."""

    prompt_ids: list[int]
    completion_ids: list[int]
    # The rollout engine's logprob of each completion token; None where no engine sampled
    # them (SFT traces): the behaviour logprobs are then 0 and unused.
    behaviour_logprobs: list[float] | None = None
    advantage: float = 0.0
    weight_version: int = 0
    # 1 where a completion token is learned from, 0 where it is context (a user turn between
    # two assistant turns of a chat); None: every completion token.
    completion_mask: list[int] | None = None
    # Per completion token, replacing `advantage` where given (on-policy distillation's
    # per-token reverse-KL advantage, learner/distill_loss.py).
    token_advantages: list[float] | None = None
    # The frozen teacher's logprob of each completion token (the distillation loss's target).
    teacher_logprobs: list[float] | None = None

    def __post_init__(self):
        if not self.prompt_ids:
            raise ValueError("a training sequence needs at least one prompt token")
        for name in ("behaviour_logprobs", "completion_mask", "token_advantages", "teacher_logprobs"):
            values = getattr(self, name)
            if values is not None and len(values) != len(self.completion_ids):
                raise ValueError(f"{len(values)} {name.replace('_', ' ')} for {len(self.completion_ids)} "
                                 "completion tokens")

    def __len__(self) -> int:
        return len(self.prompt_ids) + len(self.completion_ids)

    def target_mask(self) -> list[float]:
        """Per completion token: 1.0 if it is learned from."""
        mask = self.completion_mask if self.completion_mask is not None else [1] * len(self.completion_ids)
        return [float(m) for m in mask]

    def behaviour(self) -> list[float]:
        return list(self.behaviour_logprobs) if self.behaviour_logprobs is not None else [0.0] * len(self.completion_ids)

    def advantages(self) -> list[float]:
        """Per completion token: its own advantage, or the sequence's."""
        if self.token_advantages is not None:
            return list(self.token_advantages)
        return [self.advantage] * len(self.completion_ids)

    def teacher(self) -> list[float]:
        return list(self.teacher_logprobs) if self.teacher_logprobs is not None else [0.0] * len(self.completion_ids)


@dataclass
class MicroBatch:
    """B rows of at most L tokens, right-padded.

    input_ids: (B, L). loss_mask, behaviour_logp: (B, L-1), target-aligned, loss_mask 1 exactly
    on the completion tokens learned from. old_logp: (B, L-1) or None, filled in by the learner
    when it needs the pre-update logprobs later (ppo_epochs > 1).
    Padded (one sequence per row): attention_mask (B, L), advantages (B,) — or (B, L-1) when a
    sequence has per-token advantages —, position_ids and segments None. Packed:
    attention_mask None, position_ids (B, L) restarting at 0 for each sequence (and for the
    padding at a row's end), advantages (B, L-1) per token, segments (B, L-1) the index of the sequence each target belongs to (-1: none), for the losses that
    average per sequence. num_sequences: how many sequences the micro-batch holds.
    teacher_logp: (B, L-1) target-aligned teacher logprobs when the sequences carry them, else None.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor | None
    loss_mask: torch.Tensor
    behaviour_logp: torch.Tensor
    advantages: torch.Tensor
    old_logp: torch.Tensor | None = None
    position_ids: torch.Tensor | None = None
    segments: torch.Tensor | None = None
    num_sequences: int = 0
    teacher_logp: torch.Tensor | None = None

    @property
    def num_tokens(self) -> int:
        return int(self.loss_mask.sum())

    def to(self, device) -> "MicroBatch":
        moved = {name: t.to(device) if isinstance(t, torch.Tensor) else t for name, t in vars(self).items()}
        return MicroBatch(**moved)

    def model_inputs(self) -> dict:
        """The keyword arguments of the model's forward for this layout."""
        if self.position_ids is None:
            return {"input_ids": self.input_ids, "attention_mask": self.attention_mask}
        return {"input_ids": self.input_ids, "position_ids": self.position_ids, "use_cache": False}


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
    per_token = any(s.token_advantages is not None for s in sequences)
    token_advantages = torch.zeros_like(behaviour_logp) if per_token else None
    teacher_logp = torch.zeros_like(behaviour_logp) if _has_teacher(sequences) else None
    for row, seq in enumerate(sequences):
        prompt, completion = len(seq.prompt_ids), len(seq.completion_ids)
        input_ids[row, : prompt + completion] = torch.tensor(seq.prompt_ids + seq.completion_ids)
        attention_mask[row, : prompt + completion] = 1
        # The first completion token is predicted from the last prompt position.
        targets = slice(prompt - 1, prompt - 1 + completion)
        loss_mask[row, targets] = torch.tensor(seq.target_mask())
        behaviour_logp[row, targets] = torch.tensor(seq.behaviour())
        if token_advantages is not None:
            token_advantages[row, targets] = torch.tensor(seq.advantages())
        if teacher_logp is not None:
            teacher_logp[row, targets] = torch.tensor(seq.teacher())
    advantages = token_advantages if per_token else torch.tensor([s.advantage for s in sequences], dtype=torch.float32)
    return MicroBatch(input_ids, attention_mask, loss_mask, behaviour_logp, advantages, num_sequences=batch,
                      teacher_logp=teacher_logp)


def _has_teacher(sequences: list[TrainSequence]) -> bool:
    """Teacher logprobs come for every sequence of a distillation step or for none."""
    given = {s.teacher_logprobs is not None for s in sequences}
    if len(given) > 1:
        raise ValueError("some sequences carry teacher logprobs and some do not")
    return given == {True}


def pack_rows(lengths: list[int], width: int) -> list[list[int]]:
    """Plan packed rows: which sequences (by index into `lengths`) share a row of `width` tokens.

    First-fit decreasing: sequences longest first, each into the first row with room. A
    sequence longer than `width` gets a row of its own. Deterministic for equal inputs, so the
    driver and every learner rank plan the same rows. Rows come out fullest first.
    """
    if width < 1:
        raise ValueError(f"pack width must be >= 1, got {width}")
    rows: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        slot = next((r for r, free in enumerate(room) if free >= lengths[index]), None)
        if slot is None:
            rows.append([index])
            room.append(width - lengths[index])
        else:
            rows[slot].append(index)
            room[slot] -= lengths[index]
    return rows


def collate_packed(rows: list[list[TrainSequence]], pad_id: int) -> MicroBatch:
    """Lay packed rows out as one MicroBatch (shapes in MicroBatch's docstring)."""
    if not rows or not all(rows):
        raise ValueError("cannot collate an empty row")
    length = max(sum(len(s) for s in row) for row in rows)
    shape = (len(rows), length)
    input_ids = torch.full(shape, pad_id, dtype=torch.long)
    position_ids = torch.zeros(shape, dtype=torch.long)
    loss_mask = torch.zeros((len(rows), length - 1), dtype=torch.float32)
    behaviour_logp = torch.zeros_like(loss_mask)
    advantages = torch.zeros_like(loss_mask)
    teacher_logp = torch.zeros_like(loss_mask) if _has_teacher([s for row in rows for s in row]) else None
    segments = torch.full((len(rows), length - 1), -1, dtype=torch.long)
    number = 0
    for r, row in enumerate(rows):
        start = 0
        for seq in row:
            prompt, total = len(seq.prompt_ids), len(seq)
            input_ids[r, start:start + total] = torch.tensor(seq.prompt_ids + seq.completion_ids)
            position_ids[r, start:start + total] = torch.arange(total)
            targets = slice(start + prompt - 1, start + total - 1)  # the completion's targets
            loss_mask[r, targets] = torch.tensor(seq.target_mask())
            behaviour_logp[r, targets] = torch.tensor(seq.behaviour())
            advantages[r, targets] = torch.tensor(seq.advantages())
            if teacher_logp is not None:
                teacher_logp[r, targets] = torch.tensor(seq.teacher())
            segments[r, targets] = number
            start, number = start + total, number + 1
        # The padding is a "sequence" of its own (positions from 0): nothing real attends to it.
        position_ids[r, start:] = torch.arange(length - start)
    return MicroBatch(input_ids, None, loss_mask, behaviour_logp, advantages, position_ids=position_ids,
                      segments=segments, num_sequences=number, teacher_logp=teacher_logp)


def plan_micro_batches(lengths: list[int], micro_batch_size: int, *, packing: bool,
                       pack_length: int = 0) -> list[list[list[int]]]:
    """Micro-batches -> rows -> sequence indices, for sequences of these token lengths.

    Padded: one sequence per row, `micro_batch_size` rows per micro-batch, in order. Packed:
    rows of `pack_length` tokens (0: the longest sequence's length) planned by `pack_rows`,
    `micro_batch_size` rows per micro-batch. Pure, so the learner group can count a rank's
    micro-batches without tensors (ZeRO-3 needs every rank to run as many).
    """
    if micro_batch_size < 1:
        raise ValueError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
    if not lengths:
        return []
    if packing:
        rows = pack_rows(lengths, pack_length or max(lengths))
    else:
        rows = [[i] for i in range(len(lengths))]
    return [rows[start:start + micro_batch_size] for start in range(0, len(rows), micro_batch_size)]


def micro_batches(sequences: list[TrainSequence], micro_batch_size: int, pad_id: int, *, packing: bool = False,
                  pack_length: int = 0) -> list[MicroBatch]:
    """`sequences` as micro-batches of at most `micro_batch_size` rows (see plan_micro_batches)."""
    plan = plan_micro_batches([len(s) for s in sequences], micro_batch_size, packing=packing,
                              pack_length=pack_length)
    if not packing:
        return [collate([sequences[row[0]] for row in rows], pad_id) for rows in plan]
    return [collate_packed([[sequences[i] for i in row] for row in rows], pad_id) for rows in plan]


def empty_micro_batch(pad_id: int) -> MicroBatch:
    """A micro-batch with nothing to learn: a rank with fewer micro-batches than its peers
    runs these so every rank makes the same forward/backward calls (ZeRO-3's gathers)."""
    batch = collate([TrainSequence(prompt_ids=[pad_id], completion_ids=[pad_id], completion_mask=[0])], pad_id)
    batch.num_sequences = 0
    return batch


def token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Logprob of each next token: logits (B, L, V), input_ids (B, L) -> (B, L-1), fp32."""
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    return logp.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
