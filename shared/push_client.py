"""Node → central server client: push the inventory (gzip), heartbeat, fetch previews.

Used by `modelsync scan --push` and by the Forge extension. A node's token comes from the command line,
MODELSYNC_TOKEN, or the token file the client wrote when the server registered the node on first contact.
Connection errors and 5xx answers are retried with exponential back-off (urllib3 Retry); every request is
idempotent (a sync is a full snapshot), so POSTs are retried too.
"""
from __future__ import annotations

import gzip
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from .atomic_write import write_atomic
from .inventory import Inventory

log = logging.getLogger(__name__)

TOKEN_FILE = "node_tokens.json"
PREVIEW_SUFFIX = ".preview.jpeg"


class PushError(Exception):
    """The server refused or could not be reached; `status` is the HTTP status (None: no answer). str() is one
    sentence that says what is wrong and what to do."""

    def __init__(self, message: str, status: int | None = None, field: str | None = None):
        super().__init__(message)
        self.status = status
        self.field = field


def check_server_url(url: str) -> str:
    """The central server's base URL, or PushError saying how to write one."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PushError(f"{url!r} is not a server URL: write it with its scheme, e.g. http://{url.strip() or 'central'}:8188"
                        if "://" not in url else f"{url!r} is not a server URL: it must start with http:// or https://")
    return url.strip().rstrip("/") + "/"


def describe_failure(exc: requests.RequestException, base_url: str, connect_timeout: float, read_timeout: float) -> str:
    """What a failed request means, in words."""
    host = urlsplit(base_url).hostname or base_url
    text = str(exc)
    # with urllib3 retries configured, a timeout reaches us as a ConnectionError wrapping urllib3's error
    if isinstance(exc, requests.ConnectTimeout) or "ConnectTimeoutError" in text:
        return (f"no answer from {base_url} within {connect_timeout:g} s of connecting: check the host and the port, "
                "and any firewall between")
    if isinstance(exc, requests.ReadTimeout) or "Read timed out" in text:
        return f"{base_url} took the connection but did not answer within {read_timeout:g} s: the server is stuck or overloaded"
    if isinstance(exc, requests.ConnectionError):
        if any(s in text for s in ("Name or service not known", "nodename nor servname", "Failed to resolve",
                                   "Temporary failure in name resolution", "No address associated")):
            return f"unknown host {host!r}: check the server URL"
        if "Connection refused" in text or "Errno 111" in text:
            return f"nothing listens at {base_url} (connection refused): is `modelsync serve` running there, on that port?"
        return f"the connection to {base_url} failed: {type(exc).__name__}; check that the central server is running"
    return f"cannot reach {base_url}: {type(exc).__name__}"


@dataclass
class NodeCredentials:
    """A node's identity toward the central server; `store` is where a token given at registration is kept."""

    server_id: str
    token: str | None = None
    store: Path | None = None

    @classmethod
    def load(cls, data_path: Path, server_id: str, token: str | None = None) -> "NodeCredentials":
        """An explicit token wins; else the token stored for this server_id under data_path (if any)."""
        store = Path(data_path) / TOKEN_FILE
        if token is None and store.is_file():
            try:
                token = json.loads(store.read_text()).get(server_id)
            except (OSError, ValueError) as exc:
                log.warning("cannot read %s: %s", store, exc)
        return cls(server_id, token, store)

    def remember(self, token: str) -> None:
        """Keep the token the server generated (readable by this user only)."""
        self.token = token
        if self.store is None:
            return
        tokens: dict[str, str] = {}
        if self.store.is_file():
            try:
                tokens = json.loads(self.store.read_text())
            except (OSError, ValueError):
                tokens = {}
        tokens[self.server_id] = token
        self.store.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.store, json.dumps(tokens, indent=2).encode(), mode=0o600)
        log.info("node %s registered; its token is stored in %s", self.server_id, self.store)


def _session(retries: int, backoff: float) -> requests.Session:
    retry = Retry(
        total=retries,
        connect=retries,
        read=retries,
        status=retries,
        backoff_factor=backoff,
        status_forcelist=(500, 502, 503, 504),
        allowed_methods=None,  # every method: sync and heartbeat are idempotent
        respect_retry_after_header=True,
        raise_on_status=False,
    )
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


