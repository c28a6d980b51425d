"""Pre-train the demo's base model: a short next-token run on synthetic worked arithmetic.

R1-Zero RL needs a base model that already writes the answer format and is right some of the
time: GRPO learns only from groups with mixed rewards. A random-init tiny model is neither, so
the CPU demo first trains it for a minute or two on a synthetic corpus of worked examples in the
exact text the RL stage shows it (R1-Zero template + question, then
` 47 + 38 = 85 </think> <answer>85</answer>`). In the corpus the result is the true one only a
fraction of the time and otherwise a near-miss (off by one, off by ten, digits swapped): the
base then writes the format reliably and is only partly correct, while the true answer stays in
its sampling distribution, so the RL stage has an honest gain to find.

The corpus never contains a held-out evaluation problem (the caller names them; it is asserted).
Plain torch, AdamW, CPU; the written model is an ordinary Hugging Face directory.
"""

from __future__ import annotations

import json
import math
import random
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from cluster.data import R1_ZERO_TEMPLATE, PROMPT_PLACEHOLDER, render_prompt
from cluster.tasks import arithmetic_rows
from rewards.arithmetic import arithmetic_reward

NEAR_MISS_KINDS = ("plus_one", "minus_one", "plus_ten", "minus_ten", "swap")
PRETRAIN_RECORD = "aha_pretrain.json"
_QUESTION = re.compile(r"What is (\d+) ([-+*]) (\d+)\?")


@dataclass(frozen=True)
class CorpusSpec:
    """What the synthetic corpus looks like (the task settings should match the demo's data).

    `correct_fraction` of the examples carry the true result; the rest a near-miss whose kind
    is drawn with `near_miss_weights` (one weight per entry of NEAR_MISS_KINDS).
    """

    min_digits: int = 1
    max_digits: int = 2
    ops: str = "+-"
    correct_fraction: float = 0.3
    near_miss_weights: tuple[float, ...] = (0.6, 0.1, 0.1, 0.1, 0.1)
    worked: bool = True  # restate the problem before the result; False: the answer alone


def near_miss(value: int, kind: str) -> int:
    """A wrong but plausible result: `value` off by one or ten, or its digits swapped.

    "swap" reverses the digits of |value| keeping the sign (85 -> 58, -12 -> -21); where that
    changes nothing (7, 44, 30 -> 3 is a change) it falls back to value + 1, so the result is
    never the true one.
    """
    offsets = {"plus_one": 1, "minus_one": -1, "plus_ten": 10, "minus_ten": -10}
    if kind in offsets:
        return value + offsets[kind]
    if kind != "swap":
        raise ValueError(f"unknown near-miss kind {kind!r} (known: {', '.join(NEAR_MISS_KINDS)})")
    swapped = int(str(abs(value))[::-1]) * (-1 if value < 0 else 1)
    return swapped if swapped != value else value + 1


def worked_completion(question: str, result: int, *, worked: bool = True) -> str:
    """The completion that follows the template's `<think>` for `question`, stating `result`."""
    match = _QUESTION.fullmatch(question)
    if match is None:
        raise ValueError(f"not an arithmetic question: {question!r}")
    left, op, right = match.groups()
    reasoning = f" {left} {op} {right} = {result}" if worked else ""
    return f"{reasoning} </think> <answer>{result}</answer>"


def build_corpus(
    n: int, *, seed: int, exclude: set[str], spec: CorpusSpec = CorpusSpec()
) -> list[tuple[str, str]]:
    """`n` (question, completion) pairs; no question is in `exclude` (asserted).

    Questions come from the arithmetic task generator with the spec's digits and ops; rows whose
    question is excluded are skipped and more are drawn. Same seed, same corpus.
    """
    if len(spec.near_miss_weights) != len(NEAR_MISS_KINDS):
        raise ValueError(f"near_miss_weights needs {len(NEAR_MISS_KINDS)} weights")
    rng = random.Random(f"aha-pretrain-corpus:{seed}")
    corpus: list[tuple[str, str]] = []
    draw = 0
    while len(corpus) < n:
        # Over-draw a little so a large exclusion set rarely needs a second round.
        rows = arithmetic_rows(
            2 * (n - len(corpus)) + 16, seed=seed * 1_000 + draw, min_digits=spec.min_digits,
            max_digits=spec.max_digits, ops=spec.ops,
        )
        draw += 1
        for row in rows:
            if row["prompt"] in exclude or len(corpus) == n:
                continue
            result = int(row["answer"])
            if rng.random() >= spec.correct_fraction:
                kind = rng.choices(NEAR_MISS_KINDS, weights=spec.near_miss_weights)[0]
                result = near_miss(result, kind)
            corpus.append((row["prompt"], worked_completion(row["prompt"], result, worked=spec.worked)))
    assert not exclude.intersection(q for q, _ in corpus), "held-out question in the corpus"
    return corpus


