"""Pre-train the CPU demo's base model: next-token training on a synthetic chain-sum corpus.

R1-Zero RL starts from a *base* model: one that has seen text like the task but was never
taught to reason before answering. A random tiny model is not that, so the demo first gives
it a short pre-training (about a minute or two on 2 cores) on a corpus in the exact prompt
format the RL stage uses. The corpus imitates how base models behave: most answers are
*hasty* (no working, and wrong the way hasty answers are: only the first two terms added),
the rest *worked* (add step by step, then answer):

    4+7+2+9=? <think>4+7=11 11+2=13 13+9=22</think><answer>22</answer>     (worked)
    4+7+2+9=? <think></think><answer>11</answer>                            (hasty)

The base model therefore answers hastily under greedy decoding (near 0% held-out accuracy)
while working it out step by step in a fraction of its samples. Whatever accuracy the RL stage
adds is GRPO discovering that working pays; the before-RL accuracy is measured on this very
model. No held-out evaluation prompt is ever in the corpus.

Plain torch on the driver, before Ray starts; the result is an ordinary Hugging Face directory,
cached: a later run with the same settings reuses it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import time
from pathlib import Path

from cluster.inputs import pair_sum
from cluster.inputs.data import render_prompt
from cluster.inputs.tasks import task_options, task_rows
from cluster.inputs.tiny_model import PRETRAIN_RECORD, SPEC_MARKER, write_directory_atomic

RECORD = PRETRAIN_RECORD
# Pre-training pads each batch in buckets of similar length, at most this many tokens each.
PAD_BUCKET_TOKENS = 2048
PAD_WASTE_FOR_BUCKETS = 2.0  # ...when one padded batch would be more than this many times its tokens
THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE = "</think>", "<answer>", "</answer>"


def parse_terms(prompt: str) -> list[int]:
    """The terms of a chain-sum prompt: "4+7+2+9" -> [4, 7, 2, 9]."""
    try:
        terms = [int(part) for part in prompt.split("+")]
    except ValueError:
        raise ValueError(f"not a chain-sum prompt: {prompt!r:.60}") from None
    if len(terms) < 2:
        raise ValueError(f"not a chain-sum prompt: {prompt!r:.60}")
    return terms


def worked_solution(terms: list[int]) -> str:
    """Add left to right, one step per partial sum, then answer: '4+7=11 11+2=13</think>…'."""
    total, steps = terms[0], []
    for term in terms[1:]:
        steps.append(f"{total}+{term}={total + term}")
        total += term
    return " ".join(steps) + f"{THINK_CLOSE}{ANSWER_OPEN}{total}{ANSWER_CLOSE}"


def direct_solution(terms: list[int]) -> str:
    """The right answer at once, no working: what a direct-answer model is fine-tuned to write."""
    return f"{THINK_CLOSE}{ANSWER_OPEN}{sum(terms)}{ANSWER_CLOSE}"


def hasty_solution(terms: list[int]) -> str:
    """No working, and the typical hasty mistake: only the first two terms added."""
    return f"{THINK_CLOSE}{ANSWER_OPEN}{terms[0] + terms[1]}{ANSWER_CLOSE}"


def corpus_batch(recipe, step: int, exclude: frozenset[str], template_of) -> list[str]:
    """The texts (templated prompt + solution) of pre-training step `step`; deterministic.

    Prompts come from the recipe's task with a seed per step, minus `exclude`. chain_sum
    solutions are worked with probability `model.pretrain.worked_fraction`, else hasty;
    pair_sum ones check their guesses with probability `model.pretrain.checked_fraction`.
    """
    pretrain, synthetic = recipe.model.pretrain, recipe.data.synthetic
    seed = pretrain.seed * 1_000_003 + step
    rows = task_rows(synthetic.task, pretrain.batch_size, seed=seed, exclude=exclude, **task_options(synthetic))
    choose = random.Random(f"aha-pretrain:{seed}")
    texts = []
    for row in rows:
        if synthetic.task == "pair_sum":
            texts.append(pair_sum.corpus_text(row["prompt"], choose, template_of,
                                              checked_fraction=pretrain.checked_fraction,
                                              exercise_fraction=pretrain.exercise_fraction))
            continue
        terms = parse_terms(row["prompt"])
        text = worked_solution(terms) if choose.random() < pretrain.worked_fraction else hasty_solution(terms)
        texts.append(template_of(row["prompt"]) + text)
    return texts


def lr_at(step: int, *, steps: int, warmup: int, peak: float) -> float:
    """Linear warm-up to `peak`, then cosine decay to a tenth of it (`step` counts from 0)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def pretrain_settings(recipe, init_dir: str | os.PathLike, exclude: frozenset[str]) -> dict:
    """Everything the pre-trained model depends on; equal settings mean the cached one is valid."""
    synthetic = recipe.data.synthetic
    init_spec = json.loads((Path(init_dir) / SPEC_MARKER).read_text())
    task = {"name": synthetic.task, **task_options(synthetic)}
    pretrain = dict(vars(recipe.model.pretrain))
    del pretrain["template"]  # as "template" below: the one the corpus is written under, however it was set
    return {
        "init": init_spec,
        "pretrain": pretrain,
        "task": task,
        "template": corpus_template(recipe),
        "system_prompt": recipe.data.system_prompt,
        "excluded_prompts_sha256": hashlib.sha256("\n".join(sorted(exclude)).encode()).hexdigest(),
    }


def corpus_template(recipe) -> str:
    return recipe.model.pretrain.template or recipe.data.template