class ServerClient:
    def __init__(
        self,
        base_url: str,
        credentials: NodeCredentials,
        *,
        timeout: float = 120.0,
        connect_timeout: float = 10.0,
        retries: int = 4,
        backoff: float = 0.5,
        session: requests.Session | None = None,
    ):
        self.base_url = check_server_url(base_url)
        self.credentials = credentials
        self.timeout = timeout  # for the answer (a large sync is read, merged and committed first)
        self.connect_timeout = connect_timeout
        self.session = session or _session(retries, backoff)

    def _url(self, path: str) -> str:
        return urljoin(self.base_url, path.lstrip("/"))

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": "modelsync-node"}
        if self.credentials.token:
            headers["Authorization"] = f"Bearer {self.credentials.token}"
        return headers

    def _request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        """The server's JSON answer; PushError (with the status and the field the server named) otherwise."""
        headers = {**self._headers(), **kwargs.pop("headers", {})}
        timeout = kwargs.pop("timeout", self.timeout)
        connect = min(self.connect_timeout, timeout)
        try:
            response = self.session.request(method, self._url(path), headers=headers, timeout=(connect, timeout), **kwargs)
        except requests.RequestException as exc:
            raise PushError(describe_failure(exc, self.base_url, connect, timeout)) from None
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if response.status_code not in (200, 201):
            message = answer.get("error") if isinstance(answer, dict) else None
            field = answer.get("field") if isinstance(answer, dict) else None
            raise PushError(self._refusal(response.status_code, path, message), response.status_code, field)
        if not isinstance(answer, dict):
            raise PushError(f"{self.base_url} answered, but not as a modelsync server does (no JSON object): check the URL",
                            response.status_code)
        return answer

    def _refusal(self, status: int, path: str, message: str | None) -> str:
        if message is None or (status == 404 and message == "Not Found"):
            return f"{self.base_url} answered HTTP {status} for /{path.lstrip('/')}, not as a modelsync server does: check the URL"
        if status == 403 and self.credentials.token and self.credentials.store is not None and "token" in message:
            return (f"HTTP 403: {message}. This node's token is stored in {self.credentials.store}: ask the admin for a "
                    f"new one (`modelsync token issue {self.credentials.server_id}` on the server) and pass it with --token")
        return f"HTTP {status}: {message}"

    def get_json(self, path: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return self._request("GET", path, params=params)

    def post_json(self, path: str, body: Any) -> dict[str, Any]:
        return self._request("POST", path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})

    def delete_json(self, path: str) -> dict[str, Any]:
        return self._request("DELETE", path)

    def _post(self, path: str, body: bytes, extra_headers: dict[str, str]) -> dict[str, Any]:
        answer = self._request("POST", path, data=body, headers=extra_headers)
        if answer.get("token"):
            self.credentials.remember(answer["token"])
        return answer

    def push_inventory(self, inventory: Inventory) -> dict[str, Any]:
        """Send the full inventory (gzip); the answer has added/updated/removed/unchanged and `enriched`."""
        if inventory.server_id != self.credentials.server_id:
            raise PushError(f"the inventory is for {inventory.server_id!r}, the credentials for {self.credentials.server_id!r}")
        body = gzip.compress(inventory.to_json(), compresslevel=6)
        return self._post(
            f"api/v1/servers/{self.credentials.server_id}/models/sync",
            body,
            {"Content-Type": "application/json", "Content-Encoding": "gzip"},
        )

    def heartbeat(self, display_name: str | None = None, api_url: str | None = None) -> dict[str, Any]:
        body = {k: v for k, v in {"display_name": display_name, "api_url": api_url}.items() if v is not None}
        return self._post(
            f"api/v1/servers/{self.credentials.server_id}/heartbeat", json.dumps(body).encode(), {"Content-Type": "application/json"}
        )

    def upload_preview(self, sha256: str, data: bytes) -> dict[str, Any]:
        return self._request("PUT", f"api/v1/servers/{self.credentials.server_id}/previews/{sha256}", data=data,
                             headers={"Content-Type": "application/octet-stream"})

    def node_counts(self, server_id: str, page_size: int = 500, timeout: float = 10) -> dict[str, int]:
        """SHA256 -> how many fleet nodes hold the model, for every model `server_id` holds; read page by page
        from GET /api/v1/models, each page within `timeout` seconds (a table is waiting for it, not a push)."""
        params: dict[str, Any] = {"limit": page_size, "sort": "id", "server": server_id}
        counts: dict[str, int] = {}
        page, pages = 1, 1
        while page <= pages:
            answer = self._request("GET", "api/v1/models", params={**params, "page": page}, timeout=timeout)
            counts.update({m["sha256"]: int(m.get("node_count") or 0) for m in answer.get("models", []) if m.get("sha256")})
            pages = int(answer.get("pages") or 0)
            page += 1
        return counts

    def fetch_preview(self, preview_url: str, max_bytes: int = 20 * 1024 * 1024) -> bytes | None:
        """A preview's JPEG bytes (`preview_url` as the sync answer gives it); None when the server has none."""
        try:
            response = self.session.get(self._url(preview_url), headers=self._headers(),
                                        timeout=(self.connect_timeout, self.timeout), stream=True)
        except requests.RequestException as exc:
            raise PushError(describe_failure(exc, self.base_url, self.connect_timeout, self.timeout)) from None
        with response:
            if response.status_code == 404:
                return None
            if response.status_code != 200:
                raise PushError(f"HTTP {response.status_code} fetching {preview_url}", response.status_code)
            data = bytearray()
            for chunk in response.iter_content(64 * 1024):
                data.extend(chunk)
                if len(data) > max_bytes:
                    raise PushError(f"the preview {preview_url} is over {max_bytes} bytes")
        return bytes(data)

    def save_previews(self, inventory: Inventory, answer: dict[str, Any]) -> list[str]:
        """Write `<stem>.preview.jpeg` beside every copy that has no preview, for models the server has one of.
        Returns the files written; a preview that cannot be fetched or written is logged and skipped."""
        written: list[str] = []
        enriched = answer.get("enriched") or {}
        for f in inventory.files:
            entry = enriched.get(f.sha256) if f.sha256 else None
            if not entry or not entry.get("preview_url") or f.has_preview:
                continue
            target = preview_path(f.path)
            if os.path.exists(target):
                continue
            try:
                data = self.fetch_preview(entry["preview_url"])
                if data is None:
                    continue
                write_atomic(target, data)
            except (PushError, OSError) as exc:  # one preview lost, not the others
                log.warning("cannot write preview %s: %s", target, exc)
                continue
            written.append(target)
        return written


