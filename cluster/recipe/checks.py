"""Checks on a typed recipe that its types alone cannot express: ranges and combinations.

Each check names the dotted key at fault. The recipe is passed in duck-typed (the schema
module needs nothing from here but the error type), and nothing heavy is imported.
"""

from __future__ import annotations

import math
import os
import re

# A user reward is "package.module:function"; a built-in one is a plain name.
_REWARD_NAME = re.compile(r"[A-Za-z_]\w*|[A-Za-z_][\w.]*:[A-Za-z_]\w*", re.ASCII)
_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*", re.ASCII)

# A seed reaches numpy (vLLM seeds it with run.seed), whose seeds are 0..2**32-1: the
# narrowest range of the generators a seed is given to.
MAX_SEED = 2**32 - 1
PRETRAIN_TASKS = ("chain_sum", "pair_sum")  # the tasks [model.pretrain] has a corpus for
# vLLM 0.32 refuses SamplingParams(n=...) above VLLM_MAX_N_SEQUENCES (default 16384;
# vllm/sampling_params.py `_verify_num_sequences`, vllm/envs.py), the same variable it reads.
# A group is one request with n = group_size (eval: n = max(eval.k)). max_num_seqs does not
# limit n: vLLM fans a request out into n child requests (vllm/v1/engine/async_llm.py) and
# schedules them max_num_seqs at a time, so a group larger than max_num_seqs runs in waves.
VLLM_MAX_N_DEFAULT = 16384
# ... and temperatures outside [0, 2] (SamplingParams._verify_args).
VLLM_MAX_TEMPERATURE = 2.0
# vLLM 0.32 needs max_num_batched_tokens >= max_num_seqs (vllm/config/scheduler.py,
# verify_max_model_len). The AsyncLLM engine's default budget is 2048 tokens
# (SchedulerConfig.DEFAULT_MAX_NUM_BATCHED_TOKENS); with chunked prefill off, as aha runs it on
# CPU, vLLM raises it to max_model_len (vllm/engine/arg_utils.py, _set_default_args).
VLLM_DEFAULT_BATCHED_TOKENS = 2048
# Async mode keeps 1 + max_staleness steps of prompts generating. Past this many versions the
# samples are far off-policy (the clipped ratio and truncated importance sampling correct a
# small drift, not that), and every level holds one more step of completions in memory.
MAX_STALENESS = 16


def vllm_max_n() -> int:
    """The largest n vLLM accepts in one request, as vLLM itself reads it."""
    try:
        return int(os.environ.get("VLLM_MAX_N_SEQUENCES", VLLM_MAX_N_DEFAULT))
    except ValueError:
        return VLLM_MAX_N_DEFAULT


def key_text(name: str) -> str:
    """A key as it appears in an error: quoted when it is not a plain name, so that a key
    holding a newline or spaces still gives a one-line message."""
    plain = name.isprintable() and not any(char.isspace() for char in name)
    return name if plain else repr(name)


TEMPLATE_NAMES = ("r1_zero", "chat", "raw")
PROMPT_PLACEHOLDER = "{prompt}"


def check_template(template: str) -> None:
    """Raise ValueError unless `template` is a known name or has `{prompt}` exactly once."""
    if not isinstance(template, str):
        raise ValueError(f"prompt template must be a string, got {type(template).__name__}")
    if template in TEMPLATE_NAMES:
        return
    count = template.count(PROMPT_PLACEHOLDER)
    if count != 1:
        raise ValueError(
            f"prompt template {template!r} is not one of {', '.join(TEMPLATE_NAMES)} and "
            f"contains {PROMPT_PLACEHOLDER} {count} times (a custom template needs it once)"
        )


class RecipeError(ValueError):
    """A bad recipe or override; `key` is the dotted path it concerns."""

    def __init__(self, key: str, problem: str):
        # One line whatever the caller passes: a key typed with a newline (an override such as
        # "--rollout.group\nsize") is quoted part by part, a problem's line breaks become spaces.
        if not key.isprintable():
            key = ".".join(key_text(part) for part in key.split("."))
        problem = " ".join(str(problem).splitlines())
        super().__init__(f"{key}: {problem}" if key else problem)
        self.key = key
        self.problem = problem


