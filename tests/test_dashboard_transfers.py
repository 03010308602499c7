"""The dashboard's transfers against the real server and a fleet of real nodes (support_browser.build_fleet): the
Transfers page read with plain HTTP says what `GET /api/v1/transfers` says, and in a real headless Chromium it follows
a transfer live (the destination node's progress reports, sent with its own token, move the bar without a reload),
shows a failure's reason, and Retry and Cancel work; a model's "Copy to node..." orders a copy, shows the answer and
the server's refusal. Each browser page is watched for JavaScript errors, CSP violations and failed requests."""
from __future__ import annotations

import re
from typing import Any

import pytest
import requests
from support_browser import (  # noqa: F401  (fixtures)
    EVIL_NAME,
    browser,
    browser_page,
    build_fleet,
    dashboard_fleet,
    expect_failures,
    screenshot,
    sign_in,
)
from support_server import make_server  # noqa: F401  (fixture)
from test_dashboard_pages import table

from modelsync.server.dashboard import human_duration, human_speed
from modelsync.shared.units import human_size

SPEED = 1_310_720.0  # 1.25 MB/s exactly: the page's script must round the half as the server does ("1.2 MB/s")
ETA = 125.4  # "2 min 5 s"


def _expect() -> Any:
    return pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed").expect


def order(fleet, server_id: str, model: str) -> dict:
    answer = fleet.server.post("/api/v1/transfers", json={"server_id": server_id, "model_id": fleet.model_id(model)},
                               headers=fleet.server.admin_headers)
    assert answer.status_code == 201, answer.text
    return answer.json()


