"""The dashboard clicked through in a real headless Chromium against the real server and a fleet of real nodes:
models (filter, sort, page, open one), the server's own scan with and without hashes, nodes and the matrix, the job
check, the admin token, overrides surviving a re-scan and a re-sync, a rejected Civitai match, a removed file, and
escaping. Each page is also watched for JavaScript errors, CSP violations and dialogs (support_browser)."""
from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest
from support_browser import (  # noqa: F401  (fixtures)
    BROWSER_TIMEZONE,
    EVIL_NAME,
    browser,
    browser_page,
    build_fleet,
    dashboard_fleet,
    expect_failures,
    screenshot,
    sha256_of,
    sign_in,
)
from support_server import central_server, make_server, wait_for  # noqa: F401  (fixtures)

pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed (pip install -e .[test])")
from playwright.sync_api import expect  # noqa: E402


def shown_time(moment: str) -> re.Pattern:
    """How the dashboard shows a recent stored UTC time: in the browser's time zone, with how long ago."""
    local = datetime.strptime(moment, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).astimezone(ZoneInfo(BROWSER_TIMEZONE))
    return re.compile(rf"^{local:%Y-%m-%d %H:%M} \((just now|\d+ min ago)\)$")


def api_total(fleet, **params) -> int:
    return fleet.server.get("/api/v1/models", params=params).json()["total"]


def count_text(total: int) -> re.Pattern:
    return re.compile(rf"^{total:,} models?\b")


def test_models_page_filters_sorts_and_opens_a_model(browser_page, dashboard_fleet):
    page, fleet = browser_page, dashboard_fleet
    response = page.goto(fleet.url("/dashboard/models"))
    assert "script-src 'self'" in response.headers["content-security-policy"]
    total = api_total(fleet)
    expect(page.locator("#model-count")).to_have_text(count_text(total))
    expect(page.locator("#models-table tbody tr")).to_have_count(total)

    zap = page.locator("#models-table tbody tr", has_text="Zap.safetensors")
    expect(zap.locator(".badge.missing")).to_have_text("no online node")
    expect(zap).to_have_class(re.compile("unavailable"))
    ink = page.locator("#models-table tbody tr", has_text="Ink.safetensors")
    expect(ink.locator(".badge.ok")).to_have_text("2 online")
    expect(ink.locator(".nodes")).to_have_text("2 nodes: gpu-01, gpu-02")
    screenshot(page, "models")

    page.select_option("select[name=type]", "checkpoint")
    page.click("#filters button[type=submit]")
    expect(page.locator("#model-count")).to_have_text(count_text(api_total(fleet, type="checkpoint")))
    assert set(page.locator("#models-table tbody td:nth-child(3)").all_inner_texts()) == {"checkpoint"}

    page.goto(fleet.url("/dashboard/models"))
    page.select_option("select[name=server]", "gpu-02")
    page.click("#filters button[type=submit]")
    expect(page.locator("#models-table tbody tr")).to_have_count(2)
    page.fill("input[name=text]", "ink")
    page.click("#filters button[type=submit]")
    expect(page.locator("#models-table tbody tr")).to_have_count(1)
    assert "server=gpu-02" in page.url and "text=ink" in page.url

    # sort by size, descending: the order the API gives
    page.goto(fleet.url("/dashboard/models"))
    page.click("#models-table thead a:text('Size')")
    page.click("#models-table thead a:text('Size')")
    expected = [m["id"] for m in fleet.server.get("/api/v1/models", params={"sort": "size", "order": "desc"}).json()["models"]]
    rows = page.locator("#models-table tbody tr")
    assert [int(rows.nth(i).get_attribute("data-model-id")) for i in range(rows.count())] == expected

    page.goto(fleet.url("/dashboard/models"))
    page.click(f"#models-table tr[data-model-id='{fleet.model_id('hero')}'] td.name a")
    expect(page.locator("h1")).to_contain_text("Vivid Impressions Storybook Style")
    expect(page.locator("#hashes")).to_contain_text(sha256_of(fleet.files["hero"]))
    expect(page.locator("#files tbody tr")).to_have_count(1)
    expect(page.locator("#files")).to_contain_text(str(fleet.files["hero"]))
    expect(page.locator("#civitai-link")).to_have_attribute("href", "https://civitai.com/models/1231067?modelVersionId=1387174")
    expect(page.locator("#trained-words")).to_have_text("ppstorybook")
    expect(page.locator("#aliases")).to_contain_text("hero_v1")
    screenshot(page, "model")


