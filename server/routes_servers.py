"""The node API: inventory sync, heartbeat, the node list, and the admin's node actions."""
from __future__ import annotations

import hashlib
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from modelsync.shared.catalog import read_snapshot, write_transaction
from modelsync.shared.inventory import parse_inventory, valid_server_id
from modelsync.shared.node.state import StateError, StateReport, parse_report

from . import queries
from .auth import NodeAuth, admit_node, issue_token, register_first_contact, require_admin
from .body import expect_object, parse_json, read_body, read_json
from .context import ServerContext, context
from .errors import ApiError
from .insight import node_state
from .node_previews import MAX_UPLOAD_BYTES, drop_vanished, store_node_preview
from .sync import (answer_unchanged, last_digest, record_files_url, record_heartbeat, sources_may_have_appeared,
                   sync_inventory, was_online)


def _server_id(request: Request) -> str:
    server_id = request.path_params["server_id"]
    if not valid_server_id(server_id):
        raise ApiError(400, "server_id must be 1-64 of A-Z a-z 0-9 . _ - (starting with a letter or digit)", "server_id")
    return server_id


def _registration(auth: NodeAuth) -> dict[str, Any]:
    if not auth.registered:
        return {"registered": False}
    answer: dict[str, Any] = {"registered": True}
    if auth.token:
        answer["token"] = auth.token
    return answer


async def _admit(ctx: ServerContext, request: Request) -> NodeAuth:
    """Who may send this node's body, from the headers and the peer alone: one indexed read on the event loop, so
    a refused request costs neither a thread hand-off nor a byte of its body."""
    return admit_node(ctx.registry.db(), request, _server_id(request), ctx.config, ctx.admin_token)


def _sync(ctx: ServerContext, auth: NodeAuth, raw: bytearray) -> tuple[dict[str, Any], bool]:
    """The answer, and whether the node may have become a source for waiting transfers."""
    server_id = auth.server_id
    digest = hashlib.sha256(raw).hexdigest()
    body = expect_object(parse_json(raw))
    files = body.get("files")
    limit = ctx.config.max_inventory_files
    if isinstance(files, list) and len(files) > limit:
        raise ApiError(413, f"the inventory lists {len(files)} files; the limit is {limit}", "files")
    if body.get("server_id") != server_id:
        raise ApiError(400, f"the inventory is for {body.get('server_id')!r}, not {server_id!r} as in the URL", "server_id")
    db = ctx.registry.db()
    unchanged = digest == last_digest(db, server_id)
    inventory = None if unchanged else parse_inventory(body, max_files=limit)
    with write_transaction(db):  # a first contact is registered only together with its inventory
        auth = register_first_contact(db, auth)
        back_online = not was_online(db, ctx.liveness, server_id)
        url_changed = record_files_url(db, server_id, body)
        answer = (answer_unchanged(db, server_id, body, digest) if inventory is None
                  else sync_inventory(db, inventory, digest, ctx.previews))
        appeared = sources_may_have_appeared(db, server_id, answer)
        return {**answer, **_registration(auth)}, back_online or url_changed or appeared


async def sync_models(request: Request) -> JSONResponse:
    """A node's full inventory, applied in one transaction.
    ---
    summary: Sync a node's whole inventory (JSON, optionally Content-Encoding gzip)
    description: >
      The body is the inventory (format 1, see docs/api.md). New models are added, null fields filled (never
      overwritten), the node's availability rows added, refreshed or removed. A node's first contact registers
      it and returns its token once; afterwards `Authorization: Bearer <token>` is required. The token (and, for a
      first contact, the client's address) is checked before the body is read: a refused request is answered
      without reading it. A top-level "files_url" is the base URL peers fetch this node's files from (as in a heartbeat).
    responses:
      200: {description: "the sync applied (or an unchanged re-send answered), with what the registry adds"}
      400: {description: "invalid inventory, JSON or gzip; `field` names the part"}
      401: {description: the node is registered and no token was sent}
      403: {description: "another node's token, or registration is not open to this client"}
      413: {description: "body, decompressed body or file count over the limit"}
      415: {description: unsupported Content-Encoding}
      507: {description: "the registry's disk is full; nothing was changed"}
    """
    ctx = context(request)
    auth = await _admit(ctx, request)
    raw = await read_body(request, ctx.config.max_request_bytes, ctx.config.max_decompressed_bytes)
    result, sources_changed = await run_in_threadpool(_sync, ctx, auth, raw)
    if ctx.worker is not None and result["new_models"]:
        ctx.worker.wake()
    if sources_changed:
        ctx.signals.notify_holders_changed()
    return JSONResponse(result)


