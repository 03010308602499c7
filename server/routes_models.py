"""The model API (the seed's paths): listing, info, availability, preview, scan, hashing, refresh, reset; and a
model's Civitai update: checking now, ordering it onto the nodes that hold the model."""
from __future__ import annotations

from typing import Any

import sqlite_utils
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse
from starlette.routing import Route

from modelsync.shared.catalog import write_transaction
from modelsync.shared.inventory import valid_server_id
from modelsync.shared.names import aliases, kind_of, local_name

from . import queries
from .auth import admit_caller, authenticate_node, require_admin, require_admin_unless_loopback
from .body import expect_object, read_json
from .civitai_state import requeue_lookup
from .civitai_updates import current_update, holders
from .context import ServerContext, context
from .errors import ApiError
from .registry import iso, utc_now
from .sync import forget_digest
from .transfers import Transfer
from .transfers.downloads import order_civitai_transfer


def list_models(request: Request) -> JSONResponse:
    """List models, filtered and paginated.
    ---
    summary: List models
    parameters:
      - {name: type, in: query, description: "model type(s), comma-separated (checkpoint, lora, locon, vae, ...)"}
      - {name: base, in: query, description: "base architecture(s), comma-separated (sd1, sdxl, flux1, ...)"}
      - {name: text, in: query, description: "substring of name, file name or Civitai name; or a SHA256/AutoV3 prefix"}
      - {name: server, in: query, description: "only models this node holds"}
      - {name: availability, in: query, description: "available (some node holds it), missing (no node), online (an online node holds it), offline (only offline nodes hold it)"}
      - {name: update, in: query, description: "available: only models with a newer Civitai version (see `update`)"}
      - {name: sort, in: query, description: "name | type | base | size | created | updated | last_used | id"}
      - {name: order, in: query, description: "asc | desc"}
      - {name: limit, in: query, description: "page size, 1-500 (default 50)"}
      - {name: offset, in: query}
      - {name: page, in: query, description: "1-based page number (instead of offset)"}
    responses:
      200: {description: a page of models}
      400: {description: "a bad filter value, named in `field`"}
    """
    ctx = context(request)
    return JSONResponse(queries.list_models(ctx.registry.db(), ctx.liveness, dict(request.query_params)))


def model_info(request: Request) -> JSONResponse:
    """Everything about one model.
    ---
    summary: One model with all hashes, metadata, field sources, overrides, files on every node, aliases, Civitai lookup
    responses:
      200: {description: the model}
      404: {description: no such model}
    """
    ctx = context(request)
    return JSONResponse(queries.model_info(ctx.registry.db(), ctx.liveness, request.path_params["id"]))


async def get_availability(request: Request) -> JSONResponse:
    """The nodes that hold a model.
    ---
    summary: The nodes that hold a model, with online state, local name, files and last_seen
    responses:
      200: {description: the nodes holding the model}
      404: {description: no such model}
    """
    ctx = context(request)
    # the hot path of job queues: two indexed reads (under a millisecond), answered on the event loop without a
    # thread hand-off; WAL readers never wait for a writer
    return JSONResponse(queries.model_availability(ctx.registry.db(), ctx.liveness, request.path_params["id"]))


def _server_id_from(body: dict[str, Any], request: Request) -> str:
    server_id = body.get("server_id") or request.query_params.get("server_id")
    if not isinstance(server_id, str) or not valid_server_id(server_id):
        raise ApiError(400, "server_id is required: 1-64 of A-Z a-z 0-9 . _ -", "server_id")
    return server_id


def _text(body: dict[str, Any], name: str, max_len: int = 4096) -> str | None:
    value = body.get(name)
    if value is not None and (not isinstance(value, str) or not value or len(value) > max_len):
        raise ApiError(400, f"{name} must be a non-empty string of at most {max_len} characters", name)
    return value


