"""A dispatch-check's `fulfil`: when a job cannot run on a node only because models are missing that an online peer
can serve (or, with Civitai asked too, that Civitai has), order the copies or downloads to that node (idempotent) and
answer with them; each transfer's `source` says where it comes from.

A missing model is copied only when its reference resolved to one model (by hash, or by a name meaning the same
content fleet-wide) that the node neither holds nor lists as a file not hashed yet. A name meaning different content
on different nodes (name_conflict), an ambiguous, conflicting or unknown reference, an offline node or the server's
own node: nothing is ordered and the answer stays the one without fulfil. So it does when a missing model has no
standing transfer and no online node can serve it now, and when one of the transfers failed for good (that one is
returned as it is, with its reason, until someone retries it).

From Civitai (`civitai_picks`, asked before, in the request's thread): a reference known to no one, by a hash Civitai
can look up (AutoV2, SHA256, or the 12-hex AutoV3 A1111 writes in `Lora hashes`), is looked up by hash (cached per
hash): the file whose hash matched is downloaded (not the version's primary file). A 12-hex prefix of a SHA256 is no
key at Civitai: it stays unknown; so does a name alone (no guessing) and a lookup that fails (a warning
`civitai_lookup_failed`) or whose turn in the fleet's rate is too far off (`civitai_busy`: the next check asks). A
model the registry knows with a Civitai version and no node can serve is downloaded from that version. A peer that
can serve always wins.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlite_utils

from modelsync.shared.catalog import write_transaction
from modelsync.shared.jobs.requirements import KINDS
from modelsync.shared.jobs.resolver import NodeInfo, Ranking, Resolution, TodaysOrder, ranked, runnable_on

from ..errors import ApiError
from . import store
from .civitai_calls import CivitaiCalls
from .downloads import file_matching, file_sha256, order_civitai_transfer, role_for
from .ordering import order_transfer
from .records import Transfer
from .sources import holders

CIVITAI_HASH_LENGTHS = (10, 12, 64)  # AutoV2, AutoV3 (or a SHA256 prefix: Civitai answers 404), SHA256
_WARNINGS = {"unavailable": "civitai_lookup_failed", "busy": "civitai_busy"}


@dataclass(frozen=True)
class CivitaiPick:
    """The Civitai file that gives the node a missing model."""

    version: dict[str, Any]
    file_id: int
    sha256: str


@dataclass(frozen=True)
class Missing:
    """A model the job needs that the node lacks, and the references naming it."""

    model_id: int | None  # None: known only to Civitai (it is registered when ordered)
    sha256: str
    labels: tuple[str, ...]
    civitai: CivitaiPick | None = None

    @property
    def label(self) -> str:
        return " / ".join(self.labels)


@dataclass(frozen=True)
class Fulfilment:
    answer: dict[str, Any]
    ordered: bool  # a transfer was created: the destination's long-poll should read its orders


def _label(res: Resolution) -> str:
    return f"{res.reference.kind} {res.reference.describe()!r}"


def copyable(resolutions: list[Resolution], server_id: str,
             picks: dict[int, CivitaiPick] | None = None) -> list[Missing] | None:
    """The models to copy for the job to run on the node (one per model), or None when a missing reference is not
    a model a copy would give the node. `picks`: resolution index -> the Civitai file giving it."""
    found: dict[str, Missing] = {}
    for i, res in enumerate(resolutions):
        if res.usable_on(server_id):
            continue
        model, pick = res.model, (picks or {}).get(i)
        if res.status == "unknown" and pick is not None:
            model_id, sha256 = None, pick.sha256
        elif res.status != "resolved" or model is None or server_id in model.copies or server_id in res.pending_on:
            return None
        else:
            model_id, sha256 = model.id, model.row["hash_sha256"]
        known = found.get(sha256)
        labels = (known.labels if known else ()) + (_label(res),)
        found[sha256] = Missing(model_id if known is None else known.model_id or model_id, sha256, labels,
                                pick or (known.civitai if known else None))
    return list(found.values())


def _pick(version: dict[str, Any], file: dict[str, Any] | None, kind: str) -> CivitaiPick | None:
    sha256 = file_sha256(file) if file is not None else None
    if file is None or sha256 is None or role_for(version) not in KINDS[kind]:
        return None
    return CivitaiPick(version, file["id"], sha256)


def civitai_picks(db: sqlite_utils.Database, calls: CivitaiCalls, resolutions: list[Resolution], server_id: str,
                  nodes: dict[str, NodeInfo]) -> tuple[dict[int, CivitaiPick], list[dict[str, Any]]]:
    """What Civitai gives of the references the node cannot use and no peer can serve: resolution index -> the
    file; and warnings for lookups that failed (those references stay as they are). Blocks on Civitai: call it in
    a thread."""
    picks: dict[int, CivitaiPick] = {}
    warnings: list[dict[str, Any]] = []
    online = {s for s, n in nodes.items() if n.online}
    for i, res in enumerate(resolutions):
        if res.usable_on(server_id):
            continue
        ref = res.reference
        if res.status == "unknown":
            for hash_ref in ref.hashes:
                if len(hash_ref.value) not in CIVITAI_HASH_LENGTHS or (len(hash_ref.value) == 64 and hash_ref.kind == "autov3"):
                    continue
                found = calls.by_hash(hash_ref.value)
                if found.status in ("unavailable", "busy"):
                    warnings.append({"type": _WARNINGS[found.status], "reason": f"{_label(res)} was not looked up "
                                     f"at Civitai ({found.error}); it stays unknown for now"})
                    break
                if found.version is not None:
                    pick = _pick(found.version, file_matching(found.version, hash_ref.value), ref.kind)
                    if pick is not None:
                        picks[i] = pick
                        break
        elif res.status == "resolved" and res.model is not None and server_id not in res.model.copies:
            version_id, sha256 = res.model.row.get("civitai_version_id"), res.model.row["hash_sha256"]
            if version_id is None or any(h.can_serve(online) for h in holders(db, res.model.id, sha256,
                                                                              destination=server_id)):
                continue
            found = calls.version(version_id)
            if found.version is not None:
                file = next((f for f in found.version.get("files") or []
                             if isinstance(f, dict) and file_sha256(f) == sha256), None)
                if (pick := _pick(found.version, file, ref.kind)) is not None:
                    picks[i] = pick
            elif found.status in ("unavailable", "busy"):
                warnings.append({"type": _WARNINGS[found.status], "reason": f"Civitai version {version_id} of "
                                 f"{_label(res)} could not be read ({found.error})"})
    return picks, warnings


def _servable(db: sqlite_utils.Database, missing: Missing, server_id: str, online: set[str]) -> bool:
    return any(h.can_serve(online) for h in holders(db, missing.model_id, missing.sha256, destination=server_id))


def _failed_note(missing: Missing, transfer: Transfer) -> str:
    return (f"the copy of {missing.label} to {transfer.server_id} failed: {transfer.reason} ({transfer.error}); "
            f"transfer {transfer.id} is not ordered again until it is retried")


def fulfil_job(db: sqlite_utils.Database, calls: CivitaiCalls | None, answer: dict[str, Any],
               resolutions: list[Resolution], nodes: dict[str, NodeInfo], server_id: str, *,
               own_server_id: str, ranking: Ranking = TodaysOrder()) -> Fulfilment:
    """`fulfil`, Civitai asked first when `calls` (fulfil from Civitai, and Civitai on) and the answer needs it.
    Blocks on Civitai: call it in a thread."""
    if calls is None or answer["ok"] or server_id == own_server_id or not nodes[server_id].online:
        return fulfil(db, answer, resolutions, nodes, server_id, own_server_id=own_server_id, ranking=ranking)
    picks, warnings = civitai_picks(db, calls, resolutions, server_id, nodes)
    answer = {**answer, "warnings": [*answer["warnings"], *warnings]} if warnings else answer
    return fulfil(db, answer, resolutions, nodes, server_id, own_server_id=own_server_id, picks=picks, ranking=ranking)


def fulfil(db: sqlite_utils.Database, answer: dict[str, Any], resolutions: list[Resolution], nodes: dict[str, NodeInfo],
           server_id: str, *, own_server_id: str, now: datetime | None = None,
           picks: dict[int, CivitaiPick] | None = None, ranking: Ranking = TodaysOrder()) -> Fulfilment:
    """`answer` (the dispatch-check's without fulfil, its `nodes` ranked by `ranking`) as fulfil makes it: unchanged
    when it is ok or nothing may be copied; else with `transfers` (one per missing model) and, when they stand, the
    action they call for and the nodes that can run the job now, ranked as dispatch ranks them."""
    node = nodes[server_id]
    missing = copyable(resolutions, server_id, picks)
    if answer["ok"] or server_id == own_server_id or not node.online or missing is None:
        return Fulfilment(answer, False)
    online = {s for s, n in nodes.items() if n.online}
    try:
        with write_transaction(db):
            current = {m.sha256: store.standing(db, server_id, m.sha256) or store.arrived(db, server_id, m.sha256)
                       for m in missing}
            failed = [(m, current[m.sha256]) for m in missing if current[m.sha256] and current[m.sha256].state == "failed"]
            servable = {m.sha256 for m in missing if m.model_id is not None and _servable(db, m, server_id, online)}
            unserved = [m for m in missing if current[m.sha256] is None and m.sha256 not in servable and m.civitai is None]
            if failed or unserved:
                notes = [_failed_note(m, t) for m, t in failed]
                notes += [f"no online node can serve {m.label} now" + ("" if picks is None else " (nor Civitai)")
                          for m in unserved]
                standing = [t.to_dict() for t in current.values() if t is not None]
                return Fulfilment({**answer, "reason": "; ".join([answer["reason"], *notes]), "transfers": standing}, False)
            made: list[tuple[Transfer, bool]] = []
            for m in missing:
                existing = current[m.sha256]
                if existing is not None:
                    made.append((existing, False))
                elif m.sha256 in servable or m.civitai is None:
                    made.append(order_transfer(db, server_id=server_id, sha256=m.sha256, requested_by="queue", now=now))
                else:
                    made.append(order_civitai_transfer(db, server_id=server_id, version=m.civitai.version,
                                                       file_id=m.civitai.file_id, requested_by="queue", now=now,
                                                       origin="civitai by-hash (fulfil)"))
    except ApiError as refused:  # the registry changed since the job was resolved (e.g. the node synced the file)
        return Fulfilment({**answer, "reason": f"{answer['reason']}; no copy ordered: {refused.message}",
                           "transfers": []}, False)
    transfers = [transfer for transfer, _ in made]
    others = [n for n in runnable_on(resolutions, nodes) if n.server_id != server_id]
    copying = "; ".join(f"{m.label}: transfer {t.id} {t.state}" + ("" if t.source_kind == "peer" else f" from {t.source_kind}")
                        for m, t in zip(missing, transfers, strict=True))
    verb = "downloading" if all(t.source_kind != "peer" for t in transfers) else "copying"
    reason = f"{server_id} lacks what the job needs; {verb} it there ({copying})"
    if others:
        reason += f"; {len(others)} online node(s) have every model now"
    return Fulfilment({**answer, "action": "route_elsewhere" if others else "retry_later", "reason": reason,
                       "nodes": ranked(ranking.order(resolutions, others)), "transfers": [t.to_dict() for t in transfers]},
                      any(created for _, created in made))