async def heartbeat(request: Request) -> JSONResponse:
    """A node says it is alive.
    ---
    summary: Heartbeat; registers the node on first contact like a sync
    description: >
      Body (optional): {"display_name": ..., "api_url": ..., "files_url": ..., "state": {...}}; files_url is the base
      URL peers fetch this node's files from (absent or null: as it was); state is what the node is doing (loaded and
      selected checkpoint, busy, free disk per model root, GPU memory: docs/api.md), kept as its last state.
    responses:
      200: {description: the heartbeat recorded}
      400: {description: "a field of the body is not valid; `field` names it (e.g. state.disks[0].free_bytes)"}
      401: {description: the node is registered and no token was sent}
      403: {description: "another node's token, or registration is not open to this client"}
    """
    ctx = context(request)
    admitted = await _admit(ctx, request)
    body = expect_object(await read_json(request, ctx.config.max_request_bytes, ctx.config.max_decompressed_bytes, optional=True))
    report = _state_report(body)

    def work() -> tuple[dict[str, Any], bool]:
        db = ctx.registry.db()
        with write_transaction(db):
            auth = register_first_contact(db, admitted)
            back_online = not was_online(db, ctx.liveness, admitted.server_id)
            url_changed = record_files_url(db, admitted.server_id, body)
            answer = {**record_heartbeat(db, admitted.server_id, body), **_registration(auth)}
            if report is not None:
                state = node_state.record_state(db, admitted.server_id, report, answer["last_heartbeat"])
                version = node_state.states_version(db)
        if report is not None:  # committed: the job checks see it from memory
            node_state.cache_for(ctx.registry).put(state, version)
        return answer, back_online or url_changed

    answer, sources_changed = await run_in_threadpool(work)
    if sources_changed:
        ctx.signals.notify_holders_changed()
    return JSONResponse(answer)


def _state_report(body: dict[str, Any]) -> StateReport | None:
    if body.get("state") is None:
        return None
    try:
        return parse_report(body["state"])
    except StateError as exc:
        raise ApiError(400, str(exc), exc.field) from None


def list_servers(request: Request) -> JSONResponse:
    """Every node.
    ---
    summary: Every node with online/offline, last sync, last heartbeat, file and model counts, and its state
    description: >
      `state` is what the node last reported with a heartbeat (loaded checkpoint, busy, free disk, GPU memory);
      `state.current` is false when the node is offline: its last state, shown as such, never used for ranking.
    responses:
      200: {description: every node}
    """
    ctx = context(request)
    db = ctx.registry.db()
    with read_snapshot(db):
        servers = queries.list_servers(db, ctx.liveness)
        states = node_state.read_states(db)
    for server in servers:
        found = states.get(server["id"])
        server["state"] = found.as_dict(server["online"]) if found is not None else None
    return JSONResponse({"servers": servers, "offline_after_seconds": ctx.config.offline_after_seconds})


def server_files(request: Request) -> JSONResponse:
    """One node's files.
    ---
    summary: One node's files (paginated); `unhashed=true` lists only files not hashed yet
    parameters:
      - {name: unhashed, in: query}
      - {name: state, in: query}
      - {name: limit, in: query}
      - {name: offset, in: query}
    responses:
      200: {description: a page of the node's files}
    """
    ctx = context(request)
    return JSONResponse(queries.server_files(ctx.registry.db(), _server_id(request), dict(request.query_params)))


