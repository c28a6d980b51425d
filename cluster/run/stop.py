"""Stopping a training run on request, the way a cluster scheduler asks before it pre-empts.

The first SIGTERM or SIGINT (Ctrl-C) lets the step in progress finish; the loop then writes a
checkpoint and raises `RunStopped`, which the CLI prints with the command that resumes the run,
exiting 0. A second signal stops at once (KeyboardInterrupt: exit 130, the last complete
checkpoint still usable). Installed around the step loop only, after Ray's start-up, which sets
a SIGTERM handler of its own on the driver; restored afterwards.
"""

from __future__ import annotations

import shlex
import signal
import threading

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class RunStopped(Exception):
    """A run stopped early as asked, its checkpoint written; the text says where it stopped."""


class StopRequest:
    """Whether a stop was asked for, and by which signal. `install()` takes SIGTERM and SIGINT
    over (from the main thread; elsewhere it does nothing), `restore()` gives them back."""

    def __init__(self):
        self.signal: str | None = None
        self._previous: dict = {}

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def install(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():  # signals reach the main thread only
            self._previous = {sig: signal.getsignal(sig) for sig in SIGNALS}
            for sig in SIGNALS:
                signal.signal(sig, self._handle)
        return self

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        if self.signal is not None:
            raise KeyboardInterrupt  # the second signal: stop now
        self.signal = signal.Signals(signum).name
        print(f"\n[aha] {self.signal}: finishing the current step, then a checkpoint and exit; send it again to "
              "stop at once", flush=True)


def resume_command(argv: list[str]) -> str:
    """The command line that continues a stopped run: the same one, with --resume (a pipeline
    resumes its interrupted stage by itself) and without --overwrite or --from."""
    args, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--from":
            skip = True
        elif arg != "--overwrite" and not arg.startswith("--from="):
            args.append(arg)
    if args[:1] != ["pipeline"] and "--resume" not in args:
        args.append("--resume")
    return shlex.join(["aha", *args])
