"""vLLM's engine core in the rollout worker's own process, driven from the actor's event loop.

vLLM's AsyncLLM always spawns its EngineCore in a second process: a second interpreter that
imports vLLM again (most of an engine's start on CPU) and an IPC hop per decode step. With
VLLM_ENABLE_V1_MULTIPROCESSING=0 the synchronous LLMEngine keeps the core in the calling
process; `InprocessEngine` puts the part of AsyncLLM's interface the rollout worker uses on top
of it: `generate` as an async iterator per request, `pause_generation` / `resume_generation`
around weight updates, `collective_rpc`, `sleep` / `wake_up`, and `errored` / `dead_error` for
health probes. One task steps the engine while requests are in flight, on the actor's event-loop
thread, and yields after every step so that the actor's other calls (health probes, a weight
update waiting its turn) are answered between steps. Not in a thread: vLLM's CPU worker binds
its OpenMP threads to the thread that built the engine, and stepping from another thread gave
0.8x the tokens/s of the spawned core (hidden 512, 8 layers), against 1.1x on the loop's thread.

An engine that raises while stepping is dead: every request in flight and every later call
raises EngineDied, as the spawned core's death does. A crash that takes the process takes the
actor with it, which the driver already replaces.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

from cluster.wire.errors import EngineDied

_ENDED = object()  # a request aborted or cancelled: its iterator ends without a final output


class InprocessEngine:
    """AsyncLLM's interface, as far as the rollout worker uses it, over an in-process LLMEngine."""

    def __init__(self, engine_args):
        from vllm.v1.engine.llm_engine import LLMEngine

        # The caller sets VLLM_ENABLE_V1_MULTIPROCESSING=0 while this runs: LLMEngine then
        # builds an in-process core client (InprocClient).
        self._engine = LLMEngine.from_engine_args(engine_args)
        self.tokenizer = self._engine.get_tokenizer()
        self._queues: dict[str, asyncio.Queue] = {}
        self._lock = threading.Lock()  # one engine call at a time: a step, an add, an abort, an RPC
        self._running = asyncio.Event()  # cleared while paused: nothing is stepped
        self._running.set()
        self._stepper: asyncio.Task | None = None
        self.errored, self.dead_error = False, None

    # -- requests ---------------------------------------------------------------------------

    async def generate(self, prompt, params, request_id: str) -> AsyncIterator:
        """The request's outputs as they come (with FINAL_ONLY: the one final output); ends
        without one if the request is aborted by `pause_generation(mode="abort")`."""
        self._raise_if_dead()
        queue: asyncio.Queue = asyncio.Queue()
        self._queues[request_id] = queue
        in_engine = False
        try:
            with self._lock:
                self._engine.add_request(request_id, prompt, params)
            in_engine = True
            self._keep_stepping()
            while True:
                item = await queue.get()
                if item is _ENDED:  # pause_generation aborted it in the engine already
                    in_engine = False
                    return
                if isinstance(item, BaseException):
                    raise item
                in_engine = not item.finished
                yield item
                if not in_engine:
                    return
        finally:
            self._queues.pop(request_id, None)
            # Cancelled by the caller: free its slot in the engine. Not after a pause's abort: that
            # would wait here, on the event loop, for the lock the weight update holds.
            if in_engine and not self.errored:
                with self._lock:
                    self._engine.abort_request([request_id])

    def _keep_stepping(self) -> None:
        if self._stepper is None or self._stepper.done():
            self._stepper = asyncio.get_running_loop().create_task(self._step_while_busy())

    async def _step_while_busy(self) -> None:
        """Step the engine until no request is left, handing each output to its request."""
        while True:
            await self._running.wait()
            with self._lock:
                busy = self._engine.has_unfinished_requests()
            if not busy:
                return
            try:
                outputs = self._step()  # on this thread: see the module's docstring
            except Exception as err:  # the engine cannot go on: every request, and later calls, say so
                self.errored, self.dead_error = True, EngineDied(f"the in-process engine failed: {err}")
                for queue in self._queues.values():
                    queue.put_nowait(self.dead_error)
                return
            for output in outputs:
                queue = self._queues.get(output.request_id)
                if queue is not None:
                    queue.put_nowait(output)
            await asyncio.sleep(0)

    def _step(self) -> list:
        with self._lock:
            return self._engine.step()

    def _raise_if_dead(self) -> None:
        if self.errored:
            raise self.dead_error

    # -- weight updates ---------------------------------------------------------------------

    async def pause_generation(self, mode: str = "abort", clear_cache: bool = True) -> None:
        """Stop stepping. "abort": the requests in flight end now (the worker samples them again
        on the new weights); "wait": they finish first."""
        self._raise_if_dead()
        if mode == "wait":
            while self._stepper is not None and not self._stepper.done():
                await asyncio.wait({self._stepper})
        self._running.clear()  # a step already in its thread finishes; no other starts
        ids = list(self._queues) if mode == "abort" else []

        def abort_and_clear():  # off the event loop: it waits for the lock a step may hold
            with self._lock:
                if ids:
                    self._engine.abort_request(ids)
                if clear_cache:
                    self._engine.reset_prefix_cache()

        await asyncio.to_thread(abort_and_clear)
        for request_id in ids:
            if request_id in self._queues:
                self._queues[request_id].put_nowait(_ENDED)

    async def resume_generation(self) -> None:
        self._running.set()
        if self._queues:
            self._keep_stepping()

    async def collective_rpc(self, method: str, timeout: float | None = None, args: tuple = ()) -> list:
        """Run `method` on the engine's workers (here: in this process), off the event loop."""
        self._raise_if_dead()

        def call():
            with self._lock:
                return self._engine.collective_rpc(method, timeout=timeout, args=args)

        return await asyncio.to_thread(call)

    async def sleep(self, level: int = 1) -> None:
        with self._lock:
            self._engine.sleep(level=level)

    async def wake_up(self) -> None:
        with self._lock:
            self._engine.wake_up()

    def shutdown(self) -> None:
        core = getattr(self._engine, "engine_core", None)
        if core is not None:
            core.shutdown()
