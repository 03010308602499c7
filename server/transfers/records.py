"""A transfer order as the registry holds it and the API shows it, and an order as the destination node receives it."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from modelsync.shared.transfer.urls import shown

ACTIVE_STATES = ("queued", "running", "waiting_source", "verifying")
FINISHED_STATES = ("done", "failed", "cancelled")
STATES = ACTIVE_STATES + FINISHED_STATES
RESUMABLE_STATES = ("running", "verifying")  # the node may have restarted: it is handed the order again
# what an order may ask for; "auto": a peer holding the SHA256, else Civitai when the registry knows its version
SOURCE_MODES = ("auto", "peer", "civitai", "url")
REQUESTERS = ("admin", "node", "queue")
NO_ONLINE_HOLDER = "no_online_holder"  # the reason of a transfer waiting for a source, when nothing failed


@dataclass(frozen=True)
class Transfer:
    """One row of `transfers`. Holds no grant: grants are made per order and never stored."""

    id: int
    server_id: str  # the destination node
    sha256: str
    model_id: int | None
    state: str
    source_kind: str
    source_server_id: str | None  # the source the node reported using last
    requested_source_id: str | None  # the only source to use, when the order named one
    source_ref: str | None  # 'civitai': the version id; 'url': the URL as ordered (its query is never shown)
    bytes_done: int
    size: int | None
    speed_bps: float | None
    eta_seconds: float | None
    dest_path: str | None
    rel_name: str | None  # the name the source uses, relative to its root
    role: str | None
    reason: str | None
    error: str | None
    reason_at: str | None
    attempts: int
    requested_by: str
    created_at: str
    updated_at: str
    finished_at: str | None
    civitai_model_id: int | None = None
    civitai_model_name: str | None = None
    civitai_version_id: int | None = None
    civitai_version_name: str | None = None
    civitai_file_id: int | None = None
    civitai_file_name: str | None = None

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    def to_dict(self) -> dict[str, Any]:
        """The API's transfer."""
        return {
            "id": self.id,
            "server_id": self.server_id,
            "sha256": self.sha256,
            "model_id": self.model_id,
            "state": self.state,
            "source": self.source(),
            "bytes_done": self.bytes_done,
            "size": self.size,
            "speed_bps": self.speed_bps,
            "eta_seconds": self.eta_seconds,
            "dest_path": self.dest_path,
            "reason": self.reason,
            "error": self.error,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }

    def source(self) -> dict[str, Any]:
        civitai = None
        if self.source_kind == "civitai":
            civitai = {"model_id": self.civitai_model_id, "model_name": self.civitai_model_name,
                       "version_id": self.civitai_version_id, "version_name": self.civitai_version_name,
                       "file_id": self.civitai_file_id, "file_name": self.civitai_file_name}
        return {"kind": self.source_kind, "server_id": self.source_server_id or self.requested_source_id,
                "civitai": civitai, "url": shown_url(self.source_ref) if self.source_kind == "url" else None}


def shown_url(url: str | None) -> str | None:
    """A URL as answers, logs and pages show it (shared/transfer/url_source.py `shown`): never its query (it may hold
    a token), its fragment or credentials."""
    return shown(url) if url else None


@dataclass(frozen=True)
class TransferPage:
    transfers: list[Transfer]
    total: int
    limit: int
    offset: int

    def to_dict(self) -> dict[str, Any]:
        return {"transfers": [t.to_dict() for t in self.transfers], "total": self.total, "limit": self.limit,
                "offset": self.offset}


@dataclass(frozen=True)
class OrderSource:
    server_id: str
    url: str
    grant: str = field(repr=False)  # a bearer credential: never in a repr, a log or a stored row

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "peer", "server_id": self.server_id, "url": self.url, "grant": self.grant}


@dataclass(frozen=True)
class CivitaiOrderSource:
    """Civitai's download endpoint of one file; `api_key` only when the server shares its key (a secret)."""

    version_id: int
    file_id: int
    download_url: str
    version: dict[str, Any] = field(repr=False)
    api_key: str | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        found = {"kind": "civitai", "version_id": self.version_id, "file_id": self.file_id,
                 "download_url": self.download_url, "version": self.version}
        if self.api_key:
            found["api_key"] = self.api_key
        return found


@dataclass(frozen=True)
class UrlOrderSource:
    url: str = field(repr=False)  # its query may hold a token

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "url", "url": self.url}


@dataclass(frozen=True)
class Order:
    """What the destination node should fetch now, and from where (best source first), each with its grant."""

    transfer_id: int
    sha256: str
    size: int | None
    rel_name: str  # made safe
    role: str | None
    sources: tuple[OrderSource | CivitaiOrderSource | UrlOrderSource, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"transfer_id": self.transfer_id, "sha256": self.sha256, "size": self.size, "rel_name": self.rel_name,
                "role": self.role, "sources": [s.to_dict() for s in self.sources]}