def _require(ok: bool, key: str, problem: str) -> None:
    if not ok:
        raise RecipeError(key, problem)


def check_recipe(recipe, *, local_cpus: int) -> None:
    """Raise RecipeError for the first impossible value or combination in `recipe`."""
    _check_model_and_data(recipe)
    _check_rollout(recipe)
    _check_reward(recipe)
    _check_algorithm(recipe)
    _check_learner(recipe.learner)
    _check_cluster(recipe, local_cpus)
    _check_run(recipe.run)
    _check_eval(recipe)
    _check_generate(recipe.generate)
    _check_sft(recipe)
    _check_distill(recipe)
    # Groups are split evenly over the learner ranks (ZeRO-3 needs equal work per rank).
    _require(recipe.rollout.prompts_per_step % recipe.learner.num_ranks == 0, "rollout.prompts_per_step",
             f"{recipe.rollout.prompts_per_step} groups per step cannot be split evenly over "
             f"learner.num_ranks = {recipe.learner.num_ranks}")


def _check_model_and_data(recipe) -> None:
    model, data = recipe.model, recipe.data
    _require(bool(model.path), "model.path", "is required (a hub id or a local model directory)")
    if model.tiny is not None:
        check_tiny_model(model.tiny)
    # An SFT-only recipe reads traces (sft.train_path) and needs no prompt file; `aha train` and
    # `aha generate` check data.train_path again before they start (cluster/startup/preflight.py).
    _require(bool(data.train_path) or bool(recipe.sft.train_path), "data.train_path",
             "is required (a Parquet or JSONL prompt file; a recipe only for aha sft sets sft.train_path instead)")
    _require(bool(data.prompt_column), "data.prompt_column", "must not be empty")
    try:
        check_template(data.template)
    except ValueError as err:
        raise RecipeError("data.template", str(err)) from None
    _require(data.max_prompt_tokens >= 1, "data.max_prompt_tokens", "must be >= 1")
    synthetic = data.synthetic
    if synthetic is not None:
        _require(synthetic.train_rows >= 1, "data.synthetic.train_rows", "must be >= 1")
        _require(synthetic.eval_rows >= 0, "data.synthetic.eval_rows", "must be >= 0")
        _require(synthetic.eval_rows == 0 or bool(data.eval_path), "data.eval_path",
                 "is required when data.synthetic.eval_rows > 0")
        _require(1 <= synthetic.min_terms <= synthetic.max_terms <= 20, "data.synthetic.max_terms",
                 "needs 1 <= min_terms <= max_terms <= 20")
        _require(synthetic.max_term >= 1, "data.synthetic.max_term", "must be >= 1")
        _require(synthetic.cold_start_traces >= 0, "data.synthetic.cold_start_traces", "must be >= 0")
        _require(synthetic.cold_start_traces == 0 or synthetic.task == "chain_sum", "data.synthetic.cold_start_traces",
                 "is written for the chain_sum task only (its worked solutions)")
        _require(synthetic.cold_start_traces == 0 or bool(synthetic.cold_start_path), "data.synthetic.cold_start_path",
                 "is required when data.synthetic.cold_start_traces > 0")
        _require(synthetic.cold_start_traces <= synthetic.train_rows, "data.synthetic.cold_start_traces",
                 f"must be <= data.synthetic.train_rows ({synthetic.train_rows}): they are the first training prompts")
        if synthetic.task in ("countdown", "pair_sum"):  # what the generators accept, refused before a run starts
            low = 2 if synthetic.task == "countdown" else 3
            _require(low <= synthetic.num_numbers <= 6, "data.synthetic.num_numbers",
                     f"must be in {low}..6 for the {synthetic.task} task")
            smallest = 1 if synthetic.task == "countdown" else synthetic.num_numbers + 2
            _require(synthetic.max_number >= smallest, "data.synthetic.max_number",
                     f"must be >= {smallest} for the {synthetic.task} task"
                     + (" (num_numbers + 2)" if synthetic.task == "pair_sum" else ""))
    pretrain = model.pretrain
    if pretrain is not None:
        _require(model.tiny is not None, "model.pretrain", "needs [model.tiny] (it pre-trains the tiny model)")
        _require(synthetic is not None and synthetic.task in PRETRAIN_TASKS, "model.pretrain",
                 "needs data.synthetic.task chain_sum or pair_sum (the tasks it has a corpus for)")
        _require(0 <= pretrain.checked_fraction < 1, "model.pretrain.checked_fraction", "must be in [0, 1)")
        _require(0 <= pretrain.exercise_fraction < 1, "model.pretrain.exercise_fraction", "must be in [0, 1)")
        _require(pretrain.steps >= 1, "model.pretrain.steps", "must be >= 1")
        try:
            pretrain.template and check_template(pretrain.template)
        except ValueError as err:
            raise RecipeError("model.pretrain.template", str(err)) from None
        _require(pretrain.batch_size >= 1, "model.pretrain.batch_size", "must be >= 1")
        _require(math.isfinite(pretrain.lr) and pretrain.lr > 0, "model.pretrain.lr", "must be > 0")
        _require(0 <= pretrain.warmup_steps, "model.pretrain.warmup_steps", "must be >= 0")
        _require(0 < pretrain.worked_fraction <= 1, "model.pretrain.worked_fraction", "must be in (0, 1]")


