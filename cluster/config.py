"""Typed recipes: frozen dataclasses per role, loaded from TOML, overridable from the CLI.

A recipe is untrusted input. Every problem with it — unknown key, wrong type, value out of
range, impossible combination — becomes a `RecipeError` whose message is one line naming
the dotted key; the CLI prints it and exits with code 2.

This module must stay light: the driver, tests and job-submission code import it without
torch, ray, vllm or deepspeed (a test enforces that).
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cluster.recipe_checks import RecipeError, check_recipe, key_text

__all__ = ["Recipe", "RecipeError", "load_recipe", "recipe_from_dict", "recipe_to_dict"]


@dataclass(frozen=True)
class TinyModelConfig:
    """Build a random-initialised tiny model at `model.path` (tests and the CPU demo)."""

    hidden_size: int = 128
    num_layers: int = 2
    num_kv_heads: int = 1
    intermediate_size: int = 0
    seed: int = 0


@dataclass(frozen=True)
class PretrainConfig:
    """Pre-train the tiny model on a synthetic corpus of the recipe's task before RL (CPU demo).

    The corpus mixes worked solutions (`worked_fraction` of it: add step by step, then
    answer) with hasty ones (answer at once, wrongly: the sum of the first two terms only),
    like a base model that mostly answers without thinking. No held-out prompt is in it.
    """

    steps: int = 800
    batch_size: int = 64
    lr: float = 3e-3
    warmup_steps: int = 30
    worked_fraction: float = 0.4
    seed: int = 0


@dataclass(frozen=True)
class ModelConfig:
    """The policy: a hub id or a local directory, loaded the same way by transformers and vLLM."""

    path: str = ""
    tokenizer: str = ""  # empty: the model's own tokenizer
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: fp32 on CPU, bf16 on GPU
    trust_remote_code: bool = False
    tiny: TinyModelConfig | None = None
    pretrain: PretrainConfig | None = None  # needs `tiny` and a `chain_sum` synthetic task


@dataclass(frozen=True)
class SyntheticDataConfig:
    """Generate a built-in task's Parquet files at `data.train_path` / `data.eval_path`."""

    task: Literal["arithmetic", "chain_sum", "countdown"] = "arithmetic"
    train_rows: int = 2000
    eval_rows: int = 200
    seed: int = 0
    min_digits: int = 1
    max_digits: int = 2
    ops: str = "+-"
    min_terms: int = 3  # chain_sum
    max_terms: int = 4
    max_term: int = 9
    num_numbers: int = 3
    max_number: int = 20
    max_target: int = 100


@dataclass(frozen=True)
class DataConfig:
    """Prompt datasets (Parquet or JSONL) and how rows become prompts and reward fields."""

    train_path: str = ""
    eval_path: str = ""
    file_format: Literal["auto", "parquet", "jsonl"] = "auto"
    prompt_column: str = "prompt"
    # reward field name -> dataset column; empty: every other column under its own name
    columns: dict[str, str] = field(default_factory=dict)
    template: str = "r1_zero"  # "r1_zero", "chat", "raw", or a string with one {prompt}
    system_prompt: str = ""
    shuffle: bool = True
    max_prompt_tokens: int = 512
    synthetic: SyntheticDataConfig | None = None


@dataclass(frozen=True)
class RolloutConfig:
    """vLLM rollout workers and the sampling settings of a group."""

    num_workers: int = 1
    group_size: int = 8
    prompts_per_step: int = 16
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1  # -1: no top-k
    stop: tuple[str, ...] = ()
    max_model_len: int = 2048
    gpu_memory_utilization: float = 0.85
    kv_cache_gb: float = 0.0  # > 0: KV cache size in GiB, overrides gpu_memory_utilization
    tensor_parallel_size: int = 1
    enforce_eager: bool = False
    # Sequences an engine decodes at once; 0: vLLM's default. Fewer make groups finish in
    # waves, so the learner can start on the first while later ones still generate.
    max_num_seqs: int = 0
    weight_sync: Literal["wait", "abort"] = "wait"
    sleep_between_steps: bool = False


@dataclass(frozen=True)
class RewardConfig:
    """Reward functions (built-in name or "package.module:function") and their scorers."""

    weights: dict[str, float] = field(default_factory=lambda: {"math": 1.0})
    num_scorers: int = 1
    workers_per_scorer: int = 2
    timeout_s: float = 10.0
    failure_reward: float = 0.0
    overlong_buffer_tokens: int = 0  # DAPO soft over-long penalty; 0 disables
    overlong_penalty: float = 1.0


