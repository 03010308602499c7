"""The transfer API: ordering a copy of a model to a node, listing, cancelling and retrying transfers (server/transfers
holds the logic), and the destination node's side: its orders (a long-poll) and its progress reports.

Who the caller is (the admin, or which node) is decided from the Authorization header before a body is read. Orders
carry grants: that answer is never logged, cached or listed elsewhere.
"""
from __future__ import annotations

import asyncio
import hmac
import math
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from . import transfers
from .auth import bearer_token, is_node_token, require_admin, token_hash
from .body import expect_object, read_json
from .context import ServerContext, context
from .errors import ApiError
from .queries import int_param
from .registry import MAX_ROW_ID, utc_now
from .transfers import Order, Transfer
from .transfers.civitai_calls import calls_for
from .transfers.downloads import DownloadSettings
from .transfers.ordering import MAX_PAGE_SIZE
from .transfers.params import node_id, rate
from .transfers.requested import order_requested

MAX_BODY_BYTES = 16 * 1024  # an order or a progress report is a few hundred bytes
MAX_WAIT_SECONDS = 30.0  # the longest a long-poll for orders is held
MAX_RUNNING_IDS = 1000
ORDER_FIELDS = frozenset({"server_id", "sha256", "model_id", "source", "from_server_id", "civitai_version_id",
                          "file_id", "url", "role"})
PROGRESS_FIELDS = frozenset({"state", "bytes_done", "size", "speed_bps", "eta_seconds", "reason", "error", "dest_path",
                             "source_server_id", "civitai_retry_after"})
NO_STORE = {"Cache-Control": "no-store"}


def _caller(ctx: ServerContext, request: Request) -> str | None:
    """The node whose token the request carries, or None for the admin token; 401 without a token, 403 with one that
    is neither. One indexed read, on the event loop: a refused request costs no body and no thread."""
    presented = bearer_token(request)
    if presented is None:
        raise ApiError(401, "send the admin token or the node's token as 'Authorization: Bearer <token>'", "Authorization")
    if hmac.compare_digest(presented.encode(), ctx.admin_token.encode()):
        return None
    row = ctx.registry.db().conn.execute("SELECT id FROM servers WHERE token_hash = ?", [token_hash(presented)]).fetchone()
    if row is None:
        raise ApiError(403, "the token is neither a node's token nor the admin token", "Authorization")
    return row[0]


def _transfer_id(request: Request) -> int:
    return request.path_params["id"]


def _transfer(ctx: ServerContext, transfer_id: int) -> Transfer:
    return transfers.get_transfer(ctx.registry.db(), transfer_id)


def _fields(body: dict[str, Any], allowed: frozenset[str]) -> dict[str, Any]:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ApiError(400, f"unknown field {unknown[0]!r}; the fields are {', '.join(sorted(allowed))}", unknown[0])
    return body