def _refresh_aliases(db: sqlite_utils.Database, model_id: int, server_id: str) -> None:
    """Rebuild one model's aliases on one node from the files the node still lists for it."""
    model = db.conn.execute("SELECT type, output_name FROM models WHERE id = ?", [model_id]).fetchone()
    files = db.conn.execute(
        "SELECT rel_name, role, content_type FROM model_server_availability WHERE model_id = ? AND server_id = ? ORDER BY path",
        [model_id, server_id],
    ).fetchall()
    db.conn.execute("DELETE FROM model_aliases WHERE model_id = ? AND server_id = ?", [model_id, server_id])
    seen: set[tuple[str, str]] = set()
    for rel_name, role, content_type in files:
        kind = kind_of(role, content_type or model[0])
        name = local_name(rel_name, kind)
        for alias_kind, alias in aliases(rel_name, kind, model[1]):
            if (alias_kind, alias) not in seen:
                seen.add((alias_kind, alias))
                db.conn.execute(
                    "INSERT INTO model_aliases (model_id, server_id, kind, alias, local_name) VALUES (?, ?, ?, ?, ?)",
                    [model_id, server_id, alias_kind, alias, name],
                )


def _mark(ctx: ServerContext, request: Request, model_id: int, body: dict[str, Any]) -> dict[str, Any]:
    db = ctx.registry.db()
    server_id = _server_id_from(body, request)
    auth = authenticate_node(db, request, server_id, ctx.config, ctx.admin_token)
    model = queries.get_model(db, model_id)
    rel_name = _text(body, "rel_name") or _text(body, "local_name") or model["filename"] or model["hash_sha256"]
    path = _text(body, "path") or rel_name
    role = _text(body, "role", 32)
    now = iso(utc_now())
    with write_transaction(db):
        existing = db.conn.execute(
            "SELECT id FROM model_server_availability WHERE server_id = ? AND path = ?", [server_id, path]
        ).fetchone()
        if existing is None:
            db.conn.execute(
                """INSERT INTO model_server_availability (server_id, model_id, path, rel_name, role, size, last_seen, has_preview)
                   VALUES (?, ?, ?, ?, ?, ?, ?, 0)""",
                [server_id, model_id, path, rel_name, role, model["size"], now],
            )
        else:
            db.conn.execute(
                "UPDATE model_server_availability SET model_id = ?, rel_name = ?, role = COALESCE(?, role), last_seen = ? WHERE id = ?",
                [model_id, rel_name, role, now, existing[0]],
            )
        _refresh_aliases(db, model_id, server_id)
        forget_digest(db, server_id)
    answer = {"model_id": model_id, "server_id": server_id, "path": path, "rel_name": rel_name, "created": existing is None}
    if auth.token:
        answer.update(registered=True, token=auth.token)
    return answer


def _unmark(ctx: ServerContext, request: Request, model_id: int, body: dict[str, Any]) -> dict[str, Any]:
    db = ctx.registry.db()
    server_id = _server_id_from(body, request)
    authenticate_node(db, request, server_id, ctx.config, ctx.admin_token)
    queries.get_model(db, model_id)
    path = _text(body, "path") or request.query_params.get("path")
    with write_transaction(db):
        if path:
            removed = db.conn.execute(
                "DELETE FROM model_server_availability WHERE model_id = ? AND server_id = ? AND path = ?", [model_id, server_id, path]
            ).rowcount
        else:
            removed = db.conn.execute(
                "DELETE FROM model_server_availability WHERE model_id = ? AND server_id = ?", [model_id, server_id]
            ).rowcount
        _refresh_aliases(db, model_id, server_id)
        forget_digest(db, server_id)
    if not removed:
        raise ApiError(404, f"node {server_id!r} lists no {'file ' + repr(path) if path else 'copy'} of model {model_id}", "path" if path else "server_id")
    return {"model_id": model_id, "server_id": server_id, "removed": removed}