@dataclass
class EncodedCorpus:
    """Token ids of a corpus split around the template's shared head.

    Every example starts with the same `head` (the R1-Zero preamble up to the question); `tails`
    hold the rest (question, `Assistant: <think>`, completion, EOS) and `starts[i]` is the index
    in `tails[i]` where the completion begins (the loss covers the completion only).
    """

    head: list[int]
    tails: list[list[int]]
    starts: list[int]


def encode_corpus(tokenizer, corpus: Sequence[tuple[str, str]], template: str = "r1_zero"):
    """Tokenize a corpus the way the RL stage tokenizes prompts (no added special tokens)."""
    head_text = (R1_ZERO_TEMPLATE if template == "r1_zero" else template).split(PROMPT_PLACEHOLDER)[0]
    head = tokenizer(head_text, add_special_tokens=False)["input_ids"]
    prompts = [render_prompt(q, template) for q, _ in corpus]
    prompt_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer([p + c for p, (_, c) in zip(prompts, corpus)], add_special_tokens=False)["input_ids"]
    tails, starts = [], []
    for p_ids, f_ids in zip(prompt_ids, full_ids):
        # Exact by construction: the prompt's tokens are a prefix of the example's tokens.
        if f_ids[: len(p_ids)] != p_ids or p_ids[: len(head)] != head:
            raise ValueError("prompt tokens are not a prefix of the example's tokens")
        tails.append(f_ids[len(head):] + [tokenizer.eos_token_id])
        starts.append(len(p_ids) - len(head))
    return EncodedCorpus(head=head, tails=tails, starts=starts)


def batch_loss(model, head: list[int], tails: Sequence[list[int]], starts: Sequence[int], pad_id: int):
    """Mean next-token cross-entropy over the completion tokens of a batch of examples.

    The shared head runs once (with gradients) and its key/value cache is repeated across the
    batch, so a 330-token preamble costs one sequence, not one per example. Tails are right-
    padded: under the causal mask a real token never attends to a pad that follows it.
    """
    import torch
    from transformers import DynamicCache

    batch, width = len(tails), max(len(t) for t in tails)
    ids = torch.full((batch, width), pad_id, dtype=torch.long)
    labels = torch.full((batch, width), -100, dtype=torch.long)
    for i, (tail, start) in enumerate(zip(tails, starts)):
        ids[i, : len(tail)] = torch.tensor(tail)
        labels[i, start : len(tail)] = torch.tensor(tail[start:])
    cache = DynamicCache(config=model.config)
    model.model(input_ids=torch.tensor([head]), past_key_values=cache, use_cache=True)
    cache.batch_repeat_interleave(batch)
    positions = torch.arange(len(head), len(head) + width).expand(batch, -1)
    logits = model(input_ids=ids, past_key_values=cache, position_ids=positions, use_cache=True).logits
    # A completion starts after its question, so position 0 of a tail is never a label.
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100
    )


