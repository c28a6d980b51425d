"""`aha export RUN_DIR [--step N] OUT`: a kept checkpoint of a run as a Hugging Face model directory.

It runs in this process, without Ray or DeepSpeed ranks: the weights come from the checkpoint's
files (whole in the model states under ZeRO 0-2; gathered from every rank's partition under
ZeRO-3 by DeepSpeed's own `zero_to_fp32`), the config, tokenizer and generation config from
the copies a run keeps of its base model's (`model-files/`, written when it starts), so an
export does not depend on where the base model is now. Written as the run's `final/` is
(`learner/hf_export.py`).
"""

from __future__ import annotations

import json
from pathlib import Path

from cluster.output.checkpoints import CheckpointError, Checkpoint, complete_checkpoints, read_driver_state
from cluster.output.run_dir import MODEL_FILES_DIR, RECIPE_FILE, RUN_MARKER, RunDirError


def export_checkpoint(run_dir: str | Path, out: str | Path, *, step: int | None = None,
                      overwrite: bool = False) -> Path:
    """Write checkpoint `step` (default: the newest complete one) of the run in `run_dir` to
    `out`; RunDirError / CheckpointError (one line) when that cannot be done."""
    run, target = Path(run_dir), Path(out)
    recipe = _run_recipe(run)
    _check_target(target, overwrite)
    checkpoint, state = _checkpoint_at(run, step, recipe["learner"]["num_ranks"])
    files = run / MODEL_FILES_DIR
    if not (files / "config.json").is_file():
        raise RunDirError(f"'{files}' is missing: the run's copy of its base model's config and tokenizer")
    weights = _checkpoint_weights(checkpoint, recipe["learner"]["zero_stage"])
    from transformers import AutoConfig

    from learner.hf_export import write_hf_model

    record = {"run": str(run), "checkpoint": checkpoint.tag, "step": state["step"],
              "weight_version": checkpoint.version, "base_model": recipe["model"]["path"]}
    config = AutoConfig.from_pretrained(files, trust_remote_code=recipe["model"].get("trust_remote_code", False))
    return write_hf_model(weights, config, target, tokenizer_source=str(files), generation_source=str(files),
                          record=record)


def _run_recipe(run: Path) -> dict:
    if not (run / RUN_MARKER).is_file():
        raise RunDirError(f"'{run}' is not a run directory of aha (no {RUN_MARKER})")
    try:
        return json.loads((run / RECIPE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise RunDirError(f"the run's recipe '{run / RECIPE_FILE}' cannot be read ({type(err).__name__})") from None


def _check_target(target: Path, overwrite: bool) -> None:
    """OUT must be new or empty, or an earlier export of aha's that --overwrite replaces."""
    from learner.hf_export import EXPORT_RECORD

    if not target.exists() or (target.is_dir() and not any(target.iterdir())):
        return
    if not target.is_dir() or not (target / EXPORT_RECORD).is_file():
        raise RunDirError(f"'{target}' exists and is not a model aha exported; choose another directory")
    if not overwrite:
        raise RunDirError(f"'{target}' holds an earlier export; pass --overwrite to replace it")


def _checkpoint_at(run: Path, step: int | None, num_ranks: int) -> tuple[Checkpoint, dict]:
    kept = [(c, read_driver_state(c, num_ranks)) for c in complete_checkpoints(run / "checkpoints")]
    if not kept:
        raise CheckpointError(f"'{run}' has no complete checkpoint to export")
    if step is None:
        return kept[-1]
    found = [(c, s) for c, s in kept if s["step"] == step]
    if not found:
        raise CheckpointError(f"'{run}' keeps no checkpoint of step {step} (kept steps: "
                              f"{', '.join(str(s['step']) for _, s in kept)})")
    return found[0]


def _checkpoint_weights(checkpoint: Checkpoint, zero_stage: int) -> dict:
    """Every parameter, by its Hugging Face name, from the checkpoint's files."""
    import torch

    try:
        if zero_stage == 3:  # each rank holds a partition: DeepSpeed's own tool puts them together
            from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

            return get_fp32_state_dict_from_zero_checkpoint(str(checkpoint.path.parent), tag=checkpoint.tag)
        states = sorted(checkpoint.path.glob("*mp_rank_00_model_states.pt"))
        if not states:
            raise FileNotFoundError(f"no model states file in '{checkpoint.path}'")
        return torch.load(states[0], map_location="cpu", weights_only=False)["module"]
    except Exception as err:  # a damaged file, whatever torch or DeepSpeed raise for it
        raise CheckpointError(f"checkpoint '{checkpoint.path}' cannot be read "
                              f"({type(err).__name__}: {' '.join(str(err).split())[:200]})") from None
