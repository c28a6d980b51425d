"""The frozen teacher of on-policy distillation: a causal LM that scores the student's samples.

A plain class; the driver launches it as a Ray actor (`ray.remote(Teacher)`) on its own
GPU(s), or as a plain transformers forward pass on CPU: the same code, the device and dtype
being settings. Given (prompt, completion) token ids it returns, for every completion token,
the teacher's logprob of it and its own argmax (`TeacherScore`).

The ids come from another model's sampler, so they are checked against the teacher's
vocabulary before they reach an embedding lookup (on CUDA an out-of-range index is a device
assert that takes the process down, not an error).
"""

from __future__ import annotations

import inspect

import torch

from cluster.wire.teacher import TeacherInfo, TeacherScore, TeacherSpec

# Completion positions whose float32 log-softmax is computed at once: bounds the extra memory
# to this many rows of the vocabulary (2048 x 152k x 4 bytes = 1.2 GiB for a Qwen vocabulary).
SOFTMAX_ROWS = 2048


def resolve_device_and_dtype(spec: TeacherSpec) -> tuple[torch.device, torch.dtype]:
    """fp32 on CPU, bf16 on CUDA, unless the spec names them."""
    cuda = torch.cuda.is_available() if spec.device == "auto" else spec.device == "cuda"
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    name = spec.dtype if spec.dtype != "auto" else ("bfloat16" if cuda else "float32")
    return device, getattr(torch, name)


