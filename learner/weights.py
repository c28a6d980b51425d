"""The stream of weights out of the learner: (hf_name, tensor) pairs, gathered bucket by bucket.

The gather buckets are the broadcast buckets (`cluster.wire.weights.plan_buckets` over the
manifest): under ZeRO-3 each bucket is gathered, sent and released before the next one, so
memory stays near one bucket on every rank.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

from cluster.wire.weights import TensorMeta, plan_buckets


def manifest_of(named_params: Iterable[tuple[str, torch.Tensor]], *, zero3: bool) -> list[TensorMeta]:
    """Name, dtype and full shape of each parameter, in order (under ZeRO-3 the local tensor is
    a shard and `ds_shape` the full parameter's shape)."""
    return [TensorMeta(name, str(p.dtype).removeprefix("torch."), tuple(p.ds_shape if zero3 else p.shape))
            for name, p in named_params]


def iter_gathered(module: torch.nn.Module, *, zero3: bool, is_source: bool,
                  bucket_bytes: int) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield each parameter whole, by its Hugging Face name, on the source rank.

    Every rank must run this generator to the end together: under ZeRO-3 each bucket is an
    all-gather. Names come from `named_parameters()`, so tied weights appear once.
    """
    named = list(module.named_parameters())
    if not zero3:
        if is_source:
            for name, param in named:
                yield name, param.detach()
        return
    import deepspeed

    params = dict(named)
    for bucket in plan_buckets(manifest_of(named, zero3=True), bucket_bytes):
        gathered = [(meta.name, params[meta.name]) for meta in bucket]
        with deepspeed.zero.GatheredParameters([p for _, p in gathered], modifier_rank=None):
            if is_source:
                for name, param in gathered:
                    yield name, param.detach()
