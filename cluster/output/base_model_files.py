"""The base model's config, tokenizer and generation config, kept in a run's `model-files/` when
it starts: what `aha export` (and the run's own `final/`) turn checkpoint weights back into a
model directory with, wherever the base model is later."""

from __future__ import annotations

from pathlib import Path

from cluster.wire.disk_errors import naming_disk_errors


def save_model_files(directory: str | Path, model_path: str, tokenizer, *, trust_remote_code: bool) -> None:
    """Keep the base model's config, tokenizer and generation config beside the run's
    checkpoints: what turns a checkpoint's weights back into a model directory."""
    from transformers import AutoConfig, GenerationConfig

    target = Path(directory)
    config = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    try:
        generation = GenerationConfig.from_pretrained(model_path)
    except OSError:  # the base model has none; transformers derives one from the config
        generation = None
    with naming_disk_errors(target, f"the base model's files '{target}'"):
        config.save_pretrained(target)
        tokenizer.save_pretrained(target)
        if generation is not None:
            generation.save_pretrained(target)
