"""SFT learner throughput: aha's learner rank against plain torch, and packed against padded.

1. aha's DeepSpeed learner rank (a Ray actor, SFT objective) against plain torch
   forward/backward/AdamW with the same token-NLL loss, on the same batch of equal-length
   sequences (so neither side gains from the layout): target tokens/s and their ratio
   (target >= 0.8).
2. The same learner with packed (padding-free) micro-batches against padded ones, on a batch
   whose sequence lengths vary 4:1 (uniformly between a quarter of the longest and the
   longest): useful (target) tokens/s and their ratio (target >= 1.5).

    .venv/bin/python bench/sft.py [--hidden 256 --layers 4 --steps 4]
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import sys
import tempfile
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path and `bench/learner.py` would
# shadow the `learner` package; the project's packages must win.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import torch  # noqa: E402


def _learner_bench():
    """bench/learner.py: its plain-torch baseline and its aha learner measurement."""
    spec = importlib.util.spec_from_file_location("aha_bench_learner", Path(__file__).with_name("learner.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sft_batch(lengths: list[int], prompt_len: int, vocab: int, seed: int = 0):
    """SFT sequences: a `prompt_len`-token prompt and a completion of each length (EOS included)."""
    from learner.batching import TrainSequence

    rng = random.Random(seed)
    return [TrainSequence(prompt_ids=[rng.randrange(10, vocab) for _ in range(prompt_len)],
                          completion_ids=[rng.randrange(10, vocab) for _ in range(length)]) for length in lengths]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--sequences", type=int, default=32, help="per step (at least 2)")
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--max-completion", type=int, default=240)
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--zero-stage", type=int, default=2)
    args = parser.parse_args()

    from cluster.inputs.tiny_model import build_tiny_model, tiny_model_spec
    from cluster.recipe import Recipe
    from cluster.recipe.schema import TinyModelConfig

    bench = _learner_bench()
    threads = torch.get_num_threads()
    longest = args.prompt_len + args.max_completion
    # Total lengths evenly spread over [longest / 4, longest] (a 4:1 spread), in shuffled order
    # as a real batch comes.
    spread_of = [longest // 4 + (i * (longest - longest // 4)) // (args.sequences - 1) for i in range(args.sequences)]
    random.Random(1).shuffle(spread_of)
    varied = [total - args.prompt_len for total in spread_of]
    equal = [args.max_completion // 2] * args.sequences
    common = dict(micro_batch_size=args.micro_batch, steps=args.steps, lr=1e-5)
    with tempfile.TemporaryDirectory() as tmp:
        config = TinyModelConfig(hidden_size=args.hidden, num_layers=args.layers)
        model_dir = build_tiny_model(f"{tmp}/model", tiny_model_spec(config, Recipe().rollout.max_model_len))
        same = sft_batch(equal, args.prompt_len, vocab=250)
        baseline = bench.plain_torch_tokens_per_s(model_dir, same, objective="sft", **common)
        aha = bench.aha_tokens_per_s(model_dir, same, zero_stage=args.zero_stage, threads=threads, objective="sft",
                                     packing=False, **common)
        spread = sft_batch(varied, args.prompt_len, vocab=250, seed=2)
        padded = bench.aha_tokens_per_s(model_dir, spread, zero_stage=args.zero_stage, threads=threads,
                                        objective="sft", packing=False, **common)
        packed = bench.aha_tokens_per_s(model_dir, spread, zero_stage=args.zero_stage, threads=threads,
                                        objective="sft", packing=True, **common)
        # Wider rows fill better (fewer half-empty rows) at a quadratic attention cost per row.
        packed_wide = bench.aha_tokens_per_s(model_dir, spread, zero_stage=args.zero_stage, threads=threads,
                                             objective="sft", packing=True, pack_length=2 * longest, **common)
    useful = sum(varied) + len(varied)  # completion tokens are the targets
    padded_tokens = len(varied) * longest
    print(f"model hidden={args.hidden} layers={args.layers}; {args.sequences} sequences per step; {threads} threads")
    print(f"1) equal lengths ({args.prompt_len} + {equal[0]} tokens), padded layout on both sides:")
    print(f"   plain torch forward/backward/AdamW: {baseline:8.0f} target tokens/s")
    print(f"   aha learner (SFT, ZeRO-{args.zero_stage}, Ray actor): {aha:8.0f} target tokens/s")
    print(f"   ratio aha / plain torch: {aha / baseline:.2f}  (target >= 0.8)")
    print(f"2) lengths {min(varied) + args.prompt_len}..{max(varied) + args.prompt_len} tokens (4:1); "
          f"useful share of a padded batch {useful / padded_tokens:.0%}:")
    print(f"   padded: {padded:8.0f} useful tokens/s")
    print(f"   packed (the default: rows as wide as the longest): {packed:8.0f} useful tokens/s, "
          f"ratio {packed / padded:.2f}  (target >= 1.5)")
    print(f"   packed (rows 2x the longest): {packed_wide:8.0f} useful tokens/s, ratio {packed_wide / padded:.2f}")


if __name__ == "__main__":
    main()
