"""The rollout workers from the driver's side: N vLLM actors in a placement group.

Prompts are spread over the workers round-robin; the groups come back as one stream, each as
soon as it is done, whichever worker made it. The weights reach the workers through the run's
WeightSync (cluster/roles/weight_sync.py). A worker that dies is replaced in its own placement
bundle, brought onto the current weights, and its unfinished prompts are sampled again
(cluster/roles/recovery.py counts what that cost).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from actors.rollout_worker import EngineSpec, RolloutWorker
from cluster.roles.calls import get_all
from cluster.roles.bundles import RolePlacement, bundle_of
from cluster.roles.recovery import Recovery, is_death, one_line
from cluster.wire.samples import Sample, SamplingSpec

class RolloutPool:
    """Launch, feed, update and, when one dies, replace the N rollout workers.

    Worker i lives in bundle i of the pool's placement group, and so does its replacement.
    `incarnations[i]` counts worker i's replacements: a failure reported by an older one is
    already dealt with. Once the run's WeightSync is linked, a replacement joins a new weight
    group with the survivors and every engine gets the current weights before it takes work.
    """

    def __init__(self, spec: EngineSpec, num_workers: int, *, cpus_per_worker: float,
                 gpus_per_worker: float, timeout_s: float, recovery: Recovery | None = None,
                 health_timeout_s: float = 30.0, nodes: list[str] | None = None, wait: bool = True):
        import ray

        self._ray, self.timeout_s, self.spec = ray, timeout_s, spec
        self.health_timeout_s = min(health_timeout_s, timeout_s)
        self.tensor_parallel = spec.tensor_parallel_size
        self.recovery = recovery or Recovery(max_restarts=0)
        self.placed = RolePlacement(ray, bundle_of(cpus_per_worker, gpus_per_worker), num_workers, nodes, timeout_s,
                                    "rollout workers")
        self.placement = self.placed.group  # placement.json reads it
        self._actor = ray.remote(RolloutWorker)
        self._resources = {"num_cpus": cpus_per_worker, "num_gpus": gpus_per_worker}
        self.workers = [self._launch(index) for index in range(num_workers)]
        self.incarnations = [0] * num_workers
        self._replacing = threading.Lock()
        self._starting = [w.process_ids.remote() for w in self.workers]
        self._processes = None
        # Set by the run's WeightSync (cluster/roles/weight_sync.py): brings replaced workers onto
        # the current weights before they take work.
        self.after_replacement = None
        if wait:
            self.wait_started()

    def wait_started(self) -> None:
        """Wait (bounded) until every engine has started. With `wait=False` the engines boot
        while the caller starts the other roles: on a cluster the roles start side by side."""
        if self._processes is None:
            self._processes = get_all(self._ray, self._starting, self.timeout_s, "rollout engine start")

    def _launch(self, index: int, where: dict | None = None):
        where = where or self.placed.options(index)
        return self._actor.options(**self._resources, **where).remote(self.spec)

    def stream(self, prompts: list[list[int]], sampling: SamplingSpec) -> "GroupStream":
        """Start sampling a group per prompt now; iterate the result for `(prompt index, group)`
        in the order the groups finish. More prompts can be added to a running stream."""
        stream = GroupStream(self)
        stream.add(prompts, sampling)
        return stream

    def current(self, index: int):
        """`(worker, incarnation)` of worker `index`, read together: not halfway through its
        replacement by another thread (which this waits for)."""
        with self._replacing:
            return self.workers[index], self.incarnations[index]

    # -- failures ---------------------------------------------------------------------------

    def dead_workers(self) -> list[tuple[int, int, BaseException]]:
        """`(index, incarnation, why)` of each worker that is gone or cannot answer a health probe."""
        ray = self._ray
        refs = [w.health.remote() for w in self.workers]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=self.health_timeout_s)
        dead = []
        for index, ref in enumerate(refs):
            try:
                if ref not in ready:
                    raise TimeoutError(f"no answer to a health probe within {self.health_timeout_s:g} s")
                ray.get(ref)
            except Exception as err:  # another error is not this probe's to judge
                if isinstance(err, TimeoutError) or is_death(err):
                    dead.append((index, self.incarnations[index], err))
        return dead

    def replace_dead(self, dead: list[tuple[int, int, BaseException]]) -> None:
        """Replace each `(index, incarnation, why)` worker not yet replaced by a new one in its
        placement bundle; then `after_replacement` (the run's WeightSync) re-links the weight
        group and pushes the current weights, so that every engine is on them before it takes work.
        Past cluster.max_restarts: RunInterrupted."""
        with self._replacing:  # the evaluation before RL streams from another thread
            self._replace_dead(dead)

    def _replace_dead(self, dead: list[tuple[int, int, BaseException]]) -> None:
        dead = [(index, why) for index, incarnation, why in dead if self.incarnations[index] == incarnation]
        if not dead:
            return
        started = time.perf_counter()
        for index, why in dead:
            self.recovery.allow_restart("rollout", f"rollout worker {index} died ({one_line(why)})")
            self._ray.kill(self.workers[index], no_restart=True)
            kill_leftovers(self._processes[index])  # an engine process that outlived its actor holds memory
            self.workers[index] = self._launch(index, self.placed.for_replacement(index, f"rollout worker {index}"))
            self.incarnations[index] += 1
        started_up = get_all(self._ray, [self.workers[index].process_ids.remote() for index, _ in dead],
                             self.timeout_s, "replacement rollout engine start")
        for (index, _), processes in zip(dead, started_up):
            self._processes[index] = processes
        version = self.after_replacement() if self.after_replacement is not None else None
        names = ", ".join(str(index) for index, _ in dead)
        self.recovery.recovered(started, f"rollout worker {names} replaced, on weight version {version or 0}")

    # -- weights ------------------------------------------------------------------------------

    def link_refs(self, host: str, port: int) -> list:
        """Start joining the learner's weight group; returns the calls' refs. Engine i's
        tensor-parallel workers take ranks 1 + i * tp ..; the learner is rank 0."""
        return [w.join_weight_group.remote(host, port, 1 + i * self.tensor_parallel, self.weight_world_size,
                                           self.timeout_s) for i, w in enumerate(self.workers)]

    @property
    def weight_world_size(self) -> int:
        return 1 + len(self.workers) * self.tensor_parallel

    def update_refs(self, manifest, version: int, bucket_bytes: int) -> list:
        """Start receiving a broadcast of weights `version`; returns the calls' refs."""
        return [w.update_weights.remote(manifest, version, bucket_bytes, self.timeout_s) for w in self.workers]

    def sleep(self) -> None:
        """Free every engine's GPU memory (weights, KV cache) until `wake_up`; a no-op on CPU."""
        get_all(self._ray, [w.sleep.remote() for w in self.workers], self.timeout_s, "rollout engine sleep")

    def wake_up(self) -> None:
        get_all(self._ray, [w.wake_up.remote() for w in self.workers], self.timeout_s, "rollout engine wake-up")

    def versions(self) -> list[int]:
        return get_all(self._ray, [w.get_weight_version.remote() for w in self.workers], self.timeout_s,
                       "rollout weight versions")

    def shutdown(self) -> None:
        for worker in self.workers:
            self._ray.kill(worker)
        self.placed.remove()


def kill_leftovers(processes: list[tuple[int, float]]) -> None:
    """SIGKILL the processes `(pid, create_time)` of a dead worker that are still there (its
    engine's, when only the actor died); a pid since taken by another process is left alone.
    Only this node's processes can be seen; on other nodes Ray's own clean-up has to do."""
    import psutil

    for pid, created in processes:
        try:
            process = psutil.Process(pid)
            if abs(process.create_time() - created) < 1e-3:
                process.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass


@dataclass(frozen=True)
class StreamEvent:
    """What ended one wait of the driver (`GroupStream.next_event`): a finished group as
    `(prompt index, samples)`; or no group, because one of the other refs waited on is ready,
    or because the stream has ended (`ended`)."""

    group: tuple[int, list[Sample]] | None = None
    ended: bool = False


@dataclass
class _Shard:
    """The prompts one streaming call samples, on worker `worker` (that incarnation of it)."""

    worker: int
    incarnation: int
    indices: list[int]


class GroupStream:
    """Groups of one or more batches of prompts, spread over the workers, merged as they finish.

    Each wait is bounded by the pool's timeout. A worker that dies, or that cannot answer a
    health probe (sent whenever no group has come for the pool's health timeout), is replaced
    (`RolloutPool.replace_dead`) and the prompts it had not finished are sampled again under
    their own indices: each index still yields exactly one group, made by one weight version.
    """

    def __init__(self, pool: RolloutPool):
        self._pool, self._streams, self._count, self._turn = pool, {}, 0, 0
        self._prompts: dict[int, tuple[list[int], SamplingSpec]] = {}
        self._delivered: set[int] = set()
        self._deadline: float | None = None  # when a quiet stream times out (cluster.timeout_s)

    def add(self, prompts: list[list[int]], sampling: SamplingSpec) -> list[int]:
        """Launch more prompts now; returns the indices their groups will carry."""
        indices = list(range(self._count, self._count + len(prompts)))
        self._count += len(prompts)
        for index, prompt in zip(indices, prompts):
            self._prompts[index] = (prompt, sampling)
        self._launch(indices)
        return indices

    def _launch(self, indices: list[int]) -> None:
        pool = self._pool
        shards: dict[int, list[int]] = {}
        for index in indices:  # round-robin continues across calls
            shards.setdefault(self._turn % len(pool.workers), []).append(index)
            self._turn += 1
        for w, shard in shards.items():
            prompts = [self._prompts[i][0] for i in shard]
            settings = [self._prompts[i][1] for i in shard]
            shared = all(s is settings[0] for s in settings)
            worker, incarnation = pool.current(w)
            gen = worker.stream_groups.options(num_returns="streaming").remote(
                prompts, settings[0] if shared else settings)
            self._streams[gen] = _Shard(w, incarnation, shard)

    def cancel(self) -> None:
        """Stop generating what has not been delivered (the run rewinds past it): the workers'
        requests are cancelled, and the stream ends at once."""
        for gen in self._streams:
            try:
                self._pool._ray.cancel(gen)
            except Exception:  # a worker that is gone has nothing left to cancel
                pass
        self._streams.clear()

    @property
    def ended(self) -> bool:
        """Whether every group launched so far has been delivered."""
        return not self._streams

    def __iter__(self) -> Iterator[tuple[int, list[Sample]]]:
        while (finished := self.next_group()) is not None:
            yield finished

    def next_group(self, also: list = ()) -> tuple[int, list[Sample]] | None:
        """`next_event(also).group`: a finished group, or None when one of `also` is ready or
        the stream has ended."""
        return self.next_event(also).group

    def next_event(self, also: list = ()) -> StreamEvent:
        """The driver's one wait: the next finished group; or, as soon as one of `also` (Ray
        refs the caller waits on beside the stream: scores, a learner call) is ready, an event
        without a group; or the stream's end (then after waiting, bounded, for one of `also`).
        Quiet spells are bounded by the pool's timeout, counted across calls."""
        ray, pool = self._pool._ray, self._pool
        if self._deadline is None:
            self._deadline = time.monotonic() + pool.timeout_s
        while self._streams:
            wait_s = max(min(pool.health_timeout_s, self._deadline - time.monotonic()), 0.0)
            ready, _ = ray.wait([*self._streams, *also], num_returns=1, timeout=wait_s)
            if not ready:  # a quiet spell: a hung worker is found long before the timeout
                if self._replace_unresponsive():
                    self._deadline = time.monotonic() + pool.timeout_s
                elif time.monotonic() >= self._deadline:
                    raise TimeoutError(f"no rollout group finished within {pool.timeout_s:g} s (cluster.timeout_s)")
                continue
            gen = ready[0]
            if gen not in self._streams:
                return StreamEvent()  # one of `also`
            self._deadline = time.monotonic() + pool.timeout_s
            try:
                position, group = ray.get(next(gen), timeout=pool.timeout_s)
            except StopIteration:
                del self._streams[gen]
                continue
            except Exception as err:
                if not is_death(err):
                    raise
                shard = self._streams[gen]
                self._pool.replace_dead([(shard.worker, shard.incarnation, err)])
                self._requeue([gen])
                continue
            index = self._streams[gen].indices[position]
            self._delivered.add(index)
            return StreamEvent(group=(index, group))
        self._deadline = None
        if also:  # the stream has ended: wait for the caller's refs here, bounded, not in a spin
            ray.wait(list(also), num_returns=1, timeout=pool.timeout_s)
        return StreamEvent(ended=True)

    def _replace_unresponsive(self) -> bool:
        """Replace the workers that fail a health probe and re-queue their prompts; whether any did."""
        dead = self._pool.dead_workers()
        if dead:
            self._pool.replace_dead(dead)
            gone = {(index, incarnation) for index, incarnation, _ in dead}
            self._requeue([gen for gen, shard in self._streams.items() if (shard.worker, shard.incarnation) in gone])
        return bool(dead)

    def _requeue(self, gens: list) -> None:
        """Sample again, on the current workers, the prompts these dead streams had not finished."""
        lost = [index for gen in gens for index in self._streams.pop(gen).indices if index not in self._delivered]
        if lost:
            self._pool.recovery.requeued(len(lost))
            self._launch(lost)