@dataclass(frozen=True)
class AlgorithmConfig:
    """The GRPO family: advantage estimator, clipped policy loss, KL, staleness."""

    estimator: Literal["grpo", "dr_grpo", "rloo"] = "grpo"
    loss_agg: Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"] = "token_mean"
    clip_low: float = 0.2
    clip_high: float = 0.2
    dual_clip: float = 0.0  # > 1 enables dual-clip for negative advantages; 0 disables
    kl_coef: float = 0.0  # 0 disables the reference model entirely
    kl_kind: Literal["k1", "k2", "k3"] = "k3"
    entropy_coef: float = 0.0
    tis_cap: float = 2.0  # truncated importance sampling cap; 0 disables
    ppo_epochs: int = 1
    max_staleness: int = 0  # 0: on-policy
    dynamic_sampling: bool = False


@dataclass(frozen=True)
class LearnerConfig:
    """The DeepSpeed ZeRO learner group."""

    num_ranks: int = 1
    zero_stage: int = 2
    lr: float = 1e-6
    weight_decay: float = 0.0
    adam_betas: tuple[float, ...] = (0.9, 0.999)
    warmup_steps: int = 0
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"
    grad_clip: float = 1.0
    micro_batch_size: int = 4  # sequences per forward/backward
    gradient_checkpointing: bool = False
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    # torch CPU threads per rank; 0: Ray's default, the rank's cluster.learner_cpus (at least 1).
    # More than the CPUs reserved lets a CPU learner use cores the rollout leaves idle.
    cpu_threads: int = 0


@dataclass(frozen=True)
class ClusterConfig:
    """Where the job runs and what each role is given."""

    address: str = ""  # empty: start Ray in-process on this machine
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_cpus: int = 0  # logical CPUs offered locally; 0: this machine's count
    rollout_cpus: float = 1.0  # per rollout worker
    rollout_gpus: float = 0.0
    learner_cpus: float = 1.0  # per learner rank
    learner_gpus: float = 0.0
    scorer_cpus: float = 1.0  # per scorer actor
    timeout_s: float = 600.0  # any wait on a peer actor


@dataclass(frozen=True)
class EvalConfig:
    """Held-out evaluation: greedy accuracy, pass@k and maj@k, accuracy against token budget."""

    every: int = 0  # steps between evaluations; 0: only before and after training
    num_prompts: int = 200  # held-out prompts from data.eval_path
    k: tuple[int, ...] = ()  # sample counts for pass@k / maj@k; () skips sampling
    temperature: float = 1.0  # for the k samples
    budgets: tuple[int, ...] = ()  # max-token budgets for the inference-time scaling curve
    correctness: str = ""  # reward whose value 1.0 means "correct"; empty: the first in reward.weights


@dataclass(frozen=True)
class RunConfig:
    """The run: name, output directory, length, seed, logging and checkpoint cadence."""

    name: str = "run"
    output_dir: str = ""  # empty: runs/<name>
    seed: int = 0
    steps: int = 100
    checkpoint_every: int = 0  # 0: only at the end
    log_every: int = 1
    reflection_words: tuple[str, ...] = ("wait", "let me check", "verify", "recheck")


@dataclass(frozen=True)
class Recipe:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    run: RunConfig = field(default_factory=RunConfig)

    @property
    def output_dir(self) -> Path:
        return Path(self.run.output_dir or f"runs/{self.run.name}")