def report(fleet, transfer: dict, **body: Any) -> dict:
    """A progress report from the transfer's destination node, with that node's own token."""
    token = fleet.nodes[transfer["server_id"]].client.credentials.token
    answer = requests.post(fleet.url(f"/api/v1/transfers/{transfer['id']}/progress"), json=body,
                           headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()


def listed(fleet, **params: Any) -> list[dict]:
    return fleet.server.get("/api/v1/transfers", params=params).json()["transfers"]


def html(fleet, path: str, status: int = 200) -> str:
    answer = fleet.server.get(path)
    assert answer.status_code == status, (path, answer.status_code)
    return answer.text


def progress_text(t: dict) -> str:
    return f"{human_size(t['bytes_done'])} of {human_size(t['size'])} · {t['bytes_done'] * 100 // t['size']}%"


@pytest.fixture
def fleet(make_server, tmp_path):  # noqa: F811
    server = make_server(model_paths=[tmp_path / "central-models"])
    return build_fleet(server, tmp_path / "central-models", tmp_path / "nodes")


def test_the_transfers_page_lists_what_the_api_lists(fleet):
    hero = order(fleet, "gpu-02", "hero")
    evil = order(fleet, "gpu-02", "evil")
    zap = order(fleet, "gpu-01", "zap")  # from gpu-03, offline: ordered all the same, it waits for its source
    running = report(fleet, hero, state="running", bytes_done=hero["size"] // 3, speed_bps=SPEED, eta_seconds=ETA,
                     source_server_id="gpu-01")
    failed = report(fleet, zap, state="failed", bytes_done=0, reason="disk_full", error="not enough free space on /models")
    assert failed["state"] == "failed"

    page_html = html(fleet, "/dashboard/transfers")
    assert '<a href="/dashboard/transfers" class="current">Transfers</a>' in page_html
    assert '<script src="/dashboard/static/transfers.js" defer>' in page_html and "<script>" not in page_html
    rows = table(page_html, "transfers")
    expected = listed(fleet)
    assert [int(r.attrs["data-transfer-id"]) for r in rows] == [t["id"] for t in expected] == [zap["id"], evil["id"], hero["id"]]
    for row, t in zip(rows, expected):
        assert row.attrs["data-state"] == t["state"] == row.cells[4]
        assert row.cells[2] == t["server_id"]
        assert row.cells[3] == t["source"]["kind"] + (f" · {t['source']['server_id']}" if t["source"]["server_id"] else "")
        assert row.cells[5] == progress_text(t)
        assert (row.cells[6], row.cells[7]) == (human_speed(t["speed_bps"]), human_duration(t["eta_seconds"]))
        assert row.cells[8] == f"{t['reason'] or ''}{t['error'] or ''}"
        assert row.times == [{"datetime": t["created_at"], "title": t["created_at"] + " UTC"},
                             {"datetime": t["updated_at"], "title": t["updated_at"] + " UTC"}]
        model = fleet.server.get(f"/api/v1/models/{t['model_id']}/info").json()
        assert f'href="/dashboard/models/{t["model_id"]}"' in page_html
        assert row.cells[1] == f"{model['name'] or model['filename']} {model['hash_autov2']}"
    by_id = {int(r.attrs["data-transfer-id"]): r for r in rows}
    assert (by_id[hero["id"]].cells[6], by_id[hero["id"]].cells[7]) == ("1.2 MB/s", "2 min 5 s")
    assert by_id[hero["id"]].cells[3] == "peer · gpu-01" and running["source"]["server_id"] == "gpu-01"
    assert by_id[zap["id"]].cells[8] == "disk_fullnot enough free space on /models"
    # a model's name is text, never markup
    assert EVIL_NAME not in page_html and "&lt;script&gt;alert(&#39;pwned&#39;)&lt;/script&gt;" in page_html

    # the filters are the API's
    for query, params in (("server=gpu-02", {"server_id": "gpu-02"}), ("state=failed", {"state": "failed"}),
                          ("server=gpu-01&state=running", {"server_id": "gpu-01", "state": "running"})):
        shown = [r.attrs.get("data-transfer-id") for r in table(html(fleet, f"/dashboard/transfers?{query}"), "transfers")]
        assert shown == [str(t["id"]) for t in listed(fleet, **params)] or shown == [None]
    assert table(html(fleet, "/dashboard/transfers?server=gpu-01&state=running"), "transfers")[0].cells == [
        "No transfer to gpu-01 running."]
    assert "400: state must be one of queued, running" in html(fleet, "/dashboard/transfers?state=stuck", 400)
    assert "400: server must be a node id" in html(fleet, "/dashboard/transfers?server=..%2Fx", 400)
    assert "400: page must be" in html(fleet, "/dashboard/transfers?page=0", 400)
    assert table(html(fleet, "/dashboard/transfers?page=999999999"), "transfers")[0].cells == ["No transfer."]


def test_a_models_page_offers_a_copy_to_the_online_nodes_without_it(fleet):
    fleet.nodes["gpu-03"].push()  # back online
    hero = fleet.model_id("hero")
    servers = fleet.server.get("/api/v1/servers").json()["servers"]
    holders = {s["server_id"] for s in fleet.server.get(f"/api/v1/models/{hero}/info").json()["servers"]}
    expected = sorted(s["id"] for s in servers if s["online"] and s["id"] not in holders and s["id"] != "central")
    assert expected == ["gpu-02", "gpu-03"]
    page_html = html(fleet, f"/dashboard/models/{hero}")
    assert re.findall(r'<option value="([^"]+)">', page_html.split('id="copy-target"')[1].split("</select>")[0]) == expected

    # a model every online node holds: nothing to offer
    fleet.nodes["gpu-02"].copy(fleet.files["hero"], "Lora", "Hero.safetensors")
    fleet.nodes["gpu-02"].push()
    fleet.nodes["gpu-03"].copy(fleet.files["hero"], "Lora", "Hero.safetensors")
    fleet.nodes["gpu-03"].push()
    page_html = html(fleet, f"/dashboard/models/{hero}")
    assert 'id="copy-target"' not in page_html and 'id="copy-none"' in page_html


def test_transfers_live_progress_failure_retry_and_cancel(browser_page, dashboard_fleet):
    expect = _expect()
    page, fleet = browser_page, dashboard_fleet
    hero = order(fleet, "gpu-02", "hero")
    evil = order(fleet, "gpu-02", "evil")
    page.goto(fleet.url("/dashboard/transfers"))
    expect(page.locator("header nav a.current")).to_have_text("Transfers")
    row = page.locator(f"#transfers tr[data-transfer-id='{hero['id']}']")
    expect(row.locator("td.state")).to_have_text("queued")
    expect(row.locator("td.model a")).to_have_attribute("href", f"/dashboard/models/{fleet.model_id('hero')}")
    expect(page.locator(f"#transfers tr[data-transfer-id='{evil['id']}'] td.model a")).to_have_text(EVIL_NAME)
    expect(row.locator(".cancel-transfer")).to_be_hidden()  # admin only
    sign_in(page, fleet.server.admin_token)
    expect(row.locator(".cancel-transfer")).to_be_visible()
    expect(row.locator(".retry-transfer")).to_be_hidden()

    # the node reports: the row follows without a reload, in the words the server renders
    half = report(fleet, hero, state="running", bytes_done=hero["size"] // 2, speed_bps=SPEED, eta_seconds=ETA,
                  source_server_id="gpu-01")
    expect(row.locator("td.state")).to_have_text("running")
    expect(row.locator(".progress-text")).to_have_text(progress_text(half))
    assert row.locator("progress").evaluate("p => [p.value, p.max]") == [half["bytes_done"], half["size"]]
    expect(row.locator("td.speed")).to_have_text("1.2 MB/s")
    expect(row.locator("td.eta")).to_have_text("2 min 5 s")
    expect(row.locator("td.source")).to_have_text("peer · gpu-01")
    rendered = {r.attrs["data-transfer-id"]: r.cells for r in table(html(fleet, "/dashboard/transfers"), "transfers")}
    live = row.locator("td").all_inner_texts()
    assert [" ".join(text.split()) for text in live[2:9]] == rendered[str(hero["id"])][2:9]
    expect(row.locator(".updated time")).to_have_attribute("datetime", half["updated_at"])
    report(fleet, evil, state="failed", bytes_done=0, reason="root_unavailable",
           error="the Lora folder /mnt/nas/loras is not mounted")
    evil_row = page.locator(f"#transfers tr[data-transfer-id='{evil['id']}']")
    expect(evil_row.locator(".reason-word")).to_have_text("root_unavailable")
    expect(evil_row.locator(".retry-transfer")).to_be_visible()
    screenshot(page, "transfers")

    # a new order shows up while the page refreshes itself
    base = order(fleet, "gpu-03", "base_xl")
    expect(page.locator(f"#transfers tr[data-transfer-id='{base['id']}'] td.state")).to_have_text("queued")
    expect(page.locator("#transfer-count")).to_have_text("3 transfers")

    report(fleet, hero, state="failed", bytes_done=half["bytes_done"], reason="disk_full",
           error="not enough free space for the file plus the 2 GiB floor")
    expect(row.locator("td.state")).to_have_text("failed")
    expect(row.locator(".reason-word")).to_have_text("disk_full")
    expect(row.locator(".error-text")).to_have_text("not enough free space for the file plus the 2 GiB floor")
    expect(row.locator(".cancel-transfer")).to_be_hidden()
    row.locator(".retry-transfer").click()
    expect(page.locator("#transfers-message")).to_have_text(f"Transfer {hero['id']} to gpu-02: queued.")
    expect(row.locator("td.state")).to_have_text("queued")
    assert fleet.server.get(f"/api/v1/transfers/{hero['id']}").json()["state"] == "queued"

    row.locator(".cancel-transfer").click()
    expect(page.locator("#transfers-message")).to_have_text(f"Transfer {hero['id']} to gpu-02: cancelled.")
    expect(row.locator("td.state")).to_have_text("cancelled")
    expect(row.locator(".reason-word")).to_have_text("cancelled")
    expect(row.locator(".retry-transfer")).to_be_visible()
    assert fleet.server.get(f"/api/v1/transfers/{hero['id']}").json()["state"] == "cancelled"

    # the filters: only gpu-03's
    page.select_option("#transfers-form select[name=server]", "gpu-03")
    page.click("#transfers-form button[type=submit]")
    expect(page.locator("#transfers tbody tr")).to_have_count(1)
    expect(page.locator("#transfers tbody tr")).to_have_attribute("data-transfer-id", str(base["id"]))


def test_copy_to_node_orders_a_transfer_and_shows_a_refusal(browser_page, dashboard_fleet):
    expect = _expect()
    page, fleet = browser_page, dashboard_fleet
    fleet.nodes["gpu-03"].push()  # back online
    hero = fleet.model_id("hero")
    page.goto(fleet.url(f"/dashboard/models/{hero}"))
    expect(page.locator("#copy-panel")).to_be_hidden()
    sign_in(page, fleet.server.admin_token)
    expect(page.locator("#copy-target option")).to_have_text(["gpu-02", "gpu-03"])

    page.select_option("#copy-target", "gpu-02")
    page.click("#copy-button")
    expect(page.locator("#copy-message")).to_contain_text("to gpu-02 ordered: queued.")
    ordered = listed(fleet, server_id="gpu-02")
    assert [(t["model_id"], t["state"]) for t in ordered] == [(hero, "queued")]
    expect(page.locator("#copy-message")).to_have_text(
        f"Transfer {ordered[0]['id']} to gpu-02 ordered: queued. See it on the Transfers page")
    page.click("#copy-button")  # again: the standing transfer, not a second one
    expect(page.locator("#copy-message")).to_contain_text(
        f"A transfer of this model to gpu-02 stands already: transfer {ordered[0]['id']}, queued.")
    assert len(listed(fleet, server_id="gpu-02")) == 1

    # gpu-03 gets the model meanwhile: the server's refusal is shown as it is
    fleet.nodes["gpu-03"].copy(fleet.files["hero"], "Lora", "Hero.safetensors")
    fleet.nodes["gpu-03"].push()
    expect_failures(page, r"/api/v1/transfers$")
    page.select_option("#copy-target", "gpu-03")
    page.click("#copy-button")
    expect(page.locator("#copy-message")).to_have_text("Copy to gpu-03 refused: node gpu-03 already holds this model")
    expect(page.locator("#copy-message")).to_have_class(re.compile("error"))
    assert listed(fleet, server_id="gpu-03") == []

    page.select_option("#copy-target", "gpu-02")
    page.click("#copy-button")
    page.click("#copy-transfers-link")
    expect(page.locator("h1")).to_have_text("Transfers")
    expect(page.locator("#transfers tbody tr")).to_have_attribute("data-transfer-id", str(ordered[0]["id"]))
    assert "server=gpu-02" in page.url


def test_the_transfers_page_fits_a_phone_and_loads_whole(browser, browser_page, dashboard_fleet):
    page, fleet = browser_page, dashboard_fleet
    transfer = order(fleet, "gpu-02", "hero")
    report(fleet, transfer, state="running", bytes_done=1, speed_bps=SPEED, eta_seconds=ETA)
    page.goto(fleet.url("/dashboard/transfers"))
    page.wait_for_load_state("networkidle")
    assert page.evaluate("document.querySelectorAll('img[src^=\"data:\"]').length") == 0
    context = browser.new_context(viewport={"width": 375, "height": 740}, is_mobile=True, has_touch=True)
    try:
        phone = context.new_page()
        phone.goto(fleet.url("/dashboard/transfers"))
        phone.wait_for_load_state("networkidle")
        assert phone.evaluate("document.documentElement.scrollWidth") <= 375
    finally:
        context.close()
