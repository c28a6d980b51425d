"""Connecting to Ray (in-process on this machine, or an existing cluster by address), with the
driver's own inputs loading beside Ray's start."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, TimeoutError as FutureTimeout
from contextlib import contextmanager
from typing import TypeVar

from cluster.recipe import Recipe
from cluster.startup.watchdog import start_watchdog
from cluster.wire.errors import RunFailed


def offered_cpus(cluster) -> int:
    """Logical CPUs a local Ray gets: the recipe's `cluster.num_cpus`, else this machine's."""
    return cluster.num_cpus or os.cpu_count() or 1


def connect_ray(cluster):
    """Start Ray in-process (no `cluster.address`) or join the cluster at `cluster.address`.

    The repository's own packages are importable in every worker: locally they are installed
    into the virtualenv; on a cluster the job is submitted with `--working-dir .`, which Ray
    ships and puts on each worker's path.
    """
    import ray

    if ray.is_initialized():
        return ray
    if cluster.address:
        ray.init(address=cluster.address, log_to_driver=True)
    else:
        # "local": a Ray of this run's own, even where RAY_ADDRESS is set or `ray start` left a
        # cluster on this machine (Ray would join those, and then refuse num_cpus). Its processes
        # are this driver's children: the watchdog ends any the driver leaves behind.
        start_watchdog()
        ray.init(address="local", num_cpus=offered_cpus(cluster), include_dashboard=False, log_to_driver=True)
    return ray



Prepared = TypeVar("Prepared")
Roles = TypeVar("Roles")


def prepare_while_ray_starts(recipe: Recipe, prepare: Callable[[], Prepared]) -> tuple[Prepared, float]:
    """`prepare()` (the driver's own inputs: loading the tokenizer, checking the prompts) in a
    thread while Ray starts (or joins the cluster) here; returns what it returned and the
    seconds Ray took. The two overlap well: importing transformers is most of the inputs'
    time and holds one core, while Ray's start is mostly waiting for its own processes.

    A mistake in the inputs is still its one line, at about the time it came before: the local
    Ray this started is shut down again first, and the lines Ray's start logged are dropped
    with it (they are shown, late, when the inputs are good): nothing of the job has started yet.
    Inputs still loading `cluster.timeout_s` after the start are a RunFailed in one line, the
    same way (the thread is a daemon: it cannot keep the process alive).
    """
    prepared, ray_s, _ = prepare_while_roles_start(recipe, prepare, start_roles=None)
    return prepared, ray_s


def prepare_while_roles_start(recipe: Recipe, prepare: Callable[[], Prepared],
                              start_roles: Callable[[], Roles] | None) -> tuple[Prepared, float, Roles | None]:
    """`prepare_while_ray_starts`, and once Ray is up, `start_roles()` here while the inputs
    are still being prepared: the slow things (engines, learner ranks) first. Returns what
    `prepare` returned, Ray's seconds and what `start_roles` returned (its `.shutdown()` is
    called if the inputs then fail: a mistake in them is still its one line, and nothing the
    run started is left behind). A mistake in the inputs is reported before a role's failure."""
    import ray

    joined_already = ray.is_initialized()
    started = time.perf_counter()
    preparing = in_daemon_thread(prepare, "aha-inputs")
    ray_error = roles = roles_error = None
    with _held_back(logging.getLogger("ray")) as ray_lines:
        try:
            connect_ray(recipe.cluster)
        except Exception as err:  # reported after the inputs' own error, which is the user's to fix first
            ray_error = err
    ray_s = time.perf_counter() - started
    if ray_error is None and start_roles is not None and not _failed(preparing):
        ray_lines.show()
        try:
            roles = start_roles()
        except Exception as err:  # likewise reported after the inputs' error
            roles_error = err
    try:  # the inputs, bounded like any other wait: a tokenizer load that hangs is an error, not a hang
        failure = preparing.exception(timeout=max(0.0, recipe.cluster.timeout_s - (time.perf_counter() - started)))
    except FutureTimeout:
        failure = RunFailed(f"loading the inputs (tokenizer, prompt or trace checks) took over cluster.timeout_s = "
                            f"{recipe.cluster.timeout_s:g} s; is model.path on a slow or unreachable store?")
    if failure is not None:
        if roles is not None:
            roles.shutdown()
        if not joined_already and ray.is_initialized():
            ray.shutdown()
        raise failure
    ray_lines.show()
    if ray_error is not None or roles_error is not None:
        raise ray_error or roles_error
    return preparing.result(), ray_s, roles


def _failed(future: Future) -> bool:
    return future.done() and future.exception() is not None


def in_daemon_thread(work: Callable[[], Prepared], name: str) -> Future:
    """`work()` in a daemon thread; its future. Daemon, so that a call that never returns does
    not keep the process alive after the driver has given up on it."""
    future: Future = Future()

    def run() -> None:
        future.set_running_or_notify_cancel()
        try:
            future.set_result(work())
        except BaseException as err:  # handed to whoever waits on the future
            future.set_exception(err)

    threading.Thread(target=run, name=name, daemon=True).start()
    return future


class _HeldBack(logging.Filter):
    """Keeps a logger's records from its handlers until `show`."""

    def __init__(self, handlers: list[logging.Handler]):
        super().__init__()
        self.handlers, self.records = handlers, []

    def filter(self, record: logging.LogRecord) -> bool:
        self.records.append(record)
        return False

    def show(self) -> None:
        for record in self.records:
            for handler in self.handlers:
                handler.handle(record)
        self.records = []


@contextmanager
def _held_back(logger: logging.Logger):
    """While the block runs, what reaches `logger`'s handlers is held; `show()` it afterwards."""
    held = _HeldBack(list(logger.handlers))
    for handler in held.handlers:
        handler.addFilter(held)
    try:
        yield held
    finally:
        for handler in held.handlers:
            handler.removeFilter(held)
