"""The admin API of webhooks (docs/webhooks.md): endpoints, their delivery log, a retry, a test event. Admin token
on every route, checked before a body is read."""
from __future__ import annotations

from typing import Any

from modelsync.shared.catalog import read_snapshot
from modelsync.shared.webhooks.signing import new_secret
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from .auth import require_admin
from .body import expect_object, read_json
from .context import ServerContext, context
from .errors import ApiError
from .queries import MAX_PAGE_SIZE, int_param
from .registry import RowIdConvertor  # noqa: F401  (registers {id:rowid}, used by ROUTES)
from .url_param import http_url
from .webhooks import store
from .webhooks.events import ALL_EVENTS, EVENT_TYPES

MAX_DESCRIPTION_CHARS = 500
DELIVERY_STATES = ("pending", "delivered", "failed")


def _admin(request: Request) -> ServerContext:
    ctx = context(request)
    require_admin(request, ctx.admin_token)
    return ctx


def _url(value: Any) -> str:
    http_url(value, "url", query_allowed=True)
    return value


def _events(value: Any) -> list[str]:
    if not isinstance(value, list) or not value or not all(isinstance(e, str) for e in value):
        raise ApiError(400, f'events must be a non-empty list of event types, or ["{ALL_EVENTS}"]', "events")
    unknown = [e for e in value if e not in EVENT_TYPES and e != ALL_EVENTS]
    if unknown:
        raise ApiError(400, f"unknown event {unknown[0]!r}; known: {', '.join(EVENT_TYPES)}", "events")
    return [ALL_EVENTS] if ALL_EVENTS in value else sorted(set(value), key=EVENT_TYPES.index)


