"""The reward scorer as a real Ray actor with a real process pool: grading, surviving reward
functions that hang, raise, or kill their worker, leaving no process behind when Ray kills
it, and the driver's wait for a slow reward booked as such."""

import os
import textwrap
import time
import uuid

import pytest
import ray

from actors.reward_scorer import RewardScorer
from cluster.roles.scorer_pool import ScorerPool
from cluster.roles.scoring import ScoresInFlight
from cluster.wire.phases import timed
from cluster.wire.samples import Sample
from reward_process_helpers import left_after, snapshot, wait_for_children, write_rewards
from spec_helpers import scorer_spec
from rewards import RewardSpecError

pytestmark = pytest.mark.stack

HOSTILE = textwrap.dedent('''
    import os, time

    def hang(completion, **fields):
        if "hang" in completion:
            time.sleep(3600)
        return 1.0

    def explode(completion, **fields):
        if "explode" in completion:
            raise RuntimeError("reward bug")
        return 0.5

    def die(completion, **fields):
        if "die" in completion:
            os._exit(3)
        return 0.25
''')


@pytest.fixture(scope="module")
def hostile_path(tmp_path_factory):
    folder = tmp_path_factory.mktemp("user_rewards")
    (folder / "hostile_rewards.py").write_text(HOSTILE)
    return write_rewards(folder)


@pytest.fixture(scope="module", autouse=True)
def ray_cluster(hostile_path):
    # The user's reward module must be importable in the actor (and so in its pool).
    ray.init(address="local", num_cpus=2, include_dashboard=False,
             runtime_env={"env_vars": {"PYTHONPATH": hostile_path}})
    yield
    ray.shutdown()


def _scorer(**settings):
    spec = scorer_spec(**{"num_workers": 2, "timeout_s": 3.0, "failure_reward": -1.0, "start_timeout_s": 120.0,
                          **settings})
    actor = ray.remote(RewardScorer).options(num_cpus=0.5).remote(spec)
    return actor


def test_scores_a_group_with_every_component():
    scorer = _scorer(weights={"math": 1.0, "format": 0.5})
    completions = ["reasoning</think> <answer>\\frac{1}{2}</answer>", "x</think> <answer>12</answer>",
                   "no tags at all, 0.5"]
    scores = ray.get(scorer.score_group.remote(completions, {"answer": "0.5"}), timeout=120)
    assert [s.components["math"] for s in scores] == [1.0, 0.0, 1.0]
    assert [s.components["format"] for s in scores] == [1.0, 1.0, 0.0]
    assert [s.total for s in scores] == [1.5, 0.5, 1.0]
    assert all(not s.failures for s in scores)


def test_overlong_penalty_is_a_component():
    scorer = _scorer(weights={"arithmetic": 1.0}, max_new_tokens=100, overlong_buffer_tokens=20)
    scores = ray.get(scorer.score_group.remote(["<answer>4</answer>"] * 3, {"answer": "4"}, [50, 90, 100]),
                     timeout=120)
    # no penalty before 80 tokens; linear to -1 at 100: 90 tokens -> -0.5
    assert [s.components["overlong"] for s in scores] == [0.0, -0.5, -1.0]
    assert [s.total for s in scores] == [1.0, 0.5, 0.0]


def test_hanging_reward_gives_the_failure_reward_and_the_scorer_keeps_serving():
    scorer = _scorer(weights={"hostile_rewards:hang": 1.0})
    start = time.monotonic()
    scores = ray.get(scorer.score_group.remote(["fine", "hang here", "fine too"], {}), timeout=120)
    assert time.monotonic() - start < 30  # bounded by the 3 s limit plus a worker restart
    assert [s.total for s in scores] == [1.0, -1.0, 1.0]
    assert "timeout" in scores[1].failures["hostile_rewards:hang"]
    assert ray.get(scorer.score_group.remote(["again"], {}), timeout=120)[0].total == 1.0
    assert ray.get(scorer.__ray_call__.remote(lambda self: self.replaced_workers), timeout=60) == 1


def test_raising_reward_is_recorded_and_the_worker_kept():
    scorer = _scorer(weights={"hostile_rewards:explode": 1.0})
    pids = ray.get(scorer.worker_pids.remote(), timeout=120)
    scores = ray.get(scorer.score_group.remote(["explode", "ok"], {}), timeout=120)
    assert [s.total for s in scores] == [-1.0, 0.5]
    assert "RuntimeError: reward bug" in scores[0].failures["hostile_rewards:explode"]
    assert ray.get(scorer.worker_pids.remote(), timeout=60) == pids