def ensure_pretrained(recipe, init_dir: str | os.PathLike, exclude: frozenset[str]) -> Path:
    """Pre-train `init_dir`'s model into `model.path` unless the same settings are there already."""
    out = Path(recipe.model.path)
    settings = pretrain_settings(recipe, init_dir, exclude)
    record = out / RECORD
    if record.is_file() and json.loads(record.read_text()).get("settings") == settings:
        print(f"[aha] reusing the pre-trained base model at {out}", flush=True)
        return out
    if record.is_file():  # this recipe's own cache, made with other settings
        print(f"[aha] the pre-training settings changed: replacing the pre-trained model at {out}", flush=True)
    return pretrain(recipe, init_dir, exclude, settings)


def pretrain(recipe, init_dir: str | os.PathLike, exclude: frozenset[str], settings: dict) -> Path:
    """Run the pre-training and write the model to `model.path` atomically; returns the path."""
    import torch
    from tqdm import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    pretrain_cfg, data = recipe.model.pretrain, recipe.data
    tokenizer = AutoTokenizer.from_pretrained(init_dir)
    model = AutoModelForCausalLM.from_pretrained(init_dir, dtype=torch.float32)
    model.train()
    torch.manual_seed(pretrain_cfg.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=pretrain_cfg.lr, betas=(0.9, 0.98), weight_decay=0.0)

    def template_of(prompt: str) -> str:
        return render_prompt(prompt, corpus_template(recipe), tokenizer=tokenizer, system_prompt=data.system_prompt)

    print(f"[aha] pre-training the base model: {pretrain_cfg.steps} steps x {pretrain_cfg.batch_size} texts, "
          f"{_corpus_mix(recipe)}", flush=True)
    started, loss_value = time.perf_counter(), float("nan")
    bar = tqdm(range(pretrain_cfg.steps), desc="pre-train", unit="step", dynamic_ncols=True)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, steps=pretrain_cfg.steps, warmup=pretrain_cfg.warmup_steps, peak=pretrain_cfg.lr)
        texts = corpus_batch(recipe, step, exclude, template_of)
        loss = _accumulate_batch_loss(model, _length_buckets(tokenizer, texts))
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise RuntimeError(f"pre-training diverged at step {step} (loss {loss_value}); lower model.pretrain.lr")
        bar.set_postfix_str(f"loss={loss_value:.3f}")
    bar.close()
    elapsed = time.perf_counter() - started
    print(f"[aha] pre-training done in {elapsed:.0f} s, final loss {loss_value:.3f}", flush=True)
    record = {"settings": settings, "final_loss": loss_value, "seconds": elapsed}
    return _save_atomic(model.eval(), tokenizer, init_dir, Path(recipe.model.path), record)


def _corpus_mix(recipe) -> str:
    """What the corpus holds, for the start line."""
    pretrain = recipe.model.pretrain
    if recipe.data.synthetic.task == "pair_sum":
        return (f"{pretrain.exercise_fraction:.0%} checking exercises, {pretrain.checked_fraction:.0%} of the task's "
                "own solutions checked")
    return f"{pretrain.worked_fraction:.0%} of them worked step by step"


def _accumulate_batch_loss(model, buckets: list):
    """Backward of the token-mean loss over all `buckets` (one padded batch each), bucket by
    bucket: each bucket's mean is weighted by its share of the predicted tokens, so the gradient
    is the whole batch's. Returns that loss (a detached scalar)."""
    import torch

    # A text of n tokens predicts n - 1 of them (the model shifts its labels by one).
    counts = [int((labels[:, 1:] != -100).sum()) for _, labels in buckets]
    total, loss_sum = sum(counts), torch.zeros(())
    for (input_ids, labels), count in zip(buckets, counts):
        loss = model(input_ids=input_ids, attention_mask=(labels != -100).long(), labels=labels).loss * (count / total)
        loss.backward()
        loss_sum += loss.detach()
    return loss_sum


def _length_buckets(tokenizer, texts: list[str], max_tokens: int = PAD_BUCKET_TOKENS) -> list:
    """The texts as padded batches of similar length, each at most `max_tokens` padded tokens
    (or one text): a few long texts no longer pad every short one to their width. One batch
    where padding it whole wastes little."""
    encoded = sorted((tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
                      for text in texts), key=len)
    # Each bucket is one more forward/backward call: on the demo's corpus (padding 1.7x its tokens)
    # buckets were 5-9% slower than one batch, on the pair_sum corpus (2.1x) 2.1x faster.
    if len(encoded[-1]) * len(encoded) <= PAD_WASTE_FOR_BUCKETS * sum(map(len, encoded)):
        return [_pad(tokenizer, encoded)]
    buckets, start = [], 0
    for end in range(1, len(encoded) + 1):
        if end == len(encoded) or len(encoded[end]) * (end + 1 - start) > max_tokens:
            buckets.append(_pad(tokenizer, encoded[start:end]))
            start = end
    return buckets


def _pad(tokenizer, encoded: list[list[int]]):
    """Right-padded input ids and labels (-100 on padding) for token lists that each end in EOS."""
    import torch

    width = max(map(len, encoded))
    input_ids = torch.full((len(encoded), width), tokenizer.pad_token_id)
    labels = torch.full((len(encoded), width), -100)
    for row, ids in enumerate(encoded):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, : len(ids)] = torch.tensor(ids)
    return input_ids, labels


def _save_atomic(model, tokenizer, init_dir, out: Path, record: dict) -> Path:
    """Write model, tokenizer and record to `out` in one rename (see write_directory_atomic)."""
    def fill(staging: Path) -> None:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        for name in ("generation_config.json", SPEC_MARKER):
            if (Path(init_dir) / name).is_file():
                shutil.copy2(Path(init_dir) / name, staging / name)
        (staging / RECORD).write_text(json.dumps(record, indent=2) + "\n")

    # Only a directory aha pre-trained or built is replaced (write_directory_atomic checks).
    return write_directory_atomic(out, fill, replace_pretrained=True)
