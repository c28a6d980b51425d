"""Writing a Hugging Face model directory from a state dict: what `final/` and `aha export` hold.

config.json, model.safetensors, the tokenizer, generation_config.json and `aha_export.json`
(where the weights came from), written to a temporary sibling and renamed into place, so a
crash never leaves half a model that the next stage would load. transformers and vLLM load the
result as they load any model directory.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from cluster.wire.disk_errors import naming_disk_errors

EXPORT_RECORD = "aha_export.json"


def write_hf_model(weights: dict[str, torch.Tensor], config, directory: str | os.PathLike, *,
                   tokenizer_source: str, generation_source: str, record: dict) -> Path:
    """Write `weights` (Hugging Face names) as a model of `config` to `directory`.

    `tokenizer_source` and `generation_source` are model directories or hub ids the tokenizer and
    the generation config come from (the run's base model). Every weight of the model must be
    in `weights` (a tied output head may be left out): a missing one is a ValueError.
    """
    target = Path(directory)
    # A full disk or a lost permission is named (torch and safetensors lose the cause).
    with naming_disk_errors(target.parent, f"the model directory '{target}'"):
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            _save_model(weights, config, staging, tokenizer_source, generation_source, record)
            if target.exists():
                shutil.rmtree(target)
            os.replace(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return target


def _save_model(weights, config, staging: Path, tokenizer_source: str, generation_source: str, record: dict) -> None:
    """The model's files, the tokenizer, the generation config and the record, into `staging`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    with torch.device("meta"):
        shell = AutoModelForCausalLM.from_config(config)
    missing, unexpected = shell.load_state_dict(weights, strict=False, assign=True)
    tied = set(getattr(shell, "_tied_weights_keys", None) or ()) if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise ValueError(f"the weights do not fit the model: missing {sorted(set(missing) - tied)[:5]}, "
                         f"unexpected {sorted(unexpected)[:5]}")
    shell.tie_weights()
    shell.save_pretrained(staging, safe_serialization=True)
    AutoTokenizer.from_pretrained(tokenizer_source).save_pretrained(staging)
    try:
        generation = GenerationConfig.from_pretrained(generation_source)
    except OSError:  # the base model has none: the one save_pretrained derived from the config stays
        generation = None
    if generation is not None:  # saved outside the try: a full disk here is not "has none"
        generation.save_pretrained(staging)
    (staging / EXPORT_RECORD).write_text(json.dumps(record, indent=2) + "\n")
