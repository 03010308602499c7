"""Civitai API client: model versions by SHA256 (one or up to 100 at once), preview images.

404 means "unknown to Civitai"; 429 and 5xx are handed back with their Retry-After so the caller (the central
server's worker) slows the whole fleet down; a timeout or connection error is an error, never "unknown".
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import requests

from ..transfer.urls import shown

DEFAULT_BASE = "https://civitai.com"
BULK_LIMIT = 100


@dataclass
class LookupResult:
    status: str  # found | not_found | rate_limited | error
    data: dict[str, Any] | None = None
    retry_after: float | None = None
    error: str | None = None


@dataclass
class BulkResult:
    status: str  # ok | rate_limited | error
    found: dict[str, dict[str, Any]] = field(default_factory=dict)  # sha256 (lowercase) -> version object
    not_found: list[str] = field(default_factory=list)
    retry_after: float | None = None
    error: str | None = None


class ImageRejected(ValueError):
    """An image URL or response that is not fetched or kept; str() is the reason (the URL only as `shown`: its query
    may be signed). `transient` failures (429,
    5xx, timeouts, connection errors) are worth another try, after `retry_after` seconds when the server said."""

    def __init__(self, reason: str, transient: bool = False, retry_after: float | None = None):
        super().__init__(reason)
        self.transient = transient
        self.retry_after = retry_after


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Retry-After as delay-seconds or an HTTP-date (from `now`, default the clock); None when absent or unreadable."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - (now or datetime.now(timezone.utc))).total_seconds())


class CivitaiClient:
    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 30,
        session: requests.Session | None = None,
    ):
        self.base_url = (base_url or os.environ.get("CIVITAI_API_BASE") or DEFAULT_BASE).rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("CIVITAI_API_KEY") or None
        self.timeout = timeout
        self.session = session or requests.Session()

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": "modelsync"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def _failure(self, response: requests.Response) -> tuple[str, float | None, str]:
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        if response.status_code == 429:
            return "rate_limited", retry_after, "HTTP 429: rate limited"
        return "error", retry_after, f"HTTP {response.status_code}: {response.text[:200]}"

    def _call(self, method: str, url: str, **kwargs: Any) -> tuple[Any, str, float | None, str | None]:
        """(decoded JSON or None, status, retry_after, error); status is ok | not_found | rate_limited | error."""
        try:
            response = self.session.request(method, url, headers=self._headers(), timeout=self.timeout, **kwargs)
        except requests.RequestException as exc:
            return None, "error", None, f"{type(exc).__name__}: {exc}"
        if response.status_code == 404:
            return None, "not_found", None, None
        if response.status_code != 200:
            status, retry_after, error = self._failure(response)
            return None, status, retry_after, error
        try:
            return response.json(), "ok", None, None
        except ValueError:
            return None, "error", None, "answer is not JSON"

    def by_hash(self, sha256: str) -> LookupResult:
        return self._lookup(f"/api/v1/model-versions/by-hash/{sha256.upper()}")

    def model(self, model_id: int) -> LookupResult:
        """GET /api/v1/models/{id}: the model with every published version (`modelVersions[]`)."""
        return self._lookup(f"/api/v1/models/{int(model_id)}")

    def model_version(self, version_id: int) -> LookupResult:
        """GET /api/v1/model-versions/{id}: the version with its files and their hashes."""
        return self._lookup(f"/api/v1/model-versions/{int(version_id)}")

    def _lookup(self, path: str) -> LookupResult:
        data, status, retry_after, error = self._call("GET", f"{self.base_url}{path}")
        if status != "ok":
            return LookupResult(status, retry_after=retry_after, error=error)
        if not isinstance(data, dict):
            return LookupResult("error", error="answer is not a JSON object")
        return LookupResult("found", data=data)

    def by_hashes(self, sha256s: list[str]) -> BulkResult:
        if len(sha256s) > BULK_LIMIT:
            raise ValueError(f"at most {BULK_LIMIT} hashes per request")
        url = f"{self.base_url}/api/v1/model-versions/by-hash"
        versions, status, retry_after, error = self._call("POST", url, json=[h.upper() for h in sha256s])
        if status != "ok":
            return BulkResult("error" if status == "not_found" else status, retry_after=retry_after, error=error or "HTTP 404")
        if not isinstance(versions, list):
            return BulkResult("error", error="answer is not a JSON list")
        wanted = {h.lower() for h in sha256s}
        result = BulkResult("ok")
        for version in versions:
            for f in (version.get("files") or []) if isinstance(version, dict) else []:
                sha = str((f.get("hashes") or {}).get("SHA256", "")).lower() if isinstance(f, dict) else ""
                if sha in wanted:
                    result.found.setdefault(sha, version)
        result.not_found = sorted(wanted - set(result.found))
        return result

    def download_image(self, url: str, allowed_hosts: set[str], max_bytes: int = 20 * 1024 * 1024) -> tuple[bytes, str]:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        if parts.scheme not in ("http", "https"):
            raise ImageRejected(f"not an http(s) URL: {shown(url)}")
        if not any(host == h or host.endswith("." + h) for h in allowed_hosts):
            raise ImageRejected(f"host {host!r} is not an allowed image host")
        try:
            with self.session.get(url, timeout=self.timeout, stream=True, headers={"User-Agent": "modelsync"}) as response:
                if response.status_code != 200:
                    status = response.status_code
                    raise ImageRejected(f"HTTP {status} for {shown(url)}", transient=status == 429 or status >= 500,
                                        retry_after=parse_retry_after(response.headers.get("Retry-After")))
                content_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
                if not content_type.startswith("image/"):
                    raise ImageRejected(f"content type {content_type or 'missing'!r} is not an image")
                data = bytearray()
                for chunk in response.iter_content(64 * 1024):
                    data.extend(chunk)
                    if len(data) > max_bytes:
                        raise ImageRejected(f"image larger than {max_bytes} bytes")
        except requests.RequestException as exc:
            raise ImageRejected(f"{type(exc).__name__} for {shown(url)}", transient=True) from None  # str(exc) has the query
        return bytes(data), content_type
