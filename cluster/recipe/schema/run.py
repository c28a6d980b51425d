"""Where and how a run runs: resources and placement (`[cluster]`), held-out evaluation
(`[eval]`), and the run itself (`[run]`): mostly what a resumed run may change."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from cluster.recipe.schema.setting import setting


@dataclass(frozen=True)
class ClusterConfig:
    """Where the job runs and what each role is given."""

    address: str = setting("", "The Ray cluster to join (auto: the running one, as aha submit sets it); empty: "
                               "start Ray in-process on this machine.", resumable=True)
    device: Literal["auto", "cpu", "cuda"] = setting("auto", "Where the models run; auto: CUDA when there is one.")
    num_cpus: int = setting(0, "Logical CPUs offered to a local Ray; 0: this machine's count.", resumable=True)
    rollout_cpus: float = setting(1.0, "CPUs per rollout worker.", resumable=True)
    rollout_gpus: float = setting(0.0, "GPUs per rollout worker.", resumable=True)
    learner_cpus: float = setting(1.0, "CPUs per learner rank.", resumable=True)
    learner_gpus: float = setting(0.0, "GPUs per learner rank.", resumable=True)
    scorer_cpus: float = setting(1.0, "CPUs per reward scorer actor.", resumable=True)
    teacher_cpus: float = setting(1.0, "CPUs per teacher actor (aha distill).", resumable=True)
    teacher_gpus: float = setting(0.0, "GPUs per teacher actor (aha distill).", resumable=True)
    timeout_s: float = setting(600.0, "The longest wait on a peer actor (engine start, a group, a score, a learner "
                                      "step, a weight push, the teacher): past it, one line, never a hang.",
                               resumable=True)
    learner_placement: Literal["pack", "strict_pack", "spread"] = setting(
        "pack", "Learner ranks across nodes: pack fills a node before the next (first fit), strict_pack puts every "
                "rank on one node or refuses the plan, spread puts each on the emptiest node.", resumable=True)
    max_restarts: int = setting(3, "Dead rollout workers, reward scorers and teachers replaced, and learner groups "
                                   "restarted from the last checkpoint after a rank died, per role and run before "
                                   "it stops; 0: a dead actor stops the run.", resumable=True)
    health_timeout_s: float = setting(
        30.0, "While no group arrives for this long the workers are probed; one that cannot answer within it "
              "counts as dead (hung) and is replaced.", resumable=True)


@dataclass(frozen=True)
class EvalConfig:
    """Held-out evaluation: greedy accuracy, pass@k and maj@k, accuracy against token budget.
    Measurement, not training: a resumed run may change all of it."""

    every: int = setting(0, "Steps between evaluations; 0: only before and after training.", resumable=True)
    num_prompts: int = setting(200, "Held-out prompts: the first N rows of data.eval_path.", resumable=True)
    k: tuple[int, ...] = setting((), "Sample counts for pass@k (the unbiased estimator) and maj@k; () skips "
                                     "sampling.", resumable=True)
    temperature: float = setting(1.0, "Temperature of the k samples.", resumable=True)
    budgets: tuple[int, ...] = setting((), "Max-new-token budgets: accuracy at each, the inference-time scaling "
                                           "curve.", resumable=True)
    force_answer: str = setting(
        "", "Budget forcing (s1) at eval.budgets: a greedy completion still thinking after B tokens is cut there, "
            "this text is appended (e.g. \"</think><answer>\") and the model writes its answer; a budget of 0 "
            "forces the answer at once. The budget is then on the thinking. Empty: a completion is cut at B "
            "tokens and graded as it stands.", resumable=True)
    think_end: str = setting("</think>", "With eval.force_answer: the text that ends the thinking; a completion "
                                         "that wrote it within B tokens keeps its own answer.", resumable=True)
    correctness: str = setting("", "The reward whose value 1.0 means \"correct\" (also for aha generate); empty: "
                                   "the first in reward.weights.", resumable=True)


@dataclass(frozen=True)
class RunConfig:
    """The run: name, output directory, length, seed, logging and checkpoint cadence."""

    name: str = setting("run", "The run's name: letters, digits, '.', '_' or '-'.", resumable=True)
    output_dir: str = setting("", "Where the run writes everything; empty: runs/<name>. Absolute on a "
                                  "multi-node cluster (storage every node mounts). A moved run directory resumes "
                                  "where it is.", resumable=True)
    seed: int = setting(0, "Seed of the prompt order, sampling and initialisation (0..2**32-1).")
    steps: int = setting(100, "Optimizer steps of the run.", resumable=True)
    checkpoint_every: int = setting(0, "Steps between checkpoints; 0: only at the end.", resumable=True)
    keep_checkpoints: int = setting(3, "The newest N complete checkpoints are kept (older ones deleted).",
                                    resumable=True)
    log_every: int = setting(1, "Steps between the terminal's step lines (metrics.jsonl has every step).",
                             resumable=True)
    reflection_words: tuple[str, ...] = setting(
        ("wait", "let me check", "verify", "recheck"),
        "Words or phrases whose share of completions is the reflection rate (eval/reflection_rate).")
    check_detector: Literal["auto", "none", "pair_sum"] = setting(
        "auto", "The task's own detector of checks and self-corrections, whose rates go to metrics.jsonl "
                "(verify_rate, correction_rate, accuracy_verified, ...; eval/ and eval/sampled/ too): auto: "
                "data.synthetic.task's detector where it has one (pair_sum); none: no detector.")