def _lr_factor(step: int, steps: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.1 + 0.45 * (1 + math.cos(math.pi * progress))


def train_steps(
    model, encoded: EncodedCorpus, *, steps: int, batch_size: int, lr: float, seed: int,
    pad_id: int, log_every: int = 0,
) -> list[float]:
    """Run `steps` AdamW steps over shuffled batches of `encoded`; returns the loss of each step."""
    import torch

    order = list(range(len(encoded.tails)))
    rng = random.Random(f"aha-pretrain-order:{seed}")
    rng.shuffle(order)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: _lr_factor(s, steps, max(1, steps // 20))
    )
    model.train()
    losses, cursor, started = [], 0, time.monotonic()
    for step in range(steps):
        if cursor + batch_size > len(order):
            rng.shuffle(order)
            cursor = 0
        picked = order[cursor : cursor + batch_size]
        cursor += batch_size
        loss = batch_loss(model, encoded.head, [encoded.tails[i] for i in picked],
                          [encoded.starts[i] for i in picked], pad_id)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if log_every and (step + 1) % log_every == 0:
            print(f"pretrain step {step + 1}/{steps} loss {loss.item():.4f} "
                  f"({time.monotonic() - started:.0f}s)", flush=True)
    model.eval()
    return losses


def save_model_atomic(model, tokenizer, out_dir: str | Path, *, record: Mapping | None = None) -> Path:
    """Write model, tokenizer (and `record` as PRETRAIN_RECORD) to `out_dir` via temp dir + rename.

    A crash never leaves a half-written model where a later run would load it.
    """
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        if record is not None:
            (staging / PRETRAIN_RECORD).write_text(json.dumps(record, indent=2) + "\n")
        if out.exists():
            # Move the old directory aside first so `out` is never missing a complete model
            # for longer than two renames.
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            out.rename(old / "model")
            staging.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def pretrain_base_model(
    model_dir: str | Path,
    out_dir: str | Path,
    *,
    task_rows_exclude: set[str],
    steps: int,
    seed: int,
    batch_size: int = 64,
    lr: float = 2e-3,
    corpus: CorpusSpec = CorpusSpec(),
    template: str = "r1_zero",
    log_every: int = 0,
) -> Path:
    """Pre-train the model at `model_dir` on a synthetic corpus; write it to `out_dir`.

    `task_rows_exclude` holds the question texts ("What is 3 + 4?") that must not appear in the
    corpus: the held-out evaluation problems. The corpus has `steps * batch_size` examples, so
    each is seen once. The output directory also holds PRETRAIN_RECORD: the settings, the loss
    of every step and the wall time. Returns `out_dir`.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps} and {batch_size}")
    started = time.monotonic()
    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    examples = build_corpus(steps * batch_size, seed=seed, exclude=set(task_rows_exclude), spec=corpus)
    encoded = encode_corpus(tokenizer, examples, template)
    losses = train_steps(model, encoded, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                         pad_id=tokenizer.pad_token_id, log_every=log_every)
    record = {
        "source": str(model_dir), "steps": steps, "batch_size": batch_size, "lr": lr,
        "seed": seed, "template": template, "corpus": asdict(corpus),
        "corpus_examples": len(examples), "excluded_questions": len(task_rows_exclude),
        "losses": losses, "seconds": round(time.monotonic() - started, 2),
    }
    return save_model_atomic(model, tokenizer, out_dir, record=record)


def greedy_completions(
    model, tokenizer, prompts: Sequence[str], *, max_new_tokens: int, batch_size: int,
    template: str = "r1_zero",
) -> list[str]:
    """Greedy completions (special tokens dropped, R1 tags kept) of the rendered `prompts`."""
    import torch

    tokenizer.padding_side = "left"  # generation continues from the right end
    texts = []
    for begin in range(0, len(prompts), batch_size):
        rendered = [render_prompt(p, template) for p in prompts[begin : begin + batch_size]]
        inputs = tokenizer(rendered, add_special_tokens=False, padding=True, return_tensors="pt")
        with torch.no_grad():
            output = model.generate(
                **inputs, do_sample=False, max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
            )
        new_tokens = output[:, inputs["input_ids"].shape[1]:]
        texts.extend(tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
    return texts


def _pairs(prompts_with_answers: Iterable) -> list[tuple[str, str]]:
    """Accept (prompt, answer) pairs or task rows {"prompt": ..., "answer": ...}."""
    return [
        (row["prompt"], row["answer"]) if isinstance(row, Mapping) else (row[0], row[1])
        for row in prompts_with_answers
    ]


def evaluate_accuracy(
    model_dir: str | Path,
    prompts_with_answers: Iterable,
    *,
    max_new_tokens: int,
    batch_size: int,
    template: str = "r1_zero",
) -> float:
    """Greedy accuracy of the model at `model_dir`, graded by the `arithmetic` reward.

    `prompts_with_answers`: (question, answer) pairs or task rows with "prompt" and "answer".
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    pairs = _pairs(prompts_with_answers)
    if not pairs:
        raise ValueError("evaluate_accuracy needs at least one problem")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    completions = greedy_completions(
        model, tokenizer, [p for p, _ in pairs], max_new_tokens=max_new_tokens,
        batch_size=batch_size, template=template,
    )
    rewards = [arithmetic_reward(c, answer=a) for c, (_, a) in zip(completions, pairs)]
    return sum(rewards) / len(rewards)
