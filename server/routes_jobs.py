"""The job checks a job queue calls: before a job is queued (availability), before it is sent to a node
(dispatch-check), a single model by Civitai version or hash (checkpoint-verify), and the most-wanted missing models.

The answers are read-only and computed on the event loop (a few indexed reads); what they record afterwards
(`last_used` of an approved dispatch, the wanted counter) is written in a background task after the answer is
sent, so a node's sync holding the write lock never delays a queue.

With MODELSYNC_QUEUE_TOKEN set, every route here needs it (or the admin token) as a Bearer token, checked from
the headers before the body is read.

A dispatch-check with `fulfil` (in its body, or MODELSYNC_FULFIL=peer or peer,civitai) orders the copies a node lacks
(server/transfers/fulfil.py), from Civitai too with "fulfil": true or peer,civitai: that writes and may ask Civitai,
so it runs in a thread. Who may order: whoever passed the queue token
check when a queue token is set, else only loopback clients; anyone else gets the answer without fulfil and a
`fulfil_not_authorised` warning.
"""
from __future__ import annotations

import logging
import sqlite3
from typing import Any, Callable

from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from modelsync.shared.catalog import read_snapshot
from modelsync.shared.inventory import valid_server_id
from modelsync.shared.jobs.requirements import ModelReference, ParsedJob, extract, parse_hash, parse_kind
from modelsync.shared.jobs.resolver import (
    NodeInfo,
    Resolution,
    UnknownNode,
    availability,
    dispatch,
    known_embeddings,
    list_wanted,
    load_nodes,
    mark_pending,
    record_last_used,
    resolve,
    unmet_references,
    verify,
)

from .auth import bearer_token, is_loopback, is_queue_or_admin_token, real_client
from .body import expect_object, read_json
from .context import ServerContext, context
from .errors import ApiError
from .insight import node_state
from .insight.ranking import StateRanking
from .queries import MAX_PAGE_SIZE, int_param
from .registry import MAX_ROW_ID
from .transfers.civitai_calls import calls_for
from .transfers.fulfil import fulfil_job
from .webhooks.blocked import record_wanted_and_blocked

log = logging.getLogger(__name__)


def _nodes(ctx: ServerContext) -> dict[str, NodeInfo]:
    cutoff = ctx.liveness.cutoff()
    return load_nodes(ctx.registry.db(), lambda sid, sync, beat: ctx.liveness.is_online(sid, sync, beat, cutoff))


def _ranking(ctx: ServerContext, db: Any) -> StateRanking:
    """The nodes' states from memory (one indexed read while unchanged), inside the caller's read snapshot."""
    return StateRanking(node_state.cache_for(ctx.registry).states(db))


def _require_queue_token(request: Request, ctx: ServerContext) -> None:
    """When a queue token is configured: 401 without a Bearer token, 403 unless it is the queue or admin token."""
    expected = ctx.config.queue_token
    if expected is None:
        return
    token = bearer_token(request)
    if token is None:
        raise ApiError(401, "the job checks need the queue token (or the admin token) as 'Authorization: Bearer <token>'",
                       "Authorization", {"WWW-Authenticate": "Bearer"})
    if not is_queue_or_admin_token(token, expected, ctx.admin_token):
        raise ApiError(403, "the token is neither the queue token nor the admin token", "Authorization")


async def _read_body(request: Request, ctx: ServerContext) -> dict[str, Any]:
    return expect_object(await read_json(request, ctx.config.max_request_bytes, ctx.config.max_decompressed_bytes))


def _parse_job(body: dict[str, Any], ctx: ServerContext) -> tuple[ParsedJob, bool]:
    """The job, and whether its unmet references count for the most-wanted list (`"record": false` for a look only)."""
    if "job" not in body:
        raise ApiError(400, 'the body needs "job": an A1111/Forge API body, an infotext, a StableQueue job or a list of '
                            'requirements', "job")
    record = body.get("record", True)
    if not isinstance(record, bool):
        raise ApiError(400, "record must be true or false", "record")
    fmt = body.get("format", "auto")
    return extract(body["job"], fmt if isinstance(fmt, str) else "", known_embeddings(ctx.registry.db())), record


FULFIL_NOT_AUTHORISED = {
    "type": "fulfil_not_authorised",
    "reason": "fulfil was asked for but not done: only the queue token or the admin token (when MODELSYNC_QUEUE_TOKEN "
              "is set), or else a client on the server's own host, may order copies",
}


def _wants_fulfil(body: dict[str, Any], ctx: ServerContext) -> bool:
    """`"fulfil"` in the body, else the server-wide default (MODELSYNC_FULFIL)."""
    wanted = body.get("fulfil", ctx.config.fulfil != "off")
    if not isinstance(wanted, bool):
        raise ApiError(400, "fulfil must be true or false", "fulfil")
    return wanted


def _fulfils_from_civitai(body: dict[str, Any], ctx: ServerContext) -> bool:
    """`"fulfil": true` asks Civitai too; without it, MODELSYNC_FULFIL=peer,civitai does."""
    return body.get("fulfil") is True or ("fulfil" not in body and ctx.config.fulfil == "peer,civitai")


