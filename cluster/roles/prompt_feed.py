"""The prompts a training run feeds the rollout workers, step by step.

On-policy (`algorithm.max_staleness = 0`) each step's prompts start generating when the step
starts. In async mode the next `max_staleness` steps' prompts are already generating while the
learner trains. A group dropped from a step (stale, or flat under dynamic sampling) is replaced
by a fresh prompt in the same stream. The sampler's position before a batch was drawn is kept
with it, so a checkpoint resumes at the first prompt not yet trained on.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from cluster.inputs.prompts import encode_prompts


@dataclass
class Batch:
    """One step's prompts, generating: their stream, the rows drawn, and where the sampler stood before."""

    stream: object  # a GroupStream (cluster/roles/rollout_pool.py)
    rows: list = field(default_factory=list)
    sampler_before: dict = field(default_factory=dict)


class PromptFeed:
    """Draws each step's prompts from `sampler` and starts them on `pool`, `lookahead` steps ahead."""

    def __init__(self, recipe, tokenizer, sampler, pool, sampling):
        self.recipe, self.tokenizer, self.sampler, self.pool, self.sampling = recipe, tokenizer, sampler, pool, sampling
        self.lookahead = recipe.algorithm.max_staleness
        self._pending: deque[Batch] = deque()
        self._current: Batch | None = None

    def next_batch(self) -> Batch:
        """This step's batch; the next `lookahead` steps' batches start generating too."""
        while len(self._pending) < 1 + self.lookahead:
            before = self.sampler.state_dict()
            drawn = self.sampler.next_batch(self.recipe.rollout.prompts_per_step)
            stream = self.pool.stream(encode_prompts(self.recipe, self.tokenizer, drawn), self.sampling)
            self._pending.append(Batch(stream=stream, rows=drawn, sampler_before=before))
        self._current = self._pending.popleft()
        return self._current

    def rewind(self, sampler_state: dict) -> None:
        """Start over from `sampler_state` (a checkpoint's): what is generating now, for this
        step and those ahead, is cancelled and never delivered; the next batch is drawn afresh."""
        for batch in [self._current, *self._pending]:
            if batch is not None:
                batch.stream.cancel()
        self._pending.clear()
        self._current = None
        self.sampler.load_state_dict(sampler_state)

    def replace_dropped(self, batch: Batch) -> None:
        """A fresh prompt in `batch`'s stream, in place of a group the step dropped."""
        drawn = self.sampler.next_batch(1)
        batch.rows.extend(drawn)
        batch.stream.add(encode_prompts(self.recipe, self.tokenizer, drawn), self.sampling)

    def sampler_state(self) -> dict:
        """Where a resumed run draws from: before the batches already generating ahead."""
        return self._pending[0].sampler_before if self._pending else self.sampler.state_dict()