def test_paging_is_server_side(browser_page, dashboard_fleet):
    page, fleet = browser_page, dashboard_fleet
    total = api_total(fleet)
    page.goto(fleet.url("/dashboard/models?limit=2&type=lora"))
    pages = (api_total(fleet, type="lora") + 1) // 2
    seen: list[str] = []
    for number in range(1, pages + 1):
        expect(page.locator("#model-count")).to_contain_text(f"page {number} of {pages}")
        rows = page.locator("#models-table tbody tr")
        seen += [rows.nth(i).get_attribute("data-model-id") for i in range(rows.count())]
        if number < pages:
            page.click(".pager a[rel=next]")
    expected = fleet.server.get("/api/v1/models", params={"type": "lora", "limit": 500}).json()["models"]
    assert seen == [str(m["id"]) for m in expected]
    assert "type=lora" in page.url and "limit=2" in page.url
    assert total > len(seen)

    expect_failures(page, r"/dashboard/models\?limit=0$")
    response = page.goto(fleet.url("/dashboard/models?limit=0"))
    assert response.status == 400
    expect(page.locator("#page-error")).to_have_text("400: limit must be between 1 and 500")


def _hold_scans(page):
    """Keep POST /api/v1/models/scan requests waiting until released, to see the button while a scan runs."""
    held = []
    page.route("**/api/v1/models/scan", lambda route: held.append(route))
    return held


def test_scan_without_then_with_hashes(browser_page, dashboard_fleet):
    page, fleet = browser_page, dashboard_fleet
    before = api_total(fleet)
    page.goto(fleet.url("/dashboard/models"))
    expect(page.locator("#model-count")).to_have_text(count_text(before))
    held = _hold_scans(page)
    button = page.locator("#scan-button")

    button.click()
    expect(button).to_be_disabled()
    expect(button).to_have_text("Scanning...")
    _release(page, held)
    expect(page.locator("#scan-result")).to_contain_text("Scan complete! Found 3 model files")
    expect(page.locator("#scan-result")).to_contain_text("Calculated: 0 hashes")
    expect(page.locator("#scan-result")).to_contain_text("Not hashed: 3 files")
    expect(button).to_be_enabled()
    expect(button).to_have_text("Scan for New Models")
    expect(page.locator("#model-count")).to_have_text(count_text(before))  # unhashed files are not models yet

    page.check("#calculate-hashes")
    button.click()
    expect(button).to_be_disabled()
    expect(button).to_have_text("Scanning + Calculating Hashes...")
    _release(page, held)
    expect(page.locator("#scan-result")).to_contain_text("Calculated: 3 hashes")
    expect(page.locator("#model-count")).to_have_text(count_text(before + 3))
    expect(page.locator("#models-table")).to_contain_text("own_lora_xl.safetensors")
    expect(button).to_be_enabled()
    assert api_total(fleet, server="central") == 3


def _release(page, held) -> None:
    """Let the held scan request go on, once it has reached the route (its handler runs while Playwright is called)."""
    for _ in range(400):
        if held:
            held.pop().continue_()
            return
        page.wait_for_timeout(25)
    raise AssertionError("the scan request never reached the route")


def test_scan_errors_are_shown(browser_page, central_server):
    page = browser_page
    expect_failures(page, r"/api/v1/models/scan$")
    page.goto(central_server.url("/dashboard/models"))
    page.click("#scan-button")
    expect(page.locator("#scan-result")).to_contain_text("Scan failed: MODEL_PATH is not set")
    expect(page.locator("#scan-result")).to_have_class(re.compile("error"))
    expect(page.locator("#scan-button")).to_be_enabled()


def test_admin_token_is_asked_once_per_browser_session(browser, browser_page, dashboard_fleet):
    page, fleet = browser_page, dashboard_fleet
    page.goto(fleet.url(f"/dashboard/models/{fleet.model_id('ink')}"))
    expect(page.locator("#override-panel")).to_be_hidden()
    expect_failures(page, r"/api/v1/admin/check$")
    page.fill("#admin-token", "not-the-token")
    page.click("#admin-form button[type=submit]")
    expect(page.locator("#admin-message")).to_have_text("the token is not the admin token")
    expect(page.locator("#override-panel")).to_be_hidden()

    sign_in(page, fleet.server.admin_token)
    expect(page.locator("#override-panel")).to_be_visible()
    expect(page.locator(".remove-file").first).to_be_visible()
    page.goto(fleet.url("/dashboard/nodes"))
    page.goto(fleet.url(f"/dashboard/models/{fleet.model_id('ink')}"))
    expect(page.locator("#override-panel")).to_be_visible()  # kept in this browser session
    assert page.evaluate("sessionStorage.getItem('modelsync.adminToken')") == fleet.server.admin_token

    other = browser.new_context().new_page()  # another session has to enter it again
    other.goto(fleet.url(f"/dashboard/models/{fleet.model_id('ink')}"))
    expect(other.locator("#override-panel")).to_be_hidden()
    other.context.close()

    page.click("#admin-forget")
    expect(page.locator("#override-panel")).to_be_hidden()
    assert page.evaluate("sessionStorage.getItem('modelsync.adminToken')") is None


