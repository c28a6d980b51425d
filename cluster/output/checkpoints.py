"""The run's checkpoints seen from the driver: which are complete, which to resume, which to drop.

A checkpoint is the folder `checkpoints/version-<N>/`, N the learner's weight version. Each
learner rank writes its DeepSpeed shards there and then its RNG file `rng_rank<R>.pt`; the
driver writes `driver-state.json` (step, data order, weight version) last, atomically, once
every rank has returned. So a checkpoint is *complete* exactly when its driver state is there:
an interruption at any moment leaves the previous complete checkpoint intact, and resume takes
the newest complete one, whatever DeepSpeed's `latest` pointer says.

Plain files only (json, os): no torch, no Ray.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from cluster.output.run_log import atomic_write

TAG_PREFIX = "version-"
DRIVER_STATE = "driver-state.json"


class CheckpointError(ValueError):
    """A checkpoint that exists but cannot be used; the message is one line naming the file."""


@dataclass(frozen=True)
class Checkpoint:
    path: Path  # checkpoints/version-<N>
    version: int

    @property
    def tag(self) -> str:
        return self.path.name

    @property
    def state_path(self) -> Path:
        return self.path / DRIVER_STATE


def tag_of(version: int) -> str:
    return f"{TAG_PREFIX}{version}"


def _tags(directory: Path) -> list[Checkpoint]:
    found = []
    for path in directory.glob(f"{TAG_PREFIX}*") if directory.is_dir() else []:
        number = path.name.removeprefix(TAG_PREFIX)
        if path.is_dir() and number.isdigit():
            found.append(Checkpoint(path, int(number)))
    return sorted(found, key=lambda c: c.version)


def complete_checkpoints(directory: str | Path) -> list[Checkpoint]:
    """Complete checkpoints under `directory`, oldest first."""
    return [c for c in _tags(Path(directory)) if c.state_path.is_file()]


def write_driver_state(checkpoint_dir: str | Path, state: dict) -> None:
    """Mark a checkpoint complete: called after every learner rank has saved its part."""
    path = Path(checkpoint_dir) / DRIVER_STATE
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(state), encoding="utf-8"))


def complete_checkpoint(saved: str | Path, state: dict, keep: int) -> None:
    """Mark the checkpoint every learner rank just saved at `saved` complete with the driver's
    `state` (written last), then prune its directory to the newest `keep` complete ones."""
    write_driver_state(saved, state)
    prune_checkpoints(Path(saved).parent, keep)


def read_driver_state(checkpoint: Checkpoint, num_ranks: int) -> dict:
    """The driver state of a complete checkpoint, after checking that every part of it is there;
    a damaged one is a CheckpointError naming the file."""
    try:
        state = json.loads(checkpoint.state_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"checkpoint file '{checkpoint.state_path}' is damaged ({type(err).__name__}); "
                              "remove that checkpoint folder to resume from the one before") from None
    valid = (isinstance(state, dict) and isinstance(state.get("step"), int) and isinstance(state.get("sampler"), dict)
             and state.get("weight_version") == checkpoint.version)
    if not valid:
        raise CheckpointError(f"checkpoint file '{checkpoint.state_path}' does not hold this checkpoint's state; "
                              "remove that checkpoint folder to resume from the one before")
    for rank in range(num_ranks):
        rng = checkpoint.path / f"rng_rank{rank}.pt"
        if not rng.is_file() or rng.stat().st_size == 0:
            raise CheckpointError(f"checkpoint file '{rng}' is missing or empty (a save cut short, or a run with "
                                  f"fewer than learner.num_ranks = {num_ranks} ranks); remove that checkpoint "
                                  "folder to resume from the one before")
    return state


def prune_checkpoints(directory: str | Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` complete checkpoints, and incomplete ones older than the
    newest complete one (an interrupted save); returns what was deleted. The newest complete
    checkpoint is always kept."""
    complete = complete_checkpoints(directory)
    if not complete:
        return []
    newest = complete[-1].version
    kept = {c.version for c in complete[-max(keep, 1):]}
    doomed = [c.path for c in _tags(Path(directory)) if c.version not in kept and c.version < newest]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed


def drop_newer_than(directory: str | Path, version: int) -> list[Path]:
    """Delete checkpoint folders newer than `version` (what an interrupted save left) before a
    resumed run writes its own checkpoints there."""
    doomed = [c.path for c in _tags(Path(directory)) if c.version > version]
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed
