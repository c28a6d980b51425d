"""Where a resumed run picks up, checked before anything starts.

`--resume` continues the saved run exactly, so it refuses, in one line, a recipe that changed
what the run learns from or how (`cluster/recipe/resume.py` lists what may change), a training
file whose content changed, and a checkpoint that is damaged. It resumes from the newest
*complete* checkpoint (`cluster/output/checkpoints.py`), so an interrupted save costs at most
the steps since the one before.
"""

from __future__ import annotations

import json
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cluster.inputs.prepare import file_sha256
from cluster.output.checkpoints import (DRIVER_STATE, Checkpoint, complete_checkpoint, complete_checkpoints,
                                       drop_newer_than, read_driver_state, tag_of)
from cluster.output.run_dir import RECIPE_FILE, RunDirectory, RunDirError
from cluster.recipe import Recipe, recipe_to_dict
from cluster.recipe.resume import conflicts_text, resume_conflicts
from cluster.wire.errors import RunInterrupted, original_failure


@dataclass(frozen=True)
class ResumePoint:
    checkpoint: Checkpoint
    state: dict  # step, sampler, weight_version, train_data_sha256

    @property
    def step(self) -> int:
        return self.state["step"]


def find_resume_point(run_dir: RunDirectory, recipe: Recipe) -> ResumePoint:
    """The newest complete checkpoint of the run in `run_dir`, after checking that `recipe` may
    continue it; RunDirError or CheckpointError (one line) otherwise."""
    _check_same_recipe(run_dir.path / RECIPE_FILE, recipe)
    checkpoint = complete_checkpoints(run_dir.checkpoints)[-1]  # claim_output_dir made sure there is one
    state = read_driver_state(checkpoint, recipe.learner.num_ranks)
    dropped = drop_newer_than(run_dir.checkpoints, checkpoint.version)  # an interrupted save's leftovers
    leftovers = f"; dropped the incomplete {', '.join(p.name for p in dropped)}" if dropped else ""
    print(f"[aha] resuming from {checkpoint.tag} (step {state['step']}){leftovers}", flush=True)
    return ResumePoint(checkpoint, state)


def _check_same_recipe(saved_path: Path, recipe: Recipe) -> None:
    try:
        saved = json.loads(saved_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RunDirError(f"--resume: the run's recipe '{saved_path}' cannot be read ({type(err).__name__}); "
                          "the run cannot be checked against this recipe") from None
    current = recipe_to_dict(recipe)
    changed = resume_conflicts(saved, current)
    if changed:
        raise RunDirError(f"--resume: the recipe differs from the run's ({saved_path}): "
                          f"{conflicts_text(saved, current, changed)}")


def train_data_sha256(recipe: Recipe) -> str:
    """The training file's content hash: the data order a checkpoint continues is over these rows."""
    return file_sha256(recipe.data.train_path)


def check_same_data(point: ResumePoint, data_path: str, data_sha256: str) -> None:
    """The training file at `data_path` (whose hash is `data_sha256`: the prompts of `aha train`,
    the traces of `aha sft`) must be the one the checkpoint's data order runs over."""
    saved = point.state.get("train_data_sha256")
    if saved is not None and saved != data_sha256:
        raise RunDirError(f"--resume: data file '{data_path}' changed since {point.checkpoint.tag} "
                          "was saved (its content hash differs); resume needs the same training data")


def save_checkpoint(learners, checkpoints: Path, state: dict, keep: int) -> None:
    """Every learner rank saves its part, then the driver's `state` marks the checkpoint complete
    and older ones are pruned. A save that fails (disk full, no permission) is a one-line
    RunInterrupted; its half-written folder is removed and the checkpoints before it stay whole."""
    tag = tag_of(state["weight_version"])
    try:
        saved = learners.save_checkpoint(str(checkpoints))
        complete_checkpoint(saved, state, keep)
    except OSError as err:  # the driver state itself could not be written
        _remove_incomplete(checkpoints / tag)
        raise RunInterrupted(f"the checkpoint could not be written to '{checkpoints / tag}' "
                             f"({type(err).__name__}: {err})") from None
    except RunInterrupted:
        _remove_incomplete(checkpoints / tag)
        raise


def _remove_incomplete(folder: Path) -> None:
    if folder.is_dir() and not (folder / DRIVER_STATE).is_file():
        shutil.rmtree(folder, ignore_errors=True)


def last_checkpoint_line(checkpoints: Path) -> str:
    """Where a stopped run resumes from, as a phrase; empty when there is no complete checkpoint."""
    complete = complete_checkpoints(checkpoints)
    if not complete:
        return ""
    try:
        step = json.loads(complete[-1].state_path.read_text(encoding="utf-8"))["step"]
    except (OSError, ValueError, KeyError, TypeError):
        return complete[-1].tag
    return f"{complete[-1].tag} (step {step})"


@contextmanager
def naming_last_checkpoint(checkpoints: Path):
    """A run stopped by a dead rank or a failed save (RunInterrupted) leaves the CLI to say
    where it resumes from: fill in the newest complete checkpoint as the error leaves."""
    try:
        yield
    except RunInterrupted as err:
        # The CLI reads the original: a learner rank's error reaches the driver wrapped by Ray.
        err.checkpoint = original_failure(err).checkpoint = last_checkpoint_line(checkpoints)
        raise