def test_an_override_survives_a_rescan_and_a_resync(browser_page, dashboard_fleet):
    page, fleet = browser_page, dashboard_fleet
    fleet.server.post("/api/v1/models/scan", json={"calculate_hashes": True})
    own = fleet.model_id("own_lora_xl")
    page.goto(fleet.url(f"/dashboard/models/{own}"))
    sign_in(page, fleet.server.admin_token)
    page.fill("#override-form input[name=name]", "Operator's <i>name</i>")
    page.select_option("#override-form select[name=type]", "locon")
    page.select_option("#override-form select[name=base]", "sd2")
    page.fill("#override-form textarea[name=trained_words]", "first word\nsecond, with comma")
    page.click("#override-form button[type=submit]")
    expect(page.locator("#override-message")).to_have_text("Overrides saved: name, type, base, trained_words")
    expect(page.locator("h1")).to_have_text("Operator's <i>name</i> override")
    expect(page.locator("#trained-words li")).to_have_text(["first word", "second, with comma"])
    expect(page.locator("#metadata tr", has_text="base")).to_contain_text("override")
    screenshot(page, "override")

    # a re-scan with hashes from the Models page
    page.goto(fleet.url("/dashboard/models?server=central"))
    page.check("#calculate-hashes")
    page.click("#scan-button")
    expect(page.locator("#scan-result")).to_contain_text("Scan complete! Found 3 model files")
    row = page.locator(f"#models-table tr[data-model-id='{own}']")
    expect(row.locator("td.name a")).to_have_text("Operator's <i>name</i>")
    expect(row.locator("td:nth-child(3)")).to_have_text("locon override")
    expect(row.locator("td:nth-child(4)")).to_have_text("sd2 override")
    expect(row.locator("td:nth-child(7)")).to_have_text("manual")

    # a node's model, then that node syncs again with a changed file beside it
    hero = fleet.model_id("hero")
    page.goto(fleet.url(f"/dashboard/models/{hero}"))
    page.fill("#override-form input[name=name]", "Hero, corrected")
    page.click("#override-form button[type=submit]")
    expect(page.locator("#override-message")).to_contain_text("Overrides saved: name")
    gpu1 = fleet.nodes["gpu-01"]
    gpu1.copy(fleet.files["hero"], "Lora", "copies/Hero-2.safetensors")
    assert gpu1.push()["added"] == 1
    page.reload()
    expect(page.locator("h1")).to_have_text("Hero, corrected override")
    expect(page.locator("#files tbody tr")).to_have_count(2)

    page.goto(fleet.url("/dashboard/overrides"))
    expect(page.locator(f"#overrides tr[data-model-id='{own}']")).to_contain_text("second, with comma")
    expect(page.locator(f"#overrides tr[data-model-id='{hero}']")).to_contain_text("Hero, corrected")
    screenshot(page, "overrides")

    # clearing an override: the field is filled again by the next sync
    page.goto(fleet.url(f"/dashboard/models/{hero}"))
    page.fill("#override-form input[name=name]", "")
    page.click("#override-form button[type=submit]")
    expect(page.locator("#override-message")).to_have_text("Overrides saved: name")
    gpu1.push()
    page.reload()
    expect(page.locator("h1")).to_have_text("Vivid Impressions Storybook Style")


def test_rejecting_a_civitai_match(browser_page, dashboard_fleet):
    page, fleet = browser_page, dashboard_fleet
    hero = fleet.model_id("hero")
    page.goto(fleet.url(f"/dashboard/models/{hero}"))
    expect(page.locator("#civitai-link")).to_be_visible()
    expect(page.locator("#reject-civitai")).to_be_hidden()  # admin only
    sign_in(page, fleet.server.admin_token)
    page.click("#reject-civitai")
    expect(page.locator("#civitai-message")).to_have_text("Civitai version 1387174 rejected; it will not be applied again.")
    expect(page.locator("#civitai-link")).to_have_count(0)
    expect(page.locator("#rejected-matches")).to_contain_text("version 1387174")
    expect(page.locator("h1")).to_have_text("Hero.safetensors")  # the name came from the match
    expect(page.locator(".status-line")).to_contain_text("lora · sdxl")  # type and base from the content again

    fleet.nodes["gpu-01"].push()  # the node still has the Civitai sidecar: it is not applied again
    page.reload()
    expect(page.locator("h1")).to_have_text("Hero.safetensors")  # the sidecar's name is not taken again either
    expect(page.locator("#civitai-link")).to_have_count(0)
    expect(page.locator("#civitai")).to_contain_text("No Civitai match.")
    page.goto(fleet.url("/dashboard/overrides"))
    expect(page.locator(f"#overrides tr[data-model-id='{hero}'] td:nth-child(5)")).to_have_text("1387174")


