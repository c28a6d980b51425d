"""Trace generation: `aha generate`'s completions/s against vLLM's own `LLM.generate` on the same
prompts and engine settings, measured in the same run (target: >= 0.9).

The baseline samples every prompt's K completions in one `LLM.generate` call in this process.
`aha generate` runs the same recipe end to end (rollout worker in a Ray actor, reward scorer,
chunked Parquet parts, merge); its rate is taken over its sampling phase — from the first
prompt launched to the last chunk written, so scoring and writing count — as it records it in
summary.json. Neither side gets a warm-up call: each engine's first batch is in its time. The
baseline runs before and after `aha generate` and the faster of the two counts, so a machine
whose load changes mid-run (a shared CPU) cannot flatter the ratio.

    .venv/bin/python bench/generate.py [--hidden 512 --layers 8 --prompts 32 --samples 8 --tokens 128 --chunk 8]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

# Run as a script, this folder comes first on sys.path and bench/learner.py would shadow the
# `learner` package; the project's packages must win.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]


def vllm_direct(spec, prompts: list[list[int]], sampling) -> tuple[float, float, int]:
    """Baseline: (completions/s, tokens/s, completions) of one `LLM.generate` call, with the
    engine and sampling settings the rollout worker uses."""
    import torch
    from vllm import LLM, SamplingParams

    from actors.rollout_worker import resolve_dtype

    memory = ({"kv_cache_memory_bytes": int(spec.kv_cache_gb * 2**30)} if spec.kv_cache_gb > 0
              else {"gpu_memory_utilization": spec.gpu_memory_utilization})
    llm = LLM(model=spec.model_path, dtype=resolve_dtype(spec.dtype), max_model_len=spec.max_model_len,
              seed=spec.seed, enforce_eager=spec.enforce_eager,
              **({} if torch.cuda.is_available() else {"enable_chunked_prefill": False}),
              **({"max_num_seqs": spec.max_num_seqs} if spec.max_num_seqs > 0 else {}), **memory)
    params = SamplingParams(n=sampling.group_size, max_tokens=sampling.max_new_tokens,
                            temperature=sampling.temperature, top_p=sampling.top_p,
                            top_k=sampling.top_k if sampling.top_k > 0 else 0, stop=list(sampling.stop) or None,
                            seed=sampling.seed, logprobs=0, include_stop_str_in_output=True)
    start = time.perf_counter()
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    completions = sum(len(out.outputs) for out in outputs)
    tokens = sum(len(c.token_ids) for out in outputs for c in out.outputs)
    llm.llm_engine.engine_core.shutdown()
    del llm
    return completions / elapsed, tokens / elapsed, completions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--chunk", type=int, default=8, help="generate.chunk_prompts")
    parser.add_argument("--kv-cache-gb", type=float, default=1.0)
    args = parser.parse_args()

    from cluster.commands.generate import generate
    from cluster.inputs.prompts import encode_prompts, load_rows
    from cluster.inputs.tasks import task_rows, write_rows
    from cluster.inputs.tiny_model import build_tiny_model, tiny_model_spec
    from cluster.startup.preflight import load_tokenizer
    from cluster.recipe import load_recipe
    from cluster.recipe.schema import TinyModelConfig
    from cluster.startup.specs import engine_spec, sampling_spec

    with tempfile.TemporaryDirectory() as tmp:
        max_len = 512 + args.tokens
        model_dir = str(build_tiny_model(f"{tmp}/model", tiny_model_spec(
            TinyModelConfig(hidden_size=args.hidden, num_layers=args.layers), max_len)))
        write_rows(task_rows("chain_sum", args.prompts, seed=0), f"{tmp}/train.parquet")
        overrides = {
            "model.path": model_dir, "data.train_path": f"{tmp}/train.parquet", "data.max_prompt_tokens": 512,
            "rollout.max_new_tokens": args.tokens, "rollout.max_model_len": max_len,
            "rollout.kv_cache_gb": args.kv_cache_gb, "rollout.enforce_eager": "true",
            "reward.weights": "{ arithmetic = 1.0 }", "reward.workers_per_scorer": 1,
            "cluster.num_cpus": 4, "cluster.scorer_cpus": 0.5,
            "generate.samples_per_prompt": args.samples, "generate.chunk_prompts": args.chunk,
            "run.output_dir": f"{tmp}/gen",
        }
        recipe = load_recipe(None, [item for key, value in overrides.items() for item in (f"--{key}", str(value))])
        rows = load_rows(recipe, recipe.data.train_path)
        prompts = encode_prompts(recipe, load_tokenizer(recipe, model_dir), rows)
        # The sampling aha generate asks its workers for.
        sampling = replace(sampling_spec(recipe, seed=None), group_size=args.samples)
        spec = engine_spec(recipe, model_dir)
        before = vllm_direct(spec, prompts, sampling)
        out = generate(recipe)
        this_run = json.loads((out / "summary.json").read_text())["this_run"]
        after = vllm_direct(spec, prompts, sampling)
        direct, direct_tokens, count = max(before, after)

    print(f"model hidden={args.hidden} layers={args.layers}; {args.prompts} prompts x {args.samples} completions "
          f"x <= {args.tokens} tokens ({count} completions), chunks of {args.chunk} prompts")
    print(f"vLLM LLM.generate (direct):  {direct:8.1f} completions/s  {direct_tokens:8.0f} tokens/s  (the faster of "
          f"{before[0]:.1f} before and {after[0]:.1f} after)")
    print(f"aha generate:                {this_run['completions_per_s']:8.1f} completions/s  "
          f"{this_run['tokens_per_s']:8.0f} tokens/s  ({this_run['seconds']:.1f} s sampling, scoring, writing)")
    print(f"ratio generate / direct: {this_run['completions_per_s'] / direct:.2f} completions/s, "
          f"{this_run['tokens_per_s'] / direct_tokens:.2f} tokens/s  (target >= 0.9)")


if __name__ == "__main__":
    main()
