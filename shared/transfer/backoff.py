"""How long a download waits after a 429 or 5xx: 1 s doubling to 30 s, at least what `Retry-After` says, a bounded
number of times. (urllib3's Retry retries the first failure at once and sleeps where a cancel cannot reach it; the
node must see its stop and report each Retry-After to the central server, so the loop is the source's own.)"""
from __future__ import annotations

import threading
from dataclasses import dataclass

from .failures import TransferFailed

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


@dataclass(frozen=True)
class Backoff:
    first_seconds: float = 1.0
    longest_seconds: float = 30.0
    attempts: int = 6  # 429/5xx answers in a row that are waited out; the next one gives up
    longest_retry_after: float = 120.0  # a longer Retry-After is not waited here: the transfer fails as rate_limited

    def delay(self, failures: int, retry_after: float | None) -> float | None:
        """Seconds to wait after the `failures`-th 429/5xx in a row (1, 2, ...); None: give up."""
        if failures > self.attempts or (retry_after is not None and retry_after > self.longest_retry_after):
            return None
        doubled = min(self.longest_seconds, self.first_seconds * 2 ** (failures - 1))
        return max(doubled, retry_after or 0.0)


def wait(seconds: float, cancel: threading.Event | None) -> None:
    """Sleep, or raise `cancelled` as soon as the transfer is cancelled."""
    if (cancel or threading.Event()).wait(seconds):
        raise TransferFailed("cancelled", "the transfer was cancelled; it resumes from its temp file")