def test_removing_a_stale_file(browser_page, dashboard_fleet):
    page, fleet = browser_page, dashboard_fleet
    ink = fleet.model_id("ink")
    page.goto(fleet.url(f"/dashboard/models/{ink}"))
    sign_in(page, fleet.server.admin_token)
    expect(page.locator("#files tbody tr")).to_have_count(2)
    page.click("#files tr[data-server-id='gpu-02'] .remove-file")
    expect(page.locator("#files-message")).to_have_text("Removed C:\\sd\\models\\Lora\\Ink.safetensors on gpu-02.")
    expect(page.locator("#files tbody tr")).to_have_count(1)
    expect(page.locator("#aliases")).not_to_contain_text("gpu-02")
    servers = fleet.server.get(f"/api/v1/models/{ink}/availability").json()["servers"]
    assert [s["server_id"] for s in servers] == ["gpu-01"]


def test_nodes_page_and_matrix(browser_page, dashboard_fleet):
    page, fleet = browser_page, dashboard_fleet
    page.goto(fleet.url("/dashboard/nodes"))
    api_nodes = {n["id"]: n for n in fleet.server.get("/api/v1/servers").json()["servers"]}
    rows = page.locator("#nodes tbody tr")
    expect(rows).to_have_count(len(api_nodes))
    for server_id, node in api_nodes.items():
        if server_id == "gpu-03":
            continue  # silent for years: below
        row = page.locator(f"#nodes tr[data-server-id='{server_id}']")
        expect(row.locator("td:nth-child(2)")).to_have_text("online" if node["online"] else "offline")
        expect(row.locator("td:nth-child(5)")).to_have_text(str(node["model_count"]))
        expect(row.locator("td.api-url")).to_have_text(node["api_url"] or "")
        expect(row.locator("td.last-sync time")).to_have_text(shown_time(node["last_sync"]))
        expect(row.locator("td.last-sync time")).to_have_attribute("title", node["last_sync"] + " UTC")
        expect(row.locator("td.broken")).to_have_text(str(node["broken_count"]))
        expect(row.locator("td.unreachable")).to_have_text(str(node["unreachable_count"]))
        expect(row.locator("td.folders .folder")).to_have_text([f"{f['path']} {f['reason']}" for f in node["unavailable"]])
    assert api_nodes["gpu-03"]["online"] is False
    assert (api_nodes["gpu-01"]["broken_count"], api_nodes["gpu-01"]["unreachable_count"]) == (1, 1)
    expect(page.locator("#nodes tr[data-server-id='gpu-03'] td.last-sync")).to_have_text("2000-01-01 05:30")  # no "ago"

    page.select_option("#matrix-form select[name=type]", "lora")
    page.click("#matrix-form button[type=submit]")
    loras = fleet.server.get("/api/v1/models", params={"type": "lora"}).json()["models"]
    expect(page.locator("#matrix tbody tr")).to_have_count(len(loras))
    columns = page.locator("#matrix thead th.node").all_inner_texts()
    assert columns == sorted(api_nodes)
    ink = page.locator(f"#matrix tr[data-model-id='{fleet.model_id('ink')}']")
    cells = ink.locator("td")
    assert [cells.nth(i).get_attribute("class") for i in range(cells.count())] == [
        "has" if node in ("gpu-01", "gpu-02") else "lacks" for node in columns]
    expect(page.locator("#matrix th.node.offline")).to_have_text("gpu-03")
    screenshot(page, "nodes")

    page.check("#matrix-form input[name=incomplete]")
    page.click("#matrix-form button[type=submit]")
    expect(page.locator("#matrix tbody tr")).to_have_count(len(loras))  # no LoRA is on every node
    page.select_option("#matrix-form select[name=type]", "checkpoint")
    page.click("#matrix-form button[type=submit]")
    expect(page.locator("#matrix-count")).to_have_text("1 checkpoint model")  # base_xl lacks on gpu-03 only


