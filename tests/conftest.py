"""Shared fixtures: one tiny model per test session (building it takes a few seconds); and, when
the suite runs in several processes, the real-stack files first."""

import os

import pytest

from cluster.inputs.tiny_model import build_tiny_model
from spec_helpers import tiny_spec

TINY_SPEC = tiny_spec()  # the recipe's [model.tiny] defaults: hidden 128, 2 layers, 1 KV head


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny", TINY_SPEC)


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (`make test`), files with real-stack tests go first, fast files last.

    Each process takes a whole file at a time, in this order (the Makefile turns off xdist's
    own, most-tests-first order). A real-stack file takes up to a few minutes and a fast one
    seconds, so the long ones start early and the short ones fill in at the end, instead of
    one long file running alone while the other process has nothing left to do. Every process
    collects and sorts alike, as xdist requires. A run in one process keeps pytest's order.
    """
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    stack_files = {item.path for item in items if item.get_closest_marker("stack")}
    items.sort(key=lambda item: item.path not in stack_files)  # stable: file order kept within each part
