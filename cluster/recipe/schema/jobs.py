"""The settings of the commands beside `aha train`: rejection sampling (`[generate]`),
supervised fine-tuning (`[sft]`) and on-policy distillation (`[distill]`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from cluster.recipe.schema.setting import setting


@dataclass(frozen=True)
class GenerateConfig:
    """Rejection sampling (`aha generate`): sample completions of data.train_path's prompts on
    the rollout workers, verify them with the reward scorers, keep the verified ones as traces.

    A completion is verified when the correctness reward (`eval.correctness`, by default the
    first of reward.weights) gives it 1.0. rollout.temperature, top_p, top_k, stop and
    max_new_tokens apply; the traces are written to run.output_dir.
    """

    samples_per_prompt: int = setting(8, "Completions sampled per prompt.")
    num_prompts: int = setting(0, "The first N rows of data.train_path, in file order; 0: every row.")
    keep: Literal["all_correct", "shortest_correct"] = setting(
        "all_correct", "all_correct: every verified completion, in sampling order, up to max_per_prompt; "
                       "shortest_correct: the verified one with the fewest tokens (one per prompt).")
    max_per_prompt: int = setting(0, "Keep at most this many verified traces per prompt; 0: no cap.")
    dedupe: bool = setting(True, "Drop exact duplicate completions of the same prompt.")
    keep_rejected: bool = setting(False, "Also write the completions not kept, with why, to rejected.parquet.")
    chunk_prompts: int = setting(64, "Prompts per written part: a killed run loses at most the unwritten part.")


@dataclass(frozen=True)
class SFTConfig:
    """Supervised fine-tuning (`aha sft`) on a trace data set (Parquet or JSONL).

    Rows hold `prompt` + `completion` (the prompt is rendered with data.template, as in RL and
    eval; the completion is what the model writes after it) or `messages` (chat turns, rendered
    with the tokenizer's chat template when data.template = "chat"). The loss is the token NLL of
    the completion / assistant tokens only, with the tokenizer's EOS appended to each.
    """

    train_path: str = setting("", "The trace data set, Parquet or JSONL (what aha generate writes, or your own).")
    eval_path: str = setting("", "Held-out traces for the held-out loss; empty: none.")
    file_format: Literal["auto", "parquet", "jsonl"] = setting(
        "auto", "How the trace files are read; auto: by suffix.")
    shape: Literal["auto", "prompt_completion", "messages"] = setting(
        "auto", "prompt + completion columns, or a messages column of chat turns; auto: by the columns present.")
    prompt_column: str = setting("prompt", "The column holding the prompt.")
    completion_column: str = setting("completion", "The column holding the completion (its <think> part too).")
    messages_column: str = setting("messages", "The column holding the chat turns.")
    epochs: int = setting(1, "Passes over the traces, each in a seeded order.")
    batch_size: int = setting(32, "Sequences per optimizer step.")
    max_length: int = setting(1024, "The longest trace: prompt + completion + EOS tokens.")
    too_long: Literal["skip", "error"] = setting(
        "skip", "A longer trace is skipped and counted, or an error; it is never truncated.")
    eval_every: int = setting(0, "Steps between held-out loss and accuracy; 0: before and after training only.")
    eval_rows: int = setting(256, "Held-out loss on the first N rows of sft.eval_path.")
    shuffle: bool = setting(True, "Visit the traces in an order shuffled by run.seed; false: file order.")


@dataclass(frozen=True)
class DistillConfig:
    """On-policy distillation (`aha distill`): the student (model.path) samples on the rollout
    workers as in RL, a frozen teacher scores every sampled token, and the student learns from
    the per-token reverse KL to the teacher (learner/distill_loss.py), streamed, synced and
    checked for staleness exactly like `aha train`. Teacher and student share one vocabulary.
    """

    teacher: str = setting("", "The teacher: a hub id or a local directory (a run's final/).")
    teacher_tokenizer: str = setting("", "The teacher's tokenizer; empty: the teacher's own.")
    loss: Literal["advantage", "kl"] = setting(
        "advantage", "advantage: -kl_coef x (log π_student - log π_teacher) per token as the advantage of GRPO's "
                     "clipped policy loss, plus reward_weight x the task's group advantage; kl: the pure "
                     "distillation loss (no task term), importance-weighted by algorithm.tis_cap.")
    kl_coef: float = setting(1.0, "Weight of the per-token reverse KL to the teacher.")
    reward_weight: float = setting(0.0, "The task reward's share in advantage; 0: pure distillation.")
    num_teachers: int = setting(1, "Teacher actors, used round-robin.", resumable=True)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = setting(
        "auto", "The teacher's dtype; auto: float32 on CPU, bfloat16 on GPU.")
    max_batch_tokens: int = setting(16384, "Padded tokens per teacher forward; a longer sequence goes alone.",
                                    resumable=True)
    cpu_threads: int = setting(0, "torch threads of a teacher on CPU; 0: torch's choice.", resumable=True)