async def create_transfer(request: Request) -> JSONResponse:
    """Order a copy of a model to a node.
    ---
    summary: Order a copy of a model to a node (admin token; or a node's own token, for transfers to itself)
    description: >
      Body {"server_id", "sha256" | "model_id", "source"?: "auto" | "peer" | "civitai", "from_server_id"?}, or
      {"server_id", "civitai_version_id", "file_id"? (default the version's primary file)}, or {"server_id", "url",
      "sha256" (required), "role"? (the folder role the file goes to: required when the registry does not know the
      model's type)}; the URL's file is named by its last path segment. "auto" prefers a peer holding the SHA256 and
      falls back to Civitai when the registry knows the model's Civitai version. Every field is checked before
      Civitai is asked. A Civitai version is read from Civitai (within the fleet's rate) and the model registered; a
      file for which Civitai lists no SHA256 is refused (422, no_hash). One transfer per node
      and model stands at a time: ordering it again returns the active one, or a failed one as it is until it is
      retried (200). The token is checked before the body is read. The destination node learns the order from its
      long-poll at once. A URL's query is never shown.
    responses:
      200: {description: "a transfer of this model to this node stands already: that one"}
      201: {description: "the transfer ordered"}
      400: {description: "a field is missing or wrong; `field` names it"}
      401: {description: no token}
      403: {description: "neither the admin token nor a node's token, or a node's token ordering for another node"}
      404: {description: "no such node or model, or Civitai knows no such version or file"}
      409: {description: "the node holds the model already, no node holds a usable copy to copy from (and no
        Civitai version is known), Civitai is off, or the destination is the server's own node (it runs no agent)"}
      422: {description: "no_hash: Civitai lists no SHA256 for the file"}
      503: {description: "Civitai cannot be asked now (the fleet backs off, it failed, or the request's turn in the
        fleet's Civitai rate is more than a few seconds away); Retry-After says when"}
    """
    ctx = context(request)
    caller = _caller(ctx, request)
    body = _fields(expect_object(await read_json(request, MAX_BODY_BYTES, MAX_BODY_BYTES)), ORDER_FIELDS)
    server_id = body.get("server_id")
    if caller is not None and server_id != caller:
        raise ApiError(403, f"node {caller} orders transfers only to itself; other orders need the admin token", "server_id")
    if server_id == ctx.config.own_server_id:
        raise ApiError(409, f"{server_id} is the server's own node (MODEL_PATH): it runs no agent to receive a copy",
                       "server_id")

    def work() -> tuple[Transfer, bool]:
        return order_requested(ctx.registry.db(), calls_for(ctx.worker), body,
                               requested_by="admin" if caller is None else "node")

    transfer, created = await run_in_threadpool(work)
    if created:
        ctx.signals.notify(transfer.server_id)
    return JSONResponse(transfer.to_dict(), status_code=201 if created else 200)


def list_transfers(request: Request) -> JSONResponse:
    """Transfers, newest first.
    ---
    summary: Transfers, newest first; `server_id` (the destination) and `state` filter. Never shows a grant.
    parameters:
      - {name: server_id, in: query}
      - {name: state, in: query}
      - {name: limit, in: query}
      - {name: offset, in: query}
    responses:
      200: {description: a page of transfers}
      400: {description: "a bad server_id, state, limit or offset, named in `field`"}
    """
    ctx = context(request)
    params = dict(request.query_params)
    server_id = node_id(params["server_id"], "server_id") if params.get("server_id") else None
    page = transfers.list_transfers(ctx.registry.db(), server_id=server_id, state=params.get("state") or None,
                          limit=int_param(params, "limit", 50, 1, MAX_PAGE_SIZE),
                          offset=int_param(params, "offset", 0, 0, MAX_ROW_ID))
    return JSONResponse(page.to_dict())


def get_transfer(request: Request) -> JSONResponse:
    """One transfer.
    ---
    summary: One transfer (never with a grant)
    responses:
      200: {description: the transfer}
      404: {description: no such transfer}
    """
    return JSONResponse(_transfer(context(request), _transfer_id(request)).to_dict())


async def cancel_transfer(request: Request) -> JSONResponse:
    """Cancel a transfer.
    ---
    summary: Cancel a transfer (admin token, or the destination node's own token)
    description: >
      An active or failed transfer becomes cancelled; the node stops at its next progress report and keeps its temp
      file for a retry. Cancelling a cancelled transfer changes nothing.
    responses:
      200: {description: the cancelled transfer}
      401: {description: no token}
      403: {description: "neither the admin token nor the destination node's token"}
      404: {description: no such transfer}
      409: {description: the transfer is done}
    """
    ctx = context(request)
    caller = _caller(ctx, request)
    transfer_id = _transfer_id(request)
    if caller is not None and _transfer(ctx, transfer_id).server_id != caller:
        raise ApiError(403, f"transfer {transfer_id} is to another node; node {caller} cancels only its own", "Authorization")
    cancelled = await run_in_threadpool(lambda: transfers.cancel(ctx.registry.db(), transfer_id))
    ctx.signals.notify(cancelled.server_id)
    return JSONResponse(cancelled.to_dict())