def check_tiny_model(tiny) -> None:
    """The shape of a `[model.tiny]` (also what `aha tiny-model` is given): RecipeError naming
    the model.tiny key."""
    _require(tiny.hidden_size % 64 == 0 and tiny.hidden_size > 0,
             "model.tiny.hidden_size", "must be a positive multiple of 64 (the head size)")
    _require(tiny.num_layers >= 1, "model.tiny.num_layers", "must be >= 1")
    heads = tiny.hidden_size // 64
    _require(tiny.num_kv_heads >= 1 and heads % tiny.num_kv_heads == 0, "model.tiny.num_kv_heads",
             f"must divide the {heads} attention heads (hidden_size / 64)")
    _require(tiny.intermediate_size >= 0, "model.tiny.intermediate_size", "must be >= 0 (0: 4 x hidden_size)")
    _check_seed(tiny.seed, "model.tiny.seed")


def _check_seed(seed: int, key: str) -> None:
    _require(0 <= seed <= MAX_SEED, key, f"must be in 0..{MAX_SEED} (2**32 - 1), got {seed}")


def _check_rollout(recipe) -> None:
    rollout, estimator = recipe.rollout, recipe.algorithm.estimator
    for name in ("num_workers", "group_size", "prompts_per_step", "max_new_tokens", "tensor_parallel_size"):
        _require(getattr(rollout, name) >= 1, f"rollout.{name}", "must be >= 1")
    _require(rollout.group_size >= 2, "rollout.group_size",
             f"group size {rollout.group_size} gives no group baseline for estimator '{estimator}'; use >= 2")
    _require(0 <= rollout.temperature <= VLLM_MAX_TEMPERATURE, "rollout.temperature",
             f"must be in [0, {VLLM_MAX_TEMPERATURE:g}] (vLLM refuses other temperatures)")
    _require(rollout.group_size <= vllm_max_n(), "rollout.group_size",
             f"{rollout.group_size} is more samples per request than vLLM accepts ({vllm_max_n()}, "
             "VLLM_MAX_N_SEQUENCES)")
    _require(all(rollout.stop), "rollout.stop", "must not hold an empty string (vLLM refuses it)")
    _require(0 < rollout.top_p <= 1, "rollout.top_p", "must be in (0, 1]")
    _require(rollout.top_k == -1 or rollout.top_k >= 1, "rollout.top_k", "must be -1 (off) or >= 1")
    _require(0 < rollout.gpu_memory_utilization <= 1, "rollout.gpu_memory_utilization", "must be in (0, 1]")
    _require(rollout.kv_cache_gb >= 0, "rollout.kv_cache_gb", "must be >= 0")
    _require(rollout.max_num_seqs >= 0, "rollout.max_num_seqs", "must be >= 0 (0: vLLM's default)")
    # On CPU aha turns chunked prefill off and vLLM's token budget grows to max_model_len;
    # elsewhere ("auto" may be a GPU) it stays at the default.
    budget = max(VLLM_DEFAULT_BATCHED_TOKENS, rollout.max_model_len) if recipe.cluster.device == "cpu" \
        else VLLM_DEFAULT_BATCHED_TOKENS
    _require(rollout.max_num_seqs <= budget, "rollout.max_num_seqs",
             f"{rollout.max_num_seqs} is more than vLLM's batch of {budget} tokens allows (at most one token "
             "per sequence and step)")
    needed = recipe.data.max_prompt_tokens + rollout.max_new_tokens
    _require(needed <= rollout.max_model_len, "rollout.max_model_len",
             f"{rollout.max_model_len} is shorter than data.max_prompt_tokens + rollout.max_new_tokens = {needed}")


