"""Learner checkpoints: DeepSpeed state plus what resuming needs, and a Hugging Face export.

A checkpoint directory holds one folder per tag (`version-<N>`), written by DeepSpeed
(model, optimizer and scheduler state, every rank's shard), then each rank's RNG state. The
driver marks a tag complete afterwards (`cluster/output/checkpoints.py`) and resumes from the
newest complete tag by name, never through DeepSpeed's `latest` pointer.
"""

from __future__ import annotations

from pathlib import Path

import torch

from cluster.wire.disk_errors import DiskError, write_failure


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def save_checkpoint(learner, directory: str) -> str:
    """Save the learner's full training state under `directory`; collective (all ranks). A
    write the file system refuses is a DiskError naming why (a full disk, a lost permission):
    torch's own error for a full disk does not say so."""
    tag = f"version-{learner.weight_version}"
    client_state = {"weight_version": learner.weight_version}
    try:
        learner.engine.save_checkpoint(directory, tag=tag, client_state=client_state)
        torch.save(_rng_state(), Path(directory) / tag / f"rng_rank{learner.rank}.pt")
    except (OSError, RuntimeError) as err:
        cause = write_failure(err, directory)
        if cause is None:
            raise
        raise DiskError(cause) from None
    return str(Path(directory) / tag)


def load_checkpoint(learner, directory: str, tag: str) -> int:
    """Restore the checkpoint `tag` under `directory`; returns its weight version."""
    path, client_state = learner.engine.load_checkpoint(directory, tag=tag, load_optimizer_states=True,
                                                        load_lr_scheduler_states=True)
    if path is None:
        raise FileNotFoundError(f"no learner checkpoint '{tag}' under '{directory}'")
    learner.weight_version = int(client_state["weight_version"])
    rng = torch.load(Path(directory) / tag / f"rng_rank{learner.rank}.pt", weights_only=False)
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
    return learner.weight_version


def export_hf(learner, directory: str, tokenizer_source: str = "") -> str | None:
    """Write a Hugging Face model directory of the learner's current weights from rank 0.

    Collective under ZeRO-3 (the weights are gathered); other ranks return None. The tokenizer
    and generation config come from `tokenizer_source` (the run's `model-files/`; default: the
    base model).
    """
    from learner.hf_export import write_hf_model

    weights = learner.collect_weights()
    if learner.rank != 0:
        return None
    source = learner.spec.model_path
    record = {"base_model": source, "weight_version": learner.weight_version}
    files = tokenizer_source or source
    return str(write_hf_model(weights, learner.hf_config, directory, tokenizer_source=files,
                              generation_source=files, record=record))