def _may_order(request: Request, ctx: ServerContext) -> bool:
    """With a queue token, whoever passed its check (`_require_queue_token`: the queue or the admin token); without
    one, a client on loopback only (judged on the real client, behind a trusted proxy the one it forwards for)."""
    return ctx.config.queue_token is not None or is_loopback(real_client(request, ctx.config))


def _after(ctx: ServerContext, write: Callable[..., int], *args: Any, **kwargs: Any) -> BackgroundTask:
    def run() -> None:
        try:
            write(ctx.registry.db(), *args, **kwargs)
        except sqlite3.Error as exc:  # a bookkeeping write: the answer was right and has been sent
            log.warning("job check bookkeeping (%s) failed: %s", write.__name__, exc)

    return BackgroundTask(run)


def _wanted_task(ctx: ServerContext, resolutions: list[Resolution]) -> BackgroundTask | None:
    if unmet_references(resolutions):
        return _after(ctx, record_wanted_and_blocked, resolutions)  # + the job.blocked webhook event
    return None


async def jobs_availability(request: Request) -> JSONResponse:
    """Can this job run, and where (pre-submission).
    ---
    summary: Resolve every model a job names and tell which online nodes have all of them
    description: >
      Body {"job": ..., "format": "auto" | "a1111" | "infotext" | "stablequeue" | "requirements", "record": true}.
      References that no node has are counted for GET /api/v1/models/wanted, unless "record" is false (a look
      only, as the dashboard's job check). Examples in docs/job-queue.md.
    responses:
      200: {description: whether and where the job can run}
      400: {description: "the job cannot be read; `field` names the part (e.g. job.override_settings.sd_model_checkpoint)"}
      401: {description: "a queue token is configured (MODELSYNC_QUEUE_TOKEN) and none was sent"}
      403: {description: "the Bearer token is neither the queue token nor the admin token"}
    """
    ctx = context(request)
    _require_queue_token(request, ctx)
    parsed, record = _parse_job(await _read_body(request, ctx), ctx)
    db = ctx.registry.db()
    with read_snapshot(db):
        resolutions = resolve(db, parsed.requirements, ctx.config.name_conflicts)
        mark_pending(db, resolutions)
        answer = availability(resolutions, _nodes(ctx), _ranking(ctx, db))
    if record and ctx.demand is not None:
        ctx.demand.record(resolutions, answer)  # in memory; written in batches (server/insight/demand.py)
    background = _wanted_task(ctx, resolutions) if record else None
    return JSONResponse({"format": parsed.format, "model_availability": answer}, background=background)


async def dispatch_check(request: Request) -> JSONResponse:
    """Can this job run on this node now, and in which names (pre-dispatch).
    ---
    summary: Check a job against one node; when ok, the payload rewritten with that node's own model names
    description: >
      Body as for /api/v1/jobs/availability. When not ok, `action` tells the queue what to do: retry_later (the node
      is offline, or a model is on its way: a node lists a file of that name it has not hashed yet), route_elsewhere
      (`nodes` can run it) or fail (a reference is unknown, ambiguous or contradictory, or no node has the model).
      An approved dispatch records last_used for its models (unless "record" is false). With "fulfil": true (or
      MODELSYNC_FULFIL=peer), when the job cannot run on the node only because it lacks models an online peer can
      serve (or, with "fulfil": true or MODELSYNC_FULFIL=peer,civitai, that Civitai has: a reference by AutoV2,
      SHA256 or the 12-hex AutoV3 is looked up at Civitai by hash), the copies or downloads are ordered (once;
      asking again returns the same ones) and listed in `transfers`: action
      route_elsewhere when other nodes can run the job now, else retry_later; ok once the node has synced them. A
      transfer that failed for good is listed as it is, with the answer without fulfil. Who may order: docs/security.md
      (else a fulfil_not_authorised warning).
    responses:
      200: {description: "ok with the rewritten payload, or what the queue should do"}
      400: {description: "the job cannot be read; `field` names the part"}
      401: {description: "a queue token is configured (MODELSYNC_QUEUE_TOKEN) and none was sent"}
      403: {description: "the Bearer token is neither the queue token nor the admin token"}
      404: {description: no such node}
    """
    ctx = context(request)
    _require_queue_token(request, ctx)
    server_id = request.path_params["server_id"]
    if not valid_server_id(server_id):
        raise ApiError(400, "server_id must be 1-64 of A-Z a-z 0-9 . _ - (starting with a letter or digit)", "server_id")
    body = await _read_body(request, ctx)
    parsed, record = _parse_job(body, ctx)
    wants_fulfil = _wants_fulfil(body, ctx)
    db = ctx.registry.db()
    with read_snapshot(db):
        resolutions = resolve(db, parsed.requirements, ctx.config.name_conflicts)
        mark_pending(db, resolutions, server_id)
        nodes = _nodes(ctx)
        ranking = _ranking(ctx, db)
    try:
        answer = dispatch(parsed, resolutions, nodes, server_id, ranking)
    except UnknownNode:
        raise ApiError(404, f"no node {server_id!r} is registered", "server_id") from None
    if wants_fulfil and not _may_order(request, ctx):
        answer["warnings"] = [*answer["warnings"], FULFIL_NOT_AUTHORISED]
    elif wants_fulfil:
        calls = calls_for(ctx.worker) if _fulfils_from_civitai(body, ctx) else None
        fulfilment = await run_in_threadpool(lambda: fulfil_job(ctx.registry.db(), calls, answer, resolutions, nodes,
                                                                server_id, own_server_id=ctx.config.own_server_id,
                                                                ranking=ranking))
        answer = fulfilment.answer
        if fulfilment.ordered:
            ctx.signals.notify(server_id)
    if not record:
        background = None
    elif answer["ok"]:
        background = _after(ctx, record_last_used, resolutions, server_id=server_id)
    else:
        background = _wanted_task(ctx, resolutions)
    return JSONResponse(answer, background=background)