def plan_batches(lengths: list[int], max_batch_tokens: int) -> list[list[int]]:
    """Indices of sequences grouped into batches of at most `max_batch_tokens` padded tokens.

    Longest first, so neighbours have similar lengths (little padding) and the largest batch
    comes first (running out of memory shows at once). A sequence longer than the budget goes
    alone.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for index in order:
        # The first of a batch is its longest: padded size = rows x that length.
        if batches and (len(batches[-1]) + 1) * lengths[batches[-1][0]] <= max_batch_tokens:
            batches[-1].append(index)
        else:
            batches.append([index])
    return batches


def _as_list(chunks: list[torch.Tensor]) -> list:
    """Per-chunk results as one Python list: a single `tolist` (one copy off the device)."""
    return torch.cat(chunks).tolist() if chunks else []


class Teacher:
    """A frozen causal LM: `score` gives its logprobs of completions the student sampled."""

    def __init__(self, spec: TeacherSpec):
        from transformers import AutoModelForCausalLM

        if spec.max_batch_tokens < 1:
            raise ValueError(f"teacher max_batch_tokens must be >= 1 (got {spec.max_batch_tokens})")
        if spec.cpu_threads > 0:
            torch.set_num_threads(spec.cpu_threads)
        self.spec = spec
        self.device, self.dtype = resolve_device_and_dtype(spec)
        model = AutoModelForCausalLM.from_pretrained(spec.model_path, dtype=self.dtype,
                                                     trust_remote_code=spec.trust_remote_code)
        self.model = model.to(self.device).eval().requires_grad_(False)
        # The embedding table is what an id indexes; the logits have (at least) as many columns.
        self._vocab_size = self.model.get_input_embeddings().num_embeddings
        # Logits of the prompt positions are never needed: models that can skip them, do.
        self._can_skip_logits = "logits_to_keep" in inspect.signature(self.model.forward).parameters

    def vocab_size(self) -> int:
        return self._vocab_size

    def pid(self) -> int:
        """This actor's process id (fault injection kills it: cluster/run/chaos.py)."""
        import os

        return os.getpid()

    def model_info(self) -> TeacherInfo:
        return TeacherInfo(model_path=self.spec.model_path, dtype=str(self.dtype).removeprefix("torch."),
                           device=str(self.device), num_parameters=sum(p.numel() for p in self.model.parameters()),
                           vocab_size=self._vocab_size)

    def score(self, prompts: list[list[int]], completions: list[list[int]]) -> list[TeacherScore]:
        """One `TeacherScore` per (prompt ids, completion ids) pair, in order; ids in the
        shared vocabulary. Pairs are batched by length up to `spec.max_batch_tokens`."""
        self._check(prompts, completions)
        scores = [None if completion else TeacherScore(logprobs=[], greedy_ids=[])
                  for completion in completions]
        todo = [i for i, completion in enumerate(completions) if completion]
        lengths = [len(prompts[i]) + len(completions[i]) for i in todo]
        with torch.inference_mode():
            for batch in plan_batches(lengths, self.spec.max_batch_tokens):
                rows = [todo[b] for b in batch]
                batch_scores = self._score_batch([prompts[i] for i in rows], [completions[i] for i in rows])
                for i, score in zip(rows, batch_scores):
                    scores[i] = score
        return scores

    def _check(self, prompts: list[list[int]], completions: list[list[int]]) -> None:
        """Reject what another model's sampler could hand over that this model cannot score."""
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts for {len(completions)} completions")
        for index, (prompt, completion) in enumerate(zip(prompts, completions)):
            if completion and not prompt:
                raise ValueError(f"pair {index}: an empty prompt (the first completion token has no context)")
            ids = prompt + completion
            if ids and (min(ids) < 0 or max(ids) >= self._vocab_size):
                token = next(t for t in ids if not 0 <= t < self._vocab_size)
                raise ValueError(f"pair {index}: token id {token} is outside the teacher's vocabulary "
                                 f"(size {self._vocab_size}); do the student and teacher share a tokenizer?")

    def _score_batch(self, prompts: list[list[int]], completions: list[list[int]]) -> list[TeacherScore]:
        """One right-padded forward over the batch; log-softmax over completion positions only."""
        lengths = [len(p) + len(c) for p, c in zip(prompts, completions)]
        width = max(lengths)
        input_ids = torch.zeros((len(prompts), width), dtype=torch.long)  # id 0 under the mask: any valid id
        attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, (prompt, completion) in enumerate(zip(prompts, completions)):
            input_ids[row, :lengths[row]] = torch.tensor(prompt + completion)
            attention_mask[row, :lengths[row]] = 1
        # Position t predicts token t + 1: completion token i of a row sits at len(prompt) + i.
        start = min(len(p) for p in prompts) - 1  # the first position any row needs logits at
        extra = {"logits_to_keep": width - start} if self._can_skip_logits else {}
        logits = self.model(input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device),
                            **extra).logits
        offset = start if self._can_skip_logits else 0  # logits[:, j] is position j + offset
        rows = torch.cat([torch.full((len(c),), row) for row, c in enumerate(completions)])
        positions = torch.cat([torch.arange(len(c)) + len(p) - 1 - offset for p, c in zip(prompts, completions)])
        targets = torch.tensor([t for c in completions for t in c], device=self.device)
        picked = logits[rows.to(self.device), positions.to(self.device)]  # (tokens, vocab), model dtype
        del logits
        logprobs, greedy = self._token_stats(picked, targets)
        return self._split(completions, logprobs, greedy)

    @staticmethod
    def _token_stats(logits: torch.Tensor, targets: torch.Tensor) -> tuple[list, list]:
        """Per row of `logits` (tokens, vocab): the target's logprob and the argmax, from a
        float32 log-softmax done SOFTMAX_ROWS rows at a time."""
        logprobs, greedy = [], []
        for first in range(0, logits.shape[0], SOFTMAX_ROWS):
            logp = torch.log_softmax(logits[first:first + SOFTMAX_ROWS].float(), dim=-1)
            chunk_targets = targets[first:first + SOFTMAX_ROWS, None]
            logprobs.append(logp.gather(-1, chunk_targets).squeeze(-1))
            greedy.append(logp.argmax(dim=-1))
        return _as_list(logprobs), _as_list(greedy)

    @staticmethod
    def _split(completions: list[list[int]], logprobs: list, greedy: list) -> list[TeacherScore]:
        """Cut the batch's flat per-token lists back into one score per completion."""
        scores, first = [], 0
        for completion in completions:
            end = first + len(completion)
            scores.append(TeacherScore(logprobs=logprobs[first:end], greedy_ids=greedy[first:end]))
            first = end
        return scores
