"""Shared fixtures: one tiny model per test session (building it takes a few seconds)."""

import pytest

from cluster.inputs.tiny_model import build_tiny_model
from spec_helpers import tiny_spec

TINY_SPEC = tiny_spec()  # the recipe's [model.tiny] defaults: hidden 128, 2 layers, 1 KV head


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny", TINY_SPEC)
