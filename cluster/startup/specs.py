"""Recipe -> actor specs: the one place where the recipe's settings become what each role is
built from.

The specs (`EngineSpec`, `LearnerSpec`, `ScorerSpec`, `SamplingSpec`, `TeacherSpec`) are
plain, picklable dataclasses that Ray ships to the actors. They have no defaults of their own:
every value comes from the recipe (`cluster/recipe/schema.py`), so a default is defined once
(tests/test_specs.py checks it). The tiny model's spec is built beside it, in
`cluster/inputs/tiny_model.py`, from `[model.tiny]` the same way.
"""

from __future__ import annotations

from actors.reward_scorer import ScorerSpec
from actors.rollout_worker import EngineSpec
from cluster.recipe import Recipe
from cluster.wire.samples import SamplingSpec
from cluster.wire.teacher import TeacherSpec
from learner.spec import LearnerSpec


def engine_spec(recipe: Recipe, model_path: str) -> EngineSpec:
    """A rollout worker's vLLM engine: the recipe's model and rollout settings."""
    model, rollout = recipe.model, recipe.rollout
    return EngineSpec(
        model_path=model_path,
        tokenizer_path=model.tokenizer,
        dtype=model.dtype,
        max_model_len=rollout.max_model_len,
        gpu_memory_utilization=rollout.gpu_memory_utilization,
        kv_cache_gb=rollout.kv_cache_gb,
        tensor_parallel_size=rollout.tensor_parallel_size,
        enforce_eager=rollout.enforce_eager,
        max_num_seqs=rollout.max_num_seqs,
        seed=recipe.run.seed,
        trust_remote_code=model.trust_remote_code,
        weight_sync=rollout.weight_sync,
        engine_core=rollout.engine_core,
        sleep_mode=rollout.sleep_between_steps,
    )


def learner_spec(recipe: Recipe, model_path: str, *, objective: str = "grpo",
                 total_steps: int | None = None) -> LearnerSpec:
    """A learner rank: the recipe's learner and algorithm settings, plus what they depend on.
    `objective` is the job's ("sft" for `aha sft`); `total_steps` the schedule's length when
    the job counts its steps otherwise than run.steps (SFT: epochs over the traces)."""
    learner, algo = recipe.learner, recipe.algorithm
    return LearnerSpec(
        model_path=model_path,
        zero_stage=learner.zero_stage,
        dtype=learner.dtype,
        device=recipe.cluster.device,
        lr=learner.lr,
        weight_decay=learner.weight_decay,
        adam_betas=tuple(learner.adam_betas),
        adam_eps=learner.adam_eps,
        warmup_steps=learner.warmup_steps,
        lr_schedule=learner.lr_schedule,
        total_steps=recipe.run.steps if total_steps is None else total_steps,
        grad_clip=learner.grad_clip,
        micro_batch_size=learner.micro_batch_size,
        packing=learner.packing,
        pack_length=learner.pack_length,
        objective=objective,
        gradient_checkpointing=learner.gradient_checkpointing,
        cpu_threads=learner.cpu_threads,
        on_nonfinite=learner.on_nonfinite,
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


def scorer_spec(recipe: Recipe) -> ScorerSpec:
    """A reward scorer: the recipe's reward functions and how they are run."""
    reward = recipe.reward
    return ScorerSpec(
        weights=dict(reward.weights),
        num_workers=reward.workers_per_scorer,
        timeout_s=reward.timeout_s,
        failure_reward=reward.failure_reward,
        max_new_tokens=recipe.rollout.max_new_tokens,
        overlong_buffer_tokens=reward.overlong_buffer_tokens,
        overlong_penalty=reward.overlong_penalty,
        start_timeout_s=recipe.cluster.timeout_s,
        memory_mb=reward.memory_mb,
    )


def sampling_spec(recipe: Recipe, *, seed: int | None) -> SamplingSpec:
    """How a training group is sampled; `seed=None` draws fresh randomness per request."""
    rollout = recipe.rollout
    return SamplingSpec(group_size=rollout.group_size, max_new_tokens=rollout.max_new_tokens,
                        temperature=rollout.temperature, top_p=rollout.top_p, top_k=rollout.top_k,
                        stop=rollout.stop, seed=seed, ignore_eos=False)



def teacher_spec(recipe: Recipe) -> TeacherSpec:
    """A frozen teacher (`aha distill`): the recipe's distill settings, on the run's device."""
    distill = recipe.distill
    return TeacherSpec(model_path=distill.teacher, tokenizer_path=distill.teacher_tokenizer, dtype=distill.dtype,
                       device=recipe.cluster.device, max_batch_tokens=distill.max_batch_tokens,
                       cpu_threads=distill.cpu_threads, trust_remote_code=recipe.model.trust_remote_code)