def send_previews(client: "ServerClient", inventory: Inventory, answer: dict[str, Any], max_bytes: int = 8 * 1024 * 1024) -> list[str]:
    """Send the local `<stem>.preview.jpeg` of each model the server asked for (`previews_wanted`), once per model.
    Returns the previews sent; one that cannot be read or is refused is logged and skipped."""
    wanted = set(answer.get("previews_wanted") or [])
    sent: list[str] = []
    for f in inventory.usable_files():
        if f.sha256 not in wanted or not f.has_preview:
            continue
        source = preview_path(f.path)
        try:
            if os.path.getsize(source) > max_bytes:
                log.warning("preview %s is over %d bytes; not sent", source, max_bytes)
                continue
            with open(source, "rb") as image:
                data = image.read()
            stored = client.upload_preview(f.sha256, data)
        except (OSError, PushError) as exc:
            log.warning("cannot send preview %s: %s", source, exc)
            continue
        wanted.discard(f.sha256)
        if stored.get("stored"):
            sent.append(source)
    return sent


def preview_path(model_path: str) -> str:
    """Where a node keeps a model's preview: `<stem>.preview.jpeg` beside it (A1111/Forge look there)."""
    directory, name = os.path.split(model_path)
    return os.path.join(directory, os.path.splitext(name)[0] + PREVIEW_SUFFIX)
