"""The Starlette application: registry opened (and migrated) at start-up, the Civitai worker started and stopped
with it, every API route, JSON errors, the OpenAPI description at /api/v1/openapi.json, the dashboard at /dashboard."""
from __future__ import annotations

import contextlib
import logging
import time
from typing import AsyncIterator

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from . import (civitai_updates, dashboard, dashboard_insight, dashboard_webhooks, routes_insight, routes_jobs, routes_models,
               routes_overrides, routes_servers, routes_transfers, routes_webhooks)
from .auth import load_admin_token, trusted_networks
from .civitai_worker import CivitaiWorker
from .config import ServerConfig
from .context import ServerContext, context
from .errors import EXCEPTION_HANDLERS
from .insight import demand
from .openapi import build_document
from .own_node import OwnNode
from .previews import PreviewStore
from .queries import Liveness
from .registry import Registry
from .webhooks import service as webhooks

log = logging.getLogger(__name__)

# started in this order once the registry is open (each returns an object with stop(), or None), stopped in reverse
BACKGROUND = (civitai_updates.start, demand.start, webhooks.start)


def health(request: Request) -> JSONResponse:
    """Liveness and a few counts.
    ---
    summary: Health check
    description: >
      status is "degraded" while the registry's disk is full (a write failed for space: disk_full is true and
      reason says why); it is "ok" again as soon as a write that needs space succeeds.
    responses:
      200: {description: the server's state}
    """
    ctx = context(request)
    conn = ctx.registry.db().conn
    models = conn.execute("SELECT COUNT(*) FROM models").fetchone()[0]
    servers = conn.execute("SELECT COUNT(*) FROM servers").fetchone()[0]
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    disk_full = ctx.registry.disk_state()
    state = {"status": "ok", "disk_full": False} if disk_full is None else {
        "status": "degraded", "disk_full": True, "reason": disk_full.reason, "disk_full_since": disk_full.since}
    return JSONResponse(
        {
            **state,
            "schema_version": version,
            "models": models,
            "servers": servers,
            "civitai_worker": ctx.worker.status() if ctx.worker is not None else None,
            "uptime_seconds": round(time.monotonic() - request.app.state.started, 3),
        }
    )


def openapi(request: Request) -> JSONResponse:
    """This API's OpenAPI description.
    ---
    summary: The OpenAPI 3.1 document of this API (info.version is the modelsync release)
    responses:
      200: {description: the document}
    """
    state = request.app.state
    if getattr(state, "openapi_schema", None) is None:
        state.openapi_schema = build_document(request.app.routes)
    return JSONResponse(state.openapi_schema)


def create_app(config: ServerConfig | None = None) -> Starlette:
    config = config or ServerConfig.from_env()
    trusted_networks(config.trusted_proxies)  # a malformed MODELSYNC_TRUSTED_PROXIES stops the server here

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        registry = Registry(config.database_path, config.backups_path)
        registry.open()
        previews = PreviewStore(config.previews_path, config.preview_max_side)
        ctx = ServerContext(
            config=config,
            registry=registry,
            admin_token=load_admin_token(config),
            liveness=Liveness(config.offline_after_seconds, config.own_server_id),
            own_node=OwnNode(config),
            previews=previews,
        )
        if config.civitai_enabled:
            ctx.worker = CivitaiWorker(registry, config, previews)
            ctx.worker.start()
        app.state.modelsync = ctx
        running = [service for service in (start(ctx) for start in BACKGROUND) if service is not None]
        log.info("registry %s ready; Civitai worker %s", config.database_path, "running" if ctx.worker else "disabled")
        try:
            yield
        finally:
            for service in reversed(running):
                service.stop()
            if ctx.worker is not None:
                ctx.worker.stop()
            registry.close()
            log.info("stopped cleanly")

    app = Starlette(
        routes=[
            Route("/api/v1/health", health, methods=["GET"]),
            Route("/api/v1/openapi.json", openapi, methods=["GET"]),
            *routes_servers.ROUTES,
            *routes_models.ROUTES,
            *routes_jobs.ROUTES,
            *routes_overrides.ROUTES,
            *routes_transfers.ROUTES,
            *routes_insight.ROUTES,
            *routes_webhooks.ROUTES,
            *dashboard.ROUTES,
            *dashboard_insight.ROUTES,
            *dashboard_webhooks.ROUTES,
        ],
        middleware=[Middleware(dashboard.SecurityHeaders), Middleware(GZipMiddleware, minimum_size=4096)],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=lifespan,
    )
    app.state.started = time.monotonic()
    return app
