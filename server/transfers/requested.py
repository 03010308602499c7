"""An order as POST /api/v1/transfers gives it: which source it uses.

- `url` (+ the required `sha256`; `role`, the folder it goes to, required when the registry does not know the
  model's type): that URL.
- `civitai_version_id` (+ `file_id`, default the version's primary file): that Civitai file.
- `sha256` / `model_id` with source "peer": a peer; "civitai": the registry's Civitai version of the model, the file
  whose SHA256 is the model's; "auto": a peer holding the SHA256, else (no node can be a source) Civitai when the
  registry knows the model's version.
Everything the body says is checked (and the node looked up) before Civitai is asked: a malformed order costs
Civitai nothing. Civitai is asked in the caller's thread (the route runs this in the thread pool), within the fleet's
rate; when its turn is too far off the answer is 503 with Retry-After.
"""
from __future__ import annotations

from typing import Any

import sqlite_utils

from ..errors import ApiError
from ..registry import MAX_ROW_ID
from . import store
from .civitai_calls import CivitaiCalls
from .downloads import (
    checked_role,
    file_sha256,
    order_civitai_transfer,
    order_url_transfer,
)
from .ordering import NoPeer, order_transfer
from .params import node_id
from .records import SOURCE_MODES, Transfer


def _positive(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_ROW_ID:
        raise ApiError(400, f"{name} must be a positive integer", name)
    return value


def _version(calls: CivitaiCalls | None, version_id: int) -> dict[str, Any]:
    if calls is None:
        raise ApiError(409, "Civitai is off on this server (CIVITAI_ENABLED=false): no Civitai download can be ordered",
                       "source")
    found = calls.version(version_id)
    if found.status == "not_found":
        raise ApiError(404, f"Civitai knows no model version {version_id}", "civitai_version_id")
    if found.version is None:
        raise ApiError(503, f"Civitai cannot be asked now ({found.error}); try again later", "civitai_version_id",
                       {"Retry-After": str(max(1, round(found.retry_after or calls.paused_seconds())))})
    return found.version


def _model_version(db: sqlite_utils.Database, sha256: Any, model_id: Any) -> tuple[str, int | None]:
    """(SHA256, the registry's Civitai version id of the model or None) of the model the order names."""
    if model_id is not None:
        row = db.conn.execute("SELECT hash_sha256, civitai_version_id FROM models WHERE id = ?",
                              [_positive(model_id, "model_id")]).fetchone()
        field = "model_id"
    elif isinstance(sha256, str):
        row = db.conn.execute("SELECT hash_sha256, civitai_version_id FROM models WHERE hash_sha256 = ?",
                              [sha256.lower()]).fetchone()
        field = "sha256"
    else:
        raise ApiError(400, "name the model by sha256 or by model_id (one of them)", "sha256")
    if row is None:
        raise ApiError(404, f"the registry knows no model with this {field}", field)
    return row[0], row[1]


def _from_civitai(db: sqlite_utils.Database, calls: CivitaiCalls | None, server_id: Any, sha256: Any, model_id: Any,
                  requested_by: str) -> tuple[Transfer, bool]:
    known, version_id = _model_version(db, sha256, model_id)
    if not store.server_exists(db, server_id):
        raise ApiError(404, f"no node {server_id!r}", "server_id")
    if version_id is None:
        raise ApiError(409, "the registry knows no Civitai version of this model", "sha256" if model_id is None else "model_id")
    version = _version(calls, version_id)
    file = next((f for f in version.get("files") or [] if isinstance(f, dict) and file_sha256(f) == known), None)
    if file is None:
        raise ApiError(409, f"Civitai version {version_id} lists no file with this model's SHA256", "source")
    return order_civitai_transfer(db, server_id=server_id, version=version, file_id=file.get("id"),
                                  requested_by=requested_by)


def order_requested(db: sqlite_utils.Database, calls: CivitaiCalls | None, body: dict[str, Any],
                    requested_by: str) -> tuple[Transfer, bool]:
    """The order `body` asks for (see the module's docstring); (the transfer, created)."""
    source = body.get("source", "auto")
    if source not in SOURCE_MODES:
        raise ApiError(400, f"source must be one of {', '.join(SOURCE_MODES)}", "source")
    server_id, url, version_id = body.get("server_id"), body.get("url"), body.get("civitai_version_id")
    sha256, model_id, file_id = body.get("sha256"), body.get("model_id"), body.get("file_id")
    if sum(v is not None for v in (url, version_id, model_id)) > 1:
        raise ApiError(400, "name one of url, civitai_version_id, sha256 or model_id", "url" if url else "model_id")
    if file_id is not None and version_id is None:
        raise ApiError(400, "file_id goes with civitai_version_id", "file_id")
    if body.get("from_server_id") is not None and (url or version_id or source in ("civitai", "url")):
        raise ApiError(400, "from_server_id names a peer: it goes with source auto or peer", "from_server_id")
    if body.get("role") is not None and url is None:
        raise ApiError(400, "role goes with url (a Civitai file's folder is its model type's)", "role")
    server_id = node_id(server_id, "server_id")
    if url is not None or source == "url":
        if source not in ("auto", "url") or url is None:
            raise ApiError(400, 'a url order has "url" (and "sha256") and source "url" or "auto"', "url")
        return order_url_transfer(db, server_id=server_id, url=url, sha256=sha256, role=checked_role(body.get("role")),
                                  requested_by=requested_by)
    if version_id is not None:
        if source not in ("auto", "civitai"):
            raise ApiError(400, 'a civitai_version_id order has source "civitai" or "auto"', "source")
        if sha256 is not None:
            raise ApiError(400, "name one of civitai_version_id or sha256", "sha256")
        version_id, file_id = _positive(version_id, "civitai_version_id"), _positive(file_id, "file_id")
        if not store.server_exists(db, server_id):
            raise ApiError(404, f"no node {server_id!r}", "server_id")
        return order_civitai_transfer(db, server_id=server_id, version=_version(calls, version_id), file_id=file_id,
                                      requested_by=requested_by)
    if source == "civitai":
        return _from_civitai(db, calls, server_id, sha256, model_id, requested_by)
    try:
        return order_transfer(db, server_id=server_id, sha256=sha256, model_id=model_id, source=source,
                              from_server_id=body.get("from_server_id"), requested_by=requested_by)
    except NoPeer:
        if source == "peer" or body.get("from_server_id") is not None:
            raise
        if _model_version(db, sha256, model_id)[1] is None:
            raise
        return _from_civitai(db, calls, server_id, sha256, model_id, requested_by)
