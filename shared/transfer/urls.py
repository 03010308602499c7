"""URL hygiene for downloads: only http(s) with a host and a valid port is fetched, and a URL's query (it may hold
a token or a signature) and user info never reach a message or a log: only `shown(url)` (scheme://host/path) does."""
from __future__ import annotations

from urllib.parse import urlsplit

from .failures import TransferFailed


def shown(url: str) -> str:
    """The URL as messages and logs may show it: no user info, no query, no fragment. Never raises."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(a malformed URL)"
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ":(bad port)"
    return f"{parts.scheme}://{host}{port}{parts.path}"


def checked_url(url: str) -> str:
    """The URL when it is http(s) with a host and a valid port; else `url_refused`."""
    try:
        parts = urlsplit(url)
        usable = parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0  # .port: ValueError
    except ValueError:
        usable = False
    if not usable:
        raise TransferFailed("url_refused", "only http(s) URLs with a host and a valid port are fetched"
                             + (f", not {shown(url)}" if "://" in url else ""))
    return url
