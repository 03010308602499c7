"""On-demand Civitai calls for transfers: a model version by id (an order by version), a version by hash (fulfil).

They run in the caller's thread (never on the event loop) within the fleet's one Civitai rate, the enrichment
worker's: while the fleet backs off they fail at once, and a 429 or a 5xx pauses the fleet (the Retry-After, else
1 s doubling to 30 s). A call whose turn is more than MAX_TURN_WAIT_SECONDS away is not made ("busy"): a request
never holds a thread-pool thread for a queue of turns. By-hash answers (found or unknown) are kept per hash for a
while, so a queue asking about the same job again costs Civitai nothing; checks asking about a hash while Civitai is
being asked about it wait for that one call's answer (at most as long as that call may take: its turn's wait and
Civitai's timeout).
"""
from __future__ import annotations

import threading
import time
import weakref
from concurrent import futures
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..civitai_worker import CivitaiWorker

CACHE_SECONDS = 600.0
FAILED_CACHE_SECONDS = 30.0  # an error or a back-off: asked again soon, not on every check meanwhile
MAX_CACHED = 4096
FIRST_BACKOFF_SECONDS = 1.0  # a 429 or 5xx without Retry-After: this, doubling with each failure in a row,
LONGEST_BACKOFF_SECONDS = 30.0  # at most this
MAX_TURN_WAIT_SECONDS = 5.0  # a call further from its turn than this is "busy": the caller asks again later


@dataclass(frozen=True)
class Lookup:
    status: str  # found | not_found | unavailable (backing off, rate limited, an error) | busy (ask again later)
    version: dict[str, Any] | None = None
    error: str | None = None
    retry_after: float | None = None  # unavailable or busy: seconds until asking again may work


class _TurnBudget(threading.Event):
    """What `CivitaiRate.take_turn` waits on: it gives up at once (as if stopped) when the turn is further away
    than the budget left, instead of holding the caller's thread for it."""

    def __init__(self, seconds: float):
        super().__init__()
        self.until = time.monotonic() + seconds
        self.refused = 0.0  # the wait given up, in seconds

    def wait(self, timeout: float | None = None) -> bool:
        if timeout is None or timeout > self.until - time.monotonic():
            self.refused = timeout if timeout is not None else float("inf")
            return True
        return super().wait(timeout)


class CivitaiCalls:
    def __init__(self, worker: "CivitaiWorker", cache_seconds: float = CACHE_SECONDS):
        self.worker = worker
        self.cache_seconds = cache_seconds
        self._lock = threading.Lock()
        self._by_hash: dict[str, tuple[float, Lookup]] = {}
        self._asking: dict[str, futures.Future[Lookup]] = {}  # hash -> the answer of the by-hash call under way
        self._failures = 0  # 429/5xx answers in a row, for the back-off

    def paused_seconds(self) -> float:
        return self.worker.paused_seconds()

    def _ask(self, call: Any) -> Lookup:
        paused = self.worker.paused_seconds()
        if paused > 0:
            return Lookup("unavailable", error=f"Civitai is backing off for {paused:.0f} s", retry_after=paused)
        budget = _TurnBudget(MAX_TURN_WAIT_SECONDS)
        if not self.worker.rate.take_turn(budget):
            return Lookup("busy", error=f"the next turn in the fleet's Civitai rate is {budget.refused:.0f} s away",
                          retry_after=budget.refused)
        result = call()
        if result.status in ("found", "not_found"):
            with self._lock:
                self._failures = 0
            return Lookup("found", result.data) if result.status == "found" else Lookup("not_found")
        if result.status == "rate_limited" or (result.error or "").startswith("HTTP 5") or result.retry_after is not None:
            with self._lock:
                self._failures += 1
                doubled = min(LONGEST_BACKOFF_SECONDS, FIRST_BACKOFF_SECONDS * 2 ** min(self._failures - 1, 30))
            self.worker.back_off_for(result.retry_after if result.retry_after is not None else doubled)
        return Lookup("unavailable", error=result.error or result.status)

    def version(self, version_id: int) -> Lookup:
        return self._ask(lambda: self.worker.client.model_version(version_id))

    def by_hash(self, value: str) -> Lookup:
        """Civitai's version for an AutoV2, a SHA256 or an AutoV3 (12 hex), cached per hash. While one call asks
        Civitai about a hash, other calls for it wait for its answer (whatever it is) rather than spend a turn."""
        key = value.lower()
        with self._lock:
            cached = self._by_hash.get(key)
            if cached is not None and cached[0] > time.monotonic():
                return cached[1]
            answer = self._asking.get(key)
            asks = answer is None
            if answer is None:
                answer = self._asking[key] = futures.Future()
        if not asks:
            try:  # as long as asking itself may take: a turn's wait, then Civitai's answer
                return answer.result(timeout=MAX_TURN_WAIT_SECONDS + self.worker.client.timeout)
            except futures.TimeoutError:  # TimeoutError itself only from Python 3.11
                return Lookup("busy", error="another check's look-up of this hash is still waiting for Civitai")
        try:
            found = self._ask(lambda: self.worker.client.by_hash(key))
        except BaseException as error:  # raised here; the waiters get an answer for now
            with self._lock:
                del self._asking[key]
            answer.set_result(Lookup("unavailable", error=f"the look-up failed ({type(error).__name__})"))
            raise
        keep = self.cache_seconds if found.status != "unavailable" else min(self.cache_seconds, FAILED_CACHE_SECONDS)
        with self._lock:
            del self._asking[key]
            if found.status != "busy":  # busy is not cached: the next check asks again
                now = time.monotonic()
                if len(self._by_hash) >= MAX_CACHED:
                    self._by_hash = {k: v for k, v in self._by_hash.items() if v[0] > now}
                self._by_hash[key] = (now + keep, found)
        answer.set_result(found)
        return found


_CALLS: "weakref.WeakKeyDictionary[CivitaiWorker, CivitaiCalls]" = weakref.WeakKeyDictionary()
_CALLS_LOCK = threading.Lock()


def calls_for(worker: "CivitaiWorker | None") -> CivitaiCalls | None:
    """The server's on-demand calls (one cache per server), or None when Civitai is off (CIVITAI_ENABLED=false)."""
    if worker is None:
        return None
    with _CALLS_LOCK:
        found = _CALLS.get(worker)
        if found is None:
            found = _CALLS[worker] = CivitaiCalls(worker)
        return found
