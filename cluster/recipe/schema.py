"""The recipe schema: one frozen dataclass per role, each setting defined once, with its default.

Every setting of aha lives here. Actor specs (`actors/`, `learner/`) are built from these
sections by `cluster/startup/specs.py` and carry no defaults of their own, so a default changed here
is the default everywhere. Loading and overrides are in `cluster/recipe/load.py`, checks of
ranges and combinations in `cluster/recipe/checks.py`.

Nothing heavy is imported: the driver, tests and job submission read recipes without torch,
ray, vllm or deepspeed (tests/test_layout.py enforces it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

TaskName = Literal["arithmetic", "chain_sum", "countdown"]  # the built-in synthetic tasks
TASK_NAMES = get_args(TaskName)

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

    task: TaskName = "arithmetic"
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
    # A cold-start SFT set: worked solutions (prompt + completion traces) of the first N
    # training prompts, written to cold_start_path; 0: none. chain_sum only.
    cold_start_traces: int = 0
    cold_start_path: str = ""


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
    # Free the engines' GPU memory (vLLM sleep mode) for the learner's optimizer step and wake
    # them for the weight push: for an engine and a learner sharing GPUs. On-policy only; a
    # no-op on CPU.
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
    adam_eps: float = 1e-8
    warmup_steps: int = 0
    lr_schedule: Literal["constant", "linear", "cosine"] = "constant"
    grad_clip: float = 1.0
    micro_batch_size: int = 4  # sequences per forward/backward
    gradient_checkpointing: bool = False
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    # torch CPU threads per rank; 0: Ray's default, the rank's cluster.learner_cpus (at least 1).
    # More than the CPUs reserved lets a CPU learner use cores the rollout leaves idle.
    cpu_threads: int = 0
    # A step whose loss or gradients are not finite: "stop" the run with one line, or "skip"
    # its optimizer update (weights and optimizer state unchanged, counted in the metrics).
    on_nonfinite: Literal["stop", "skip"] = "stop"
    # Padding-free micro-batches: sequences are packed into rows (each attends only to itself,
    # positions restart per sequence) instead of one padded row each. GRPO and SFT alike.
    packing: bool = True
    # Packed rows are this many tokens wide; 0: as wide as the longest sequence of the call.
    # A micro-batch holds micro_batch_size rows.
    pack_length: int = 0


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
    teacher_cpus: float = 1.0  # per teacher actor (aha distill)
    teacher_gpus: float = 0.0
    timeout_s: float = 600.0  # any wait on a peer actor
    # Learner ranks across nodes: "pack" fills a node before the next (first fit), "strict_pack"
    # puts every rank on one node or refuses the plan, "spread" puts each on the emptiest node.
    learner_placement: Literal["pack", "strict_pack", "spread"] = "pack"
    # Dead rollout workers / reward scorers replaced per role and run before it stops (resumable).
    max_restarts: int = 3
    # While no group arrives for this long the workers are probed; one that cannot answer within
    # it counts as dead (hung) and is replaced.
    health_timeout_s: float = 30.0


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
    keep_checkpoints: int = 3  # the newest N complete checkpoints are kept (older ones deleted)
    log_every: int = 1  # steps between the terminal's step lines (metrics.jsonl has every step)
    reflection_words: tuple[str, ...] = ("wait", "let me check", "verify", "recheck")


@dataclass(frozen=True)
class GenerateConfig:
    """Rejection sampling (`aha generate`): sample completions of data.train_path's prompts on
    the rollout workers, verify them with the reward scorers, keep the verified ones as traces.

    A completion is verified when the correctness reward (`eval.correctness`, by default the
    first of reward.weights) gives it 1.0. rollout.temperature, top_p, top_k, stop and
    max_new_tokens apply; the traces are written to run.output_dir.
    """

    samples_per_prompt: int = 8  # K completions sampled per prompt
    num_prompts: int = 0  # the first N rows of data.train_path, in file order; 0: every row
    # "all_correct": every verified completion, in sampling order, up to max_per_prompt;
    # "shortest_correct": the verified one with the fewest tokens (one per prompt).
    keep: Literal["all_correct", "shortest_correct"] = "all_correct"
    max_per_prompt: int = 0  # keep at most this many verified traces per prompt; 0: no cap
    dedupe: bool = True  # drop exact duplicate completions of the same prompt
    keep_rejected: bool = False  # also write the completions not kept, with why, to rejected.parquet
    chunk_prompts: int = 64  # prompts per written part: a killed run loses at most the unwritten part


@dataclass(frozen=True)
class SFTConfig:
    """Supervised fine-tuning (`aha sft`) on a trace data set (Parquet or JSONL).

    Rows hold `prompt` + `completion` (the prompt is rendered with data.template, as in RL and
    eval; the completion is what the model writes after it) or `messages` (chat turns, rendered
    with the tokenizer's chat template when data.template = "chat"). The loss is the token NLL of
    the completion / assistant tokens only, with the tokenizer's EOS appended to each.
    """

    train_path: str = ""
    eval_path: str = ""  # held-out traces for the held-out loss; empty: none
    file_format: Literal["auto", "parquet", "jsonl"] = "auto"
    shape: Literal["auto", "prompt_completion", "messages"] = "auto"  # auto: by the columns present
    prompt_column: str = "prompt"
    completion_column: str = "completion"
    messages_column: str = "messages"
    epochs: int = 1
    batch_size: int = 32  # sequences per optimizer step
    max_length: int = 1024  # prompt + completion + EOS tokens
    too_long: Literal["skip", "error"] = "skip"  # a longer row: skipped and counted, or an error
    eval_every: int = 0  # steps between held-out loss and accuracy; 0: before and after training only
    eval_rows: int = 256  # held-out loss on the first N rows of sft.eval_path
    shuffle: bool = True


@dataclass(frozen=True)
class DistillConfig:
    """On-policy distillation (`aha distill`): the student (model.path) samples on the rollout
    workers as in RL, a frozen teacher scores every sampled token, and the student learns from
    the per-token reverse KL to the teacher (learner/distill_loss.py), streamed, synced and
    checked for staleness exactly like `aha train`. Teacher and student share one vocabulary.
    """

    teacher: str = ""  # the teacher: a hub id or a local directory (a run's final/)
    teacher_tokenizer: str = ""  # empty: the teacher's own
    # "advantage": −kl_coef·(log π_student − log π_teacher) per token as the advantage of GRPO's
    # clipped policy loss, plus reward_weight × the task's group advantage; "kl": the pure
    # distillation loss (no task term), importance-weighted by algorithm.tis_cap.
    loss: Literal["advantage", "kl"] = "advantage"
    kl_coef: float = 1.0
    reward_weight: float = 0.0  # the task reward's share in "advantage"; 0: pure distillation
    num_teachers: int = 1  # teacher actors, used round-robin
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: float32 on CPU, bf16 on GPU
    max_batch_tokens: int = 16384  # padded tokens per teacher forward
    cpu_threads: int = 0  # torch threads of a teacher on CPU; 0: torch's choice


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
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

    @property
    def output_dir(self) -> Path:
        return Path(self.run.output_dir or f"runs/{self.run.name}")