def test_job_check(browser_page, dashboard_fleet):
    page, fleet = browser_page, dashboard_fleet
    page.goto(fleet.url("/dashboard/jobs"))
    job = {"prompt": "a storybook castle <lora:Hero:0.8> <lora:Zap:1>", "negative_prompt": "blurry",
           "override_settings": {"sd_model_checkpoint": "base_xl.safetensors"}}
    page.fill("#job-text", json.dumps(job, indent=2))
    page.click("#job-check")
    expect(page.locator("#job-verdict")).to_contain_text("cannot run")
    expected = fleet.server.post("/api/v1/jobs/availability", json={"job": job}).json()["model_availability"]
    requirements = page.locator("#job-requirements tbody tr")
    expect(requirements).to_have_count(len(expected["requirements"]))
    expect(page.locator("#job-verdict")).to_contain_text(expected["reason"])
    zap = page.locator("#job-requirements tbody tr", has_text="Zap")
    expect(zap.locator("td:nth-child(5)")).to_have_text("gpu-03")
    gpu2 = page.locator("#job-nodes tr[data-server-id='gpu-02']")
    expect(gpu2.locator("td:nth-child(3)")).to_have_text("no")
    expect(gpu2.locator("td:nth-child(4) li")).to_have_count(2)  # Hero and Zap
    expect(gpu2.locator("td:nth-child(4) li").first).to_have_text("lora <lora:Hero:0.8>: not on this node")
    screenshot(page, "job-check")

    page.fill("#job-text", "a castle <lora:Hero:0.7>\nSteps: 20, Sampler: Euler a, Model: base_xl")
    page.select_option("#job-format", "infotext")
    page.click("#job-check")
    expect(page.locator("#job-verdict")).to_contain_text("can run")
    expect(page.locator("#job-nodes tr[data-server-id='gpu-01'] td:nth-child(3)")).to_have_text("yes")

    page.fill("#job-text", json.dumps({"prompt": "<lora:evil:1>"}))
    page.select_option("#job-format", "a1111")
    page.click("#job-check")
    expect(page.locator("#job-requirements tbody tr")).to_have_count(1)
    expect(page.locator("#job-requirements tbody td:nth-child(4) a")).to_have_text(EVIL_NAME)
    expect(page.locator("#job-requirements tbody td:nth-child(4) .hash")).to_have_text(sha256_of(fleet.files["evil"])[:10])

    page.fill("#job-text", json.dumps({"prompt": "<lora:nowhere_to_be_found:1>"}))
    page.click("#job-check")
    expect(page.locator("#job-verdict")).to_contain_text("cannot run")
    assert fleet.server.get("/api/v1/models/wanted").json()["wanted"] == []  # a look from the dashboard is not a job

    expect_failures(page, r"/api/v1/jobs/availability$")  # the jobs that cannot be read below
    page.fill("#job-text", "{not json")
    page.click("#job-check")
    expect(page.locator("#job-message")).to_contain_text("the job is not valid JSON")
    page.fill("#job-text", json.dumps({"override_settings": {"sd_model_checkpoint": 7}}))
    page.click("#job-check")
    expect(page.locator("#job-message")).to_contain_text("sd_model_checkpoint")


def test_job_check_shows_why_json_text_cannot_be_read(browser_page, dashboard_fleet):
    # issue 10: this (the closing brace missing) was answered "can run - the job names no model"
    page, fleet = browser_page, dashboard_fleet
    expect_failures(page, r"/api/v1/jobs/availability$")
    page.goto(fleet.url("/dashboard/jobs"))
    broken = '{"prompt": "x", "steps": "many"'
    expected = fleet.server.post("/api/v1/jobs/availability", json={"job": broken, "format": "auto"})
    assert (expected.status_code, expected.json()["field"]) == (400, "job")
    page.fill("#job-text", broken)
    expect(page.locator("#job-format")).to_have_value("auto")
    page.click("#job-check")
    expect(page.locator("#job-message")).to_have_text(expected.json()["error"] + " (job)")
    expect(page.locator("#job-message")).to_have_class(re.compile("error"))
    expect(page.locator("#job-result")).to_be_hidden()
    for text in ("[" * 100_000, '{"prompt": "a", "override_settings": {"sd_model_checkpoint": "nonexistent_model"},}'):
        page.fill("#job-text", text)
        page.click("#job-check")
        expect(page.locator("#job-message")).to_contain_text("(job)")
        expect(page.locator("#job-result")).to_be_hidden()

    # a prompt that starts with "[" is still an infotext when it has its parameter line
    page.fill("#job-text", "[castle] <lora:Hero:0.7>\nSteps: 20, Sampler: Euler a, Model: base_xl")
    page.click("#job-check")
    expect(page.locator("#job-verdict")).to_contain_text("can run")
    expect(page.locator("#job-message")).to_be_hidden()


def test_job_check_with_a_queue_token(browser_page, make_server, tmp_path):  # noqa: F811
    page = browser_page
    server = make_server(queue_token="queue-token-for-the-browser-test", model_paths=[tmp_path / "own"])
    fleet = build_fleet(server, tmp_path / "own", tmp_path / "nodes")
    job = json.dumps({"prompt": "<lora:Ink:1>"})
    expect_failures(page, r"/api/v1/jobs/availability$")  # without the token
    page.goto(fleet.url("/dashboard/jobs"))
    page.fill("#job-text", job)
    page.click("#job-check")
    expect(page.locator("#job-message")).to_contain_text("need the queue token: enter the admin token above")
    expect(page.locator("#job-result")).to_be_hidden()

    sign_in(page, server.admin_token)
    page.click("#job-check")
    expect(page.locator("#job-verdict")).to_contain_text("can run")
    expect(page.locator("#job-nodes tr[data-server-id='gpu-02'] td:nth-child(3)")).to_have_text("yes")
    expect(page.locator("#job-message")).to_be_hidden()

    page.click("#admin-forget")
    page.click("#job-check")
    expect(page.locator("#job-message")).to_contain_text("need the queue token")


