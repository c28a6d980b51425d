"""Learner checkpoints: DeepSpeed state plus what resuming needs, and a Hugging Face export.

A checkpoint directory holds one folder per tag (`version-<N>`), written by DeepSpeed
(model, optimizer and scheduler state, every rank's shard), then each rank's RNG state. The
driver marks a tag complete afterwards (`cluster/output/checkpoints.py`) and resumes from the
newest complete tag by name, never through DeepSpeed's `latest` pointer.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def save_checkpoint(learner, directory: str) -> str:
    """Save the learner's full training state under `directory`; collective (all ranks)."""
    tag = f"version-{learner.weight_version}"
    client_state = {"weight_version": learner.weight_version}
    learner.engine.save_checkpoint(directory, tag=tag, client_state=client_state)
    torch.save(_rng_state(), Path(directory) / tag / f"rng_rank{learner.rank}.pt")
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


def export_hf(learner, directory: str) -> str | None:
    """Write a Hugging Face model directory (safetensors, config, tokenizer) from rank 0.

    Collective under ZeRO-3 (the weights are gathered); rank 0 writes to a temporary sibling
    and renames it into place, other ranks return None.
    """
    weights = learner.collect_weights()
    if learner.rank != 0:
        return None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = Path(directory)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        with torch.device("meta"):
            shell = AutoModelForCausalLM.from_config(learner.hf_config)
        shell.load_state_dict(weights, strict=False, assign=True)
        shell.tie_weights()
        shell.save_pretrained(staging, safe_serialization=True)
        AutoTokenizer.from_pretrained(learner.spec.model_path).save_pretrained(staging)
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return str(target)