async def retry_transfer(request: Request) -> JSONResponse:
    """Retry a failed or cancelled transfer (admin).
    ---
    summary: Retry a failed or cancelled transfer (admin token)
    description: >
      The transfer is queued again, its attempts and failure cleared. Sources excluded for sending wrong bytes stay
      excluded until they hash their file again.
    responses:
      200: {description: "the transfer, queued"}
      401: {description: no admin token}
      403: {description: not the admin token}
      404: {description: no such transfer}
      409: {description: "the transfer is not failed or cancelled, another transfer of the model to that node
        stands, or the node holds the model now"}
    """
    ctx = context(request)
    require_admin(request, ctx.admin_token)
    transfer_id = _transfer_id(request)
    queued = await run_in_threadpool(lambda: transfers.retry(ctx.registry.db(), transfer_id))
    ctx.signals.notify(queued.server_id)
    return JSONResponse(queued.to_dict())


async def report_transfer_progress(request: Request) -> JSONResponse:
    """The destination node reports a transfer's progress or outcome.
    ---
    summary: A transfer's progress or outcome, from its destination node (its own token, checked before the body)
    description: >
      Body {"state": running | verifying | done | failed | cancelled, "bytes_done", "size"?, "speed_bps"?,
      "eta_seconds"?, "reason"? (a failure's reason word), "error"?, "dest_path"?, "source_server_id"?,
      "civitai_retry_after"? (seconds: Civitai answered the node 429 or 5xx; the fleet backs off that long)}. The answer
      is the transfer as it is now: a cancelled one tells the node to stop. What each report makes of a transfer:
      docs/api.md.
    responses:
      200: {description: the transfer as it is now}
      400: {description: "a field is missing or wrong; `field` names it"}
      401: {description: no token}
      403: {description: "not the token of the transfer's destination node"}
      404: {description: no such transfer}
    """
    ctx = context(request)
    caller = _caller(ctx, request)
    transfer_id = _transfer_id(request)
    if caller is None or _transfer(ctx, transfer_id).server_id != caller:
        raise ApiError(403, f"only the destination node of transfer {transfer_id} reports on it, with its own token",
                       "Authorization")
    body = _fields(expect_object(await read_json(request, MAX_BODY_BYTES, MAX_BODY_BYTES)), PROGRESS_FIELDS)
    retry_after = rate(body.pop("civitai_retry_after", None), "civitai_retry_after")
    key = ctx.config.civitai_api_key
    if key and isinstance(body.get("error"), str) and key in body["error"]:  # a node quoting a URL with ?token=
        body["error"] = body["error"].replace(key, "[CIVITAI_API_KEY]")
    if retry_after and ctx.worker is not None:
        ctx.worker.back_off_for(retry_after)

    def work() -> Transfer:
        db = ctx.registry.db()
        online = ctx.liveness.online_ids(db) if body.get("state") == "failed" else None  # only a failure asks
        return transfers.report_progress(db, transfer_id, caller, **{"state": None, "bytes_done": None, **body},
                                         online_ids=online)

    reported = await run_in_threadpool(work)
    if body.get("state") == "failed" and reported.active:  # a source failed: the next order names another source
        ctx.signals.notify(caller)
    return JSONResponse(reported.to_dict())


def _wait_seconds(text: str | None) -> float:
    if text is None or text == "":
        return 0.0
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise ApiError(400, "wait must be a number of seconds, 0 or more", "wait")
    return min(value, MAX_WAIT_SECONDS)


