"""Rollout throughput and weight-sync speed, each against a baseline in the same run.

1. Tokens/s of groups sampled through the RolloutWorker Ray actor against vLLM's own
   `LLM.generate` on the same prompts and engine settings (target: >= 0.9).
2. Time to broadcast the learner's weights and load them in place into the engine, against
   a plain in-process copy of the same bytes (target: speed >= 0.5x).
3. Both with the engine core spawned by vLLM and in the worker's own process
   (`rollout.engine_core`), with each worker's start-up (actor, vLLM import, engine build).

    .venv/bin/python bench/rollout.py [--hidden 512 --layers 8 --prompts 16 --group 8 --tokens 128]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

# Run as a script, this folder comes first on sys.path and bench/learner.py would shadow the
# `learner` package; the project's packages must win.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import torch  # noqa: E402


def make_prompts(count: int, length: int, seed: int = 0) -> list[list[int]]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(10, 250, (count, length), generator=generator).tolist()


def vllm_direct_tokens_per_s(spec, prompts, sampling) -> float:
    """Baseline: vLLM's offline `LLM.generate` in this process, same engine settings."""
    from vllm import LLM, SamplingParams

    llm = LLM(model=spec.model_path, dtype="float32", max_model_len=spec.max_model_len, seed=spec.seed,
              kv_cache_memory_bytes=int(spec.kv_cache_gb * 2**30), enforce_eager=spec.enforce_eager,
              enable_chunked_prefill=False)  # as the worker does on CPU (see RolloutWorker)
    params = SamplingParams(n=sampling.group_size, max_tokens=sampling.max_new_tokens, seed=sampling.seed,
                            logprobs=0, ignore_eos=sampling.ignore_eos)
    requests = [{"prompt_token_ids": p} for p in prompts]
    llm.generate(requests[:2], params, use_tqdm=False)  # warm-up
    start = time.perf_counter()
    outputs = llm.generate(requests, params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    tokens = sum(len(c.token_ids) for out in outputs for c in out.outputs)
    llm.llm_engine.engine_core.shutdown()
    del llm
    return tokens / elapsed


def actor_tokens_per_s(worker, prompts, sampling) -> float:
    import ray

    ray.get(worker.sample_groups.remote(prompts[:2], sampling), timeout=600)  # warm-up
    start = time.perf_counter()
    groups = ray.get(worker.sample_groups.remote(prompts, sampling), timeout=600)
    elapsed = time.perf_counter() - start
    return sum(len(s.completion_ids) for g in groups for s in g) / elapsed


def engine_run(spec, prompts, sampling, learners, timeout_s: float = 600) -> tuple[float, float, float]:
    """One rollout worker of `spec`: its start-up seconds, its tokens/s through the actor, and
    the best of three weight pushes from `learners` (seconds)."""
    from cluster.roles.rollout_pool import RolloutPool
    from cluster.roles.weight_sync import WeightSync

    started = time.perf_counter()
    pool = RolloutPool(spec, 1, cpus_per_worker=2, gpus_per_worker=0, timeout_s=timeout_s)
    start_s = time.perf_counter() - started
    try:
        tokens_per_s = actor_tokens_per_s(pool.workers[0], prompts, sampling)
        weights = WeightSync(learners, pool, timeout_s)
        weights.link()
        weights.push(1)  # warm-up
        sync_s = min(weights.push(v) for v in (2, 3, 4))
    finally:
        pool.shutdown()
    return start_s, tokens_per_s, sync_s


def in_process_copy_s(model_dir: str, repeats: int = 5) -> tuple[float, int]:
    """Baseline: copy every weight tensor into a same-shaped tensor in this process."""
    from transformers import AutoModelForCausalLM

    source = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    targets = [torch.empty_like(p) for p in source.parameters()]
    nbytes = sum(p.numel() * p.element_size() for p in source.parameters())
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for target, param in zip(targets, source.parameters()):
            target.copy_(param.detach())
        best = min(best, time.perf_counter() - start)
    return best, nbytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=128)
    args = parser.parse_args()

    import ray

    from cluster.inputs.tiny_model import build_tiny_model, tiny_model_spec
    from cluster.roles.learner_group import LearnerGroup
    from cluster.recipe import Recipe
    from cluster.recipe.schema import TinyModelConfig
    from cluster.startup.specs import engine_spec, learner_spec, sampling_spec

    defaults = Recipe()  # the schema's defaults, with the fields this benchmark sets

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = str(build_tiny_model(f"{tmp}/model", tiny_model_spec(TinyModelConfig(hidden_size=args.hidden, num_layers=args.layers), Recipe().rollout.max_model_len)))
        spec = replace(engine_spec(defaults, model_dir), dtype="float32", max_model_len=args.prompt_len + args.tokens + 8,
                       kv_cache_gb=1.0, enforce_eager=True, seed=0)
        prompts = make_prompts(args.prompts, args.prompt_len)
        # Fixed lengths on both sides: a random model's early EOS would make them incomparable.
        sampling = replace(sampling_spec(defaults, seed=0), group_size=args.group, max_new_tokens=args.tokens,
                           ignore_eos=True)
        direct = vllm_direct_tokens_per_s(spec, prompts, sampling)

        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
        try:
            learners = LearnerGroup(replace(learner_spec(defaults, model_dir), zero_stage=0), 1,
                                    cpus_per_rank=1, gpus_per_rank=0, timeout_s=600)
            runs = {core: engine_run(replace(spec, engine_core=core), prompts, sampling, learners)
                    for core in ("spawned", "in_process")}
        finally:
            ray.shutdown()
        copy_s, nbytes = in_process_copy_s(model_dir)

    print(f"model hidden={args.hidden} layers={args.layers} ({nbytes / 2**20:.0f} MiB fp32); "
          f"{args.prompts} prompts x {args.group} completions x {args.tokens} tokens")
    print(f"vLLM LLM.generate (direct):      {direct:8.0f} tokens/s")
    print(f"in-process copy of the weights:  {copy_s * 1000:8.1f} ms ({nbytes / copy_s / 2**30:.2f} GiB/s)")
    for core, (start_s, through_actor, sync_s) in runs.items():
        print(f"engine core {core}:")
        print(f"  worker start-up:               {start_s:8.1f} s")
        print(f"  RolloutWorker Ray actor:       {through_actor:8.0f} tokens/s; ratio actor / direct: "
              f"{through_actor / direct:.2f}  (target >= 0.9)")
        print(f"  broadcast + in-place load:     {sync_s * 1000:8.1f} ms ({nbytes / sync_s / 2**30:.2f} GiB/s); "
              f"speed ratio sync / copy: {copy_s / sync_s:.2f}  (target >= 0.5)")
    (spawned_start, spawned_tps, _), (inproc_start, inproc_tps, _) = runs["spawned"], runs["in_process"]
    print(f"in-process / spawned: start-up {inproc_start / spawned_start:.2f}x the time, generation "
          f"{inproc_tps / spawned_tps:.2f}x the tokens/s")


if __name__ == "__main__":
    main()
