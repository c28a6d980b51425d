"""Rollout pool and learner group together: sample through two vLLM workers placed by Ray,
train one ZeRO-3 step on those groups, broadcast the weights into both engines, and check the
engines now generate exactly what the learner's exported model does."""

import pytest
import ray
import torch
from transformers import AutoModelForCausalLM

from cluster.roles.learner_group import LearnerGroup
from cluster.roles.rollout_pool import RolloutPool
from cluster.roles.weight_sync import WeightSync
from learner.batching import TrainSequence
from learner.losses import group_advantages
from spec_helpers import engine_spec, learner_spec, sampling_spec

pytestmark = pytest.mark.stack
TIMEOUT_S = 300


@pytest.fixture(scope="module")
def system(tiny_model_dir):
    ray.init(address="local", num_cpus=4, include_dashboard=False)
    engine = engine_spec(tiny_model_dir, dtype="float32", max_model_len=256, kv_cache_gb=0.2, enforce_eager=True,
                         seed=0)
    pool = RolloutPool(engine, 2, cpus_per_worker=1, gpus_per_worker=0, timeout_s=TIMEOUT_S)
    learner = learner_spec(tiny_model_dir, zero_stage=3, lr=1e-3, micro_batch_size=4, timeout_s=120)
    learners = LearnerGroup(learner, 2, cpus_per_rank=1, gpus_per_rank=0, timeout_s=TIMEOUT_S)
    weights = WeightSync(learners, pool, TIMEOUT_S, bucket_bytes=512 << 10)
    weights.link()
    yield pool, learners, weights
    learners.shutdown()
    pool.shutdown()
    ray.shutdown()


def test_stream_spreads_prompts_and_returns_every_group_once(system):
    pool, _, _ = system
    prompts = [[3, 20 + i, 30 + i, 40] for i in range(6)]
    groups = dict(pool.stream(prompts, sampling_spec(group_size=2, max_new_tokens=8, seed=0)))
    assert sorted(groups) == list(range(6))
    assert all(group[0].prompt_ids == prompts[i] for i, group in groups.items())


def test_trained_weights_reach_every_engine(system, tmp_path):
    pool, learners, weights = system
    prompts = [[3, 20 + i, 30 + i, 40] for i in range(4)]
    groups = dict(pool.stream(prompts, sampling_spec(group_size=4, max_new_tokens=16, seed=1)))
    # Reward: length parity, just to get non-zero group-relative advantages.
    rewards = torch.tensor([[float(len(s.completion_ids) % 2) for s in groups[i]] for i in range(4)])
    rewards[:, 0] = 1 - rewards[:, 1]  # every group has both rewards
    advantages = group_advantages(rewards)
    train = [[TrainSequence(s.prompt_ids, s.completion_ids, s.logprobs, float(a)) for s, a in zip(groups[i], advantages[i])]
             for i in range(4)]
    learners.accumulate(train, end_of_step=True)
    assert learners.step()["weight_version"] == 1
    seconds = weights.push(1)
    assert pool.versions() == [1, 1] and weights.version == 1 and seconds > 0

    exported = AutoModelForCausalLM.from_pretrained(learners.export_hf(str(tmp_path / "hf")), dtype=torch.float32)
    prompt = prompts[0]
    reference = exported.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False)[0, len(prompt):].tolist()
    greedy = dict(pool.stream([prompt, prompt], sampling_spec(group_size=1, max_new_tokens=12, temperature=0.0)))
    for group in greedy.values():  # one group from each worker
        sample = group[0]
        assert sample.weight_version == 1
        assert sample.completion_ids == reference[: len(sample.completion_ids)]
        with torch.no_grad():
            logits = exported(torch.tensor([prompt + sample.completion_ids])).logits[0, len(prompt) - 1:-1]
        hf = torch.log_softmax(logits, -1).gather(-1, torch.tensor(sample.completion_ids)[:, None])[:, 0]
        assert (hf - torch.tensor(sample.logprobs)).abs().max() <= 1e-3
