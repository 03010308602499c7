"""The node agent's requests to the central server: the push client's, with the URL peers fetch this node's files
from (`files_url`, in every sync and heartbeat), plus the transfer orders (a long-poll) and progress reports.
An order's sources are of three kinds: a peer node (with its grant), Civitai (its download endpoint, the version's
JSON, maybe the server's key) and a URL; none of their secrets is ever in a repr or a log."""
from __future__ import annotations

import gzip
import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any

from ..inventory import Inventory
from ..push_client import PushError, ServerClient
from ..transfer.protocol import FILES_PATH

log = logging.getLogger(__name__)

MAX_WAIT_SECONDS = 30  # the longest long-poll the server holds
REPORT_TIMEOUT_SECONDS = 15.0
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class OrderSource:
    server_id: str
    base_url: str  # the source node's files URL (the order's URL less the file path)
    grant: str = field(repr=False)  # a bearer credential: never in a repr or a log
    kind = "peer"


@dataclass(frozen=True)
class CivitaiOrderSource:
    version_id: int
    file_id: int
    download_url: str  # Civitai's endpoint (no credential in it)
    version: dict[str, Any] = field(repr=False, compare=False)  # the model-version JSON: sidecar, preview, SHA256
    api_key: str | None = field(default=None, repr=False)  # the server's, when it shares it: a secret
    kind = "civitai"
    server_id = None


@dataclass(frozen=True)
class UrlOrderSource:
    url: str = field(repr=False)  # its query may hold a token
    kind = "url"
    server_id = None


AnySource = OrderSource | CivitaiOrderSource | UrlOrderSource


@dataclass(frozen=True)
class TransferOrder:
    transfer_id: int
    sha256: str
    size: int | None  # None: not known exactly (a Civitai or URL download); the stream's length and SHA256 decide
    rel_name: str
    role: str | None
    sources: tuple[AnySource, ...]


def _source(data: Any, sha256: str) -> AnySource | None:
    if not isinstance(data, dict):
        return None
    kind = data.get("kind", "peer")
    if kind == "civitai":
        version_id, file_id, url, version = (data.get(k) for k in ("version_id", "file_id", "download_url", "version"))
        api_key = data.get("api_key")
        if not (isinstance(version_id, int) and isinstance(file_id, int) and isinstance(url, str)
                and isinstance(version, dict) and (api_key is None or isinstance(api_key, str))):
            return None
        return CivitaiOrderSource(version_id, file_id, url, version, api_key or None)
    if kind == "url":
        url = data.get("url")
        return UrlOrderSource(url) if isinstance(url, str) else None
    server_id, url, grant = data.get("server_id"), data.get("url"), data.get("grant")
    suffix = FILES_PATH + sha256
    if not (kind == "peer" and isinstance(server_id, str) and isinstance(url, str) and isinstance(grant, str)
            and url.endswith(suffix)):
        return None
    return OrderSource(server_id, url[: -len(suffix)], grant)


STANDING_STATES = frozenset({"queued", "running", "waiting_source", "verifying"})


def parse_order(data: Any) -> TransferOrder | None:
    """One order of the server's answer; None (logged) when it is not one this node can run."""
    if not isinstance(data, dict):
        return None
    transfer_id, sha256, size, rel_name, role = (data.get(k) for k in ("transfer_id", "sha256", "size", "rel_name", "role"))
    sources = [_source(s, sha256) for s in data.get("sources") or []] if isinstance(sha256, str) else []
    usable = (isinstance(transfer_id, int) and isinstance(sha256, str) and _SHA256.fullmatch(sha256)
              and (size is None or isinstance(size, int) and size >= 0) and isinstance(rel_name, str) and (role is None or isinstance(role, str))
              and all(s is not None for s in sources))
    if not usable:
        log.warning("an order from the central server is not one this node can run (transfer %r); ignored", transfer_id)
        return None
    return TransferOrder(transfer_id, sha256, size, rel_name, role, tuple(s for s in sources if s is not None))


class NodeClient(ServerClient):
    files_url: str | None = None  # sent with every sync and heartbeat when set

    def push_inventory(self, inventory: Inventory) -> dict[str, Any]:
        if inventory.server_id != self.credentials.server_id:
            raise PushError(f"the inventory is for {inventory.server_id!r}, the credentials for {self.credentials.server_id!r}")
        body = {**inventory.to_dict(), **self._files_url()}
        return self._post(f"api/v1/servers/{self.credentials.server_id}/models/sync",
                          gzip.compress(json.dumps(body, separators=(",", ":")).encode(), compresslevel=6),
                          {"Content-Type": "application/json", "Content-Encoding": "gzip"})

    def heartbeat(self, display_name: str | None = None, api_url: str | None = None,
                  state: dict[str, Any] | None = None) -> dict[str, Any]:
        """`state`: what the node is doing (shared/node/state.py StateReport.to_dict())."""
        body = {k: v for k, v in {"display_name": display_name, "api_url": api_url, "state": state}.items() if v is not None}
        return self._post(f"api/v1/servers/{self.credentials.server_id}/heartbeat",
                          json.dumps({**body, **self._files_url()}).encode(), {"Content-Type": "application/json"})

    def _files_url(self) -> dict[str, str]:
        return {"files_url": self.files_url} if self.files_url else {}

    def orders(self, wait: float, running: list[int]) -> list[TransferOrder]:
        """This node's transfers to start now; the server holds the request up to `wait` seconds until there is one.
        `running`: the transfers this node runs now (not handed out again)."""
        wait = max(0, min(int(wait), MAX_WAIT_SECONDS))
        params: dict[str, Any] = {"wait": wait}
        if running:
            params["running"] = ",".join(str(i) for i in sorted(running))
        answer = self._request("GET", f"api/v1/servers/{self.credentials.server_id}/transfers/orders", params=params,
                               timeout=wait + self.connect_timeout + 10)
        found = answer.get("orders")
        if not isinstance(found, list):
            raise PushError(f"{self.base_url} answered the orders without a list of orders: not a modelsync server of "
                            "this version?", 200)
        return [order for order in map(parse_order, found) if order is not None]

    def standing_transfers(self) -> set[str]:
        """The SHA256s of this node's transfers that are not finished (queued, running, waiting for a source):
        their temp files are kept at start-up even when the orders do not hand them out now."""
        answer = self._request("GET", "api/v1/transfers", params={"server_id": self.credentials.server_id, "limit": 500},
                               timeout=REPORT_TIMEOUT_SECONDS)
        return {t["sha256"] for t in answer.get("transfers", []) if t.get("state") in STANDING_STATES}

    def report(self, transfer_id: int, state: str, **fields: Any) -> dict[str, Any]:
        """A transfer's progress or outcome; the answer is the transfer as the server holds it now."""
        body = {"state": state, **{k: v for k, v in fields.items() if v is not None}}
        return self._request("POST", f"api/v1/transfers/{transfer_id}/progress", data=json.dumps(body).encode(),
                             headers={"Content-Type": "application/json"}, timeout=REPORT_TIMEOUT_SECONDS)
