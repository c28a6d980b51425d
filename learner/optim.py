"""Optimizer settings for the DeepSpeed engine: the learning-rate schedule and the config dict."""

from __future__ import annotations

import math


def lr_multiplier(step: int, *, warmup_steps: int, total_steps: int, schedule: str) -> float:
    """Factor on the base learning rate at optimizer step `step` (0-based).

    Linear warm-up over `warmup_steps` (step 0 gets 1/warmup, so the first update is not
    wasted), then "constant", "linear" decay to 0 at `total_steps`, or half-period "cosine".
    """
    if schedule not in ("constant", "linear", "cosine"):
        raise ValueError(f"unknown learning-rate schedule {schedule!r}")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    span = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / span, 1.0)
    if schedule == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def deepspeed_config(*, zero_stage: int, micro_batch_size: int, grad_clip: float, bf16: bool) -> dict:
    """The DeepSpeed config. The optimizer and scheduler are passed in as objects, not here.

    Gradient accumulation is driven by the learner (a step's groups stream in, their number
    known only at the end), so DeepSpeed's own accumulation count stays 1 and the learner
    marks the boundary itself.
    """
    zero: dict = {"stage": zero_stage}
    if zero_stage == 3:
        # Gather every parameter on use and release it after: memory stays near one layer.
        zero.update({"stage3_param_persistence_threshold": 0, "stage3_prefetch_bucket_size": 0})
    return {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": grad_clip,
        "zero_optimization": zero,
        "bf16": {"enabled": bf16},
        "steps_per_print": 2**31 - 1,
        "zero_allow_untested_optimizer": True,
        "wall_clock_breakdown": False,
    }
