"""Civitai as a transfer source: its download endpoint, asked with the API key and without following the redirect,
then the signed storage URL it points at, fetched without the key (the storage host is whatever Civitai names).

Civitai's answers (see docs/downloads.md): a redirect to the storage is the file; 401 or a redirect to the login page
(`reason=download-auth`) is `auth_required`; 403 `{"error": "Early Access", "deadline": ...}` or a redirect with
`reason=early-access` is `early_access`; 404 is `not_found`; 429/5xx are backed off (1 s doubling to 30 s, at least
the Retry-After; each wait is handed to `on_backoff`, which the node reports so the fleet backs off) and then
`rate_limited`. A 401/403/404 from the storage is an expired signed URL: the endpoint is
asked again for a fresh one. The key never leaves this module except in the Authorization header to the endpoint."""
from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, NoReturn
from urllib.parse import parse_qs, urlsplit

import requests

from ..transfer.failures import TransferFailed
from ..transfer.source import Opened
from ..transfer.url_source import ResumableGet, redirect_target
from ..transfer.urls import checked_url, shown

log = logging.getLogger(__name__)

MAX_FRESH_URLS = 3  # signed URLs asked for in one open before the storage's refusals count as the source gone
SIZE_SLACK = 1024 * 1024  # sizeKB is rounded: a stream may exceed sizeKB * 1024 by this much, not more
ERROR_BODY_LIMIT = 4096
KEY_HINT = "set CIVITAI_API_KEY on the node (or MODELSYNC_SHARE_CIVITAI_KEY=true on the central server)"


def expected_file(version: dict[str, Any], file_id: int | None) -> dict[str, Any]:
    """The version's file a download fetches (by id; None: the primary one). `no_hash` when Civitai lists no
    SHA256 for it: nothing could verify the bytes, so no request is made."""
    files = [f for f in version.get("files") or [] if isinstance(f, dict)]
    chosen = next((f for f in files if f.get("id") == file_id), None) if file_id is not None else \
        next((f for f in files if f.get("primary")), files[0] if files else None)
    if chosen is None:
        raise TransferFailed("not_found", f"version {version.get('id')} lists no file {file_id}")
    sha256 = (chosen.get("hashes") or {}).get("SHA256")
    if not isinstance(sha256, str) or len(sha256) != 64:
        raise TransferFailed("no_hash", f"Civitai lists no SHA256 for {chosen.get('name')!r} (file {chosen.get('id')}) "
                             f"of version {version.get('id')}: nothing could verify it")
    return chosen


def size_limit(file: dict[str, Any]) -> int | None:
    """The most bytes the file may have, from Civitai's rounded `sizeKB`."""
    size_kb = file.get("sizeKB")
    return round(size_kb * 1024) + SIZE_SLACK if isinstance(size_kb, (int, float)) and size_kb > 0 else None


class _Expired(Exception):
    """The storage refused the signed URL: ask the endpoint for a fresh one."""


@dataclass
class CivitaiSource:
    download_url: str  # Civitai's endpoint: {base}/api/download/models/{version_id}?fileId={file_id}
    sha256: str
    api_key: str | None = field(default=None, repr=False)
    size: int | None = None
    limit: int | None = None
    http: ResumableGet = field(default_factory=ResumableGet, repr=False)
    on_backoff: Callable[[float], None] | None = field(default=None, repr=False)  # seconds, after a 429/5xx
    _storage_url: str | None = field(default=None, init=False, repr=False)  # signed: its query is a credential
    download: ClassVar[bool] = True

    def __post_init__(self) -> None:
        checked_url(self.download_url)

    @property
    def session(self) -> requests.Session:
        return self.http.session

    def open(self, offset: int) -> Opened:
        for _ in range(MAX_FRESH_URLS):
            if self._storage_url is None:
                self._storage_url = self._resolve()
            try:
                return self.http.opened(self.http.get(self._storage_url, offset), offset, self._refuse_storage)
            except _Expired:
                log.info("the storage refused the signed URL for %s; asking Civitai for a fresh one",
                         shown(self.download_url))
                self._storage_url = None
        raise TransferFailed("source_gone", f"the storage refused {MAX_FRESH_URLS} fresh download URLs from "
                             f"{shown(self.download_url)}")

    def _resolve(self) -> str:
        """The storage URL Civitai's endpoint redirects to; raises the terminal answers."""
        authorization = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else None
        response = self.http.retrying(  # one hop: the redirect is resolved below
            lambda: self.http.request(self.download_url, 0, authorization), f"Civitai ({shown(self.download_url)})",
            self.on_backoff)
        with response:
            target = redirect_target(response, self.download_url)
            if target is None:
                self._refuse_endpoint(response)
        reason = (parse_qs(urlsplit(target).query).get("reason") or [""])[0]
        if reason == "download-auth" or urlsplit(target).path.rstrip("/").endswith("/login"):
            raise TransferFailed("auth_required", self._auth_message("redirected to its login page"))
        if reason == "early-access":
            raise TransferFailed("early_access", f"{shown(self.download_url)} is in Civitai's early access")
        return target

    def _auth_message(self, what: str) -> str:
        if self.api_key:
            return f"Civitai {what} with the API key given: check CIVITAI_API_KEY"
        return f"Civitai {what}: this download needs an API key; {KEY_HINT}"

    def _refuse_endpoint(self, response: requests.Response) -> NoReturn:
        status = response.status_code
        if status == 401:
            raise TransferFailed("auth_required", self._auth_message("answered HTTP 401"))
        if status in (404, 410):
            raise TransferFailed("not_found", f"Civitai has no file at {shown(self.download_url)} (HTTP {status})")
        if status == 403:
            said = _json_object(response)
            if str(said.get("error", "")).lower().replace("_", " ") == "early access":
                deadline = said.get("deadline")
                until = f" until {str(deadline)[:10]}" if isinstance(deadline, str) and deadline else ""
                raise TransferFailed("early_access", f"{shown(self.download_url)} is in Civitai's early access{until}")
            raise TransferFailed("not_allowed", f"Civitai refused {shown(self.download_url)} (HTTP 403)")
        raise TransferFailed("source_gone", f"Civitai answered HTTP {status} without the file for "
                             f"{shown(self.download_url)}")

    @staticmethod
    def _refuse_storage(response: requests.Response) -> NoReturn:
        status = response.status_code
        response.close()
        if status in (401, 403, 404, 410):
            raise _Expired()
        raise TransferFailed("source_gone", f"the storage answered HTTP {status}")


def _json_object(response: requests.Response) -> dict[str, Any]:
    try:
        said = json.loads(response.raw.read(ERROR_BODY_LIMIT, decode_content=True))
    except (ValueError, AttributeError, requests.RequestException, OSError):
        return {}
    return said if isinstance(said, dict) else {}