def _check_reward(recipe) -> None:
    reward = recipe.reward
    _require(bool(reward.weights), "reward.weights", "needs at least one reward function")
    for name in reward.weights:
        _require(bool(_REWARD_NAME.fullmatch(name)), f"reward.weights.{key_text(name)}",
                 "is neither a built-in reward name nor a 'package.module:function' path")
    _require(reward.num_scorers >= 1, "reward.num_scorers", "must be >= 1")
    _require(reward.workers_per_scorer >= 1, "reward.workers_per_scorer", "must be >= 1")
    _require(reward.timeout_s > 0, "reward.timeout_s", "must be > 0")
    _require(reward.memory_mb >= 0, "reward.memory_mb", "must be >= 0 (0: no limit)")
    _require(reward.overlong_buffer_tokens >= 0, "reward.overlong_buffer_tokens", "must be >= 0")
    max_new = recipe.rollout.max_new_tokens
    _require(reward.overlong_buffer_tokens < max_new, "reward.overlong_buffer_tokens",
             f"{reward.overlong_buffer_tokens} must be below rollout.max_new_tokens = {max_new} (the penalty "
             "ramps over the last buffer tokens before it; 0 turns it off)")
    _require(reward.overlong_penalty >= 0, "reward.overlong_penalty",
             "must be >= 0 (it is subtracted: a negative one would reward over-long answers)")


def _check_algorithm(recipe) -> None:
    algo = recipe.algorithm
    _require(0 <= algo.clip_low < 1, "algorithm.clip_low", "must be in [0, 1)")
    _require(algo.clip_high >= 0, "algorithm.clip_high", "must be >= 0")
    _require(algo.dual_clip == 0 or algo.dual_clip > 1, "algorithm.dual_clip", "must be 0 (off) or > 1")
    _require(algo.kl_coef >= 0, "algorithm.kl_coef", "must be >= 0")
    _require(algo.entropy_coef >= 0, "algorithm.entropy_coef", "must be >= 0")
    _require(algo.tis_cap == 0 or algo.tis_cap >= 1, "algorithm.tis_cap", "must be 0 (off) or >= 1")
    _require(algo.ppo_epochs >= 1, "algorithm.ppo_epochs", "must be >= 1")
    _require(algo.max_staleness >= 0, "algorithm.max_staleness", "must be >= 0")
    _require(algo.max_staleness <= MAX_STALENESS, "algorithm.max_staleness",
             f"must be <= {MAX_STALENESS}: samples more versions old are too far off-policy to correct, and "
             "each version of staleness keeps one more step of completions in flight")
    _require(algo.max_staleness == 0 or algo.max_staleness < recipe.run.steps, "algorithm.max_staleness",
             f"{algo.max_staleness} needs run.steps > {algo.max_staleness}: async mode generates "
             f"{1 + algo.max_staleness} steps of prompts at once, more than the run trains on")
    _require(not (recipe.rollout.sleep_between_steps and algo.max_staleness > 0), "rollout.sleep_between_steps",
             "needs algorithm.max_staleness = 0 (in async mode the engines generate while the learner steps)")


