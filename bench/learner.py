"""Learner throughput: aha's DeepSpeed learner rank (a Ray actor) against plain torch.

Both sides train the same locally built model on the same batch of GRPO sequences with the
same settings (fp32, AdamW, token-mean loss); the baseline is forward/backward/AdamW in plain
torch in this process. Prints tokens/s of each and their ratio (target: >= 0.8).

    .venv/bin/python bench/learner.py [--hidden 256 --layers 4 --steps 5 --zero-stage 2]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path and `bench/learner.py` would
# shadow the `learner` package; the project's packages must win.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import torch  # noqa: E402


def make_batch(num_sequences: int, prompt_len: int, completion_len: int, vocab: int, seed: int = 0):
    from learner.batching import TrainSequence

    rng = random.Random(seed)
    return [
        TrainSequence(
            prompt_ids=[rng.randrange(10, vocab) for _ in range(prompt_len)],
            completion_ids=[rng.randrange(10, vocab) for _ in range(completion_len)],
            behaviour_logprobs=[-5.0] * completion_len,
            advantage=rng.choice([-1.0, 1.0]),
        )
        for _ in range(num_sequences)
    ]


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so a timer measures it; nothing to wait for on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_torch_tokens_per_s(model_dir, sequences, micro_batch_size: int, steps: int, lr: float,
                             device: torch.device = torch.device("cpu"), dtype: torch.dtype = torch.float32,
                             objective: str = "grpo") -> float:
    """Forward/backward/clip/AdamW in plain torch with the learner's loss (GRPO's, or SFT's token
    NLL), accumulated over padded micro-batches that are already on `device` (the baseline of
    bench/learner.py, bench/sft.py and, on CUDA in bf16, of bench/learner_gpu.py)."""
    from transformers import AutoModelForCausalLM

    from learner.batching import micro_batches, token_logprobs
    from learner.losses import policy_loss
    from learner.sft_loss import sft_loss

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    batches = [b.to(device) for b in micro_batches(sequences, micro_batch_size, pad_id=model.config.pad_token_id)]
    tokens = sum(b.num_tokens for b in batches)

    def one_step():
        for batch in batches:
            logp = token_logprobs(model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits,
                                  batch.input_ids)
            if objective == "sft":
                out = sft_loss(logp, batch.loss_mask)
            else:
                out = policy_loss(logp, logp.detach(), batch.advantages, batch.loss_mask,
                                  behaviour_logp=batch.behaviour_logp, tis_cap=2.0)
            (out.numerator / tokens).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    one_step()  # warm-up: kernels, allocator, AdamW state
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        one_step()
    synchronize(device)
    return tokens * steps / (time.perf_counter() - start)


def aha_tokens_per_s(model_dir, sequences, micro_batch_size: int, steps: int, lr: float,
                     zero_stage: int, threads: int, objective: str = "grpo", packing: bool = True,
                     pack_length: int = 0) -> float:
    """Target tokens/s of aha's learner rank (a Ray actor) training on `sequences` each step."""
    import ray

    from cluster.roles.learner_group import LearnerGroup
    from cluster.recipe import Recipe
    from cluster.startup.specs import learner_spec

    ray.init(address="local", num_cpus=threads, include_dashboard=False, log_to_driver=False)
    spec = replace(learner_spec(Recipe(), str(model_dir)), zero_stage=zero_stage, lr=lr, grad_clip=1.0,
                   micro_batch_size=micro_batch_size, tis_cap=2.0, objective=objective, packing=packing,
                   pack_length=pack_length)
    # One rank with every core: the same silicon the baseline gets.
    learners = LearnerGroup(spec, 1, cpus_per_rank=threads, gpus_per_rank=0, timeout_s=600)
    try:
        learners.accumulate([sequences], end_of_step=True)
        learners.step()  # warm-up (DeepSpeed builds its comm op on first use)
        tokens, start = 0, time.perf_counter()
        for _ in range(steps):
            tokens += learners.accumulate([sequences], end_of_step=True)
            learners.step()
        return tokens / (time.perf_counter() - start)
    finally:
        learners.shutdown()
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--sequences", type=int, default=32)
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--completion-len", type=int, default=128)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--zero-stage", type=int, default=2)
    args = parser.parse_args()

    from cluster.inputs.tiny_model import build_tiny_model, tiny_model_spec
    from cluster.recipe import Recipe
    from cluster.recipe.schema import TinyModelConfig

    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_tiny_model(f"{tmp}/model", tiny_model_spec(TinyModelConfig(hidden_size=args.hidden, num_layers=args.layers), Recipe().rollout.max_model_len))
        sequences = make_batch(args.sequences, args.prompt_len, args.completion_len, vocab=250)
        baseline = plain_torch_tokens_per_s(model_dir, sequences, args.micro_batch, args.steps, 1e-5)
        aha = aha_tokens_per_s(model_dir, sequences, args.micro_batch, args.steps, 1e-5, args.zero_stage, threads)
    print(f"model hidden={args.hidden} layers={args.layers}; {args.sequences} sequences x "
          f"{args.completion_len} completion tokens per step; {threads} threads")
    print(f"plain torch forward/backward/AdamW: {baseline:8.0f} tokens/s")
    print(f"aha learner (ZeRO-{args.zero_stage}, Ray actor): {aha:8.0f} tokens/s")
    print(f"ratio aha / plain torch: {aha / baseline:.2f}  (target >= 0.8)")


if __name__ == "__main__":
    main()
