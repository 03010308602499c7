"""The dashboard's Insights page: job demand as a chart (a plain SVG drawn here, on the server: no script, no CDN),
the most requested models, the fleet's risks and each node's recommendations.

Like every dashboard page it is read without a token. The references jobs wrote that the registry does not know
(free text from the queue) are shown only when no queue token is set; with one, the API's answers (which need it)
are the place to read them."""
from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from modelsync.shared.catalog import read_snapshot
from modelsync.shared.insight.forecast import WINDOWS

from .context import context
from .dashboard import _page, _render
from .insight import analytics
from .insight.recommendations import fleet_view, recommendations
from .registry import utc_now

CHART_WIDTH, CHART_HEIGHT, CHART_LEFT, CHART_BOTTOM = 720, 180, 40, 20


def chart(series: list[dict[str, Any]]) -> dict[str, Any]:
    """Bar geometry for the hourly series: one bar per hour (requests), its unmet part drawn over it."""
    top = max((p["requests"] for p in series), default=0) or 1
    plot_width, plot_height = CHART_WIDTH - CHART_LEFT, CHART_HEIGHT - CHART_BOTTOM
    step = plot_width / max(len(series), 1)
    bars = []
    for i, point in enumerate(series):
        height = plot_height * point["requests"] / top
        unmet = plot_height * point["unmet"] / top
        bars.append({"x": round(CHART_LEFT + i * step, 2), "width": round(max(step - 1, 0.5), 2),
                     "y": round(plot_height - height, 2), "height": round(height, 2),
                     "unmet_y": round(plot_height - unmet, 2), "unmet_height": round(unmet, 2),
                     "title": f"{point['hour']}: {point['requests']} requests, {point['unmet']} unmet"})
    ticks = [{"x": bar["x"], "label": point["hour"][5:13].replace("T", " ") + "h"}
             for bar, point in list(zip(bars, series))[:: max(len(series) // 6, 1)]]
    return {"width": CHART_WIDTH, "height": CHART_HEIGHT, "plot_height": plot_height, "left": CHART_LEFT,
            "top": top, "bars": bars, "ticks": ticks}


@_page
def insights_page(request: Request) -> Response:
    ctx = context(request)
    window = analytics.window_of(request.query_params.get("window"))
    model_id = request.query_params.get("model_id")
    if ctx.demand is not None:
        ctx.demand.flush()
    now = utc_now()
    db = ctx.registry.db()
    with read_snapshot(db):
        demand = analytics.demand(db, ctx.liveness, now, window, limit=25)
        one = (analytics.demand_series(db, ctx.liveness, now, window, int(model_id))
               if model_id and model_id.isdigit() and len(model_id) < 19 else None)
        fleet = analytics.fleet(db, ctx.liveness, now)
        view = fleet_view(db, ctx.liveness, now)  # read once for every node's recommendations
        nodes = [recommendations(db, view, n["server_id"]) for n in fleet["nodes"]
                 if n["server_id"] != ctx.liveness.own_server_id]
    return _render(request, "insights.html", title="Insights", nav="insights", window=window, windows=list(WINDOWS),
                   demand=demand, one=one, chart=chart((one or demand)["series"]), fleet=fleet, nodes=nodes,
                   show_labels=ctx.config.queue_token is None)


ROUTES: list[Route] = [Route("/dashboard/insights", insights_page, methods=["GET"])]
