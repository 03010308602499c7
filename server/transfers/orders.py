"""What a destination node should fetch now: its transfers, each with its sources and a fresh grant per source.

Asked by the node (it may sit behind NAT: the server never connects to a node). Grants are made here for each answer
and never stored: the key is the source node's token hash, so a token reset revokes them. Transfers the node says it
is running (`in_progress`) are left out, so a long-poll waits for something new.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any, Collection

import sqlite_utils

from modelsync.shared.catalog import read_snapshot, write_transaction
from modelsync.shared.transfer.destination import safe_relative_name
from modelsync.shared.transfer.failures import TransferFailed
from modelsync.shared.transfer.grants import DEFAULT_TTL_SECONDS, issue_grant
from modelsync.shared.transfer.protocol import file_url

from ..registry import iso
from . import store
from .downloads import DownloadSettings, download_source
from .records import NO_ONLINE_HOLDER, Order, OrderSource, Transfer
from .sources import MAX_SOURCES, Holder, usable_sources

_NO_ONLINE_HOLDER_ERROR = "no online node holding this model can serve it now (online, with a files URL, not excluded)"


def orders_for(db: sqlite_utils.Database, server_id: str, online_ids: Collection[str], now: datetime, *,
               in_progress: Collection[int] = (), downloads: DownloadSettings | None = None) -> list[Order]:
    """The node's transfers to start or resume now (queued, waiting for a source, or running/verifying ones it is not
    running: it restarted), best source first. A transfer with no usable source moves to waiting_source, and back
    to queued when one is there; one whose model the node holds already is done. A download (Civitai, URL) has its
    one source, not handed out during its back-off after a failure; a Civitai one not while the fleet backs off from
    Civitai (nor without `downloads`)."""
    with read_snapshot(db):
        plans = []
        for transfer in store.active_of(db, server_id):
            if transfer.id in in_progress:
                continue
            waiting = transfer.state in ("queued", "waiting_source") and transfer.model_id is not None
            held = store.holds(db, server_id, transfer.model_id) if waiting else None
            if held or transfer.source_kind == "peer":
                plans.append((transfer, held, [] if held else usable_sources(db, transfer, online_ids)))
                continue
            found = download_source(db, transfer, downloads, now) if downloads is not None else None
            if found is not None:  # else it waits as it is (queued) until the back-off ends
                plans.append((transfer, None, [found]))
    stamped = iso(now)
    orders, changes = [], []
    for transfer, held, sources in plans:
        if held:
            changes.append((transfer, _done_already(transfer, held, stamped), None))
            continue
        try:
            rel_name = safe_relative_name(transfer.rel_name or "")
        except TransferFailed as failed:
            changes.append((transfer, {"state": "failed", "reason": failed.reason, "error": failed.message,
                                       "reason_at": stamped, "finished_at": stamped}, None))
            continue
        if not sources:
            if transfer.state != "waiting_source":
                changes.append((transfer, _waiting(transfer, stamped), None))
            continue
        order = Order(transfer.id, transfer.sha256, transfer.size, rel_name, transfer.role,
                      tuple(_source(h, transfer, server_id, now) if isinstance(h, Holder) else h
                            for h in sources[:MAX_SOURCES]))
        if transfer.state == "waiting_source":
            changes.append((transfer, _queued_again(transfer), order))
        else:
            orders.append(order)
    if changes:
        with write_transaction(db):
            for transfer, change, order in changes:
                if store.update(db, transfer, change, stamped) and order is not None:
                    orders.append(order)
    return sorted(orders, key=lambda o: o.transfer_id)


def _source(holder: Holder, transfer: Transfer, destination: str, now: datetime) -> OrderSource:
    assert holder.files_url and holder.token_hash  # usable_sources keeps only such holders
    grant = issue_grant(holder.token_hash, sha256=transfer.sha256, source=holder.server_id, destination=destination,
                        ttl_seconds=DEFAULT_TTL_SECONDS, now=now.timestamp())
    return OrderSource(holder.server_id, file_url(holder.files_url, transfer.sha256), grant.value)


def _done_already(transfer: Transfer, path: str, stamped: str) -> dict[str, Any]:
    """The node holds the model already (it synced a copy from elsewhere): nothing to fetch."""
    return {"state": "done", "dest_path": path, "bytes_done": transfer.size or 0, "finished_at": stamped,
            "reason": None, "error": None, "reason_at": None, "speed_bps": None, "eta_seconds": None}


def _waiting(transfer: Transfer, stamped: str) -> dict[str, Any]:
    change: dict[str, Any] = {"state": "waiting_source", "speed_bps": None, "eta_seconds": None}
    if transfer.reason is None:  # a failure's reason says more (source_gone: the source stopped)
        change.update(reason=NO_ONLINE_HOLDER, error=_NO_ONLINE_HOLDER_ERROR, reason_at=stamped)
    return change


def _queued_again(transfer: Transfer) -> dict[str, Any]:
    change: dict[str, Any] = {"state": "queued"}
    if transfer.reason == NO_ONLINE_HOLDER:
        change.update(reason=None, error=None, reason_at=None)
    return change
