"""Reward worker processes end whole: what a user reward starts (a detached child in a session
of its own) is killed when the scorer closes or is killed with SIGKILL; a call past
reward.memory_mb is a counted failure that names the limit, and the scorer keeps serving.

The scorer is the real one with its real worker processes. Each case runs twice: in cgroups
(this machine has them) and as on a machine that has none, where a process group, a child
subreaper and RLIMIT_AS do the work.
"""

import os
import signal
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

import actors.reward_workers
from actors.reward_scorer import RewardScorer
from reward_process_helpers import left_after, snapshot, wait_for_children, write_rewards
from spec_helpers import scorer_spec

pytestmark = pytest.mark.stack

TESTS = Path(__file__).resolve().parent


@pytest.fixture(params=["cgroups", "no cgroups"])
def machine(request, monkeypatch):
    """Where the workers run: this machine, or one without cgroups (the probe finds none)."""
    if request.param == "no cgroups":
        monkeypatch.setattr(actors.reward_workers, "cgroup_parents", lambda: (None, None))
    return request.param


@pytest.fixture
def rewards_on_path(tmp_path, monkeypatch):
    folder = write_rewards(tmp_path)
    monkeypatch.syspath_prepend(folder)  # spawned workers start with the parent's sys.path
    return folder


def _scorer(**settings):
    return RewardScorer(scorer_spec(**{"num_workers": 2, "timeout_s": 30.0, "failure_reward": -1.0,
                                       "start_timeout_s": 120.0, "memory_mb": 256, **settings}))


def test_close_ends_the_detached_children_of_a_reward(machine, rewards_on_path):
    marker = uuid.uuid4().hex
    scorer = _scorer(weights={"process_rewards:forks": 1.0})
    scores = scorer.score_group(["a", "b", "c", "d"], {"marker": marker})
    assert [s.total for s in scores] == [-1.0] * 4
    assert all(s.failures["process_rewards:forks"].startswith("ValueError") for s in scores)
    workers = snapshot(scorer.worker_pids())
    assert wait_for_children(marker, 4) == 4  # each call left a child behind, in a session of its own
    scorer.close()
    assert left_after(marker, workers, within_s=2.0) == ([], [])


def test_a_call_past_the_memory_limit_fails_by_name_and_the_worker_is_replaced(machine, rewards_on_path):
    scorer = _scorer(weights={"process_rewards:hog": 1.0}, num_workers=1)
    try:
        first = scorer.worker_pids()
        scores = scorer.score_group(["fine", "hog", "fine"], {})
        assert [s.total for s in scores] == [1.0, -1.0, 1.0]
        assert scores[1].failures["process_rewards:hog"] == (
            "memory limit exceeded: the call took more than reward.memory_mb = 256 MB")
        assert scorer.replaced_workers == 1 and scorer.worker_pids() != first
        assert [s.total for s in scorer.score_group(["fine"] * 3, {})] == [1.0] * 3  # it keeps serving
    finally:
        scorer.close()


def test_each_calls_seconds_come_back_with_its_score(rewards_on_path):
    scorer = _scorer(weights={"process_rewards:slow": 1.0}, num_workers=1)
    try:
        scores = scorer.score_group(["0.3", "0"], {})
    finally:
        scorer.close()
    assert 0.3 <= scores[0].seconds["process_rewards:slow"] < 2.0
    assert scores[1].seconds["process_rewards:slow"] < 0.3


SCORER_SCRIPT = textwrap.dedent('''
    import sys, time
    from spec_helpers import scorer_spec
    from actors.reward_scorer import RewardScorer
    import actors.reward_workers

    if __name__ == "__main__":
        marker, machine, when = sys.argv[1:]
        if machine == "no cgroups":
            actors.reward_workers.cgroup_parents = lambda: (None, None)
        scorer = RewardScorer(scorer_spec(weights={"process_rewards:forks": 1.0}, num_workers=2, timeout_s=600.0,
                                          start_timeout_s=120.0, memory_mb=256))
        scorer.score_group(["a", "b"], {"marker": marker})
        print(*scorer.worker_pids(), flush=True)
        if when == "idle":
            time.sleep(600)  # the workers wait for calls
        scorer.score_group(["hang", "hang"], {"marker": marker})  # both workers stuck inside a reward
''')


@pytest.mark.parametrize("when", ["idle", "inside a call"])
def test_a_scorer_killed_with_sigkill_leaves_no_reward_process(machine, tmp_path, when):
    marker = uuid.uuid4().hex
    rewards = write_rewards(tmp_path)
    (tmp_path / "scorer.py").write_text(SCORER_SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([rewards, str(TESTS), str(TESTS.parent)])}
    scorer = subprocess.Popen([sys.executable, str(tmp_path / "scorer.py"), marker, machine, when], env=env,
                              stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(pid) for pid in scorer.stdout.readline().split()]
        assert len(pids) == 2
        wanted = 2 if when == "idle" else 4  # inside a call: the hanging calls have forked too
        assert wait_for_children(marker, wanted) == wanted
        workers = snapshot(pids)  # with their runners
    finally:
        scorer.send_signal(signal.SIGKILL)
        scorer.wait()
    # Idle, a worker sees its pipe close; inside a call, its watch on the scorer finds it gone.
    assert left_after(marker, workers, within_s=10.0) == ([], [])
