"""`aha smoke`: a quick check of the stack under a recipe, without training.

It checks, end to end, the pieces the loop is built on: the recipe resolves, the model and
data are prepared, a rollout worker samples groups through Ray, and the logprobs vLLM reports
match a transformers forward pass over the same tokens (what the learner's importance-sampling
correction relies on). Useful on a new machine or cluster before a long run.
"""

from __future__ import annotations

import time

from cluster.recipe import Recipe
from cluster.wire.samples import Sample


def _log(message: str) -> None:
    print(f"[aha smoke] {message}", flush=True)


def transformers_logprob_gap(model_path: str, samples: list[Sample]) -> float:
    """Largest |vLLM logprob - transformers logprob| over every sampled token."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    worst = 0.0
    with torch.no_grad():
        for sample in samples:
            ids = torch.tensor([sample.prompt_ids + sample.completion_ids])
            logits = model(ids).logits[0, len(sample.prompt_ids) - 1 : -1].float()
            target = torch.tensor(sample.completion_ids)[:, None]
            logprobs = torch.log_softmax(logits, dim=-1).gather(-1, target)[:, 0]
            gap = (logprobs - torch.tensor(sample.logprobs)).abs().max().item()
            worst = max(worst, gap)
    return worst


def run_smoke(recipe: Recipe, num_prompts: int = 4) -> dict:
    """Sample `num_prompts` groups through a RolloutWorker actor; return the figures it measured."""
    from actors.rollout_worker import RolloutWorker
    from cluster.inputs.data import PromptSampler
    from cluster.inputs.prepare import prepare_data, prepare_model
    from cluster.inputs.prompts import encode_prompts, load_rows
    from cluster.roles.calls import get_with_timeout
    from cluster.startup.ray import connect_ray
    from cluster.startup.preflight import check_before_start, check_prepared, load_tokenizer, print_warnings
    from cluster.startup.specs import engine_spec, sampling_spec

    started = time.perf_counter()
    print_warnings(check_before_start(recipe))
    prepare_data(recipe)
    model_path = str(prepare_model(recipe, pretrain=False))  # the stack check needs no trained model
    _log(f"model at {model_path}, data at {recipe.data.train_path}")

    rows = load_rows(recipe, recipe.data.train_path)
    batch = PromptSampler(rows, seed=recipe.run.seed, shuffle=recipe.data.shuffle).next_batch(num_prompts)
    tokenizer = load_tokenizer(recipe, model_path)
    print_warnings(check_prepared(recipe, model_path, tokenizer))
    prompt_ids = encode_prompts(recipe, tokenizer, batch)

    ray = connect_ray(recipe.cluster)
    cluster, timeout = recipe.cluster, recipe.cluster.timeout_s
    worker = ray.remote(RolloutWorker).options(num_cpus=cluster.rollout_cpus, num_gpus=cluster.rollout_gpus)
    _log("starting a vLLM engine in a Ray actor (about half a minute on CPU)")
    actor = worker.remote(engine_spec(recipe, model_path))
    get_with_timeout(ray, actor.tokenize.remote("warm-up"), timeout, "the rollout worker's engine start")

    rollout = recipe.rollout
    t0 = time.perf_counter()
    groups = get_with_timeout(ray, actor.sample_groups.remote(prompt_ids, sampling_spec(recipe, seed=recipe.run.seed)),
                              timeout, "sampling")
    elapsed = time.perf_counter() - t0
    samples = [s for group in groups for s in group]
    tokens = sum(len(s.completion_ids) for s in samples)
    _log(f"sampled {len(groups)} groups x {rollout.group_size} = {tokens} tokens in {elapsed:.1f} s "
         f"({tokens / elapsed:.0f} tokens/s)")
    _log(f"prompt: {batch[0].prompt!r} fields: {batch[0].fields}")
    for sample in groups[0][:3]:
        _log(f"  completion ({sample.finish_reason}, v{sample.weight_version}): {sample.text[:60]!r}")

    gap = transformers_logprob_gap(model_path, samples)
    _log(f"largest |vLLM - transformers| logprob gap over {tokens} tokens: {gap:.2e}")
    ray.kill(actor)
    _log(f"done in {time.perf_counter() - started:.0f} s")
    return {"groups": len(groups), "tokens": tokens, "tokens_per_s": tokens / elapsed, "logprob_gap": gap}
