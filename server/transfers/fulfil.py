"""A dispatch-check's `fulfil`: when a job cannot run on a node only because models are missing that an online peer
can serve, order the copies to that node (idempotent) and answer with them.

A missing model is copied only when its reference resolved to one model (by hash, or by a name meaning the same
content fleet-wide) that the node neither holds nor lists as a file not hashed yet. A name meaning different content
on different nodes (name_conflict), an ambiguous, conflicting or unknown reference, an offline node or the server's
own node: nothing is ordered and the answer stays the one without fulfil. So it does when a missing model has no
standing transfer and no online node can serve it now, and when one of the transfers failed for good (that one is
returned as it is, with its reason, until someone retries it).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlite_utils

from modelsync.shared.catalog import write_transaction
from modelsync.shared.jobs.resolver import NodeInfo, Resolution, runnable_on

from ..errors import ApiError
from . import store
from .ordering import order_transfer
from .records import Transfer
from .sources import holders


@dataclass(frozen=True)
class Missing:
    """A model the job needs that the node lacks, and the references naming it."""

    model_id: int
    sha256: str
    labels: tuple[str, ...]

    @property
    def label(self) -> str:
        return " / ".join(self.labels)


@dataclass(frozen=True)
class Fulfilment:
    answer: dict[str, Any]
    ordered: bool  # a transfer was created: the destination's long-poll should read its orders


def _label(res: Resolution) -> str:
    return f"{res.reference.kind} {res.reference.describe()!r}"


def copyable(resolutions: list[Resolution], server_id: str) -> list[Missing] | None:
    """The models to copy for the job to run on the node (one per model), or None when a missing reference is not
    a model a copy would give the node."""
    found: dict[int, Missing] = {}
    for res in resolutions:
        if res.usable_on(server_id):
            continue
        model = res.model
        if res.status != "resolved" or model is None or server_id in model.copies or server_id in res.pending_on:
            return None
        known = found.get(model.id)
        labels = (known.labels if known else ()) + (_label(res),)
        found[model.id] = Missing(model.id, model.row["hash_sha256"], labels)
    return list(found.values())


def _servable(db: sqlite_utils.Database, missing: Missing, server_id: str, online: set[str]) -> bool:
    return any(h.can_serve(online) for h in holders(db, missing.model_id, missing.sha256, destination=server_id))


def _failed_note(missing: Missing, transfer: Transfer) -> str:
    return (f"the copy of {missing.label} to {transfer.server_id} failed: {transfer.reason} ({transfer.error}); "
            f"transfer {transfer.id} is not ordered again until it is retried")


def fulfil(db: sqlite_utils.Database, answer: dict[str, Any], resolutions: list[Resolution], nodes: dict[str, NodeInfo],
           server_id: str, *, own_server_id: str, now: datetime | None = None) -> Fulfilment:
    """`answer` (the dispatch-check's without fulfil) as fulfil makes it: unchanged when it is ok or nothing may be
    copied; else with `transfers` (one per missing model) and, when they stand, the action they call for."""
    node = nodes[server_id]
    missing = copyable(resolutions, server_id)
    if answer["ok"] or server_id == own_server_id or not node.online or missing is None:
        return Fulfilment(answer, False)
    online = {s for s, n in nodes.items() if n.online}
    try:
        with write_transaction(db):
            current = {m.sha256: store.standing(db, server_id, m.sha256) or store.arrived(db, server_id, m.sha256)
                       for m in missing}
            failed = [(m, current[m.sha256]) for m in missing if current[m.sha256] and current[m.sha256].state == "failed"]
            unserved = [m for m in missing if current[m.sha256] is None and not _servable(db, m, server_id, online)]
            if failed or unserved:
                notes = [_failed_note(m, t) for m, t in failed]
                notes += [f"no online node can serve {m.label} now" for m in unserved]
                standing = [t.to_dict() for t in current.values() if t is not None]
                return Fulfilment({**answer, "reason": "; ".join([answer["reason"], *notes]), "transfers": standing}, False)
            made: list[tuple[Transfer, bool]] = []
            for m in missing:
                existing = current[m.sha256]
                made.append((existing, False) if existing is not None else
                            order_transfer(db, server_id=server_id, sha256=m.sha256, requested_by="queue", now=now))
    except ApiError as refused:  # the registry changed since the job was resolved (e.g. the node synced the file)
        return Fulfilment({**answer, "reason": f"{answer['reason']}; no copy ordered: {refused.message}",
                           "transfers": []}, False)
    transfers = [transfer for transfer, _ in made]
    others = [n for n in runnable_on(resolutions, nodes) if n.server_id != server_id]
    copying = "; ".join(f"{m.label}: transfer {t.id} {t.state}" for m, t in zip(missing, transfers, strict=True))
    reason = f"{server_id} lacks what the job needs; copying it there ({copying})"
    if others:
        reason += f"; {len(others)} online node(s) have every model now"
    return Fulfilment({**answer, "action": "route_elsewhere" if others else "retry_later", "reason": reason,
                       "nodes": [n.as_dict() for n in others], "transfers": [t.to_dict() for t in transfers]},
                      any(created for _, created in made))
