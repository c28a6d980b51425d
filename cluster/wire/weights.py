"""The weight-sync plan shared by the learner (sender) and the rollout workers (receivers).

Both sides must cut the same `(name, tensor)` stream into the same flat buckets without
talking: the plan is a pure function of the manifest (names, dtypes, shapes in stream order)
and the bucket size. Nothing heavy is imported at module level: dtypes are names, and the two functions that
touch torch.distributed import it when called.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}
# The size both sides cut the stream into: large enough that a push is a few dozen broadcasts
# (per-call latency amortised), small enough that each side's flat staging buffer stays a sliver of memory.
WEIGHT_BUCKET_BYTES = 64 << 20


@dataclass(frozen=True)
class TensorMeta:
    """One tensor of the stream: its Hugging Face name, dtype name and full shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * DTYPE_BYTES[self.dtype]


def plan_buckets(manifest: list[TensorMeta], bucket_bytes: int) -> list[list[TensorMeta]]:
    """Consecutive runs of tensors of one dtype, each at most `bucket_bytes` (a larger tensor
    gets a bucket of its own). Every tensor appears exactly once, in manifest order."""
    if bucket_bytes <= 0:
        raise ValueError(f"bucket_bytes must be > 0, got {bucket_bytes}")
    buckets: list[list[TensorMeta]] = []
    size = 0
    for meta in manifest:
        if meta.dtype not in DTYPE_BYTES:
            raise ValueError(f"tensor {meta.name!r} has unsupported dtype {meta.dtype!r}")
        fits = buckets and buckets[-1][0].dtype == meta.dtype and size + meta.nbytes <= bucket_bytes
        if fits:
            buckets[-1].append(meta)
            size += meta.nbytes
        else:
            buckets.append([meta])
            size = meta.nbytes
    return buckets


def open_group(host: str, port: int, rank: int, world_size: int, timeout_s: float, backend: str):
    """Join (rank 0: host) a standalone process group; returns the backend group object."""
    from datetime import timedelta

    import torch.distributed as dist

    timeout = timedelta(seconds=timeout_s)
    store = dist.TCPStore(host, port, world_size, is_master=rank == 0, timeout=timeout)
    if backend == "nccl":
        return dist.ProcessGroupNCCL(store, rank, world_size)
    return dist.ProcessGroupGloo(store, rank, world_size, timeout)


def broadcast_flat(group, flat, timeout_s: float) -> None:
    """Broadcast `flat` from rank 0 of `group`, in place on the receivers; bounded wait."""
    from datetime import timedelta

    import torch.distributed as dist

    options = dist.BroadcastOptions()
    options.rootRank, options.rootTensor = 0, 0
    group.broadcast([flat], options).wait(timedelta(seconds=timeout_s))
