"""Logs that a flood of requests (or of failing connections) cannot flood.

Every server log line is one an outsider can cause: an access line per request, a warning
per malformed request, a traceback per failed accept once file descriptors run out. 20,000
half-sent requests grew the log by 18 MB in 40 s (issue 12, item 10). `quiet()` gives each
of the server's loggers a budget: a burst of `BURST` lines, then `RATE` a second; what is
over it is dropped and counted, and the next line that fits says how many were left out.
"""

from __future__ import annotations

import logging
import threading
import time

LOGGERS = ("uvicorn.error", "uvicorn.access", "asyncio", "modelfusion.server")
BURST = 200  # lines at once
RATE = 20.0  # lines a second after that, per logger


class RateLimit(logging.Filter):
    """A token bucket per filter: one logger's lines, however many threads write them."""

    def __init__(self, burst: int = BURST, rate: float = RATE) -> None:
        super().__init__()
        self.burst, self.rate = burst, rate
        self._tokens = float(burst)
        self._stamp = time.monotonic()
        self._dropped = 0
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            if self._tokens < 1:
                self._dropped += 1
                return False
            self._tokens -= 1
            dropped, self._dropped = self._dropped, 0
        if dropped:  # said on the line that got through, so the count is never lost
            record.msg = f"[{dropped} log lines left out: too many at once] {record.msg}"
        return True


def quiet(names: tuple[str, ...] = LOGGERS) -> None:
    """Give each server logger its budget (once: calling again changes nothing)."""
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RateLimit) for f in logger.filters):
            logger.addFilter(RateLimit())
