"""The learner group from the driver's side: R Ray actors that are one DeepSpeed job.

Every learner call is collective, so the group always calls all ranks together and waits on
them with a deadline. Groups are split evenly over the ranks (data parallel): each rank gets
the same number of groups, hence the same number of micro-batches, which ZeRO-3's per-layer
all-gathers require.
"""

from __future__ import annotations

import time

from cluster.output.checkpoints import CheckpointError
from cluster.roles.bundles import bundle_of, in_bundle, placed_group, remove_group
from cluster.roles.calls import answered, get_all
from cluster.roles.recovery import is_death, one_line
from cluster.wire.disk_errors import DiskError
from cluster.wire.errors import RunFailed, RunInterrupted
from learner.batching import TrainSequence, plan_micro_batches
from learner.learner import Learner
from learner.spec import LearnerSpec


class LearnerLost(RunInterrupted):
    """A learner rank's process is gone. A DeepSpeed job cannot take a new rank, so the driver
    restarts the whole group from the last complete checkpoint (cluster/run/scaffold.py), or,
    past cluster.max_restarts, stops with this line and the command that resumes."""


class LearnerGroup:
    """Launch, drive and shut down the R learner ranks."""

    def __init__(self, spec: LearnerSpec, num_ranks: int, *, cpus_per_rank: float, gpus_per_rank: float,
                 timeout_s: float, nodes: list[str] | None = None):
        import ray

        self._ray, self.timeout_s, self.num_ranks, self.spec = ray, timeout_s, num_ranks, spec
        actor = ray.remote(Learner)
        options = {"num_cpus": cpus_per_rank, "num_gpus": gpus_per_rank}
        self.placement = placed_group(ray, bundle_of(cpus_per_rank, gpus_per_rank), num_ranks, nodes, timeout_s,
                                      "learner ranks")
        self.ranks = [actor.options(**options, **in_bundle(self.placement, rank)).remote(spec, rank, num_ranks)
                      for rank in range(num_ranks)]
        started = time.perf_counter()
        host, port = self._all([self.ranks[0].rendezvous_address.remote()], "learner rendezvous")[0]
        actor_start = time.perf_counter() - started  # the rank's process and its imports of torch and aha
        self.info = self._all([r.setup.remote(host, port) for r in self.ranks], "learner set-up")
        # Where the set-up's time went, rank 0's: what bench/loop.py prints beside the time to first step.
        self.setup_s = {"actor_start": actor_start, **self.info[0]["setup_s"]}

    def _all(self, refs: list, what: str) -> list:
        try:
            return get_all(self._ray, refs, self.timeout_s, what)
        except Exception as err:
            self.raise_if_rank_died(err, what)
            raise

    def raise_if_rank_died(self, err: BaseException, what: str) -> None:
        """After a failed call: LearnerLost naming the rank, if a rank's process is gone.

        A live rank may be stuck in a collective with the dead one and not answer the probe;
        only an answer that says "dead" counts.
        """
        ray = self._ray
        probes = [rank.pid.remote() for rank in self.ranks]
        ready, _ = ray.wait(probes, num_returns=len(probes), timeout=min(10.0, self.timeout_s))
        for rank, probe in enumerate(probes):
            if probe not in ready:
                continue
            try:
                ray.get(probe)
            except Exception as probe_err:
                if is_death(probe_err):
                    raise LearnerLost(f"learner rank {rank} died during {what} ({one_line(err)})") from None

    def accumulate(self, groups: list[list[TrainSequence]], *, end_of_step: bool) -> int:
        """Forward/backward on these groups now, split evenly over the ranks; returns tokens."""
        return self.finish(self.submit(groups, end_of_step=end_of_step))

    def accumulate_shards(self, shards: list[list[TrainSequence]], *, end_of_step: bool) -> int:
        """Forward/backward on rank r's `shards[r]` now; returns the target tokens processed.
        Shards may differ in size and lengths: every rank runs as many micro-batches as the
        busiest (ZeRO-3's per-layer gathers are collective), the others top up with empty ones."""
        return self.finish(self.submit_shards(shards, end_of_step=end_of_step))

    def submit(self, groups: list[list[TrainSequence]], *, end_of_step: bool) -> list:
        """`accumulate`, returning at once: the call's refs, one per rank, for `finish` (and for
        `ray.wait`, so the driver can score and take groups while the ranks compute)."""
        if not groups or len(groups) % self.num_ranks:
            raise ValueError(f"{len(groups)} groups cannot be split evenly over {self.num_ranks} learner ranks")
        per_rank = len(groups) // self.num_ranks
        return self.submit_shards([[s for g in groups[r * per_rank:(r + 1) * per_rank] for s in g]
                                   for r in range(self.num_ranks)], end_of_step=end_of_step)

    def submit_shards(self, shards: list[list[TrainSequence]], *, end_of_step: bool) -> list:
        if len(shards) != self.num_ranks:
            raise ValueError(f"{len(shards)} shards for {self.num_ranks} learner ranks")
        most = self.most_micro_batches(shards)
        return [rank.accumulate.remote(shard, end_of_step, most) for rank, shard in zip(self.ranks, shards)]

    def answered(self, refs: list) -> bool:
        """Whether any rank has answered the call `refs` (from `submit`), without waiting. The
        ranks' calls are collective, so the others follow at once; or one failed, which
        `finish` raises rather than waiting for peers stuck in a collective with it."""
        return answered(self._ray, refs)

    def finish(self, refs: list) -> int:
        """Wait for the call `refs` (bounded, a dead rank named); the target tokens processed."""
        return sum(self._all(refs, "learner forward/backward"))

    def most_micro_batches(self, shards: list[list[TrainSequence]]) -> int:
        spec = self.spec
        return max(len(plan_micro_batches([len(s) for s in shard], spec.micro_batch_size, packing=spec.packing,
                                          pack_length=spec.pack_length)) for shard in shards)

    def held_out_nll(self, sequences: list[TrainSequence]) -> float:
        """Mean token NLL of `sequences` under the current weights (split over the ranks)."""
        shards = [sequences[r::self.num_ranks] for r in range(self.num_ranks)]
        most = self.most_micro_batches(shards)
        refs = [rank.held_out_nll.remote(shard, most) for rank, shard in zip(self.ranks, shards)]
        totals = self._all(refs, "held-out loss")[0]
        return totals["nll_sum"] / max(totals["tokens"], 1)

    def step(self) -> dict:
        """Optimizer step on every rank; returns the metrics (identical on all ranks)."""
        return self._all([r.step.remote() for r in self.ranks], "learner optimizer step")[0]

    def weights(self) -> dict:
        """Every parameter by HF name, gathered to rank 0 and copied to the driver."""
        return self._all([r.collect_weights.remote() for r in self.ranks], "weight gather")[0]

    def weight_rendezvous(self) -> tuple[str, int]:
        """Where rank 0 hosts the weight group: its `(host, port)`."""
        return self._all([self.ranks[0].rendezvous_address.remote()], "weight rendezvous")[0]

    def open_weight_group(self, port: int, world_size: int):
        """Rank 0 opens the weight group; the call's ref, awaited with the engines' joins."""
        return self.ranks[0].open_weight_group.remote(port, world_size)

    def weight_manifest(self):
        """The (name, dtype, shape) stream rank 0 will broadcast, in order."""
        return self._all([self.ranks[0].weight_manifest.remote()], "weight manifest")[0]

    def broadcast_refs(self, bucket_bytes: int) -> list:
        """Every rank takes part (ZeRO-3 gathers collectively); rank 0 broadcasts. The refs."""
        return [rank.broadcast_weights.remote(bucket_bytes) for rank in self.ranks]

    def check_shared_storage(self, directory) -> None:
        """Every rank reads a file the driver wrote in `directory` and writes one back: on a
        multi-node cluster the run directory must be storage every node mounts at the same path
        (the ranks write checkpoints and the final model there). RunFailed, one line, if not."""
        import secrets
        from pathlib import Path

        marker, token = Path(directory) / ".aha-storage-check", secrets.token_hex(8)
        marker.write_text(token, encoding="utf-8")
        try:
            problems = [p for p in self._all([r.probe_storage.remote(str(marker), token) for r in self.ranks],
                                             "shared storage check") if p]
            for rank in range(self.num_ranks):
                written = Path(f"{marker}.rank{rank}")
                if not problems and (not written.is_file() or written.read_text(encoding="utf-8") != token):
                    problems.append(f"learner rank {rank} wrote its file where the driver cannot see it")
        finally:
            for path in Path(directory).glob(".aha-storage-check*"):
                path.unlink(missing_ok=True)
        if problems:
            raise RunFailed(f"run.output_dir '{directory}' is not storage every node shares: {problems[0]}; mount "
                            "it at the same path on every node (or set run.output_dir to such a mount)")

    def save_checkpoint(self, directory: str) -> str:
        """Every rank saves its part under `directory`; returns the checkpoint's folder. A save
        that fails (disk full, no permission) is a one-line RunInterrupted: the checkpoints
        before it are complete and untouched."""
        from ray.exceptions import RayTaskError

        try:
            return self._all([r.save_checkpoint.remote(directory) for r in self.ranks], "checkpoint save")[0]
        except RayTaskError as err:
            if isinstance(getattr(err, "cause", None), RunFailed):
                raise
            cause = getattr(err, "cause", None)
            why = str(cause) if isinstance(cause, DiskError) else one_line(err)  # a DiskError's text is the cause
            raise RunInterrupted(f"the checkpoint could not be written under '{directory}' ({why})") from None

    def load_checkpoint(self, directory: str, tag: str) -> int:
        """Restore checkpoint `tag` on every rank; returns its weight version. A checkpoint that
        cannot be loaded (a damaged shard, optimizer or RNG file) is a one-line CheckpointError."""
        from ray.exceptions import RayTaskError


        try:
            return self._all([r.load_checkpoint.remote(directory, tag) for r in self.ranks], "checkpoint load")[0]
        except RayTaskError as err:
            cause = getattr(err, "cause", None) or err
            reason = " ".join(f"{type(cause).__name__}: {cause}".split())[:300]
            raise CheckpointError(f"--resume: checkpoint '{directory}/{tag}' cannot be loaded ({reason}); remove "
                                  "that checkpoint folder to resume from the one before") from None

    def export_hf(self, directory: str, tokenizer_source: str = "") -> str:
        """The current weights as a Hugging Face model directory (rank 0 writes it); returns its path."""
        return self._all([r.export_hf.remote(directory, tokenizer_source) for r in self.ranks],
                         "Hugging Face export")[0]

    def shutdown(self) -> None:
        for rank in self.ranks:
            self._ray.kill(rank)
        remove_group(self.placement)
