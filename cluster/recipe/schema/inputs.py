"""What a run starts from: the model (`[model]`, `[model.tiny]`, `[model.pretrain]`) and the
prompt data (`[data]`, `[data.synthetic]`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from cluster.recipe.schema.setting import setting

TaskName = Literal["arithmetic", "chain_sum", "countdown", "pair_sum"]  # the built-in synthetic tasks
TASK_NAMES = get_args(TaskName)


@dataclass(frozen=True)
class TinyModelConfig:
    """Build a random-initialised tiny Qwen2 model with a character-level tokenizer at `model.path`
    (tests and the CPU demo: these machines cannot download); transformers and vLLM both load it."""

    hidden_size: int = setting(128, "Hidden width: a positive multiple of 64 (the head size), giving "
                                    "hidden_size / 64 attention heads.")
    num_layers: int = setting(2, "Transformer layers (>= 1).")
    num_kv_heads: int = setting(1, "Key/value heads (grouped-query attention); must divide the attention heads.")
    intermediate_size: int = setting(0, "Width of the MLP; 0: 4 x hidden_size.")
    seed: int = setting(0, "Seed of the random initialisation (0..2**32-1).")


@dataclass(frozen=True)
class PretrainConfig:
    """Pre-train the tiny model on a synthetic corpus of the recipe's task before RL (CPU demo).

    For chain_sum the corpus mixes worked solutions (`worked_fraction` of it: add step by
    step, then answer) with hasty ones (answer at once, wrongly: the sum of the first two
    terms only), like a base model that mostly answers without thinking. For pair_sum every
    solution writes a guess out and a few (`checked_fraction`) check each guess against the
    target and try again when it misses; checking exercises (`exercise_fraction`, marked
    prompts) teach the skill apart from the task. No held-out prompt is in it.
    """

    steps: int = setting(800, "Optimizer steps of pre-training.")
    batch_size: int = setting(64, "Corpus texts per pre-training step.")
    lr: float = setting(3e-3, "Peak learning rate: linear warm-up to it, then cosine decay to a tenth of it.")
    warmup_steps: int = setting(30, "Steps of linear learning-rate warm-up.")
    worked_fraction: float = setting(0.4, "Share of the corpus written as worked (step by step) solutions, "
                                          "in (0, 1]; the rest answer hastily and wrongly (chain_sum).")
    checked_fraction: float = setting(0.0, "Share of the corpus that checks each guess against the target and "
                                           "tries again after a miss, in [0, 1) (pair_sum); 0: task solutions without checks.")
    exercise_fraction: float = setting(0.0, "Share of the corpus that is checking exercises, in [0, 1) (pair_sum): "
                                            "puzzles marked ' check', solved by checking every guess. They teach how "
                                            "to check; the task's own prompts never carry the mark.")
    seed: int = setting(0, "Seed of the corpus draw.")
    template: str = setting("", "The prompt template the corpus is written under; empty: data.template. Another "
                                "one lets RL and evaluation use a different template from the same base model "
                                "(e.g. one that forces the answer at once).")


@dataclass(frozen=True)
class ModelConfig:
    """The policy: a hub id or a local directory, loaded the same way by transformers and vLLM."""

    path: str = setting("", "The policy model: a Hugging Face hub id or a local directory (a run's final/); "
                            "required. With [model.tiny] aha builds it there.")
    tokenizer: str = setting("", "Tokenizer hub id or directory; empty: the model's own.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = setting(
        "auto", "Weights' dtype in the rollout engines; auto: float32 on CPU, bfloat16 on GPU.")
    trust_remote_code: bool = setting(False, "Let transformers and vLLM run the model repository's own code.")
    tiny: TinyModelConfig | None = setting(None, "A [model.tiny] table: build a random tiny model at model.path.")
    pretrain: PretrainConfig | None = setting(
        None, "A [model.pretrain] table: the random model goes to <model.path>.init and a pre-trained one to "
              "model.path; needs [model.tiny] and data.synthetic.task chain_sum or pair_sum.")


@dataclass(frozen=True)
class SyntheticDataConfig:
    """Generate a built-in task's Parquet files at `data.train_path` / `data.eval_path`: the
    held-out file first, without repeats, then the training file without any held-out prompt.
    A file there is replaced only when aha wrote it (a sidecar `*.settings.json` keeps its hash).
    `aha data TASK FILE` writes the same rows with these defaults."""

    task: TaskName = setting("arithmetic", "The task: arithmetic (\"What is 48 + 7?\"), chain_sum (\"4+7+2\", the CPU "
                                           "demo's), countdown (reach a target from a set of numbers) or pair_sum (\"3 8 5 9 -> 13\": "
                                           "the two numbers that make the target; the self-verification world).")
    train_rows: int = setting(2000, "Rows written to data.train_path.")
    eval_rows: int = setting(200, "Rows written to data.eval_path (needs it set); 0: no held-out file.")
    seed: int = setting(0, "Seed of the rows; the held-out file draws from its own seed derived from it.")
    min_digits: int = setting(1, "arithmetic: fewest digits of an operand.")
    max_digits: int = setting(2, "arithmetic: most digits of an operand.")
    ops: str = setting("+-", "arithmetic: the operators drawn from, a non-empty subset of \"+-*\".")
    min_terms: int = setting(3, "chain_sum: fewest terms of a sum.")
    max_terms: int = setting(4, "chain_sum: most terms of a sum (<= 20).")
    max_term: int = setting(9, "chain_sum: each term is drawn from 1..max_term.")
    num_numbers: int = setting(3, "countdown: numbers per puzzle (2..6), each used exactly once; pair_sum: "
                                  "distinct numbers per puzzle (3..6).")
    max_number: int = setting(20, "countdown and pair_sum: each number is drawn from 1..max_number.")
    max_target: int = setting(100, "countdown: targets lie in 1..max_target (every puzzle is solvable).")
    cold_start_traces: int = setting(
        0, "chain_sum only: also write a cold-start SFT set, worked solutions (prompt + completion traces, the "
           "shape aha sft reads) of the first N training prompts, to cold_start_path; 0: none.")
    cold_start_path: str = setting("", "Where the cold-start traces go (required with cold_start_traces > 0).")
    cold_start_style: Literal["worked", "direct"] = setting(
        "worked", "The cold-start traces' completions: worked (step by step, then the answer) or direct (the right "
                  "answer alone, no working: SFT on them makes a direct-answer model).")


@dataclass(frozen=True)
class DataConfig:
    """Prompt datasets (Parquet or JSONL) and how rows become prompts and reward fields."""

    train_path: str = setting("", "Training prompts, a Parquet or JSONL file (a recipe only for aha sft sets "
                                  "sft.train_path instead).")
    eval_path: str = setting("", "Held-out prompts for evaluation ([eval], aha eval); empty: none.")
    file_format: Literal["auto", "parquet", "jsonl"] = setting(
        "auto", "How the data files are read; auto: by suffix (.parquet/.pq, .jsonl/.json).")
    prompt_column: str = setting("prompt", "The column holding the question.")
    columns: dict[str, str] = setting(
        factory=dict, help="Reward field -> dataset column ({answer = \"solution\"}); empty: every other column "
                           "reaches the reward functions under its own name.")
    template: str = setting(
        "r1_zero", "How a prompt is rendered: r1_zero (the assistant reasons inside <think> and answers inside "
                   "<answer>), chat (the tokenizer's chat template), raw, or your own string with one {prompt}.")
    system_prompt: str = setting("", "System turn for the chat template; empty: none.")
    shuffle: bool = setting(True, "Visit the prompts in an order shuffled by run.seed (the same every time); "
                                  "false: file order.")
    max_prompt_tokens: int = setting(512, "The longest prompt, in tokens after the template; a longer one is an "
                                          "error before the run starts.")
    synthetic: SyntheticDataConfig | None = setting(
        None, "A [data.synthetic] table: generate a built-in task at the data paths.")