def test_job_check_and_matrix_tell_same_named_models_apart(browser_page, dashboard_fleet):
    page, fleet = browser_page, dashboard_fleet
    # gpu-02 gets its own, different "Hero" LoRA: the name means other content there than on gpu-01
    other = fleet.nodes["gpu-02"].add("Lora", "Hero.safetensors", base="sdxl")
    fleet.nodes["gpu-02"].push()
    hero, other_hash = sha256_of(fleet.files["hero"])[:10], sha256_of(other)[:10]
    page.goto(fleet.url("/dashboard/jobs"))
    page.fill("#job-text", json.dumps({"prompt": "<lora:Hero:0.8>"}))
    page.click("#job-check")
    expect(page.locator("#job-verdict")).to_contain_text("can run")
    row = page.locator("#job-requirements tbody tr")
    expect(row.locator("td:nth-child(3)")).to_have_text("per node")
    expect(row.locator(".candidate")).to_have_count(2)
    expect(row.locator(".candidate").nth(0)).to_contain_text(f"{hero} on gpu-01; loaded by gpu-01")
    expect(row.locator(".candidate").nth(1)).to_contain_text(f"{other_hash} on gpu-02; loaded by gpu-02")
    expect(page.locator("#job-warnings > li")).to_have_count(1)
    expect(page.locator("#job-warnings > li")).to_contain_text("names 2 different models on different nodes")
    expect(page.locator("#job-nodes tr[data-server-id='gpu-01'] td.loads")).to_contain_text(
        f"lora <lora:Hero:0.8> → Hero.safetensors {hero}")
    expect(page.locator("#job-nodes tr[data-server-id='gpu-02'] td.loads")).to_contain_text(other_hash)
    screenshot(page, "job-check-name-conflict")

    page.goto(fleet.url("/dashboard/nodes?type=lora"))
    labels = page.locator("#matrix tbody th", has_text="Hero.safetensors")
    expect(labels).to_have_count(1)  # the first Hero has Civitai's name
    expect(page.locator(f"#matrix tr[data-model-id='{fleet.model_id('hero')}'] th .hash")).to_have_text(hero)
    expect(labels.locator(".hash")).to_have_text(other_hash)


def test_user_text_is_escaped(browser_page, dashboard_fleet):
    page, fleet = browser_page, dashboard_fleet
    evil = fleet.model_id("evil")
    for path in ("/dashboard/models", f"/dashboard/models/{evil}", "/dashboard/nodes?type=lora"):
        page.goto(fleet.url(path))
        expect(page.locator("main")).to_contain_text(EVIL_NAME)
        assert page.locator("main script, main b").count() == 0
    assert page.locator("script").count() == 1  # common.js only on the nodes page


PAGES = ("/dashboard/models", "/dashboard/nodes", "/dashboard/problems", "/dashboard/unhashed", "/dashboard/wanted",
         "/dashboard/jobs", "/dashboard/overrides")


def test_problems_page_shows_why_files_are_not_offered(browser_page, dashboard_fleet):
    page, fleet = browser_page, dashboard_fleet
    page.goto(fleet.url("/dashboard/models"))
    page.click("header nav a:text('Problems')")
    expect(page).to_have_url(fleet.url("/dashboard/problems"))
    node = next(n for n in fleet.server.get("/api/v1/servers").json()["servers"] if n["id"] == "gpu-01")
    folders = page.locator("#unavailable-folders tbody tr")
    expect(folders).to_have_count(1)
    expect(folders.locator("td")).to_have_text(["gpu-01", node["unavailable"][0]["path"], node["unavailable"][0]["reason"]])
    assert node["unavailable"][0]["path"].endswith("nas")

    expected = [f for state in ("broken", "unreachable")
                for f in fleet.server.get("/api/v1/servers/gpu-01/files", params={"state": state}).json()["files"]]
    rows = page.locator("#problem-files tbody tr")
    expect(rows).to_have_count(len(expected))
    for i, f in enumerate(expected):
        row = rows.nth(i)
        expect(row).to_have_attribute("data-state", f["state"])
        expect(row.locator("td.file")).to_have_text(f["rel_name"] + f["path"])
        expect(row.locator("td.reason")).to_have_text(f["reason"])
        expect(row.locator("td.since time")).to_have_text(shown_time(f["since"]))
        expect(row.locator("td.since time")).to_have_attribute("title", f["since"] + " UTC")
    broken, unreachable = expected
    assert "truncated" in broken["reason"] and broken["rel_name"] == "half_download.safetensors"
    # the unreachable file keeps its model: a link to it with its AutoV2
    expect(rows.nth(1).locator("a")).to_have_attribute("href", f"/dashboard/models/{unreachable['model_id']}")
    expect(rows.nth(1).locator(".hash")).to_have_text(unreachable["hash_autov2"])
    screenshot(page, "problems")

    page.select_option("#problems-form select[name=state]", "broken")
    page.click("#problems-form button[type=submit]")
    expect(page.locator("#problem-files tbody tr")).to_have_count(1)
    expect(page.locator("#problem-count")).to_have_text("1 file")
    page.select_option("#problems-form select[name=server]", "gpu-02")
    page.click("#problems-form button[type=submit]")
    expect(page.locator("#problem-files tbody td.empty")).to_have_text("No broken or unreachable file on gpu-02.")
    expect(page.locator("#unavailable-folders tbody td.empty")).to_be_visible()

    # from the Nodes page, a node's counts open its problems
    page.goto(fleet.url("/dashboard/nodes"))
    page.click("#nodes tr[data-server-id='gpu-01'] td.unreachable a")
    expect(page.locator("#problem-files tbody tr")).to_have_count(1)
    expect(page.locator("#problem-files tbody tr")).to_have_attribute("data-state", "unreachable")


