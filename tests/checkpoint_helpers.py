"""A checkpoint on disk without a learner: for tests of what reads checkpoints (resume, export,
pipelines) that start no actors."""

from pathlib import Path

from cluster.output.checkpoints import write_driver_state


def fake_checkpoint(directory: Path, version: int, *, complete: bool = True, ranks: int = 1) -> Path:
    """What the learner ranks and the driver write for one checkpoint (contents are stand-ins)."""
    tag = directory / f"version-{version}"
    tag.mkdir(parents=True)
    (tag / "mp_rank_00_model_states.pt").write_bytes(b"shard")
    for rank in range(ranks):
        (tag / f"rng_rank{rank}.pt").write_bytes(b"rng")
    if complete:
        write_driver_state(tag, {"step": version, "sampler": {"position": 0}, "weight_version": version})
    return tag
