"""Dropping single vLLM log messages that would otherwise repeat in every run's log."""

from __future__ import annotations

import logging


class DropMessage(logging.Filter):
    """A logger filter that drops the records whose message is `message` (with `part=True`:
    contains it) and lets every other record through."""

    def __init__(self, message: str, *, part: bool = False):
        super().__init__()
        self.message, self.part = message, part

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not (self.message in text if self.part else text == self.message)