def test_worker_killed_mid_call_is_replaced():
    scorer = _scorer(weights={"hostile_rewards:die": 1.0})
    pids = ray.get(scorer.worker_pids.remote(), timeout=120)
    scores = ray.get(scorer.score_group.remote(["die", "live"], {}), timeout=120)
    assert [s.total for s in scores] == [-1.0, 0.25]
    assert "worker died (exit code 3)" in scores[0].failures["hostile_rewards:die"]
    new_pids = ray.get(scorer.worker_pids.remote(), timeout=60)
    assert len(set(new_pids) - set(pids)) == 1 and all(_alive(pid) for pid in new_pids)
    # killed from outside while idle: replaced before it is given work, nothing is lost
    os.kill(new_pids[0], 9)
    time.sleep(0.5)
    scores = ray.get(scorer.score_group.remote(["live"] * 4, {}), timeout=120)
    assert [s.total for s in scores] == [0.25] * 4


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def test_bad_reward_names_fail_at_start_up():
    with pytest.raises(RewardSpecError, match="no_such_module"):
        RewardScorer(scorer_spec(weights={"no_such_module:f": 1.0}))
    with pytest.raises(RewardSpecError, match="nope"):
        RewardScorer(scorer_spec(weights={"nope": 1.0}))


@pytest.mark.parametrize("reward, bad, failure", [("hang", "hang here", "timeout"), ("die", "die now", "worker died")])
def test_a_failure_inside_a_chunk_fails_only_that_call(reward, bad, failure):
    # 24 completions over 2 workers go out in chunks of 6 calls: the failing call is the third
    # of the first chunk, and the three after it are handed out again and still scored.
    scorer = _scorer(weights={f"hostile_rewards:{reward}": 1.0})
    good = {"hang": 1.0, "die": 0.25}[reward]
    texts = ["fine"] * 2 + [bad] + ["fine"] * 21
    scores = ray.get(scorer.score_group.remote(texts, {}), timeout=120)
    assert [s.total for s in scores] == [good] * 2 + [-1.0] + [good] * 21
    assert failure in scores[2].failures[f"hostile_rewards:{reward}"]
    assert all(not s.failures for i, s in enumerate(scores) if i != 2)


def test_a_scorer_actor_killed_by_ray_leaves_no_reward_process():
    marker = uuid.uuid4().hex
    scorer = _scorer(weights={"process_rewards:forks": 1.0})
    ray.get(scorer.score_group.remote(["a", "b"], {"marker": marker}), timeout=120)
    workers = snapshot(ray.get(scorer.worker_pids.remote(), timeout=60))
    assert wait_for_children(marker, 2) == 2  # each call left a detached child
    ray.kill(scorer)  # what the scorer pool's shutdown, and its replacement of a scorer, do
    assert left_after(marker, workers, within_s=10.0) == ([], [])


def _samples(*texts):
    return [Sample(prompt_ids=[1], completion_ids=[2], text=t, logprobs=[0.0], finish_reason="stop", weight_version=0)
            for t in texts]


def test_the_drivers_wait_for_a_slow_reward_is_score_wait_and_its_cost_is_the_rewards():
    spec = scorer_spec(weights={"process_rewards:slow": 1.0}, num_workers=1, timeout_s=30.0, start_timeout_s=120.0)
    pool = ScorerPool(spec, 1, cpus_per_scorer=0.5, timeout_s=120.0)
    timings = {"generate": 0.0}
    scoring = ScoresInFlight(pool, timings=timings)

    def wait_as_the_step_does():  # the stream's wait, timed as "generate", then what is ready
        with timed(timings, "generate"):
            ray.wait(scoring.refs(), num_returns=1, timeout=60)
        return scoring.take_ready()

    try:
        scoring.submit("a", {}, _samples("0.4", "0.4"))
        assert len(wait_as_the_step_does()) == 1
        waited = timings["score_wait"]
        assert 0.8 <= waited < 10 and timings["generate"] < 0.05  # the wait moved out of "generate"
        assert 0.8 <= timings["reward/process_rewards:slow"] < 2.0  # two calls of 0.4 s, busy time
        scoring.submit("b", {}, _samples("0"))  # a group came after: the engines were waited for too
        assert timings["score_wait"] == 0.0 and timings["generate"] >= waited - 1e-9
        wait_as_the_step_does()
        assert timings["score_wait"] < waited
    finally:
        pool.shutdown()


def test_a_dead_scorer_with_several_groups_in_flight_is_replaced_once_and_every_group_scored():
    from cluster.roles.recovery import Recovery

    spec = scorer_spec(weights={"arithmetic": 1.0}, num_workers=1, timeout_s=30.0, start_timeout_s=120.0)
    pool = ScorerPool(spec, 1, cpus_per_scorer=0.5, timeout_s=120.0, recovery=Recovery(max_restarts=2))
    try:
        dead = pool.scorers[0]
        ray.kill(dead)  # three groups go to it before the driver learns it died
        tickets = [pool.submit([f"{n}"], {"answer": "3"}, [1]) for n in (1, 3, 5)]
        scores = [pool.collect(ticket) for ticket in tickets]
        assert [[s.components["arithmetic"] for s in group] for group in scores] == [[0.0], [1.0], [0.0]]
        assert pool.recovery.restarts["scorer"] == 1 and pool.scorers[0] is not dead
    finally:
        pool.shutdown()
