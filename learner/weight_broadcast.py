"""Sending the learner's weights to the rollout workers over a process group of their own.

Learner rank 0 is rank 0 of a small group whose other members are the vLLM workers. The group
is built from a `TCPStore` and a backend process group directly (gloo on CPU, NCCL on GPU),
so it touches neither side's default group. Each bucket of the plan in `cluster.wire.weights`
is packed into one flat tensor and broadcast; every wait has a timeout. The manifest comes
from `learner.weights.manifest_of`.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from cluster.wire.weights import TensorMeta, broadcast_flat, open_group, plan_buckets


class WeightSender:
    """Rank 0 of the weight group: streams (name, tensor) pairs out bucket by bucket."""

    def __init__(self, host: str, port: int, world_size: int, *, timeout_s: float, device: torch.device):
        self.timeout_s, self.device = timeout_s, device
        backend = "nccl" if device.type == "cuda" else "gloo"
        self.group = open_group(host, port, 0, world_size, timeout_s, backend)

    def send(self, tensors: Iterator[tuple[str, torch.Tensor]], manifest: list[TensorMeta],
             bucket_bytes: int) -> int:
        """Broadcast `tensors` (in manifest order) bucket by bucket; returns bytes sent."""
        sent = 0
        for bucket in plan_buckets(manifest, bucket_bytes):
            parts = []
            for meta in bucket:
                name, tensor = next(tensors)
                if name != meta.name or tuple(tensor.shape) != meta.shape:
                    raise RuntimeError(f"weight stream out of order: got {name} {tuple(tensor.shape)}, "
                                       f"expected {meta.name} {meta.shape}")
                # A copy: under ZeRO-3 the gathered tensor is released when the next one is requested.
                parts.append(tensor.detach().reshape(-1).to(self.device, copy=True))
            flat = torch.cat(parts) if len(parts) > 1 else parts[0]
            broadcast_flat(self.group, flat, self.timeout_s)
            sent += flat.numel() * flat.element_size()
        return sent
