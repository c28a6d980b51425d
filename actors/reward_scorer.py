"""The reward scorer: a pool of worker processes that grade completions under hard time limits.

A plain class; the driver launches it as a Ray actor. Reward functions run in child
processes (actors/reward_workers.py), not threads, because math-verify times out with
`signal.alarm`, which works only in a process's main thread — and because a process can be
killed when a call hangs. A call that hangs past its limit, raises, returns NaN/inf or a
non-number, passes the memory limit or takes its worker down gives the configured failure
reward with the reason recorded (`Score.failures`); a worker that died, hung or passed its
memory limit is replaced, with all it started, and the scorer keeps serving. Each call's
seconds come back with its score (`Score.seconds`): what a reward costs is measured here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from multiprocessing.connection import wait

from actors.processes import process_tree
from actors.reward_workers import RewardWorker


@dataclass(frozen=True)
class ScorerSpec:
    """Reward functions with their weights, and how they are run; built from the recipe by
    `cluster/startup/specs.py`, no defaults of its own."""

    weights: dict[str, float]
    num_workers: int
    timeout_s: float  # each reward call
    failure_reward: float
    max_new_tokens: int  # for the over-long penalty
    overlong_buffer_tokens: int  # 0: no over-long penalty
    overlong_penalty: float
    start_timeout_s: float  # a worker process's start-up
    memory_mb: int  # each worker with all it starts; 0: no limit


@dataclass
class Score:
    """The reward of one completion: its weighted total and every component."""

    total: float
    components: dict[str, float]
    failures: dict[str, str] = field(default_factory=dict)  # component -> why it failed
    seconds: dict[str, float] = field(default_factory=dict)  # reward -> seconds its call kept a worker busy


# Calls handed to a worker in one message: fewer round trips through the pipe, while each
# call's result still comes back on its own, so every call keeps its own time limit.
MAX_CHUNK = 16


class RewardScorer:
    """Scores whole groups; every reward call is bounded by `spec.timeout_s`."""

    def __init__(self, spec: ScorerSpec):
        from rewards.registry import resolve_rewards

        resolve_rewards(spec.weights)  # a bad reward name fails here, at start-up
        if "code" in spec.weights:
            from rewards.sandbox import warn_if_weak

            warn_if_weak()  # says loudly what model-written code can reach on this machine
        self.spec = spec
        self._names = list(spec.weights)
        self._workers = [self._start_worker() for _ in range(spec.num_workers)]
        self.replaced_workers = 0

    def score_group(self, completions: list[str], fields: dict, num_tokens: list[int] | None = None) -> list[Score]:
        """Score every completion of one prompt against that prompt's dataset fields."""
        return self.score_groups([(completions, fields, num_tokens)])[0]

    def score_groups(self, groups: list[tuple[list[str], dict, list[int] | None]]) -> list[list[Score]]:
        """Score several groups in one call: their calls share the pool, so no worker waits for
        the slowest completion of a group while work of another group is left."""
        tasks = [(g, i, name) for g, (texts, _, _) in enumerate(groups) for i in range(len(texts))
                 for name in self._names]
        tasks.reverse()  # pop() from the end hands work out in order
        results = self._run_tasks(tasks, groups)
        return [[self._combine(results, g, i, num_tokens) for i in range(len(texts))]
                for g, (texts, _, num_tokens) in enumerate(groups)]

    def _run_tasks(self, tasks: list, groups: list) -> dict:
        """Run (group, index, reward) tasks over the pool; every call bounded by timeout_s.

        A worker gets a chunk of one group's tasks and answers call by call; each answer
        restarts the clock. A call past its limit or a dying worker fails that call only: the
        rest of its chunk goes back to the queue and the worker is replaced.
        """
        results: dict[tuple[int, int, str], tuple[float, str, float]] = {}  # -> (value, why, seconds)
        idle, busy = list(self._workers), {}  # busy: conn -> [worker, chunk, next, started, deadline]
        while tasks or busy:
            while tasks and idle:
                worker, chunk = idle.pop(), self._next_chunk(tasks)
                if not worker.process.is_alive():  # died while idle (killed from outside)
                    worker = self._replace(worker)
                texts, fields, _ = groups[chunk[0][0]]
                worker.conn.send(([(name, texts[index]) for _, index, name in chunk], fields))
                now = time.monotonic()
                busy[worker.conn] = [worker, chunk, 0, now, now + self.spec.timeout_s]
            soonest = min(entry[4] for entry in busy.values())
            for conn in wait(list(busy), timeout=max(soonest - time.monotonic(), 0)):
                entry = busy[conn]
                worker, chunk, position, started, _ = entry
                (value, why), alive = self._receive(worker)
                now = time.monotonic()  # each answer starts the next call's clock
                results[chunk[position]] = (value, why, now - started)
                entry[2:] = [position + 1, now, now + self.spec.timeout_s]
                if not alive or entry[2] == len(chunk):
                    del busy[conn]
                    tasks.extend(reversed(chunk[entry[2]:]))  # what a dead worker never started
                    idle.append(worker if alive else self._replace(worker))
            now = time.monotonic()
            for conn in [c for c, entry in busy.items() if entry[4] <= now]:
                worker, chunk, position, started, _ = busy.pop(conn)
                results[chunk[position]] = (self.spec.failure_reward, f"timeout after {self.spec.timeout_s:g} s",
                                            now - started)
                tasks.extend(reversed(chunk[position + 1:]))
                idle.append(self._replace(worker))
        return results

    def _next_chunk(self, tasks: list) -> list:
        """Pop up to MAX_CHUNK tasks of one group, sized so every worker still gets some."""
        size = max(1, min(MAX_CHUNK, len(tasks) // (2 * len(self._workers))))
        group = tasks[-1][0]
        chunk = []
        while tasks and len(chunk) < size and tasks[-1][0] == group:
            chunk.append(tasks.pop())
        return chunk

    def _receive(self, worker: RewardWorker) -> tuple[tuple[float, str], bool]:
        """One call's (value, failure reason), and whether the worker is still usable."""
        try:
            status, value = worker.conn.recv()
        except (EOFError, OSError):
            return (self.spec.failure_reward, worker.death_reason()), False
        if status == "ok":
            return (value, ""), True
        return (self.spec.failure_reward, value), status == "error"  # "memory": it passed its limit

    def _start_worker(self) -> RewardWorker:
        return RewardWorker(self._names, self.spec.start_timeout_s, self.spec.memory_mb)

    def _replace(self, worker: RewardWorker) -> RewardWorker:
        worker.kill()
        fresh = self._start_worker()
        self._workers[self._workers.index(worker)] = fresh
        self.replaced_workers += 1
        return fresh

    def _combine(self, results: dict, group: int, index: int, num_tokens: list[int] | None) -> Score:
        from rewards.shaping import overlong_penalty, weighted_sum

        outcome = {name: results[(group, index, name)] for name in self._names}
        components = {name: value for name, (value, _, _) in outcome.items()}
        failures = {name: why for name, (_, why, _) in outcome.items() if why}
        seconds = {name: spent for name, (_, _, spent) in outcome.items()}
        weights = dict(self.spec.weights)
        if self.spec.overlong_buffer_tokens > 0 and num_tokens is not None:
            components["overlong"] = overlong_penalty(
                num_tokens[index], max_tokens=self.spec.max_new_tokens,
                buffer_tokens=self.spec.overlong_buffer_tokens, penalty=self.spec.overlong_penalty)
            weights["overlong"] = 1.0
        return Score(total=weighted_sum(components, weights), components=components, failures=failures,
                     seconds=seconds)

    def process_ids(self) -> list[tuple[int, float]]:
        """`(pid, create time)` of this actor's process and its worker processes."""
        return process_tree()

    def worker_pids(self) -> list[int]:
        return [w.pid for w in self._workers]

    def close(self) -> None:
        """End every worker and all it started (should the scorer die instead, each worker
        notices and does the same)."""
        for worker in self._workers:
            worker.kill()
