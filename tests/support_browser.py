"""The dashboard in a real headless Chromium (Playwright driving Debian's `chromium`; no `playwright install`), and a
small fleet of real nodes to look at.

    def test_x(browser_page, dashboard_fleet): ...

Without the `chromium` binary (tests/run.sh installs it when run as root) or the `playwright` package, the
browser tests skip and say why. Every page is watched: a JavaScript error, a Content-Security-Policy violation or a
JavaScript dialog (an injected `alert`) fails the test. With MODELSYNC_SCREENSHOTS=<folder> the tests that show a page
save its PNG there (docs/screenshots/ holds the committed ones).
"""
from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import model_factory
import pytest
from support_jobs import JobNode, set_last_contact
from support_server import RunningServer

CHROMIUM = shutil.which("chromium")
EVIL_NAME = "<script>alert('pwned')</script> Evil <b>bold</b>"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (tests/run.sh installs it when run as root)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed (pip install -e .[test])")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield browser
        browser.close()


@dataclass
class PageWatch:
    """What a page did that it must not: JavaScript errors, CSP violations, dialogs."""

    errors: list[str] = field(default_factory=list)
    csp_violations: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)


@pytest.fixture
def browser_page(browser) -> Iterator[Any]:
    """A fresh browser context (its own sessionStorage) and page; fails the test on a JS error, CSP violation or dialog."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.set_default_timeout(15_000)
    watch = PageWatch()
    page.on("pageerror", lambda exc: watch.errors.append(str(exc)))
    page.on("console", lambda msg: watch.csp_violations.append(msg.text) if "Content Security Policy" in msg.text else None)

    def on_dialog(dialog: Any) -> None:
        watch.dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    page.watch = watch
    yield page
    context.close()
    assert watch.errors == [], f"JavaScript errors: {watch.errors}"
    assert watch.csp_violations == [], f"Content-Security-Policy violations: {watch.csp_violations}"
    assert watch.dialogs == [], f"dialogs opened (injected script?): {watch.dialogs}"


def screenshot(page: Any, name: str) -> None:
    folder = os.environ.get("MODELSYNC_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)


def sign_in(page: Any, token: str) -> None:
    page.fill("#admin-token", token)
    page.click("#admin-form button[type=submit]")
    page.locator(".when-signed-in").wait_for(state="visible")


def sha256_of(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@dataclass
class Fleet:
    server: RunningServer
    own_models: Path  # the server's MODEL_PATH
    nodes: dict[str, JobNode]
    files: dict[str, Path]  # a short name -> the model file (one copy)

    def model_id(self, name: str) -> int:
        sha256 = sha256_of(self.files[name])
        models = self.server.get("/api/v1/models", params={"text": sha256}).json()["models"]
        assert len(models) == 1, f"{name} is not in the registry"
        return models[0]["id"]

    def url(self, path: str) -> str:
        return self.server.url(path)


def build_fleet(server: RunningServer, own_models: Path, base: Path) -> Fleet:
    """Three pushing nodes (gpu-02 with Windows paths, gpu-03 silent for a day, so offline) and the server's own
    MODEL_PATH (three files, not scanned yet)."""
    files: dict[str, Path] = {
        "own_lora_xl": model_factory.write_lora(own_models / "Lora" / "own_lora_xl.safetensors", base="sdxl"),
        "own_lora_sd1": model_factory.write_lora(own_models / "Lora" / "own_lora_sd1.safetensors", base="sd1"),
        "own_ckpt": model_factory.write_checkpoint(own_models / "Stable-diffusion" / "own_ckpt.safetensors", base="sd1"),
    }
    nodes = {sid: JobNode(base, sid, windows=sid == "gpu-02", base_url=server.base_url) for sid in ("gpu-01", "gpu-02", "gpu-03")}
    gpu1, gpu2, gpu3 = nodes.values()
    files["base_xl"] = gpu1.add("Stable-diffusion", "base_xl.safetensors", model_factory.write_checkpoint, base="sdxl")
    files["hero"] = gpu1.add("Lora", "Hero.safetensors", base="sdxl", metadata={"ss_output_name": "hero_v1"})
    gpu1.civitai_sidecar(files["hero"])
    files["ink"] = gpu1.add("Lora", "styles/Ink.safetensors", base="sd1")
    files["evil"] = gpu1.add("Lora", "evil.safetensors", base="sd1", metadata={"modelspec.title": EVIL_NAME})
    gpu2.copy(files["base_xl"], "Stable-diffusion", "base_xl.safetensors")
    gpu2.copy(files["ink"], "Lora", "Ink.safetensors")
    files["zap"] = gpu3.add("Lora", "Zap.safetensors", base="sdxl")
    for node in nodes.values():
        node.push()
    set_last_contact(server.db_path, "gpu-03", "2000-01-01T00:00:00Z")
    return Fleet(server, own_models, nodes, files)


@pytest.fixture
def dashboard_fleet(make_server, tmp_path) -> Fleet:
    own_models = tmp_path / "central-models"
    server = make_server(model_paths=[own_models])
    return build_fleet(server, own_models, tmp_path / "nodes")
