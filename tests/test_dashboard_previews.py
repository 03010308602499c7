"""Previews in the dashboard: a model the Civitai worker found (against the local Civitai stand-in) shows its stored
JPEG in the models list and on its page, loaded by the real browser; a model without one shows none."""
from __future__ import annotations


import model_factory
import pytest
from support_browser import browser, browser_page, sha256_of  # noqa: F401  (fixtures)
from support_civitai import civitai_stub  # noqa: F401  (fixture)
from support_jobs import JobNode
from support_server import make_server, wait_for  # noqa: F401  (fixture)

pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed (pip install -e .[test])")
from playwright.sync_api import expect  # noqa: E402

FOUND = "civitai_model_version_1387174_lora_flux_lora-manager.json"


def test_a_stored_preview_is_shown_in_the_list_and_on_the_models_page(browser_page, make_server, civitai_stub, tmp_path):
    server = make_server(civitai_enabled=True, civitai_api_base=civitai_stub.base_url, civitai_image_hosts=("127.0.0.1",))
    node = JobNode(tmp_path, "gpu-01", base_url=server.base_url)
    found = node.add("Lora", "storybook.safetensors", base="flux1")
    plain = node.add("Lora", "plain.safetensors", model_factory.write_lora, base="sdxl")
    civitai_stub.add_version(FOUND, sha256=sha256_of(found))
    node.push()

    def model(path):
        return server.get("/api/v1/models", params={"text": sha256_of(path)}).json()["models"][0]

    found_id = wait_for(lambda: model(found)["preview_url"] and model(found)["id"])
    page = browser_page
    page.goto(server.url("/dashboard/models"))
    with_preview = page.locator(f"#models-table tr[data-model-id='{found_id}'] td.preview img")
    expect(with_preview).to_have_attribute("src", f"/api/v1/models/{found_id}/preview")
    wait_for(lambda: with_preview.evaluate("img => img.complete && img.naturalWidth > 0"))
    without = page.locator(f"#models-table tr[data-model-id='{model(plain)['id']}'] td.preview")
    expect(without.locator("img")).to_have_count(0)

    page.goto(server.url(f"/dashboard/models/{found_id}"))
    large = page.locator(".preview-large img")
    wait_for(lambda: large.evaluate("img => img.complete && img.naturalWidth > 0"))
