"""Actor specs for tests: built from the recipe's defaults by `cluster/startup/specs.py` (the specs have
no defaults of their own), with only the fields a test cares about changed."""

from dataclasses import replace

from cluster.startup import specs
from cluster.inputs.tiny_model import tiny_model_spec
from cluster.recipe import Recipe
from cluster.recipe.schema import TinyModelConfig

DEFAULTS = Recipe()  # the schema's defaults; the model path is each spec's own


def engine_spec(model_path, **fields):
    return replace(specs.engine_spec(DEFAULTS, str(model_path)), **fields)


def learner_spec(model_path, **fields):
    return replace(specs.learner_spec(DEFAULTS, str(model_path)), **fields)


def scorer_spec(**fields):
    return replace(specs.scorer_spec(DEFAULTS), **fields)


def tiny_spec(**fields):
    """A `[model.tiny]` table's spec: the recipe's defaults with `fields` changed."""
    return replace(tiny_model_spec(TinyModelConfig(), DEFAULTS.rollout.max_model_len), **fields)


def sampling_spec(**fields):
    return replace(specs.sampling_spec(DEFAULTS, seed=None), **fields)
