"""The dashboard's Webhooks page: a shell the page's script fills from the admin API (webhooks.js), so endpoint URLs
and the delivery log are shown only to whoever holds the admin token."""
from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from .dashboard import templates
from .webhooks.events import EVENT_TYPES


async def webhooks_page(request: Request) -> Response:
    return templates.TemplateResponse(request, "webhooks.html", {"title": "Webhooks", "nav": "webhooks",
                                                                 "event_types": EVENT_TYPES})


ROUTES: list[Route] = [Route("/dashboard/webhooks", webhooks_page, methods=["GET"], include_in_schema=False)]
