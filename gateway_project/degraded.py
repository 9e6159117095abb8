"""Logging a failure mode that may apply to every request (Redis down, say): one line every few seconds,
saying how often it applied since the last line, instead of one line per request."""

from __future__ import annotations

import logging
import time


class DegradedLog:
    def __init__(self, logger: logging.Logger, message: str, interval: float = 5.0, clock=time.monotonic) -> None:
        self.logger = logger
        self.message = message
        self.interval = interval
        self.clock = clock
        self.last = float("-inf")
        self.since = 0

    def note(self, **fields) -> None:
        """Count one use; log it (with `fields`) unless a line went out less than `interval` ago."""
        self.since += 1
        now = self.clock()
        if now - self.last >= self.interval:
            self.logger.warning(self.message, extra={**fields, "fallbacks_since_last_line": self.since})
            self.last = now
            self.since = 0