async def mark_availability(request: Request) -> JSONResponse:
    """A node marks that it holds one model.
    ---
    summary: Mark a model as held by a node (node token or admin token)
    responses:
      200: {description: the copy is recorded}
      401: {description: the node is registered and no token was sent}
      403: {description: another node's token}
      404: {description: no such model}
    """
    ctx = context(request)
    admit_caller(ctx.registry.db(), request, ctx.config, ctx.admin_token)
    body = expect_object(await read_json(request, ctx.config.max_request_bytes, ctx.config.max_decompressed_bytes))
    return JSONResponse(await run_in_threadpool(_mark, ctx, request, request.path_params["id"], body))


async def unmark_availability(request: Request) -> JSONResponse:
    """A node (or the admin) removes its copy of a model.
    ---
    summary: Unmark a model on a node; `path` removes one file, without it every file of the model on that node
    parameters:
      - {name: server_id, in: query}
      - {name: path, in: query}
    responses:
      200: {description: the copies removed}
      401: {description: the node is registered and no token was sent}
      403: {description: neither this node's token nor the admin token}
      404: {description: the node lists no such copy}
    """
    ctx = context(request)
    admit_caller(ctx.registry.db(), request, ctx.config, ctx.admin_token)
    body = expect_object(await read_json(request, ctx.config.max_request_bytes, ctx.config.max_decompressed_bytes, optional=True))
    return JSONResponse(await run_in_threadpool(_unmark, ctx, request, request.path_params["id"], body))


def model_preview(request: Request) -> FileResponse:
    """The model's preview image (JPEG).
    ---
    summary: The central preview of a model, fetched once from Civitai and stored as JPEG
    responses:
      200: {description: image/jpeg}
      404: {description: no preview stored for this model}
    """
    ctx = context(request)
    model = queries.get_model(ctx.registry.db(), request.path_params["id"])
    path = ctx.previews.path(model["hash_sha256"])
    if not path.is_file():
        raise ApiError(404, f"no preview is stored for model {model['id']}", "id")
    return FileResponse(path, media_type="image/jpeg", headers={"Cache-Control": "public, max-age=86400"})


async def scan_models(request: Request) -> JSONResponse:
    """Scan MODEL_PATH as the server's own node.
    ---
    summary: Scan the server's own MODEL_PATH and return the scan statistics
    description: >
      Body (optional): {"calculate_hashes": true|false}. Files new or changed since the last scan are hashed only
      when asked. Needs the admin token unless the client is on loopback.
    responses:
      200: {description: the scan statistics}
      401: {description: a client not on loopback sent no admin token}
      403: {description: not the admin token}
      409: {description: "MODEL_PATH is not set, or a scan is already running"}
    """
    ctx = context(request)
    require_admin_unless_loopback(request, ctx.config, ctx.admin_token)
    body = expect_object(await read_json(request, ctx.config.max_request_bytes, ctx.config.max_decompressed_bytes, optional=True))
    calculate = body.get("calculate_hashes", False)
    if not isinstance(calculate, bool):
        raise ApiError(400, "calculate_hashes must be true or false", "calculate_hashes")
    result = await run_in_threadpool(lambda: ctx.own_node.scan(ctx.registry.db(), calculate))
    if ctx.worker is not None:
        ctx.worker.wake()
    return JSONResponse(result)


async def calculate_model_hash(request: Request) -> JSONResponse:
    """Re-hash the server's own copies of a model.
    ---
    summary: Hash again the files of this model that the server itself holds under MODEL_PATH
    description: Needs the admin token unless the client is on loopback.
    responses:
      200: {description: "each file's hashes, or why it could not be hashed"}
      401: {description: a client not on loopback sent no admin token}
      403: {description: not the admin token}
      404: {description: no such model}
      409: {description: "the server holds no copy of this model, or MODEL_PATH is not set"}
    """
    ctx = context(request)
    require_admin_unless_loopback(request, ctx.config, ctx.admin_token)
    model_id = request.path_params["id"]

    def work() -> dict[str, Any]:
        db = ctx.registry.db()
        queries.get_model(db, model_id)
        return {"model_id": model_id, "files": ctx.own_node.hash_files(db, ctx.own_node.files_of_model(db, model_id))}

    result = await run_in_threadpool(work)
    if ctx.worker is not None:
        ctx.worker.wake()
    return JSONResponse(result)


