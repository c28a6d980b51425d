"""What a learner rank is built from: the recipe's learner, algorithm and model settings."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LearnerSpec:
    """Everything a learner rank needs; picklable, so Ray ships it to each rank."""

    model_path: str
    zero_stage: int = 2
    dtype: str = "auto"  # auto: float32 on CPU, bfloat16 on GPU
    device: str = "auto"  # auto: cuda when the rank sees a GPU
    lr: float = 1e-6
    weight_decay: float = 0.0
    adam_betas: tuple[float, ...] = (0.9, 0.999)
    adam_eps: float = 1e-8
    warmup_steps: int = 0
    lr_schedule: str = "constant"
    total_steps: int = 1000
    grad_clip: float = 1.0
    micro_batch_size: int = 4
    gradient_checkpointing: bool = False
    cpu_threads: int = 0  # torch threads on CPU; 0: leave as the process has it
    # the GRPO-family loss (learner/losses.py)
    loss_agg: str = "token_mean"
    clip_low: float = 0.2
    clip_high: float = 0.2
    dual_clip: float = 0.0
    kl_coef: float = 0.0
    kl_kind: str = "k3"
    entropy_coef: float = 0.0
    tis_cap: float = 2.0
    ppo_epochs: int = 1
    max_new_tokens: int = 256  # Dr. GRPO's constant normaliser
    seed: int = 0
    timeout_s: float = 600.0  # every collective and rendezvous


def learner_spec_from_recipe(recipe, model_path: str | None = None) -> LearnerSpec:
    """The learner settings of a recipe (duck-typed `cluster.config.Recipe`)."""
    learner, algo = recipe.learner, recipe.algorithm
    return LearnerSpec(
        model_path=model_path or recipe.model.path,
        zero_stage=learner.zero_stage,
        dtype=learner.dtype,
        device=recipe.cluster.device,
        lr=learner.lr,
        weight_decay=learner.weight_decay,
        adam_betas=tuple(learner.adam_betas),
        warmup_steps=learner.warmup_steps,
        lr_schedule=learner.lr_schedule,
        total_steps=recipe.run.steps,
        grad_clip=learner.grad_clip,
        micro_batch_size=learner.micro_batch_size,
        gradient_checkpointing=learner.gradient_checkpointing,
        cpu_threads=learner.cpu_threads,
        loss_agg=algo.loss_agg,
        clip_low=algo.clip_low,
        clip_high=algo.clip_high,
        dual_clip=algo.dual_clip,
        kl_coef=algo.kl_coef,
        kl_kind=algo.kl_kind,
        entropy_coef=algo.entropy_coef,
        tis_cap=algo.tis_cap,
        ppo_epochs=algo.ppo_epochs,
        max_new_tokens=recipe.rollout.max_new_tokens,
        seed=recipe.run.seed,
        timeout_s=recipe.cluster.timeout_s,
    )