# ---------------------------------------------------------------------------------------
# Loading: a nested dict (from TOML and overrides) -> typed, frozen dataclasses.


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value, tp, key: str):
    """Check `value` against the annotation `tp` and convert it; RecipeError if it does not fit."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if value is None and len(inner) < len(args):
            return None
        return _coerce(value, inner[0], key)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise RecipeError(key, f"expected a table, got {type(value).__name__}")
        return _build(tp, value, key)
    if origin is Literal:
        if value not in args:
            raise RecipeError(key, f"must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise RecipeError(key, f"expected a list, got {type(value).__name__}")
        return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise RecipeError(key, f"expected a table, got {type(value).__name__}")
        return {_coerce(k, args[0], key): _coerce(v, args[1], f"{key}.{k}") for k, v in value.items()}
    # bool is a subclass of int: reject true/false where a number is expected, and vice versa.
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):  # inf as a timeout would wait forever; nan compares false
            raise RecipeError(key, f"must be a finite number, got {value!r}")
        return float(value)
    if tp in (int, str, bool) and type(value) is tp:
        return value
    raise RecipeError(key, f"expected {_type_name(tp)}, got {type(value).__name__} {value!r}")


def _build(cls, table: dict, prefix: str):
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for name in table:
        if name not in known:
            raise RecipeError(_join(prefix, name), f"unknown key (known: {', '.join(sorted(known))})")
    kwargs = {name: _coerce(value, hints[name], _join(prefix, name)) for name, value in table.items()}
    return cls(**kwargs)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{key_text(name)}" if prefix else key_text(name)


def recipe_from_dict(table: dict) -> Recipe:
    """Build and validate a Recipe from a nested dict (the parsed TOML plus overrides)."""
    recipe = _build(Recipe, table, "")
    check_recipe(recipe, local_cpus=os.cpu_count() or 1)
    return recipe


# ---------------------------------------------------------------------------------------
# Overrides from the command line: --section.key value


def _field_type(dotted: str):
    """The annotation a dotted key refers to, or RecipeError if there is no such key."""
    cls, tp = Recipe, None
    parts = dotted.split(".")
    for depth, part in enumerate(parts):
        if cls is None:
            raise RecipeError(dotted, "unknown key")
        hints = typing.get_type_hints(cls)
        if part not in hints:
            known = ", ".join(sorted(hints))
            raise RecipeError(".".join(parts[: depth + 1]), f"unknown key (known: {known})")
        tp = hints[part]
        nested = [a for a in (typing.get_args(tp) or (tp,)) if dataclasses.is_dataclass(a)]
        cls = nested[0] if nested else None
    return tp


def _parse_toml_value(raw: str):
    """One TOML value, or None when `raw` is not exactly one (trailing keys are refused too)."""
    try:
        parsed = tomllib.loads(f"v = {raw}")
    except (tomllib.TOMLDecodeError, RecursionError):
        return None
    return parsed["v"] if len(parsed) == 1 else None


def _is_text(tp) -> bool:
    return tp is str or (typing.get_origin(tp) is Literal and isinstance(typing.get_args(tp)[0], str))


def parse_override_value(dotted: str, raw: str):
    """Parse a CLI value for `dotted`: strings stay verbatim, everything else is a TOML value.

    A list field also takes a comma-separated list (`--run.reflection_words wait,hmm`).
    """
    tp = _field_type(dotted)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    if _is_text(tp):
        return raw
    if typing.get_origin(tp) is tuple and not raw.lstrip().startswith("["):
        item_type = typing.get_args(tp)[0]
        parts = [part.strip() for part in raw.split(",") if part.strip()]
        value = [part if _is_text(item_type) else _parse_toml_value(part) for part in parts]
        value = None if None in value else value
    else:
        value = _parse_toml_value(raw)
    if value is None:
        raise RecipeError(dotted, f"cannot parse {raw!r} as {_type_name(tp)}")
    return value


def apply_override(table: dict, dotted: str, value) -> None:
    """Set `dotted` (e.g. "rollout.group_size") in the nested dict `table`, in place."""
    *parents, leaf = dotted.split(".")
    node = table
    for i, part in enumerate(parents):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise RecipeError(".".join(parents[: i + 1]), "is a value, not a table")
        node = child
    node[leaf] = value


def parse_overrides(args: list[str]) -> list[tuple[str, object]]:
    """Turn `["--a.b", "1", "--c.d=x"]` into `[("a.b", 1), ("c.d", "x")]`, type-aware."""
    pairs, i = [], 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or len(arg) == 2:
            raise RecipeError("", f"unexpected argument {arg!r}; overrides look like --section.key value")
        dotted, sep, raw = arg[2:].partition("=")
        if not sep:
            if i + 1 >= len(args):
                raise RecipeError(dotted, "override has no value")
            raw, i = args[i + 1], i + 1
        if "." not in dotted:
            raise RecipeError(dotted, "overrides name a key as --section.key")
        pairs.append((dotted, parse_override_value(dotted, raw)))
        i += 1
    return pairs


def load_recipe(path: str | os.PathLike | None, overrides: list[str] = ()) -> Recipe:
    """Read a TOML recipe (or start from defaults when `path` is None) and apply overrides."""
    table: dict = {}
    if path is not None:
        file = Path(path)
        if not file.is_file():
            raise RecipeError("", f"recipe file '{file}' does not exist")
        try:
            table = tomllib.loads(file.read_text(encoding="utf-8"))
        except OSError as err:
            raise RecipeError("", f"recipe file '{file}' cannot be read: {err.strerror}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError) as err:
            reason = "nested too deeply" if isinstance(err, RecursionError) else str(err).splitlines()[0]
            raise RecipeError("", f"recipe file '{file}' is not valid TOML: {reason}") from None
    for dotted, value in parse_overrides(list(overrides)):
        apply_override(table, dotted, value)
    return recipe_from_dict(table)


def recipe_to_dict(recipe: Recipe) -> dict:
    """The recipe as plain data (tuples as lists, None tables dropped), e.g. to save with a run."""

    def plain(value):
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items() if v is not None}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    return plain(dataclasses.asdict(recipe))