def _running_ids(text: str | None) -> frozenset[int]:
    parts = [part.strip() for part in (text or "").split(",") if part.strip()]
    if len(parts) > MAX_RUNNING_IDS:
        raise ApiError(400, f"running names at most {MAX_RUNNING_IDS} transfers", "running")
    if not all(part.isdigit() and 1 <= int(part) <= MAX_ROW_ID for part in parts):
        raise ApiError(400, "running must be transfer ids separated by commas", "running")
    return frozenset(int(part) for part in parts)


def _node_itself(ctx: ServerContext, request: Request, server_id: str) -> None:
    """The node's own token: orders carry grants made out to this node (the admin token is not the node)."""
    presented = bearer_token(request)
    if presented is None:
        raise ApiError(401, f"send node {server_id}'s token as 'Authorization: Bearer <token>'", "Authorization")
    if not is_node_token(ctx.registry.db(), server_id, presented):
        raise ApiError(403, f"the token is not node {server_id}'s own token (orders go to the node itself)", "Authorization")


def _download_settings(ctx: ServerContext) -> DownloadSettings:
    """The key goes with the orders only when the operator said so; the back-off is the fleet's."""
    key = ctx.config.civitai_api_key if ctx.config.share_civitai_key else None
    paused = ctx.worker is not None and ctx.worker.paused_seconds() > 0
    return DownloadSettings(ctx.config.civitai_api_base, paused, key)


async def transfer_orders(request: Request) -> JSONResponse:
    """A node asks for its transfer orders (a long-poll).
    ---
    summary: The node's transfers to start now, each with its sources and a fresh grant per source (the node's own token)
    description: >
      `wait` (seconds, at most 30; default 0): with nothing to start, the answer is held until an order, a cancel, a
      retry or a new source concerns this node, or the time is up (then `{"orders": []}`). `running`: the ids of the
      transfers the node runs now (comma-separated), left out of the answer. Each source has its `kind`: peer (with
      a grant), civitai (Civitai's download endpoint of the file and the version JSON; the server's API key only
      when MODELSYNC_SHARE_CIVITAI_KEY=true) or url. No Civitai order is handed out while the fleet backs off from
      Civitai. The answer carries grants and may carry the key: it is sent with Cache-Control no-store and never
      logged.
    parameters:
      - {name: wait, in: query}
      - {name: running, in: query}
    responses:
      200: {description: the orders (possibly none)}
      400: {description: "a bad wait or running, named in `field`"}
      401: {description: no token}
      403: {description: "not this node's own token"}
    """
    ctx = context(request)
    server_id = node_id(request.path_params["server_id"], "server_id")
    _node_itself(ctx, request, server_id)
    wait = _wait_seconds(request.query_params.get("wait"))
    running = _running_ids(request.query_params.get("running"))

    def read() -> list[Order]:
        db = ctx.registry.db()
        return transfers.orders_for(db, server_id, ctx.liveness.online_ids(db), utc_now(), in_progress=running,
                                    downloads=_download_settings(ctx))

    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while True:
        since = ctx.signals.version(server_id)  # before the read: a change meanwhile ends the wait at once
        found = await run_in_threadpool(read)
        remaining = deadline - loop.time()
        if found or remaining <= 0 or not await ctx.signals.wait(server_id, since, remaining):
            break
    return JSONResponse({"orders": [o.to_dict() for o in found]}, headers=NO_STORE)


ROUTES = [
    Route("/api/v1/transfers", create_transfer, methods=["POST"]),
    Route("/api/v1/transfers", list_transfers, methods=["GET"]),
    Route("/api/v1/transfers/{id:rowid}", get_transfer, methods=["GET"]),
    Route("/api/v1/transfers/{id:rowid}", cancel_transfer, methods=["DELETE"]),
    Route("/api/v1/transfers/{id:rowid}/retry", retry_transfer, methods=["POST"]),
    Route("/api/v1/transfers/{id:rowid}/progress", report_transfer_progress, methods=["POST"]),
    Route("/api/v1/servers/{server_id}/transfers/orders", transfer_orders, methods=["GET"]),
]