def _description(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_DESCRIPTION_CHARS:
        raise ApiError(400, f"description must be a string of at most {MAX_DESCRIPTION_CHARS} characters", "description")
    return value


def _endpoint(ctx: ServerContext, endpoint_id: int) -> store.Endpoint:
    found = store.endpoint(ctx.registry.db(), endpoint_id)
    if found is None:
        raise ApiError(404, f"no webhook {endpoint_id}", "id")
    return found


async def create_webhook(request: Request) -> JSONResponse:
    """Add a webhook endpoint (admin).
    ---
    summary: Add a webhook endpoint; the answer holds its signing secret, shown this once (admin token)
    description: >
      Body {"url": "https://receiver.example/hook", "events": ["node.offline", ...] or ["*"], "description": "..."}.
      The URL must be http or https without credentials; loopback and private addresses are allowed (a receiver on
      the LAN: see docs/security.md). Events are signed in the Standard Webhooks form with the `whsec_` secret.
    responses:
      201: {description: "the endpoint, with `secret` (never shown again)"}
      400: {description: "a bad url, events or description; `field` names it"}
      401: {description: no admin token}
      403: {description: not the admin token}
    """
    ctx = _admin(request)
    body = expect_object(await read_json(request, ctx.config.max_request_bytes, ctx.config.max_decompressed_bytes))
    url, events, description = _url(body.get("url")), _events(body.get("events")), _description(body.get("description"))
    secret = new_secret()
    created = await run_in_threadpool(
        lambda: store.create_endpoint(ctx.registry.db(), url, events, description, secret))
    return JSONResponse({**created.to_dict(backlog=0), "secret": secret}, status_code=201)


def list_webhooks(request: Request) -> JSONResponse:
    """Every webhook endpoint (admin).
    ---
    summary: Every webhook endpoint with its backlog and what the backlog cap dropped (admin token)
    responses:
      200: {description: the endpoints (never their secrets)}
      401: {description: no admin token}
      403: {description: not the admin token}
    """
    ctx = _admin(request)
    db = ctx.registry.db()
    with read_snapshot(db):
        backlogs = store.backlogs(db)
        endpoints = [e.to_dict(backlogs.get(e.id, 0)) for e in store.endpoints(db)]
    return JSONResponse({"webhooks": endpoints, "events": list(EVENT_TYPES)})


async def delete_webhook(request: Request) -> JSONResponse:
    """Delete a webhook endpoint (admin).
    ---
    summary: Delete a webhook endpoint with its undelivered events and its delivery log (admin token)
    responses:
      200: {description: the endpoint is deleted}
      401: {description: no admin token}
      403: {description: not the admin token}
      404: {description: no such webhook}
    """
    ctx = _admin(request)
    endpoint_id = request.path_params["id"]
    if not await run_in_threadpool(lambda: store.delete_endpoint(ctx.registry.db(), endpoint_id)):
        raise ApiError(404, f"no webhook {endpoint_id}", "id")
    return JSONResponse({"deleted": endpoint_id})


def list_deliveries(request: Request) -> JSONResponse:
    """An endpoint's delivery log (admin).
    ---
    summary: An endpoint's deliveries, newest first, with each one's tries and last answer (admin token)
    parameters:
      - {name: state, in: query, description: "pending, delivered or failed"}
      - {name: limit, in: query, description: "1-500 (default 50)"}
      - {name: offset, in: query}
    responses:
      200: {description: a page of the delivery log}
      400: {description: "a bad state, limit or offset, named in `field`"}
      401: {description: no admin token}
      403: {description: not the admin token}
      404: {description: no such webhook}
    """
    ctx = _admin(request)
    params = dict(request.query_params)
    state = params.get("state") or None
    if state is not None and state not in DELIVERY_STATES:
        raise ApiError(400, f"state must be one of {', '.join(DELIVERY_STATES)}", "state")
    limit = int_param(params, "limit", 50, 1, MAX_PAGE_SIZE)
    offset = int_param(params, "offset", 0, 0, 10**9)
    db = ctx.registry.db()
    with read_snapshot(db):
        endpoint = _endpoint(ctx, request.path_params["id"])
        deliveries, total = store.deliveries(db, endpoint.id, state, limit, offset)
        backlog = store.backlogs(db).get(endpoint.id, 0)
    return JSONResponse({"webhook": endpoint.to_dict(backlog), "deliveries": [d.to_dict() for d in deliveries],
                         "total": total, "limit": limit, "offset": offset})


async def retry_delivery(request: Request) -> JSONResponse:
    """Send a delivery again (admin).
    ---
    summary: Queue a delivery again, due now with a fresh schedule of retries; enables a disabled endpoint (admin token)
    description: >
      The delivery keeps its webhook-id (a receiver that already has it may drop the copy). It is sent in its place
      in the endpoint's order: after older undelivered events, before newer ones.
    responses:
      200: {description: the delivery as queued}
      401: {description: no admin token}
      403: {description: not the admin token}
      404: {description: no such webhook or delivery}
    """
    ctx = _admin(request)
    endpoint_id, delivery_id = request.path_params["id"], request.path_params["delivery_id"]

    def work() -> store.Delivery:
        db = ctx.registry.db()
        found = store.delivery(db, delivery_id)
        if found is None or found.endpoint_id != endpoint_id:
            raise ApiError(404, f"no delivery {delivery_id} of webhook {endpoint_id}", "delivery_id")
        return store.retry(db, delivery_id)

    delivery = await run_in_threadpool(work)
    if ctx.webhooks is not None:
        ctx.webhooks.wake()
    return JSONResponse(delivery.to_dict())


async def test_webhook(request: Request) -> JSONResponse:
    """Send a test event now (admin).
    ---
    summary: Send a webhook.test event to this endpoint now, once, and answer with the try's outcome (admin token)
    responses:
      200: {description: "the test delivery: state delivered or failed, the receiver's status or the error"}
      401: {description: no admin token}
      403: {description: not the admin token}
      404: {description: no such webhook}
      503: {description: webhook delivery is not running}
    """
    ctx = _admin(request)
    endpoint = await run_in_threadpool(_endpoint, ctx, request.path_params["id"])
    if ctx.webhooks is None:
        raise ApiError(503, "webhook delivery is not running", "id")
    delivery = await run_in_threadpool(ctx.webhooks.send_test, endpoint)
    return JSONResponse(delivery.to_dict())


ROUTES: list[Route] = [
    Route("/api/v1/webhooks", create_webhook, methods=["POST"]),
    Route("/api/v1/webhooks", list_webhooks, methods=["GET"]),
    Route("/api/v1/webhooks/{id:rowid}", delete_webhook, methods=["DELETE"]),
    Route("/api/v1/webhooks/{id:rowid}/deliveries", list_deliveries, methods=["GET"]),
    Route("/api/v1/webhooks/{id:rowid}/deliveries/{delivery_id:rowid}/retry", retry_delivery, methods=["POST"]),
    Route("/api/v1/webhooks/{id:rowid}/test", test_webhook, methods=["POST"]),
]
