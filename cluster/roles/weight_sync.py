"""The weight path from the learner group to the rollout engines, owned by one object.

`WeightSync` holds the weight version the engines are on, builds the weight group (learner
rank 0 is rank 0 of it, engine i's tensor-parallel workers the ranks after), pushes each new
version into every engine, and, when the pool replaces a dead worker, links the survivors and
the replacement anew and brings them all onto the current version before they take work.
"""

from __future__ import annotations

import time

from cluster.roles.calls import get_all
from cluster.wire.weights import WEIGHT_BUCKET_BYTES


class WeightSync:
    """Link once, then `push(version)` after every optimizer step.

    `version` is what every engine holds: None until the first push (the model's own files).
    `during_push` is a fault-injection hook (cluster/run/chaos.py), called mid-broadcast.
    """

    def __init__(self, learners, pool, timeout_s: float, *, bucket_bytes: int = WEIGHT_BUCKET_BYTES):
        import ray

        self._ray, self.learners, self.pool = ray, learners, pool
        self.timeout_s, self.bucket_bytes = timeout_s, bucket_bytes
        self.version: int | None = None
        self.during_push = None
        pool.after_replacement = self._bring_replacements_up

    def link(self) -> None:
        """Build the weight group between learner rank 0 and every engine: once per run, and
        again with the survivors whenever a worker is replaced."""
        host, port = self.learners.weight_rendezvous()
        opened = self.learners.open_weight_group(port, self.pool.weight_world_size)
        get_all(self._ray, [opened, *self.pool.link_refs(host, port)], self.timeout_s, "weight group set-up")

    def push(self, version: int) -> float:
        """Broadcast the learner's current weights into every engine as `version`; the seconds
        it took. A worker that dies during the broadcast is replaced and, through the pool's
        `after_replacement`, every engine gets `version` again (a survivor may have loaded part)."""
        started = time.perf_counter()
        try:
            manifest = self.learners.weight_manifest()
            receiving = self.pool.update_refs(manifest, version, self.bucket_bytes)
            sending = self.learners.broadcast_refs(self.bucket_bytes)
            if self.during_push is not None:
                self.during_push()
            get_all(self._ray, [*sending, *receiving], self.timeout_s, "weight broadcast")
        except Exception as err:
            self.learners.raise_if_rank_died(err, "weight broadcast")  # then the group restarts (run/scaffold.py)
            dead = self.pool.dead_workers()
            if not dead:
                raise
            self.version = version  # what the replacement and the survivors must end on
            self.pool.replace_dead(dead)
        self.version = version
        return time.perf_counter() - started

    def _bring_replacements_up(self) -> int | None:
        """After the pool replaced workers: a new weight group, and the current weights in it;
        the version every engine is now on."""
        self.link()
        if self.version is not None:
            self.push(self.version)
        return self.version