async def delete_server(request: Request) -> JSONResponse:
    """Forget a node (admin).
    ---
    summary: Delete a node with its files and aliases (models stay); admin token
    responses:
      200: {description: the node is forgotten}
      401: {description: no admin token}
      403: {description: not the admin token}
      404: {description: no such node}
    """
    ctx = context(request)
    require_admin(request, ctx.admin_token)
    server_id = _server_id(request)

    def work() -> dict[str, Any]:
        db = ctx.registry.db()
        with write_transaction(db):
            if db.conn.execute("SELECT 1 FROM servers WHERE id = ?", [server_id]).fetchone() is None:
                raise ApiError(404, f"no node {server_id!r}", "server_id")
            db.conn.execute("DELETE FROM model_aliases WHERE server_id = ?", [server_id])
            removed = db.conn.execute("DELETE FROM model_server_availability WHERE server_id = ?", [server_id]).rowcount
            removed += db.conn.execute("DELETE FROM unusable_files WHERE server_id = ?", [server_id]).rowcount
            drop_vanished(db, server_id, ctx.previews)
            db.conn.execute("DELETE FROM servers WHERE id = ?", [server_id])
        return {"deleted": server_id, "files_removed": removed}

    return JSONResponse(await run_in_threadpool(work))


async def reset_token(request: Request) -> JSONResponse:
    """Issue a node a new token (admin).
    ---
    summary: Issue (or reset) a node's token; the old one stops working. Creates the node if unknown. Admin token.
    responses:
      200: {description: the new token (shown once)}
      401: {description: no admin token}
      403: {description: not the admin token}
    """
    ctx = context(request)
    require_admin(request, ctx.admin_token)
    server_id = _server_id(request)
    token = await run_in_threadpool(lambda: issue_token(ctx.registry.db(), server_id))
    return JSONResponse({"server_id": server_id, "token": token})


async def upload_preview(request: Request) -> JSONResponse:
    """A node's own preview of one of its models.
    ---
    summary: A node sends the preview image it keeps beside a model (`<stem>.preview.jpeg`)
    description: >
      Only for a model the sync answer listed in `previews_wanted`: the node holds a copy with a local preview and
      the server has none, or only Civitai's (a node's preview wins). The image (JPEG, PNG or WebP, at most 8 MiB
      and 40 megapixels) is shrunk and re-encoded as JPEG. The first node's preview stays until that node no longer
      has it. The node's token is checked before the body is read.
    responses:
      200: {description: "stored, or why not (another node's preview came first)"}
      400: {description: "not a readable image, or over the pixel limit"}
      401: {description: no token}
      403: {description: not this node's token}
      409: {description: the node lists no copy of this model with a preview}
      413: {description: over 8 MiB}
    """
    ctx = context(request)
    auth = await _admit(ctx, request)
    if auth.first_contact:
        raise ApiError(403, f"node {auth.server_id} is not registered: sync first", "Authorization")
    sha256 = request.path_params["sha256"]
    raw = await read_body(request, MAX_UPLOAD_BYTES, MAX_UPLOAD_BYTES)
    return JSONResponse(await run_in_threadpool(lambda: store_node_preview(
        ctx.registry.db(), ctx.previews, auth.server_id, sha256, bytes(raw))))


ROUTES = [
    Route("/api/v1/servers", list_servers, methods=["GET"]),
    Route("/api/v1/servers/{server_id}", delete_server, methods=["DELETE"]),
    Route("/api/v1/servers/{server_id}/models/sync", sync_models, methods=["POST"]),
    Route("/api/v1/servers/{server_id}/heartbeat", heartbeat, methods=["POST"]),
    Route("/api/v1/servers/{server_id}/previews/{sha256:sha256}", upload_preview, methods=["PUT"]),
    Route("/api/v1/servers/{server_id}/files", server_files, methods=["GET"]),
    Route("/api/v1/servers/{server_id}/token", reset_token, methods=["POST"]),
]
