"""A local stand-in for the Civitai API serving the real response files (tests/fixtures/civitai/).

stub = CivitaiStub(); stub.start(); stub.add_version("civitai_model_version_1387174_lora_flux_lora-manager.json", sha256=...)
It answers GET/POST by-hash like Civitai (404 for unknown hashes), can be scripted to fail
(`fail_next(429, retry_after=2)`) or to be slow (`delay`), records requests, and serves a real JPEG at /images/.
"""
from __future__ import annotations

import copy
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

FIXTURES = Path(__file__).parent / "fixtures" / "civitai"


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text())


def jpeg_bytes() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), (200, 80, 40)).save(buffer, "JPEG")
    return buffer.getvalue()


class CivitaiStub:
    def __init__(self) -> None:
        self.versions: dict[str, dict[str, Any]] = {}  # SHA256 upper -> version object
        self.failures: list[tuple[int, float | str | None, str]] = []  # status, Retry-After, path fragment
        self.delay = 0.0
        self.requests: list[tuple[str, str, str | None]] = []  # method, path, Authorization
        self.image_content_type = "image/jpeg"
        self.image = jpeg_bytes()
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None

    @property
    def base_url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def add_version(self, fixture_name: str, sha256: str) -> dict[str, Any]:
        """A copy of a real version object re-keyed to sha256, with its images pointing at this stub."""
        version = copy.deepcopy(fixture(fixture_name))
        version["files"][0]["hashes"] = {"SHA256": sha256.upper(), "AutoV2": sha256[:10].upper()}
        for i, image in enumerate(version.get("images") or []):
            if isinstance(image, dict):
                image["url"] = f"{self.base_url}/images/{sha256[:8]}-{i}.jpeg"
        self.versions[sha256.upper()] = version
        return version

    def fail_next(self, status: int = 429, retry_after: float | str | None = None, times: int = 1, path: str = "") -> None:
        """The next `times` requests whose path contains `path` answer `status`."""
        with self.lock:
            self.failures.extend([(status, retry_after, path)] * times)

    def count(self, path_fragment: str = "") -> int:
        return sum(1 for _, path, _ in self.requests if path_fragment in path)

    def start(self) -> "CivitaiStub":
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: bytes, content_type: str = "application/json", headers: dict | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, str(v))
                self.end_headers()
                self.wfile.write(body)

            def _begin(self) -> bool:
                stub.requests.append((self.command, self.path, self.headers.get("Authorization")))
                if stub.delay:
                    time.sleep(stub.delay)
                with stub.lock:
                    index = next((i for i, f in enumerate(stub.failures) if f[2] in self.path), None)
                    failure = stub.failures.pop(index) if index is not None else None
                if failure:
                    status, retry_after, _ = failure
                    headers = {"Retry-After": retry_after} if retry_after is not None else {}
                    self._send(status, json.dumps({"error": "scripted failure"}).encode(), headers=headers)
                    return False
                return True

            def do_GET(self) -> None:
                if not self._begin():
                    return
                if self.path.startswith("/images/"):
                    self._send(200, stub.image, stub.image_content_type)
                    return
                prefix = "/api/v1/model-versions/by-hash/"
                version = stub.versions.get(self.path[len(prefix):].upper()) if self.path.startswith(prefix) else None
                if version is None:
                    self._send(404, b'{"error":"Model not found"}')
                    return
                self._send(200, json.dumps(version).encode())

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if not self._begin():
                    return
                if self.path != "/api/v1/model-versions/by-hash":
                    self._send(404, b'{"error":"Not found"}')
                    return
                hashes = json.loads(body)
                found = [stub.versions[h.upper()] for h in hashes if h.upper() in stub.versions]
                self._send(200, json.dumps(found).encode())

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


@pytest.fixture
def civitai_stub():
    stub = CivitaiStub().start()
    yield stub
    stub.stop()