def test_files_not_hashed_yet_are_shown_where_the_scan_says(browser_page, dashboard_fleet):
    page, fleet = browser_page, dashboard_fleet
    before = api_total(fleet)
    # a file of the server's own that is no whole model: a problem of the scan, not a failure of it
    (fleet.own_models / "Lora" / "empty.safetensors").write_bytes(b"")
    page.goto(fleet.url("/dashboard/models"))
    expect(page.locator("#unhashed-notice")).to_have_count(0)
    page.click("#scan-button")
    result = page.locator("#scan-result")
    expect(result).to_contain_text("Not hashed: 3 files. A file is not a model until hashed")
    expect(result).to_have_class(re.compile(r"\bsuccess\b"))
    expect(result).not_to_have_class(re.compile(r"\berror\b"))
    expect(result.locator(".problem")).to_have_count(1)
    expect(result.locator(".problem")).to_contain_text("empty.safetensors")
    red = "rgb(180, 35, 24)"  # --bad
    assert result.locator(".summary").evaluate("n => getComputedStyle(n).color") != red
    assert result.locator(".problem").evaluate("n => getComputedStyle(n).color") == red
    expect(page.locator("#model-count")).to_have_text(count_text(before))
    expect(page.locator("#unhashed-notice")).to_contain_text("3 files are not hashed yet: not models until hashed")
    screenshot(page, "models-scan-unhashed")

    result.locator("a").click()  # the scan's message says where they are
    expect(page).to_have_url(fleet.url("/dashboard/unhashed?server=central"))
    expected = fleet.server.get("/api/v1/servers/central/files", params={"unhashed": "true"}).json()
    assert expected["total"] == 3
    rows = page.locator("#unhashed-files tbody tr")
    expect(rows.locator("td.file")).to_have_text([f["rel_name"] + f["path"] for f in expected["files"]])
    expect(rows.locator(".badge")).to_have_text(["not hashed"] * 3)
    expect(page.locator("#unhashed-count")).to_have_text("3 files not hashed yet")

    page.goto(fleet.url("/dashboard/models?server=gpu-01"))  # the notice follows the node filter
    expect(page.locator("#unhashed-notice")).to_have_count(0)
    page.goto(fleet.url("/dashboard/models?server=central"))
    page.click("#unhashed-link")
    expect(page.locator("#unhashed-files tbody tr")).to_have_count(3)


def test_metadata_words_have_a_legend(browser_page, dashboard_fleet):
    page, fleet = browser_page, dashboard_fleet
    page.goto(fleet.url("/dashboard/models"))
    legend = dict(zip(page.locator("#metadata-legend dt").all_inner_texts(), page.locator("#metadata-legend dd").all_inner_texts()))
    assert set(legend) == {"a1111", "civitai_json", "embedded", "civitai_api", "manual", "none"}
    cells = page.locator("#models-table tbody td.source abbr")
    shown = {cells.nth(i).inner_text(): cells.nth(i).get_attribute("title") for i in range(cells.count())}
    assert {"civitai_json", "embedded"} <= set(shown)  # Hero has a Civitai sidecar; the others their own header
    for word, title in shown.items():
        assert title == legend[word]
    sources = {m["metadata_source"] for m in fleet.server.get("/api/v1/models", params={"limit": 500}).json()["models"]}
    assert {s or "none" for s in sources} == set(shown)


