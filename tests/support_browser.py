"""The dashboard in a real headless Chromium (Playwright driving Debian's `chromium`; no `playwright install`), and a
small fleet of real nodes to look at.

    def test_x(browser_page, dashboard_fleet): ...

Without the `chromium` binary (tests/run.sh installs it when run as root) or the `playwright` package, the
browser tests skip and say why. Every page is watched: a JavaScript error, a console error, a Content-Security-Policy
violation (the console's report and the `securitypolicyviolation` event), a request answered 4xx/5xx or not at all
(a missing favicon, stylesheet or image) or a JavaScript dialog (an injected `alert`) fails the test; a test that
means to get an error answer says which with `expect_failures`. With MODELSYNC_SCREENSHOTS=<folder> the tests that
show a page save its PNG there (docs/screenshots/ holds the committed ones).
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import model_factory
import pytest
from support_jobs import JobNode, set_last_contact
from support_server import RunningServer

CHROMIUM = shutil.which("chromium")
BROWSER_TIMEZONE = "Asia/Kolkata"  # UTC+05:30, no daylight saving: local time is visibly not UTC
EVIL_NAME = "<script>alert('pwned')</script> Evil <b>bold</b>"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (tests/run.sh installs it when run as root)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed (pip install -e .[test])")
    sync_api.expect.set_options(timeout=15_000)  # as the pages' own default: expect() waits 5 s unless told
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield browser
        browser.close()


@dataclass
class PageWatch:
    """What a page did that it must not: JavaScript errors, console errors, CSP violations, failed requests, dialogs."""

    errors: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    csp_violations: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    expected_failures: list[re.Pattern] = field(default_factory=list)

    def expected(self, url: str) -> bool:
        return any(pattern.search(url) for pattern in self.expected_failures)

    def on_response(self, response: Any) -> None:
        if response.status >= 400 and not self.expected(response.url):
            self.failed_requests.append(f"{response.status} {response.request.method} {response.url}")

    def on_request_failed(self, request: Any) -> None:
        # a request cut short by the test going to the next page is not a fault of the page
        if request.failure != "net::ERR_ABORTED" and not self.expected(request.url):
            self.failed_requests.append(f"{request.failure} {request.url}")

    def on_console(self, message: Any) -> None:
        if "Content Security Policy" in message.text:
            self.csp_violations.append(message.text)
        # the browser's own line for an expected error answer is not a fault (on_response judges each answer)
        elif message.type == "error" and not (message.text.startswith("Failed to load resource")
                                              and self.expected(message.location.get("url", ""))):
            self.console_errors.append(message.text)


# reports every `securitypolicyviolation` event to the test, whatever the console says (added before any page script)
CSP_LISTENER = """document.addEventListener("securitypolicyviolation", (e) =>
  window.__modelsyncCspViolation(e.violatedDirective + " blocked " + (e.blockedURI || "inline") + " on " + e.documentURI));"""


def expect_failures(page: Any, *url_patterns: str) -> None:
    """The requests (URL regexes) this test means to be answered with an error: not counted as failures."""
    page.watch.expected_failures.extend(re.compile(p) for p in url_patterns)


@pytest.fixture
def browser_page(browser) -> Iterator[Any]:
    """A fresh browser context (its own sessionStorage) and page; fails the test on a JS error, a console error, a CSP
    violation, an unexpected failed request or a dialog."""
    context = browser.new_context(viewport={"width": 1400, "height": 900}, timezone_id=BROWSER_TIMEZONE)
    watch = PageWatch()
    context.expose_binding("__modelsyncCspViolation", lambda source, text: watch.csp_violations.append(text))
    context.add_init_script(CSP_LISTENER)
    page = context.new_page()
    page.set_default_timeout(15_000)
    page.on("pageerror", lambda exc: watch.errors.append(str(exc)))
    page.on("console", watch.on_console)
    page.on("response", watch.on_response)
    page.on("requestfailed", watch.on_request_failed)

    def on_dialog(dialog: Any) -> None:
        watch.dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    page.watch = watch
    yield page
    context.close()
    assert watch.errors == [], f"JavaScript errors: {watch.errors}"
    assert watch.csp_violations == [], f"Content-Security-Policy violations: {watch.csp_violations}"
    assert watch.console_errors == [], f"console errors: {watch.console_errors}"
    assert watch.failed_requests == [], f"failed requests: {watch.failed_requests}"
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
    MODEL_PATH (three files, not scanned yet). gpu-01 has problems: a truncated LoRA (broken) and a linked share whose
    target went away after its first sync (its LoRA unreachable, so that model is on no node)."""
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
    share = base / "nas" / "loras"
    files["nas_style"] = model_factory.write_lora(share / "nas_style.safetensors", base="sdxl")
    os.symlink(share, gpu1.models / "Lora" / "nas")
    for node in nodes.values():
        node.push()
    share.rename(share.with_name("gone"))  # the share is unmounted: its file is unreachable, kept with its hash
    files["half"] = gpu1.models / "Lora" / "half_download.safetensors"
    files["half"].write_bytes(files["hero"].read_bytes()[:3000])  # the header intact, the tensors cut off: broken
    gpu1.push()
    set_last_contact(server.db_path, "gpu-03", "2000-01-01T00:00:00Z")
    return Fleet(server, own_models, nodes, files)


@pytest.fixture
def dashboard_fleet(make_server, tmp_path) -> Fleet:
    own_models = tmp_path / "central-models"
    server = make_server(model_paths=[own_models])
    return build_fleet(server, own_models, tmp_path / "nodes")
