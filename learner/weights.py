"""The stream of weights out of the learner: (hf_name, tensor) pairs, gathered bucket by bucket."""

from __future__ import annotations

from collections.abc import Iterator

import torch


def buckets(named_params: list[tuple[str, torch.nn.Parameter]], bucket_bytes: int, zero3: bool):
    """Split parameters, in order, into lists of at most ~`bucket_bytes` (one oversize param alone)."""
    bucket, size = [], 0
    for name, param in named_params:
        # Under ZeRO-3 the local tensor is a shard; ds_numel is the full parameter's size.
        numel = param.ds_numel if zero3 else param.numel()
        nbytes = numel * param.element_size()
        if bucket and size + nbytes > bucket_bytes:
            yield bucket
            bucket, size = [], 0
        bucket.append((name, param))
        size += nbytes
    if bucket:
        yield bucket


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

    for bucket in buckets(named, bucket_bytes, zero3=True):
        with deepspeed.zero.GatheredParameters([p for _, p in bucket], modifier_rank=None):
            if is_source:
                for name, param in bucket:
                    yield name, param.detach()