def test_wanted_models_page(browser_page, dashboard_fleet):
    page, fleet = browser_page, dashboard_fleet
    for _ in range(2):  # the queue asks twice for a LoRA no node has, once for a checkpoint
        fleet.server.post("/api/v1/jobs/availability", json={"job": {"prompt": "<lora:nowhere_lora:1>"}})
    fleet.server.post("/api/v1/jobs/availability", json={"job": {"prompt": "x", "override_settings": {"sd_model_checkpoint": "lost_ckpt"}}})

    def counted() -> list[dict] | None:  # each count is written after its answer is sent
        wanted = fleet.server.get("/api/v1/models/wanted").json()["wanted"]
        return wanted if [w["requests"] for w in wanted] == [2, 1] else None

    expected = wait_for(counted)
    page.goto(fleet.url("/dashboard/models"))
    page.click("header nav a:text('Wanted')")
    rows = page.locator("#wanted tbody tr")
    expect(rows).to_have_count(2)
    for i, w in enumerate(expected):
        expect(rows.nth(i).locator("td").nth(0)).to_have_text(w["kind"])
        expect(rows.nth(i).locator("td").nth(1)).to_have_text(w["reference"])
        expect(rows.nth(i).locator("td").nth(2)).to_have_text(str(w["requests"]))
        expect(rows.nth(i).locator("td").nth(3).locator("time")).to_have_text(shown_time(w["last_wanted"]))
        expect(rows.nth(i).locator("td").nth(3).locator("time")).to_have_attribute("title", w["last_wanted"] + " UTC")
    expect(rows.nth(0).locator(".badge")).to_have_text("unknown")
    screenshot(page, "wanted")

    page.select_option("#wanted-form select[name=kind]", "checkpoint")
    page.click("#wanted-form button[type=submit]")
    expect(page.locator("#wanted tbody tr")).to_have_count(1)
    expect(page.locator("#wanted tbody td").nth(1)).to_have_text("lost_ckpt")
    assert "kind=checkpoint" in page.url


def test_wanted_models_page_with_a_queue_token(browser_page, make_server, tmp_path):  # noqa: F811
    page = browser_page
    server = make_server(queue_token="queue-token-for-the-wanted-page")
    queue = {"Authorization": "Bearer queue-token-for-the-wanted-page"}
    server.post("/api/v1/jobs/availability", json={"job": {"prompt": "<lora:nowhere_lora:1>"}}, headers=queue)
    wait_for(lambda: server.get("/api/v1/models/wanted", headers=queue).json()["wanted"])  # written after the answer
    assert server.get("/api/v1/models/wanted").status_code == 401
    expect_failures(page, r"/api/v1/models/wanted\?")
    page.goto(server.url("/dashboard/wanted"))
    expect(page.locator("#wanted-message")).to_contain_text("need the queue token: enter the admin token above")
    expect(page.locator("#wanted-result")).to_be_hidden()
    sign_in(page, server.admin_token)
    expect(page.locator("#wanted tbody tr")).to_have_count(1)
    expect(page.locator("#wanted tbody td").nth(1)).to_have_text("<lora:nowhere_lora:1>")
    expect(page.locator("#wanted-message")).to_be_hidden()


def test_every_page_loads_whole_with_its_favicon_and_no_csp_violation(browser_page, dashboard_fleet):
    # the fixture fails the test on any failed request (a favicon 404), console error or CSP violation
    page, fleet = browser_page, dashboard_fleet
    icons = []
    page.on("response", lambda r: icons.append((r.status, r.headers.get("content-type"))) if "favicon" in r.url else None)
    for path in (*PAGES, f"/dashboard/models/{fleet.model_id('hero')}", "/dashboard/nodes?type=lora"):
        page.goto(fleet.url(path))
        page.wait_for_load_state("networkidle")
        expect(page.locator("link[rel=icon]")).to_have_attribute("href", "/dashboard/static/favicon.svg")
        assert page.evaluate("document.querySelectorAll('img[src^=\"data:\"]').length") == 0
    expect_failures(page, r"/dashboard/models/999999$")
    page.goto(fleet.url("/dashboard/models/999999"))
    expect(page.locator("#page-error")).to_contain_text("404")
    page.goto(fleet.url("/favicon.ico"))  # a browser's own guess, for a page that names no icon
    assert page.url == fleet.url("/dashboard/static/favicon.svg")
    assert icons and all(status == 200 and ctype.startswith("image/svg+xml") for status, ctype in icons if status != 301)


def test_pages_fit_a_phone_screen(browser, dashboard_fleet):
    fleet = dashboard_fleet
    context = browser.new_context(viewport={"width": 375, "height": 740}, is_mobile=True, has_touch=True)
    page = context.new_page()
    fleet.server.post("/api/v1/jobs/availability", json={"job": {"prompt": "<lora:nowhere_lora:1>"}})
    try:
        for path in (*PAGES, f"/dashboard/models/{fleet.model_id('hero')}", "/dashboard/nodes?type=lora"):
            page.goto(fleet.url(path))
            page.wait_for_load_state("networkidle")
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= 375, f"{path} is {width} px wide on a 375 px screen"
        page.goto(fleet.url("/dashboard/models"))
        # the wide table scrolls inside its box instead
        box = page.locator("#models-table").locator("xpath=..")
        assert box.evaluate("n => n.classList.contains('table-scroll') && n.scrollWidth > n.clientWidth")
        box.evaluate("n => { n.scrollLeft = n.scrollWidth; }")
        assert box.evaluate("n => n.scrollLeft") > 0
        screenshot(page, "models-phone")
    finally:
        context.close()