def _check_learner(learner) -> None:
    _require(learner.num_ranks >= 1, "learner.num_ranks", "must be >= 1")
    _require(learner.zero_stage in (0, 1, 2, 3), "learner.zero_stage", "must be 0, 1, 2 or 3")
    _require(learner.lr > 0, "learner.lr", "must be > 0")
    _require(learner.weight_decay >= 0, "learner.weight_decay", "must be >= 0")
    _require(len(learner.adam_betas) == 2 and all(0 <= b < 1 for b in learner.adam_betas),
             "learner.adam_betas", "must be two numbers in [0, 1)")
    _require(learner.adam_eps > 0, "learner.adam_eps", "must be > 0")
    _require(learner.warmup_steps >= 0, "learner.warmup_steps", "must be >= 0")
    _require(learner.grad_clip >= 0, "learner.grad_clip", "must be >= 0 (0: off)")
    _require(learner.micro_batch_size >= 1, "learner.micro_batch_size", "must be >= 1")
    _require(0 <= learner.cpu_threads <= 1024, "learner.cpu_threads", "must be in 0..1024 (0: Ray's default)")
    _require(learner.pack_length >= 0, "learner.pack_length", "must be >= 0 (0: the longest sequence's length)")


def _check_cluster(recipe, local_cpus: int) -> None:
    cluster, learner, rollout = recipe.cluster, recipe.learner, recipe.rollout
    _require(cluster.num_cpus >= 0, "cluster.num_cpus", "must be >= 0 (0: this machine's count)")
    _require(cluster.timeout_s > 0, "cluster.timeout_s", "must be > 0")
    _require(cluster.max_restarts >= 0, "cluster.max_restarts", "must be >= 0 (0: a dead actor stops the run)")
    _require(cluster.health_timeout_s > 0, "cluster.health_timeout_s", "must be > 0")
    for role in ("rollout", "learner", "scorer", "teacher"):
        _require(getattr(cluster, f"{role}_cpus") > 0, f"cluster.{role}_cpus", "must be > 0")
    for role in ("rollout", "learner", "teacher"):
        gpus = getattr(cluster, f"{role}_gpus")
        _require(gpus >= 0, f"cluster.{role}_gpus", "must be >= 0")
        _require(not (gpus > 0 and cluster.device == "cpu"), f"cluster.{role}_gpus",
                 "asks for GPUs but cluster.device is 'cpu'")
    if cluster.address:
        return  # a remote cluster's size is known only once connected; Ray checks it there
    offered = cluster.num_cpus or local_cpus
    learner_need = learner.num_ranks * cluster.learner_cpus
    _require(learner_need <= offered, "learner.num_ranks",
             f"{learner.num_ranks} ranks x {cluster.learner_cpus:g} CPUs need {learner_need:g} CPUs "
             f"but only {offered} are offered (cluster.num_cpus)")
    teachers = recipe.distill.num_teachers * cluster.teacher_cpus if recipe.distill.teacher else 0.0
    total = (learner_need + rollout.num_workers * cluster.rollout_cpus
             + recipe.reward.num_scorers * cluster.scorer_cpus + teachers)
    _require(total <= offered, "cluster.num_cpus",
             f"the roles need {total:g} CPUs (learner {learner_need:g}, rollout "
             f"{rollout.num_workers * cluster.rollout_cpus:g}, scorers "
             f"{recipe.reward.num_scorers * cluster.scorer_cpus:g}" + (f", teachers {teachers:g}" if teachers else "")
             + f") but only {offered} are offered")


def _check_eval(recipe) -> None:
    evaluation = recipe.eval
    _require(evaluation.every >= 0, "eval.every", "must be >= 0 (0: only before and after training)")
    _require(evaluation.num_prompts >= 1, "eval.num_prompts", "must be >= 1")
    _require(all(k >= 1 for k in evaluation.k), "eval.k", "every k must be >= 1")
    _require(all(k <= vllm_max_n() for k in evaluation.k), "eval.k",
             f"{max(evaluation.k, default=0)} is more samples per request than vLLM accepts ({vllm_max_n()}, "
             "VLLM_MAX_N_SEQUENCES)")
    _require(evaluation.temperature > 0 or not evaluation.k, "eval.temperature", "must be > 0 to draw k samples")
    _require(evaluation.temperature <= VLLM_MAX_TEMPERATURE, "eval.temperature",
             f"must be <= {VLLM_MAX_TEMPERATURE:g} (vLLM refuses higher temperatures)")
    smallest = 0 if evaluation.force_answer else 1  # forcing: 0 is "the answer at once"
    _require(all(b >= smallest for b in evaluation.budgets), "eval.budgets", f"every budget must be >= {smallest}")
    _require(not evaluation.force_answer or evaluation.think_end, "eval.think_end",
             "must not be empty with eval.force_answer")
    _require(not evaluation.correctness or evaluation.correctness in recipe.reward.weights, "eval.correctness",
             f"{evaluation.correctness!r} is not one of reward.weights")