async def calculate_file_hash(request: Request) -> JSONResponse:
    """Hash one file the server holds (e.g. one left unhashed by a scan without hashing).
    ---
    summary: Hash one of the server's own files (ids from GET /api/v1/servers/{server_id}/files)
    description: Needs the admin token unless the client is on loopback.
    responses:
      200: {description: "the file's hashes, or why it could not be hashed"}
      401: {description: a client not on loopback sent no admin token}
      403: {description: not the admin token}
      404: {description: no such file}
      409: {description: the file is on another node}
    """
    ctx = context(request)
    require_admin_unless_loopback(request, ctx.config, ctx.admin_token)
    file_id = request.path_params["file_id"]

    def work() -> dict[str, Any]:
        db = ctx.registry.db()
        files = ctx.own_node.hash_files(db, [ctx.own_node.file(db, file_id)])
        row = db.conn.execute("SELECT model_id FROM model_server_availability WHERE id = ?", [file_id]).fetchone()
        return {"file_id": file_id, "model_id": row[0] if row else None, "files": files}

    result = await run_in_threadpool(work)
    if ctx.worker is not None:
        ctx.worker.wake()
    return JSONResponse(result)


async def refresh_metadata(request: Request) -> JSONResponse:
    """Queue a new Civitai lookup for a model.
    ---
    summary: Ask Civitai again for this model (and fetch its preview again if that had failed)
    responses:
      200: {description: the lookup is queued}
      404: {description: no such model}
    """
    ctx = context(request)
    model_id = request.path_params["id"]

    def work() -> dict[str, Any]:
        db = ctx.registry.db()
        model = queries.get_model(db, model_id)
        requeue_lookup(db, model["hash_sha256"])
        return {"model_id": model_id, "sha256": model["hash_sha256"], "queued": True}

    result = await run_in_threadpool(work)
    if ctx.worker is not None:
        ctx.worker.wake()
    return JSONResponse({**result, "worker_running": ctx.worker is not None})


async def check_model_update(request: Request) -> JSONResponse:
    """Ask Civitai now whether the model has a newer version (admin).
    ---
    summary: Check the model's Civitai model for a newer version now, whenever it was last checked (admin)
    description: >
      The request takes its turn in the fleet's one Civitai rate. A failed check (429, 5xx, timeout) leaves the last
      answer as it was and is tried again later; `outcome` says which happened. The answer holds the model's `update`.
    responses:
      200: {description: "the check's outcome and the model's update (null: none newer)"}
      401: {description: no admin token}
      403: {description: not the admin token}
      404: {description: no such model}
      409: {description: "update checks are off (MODELSYNC_UPDATE_CHECKS, or the Civitai worker is off), or the model
        has no Civitai model and version"}
      503: {description: "the fleet's Civitai rate is pausing after a 429 or a server error: Retry-After says how long"}
    """
    ctx = context(request)
    require_admin(request, ctx.admin_token)
    model_id = request.path_params["id"]
    if ctx.update_checks is None:
        raise ApiError(409, "Civitai update checks are off (MODELSYNC_UPDATE_CHECKS=off or CIVITAI_ENABLED=false)", "id")
    outcome = await run_in_threadpool(ctx.update_checks.check_model_now, model_id)
    info = await run_in_threadpool(lambda: queries.model_info(ctx.registry.db(), ctx.liveness, model_id))
    return JSONResponse({"model_id": model_id, "outcome": outcome, "update": info["update"],
                         "update_check": info["update_check"]})


