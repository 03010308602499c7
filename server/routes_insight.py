"""Demand analytics, the fleet's risks and each node's recommendations (server/insight holds the logic).

Who may read: as the job checks (server/routes_jobs.py), with MODELSYNC_QUEUE_TOKEN set only the queue token or the
admin token (demand tells what the queue's jobs ask for); a node may also read its own recommendations with its own
token. Without a queue token, anyone may read them, as the rest of the read API. Decided from the headers alone
(these are GETs: no body is read).
"""
from __future__ import annotations


from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from modelsync.shared.catalog import read_snapshot
from modelsync.shared.jobs.requirements import parse_kind

from .auth import bearer_token, is_node_token, is_queue_or_admin_token
from .context import ServerContext, context
from .errors import ApiError
from .insight import analytics
from .insight.recommendations import fleet_view, recommendations
from .queries import MAX_PAGE_SIZE, int_param
from .registry import MAX_ROW_ID, utc_now
from .transfers.params import node_id


def may_read(request: Request, ctx: ServerContext, server_id: str | None = None) -> None:
    """With a queue token configured: 401 without a Bearer token; 403 unless it is the queue or admin token (or, for
    `server_id`'s own recommendations, that node's token)."""
    expected = ctx.config.queue_token
    if expected is None:
        return
    presented = bearer_token(request)
    if presented is None:
        raise ApiError(401, "analytics need the queue token or the admin token (a node: its own token for its "
                            "recommendations) as 'Authorization: Bearer <token>'", "Authorization",
                       {"WWW-Authenticate": "Bearer"})
    if is_queue_or_admin_token(presented, expected, ctx.admin_token):
        return
    if server_id is not None:
        if is_node_token(ctx.registry.db(), server_id, presented):
            return
    raise ApiError(403, "the token is neither the queue token nor the admin token"
                        + (f" nor node {server_id}'s token" if server_id else ""), "Authorization")


def _flush(ctx: ServerContext) -> None:
    """The counts taken in memory are written first: an answer includes every check made before it."""
    if ctx.demand is not None:
        ctx.demand.flush()


async def demand(request: Request) -> JSONResponse:
    """Job demand per model over a window.
    ---
    summary: How often pre-submission job checks named each model, with trend and forecast; or one model's series
    description: >
      Counted once per model a pre-submission availability check names (unless "record" is false), met or unmet
      (unmet: no online node held it); dispatch-checks never count. window is 24h (default), 7d or 30d: the hourly
      UTC buckets ending with the last complete hour (the running hour is in none). trend = (this window - previous
      window) / previous window, null when the previous had none; forecast = the exponential smoothing (alpha 0.3) of this window's hourly counts times
      the window's hours (docs/insight.md). With model_id, that model's hourly series instead. With
      MODELSYNC_QUEUE_TOKEN set, the queue or admin token is needed.
    parameters:
      - {name: window, in: query, description: "24h | 7d | 30d"}
      - {name: kind, in: query, description: "checkpoint, lora, vae, embedding, ... (the kind the job named)"}
      - {name: model_id, in: query, description: "one model's hourly series"}
      - {name: limit, in: query, description: "models listed, 1-500 (default 100), most requested first"}
    responses:
      200: {description: the demand per model (or one model's series)}
      400: {description: "a bad window, kind, model_id or limit, named in `field`"}
      401: {description: "a queue token is configured and none was sent"}
      403: {description: "the token is neither the queue token nor the admin token"}
      404: {description: no such model}
    """
    ctx = context(request)
    may_read(request, ctx)
    params = dict(request.query_params)
    window = analytics.window_of(params.get("window"))
    kind = parse_kind(params["kind"], "kind") if params.get("kind") else None
    model_id = int_param(params, "model_id", 0, 1, MAX_ROW_ID) if params.get("model_id") else None
    limit = int_param(params, "limit", 100, 1, MAX_PAGE_SIZE)

    def read() -> dict:
        _flush(ctx)
        db = ctx.registry.db()
        with read_snapshot(db):
            if model_id is not None:
                return analytics.demand_series(db, ctx.liveness, utc_now(), window, model_id)
            return analytics.demand(db, ctx.liveness, utc_now(), window, kind, limit)

    return JSONResponse(await run_in_threadpool(read))


async def fleet(request: Request) -> JSONResponse:
    """The fleet's risks.
    ---
    summary: Models one failure away from unavailable, unmet demand, cold models and each node's free disk
    description: >
      single_holder: models held by exactly one node; unmet: models jobs asked for in the last 30 days that no online
      node holds; cold: models no pre-submission check named and no approved dispatch used in 30 days, with the disk
      each node would get back (only once demand has been recorded for 30 days: before that `cold.known` is false
      and nothing is called cold); nodes: each node's free disk and floor as it last reported. Lists are capped at
      100 (the totals say how many). With MODELSYNC_QUEUE_TOKEN set, the queue or admin token is needed.
    responses:
      200: {description: the fleet's risks}
      401: {description: "a queue token is configured and none was sent"}
      403: {description: "the token is neither the queue token nor the admin token"}
    """
    ctx = context(request)
    may_read(request, ctx)

    def read() -> dict:
        _flush(ctx)
        db = ctx.registry.db()
        with read_snapshot(db):
            return analytics.fleet(db, ctx.liveness, utc_now())

    return JSONResponse(await run_in_threadpool(read))


async def server_recommendations(request: Request) -> JSONResponse:
    """What a node should hold.
    ---
    summary: Models to place on this node and models it could drop
    description: >
      place: models jobs asked for in the last 7 days that the node does not hold, most requested first, each fitting
      the free disk of the root it would land on above the node's floor (counting the ones listed before it), with
      the reason and the source a transfer would use (a peer node that can serve it now, else Civitai when the model
      has a Civitai version, else none); empty while the node has reported no free disk. drop: models the node holds
      that are cold (as in /api/v1/analytics/fleet) and held by at least two other nodes. With
      MODELSYNC_QUEUE_TOKEN set: the queue or admin token, or the node's own token.
    responses:
      200: {description: the node's recommendations}
      400: {description: a malformed server_id}
      401: {description: "a queue token is configured and none was sent"}
      403: {description: "the token is neither the queue token, the admin token nor this node's token"}
      404: {description: no such node}
    """
    ctx = context(request)
    server_id = node_id(request.path_params["server_id"], "server_id")
    may_read(request, ctx, server_id)

    def read() -> dict:
        _flush(ctx)
        db = ctx.registry.db()
        with read_snapshot(db):
            return recommendations(db, fleet_view(db, ctx.liveness, utc_now()), server_id)

    return JSONResponse(await run_in_threadpool(read))


ROUTES = [
    Route("/api/v1/analytics/demand", demand, methods=["GET"]),
    Route("/api/v1/analytics/fleet", fleet, methods=["GET"]),
    Route("/api/v1/servers/{server_id}/recommendations", server_recommendations, methods=["GET"]),
]
