"""A transfer order as the registry holds it and the API shows it, and an order as the destination node receives it."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ACTIVE_STATES = ("queued", "running", "waiting_source", "verifying")
FINISHED_STATES = ("done", "failed", "cancelled")
STATES = ACTIVE_STATES + FINISHED_STATES
RESUMABLE_STATES = ("running", "verifying")  # the node may have restarted: it is handed the order again
SOURCE_MODES = ("auto", "peer")  # what an order may ask for; "auto" is a peer until downloads come
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
    source_ref: str | None  # 'civitai' / 'url' sources: the version or the URL
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
            "source": {"kind": self.source_kind, "server_id": self.source_server_id or self.requested_source_id},
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
        return {"server_id": self.server_id, "url": self.url, "grant": self.grant}


@dataclass(frozen=True)
class Order:
    """What the destination node should fetch now, and from where (best source first), each with its grant."""

    transfer_id: int
    sha256: str
    size: int | None
    rel_name: str  # made safe
    role: str | None
    sources: tuple[OrderSource, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"transfer_id": self.transfer_id, "sha256": self.sha256, "size": self.size, "rel_name": self.rel_name,
                "role": self.role, "sources": [s.to_dict() for s in self.sources]}
