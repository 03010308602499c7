"""The web dashboard: server-rendered pages (Jinja2, autoescaped) over the registry, static CSS and JavaScript.

Browsing needs no token; the admin actions on these pages call the JSON API with the admin token the operator
enters once (kept in the browser's sessionStorage). Every response carries a Content-Security-Policy without
inline scripts or styles (`security_headers`).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Awaitable, Callable, ClassVar
from urllib.parse import urlencode

import jinja2
from markupsafe import Markup
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelsync.shared.catalog import read_snapshot
from modelsync.shared.jobs.requirements import FORMATS as JOB_FORMATS
from modelsync.shared.jobs.requirements import KINDS as JOB_KINDS
from modelsync.shared.records import BASES, MANUAL_SOURCE, METADATA_FIELDS, MODEL_TYPES, UNKNOWN_MARK
from modelsync.shared.units import human_size

from . import dashboard_queries, queries
from .context import context
from .errors import ApiError
from .registry import RowIdConvertor  # noqa: F401  (registers {id:rowid}, used by ROUTES)
from .transfers import ACTIVE_STATES as TRANSFER_ACTIVE_STATES
from .transfers import STATES as TRANSFER_STATES
from .transfers.params import node_id

HERE = Path(__file__).parent
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self'; style-src 'self'; script-src 'self'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
PAGE_SIZES = (25, 50, 100, 200)
CIVITAI_SITE = "https://civitai.com"
# the Metadata column's words: which source filled the model's fields (the highest-priority one that gave any)
METADATA_SOURCES = {
    "a1111": "the A1111/Forge model JSON beside the file (<name>.json, written by the WebUI's “Edit metadata”)",
    "civitai_json": "a Civitai JSON sidecar beside the file (<name>.civitai.info, or a downloader's .json)",
    "embedded": "the file itself: its safetensors header metadata and what its tensors show (type, base)",
    "civitai_api": "Civitai, asked by the file's hash by this server",
    MANUAL_SOURCE: "an operator's override on this dashboard (wins over every source)",
    UNKNOWN_MARK: "no source gave a field: no sidecar, no embedded metadata, and Civitai does not know the file "
                  "(or has not been asked yet)",
}


def time_tag(moment: str | None, empty: str = "never") -> Markup:
    """A stored UTC timestamp as <time>: common.js shows it in the browser's local time, with "3 min ago"; the
    title keeps UTC for hovering."""
    if not moment:
        return Markup('<span class="sub">{}</span>').format(empty)
    return Markup('<time datetime="{0}" title="{0} UTC">{0}</time>').format(moment)


def human_duration(seconds: float | None) -> str:
    """A transfer's ETA: 42 -> "42 s", 125 -> "2 min 5 s", 7260 -> "2 h 1 min"; "" when unknown.
    transfers.js writes the same words while the page refreshes itself."""
    if seconds is None:
        return ""
    whole = math.floor(seconds + 0.5)  # as JavaScript's Math.round
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    return f"{whole // 3600} h {whole % 3600 // 60} min"


def human_speed(bytes_per_second: float | None) -> str:
    return "" if bytes_per_second is None else human_size(math.floor(bytes_per_second + 0.5)) + "/s"


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True, undefined=jinja2.StrictUndefined)
    env.filters["size"] = human_size
    env.filters["when"] = time_tag
    env.filters["duration"] = human_duration
    env.filters["speed"] = human_speed
    return env


templates = Jinja2Templates(env=_environment())


def query_url(request: Request, **changes: Any) -> str:
    """This page's URL with some query parameters changed (None drops one); a filter change goes back to page 1."""
    params = dict(request.query_params)
    if "page" not in changes:
        params.pop("page", None)
    for name, value in changes.items():
        if value is None or value == "":
            params.pop(name, None)
        else:
            params[name] = str(value)
    return request.url.path + ("?" + urlencode(params) if params else "")


def _render(request: Request, name: str, status_code: int = 200, **values: Any) -> Response:
    return templates.TemplateResponse(request, name, {"query_url": lambda **c: query_url(request, **c), **values},
                                      status_code=status_code)


def _page(handler: Callable[[Request], Response]) -> Callable[[Request], Awaitable[Response]]:
    """A page handler run in the thread pool (it reads the registry); a bad parameter or unknown id is an HTML page."""

    async def page(request: Request) -> Response:
        try:
            return await run_in_threadpool(handler, request)
        except ApiError as exc:
            return _render(request, "error.html", exc.status, title="Error", nav="", status=exc.status, message=exc.message)

    page.__name__ = handler.__name__
    return page


@_page
def models_page(request: Request) -> Response:
    ctx = context(request)
    db = ctx.registry.db()
    params = dict(request.query_params)
    params.setdefault("limit", "50")
    with read_snapshot(db):  # the rows, their nodes and the files not hashed yet from one state
        listing = queries.list_models(db, ctx.liveness, params)
        held = dashboard_queries.holders(db, [m["id"] for m in listing["models"]])
        unhashed = dashboard_queries.unhashed_count(db, params.get("server"))
    return _render(
        request, "models.html", title="Models", nav="models", listing=listing, held=held, params=params,
        types=MODEL_TYPES, bases=BASES, nodes=dashboard_queries.node_choices(db), page_sizes=PAGE_SIZES,
        availability_filters=queries.AVAILABILITY_FILTERS, model_path_set=bool(ctx.own_node.model_paths),
        unhashed=unhashed, metadata_sources=METADATA_SOURCES, own_node=ctx.liveness.own_server_id,
    )


