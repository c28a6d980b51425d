"""Every setting is defined once, in the recipe schema: the actor specs have no defaults of their
own, each spec field carries the recipe's value, and library defaults equal the recipe's."""

import dataclasses
import inspect
from pathlib import Path

import pytest

from actors.reward_scorer import ScorerSpec
from actors.rollout_worker import EngineSpec
from cluster.inputs.tiny_model import TinyModelSpec, tiny_model_spec
from cluster.recipe import Recipe, load_recipe
from cluster.recipe.schema import AlgorithmConfig, TinyModelConfig
from cluster.startup.specs import engine_spec, learner_spec, sampling_spec, scorer_spec, teacher_spec
from cluster.wire.samples import SamplingSpec
from cluster.wire.teacher import TeacherSpec
from learner.losses import group_advantages, policy_loss
from learner.spec import LearnerSpec

RECIPES = Path(__file__).resolve().parent.parent / "deploy" / "recipes"
SPECS = [EngineSpec, LearnerSpec, ScorerSpec, SamplingSpec, TinyModelSpec, TeacherSpec]

# spec field -> dotted recipe key, where the names differ or the field lives in another section
RENAMED = {
    EngineSpec: {"tokenizer_path": "model.tokenizer", "dtype": "model.dtype", "seed": "run.seed",
                 "sleep_mode": "rollout.sleep_between_steps"},
    LearnerSpec: {"device": "cluster.device", "total_steps": "run.steps", "max_new_tokens": "rollout.max_new_tokens",
                  "seed": "run.seed", "timeout_s": "cluster.timeout_s"},
    ScorerSpec: {"num_workers": "reward.workers_per_scorer", "max_new_tokens": "rollout.max_new_tokens",
                 "start_timeout_s": "cluster.timeout_s"},
    SamplingSpec: {},
    TeacherSpec: {"tokenizer_path": "distill.teacher_tokenizer", "device": "cluster.device",
                  "trust_remote_code": "model.trust_remote_code"},
}
SECTIONS = {EngineSpec: ("model", "rollout"), LearnerSpec: ("learner", "algorithm"), ScorerSpec: ("reward",),
            SamplingSpec: ("rollout",), TeacherSpec: ("distill",)}
# Fields a spec takes from elsewhere than the recipe: the model directory a run prepared, the
# sampler's per-call seed and benchmark switch, and the learner's objective (the command's:
# `aha train` GRPO, `aha sft` SFT).
NOT_FROM_RECIPE = {"model_path", "ignore_eos", "objective"}


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.__name__)
def test_specs_have_no_defaults_of_their_own(spec):
    with_defaults = [f.name for f in dataclasses.fields(spec)
                     if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING]
    assert with_defaults == []


def _recipe_value(recipe: Recipe, spec_type, name: str):
    dotted = RENAMED[spec_type].get(name)
    if dotted:
        section, key = dotted.split(".")
        return getattr(getattr(recipe, section), key)
    for section in SECTIONS[spec_type]:
        if hasattr(getattr(recipe, section), name):
            return getattr(getattr(recipe, section), name)
    raise AssertionError(f"{spec_type.__name__}.{name} is not a recipe setting")


@pytest.mark.parametrize("recipe_file", ["arith-zero-cpu.toml", "math-dapo.toml", "countdown-qwen2.5-3b.toml"])
def test_every_spec_field_carries_the_recipes_value(recipe_file):
    recipe = load_recipe(RECIPES / recipe_file, ["--learner.adam_eps", "3e-7", "--reward.failure_reward", "-0.5",
                                                 "--distill.teacher", "t", "--distill.max_batch_tokens", "999", "--cluster.num_cpus", "16",
                                                 "--algorithm.dynamic_sampling", "false"])
    built = {EngineSpec: engine_spec(recipe, "m"), LearnerSpec: learner_spec(recipe, "m"),
             ScorerSpec: scorer_spec(recipe), SamplingSpec: sampling_spec(recipe, seed=None),
             TeacherSpec: teacher_spec(recipe)}
    for spec_type, spec in built.items():
        for field in dataclasses.fields(spec):
            if field.name in NOT_FROM_RECIPE or (spec_type is SamplingSpec and field.name == "seed"):
                continue
            value = getattr(spec, field.name)
            expected = _recipe_value(recipe, spec_type, field.name)
            assert value == (tuple(expected) if isinstance(value, tuple) else expected), \
                f"{spec_type.__name__}.{field.name}"
    assert built[EngineSpec].model_path == "m" and built[SamplingSpec].ignore_eos is False
    assert built[TeacherSpec].model_path == "t" and built[TeacherSpec].max_batch_tokens == 999


def test_the_tiny_model_spec_is_the_recipes_model_tiny_table():
    tiny = TinyModelConfig(hidden_size=192, num_layers=3, num_kv_heads=3, intermediate_size=256, seed=4)
    spec = tiny_model_spec(tiny, max_model_len=4096)
    assert dataclasses.asdict(spec) == {**dataclasses.asdict(tiny), "max_position_embeddings": 4096}
    assert tiny_model_spec(tiny, max_model_len=128).max_position_embeddings == 2048  # room for other recipes


@pytest.mark.parametrize("function", [policy_loss, group_advantages], ids=lambda f: f.__name__)
def test_library_defaults_equal_the_recipes(function):
    algorithm = AlgorithmConfig()
    shared = {name: p.default for name, p in inspect.signature(function).parameters.items()
              if p.default is not inspect.Parameter.empty and hasattr(algorithm, name)}
    assert shared, "the function shares no setting with the recipe; this test checks nothing"
    assert shared == {name: getattr(algorithm, name) for name in shared}
