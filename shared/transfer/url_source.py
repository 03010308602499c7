"""A plain http(s) URL as a source, and the resumable GET it shares with the Civitai source's storage leg.

Redirects are followed here, hop by hop (http and https only), so that nothing the first request carried is sent
on; resume is Range + If-Range with the validator of the first answer (a strong ETag, else Last-Modified); an
answer that ignores the Range (200) is asked again directly at the final URL, and a second 200 restarts the file.
A URL's query string may hold a token: only `shown(url)` (scheme://host/path) ever reaches a message or a log."""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar, NoReturn
from urllib.parse import urljoin

import requests

from ..civitai.client import parse_retry_after
from .backoff import RETRY_STATUSES, Backoff, wait
from .failures import TransferFailed
from .ranges import content_range
from .source import Opened, response_chunks
from .urls import checked_url, shown

log = logging.getLogger(__name__)

CHUNK_SIZE = 1024 * 1024  # a cancel is seen between chunks
MAX_REDIRECTS = 5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


def _without_queries(record: logging.LogRecord) -> bool:
    """urllib3 logs each request's path with its query at DEBUG: a signed URL's signature, a token. Cut them."""
    if isinstance(record.args, tuple):
        record.args = tuple(arg.split("?", 1)[0] if isinstance(arg, str) else arg for arg in record.args)
    return True


logging.getLogger("urllib3.connectionpool").addFilter(_without_queries)


def redirect_target(response: requests.Response, url: str) -> str | None:
    """Where a redirect points (http(s) only, else `url_refused`); None when the answer is no redirect."""
    location = response.headers.get("Location")
    if response.status_code not in _REDIRECTS or not location:
        return None
    return checked_url(urljoin(url, location))


def declared_total(response: requests.Response) -> int | None:
    """The whole file's size as a 200/206/416 answer declares it."""
    if response.status_code in (206, 416):
        said = content_range(response.headers.get("Content-Range"))
        return said.total if said else None
    length = response.headers.get("Content-Length", "")
    return int(length) if length.isdigit() else None


@dataclass
class ResumableGet:
    """Range + If-Range GETs; 429/5xx are backed off here. `get` follows redirects and never carries a credential;
    `request` is one hop with the caller's headers (the Civitai endpoint's Authorization, never sent on)."""

    session: requests.Session = field(default_factory=requests.Session, repr=False)
    timeout: tuple[float, float] = (10.0, 60.0)  # connect, read (a stalled stream counts as dropped)
    backoff: Backoff = Backoff()
    cancel: threading.Event | None = field(default=None, repr=False)
    validator: str | None = field(default=None, repr=False)  # of the entity being resumed
    final_url: str | None = field(default=None, repr=False)  # the last hop of the last request

    def get(self, url: str, offset: int) -> requests.Response:
        """The answer of `url` (redirects followed) from `offset`; 429/5xx waited out, then `rate_limited`."""
        return self.retrying(lambda: self._follow(url, offset), shown(url))

    def retrying(self, send: Callable[[], requests.Response], who: str,
                 on_backoff: Callable[[float], None] | None = None) -> requests.Response:
        """`send()`'s answer, each 429/5xx waited out (the wait, or the Retry-After when given up, handed to
        `on_backoff`), then `rate_limited`; `who` names the answering side in messages (never a query)."""
        failures = 0
        while True:
            response = send()
            status = response.status_code
            if status not in RETRY_STATUSES:
                return response
            failures += 1
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            response.close()
            delay = self.backoff.delay(failures, retry_after)
            if on_backoff is not None:
                on_backoff(retry_after if retry_after is not None else delay or self.backoff.longest_seconds)
            if delay is None:
                raise TransferFailed("rate_limited", f"{who} kept answering HTTP {status}", retryable=False)
            log.info("%s answered HTTP %d; trying again in %g s", who, status, delay)
            wait(delay, self.cancel)

    def _follow(self, url: str, offset: int) -> requests.Response:
        for _ in range(MAX_REDIRECTS + 1):
            response = self.request(url, offset)
            target = redirect_target(response, url)
            if target is None:
                self.final_url = url
                return response
            response.close()
            url = target
        raise TransferFailed("source_gone", f"more than {MAX_REDIRECTS} redirects from {shown(url)}")

    def request(self, url: str, offset: int, headers: dict[str, str] | None = None) -> requests.Response:
        sent = {"Accept-Encoding": "identity", "User-Agent": "modelsync", **(headers or {})}
        if offset:
            sent["Range"] = f"bytes={offset}-"
            if self.validator:
                sent["If-Range"] = self.validator
        try:
            return self.session.get(url, headers=sent, stream=True, timeout=self.timeout, allow_redirects=False)
        except requests.RequestException as exc:
            raise TransferFailed("source_gone", f"{shown(url)} cannot be reached: {type(exc).__name__}",
                                 retryable=True) from None

    def opened(self, response: requests.Response, offset: int,
               refuse: Callable[[requests.Response], NoReturn]) -> Opened:
        """The stream of a 200/206 (or 416 at the end) answer, asking again where the Range was not honoured;
        any other answer goes to `refuse`, which raises."""
        if offset and response.status_code == 200 and self.final_url:
            response.close()  # the Range was ignored, maybe by a hop: ask the final URL directly
            log.info("%s ignored the Range; asking it again directly", shown(self.final_url))
            response = self.get(self.final_url, offset)
        if offset and response.status_code == 416:
            total = declared_total(response)
            response.close()
            if total == offset:
                return Opened(offset, iter(()), lambda: None, total)
            response, offset = self.get(self.final_url or "", 0), 0
        if response.status_code == 206:
            said = content_range(response.headers.get("Content-Range"))
            if said is not None and said.start == offset:
                self.validator = self.validator or _validator(response)
                return Opened(offset, response_chunks(response, CHUNK_SIZE), response.close, declared_total(response))
            response.close()  # not the range asked for: start over
            response, offset = self.get(self.final_url or "", 0), 0
        if response.status_code != 200:
            refuse(response)
        if offset:
            log.info("%s does not resume; the file starts over", shown(self.final_url or ""))
        self.validator = _validator(response)
        return Opened(0, response_chunks(response, CHUNK_SIZE), response.close, declared_total(response))


def _validator(response: requests.Response) -> str | None:
    etag = response.headers.get("ETag")
    if etag and not etag.startswith("W/"):
        return etag
    return response.headers.get("Last-Modified")


def refuse_plain(url: str) -> Callable[[requests.Response], NoReturn]:
    def refuse(response: requests.Response) -> NoReturn:
        status = response.status_code
        response.close()
        if status in (404, 410):
            raise TransferFailed("not_found", f"{shown(url)} answered HTTP {status}")
        if status in (401, 403):
            raise TransferFailed("not_allowed", f"{shown(url)} refused the download (HTTP {status})")
        raise TransferFailed("source_gone", f"{shown(url)} answered HTTP {status}")
    return refuse


@dataclass
class UrlSource:
    url: str = field(repr=False)  # its query may hold a token: see `shown`
    sha256: str
    size: int | None = None
    limit: int | None = None
    http: ResumableGet = field(default_factory=ResumableGet, repr=False)
    download: ClassVar[bool] = True

    def __post_init__(self) -> None:
        checked_url(self.url)

    def __repr__(self) -> str:
        return f"UrlSource({shown(self.url)!r}, sha256={self.sha256!r})"

    @property
    def session(self) -> requests.Session:
        return self.http.session

    def open(self, offset: int) -> Opened:
        target = self.http.final_url if offset and self.http.final_url else self.url
        return self.http.opened(self.http.get(target, offset), offset, refuse_plain(self.url))