def _check_generate(generate) -> None:
    _require(generate.samples_per_prompt >= 1, "generate.samples_per_prompt", "must be >= 1")
    _require(generate.samples_per_prompt <= vllm_max_n(), "generate.samples_per_prompt",
             f"{generate.samples_per_prompt} is more samples per request than vLLM accepts ({vllm_max_n()}, "
             "VLLM_MAX_N_SEQUENCES)")
    _require(generate.num_prompts >= 0, "generate.num_prompts", "must be >= 0 (0: every row)")
    _require(generate.max_per_prompt >= 0, "generate.max_per_prompt", "must be >= 0 (0: no cap)")
    _require(generate.chunk_prompts >= 1, "generate.chunk_prompts", "must be >= 1")
    _require(generate.keep != "shortest_correct" or generate.max_per_prompt <= 1, "generate.max_per_prompt",
             f"{generate.max_per_prompt} with generate.keep = 'shortest_correct', which keeps one trace per prompt "
             "(use keep = 'all_correct' for more)")


def _check_sft(recipe) -> None:
    sft = recipe.sft
    for column in ("prompt_column", "completion_column", "messages_column"):
        _require(bool(getattr(sft, column)), f"sft.{column}", "must not be empty")
    _require(sft.epochs >= 1, "sft.epochs", "must be >= 1")
    _require(sft.batch_size >= 1, "sft.batch_size", "must be >= 1")
    _require(sft.max_length >= 2, "sft.max_length", "must be >= 2 (a prompt token and EOS)")
    _require(sft.eval_every >= 0, "sft.eval_every", "must be >= 0 (0: only before and after training)")
    _require(sft.eval_rows >= 1, "sft.eval_rows", "must be >= 1")


def _check_distill(recipe) -> None:
    distill = recipe.distill
    _require(math.isfinite(distill.kl_coef) and distill.kl_coef >= 0, "distill.kl_coef", "must be a number >= 0")
    _require(math.isfinite(distill.reward_weight) and distill.reward_weight >= 0, "distill.reward_weight",
             "must be a number >= 0")
    _require(distill.num_teachers >= 1, "distill.num_teachers", "must be >= 1")
    _require(distill.max_batch_tokens >= 1, "distill.max_batch_tokens", "must be >= 1")
    _require(distill.cpu_threads >= 0, "distill.cpu_threads", "must be >= 0 (0: torch's choice)")
    _require(not (distill.loss == "kl" and distill.reward_weight > 0), "distill.reward_weight",
             "has no effect with distill.loss = 'kl' (the pure distillation loss has no task term); use "
             "loss = 'advantage' to mix in the task reward")
    _require(distill.kl_coef > 0 or distill.reward_weight > 0, "distill.kl_coef",
             "and distill.reward_weight are both 0: the student would learn from nothing")
    _require(not (distill.teacher and recipe.algorithm.dynamic_sampling), "algorithm.dynamic_sampling",
             "drops groups whose rewards are all equal, but distillation learns from every group (the "
             "teacher grades each token); turn it off for aha distill")


def _check_run(run) -> None:
    _require(bool(_RUN_NAME.fullmatch(run.name)), "run.name", "must be letters, digits, '.', '_' or '-'")
    _require(run.steps >= 1, "run.steps", "must be >= 1")
    _check_seed(run.seed, "run.seed")
    _require(run.checkpoint_every >= 0, "run.checkpoint_every", "must be >= 0 (0: only at the end)")
    _require(run.keep_checkpoints >= 1, "run.keep_checkpoints", "must be >= 1 (the newest is always kept)")
    _require(run.log_every >= 1, "run.log_every", "must be >= 1")
