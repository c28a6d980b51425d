"""Shared fixtures: one tiny model per test session (building it takes a few seconds)."""

import pytest

from cluster.tiny_model import TinyModelSpec, build_tiny_model

TINY_SPEC = TinyModelSpec(hidden_size=128, num_layers=2, num_kv_heads=1, seed=0)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny", TINY_SPEC)
