"""Webhook delivery in the background: a scheduler thread sends each endpoint's oldest undelivered event (one try
in flight per endpoint, several endpoints at once, so a failing or slow endpoint holds back only its own events),
and the clock (clock.py) that judges the nodes. Nothing here runs in a request: `emit` only writes the outbox."""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import TYPE_CHECKING

import requests

from modelsync.shared.catalog import write_transaction
from modelsync.shared.webhooks.signing import new_message_id

from ..registry import iso, utc_now
from . import store
from .clock import NodeClock
from .delivery import Outcome, log_outcome, next_attempt, send
from .events import TEST_EVENT, enqueue, event_body, listen, unlisten
from .store import Delivery, Endpoint

if TYPE_CHECKING:
    from ..context import ServerContext

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0  # the longest an event committed after the scheduler looked waits for it
SENDERS = 4  # endpoints tried at the same time
PRUNE_EVERY_SECONDS = 3600.0


class WebhookService:
    def __init__(self, ctx: "ServerContext"):
        self._registry = ctx.registry
        self._config = ctx.config
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._in_flight: set[int] = set()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(SENDERS, thread_name_prefix="webhook-send")
        self._local = threading.local()
        self._scheduler = threading.Thread(target=self._run, name="webhook-scheduler", daemon=True)
        self.clock = NodeClock(self._registry.db, ctx.liveness, ctx.config.webhook_clock_seconds, iso(utc_now()))

    def start(self) -> None:
        listen(self._wake)
        self._scheduler.start()
        self.clock.start()

    def stop(self) -> None:
        unlisten(self._wake)
        self.clock.stop()
        self._stop.set()
        self._wake.set()
        self._scheduler.join(30)
        self._pool.shutdown(wait=True, cancel_futures=True)

    def wake(self) -> None:
        self._wake.set()

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            session.trust_env = False  # an operator's HTTP(S)_PROXY is for Civitai, not for the LAN's receivers
        return session

    def _run(self) -> None:
        last_prune = 0.0
        while not self._stop.is_set():
            wait = POLL_SECONDS
            try:
                with self._lock:
                    in_flight = set(self._in_flight)
                store.trim_backlogs(self._registry.db(), max(1, self._config.webhook_backlog_cap), in_flight)
                wait = min(wait, self._dispatch_due())
                if time.monotonic() - last_prune > PRUNE_EVERY_SECONDS:
                    older = iso(utc_now() - timedelta(days=self._config.webhook_log_days))
                    store.prune_log(self._registry.db(), older)
                    last_prune = time.monotonic()
            except Exception:  # the outbox is in the registry: the next look finds everything again
                log.exception("webhook scheduler: a look at the outbox failed")
            self._wake.wait(max(0.01, wait))
            self._wake.clear()

    def _dispatch_due(self) -> float:
        """Start a try for every endpoint whose head is due; returns how long until the next head is due."""
        now = time.time()
        until_next = POLL_SECONDS
        for head in store.heads(self._registry.db()):
            with self._lock:
                if head.endpoint_id in self._in_flight:
                    continue
                if head.next_attempt_at > now:
                    until_next = min(until_next, head.next_attempt_at - now)
                    continue
                self._in_flight.add(head.endpoint_id)
            self._pool.submit(self._try, head.endpoint_id)
        return until_next

    def _try(self, endpoint_id: int) -> None:
        """One try of the endpoint's head, read again now: the scheduler's look may predate the try that just ended
        for this endpoint (its head delivered, or due later), and that event must not be sent again."""
        try:
            db = self._registry.db()
            endpoint, delivery = store.endpoint(db, endpoint_id), store.head(db, endpoint_id)
            if endpoint is not None and endpoint.enabled and delivery is not None \
                    and delivery.next_attempt_at <= time.time():
                self._record(endpoint, delivery, self._send(endpoint, delivery))
        except Exception:
            log.exception("webhook endpoint %d: a try or its record failed", endpoint_id)
        finally:
            with self._lock:
                self._in_flight.discard(endpoint_id)
            self._wake.set()

    def _send(self, endpoint: Endpoint, delivery: Delivery) -> Outcome:
        outcome = send(self._session(), endpoint.url, endpoint.secret, delivery, self._config.webhook_timeout_seconds)
        log_outcome(endpoint.url, delivery, outcome)
        return outcome

    def _record(self, endpoint: Endpoint, delivery: Delivery, outcome: Outcome) -> None:
        db = self._registry.db()
        if outcome.delivered:
            store.record_success(db, delivery, outcome.status or 0)
            return
        later = next_attempt(delivery.attempts, outcome, tuple(self._config.webhook_retry_delays), time.time())
        with write_transaction(db):  # the endpoint disabled and its failed try recorded together
            if outcome.gone:
                store.disable(db, endpoint.id, "the receiver answered 410 Gone")
            store.record_failure(db, delivery, outcome.status, outcome.error or "failed", later)
        if outcome.gone:
            log.warning("webhook endpoint %d disabled: its receiver answered 410 Gone", endpoint.id)

    def send_test(self, endpoint: Endpoint) -> Delivery:
        """One try of a webhook.test event to this endpoint now (out of its queue, never retried), logged."""
        db = self._registry.db()
        body = event_body(TEST_EVENT, {"endpoint_id": endpoint.id, "message": "a test event from modelsync"})
        with write_transaction(db):
            delivery_id = enqueue(db, endpoint.id, TEST_EVENT, body, new_message_id())
            db.conn.execute("UPDATE webhook_deliveries SET state = 'failed', finished_at = ? WHERE id = ?",
                            [iso(utc_now()), delivery_id])  # out of the queue until its try is recorded
        delivery = store.delivery(db, delivery_id)
        assert delivery is not None
        outcome = self._send(endpoint, delivery)
        store.record_test(db, delivery, outcome.status, outcome.error, outcome.delivered)
        if outcome.gone:
            store.disable(db, endpoint.id, "the receiver answered 410 Gone")
        found = store.delivery(db, delivery_id)
        assert found is not None
        return found


def start(ctx: "ServerContext") -> WebhookService:
    service = WebhookService(ctx)
    service.start()
    ctx.webhooks = service
    return service
