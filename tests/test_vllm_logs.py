"""The filter that drops single vLLM log messages (actors/vllm_logs.py)."""

import logging

from actors.vllm_logs import DropMessage


def _record(message: str) -> logging.LogRecord:
    return logging.LogRecord("vllm.test", logging.WARNING, __file__, 1, message, None, None)


def test_a_whole_message_is_dropped_only_when_it_is_exactly_that_message():
    drop = DropMessage("RotaryEmbedding: Failed to load weights")
    assert not drop.filter(_record("RotaryEmbedding: Failed to load weights"))
    assert drop.filter(_record("RotaryEmbedding: Failed to load weights for layer 3"))
    assert drop.filter(_record("something else"))


def test_a_part_drops_every_message_that_contains_it():
    drop = DropMessage("VLLM_ENABLE_V1_MULTIPROCESSING is set to False", part=True)
    assert not drop.filter(_record("The global random seed is set to 0. Since VLLM_ENABLE_V1_MULTIPROCESSING "
                                   "is set to False, this may affect the random state"))
    assert drop.filter(_record("Enforce eager set, disabling torch.compile"))


def test_one_filter_instance_is_added_to_a_logger_once():
    logger, drop = logging.getLogger("aha.test.vllm_logs"), DropMessage("x")
    logger.addFilter(drop)
    logger.addFilter(drop)
    assert logger.filters.count(drop) == 1
    logger.removeFilter(drop)
