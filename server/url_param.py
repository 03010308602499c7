"""An http(s) URL from a request body, checked the one way every route takes one: a files URL peers fetch from,
a URL a transfer downloads, a webhook endpoint. A wrong value is a 400 naming its field."""
from __future__ import annotations

from typing import Any
from urllib.parse import SplitResult, urlsplit

from .errors import ApiError

MAX_URL_CHARS = 2048


def http_url(value: Any, name: str, *, query_allowed: bool) -> SplitResult:
    """http or https, a host, a valid port, no credentials (they would be shown with it), no spaces or control
    characters; no query or fragment either unless `query_allowed` (a URL handed to other nodes carries none)."""
    if not isinstance(value, str) or not value or len(value) > MAX_URL_CHARS:
        raise ApiError(400, f"{name} must be a URL of at most {MAX_URL_CHARS} characters", name)
    try:
        parts = urlsplit(value)
        port = parts.port  # a malformed or out-of-range port raises
    except ValueError:
        raise ApiError(400, f"{name} is not a URL", name) from None
    if parts.scheme not in ("http", "https") or not parts.hostname or port == 0:
        raise ApiError(400, f"{name} must be an http or https URL with a host", name)
    if parts.username is not None or parts.password is not None:
        raise ApiError(400, f"{name} must not carry credentials (user:password@): they would be shown with it", name)
    if any(ch.isspace() or ord(ch) < 32 for ch in value):
        raise ApiError(400, f"{name} must not contain spaces or control characters", name)
    if not query_allowed and (parts.query or parts.fragment):
        raise ApiError(400, f"{name} must have no query or fragment: it is handed to other nodes", name)
    return parts
