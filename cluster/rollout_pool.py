"""The rollout workers from the driver's side: N vLLM actors in a placement group.

Prompts are spread over the workers round-robin; the groups come back as one stream, each as
soon as it is done, whichever worker made it. The pool also links the workers to the learner
for weight sync: learner rank 0 is rank 0 of the weight group, worker i is rank i + 1.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from actors.rollout_worker import EngineSpec, RolloutWorker
from cluster.launch import get_all
from cluster.wire.samples import Sample, SamplingSpec


class RolloutPool:
    """Launch, feed and update the N rollout workers."""

    def __init__(self, spec: EngineSpec, num_workers: int, *, cpus_per_worker: float,
                 gpus_per_worker: float, timeout_s: float):
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        self._ray, self.timeout_s = ray, timeout_s
        self.tensor_parallel = spec.tensor_parallel_size
        bundle = {"CPU": cpus_per_worker, **({"GPU": gpus_per_worker} if gpus_per_worker else {})}
        # PACK keeps a small job on one node; on a cluster Ray spreads what does not fit.
        self.placement = placement_group([dict(bundle) for _ in range(num_workers)], strategy="PACK")
        get_all(ray, [self.placement.ready()], timeout_s,
                f"placing {num_workers} rollout workers ({bundle} each; is the cluster big enough?)")
        actor = ray.remote(RolloutWorker)
        self.workers = [
            actor.options(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker,
                          scheduling_strategy=PlacementGroupSchedulingStrategy(self.placement, index)).remote(spec)
            for index in range(num_workers)
        ]
        get_all(ray, [w.get_weight_version.remote() for w in self.workers], timeout_s, "rollout engine start")

    def stream(self, prompts: list[list[int]], sampling: SamplingSpec) -> "GroupStream":
        """Start sampling a group per prompt now; iterate the result for `(prompt index, group)`
        in the order the groups finish. More prompts can be added to a running stream."""
        stream = GroupStream(self)
        stream.add(prompts, sampling)
        return stream

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
        from ray.util.placement_group import remove_placement_group

        for worker in self.workers:
            self._ray.kill(worker)
        remove_placement_group(self.placement)


class GroupStream:
    """Groups of one or more batches of prompts, spread over the workers, merged as they finish.

    Each wait is bounded by the pool's timeout: a worker that makes no progress for that long
    is an error, not a hang.
    """

    def __init__(self, pool: RolloutPool):
        self._pool, self._streams, self._count, self._turn = pool, {}, 0, 0

    def add(self, prompts: list[list[int]], sampling: SamplingSpec) -> list[int]:
        """Launch more prompts now; returns the indices their groups will carry."""
        workers = self._pool.workers
        indices = list(range(self._count, self._count + len(prompts)))
        self._count += len(prompts)
        shards: dict[int, list[int]] = {}
        for index in indices:  # round-robin continues across calls
            shards.setdefault(self._turn % len(workers), []).append(index)
            self._turn += 1
        for w, shard in shards.items():
            local = [prompts[i - indices[0]] for i in shard]
            gen = workers[w].stream_groups.options(num_returns="streaming").remote(local, sampling)
            self._streams[gen] = shard
        return indices

    def __iter__(self) -> Iterator[tuple[int, list[Sample]]]:
        ray, timeout = self._pool._ray, self._pool.timeout_s
        while self._streams:
            ready, _ = ray.wait(list(self._streams), num_returns=1, timeout=timeout)
            if not ready:
                raise TimeoutError(f"no rollout group finished within {timeout:g} s (cluster.timeout_s)")
            gen = ready[0]
            try:
                position, group = ray.get(next(gen), timeout=timeout)
            except StopIteration:
                del self._streams[gen]
                continue
            yield self._streams[gen][position], group


def link_weights(learners, pool: RolloutPool, timeout_s: float) -> None:
    """Build the weight group between learner rank 0 and every rollout worker (once per run)."""
    ray = pool._ray
    host, port = get_all(ray, [learners.ranks[0].rendezvous_address.remote()], timeout_s, "weight rendezvous")[0]
    opened = learners.ranks[0].open_weight_group.remote(port, pool.weight_world_size)
    get_all(ray, [opened, *pool.link_refs(host, port)], timeout_s, "weight group set-up")


def push_weights(learners, pool: RolloutPool, version: int, timeout_s: float, bucket_bytes: int = 64 << 20) -> float:
    """Broadcast the learner's current weights into every engine; returns the seconds it took."""
    ray, start = pool._ray, time.perf_counter()
    manifest = get_all(ray, [learners.ranks[0].weight_manifest.remote()], timeout_s, "weight manifest")[0]
    receiving = pool.update_refs(manifest, version, bucket_bytes)
    sending = [rank.broadcast_weights.remote(bucket_bytes) for rank in learners.ranks]
    get_all(ray, [*sending, *receiving], timeout_s, "weight broadcast")
    return time.perf_counter() - start
