"""A failure that lasts: logged once when it starts or changes, at most once a minute while it
goes on, and once when it ends, so that a log says what happened without a line every second."""
from __future__ import annotations

import logging
import time


class Incident:
    """One kind of failure: its message while it lasts, logged when it starts or changes, at most
    once a minute while it goes on, and once when it ends; `last` keeps the latest message."""

    REPEAT_SECONDS = 60.0

    def __init__(self, what: str, logger: logging.Logger):
        self.what = what
        self.log = logger
        self.message: str | None = None
        self.last: str | None = None
        self.since: float | None = None
        self._logged_at = 0.0

    def failing(self, message: str, unexpected: bool = False) -> None:
        now = time.monotonic()
        if self.message is None:
            self.since = time.time()
            (self.log.exception if unexpected else self.log.warning)("%s fails: %s", self.what, message)
            self._logged_at = now
        elif message != self.message or now - self._logged_at >= self.REPEAT_SECONDS:
            self.log.warning("%s fails, for %.0f s now: %s", self.what, time.time() - self.since, message)
            self._logged_at = now
        self.message = self.last = message

    def recovered(self) -> None:
        if self.message is not None:
            self.log.info("%s works again after %.1f s", self.what, time.time() - self.since)
            self.message = self.since = None
