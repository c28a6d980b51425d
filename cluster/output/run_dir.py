"""A run's output directory is the run's alone.

aha writes into a directory only if it made it or it is empty, and marks it as a run directory
(`.aha-run`). Inside, it replaces only what a run writes (RUN_OUTPUTS) and leaves anything else
where it is. While a run is going it holds an exclusive lock (`.aha-lock`, flock: the kernel
drops it when the process dies, even by SIGKILL), so a second run into the same directory is
refused in one line that names the holder. A finished or interrupted run can always be
resumed from its last complete checkpoint, or started again: a fresh start replaces a run
that has no checkpoint, and one with checkpoints only when asked to (`--overwrite`).

Only the standard library: this runs before anything heavy is started.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import time
from pathlib import Path

from cluster.output.checkpoints import complete_checkpoints
from cluster.output.run_log import HELDOUT_DIR, METRICS_FILE, atomic_write
from cluster.output.trace_parts import (PARTS_DIR, PROGRESS_FILE, REJECTED_FILE, REPORT_FILE, SUMMARY_FILE,
                                       TRACES_FILE)

RUN_MARKER = ".aha-run"
LOCK_FILE = ".aha-lock"
RECIPE_FILE = "recipe.json"
FINAL_DIR = "final"  # the trained model as a Hugging Face directory
MODEL_FILES_DIR = "model-files"  # the base model's config and tokenizer, to export checkpoints with
EVAL_FILE = "eval.json"
PLACEMENT_FILE = "placement.json"  # where each role's actors were planned and placed
# What `aha eval` writes: the metrics, the table, the side-by-side plot, one row per completion.
EVAL_OUTPUTS = (EVAL_FILE, "eval.md", "eval.png", "completions.parquet")
# What `aha generate` writes (cluster/output/trace_parts.py): parts and progress as it goes, then
# the merged traces and the summary.
GENERATE_OUTPUTS = (RECIPE_FILE, PARTS_DIR, PROGRESS_FILE, TRACES_FILE, REJECTED_FILE, SUMMARY_FILE, REPORT_FILE,
                    PLACEMENT_FILE)
# What a run writes into its directory: the only names a fresh start may replace. An evaluation
# written into a run's directory described that run's model, so a fresh start replaces it too.
RUN_OUTPUTS = (METRICS_FILE, RECIPE_FILE, "rollouts", HELDOUT_DIR, "checkpoints", "plots", "tb", FINAL_DIR,
               MODEL_FILES_DIR, PLACEMENT_FILE, *EVAL_OUTPUTS)


class RunDirError(ValueError):
    """An output directory a run may not use as asked; one line, saying what to do instead."""


class RunDirectory:
    """A claimed output directory: locked until `release` (or the end of a `with` block)."""

    def __init__(self, path: Path, lock_handle):
        self.path, self._lock = path, lock_handle

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def release(self) -> None:
        if self._lock is not None and not self._lock.closed:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()

    def __enter__(self) -> RunDirectory:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def claim_output_dir(path: str | os.PathLike, *, resume: bool, overwrite: bool, outputs: tuple[str, ...] = RUN_OUTPUTS,
                     key: str = "run.output_dir", progress=None) -> RunDirectory:
    """Make `path` this run's directory, locked; RunDirError when it may not be.

    Fresh (`resume=False`): the directory must not exist, be empty, or hold an earlier aha run;
    that run's `outputs` are replaced if it has no complete checkpoint, or with `overwrite`.
    Resume: the directory must hold an aha run with a complete checkpoint. `aha eval` claims
    with `outputs=EVAL_OUTPUTS`: it replaces only those, and an earlier evaluation's only with
    `overwrite`. `key` is the setting or option the errors name. A job that resumes from its
    own records instead of checkpoints (`aha generate`) passes `progress`: a function of the
    directory describing the work an earlier run left there ("" or None: none), which `--resume`
    needs and a fresh start replaces only with `overwrite`.
    """
    out = Path(path)
    _check_usable(out, resume, key)
    try:
        out.mkdir(parents=True, exist_ok=True)
        handle = open(out / LOCK_FILE, "a+", encoding="utf-8")
    except OSError as err:
        raise RunDirError(f"{key}: cannot write to '{out}': {err.strerror or err}") from None
    _lock(handle, out, key)
    try:
        if not (out / RUN_MARKER).is_file():
            marker = {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "by": "aha"}
            atomic_write(out / RUN_MARKER, lambda tmp: Path(tmp).write_text(json.dumps(marker) + "\n"))
        _refuse_earlier_run(out, resume, overwrite, outputs, key, progress)
        if not resume:
            _clear_earlier_run(out, overwrite, outputs, progress)
    except BaseException:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()
        raise
    return RunDirectory(out, handle)


def check_claimable(path: str | os.PathLike, *, resume: bool, overwrite: bool, outputs: tuple[str, ...] = RUN_OUTPUTS,
                    key: str = "run.output_dir", progress=None) -> None:
    """RunDirError for what `claim_output_dir` (same arguments) would refuse, found without
    writing anything: a driver asks before it starts Ray beside its last input checks, so a
    refused directory is still one line before anything starts. The claim checks again."""
    out = Path(path)
    _check_usable(out, resume, key)
    if out.is_dir():
        _check_not_locked(out, key)
        _refuse_earlier_run(out, resume, overwrite, outputs, key, progress)


def _check_usable(out: Path, resume: bool, key: str) -> None:
    if out.exists() and not out.is_dir():
        raise RunDirError(f"{key}: '{out}' is a file, not a directory")
    if not out.exists():
        if resume:
            raise RunDirError(f"--resume: '{out}' does not exist; there is no run to resume")
        return
    if not (out / RUN_MARKER).is_file() and any(out.iterdir()):
        raise RunDirError(f"{key}: '{out}' is not empty and was not made by aha; "
                          f"aha writes only into a directory it made or an empty one: choose another {key}")


def _lock(handle, out: Path, key: str) -> None:
    """Take the directory's lock without waiting; the holder's pid and host go in the file."""
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise RunDirError(f"{key}: '{out}' is in use by another aha run ({holder}); "
                          f"wait for it to finish or choose another {key}") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    handle.flush()


def _check_not_locked(out: Path, key: str) -> None:
    """RunDirError if another process holds `out`'s lock now (taken and let go at once)."""
    if not (out / LOCK_FILE).is_file():
        return
    with open(out / LOCK_FILE, encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = handle.read().strip() or "another process"
            raise RunDirError(f"{key}: '{out}' is in use by another aha run ({holder}); "
                              f"wait for it to finish or choose another {key}") from None
        fcntl.flock(handle, fcntl.LOCK_UN)


def _refuse_earlier_run(out: Path, resume: bool, overwrite: bool, outputs: tuple[str, ...], key: str,
                        progress=None) -> None:
    """RunDirError where `out`'s contents do not allow what was asked: a resume with nothing to
    resume from, or a fresh start over work that only `overwrite` may replace."""
    if resume and progress is not None:
        if not progress(out):
            raise RunDirError(f"--resume: '{out}' holds no finished work to resume from; "
                              "start again without --resume")
        return
    if resume:
        if not complete_checkpoints(out / "checkpoints"):
            raise RunDirError(f"--resume: '{out}' has no complete checkpoint to resume from; "
                              "start the run again without --resume")
        return
    done = progress(out) if progress is not None else None
    if done and not overwrite:
        raise RunDirError(f"{key}: '{out}' holds an earlier run ({done}); pass --resume to continue it, "
                          f"--overwrite to start afresh (its outputs are deleted), or choose another {key}")
    kept = complete_checkpoints(out / "checkpoints") if "checkpoints" in outputs else []
    if kept and not overwrite:
        raise RunDirError(f"{key}: '{out}' holds a run with checkpoints (the last at weight version "
                          f"{kept[-1].version}); pass --resume to continue it, --overwrite to start afresh "
                          f"(its outputs are deleted), or choose another {key}")
    # An evaluation's results are what it spent its engine time on: replaced only when asked.
    if "checkpoints" not in outputs and EVAL_FILE in outputs and (out / EVAL_FILE).is_file() and not overwrite:
        raise RunDirError(f"{key}: '{out}' holds an earlier evaluation ({EVAL_FILE}); pass --overwrite to "
                          f"replace it, or choose another {key}")


def _clear_earlier_run(out: Path, overwrite: bool, outputs: tuple[str, ...], progress=None) -> None:
    """Remove an earlier run's outputs before a fresh start (`_refuse_earlier_run` allowed it);
    only `outputs` are touched."""
    kept = complete_checkpoints(out / "checkpoints") if "checkpoints" in outputs else []
    earlier = [out / name for name in outputs if (out / name).exists()]
    for path in earlier:
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    if earlier:
        why = "--overwrite" if kept or overwrite else f"it left no {'finished work' if progress else 'checkpoint'}"
        print(f"[aha] replacing the earlier run's outputs in {out} ({why})", flush=True)