@_page
def model_page(request: Request) -> Response:
    ctx = context(request)
    db = ctx.registry.db()
    with read_snapshot(db):  # the nodes offered for a copy are those that do not hold the model shown
        info = queries.model_info(db, ctx.liveness, request.path_params["id"])
        copy_targets = dashboard_queries.copy_targets(db, ctx.liveness, {s["server_id"] for s in info["servers"]})
    metadata = [(name, info[name], info["field_sources"].get(name)) for name in METADATA_FIELDS if info.get(name) is not None]
    return _render(
        request, "model.html", title=info["name"] or info["filename"] or info["sha256"][:10], nav="models", m=info,
        metadata=metadata, types=MODEL_TYPES, bases=BASES, civitai_site=CIVITAI_SITE, copy_targets=copy_targets,
    )


@_page
def nodes_page(request: Request) -> Response:
    ctx = context(request)
    db = ctx.registry.db()
    model_type = request.query_params.get("type") or "checkpoint"
    page = queries.int_param(dict(request.query_params), "page", 1, 1, 10**9)
    with read_snapshot(db):
        grid = dashboard_queries.matrix(db, ctx.liveness, model_type, page, request.query_params.get("incomplete") == "1")
    return _render(request, "nodes.html", title="Nodes", nav="nodes", matrix=grid, types=MODEL_TYPES)


def _page_number(request: Request) -> int:
    return queries.int_param(dict(request.query_params), "page", 1, 1, 10**9)


@_page
def problems_page(request: Request) -> Response:
    db = context(request).registry.db()
    server = request.query_params.get("server") or None
    state = request.query_params.get("state") or None
    with read_snapshot(db):
        files = dashboard_queries.unusable_files(db, server, state, _page_number(request))
        folders = dashboard_queries.unavailable_folders(db, server)
        nodes = dashboard_queries.node_choices(db)
    return _render(request, "problems.html", title="Problems", nav="problems", files=files, folders=folders, nodes=nodes,
                   server=server or "", state=state or "", states=dashboard_queries.UNUSABLE_STATES)


@_page
def unhashed_page(request: Request) -> Response:
    db = context(request).registry.db()
    server = request.query_params.get("server") or None
    with read_snapshot(db):
        files = dashboard_queries.unhashed_files(db, server, _page_number(request))
        nodes = dashboard_queries.node_choices(db)
    return _render(request, "unhashed.html", title="Not hashed yet", nav="models", files=files, nodes=nodes,
                   server=server or "")


@_page
def wanted_page(request: Request) -> Response:
    # the list itself is read by wanted.js: GET /api/v1/models/wanted needs the queue token when one is set
    return _render(request, "wanted.html", title="Wanted models", nav="wanted", kinds=list(JOB_KINDS))


@_page
def jobs_page(request: Request) -> Response:
    return _render(request, "jobs.html", title="Job check", nav="jobs", formats=JOB_FORMATS)


@_page
def overrides_page(request: Request) -> Response:
    models = dashboard_queries.overridden_models(context(request).registry.db())
    return _render(request, "overrides.html", title="Overrides", nav="overrides", models=models)


@_page
def transfers_page(request: Request) -> Response:
    db = context(request).registry.db()
    server = request.query_params.get("server") or None
    state = request.query_params.get("state") or None
    if server is not None:
        node_id(server, "server")
    with read_snapshot(db):
        listing = dashboard_queries.transfers_page(db, server, state, _page_number(request))
        nodes = dashboard_queries.node_choices(db)
    return _render(request, "transfers.html", title="Transfers", nav="transfers", listing=listing, nodes=nodes,
                   server=server or "", state=state or "", states=TRANSFER_STATES, active_states=TRANSFER_ACTIVE_STATES,
                   page_size=dashboard_queries.TRANSFERS_PAGE_SIZE)


def to_dashboard(request: Request) -> RedirectResponse:
    return RedirectResponse("/dashboard/models", status_code=302)


def favicon(request: Request) -> RedirectResponse:
    """What a browser asks for on a page that names no icon (the API's JSON opened in a tab)."""
    return RedirectResponse("/dashboard/static/favicon.svg", status_code=301)


class SecurityHeaders:
    """Adds the Content-Security-Policy and related headers to every HTTP response (a plain ASGI wrapper, so the
    API's hot paths pay only for a few header lines)."""

    HEADERS: ClassVar[list[tuple[bytes, bytes]]] = [
        (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"same-origin"),
        (b"x-frame-options", b"DENY"),
    ]

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *self.HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)


ROUTES: list[BaseRoute] = [
    Route("/", to_dashboard, methods=["GET"], include_in_schema=False),
    Route("/dashboard", to_dashboard, methods=["GET"], include_in_schema=False),
    Route("/favicon.ico", favicon, methods=["GET"], include_in_schema=False),
    Route("/dashboard/models", models_page, methods=["GET"], include_in_schema=False),
    Route("/dashboard/models/{id:rowid}", model_page, methods=["GET"], include_in_schema=False),
    Route("/dashboard/nodes", nodes_page, methods=["GET"], include_in_schema=False),
    Route("/dashboard/problems", problems_page, methods=["GET"], include_in_schema=False),
    Route("/dashboard/unhashed", unhashed_page, methods=["GET"], include_in_schema=False),
    Route("/dashboard/wanted", wanted_page, methods=["GET"], include_in_schema=False),
    Route("/dashboard/jobs", jobs_page, methods=["GET"], include_in_schema=False),
    Route("/dashboard/overrides", overrides_page, methods=["GET"], include_in_schema=False),
    Route("/dashboard/transfers", transfers_page, methods=["GET"], include_in_schema=False),
    Mount("/dashboard/static", StaticFiles(directory=HERE / "static"), name="static"),
]
