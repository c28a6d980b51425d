"""What a learner rank is built from: the recipe's learner, algorithm and model settings."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LearnerSpec:
    """Everything a learner rank needs; picklable, so Ray ships it to each rank.

    Built from the recipe by `cluster/startup/specs.py`; no defaults of its own (the recipe's are the
    defaults).
    """

    model_path: str
    zero_stage: int
    dtype: str  # auto: float32 on CPU, bfloat16 on GPU
    device: str  # auto: cuda when the rank sees a GPU
    lr: float
    weight_decay: float
    adam_betas: tuple[float, ...]
    adam_eps: float
    warmup_steps: int
    lr_schedule: str
    total_steps: int
    grad_clip: float
    micro_batch_size: int  # rows per forward/backward
    packing: bool  # several sequences per row, each attending only to itself
    pack_length: int  # packed row width in tokens; 0: the longest sequence of the call
    # a registered objective (learner/objectives.py): "grpo", the policy loss below; "sft",
    # token NLL; "distill", the reverse-KL distillation loss against teacher logprobs
    objective: str
    gradient_checkpointing: bool
    cpu_threads: int  # torch threads on CPU; 0: leave as the process has it
    on_nonfinite: str  # "stop" | "skip": a step whose loss or gradients are not finite
    # the GRPO-family loss (learner/losses.py)
    loss_agg: str
    clip_low: float
    clip_high: float
    dual_clip: float
    kl_coef: float
    kl_kind: str
    entropy_coef: float
    tis_cap: float
    ppo_epochs: int
    max_new_tokens: int  # Dr. GRPO's constant normaliser
    seed: int
    timeout_s: float  # every collective and rendezvous
