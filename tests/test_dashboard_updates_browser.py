"""The "update available" badge and the one-click update in a real headless Chromium, against the real server whose
update checks asked the Civitai stand-in: the models list (badge, filter), the model page (badge, the new version's
link, the admin's button) and the transfers it orders onto exactly the nodes that hold the old version."""
from __future__ import annotations

import re

import pytest
from support_browser import browser, browser_page, screenshot, sign_in  # noqa: F401  (fixtures)
from support_civitai import civitai_stub  # noqa: F401  (fixture)
from support_server import make_server, push_files, wait_for  # noqa: F401  (fixtures)
from test_civitai_updates import FAR_FUTURE, HELD, held_entry, model_id, stand_in_model

pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed (pip install -e .[test])")
from playwright.sync_api import expect  # noqa: E402


def test_update_badge_and_one_click_update(browser_page, make_server, civitai_stub):  # noqa: F811
    page = browser_page
    stand_in_model(civitai_stub, early_access_until=FAR_FUTURE)
    server = make_server(civitai_enabled=True, civitai_api_base=civitai_stub.base_url)
    push_files(server, "gpu-01", [held_entry("held", HELD)])
    push_files(server, "gpu-02", [held_entry("held", HELD), held_entry("other", 777, civitai_model=4242)])
    push_files(server, "gpu-03", [held_entry("other", 777, civitai_model=4242)])
    held, other = model_id(server, "held"), model_id(server, "other")
    wait_for(lambda: server.get("/api/v1/models", params={"update": "available"}).json()["total"] == 1)

    page.goto(server.url("/dashboard/models"))
    expect(page.locator(f"tr[data-model-id='{held}'] .update-badge")).to_have_text("update available")
    expect(page.locator(f"tr[data-model-id='{other}'] .update-badge")).to_have_count(0)
    page.select_option("#update-filter", "available")
    page.click("#filters button[type=submit]")
    expect(page.locator("#models-table tbody tr")).to_have_count(1)
    expect(page.locator("#model-count")).to_have_text(re.compile(r"^1 model\b"))

    page.goto(server.url(f"/dashboard/models/{held}"))
    expect(page.locator("#update-badge")).to_have_text("update available")
    expect(page.locator("#update-link")).to_have_text("v2.0")
    expect(page.locator("#update-link")).to_have_attribute(
        "href", f"{civitai_stub.base_url}/models/1231067?modelVersionId=5002")
    expect(page.locator("#order-update")).to_be_hidden()  # admin only
    sign_in(page, server.admin_token)
    page.click("#order-update")
    expect(page.locator("#update-message")).to_have_text(
        "Ordered version 5002 on gpu-01, gpu-02 (2 transfers). See them on the Transfers page")
    screenshot(page, "model-update")
    transfers = server.get("/api/v1/transfers").json()["transfers"]
    assert sorted((t["server_id"], t["source"]["kind"], t["source"]["civitai"]["version_id"]) for t in transfers) == [
        ("gpu-01", "civitai", 5002), ("gpu-02", "civitai", 5002)]

    page.goto(server.url(f"/dashboard/models/{other}"))
    expect(page.locator("#update-badge")).to_have_count(0)
    expect(page.locator("#update-check")).to_contain_text("answered")