async def checkpoint_verify(request: Request) -> JSONResponse:
    """One model by Civitai version id or hash (seed-compatible).
    ---
    summary: Is this model (by Civitai version id or any hash) on an online node
    description: >
      Body {"civitai_version_id": 1387174} or {"hash": "<SHA256 | AutoV2 | AutoV1 | AutoV3 | 12-hex short hash>"},
      optionally "type" (default checkpoint). As in the seed, a civitai_version_id that is not a number is taken as
      a hash.
    responses:
      200: {description: whether an online node holds the model}
      400: {description: "neither a version id nor a hash, or a malformed one; `field` names it"}
      401: {description: "a queue token is configured (MODELSYNC_QUEUE_TOKEN) and none was sent"}
      403: {description: "the Bearer token is neither the queue token nor the admin token"}
    """
    ctx = context(request)
    _require_queue_token(request, ctx)
    body = expect_object(await read_json(request, ctx.config.max_request_bytes, ctx.config.max_decompressed_bytes))
    version, hash_value = body.get("civitai_version_id"), body.get("hash")
    if version is None and hash_value is None:
        raise ApiError(400, "give civitai_version_id or hash", "civitai_version_id")
    kind = parse_kind(body.get("type", "checkpoint"), "type")
    if version is not None and (isinstance(version, int) and not isinstance(version, bool) and version > 0
                                or isinstance(version, str) and version.strip().isdigit()):
        if int(version) > MAX_ROW_ID:
            raise ApiError(400, f"civitai_version_id must be at most {MAX_ROW_ID}", "civitai_version_id")
        provided, reference = version, ModelReference(kind, civitai_version_id=int(version))
        interpreted_as = "civitai_version_id"
    else:
        name = "hash" if hash_value is not None else "civitai_version_id"
        provided = hash_value if hash_value is not None else version
        reference = ModelReference(kind, hashes=(parse_hash(provided, "any", name),))
        interpreted_as = "hash"
    db = ctx.registry.db()
    with read_snapshot(db):
        return JSONResponse(verify(db, _nodes(ctx), reference, provided, interpreted_as))


def wanted(request: Request) -> JSONResponse:
    """The models jobs asked for that no node had, most requested first.
    ---
    summary: Most-wanted missing models
    parameters:
      - {name: kind, in: query, description: "checkpoint, lora, vae, embedding, controlnet, ..."}
      - {name: missing_only, in: query, description: "true (default): leave out what some node holds by now"}
      - {name: limit, in: query, description: "1-500 (default 50)"}
      - {name: offset, in: query}
    responses:
      200: {description: a page of the most-wanted list}
      400: {description: "a bad kind, missing_only, limit or offset, named in `field`"}
      401: {description: "a queue token is configured (MODELSYNC_QUEUE_TOKEN) and none was sent"}
      403: {description: "the Bearer token is neither the queue token nor the admin token"}
    """
    ctx = context(request)
    _require_queue_token(request, ctx)
    params = request.query_params
    kind = parse_kind(params["kind"], "kind") if params.get("kind") else None
    missing_only = (params.get("missing_only") or "true").lower()
    if missing_only not in ("true", "false", "1", "0", "yes", "no"):
        raise ApiError(400, "missing_only must be true or false", "missing_only")
    limit = int_param(dict(params), "limit", 50, 1, MAX_PAGE_SIZE)
    offset = int_param(dict(params), "offset", 0, 0, 10**9)
    db = ctx.registry.db()
    with read_snapshot(db):
        return JSONResponse(list_wanted(db, limit=limit, offset=offset, kind=kind,
                                        missing_only=missing_only in ("true", "1", "yes"),
                                        name_conflicts=ctx.config.name_conflicts))


ROUTES = [
    Route("/api/v1/jobs/availability", jobs_availability, methods=["POST"]),
    Route("/api/v1/servers/{server_id}/dispatch-check", dispatch_check, methods=["POST"]),
    Route("/api/v1/checkpoint-verify", checkpoint_verify, methods=["POST"]),
    Route("/api/v1/models/wanted", wanted, methods=["GET"]),
]
