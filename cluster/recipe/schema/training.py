"""How a run learns: the rollout workers' sampling (`[rollout]`), the rewards (`[reward]`), the
GRPO family's loss (`[algorithm]`) and the DeepSpeed learner (`[learner]`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from cluster.recipe.schema.setting import setting


@dataclass(frozen=True)
class RolloutConfig:
    """vLLM rollout workers and the sampling settings of a group."""

    num_workers: int = setting(1, "vLLM rollout workers, each a Ray actor with its own engine; prompts are "
                                  "spread over them.", resumable=True)
    group_size: int = setting(8, "Completions sampled per prompt (a group; >= 2 for a group baseline).")
    prompts_per_step: int = setting(16, "Prompts (groups) per optimizer step; split evenly over learner.num_ranks.")
    max_new_tokens: int = setting(256, "The longest completion, in tokens.")
    temperature: float = setting(1.0, "Sampling temperature, in [0, 2].")
    top_p: float = setting(1.0, "Nucleus sampling, in (0, 1]; 1: off.")
    top_k: int = setting(-1, "Sample among the k most likely tokens; -1: no top-k.")
    stop: tuple[str, ...] = setting((), "Strings that end a completion (none empty).")
    max_model_len: int = setting(2048, "The engine's context length; at least data.max_prompt_tokens + "
                                       "max_new_tokens.")
    gpu_memory_utilization: float = setting(0.85, "Share of each GPU's memory vLLM may take (weights and KV "
                                                  "cache), in (0, 1].", resumable=True)
    kv_cache_gb: float = setting(0.0, "> 0: the KV cache's size in GiB, overriding gpu_memory_utilization "
                                      "(what a CPU engine uses).", resumable=True)
    tensor_parallel_size: int = setting(1, "GPUs per engine (tensor parallel), on one node.")
    enforce_eager: bool = setting(False, "Run the engine without CUDA graphs or compilation: faster start, "
                                         "slower decoding.", resumable=True)
    max_num_seqs: int = setting(
        0, "Sequences an engine decodes at once; 0: vLLM's default. Fewer make groups finish in waves, so the "
           "learner can start on the first while later ones still generate.", resumable=True)
    engine_core: Literal["auto", "spawned", "in_process"] = setting(
        "auto", "Where each engine's core runs: in a process vLLM spawns (spawned), or in the rollout worker's "
                "own process (in_process: no second interpreter and vLLM import, no IPC hop per decode step; an "
                "engine crash takes the worker with it, which is replaced like any dead worker). auto: in_process "
                "for engines on CPU, where it was measured faster; spawned on GPU, where it has not been measured.",
        resumable=True)
    weight_sync: Literal["wait", "abort"] = setting(
        "wait", "When new weights arrive: in-flight requests finish on the old weights (wait), or are aborted "
                "and re-queued on the new ones (abort).")
    sleep_between_steps: bool = setting(
        False, "Free the engines' GPU memory (vLLM sleep mode) for the learner's optimizer step and wake them "
               "for the weight push: for engines and a learner sharing GPUs. On-policy only "
               "(algorithm.max_staleness = 0); a no-op on CPU.", resumable=True)


@dataclass(frozen=True)
class RewardConfig:
    """Reward functions (built-in name or "package.module:function") and their scorers."""

    weights: dict[str, float] = setting(
        factory=lambda: {"math": 1.0},
        help="Reward function -> weight; the reward is their weighted sum. A name is built in (math, math_strict, "
             "format, format_strict, countdown, countdown_all, arithmetic, code) or \"package.module:function\" taking "
             "(completion, **row_fields).")
    num_scorers: int = setting(1, "Reward scorer actors.", resumable=True)
    workers_per_scorer: int = setting(2, "Worker processes of each scorer, which run the reward functions.",
                                      resumable=True)
    timeout_s: float = setting(10.0, "Seconds one reward call may take; past it the call gets failure_reward "
                                     "and its worker is replaced.", resumable=True)
    failure_reward: float = setting(0.0, "The reward of a call that hangs, raises, returns NaN/inf or a "
                                         "non-number, passes memory_mb, or kills its worker (counted and "
                                         "explained).")
    memory_mb: int = setting(1024, "Memory of each reward worker process with all it starts (a code reward's "
                                   "sandbox included); a call past it gets failure_reward and its worker is "
                                   "replaced. 0: no limit.", resumable=True)
    overlong_buffer_tokens: int = setting(
        0, "DAPO's soft over-long penalty: over the last N tokens before rollout.max_new_tokens it ramps from 0 "
           "to -overlong_penalty; 0 disables.")
    overlong_penalty: float = setting(1.0, "The over-long penalty at rollout.max_new_tokens and beyond (>= 0).")


@dataclass(frozen=True)
class AlgorithmConfig:
    """The GRPO family: advantage estimator, clipped policy loss, KL, staleness."""

    estimator: Literal["grpo", "dr_grpo", "rloo"] = setting(
        "grpo", "Group advantage: grpo (minus the group mean, over its std), dr_grpo (minus the group mean "
                "only), rloo (minus the mean of the other members).")
    loss_agg: Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"] = setting(
        "token_mean", "How token losses become the step's loss: the mean over all its tokens (token_mean), the "
                      "mean over sequences of each one's token mean, or Dr. GRPO's: each sequence's token sum over "
                      "rollout.max_new_tokens, averaged over sequences.")
    clip_low: float = setting(0.2, "Lower clip of the probability ratio (1 - clip_low), in [0, 1).")
    clip_high: float = setting(0.2, "Upper clip of the probability ratio (1 + clip_high); above clip_low is "
                                    "DAPO's clip-higher.")
    dual_clip: float = setting(0.0, "> 1 enables dual-clip (a bound on the loss of negative advantages); "
                                    "0 disables.")
    kl_coef: float = setting(0.0, "Weight of the KL to a frozen reference model; 0 disables the reference model "
                                  "entirely.")
    kl_kind: Literal["k1", "k2", "k3"] = setting("k3", "The per-token KL estimator, with d = logp - ref_logp: "
                                                       "k1 (d), k2 (d²/2), k3 (exp(-d) + d - 1).")
    entropy_coef: float = setting(0.0, "Weight of the entropy bonus; 0 disables.")
    tis_cap: float = setting(2.0, "Truncated importance sampling between the engine's and the learner's "
                                  "logprobs: the ratio's cap (>= 1); 0 disables.")
    ppo_epochs: int = setting(1, "Passes over each step's samples; later passes clip against the first "
                                 "pass's logprobs.")
    max_staleness: int = setting(
        0, "0: on-policy. s >= 1: the next steps' prompts keep generating while the learner trains, on "
           "samples at most s weight versions old (<= 16).")
    dynamic_sampling: bool = setting(False, "Drop groups whose rewards are all equal (no signal) and draw "
                                            "more prompts (DAPO).")


@dataclass(frozen=True)
class LearnerConfig:
    """The DeepSpeed ZeRO learner group."""

    num_ranks: int = setting(1, "Learner ranks: Ray actors that are the ranks of one DeepSpeed job.")
    zero_stage: int = setting(2, "DeepSpeed ZeRO stage: 0, 1, 2 or 3.")
    lr: float = setting(1e-6, "Peak learning rate (AdamW).")
    weight_decay: float = setting(0.0, "AdamW weight decay.")
    adam_betas: tuple[float, ...] = setting((0.9, 0.999), "AdamW's two betas, each in [0, 1).")
    adam_eps: float = setting(1e-8, "AdamW's epsilon (> 0).")
    warmup_steps: int = setting(0, "Steps of linear learning-rate warm-up.")
    lr_schedule: Literal["constant", "linear", "cosine"] = setting(
        "constant", "The learning rate after warm-up: constant, linear decay to 0 at the run's last step, "
                    "or a half-period cosine.")
    grad_clip: float = setting(1.0, "Gradient norm clipping; 0: off.")
    micro_batch_size: int = setting(4, "Sequences (rows, when packing) per forward/backward.")
    gradient_checkpointing: bool = setting(False, "Recompute activations in the backward pass: less memory, "
                                                  "more compute.")
    dtype: Literal["auto", "float32", "bfloat16"] = setting("auto", "Training dtype; auto: float32 on CPU, "
                                                                    "bfloat16 on GPU.")
    cpu_threads: int = setting(
        0, "torch CPU threads per rank; 0: Ray's default, the rank's cluster.learner_cpus (at least 1). More "
           "than the CPUs reserved lets a CPU learner use cores the rollout leaves idle.", resumable=True)
    on_nonfinite: Literal["stop", "skip"] = setting(
        "stop", "A step whose loss or gradients are not finite: stop the run with one line, or skip its optimizer "
                "update (weights and optimizer state unchanged, counted in the metrics).")
    packing: bool = setting(
        True, "Padding-free micro-batches: sequences are packed into rows (each attends only to itself, positions "
              "restart per sequence) instead of one padded row each. GRPO and SFT alike.")
    pack_length: int = setting(0, "Packed rows are this many tokens wide; 0: as wide as the longest sequence of "
                                  "the call. A micro-batch holds micro_batch_size rows.")
