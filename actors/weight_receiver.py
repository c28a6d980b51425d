"""The vLLM worker extension that receives the learner's weights and loads them in place.

vLLM mixes this class into its worker (`worker_extension_cls="actors.weight_receiver.WeightReceiver"`)
and the rollout worker reaches its methods through `collective_rpc`. The weights arrive as
flat buckets over the standalone group of `cluster.wire.weights`; a generator unpacks each
bucket into `(name, tensor)` pairs as it arrives and feeds `reload_weights`, so memory stays
near one bucket. On CPU, `reload_weights` is the path that works after start-up (the layers
were repacked, so plain `load_weights` fails).
"""

from __future__ import annotations

import logging

import torch

from actors.vllm_logs import DropMessage
from cluster.wire.weights import TensorMeta, broadcast_flat, open_group, plan_buckets


class WeightReceiver:
    """Methods added to every vLLM worker; `self` is the worker (it has `model_runner`, `device`)."""

    def aha_join_weight_group(self, host: str, port: int, first_rank: int, world_size: int, timeout_s: float) -> int:
        """Join the learner's weight group (rank 0 is the learner); blocks until all join.

        The engine's workers (one per tensor-parallel rank) take ranks `first_rank + self.rank`:
        each receives the whole tensors and `reload_weights` keeps its own shard.
        """
        rank = first_rank + self.rank
        _quiet_rotary_reload_warning()
        backend = "nccl" if self.device.type == "cuda" else "gloo"
        self._aha_group = open_group(host, port, rank, world_size, timeout_s, backend)
        self._aha_timeout_s = timeout_s
        return rank

    def aha_receive_weights(self, rows: list[tuple[str, str, list[int]]], bucket_bytes: int) -> int:
        """Receive every tensor of the manifest `rows` (name, dtype, shape) and load it in place;
        returns how many were loaded."""
        manifest = [TensorMeta(name, dtype, tuple(shape)) for name, dtype, shape in rows]
        group = getattr(self, "_aha_group", None)
        if group is None:
            raise RuntimeError("this worker has not joined a weight group (aha_join_weight_group)")
        received = []
        # vLLM keeps a tied output head as a layer of its own (repacked on CPU), so it is only
        # refreshed when it is loaded too: feed it the input embedding it is tied to.
        config = self.model_runner.model_config.hf_config
        tied = getattr(config, "tie_word_embeddings", False) and "lm_head.weight" not in {m.name for m in manifest}

        def stream():
            for bucket in plan_buckets(manifest, bucket_bytes):
                dtype = getattr(torch, bucket[0].dtype)
                flat = torch.empty(sum(m.numel for m in bucket), dtype=dtype, device=self.device)
                broadcast_flat(group, flat, self._aha_timeout_s)
                offset = 0
                for meta in bucket:
                    received.append(meta.name)
                    tensor = flat[offset : offset + meta.numel].view(meta.shape)
                    yield meta.name, tensor
                    if tied and meta.name == "model.embed_tokens.weight":
                        yield "lm_head.weight", tensor
                    offset += meta.numel

        self.model_runner.reload_weights(weights_iterator=stream())
        if len(received) != len(manifest):
            raise RuntimeError(f"weight update stopped after {len(received)} of {len(manifest)} tensors")
        return len(received)


def _quiet_rotary_reload_warning() -> None:
    """Drop vLLM's "RotaryEmbedding: Failed to load weights" warning, printed at every reload.

    Rotary embeddings have no weights in a checkpoint, only a cos/sin buffer that vLLM puts
    back itself; the warning is harmless but would repeat after every training step.
    """
    # addFilter adds a filter once: this one instance keeps repeated calls from stacking it.
    logging.getLogger("vllm.model_executor.model_loader.reload.layerwise").addFilter(_ROTARY_RELOAD_WARNING)


_ROTARY_RELOAD_WARNING = DropMessage("RotaryEmbedding: Failed to load weights")
