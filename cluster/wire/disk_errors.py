"""A write the file system refused, named in one line: a full disk, a lost permission.

Libraries lose the cause on the way up: torch's zip writer reports a full disk as
`[enforce fail at inline_container.cc:672] . unexpected pos 2270912 vs 2270800`, safetensors
as `I/O error: No space left on device (os error 28)`. `write_failure` reads the cause back
from the error (its errno, or the errno or strerror in its text) or, where there is none,
from the file system itself (`os.statvfs`), and says it in words:

    no space left on device under '/runs/a/checkpoints' (0 MiB free)
    permission denied: '/runs/a/rollouts'
    read-only file system under '/runs/a'

Both ends raise it: a learner rank (`DiskError`, whose text is the cause alone: the driver
adds which checkpoint), and the driver's writers (`DiskWriteFailed`, one line, exit 1).
Imports only the standard library.
"""

from __future__ import annotations

import errno
import os
import re
from contextlib import contextmanager
from pathlib import Path

from cluster.wire.errors import RunFailed, RunInterrupted

NAMED_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS)
# Where a library keeps the errno in its text: "(os error 28)" (Rust: safetensors), "[Errno 28]".
_ERRNO_IN_TEXT = re.compile(r"\(os error (\d+)\)|\[Errno (\d+)\]")
# torch's zip writer after a short write: the file system took less than it was given.
_SHORT_WRITE = "unexpected pos"
# A short write leaves the file system full to the last block; this much free space is still
# "full" (other writers may have freed a little since), more is another cause.
FULL_BELOW_BYTES = 64 * 2**20
MIB = 2**20


class DiskError(OSError):
    """Raised inside a learner rank: its text is the cause alone, in one line; the driver says
    what was being written (cluster/roles/learner_group.py names the checkpoint)."""


class DiskWriteFailed(RunInterrupted):
    """A file of the run could not be written, for a cause the user must fix first (free
    space, give back the permission). One line, exit 1; a training run resumes from its last
    complete checkpoint, which the CLI names."""


def write_failure(err: BaseException, path: str | os.PathLike) -> str | None:
    """The cause of `err`, raised by a write to `path` (a file or the folder written into),
    in words; None when the file system is not the cause (the caller re-raises `err`)."""
    code = _errno_of(err)
    if code is None and _SHORT_WRITE in str(err):
        return _short_write(path)
    if code in (errno.ENOSPC, errno.EDQUOT):
        what = "no space left on device" if code == errno.ENOSPC else "disk quota exceeded"
        return f"{what} under '{_existing_dir(path)}' ({_free_space(path)})"
    if code in (errno.EACCES, errno.EPERM):
        return f"permission denied: '{_refusing(err, path)}'"
    if code == errno.EROFS:
        return f"read-only file system under '{_existing_dir(path)}'"
    return None


@contextmanager
def naming_disk_errors(path: str | os.PathLike, what: str = ""):
    """A block that writes to `path`: a write the file system refused leaves it as
    DiskWriteFailed, "<what> could not be written: <cause>" (`what` defaults to the path);
    any other error leaves unchanged."""
    try:
        yield
    except RunFailed:
        raise  # already a line for the user
    except Exception as err:
        cause = write_failure(err, path)
        if cause is None:
            raise
        raise DiskWriteFailed(f"{what or repr(str(path))} could not be written: {cause}") from err


def _errno_of(err: BaseException) -> int | None:
    """The named errno behind `err` or the errors it was raised from; None if there is none."""
    seen = 0
    while err is not None and seen < 8:
        code = getattr(err, "errno", None) if isinstance(err, OSError) else None
        if code is None:
            code = _errno_in_text(str(err))
        if code in NAMED_ERRNOS:
            return code
        err, seen = err.__cause__ or err.__context__, seen + 1
    return None


def _errno_in_text(text: str) -> int | None:
    found = _ERRNO_IN_TEXT.search(text)
    if found:
        return int(found.group(1) or found.group(2))
    # torch: "open file failed with strerror: Permission denied"
    return next((code for code in NAMED_ERRNOS if os.strerror(code) in text), None)


def _short_write(path) -> str:
    """A short write without an errno: a full file system, or something else that took only
    part of the file (a quota, a failing device)."""
    stats = _statvfs(path)
    if stats is not None and stats.f_bavail * stats.f_frsize < FULL_BELOW_BYTES:
        return f"no space left on device under '{_existing_dir(path)}' ({_free_space(path)})"
    return (f"the file system under '{_existing_dir(path)}' took only part of the file ({_free_space(path)}; "
            "a disk quota or a failing device?)")


def _existing_dir(path) -> Path:
    """The nearest folder of `path` that exists: `path` itself, or the one it would be made in."""
    candidate = Path(path)
    while not candidate.is_dir() and candidate != candidate.parent:
        candidate = candidate.parent
    return candidate


def _statvfs(path):
    try:
        return os.statvfs(_existing_dir(path))
    except OSError:
        return None


def _free_space(path) -> str:
    stats = _statvfs(path)
    if stats is None:
        return "free space unknown"
    free = f"{stats.f_bavail * stats.f_frsize // MIB} MiB free"
    # A file system out of inodes refuses new files with space to spare.
    return f"{free}, no inodes left" if stats.f_files and not stats.f_favail else free


def _refusing(err: BaseException, path) -> Path:
    """What refused the write: the nearest existing folder we may not write in (where a user
    gives the permission back), else the file the error names, else `path`."""
    named = getattr(err, "filename", None) if isinstance(err, OSError) else None
    target = Path(named) if named else Path(path)
    folder = _existing_dir(target)
    if target.exists() and not os.access(target, os.W_OK):
        return target
    return folder if not os.access(folder, os.W_OK) else target