async def order_model_update(request: Request) -> JSONResponse:
    """Put the model's newer Civitai version on every node that holds the model (admin).
    ---
    summary: Order the model's newer Civitai version (its primary file) onto each node that holds the model (admin)
    description: >
      One Civitai transfer per node holding the model, except the server's own node and nodes that hold the new
      version already (`skipped`, with why). A transfer of that file to a node that stands already is answered as
      it is. The old files stay where they are.
    responses:
      200: {description: "no transfer was created: every one stood already, or no node needs it"}
      201: {description: "transfers created"}
      401: {description: no admin token}
      403: {description: not the admin token}
      404: {description: no such model}
      409: {description: "no newer version of this model is known (the `update` of its info is null)"}
      422: {description: "Civitai lists no SHA256 for the new version's primary file (no_hash): nothing could verify it"}
    """
    ctx = context(request)
    require_admin(request, ctx.admin_token)
    model_id = request.path_params["id"]

    def work() -> tuple[int, list[tuple[Transfer, bool]], list[dict[str, str]]]:
        db = ctx.registry.db()
        queries.get_model(db, model_id)
        found = current_update(db, model_id)
        if found is None:
            raise ApiError(409, f"no newer Civitai version of model {model_id} is known", "id")
        version_id, version = found
        nodes, skipped = holders(db, model_id, version_id, ctx.config.own_server_id)
        ordered = []
        for node in nodes:
            try:
                ordered.append(order_civitai_transfer(db, server_id=node, version=version, file_id=None,
                                                      requested_by="admin"))
            except ApiError as exc:
                if exc.status != 409:  # 409: the node holds that file already (under another registry entry)
                    raise
                skipped.append({"server_id": node, "why": exc.message})
        return version_id, ordered, skipped

    version_id, ordered, skipped = await run_in_threadpool(work)
    for transfer, created in ordered:
        if created:
            ctx.signals.notify(transfer.server_id)
    created = sum(1 for _, was_created in ordered if was_created)
    return JSONResponse({"model_id": model_id, "version_id": version_id, "created": created,
                         "transfers": [transfer.to_dict() for transfer, _ in ordered], "skipped": skipped},
                        status_code=201 if created else 200)


async def reset_database(request: Request) -> JSONResponse:
    """Back up, then empty the registry (admin).
    ---
    summary: Back up the database, then empty the registry (models, files, aliases, lookups, previews); nodes and tokens stay
    responses:
      200: {description: "the registry is empty; the backup's path"}
      401: {description: no admin token}
      403: {description: not the admin token}
    """
    ctx = context(request)
    require_admin(request, ctx.admin_token)

    def work() -> str:
        backup = ctx.registry.reset()
        ctx.previews.clear()
        return str(backup)

    return JSONResponse({"reset": True, "backup": await run_in_threadpool(work)})


ROUTES = [
    Route("/api/v1/models", list_models, methods=["GET"]),
    Route("/api/v1/models/scan", scan_models, methods=["POST"]),
    Route("/api/v1/models/reset-database", reset_database, methods=["POST"]),
    Route("/api/v1/models/{id:rowid}/info", model_info, methods=["GET"]),
    Route("/api/v1/models/{id:rowid}/availability", get_availability, methods=["GET"]),
    Route("/api/v1/models/{id:rowid}/availability", mark_availability, methods=["POST"]),
    Route("/api/v1/models/{id:rowid}/availability", unmark_availability, methods=["DELETE"]),
    Route("/api/v1/models/{id:rowid}/preview", model_preview, methods=["GET"]),
    Route("/api/v1/models/{id:rowid}/refresh-metadata", refresh_metadata, methods=["POST"]),
    Route("/api/v1/models/{id:rowid}/calculate-hash", calculate_model_hash, methods=["POST"]),
    Route("/api/v1/models/{id:rowid}/update", order_model_update, methods=["POST"]),
    Route("/api/v1/models/{id:rowid}/update-check", check_model_update, methods=["POST"]),
    Route("/api/v1/files/{file_id:rowid}/calculate-hash", calculate_file_hash, methods=["POST"]),
]
