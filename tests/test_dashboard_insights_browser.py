"""The Insights page against the real server and a small fleet (tests/test_recommendations.py's Fleet): what the page
shows (read with plain HTTP) is what the analytics API answers; in a real headless Chromium the server-drawn SVG chart
shows a bar per hour, the window selector reloads the page (insights.js), and no JavaScript error or CSP violation
happens."""
from __future__ import annotations

import re

from support_browser import browser, browser_page, screenshot  # noqa: F401  (fixtures)
from support_server import make_server  # noqa: F401  (fixture)
from test_recommendations import DISK, Fleet, entry


def small_fleet(make_server) -> Fleet:
    fleet = Fleet(make_server())
    fleet.node("dest", [entry("owned", 100)], state=DISK)
    fleet.node("peer", [entry("mid", 4_000), entry("small", 2_500)], files_url="http://127.0.0.1:9/files")
    fleet.server.post("/api/v1/jobs/availability",
                      json={"job": [{"type": "lora", "name": "<b>nowhere</b>"}], "format": "requirements"})
    fleet.ask("mid", 4)  # ask() moves every count taken so far to the last complete hour
    fleet.ask("small", 2)
    return fleet


def test_the_page_says_what_the_api_says(make_server):
    fleet = small_fleet(make_server)
    page = fleet.server.get("/dashboard/insights")
    assert page.status_code == 200
    html = page.text
    demand = fleet.server.get("/api/v1/analytics/demand").json()
    assert f"{demand['requests']} requests, {demand['unmet']} unmet" in html
    assert len(re.findall(r'<g class="bar">', html)) == 24
    assert "mid.safetensors" in html and "small.safetensors" in html
    assert "&lt;b&gt;nowhere&lt;/b&gt;" in html and "<b>nowhere</b>" not in html  # a job's text, escaped
    rec = fleet.server.get("/api/v1/servers/dest/recommendations").json()
    assert [p["model"]["filename"] for p in rec["place"]] == ["mid.safetensors", "small.safetensors"]
    assert html.count("Place ") == len(rec["place"]) and "from\n    node peer" in html
    assert "Nothing is called cold until demand has been recorded for 30 days" in html
    assert fleet.server.get("/dashboard/insights?window=1y").status_code == 400
    model_id = rec["place"][0]["model"]["id"]
    one = fleet.server.get(f"/dashboard/insights?window=7d&model_id={model_id}").text
    assert len(re.findall(r'<g class="bar">', one)) == 7 * 24 and "4 requests, 0 unmet" in one


def test_hidden_job_text_with_a_queue_token(make_server):
    fleet = Fleet(make_server(queue_token="q" * 32))
    fleet.ask("nothing-known", 1, headers={"Authorization": "Bearer " + "q" * 32})
    html = fleet.server.get("/dashboard/insights").text
    assert "nothing-known" not in html and "a reference the registry does not know" in html


def test_the_page_in_a_browser(make_server, browser_page):
    fleet = small_fleet(make_server)
    page = browser_page
    page.goto(fleet.server.url("/dashboard/insights"))
    assert page.locator("#demand-chart g.bar").count() == 24
    assert page.locator("#demand-chart rect.unmet").count() == 1  # the hour of the unknown LoRA
    assert page.locator(".node-recommendations[data-server=dest] ul.place li").count() == 2
    assert page.locator("nav a.current").inner_text() == "Insights"
    screenshot(page, "insights")
    page.select_option("#insights-window", "7d")
    page.wait_for_url(re.compile(r"window=7d"))
    assert page.locator("#demand-chart g.bar").count() == 7 * 24
