"""One try of one delivery: signed afresh (its own timestamp, the same webhook-id and body), POSTed with a timeout,
and what follows from the answer: delivered (2xx), the endpoint disabled (410), or due again after a growing delay
(at least what Retry-After asks, at most the schedule's longest wait), failed for good once the schedule is over.

Redirects are not followed (a 3xx is a failed try) and the receiver's answer body is never read back or shown: an
admin's URL aimed at an internal service cannot be used to read that service (docs/security.md)."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import requests

from modelsync.shared.civitai.client import parse_retry_after
from modelsync.shared.webhooks.signing import signed_headers

from ..transfers.records import shown_url
from .store import Delivery

log = logging.getLogger(__name__)

USER_AGENT = "modelsync-webhooks/1"


@dataclass(frozen=True)
class Outcome:
    delivered: bool
    status: int | None
    error: str | None
    gone: bool = False  # 410: the receiver says it will never want these again
    retry_after: float | None = None


def send(session: requests.Session, url: str, secret: str, delivery: Delivery, timeout: float) -> Outcome:
    body = delivery.payload.encode("utf-8")
    headers = {**signed_headers(secret, delivery.message_id, body), "Content-Type": "application/json",
               "User-Agent": USER_AGENT}
    try:
        response = session.post(url, data=body, headers=headers, timeout=timeout, allow_redirects=False, stream=True)
    except requests.Timeout:
        return Outcome(False, None, f"no answer within {timeout:g} s")
    except requests.RequestException as exc:  # its text holds the URL's query: never stored or logged
        return Outcome(False, None, unreachable(url, exc))
    response.close()  # the answer's body is not read
    status = response.status_code
    if 200 <= status < 300:
        return Outcome(True, status, None)
    if status == 410:
        return Outcome(False, status, "410 Gone: the endpoint is disabled", gone=True)
    location = shown_url(response.headers.get("Location"))
    reason = f"HTTP {status}" + (f" (a redirect to {location}: not followed)" if location and 300 <= status < 400 else "")
    return Outcome(False, status, reason, retry_after=parse_retry_after(response.headers.get("Retry-After")))


def unreachable(url: str, exc: requests.RequestException) -> str:
    """Why a try got no answer, from the exception's type, the URL as shown and the system's reason (e.g.
    "Connection refused"), never the exception's text: requests puts the URL's path and query in it."""
    reason = _system_reason(exc)
    return f"{type(exc).__name__}: no answer from {shown_url(url)}" + (f" ({reason})" if reason else "")


def _system_reason(exc: BaseException) -> str | None:
    """The strerror of the operating system's error behind requests' and urllib3's wrappers, if any."""
    todo: list[BaseException | None] = [exc]
    seen: set[int] = set()
    while todo:
        current = todo.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and not isinstance(current, requests.RequestException) and current.strerror:
            return current.strerror
        todo += [getattr(current, "reason", None), current.__cause__, current.__context__,
                 *(arg for arg in current.args if isinstance(arg, BaseException))]
    return None


def next_attempt(attempts_before: int, outcome: Outcome, delays: tuple[float, ...], now: float) -> float | None:
    """When to try again after try number `attempts_before + 1` failed; None when the schedule is over."""
    if outcome.gone or attempts_before >= len(delays):
        return None
    delay = delays[attempts_before]
    if outcome.retry_after is not None:
        delay = min(max(delay, outcome.retry_after), max(delays))
    return now + delay


def log_outcome(url: str, delivery: Delivery, outcome: Outcome) -> None:
    if outcome.delivered:
        log.debug("webhook %s %s delivered to %s", delivery.event_type, delivery.message_id, shown_url(url))
    else:
        log.info("webhook %s %s to %s failed (try %d): %s", delivery.event_type, delivery.message_id, shown_url(url),
                 delivery.attempts + 1, outcome.error)
