"""The real central server for tests: uvicorn on 127.0.0.1, a free port, its own data folder.

    def test_x(central_server):                 # Civitai worker off, admin token known
        central_server.get("/api/v1/health")
    def test_y(make_server, civitai_stub):      # any ServerConfig field as keyword
        server = make_server(civitai_api_base=civitai_stub.base_url, civitai_enabled=True)

`run_server(...)` runs it in a thread of the test process; `server_process(...)` in a subprocess
(`python -m modelsync.server.main`), for kill tests and benches.
"""
from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator

import pytest
import requests
import uvicorn

from modelsync.server.app import create_app
from modelsync.server.config import ServerConfig
from modelsync.server.main import UVICORN_OPTIONS


@dataclass
class RunningServer:
    base_url: str
    admin_token: str
    data_path: Path
    config: ServerConfig
    process: subprocess.Popen | None = None
    session: requests.Session = field(default_factory=requests.Session)

    @property
    def db_path(self) -> Path:
        return self.config.database_path

    def url(self, path: str) -> str:
        return self.base_url + path

    @property
    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token}"}

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 60)
        return self.session.request(method, self.url(path), **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("POST", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("DELETE", path, **kwargs)


def server_config(data_path: Path, **overrides: Any) -> ServerConfig:
    """A config for tests: its own data folder, a known admin token, Civitai off unless asked for."""
    base = ServerConfig(
        data_path=Path(data_path),
        admin_token=secrets.token_urlsafe(24),
        civitai_enabled=False,
        civitai_requests_per_minute=6000,
        worker_idle_seconds=0.5,
    )
    if "model_paths" in overrides:
        overrides["model_paths"] = [Path(p) for p in overrides["model_paths"]]
    return replace(base, **overrides)


@contextlib.contextmanager
def run_server(data_path: Path, **overrides: Any) -> Iterator[RunningServer]:
    """The server in a background thread of this process, uvicorn configured as `modelsync serve` runs it (its own
    X-Forwarded-For handling off); stopped (cleanly) on exit."""
    config = server_config(data_path, **overrides)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(config), lifespan="on", **UVICORN_OPTIONS))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    running = RunningServer(f"http://127.0.0.1:{port}", config.admin_token or "", Path(data_path), config)
    try:
        yield running
    finally:
        running.session.close()
        server.should_exit = True
        thread.join(30)
        sock.close()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_env(config: ServerConfig) -> dict[str, str]:
    env = {
        **os.environ,
        "CONFIG_DATA_PATH": str(config.data_path),
        "MODELSYNC_ADMIN_TOKEN": config.admin_token or "",
        "CIVITAI_ENABLED": "true" if config.civitai_enabled else "false",
        "CIVITAI_API_BASE": config.civitai_api_base,
        "CIVITAI_IMAGE_HOSTS": ",".join(config.civitai_image_hosts),
        "CIVITAI_REQUESTS_PER_MINUTE": str(config.civitai_requests_per_minute),
        "MODELSYNC_OFFLINE_AFTER": str(config.offline_after_seconds),
        "MODEL_PATH": os.pathsep.join(str(p) for p in config.model_paths),
        "MODELSYNC_REGISTRATION": config.registration,
    }
    return env


@contextlib.contextmanager
def server_process(data_path: Path, **overrides: Any) -> Iterator[RunningServer]:
    """The server as `python -m modelsync.server.main` in its own process (stdout/stderr in data_path/server.log)."""
    config = server_config(data_path, **overrides)
    config.data_path.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = open(config.data_path / "server.log", "ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "modelsync.server.main", "--host", "127.0.0.1", "--port", str(port)],
        env=server_env(config), stdout=log, stderr=subprocess.STDOUT,
    )
    running = RunningServer(f"http://127.0.0.1:{port}", config.admin_token or "", Path(data_path), config, process)
    try:
        wait_until_healthy(running, process)
        yield running
    finally:
        running.session.close()
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.close()


def wait_until_healthy(server: RunningServer, process: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}; see {server.data_path / 'server.log'}")
        try:
            if requests.get(server.url("/api/v1/health"), timeout=1).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.05)
    raise RuntimeError("the server did not answer /api/v1/health in time")


@pytest.fixture
def make_server(tmp_path_factory):
    """A factory: make_server(**ServerConfig fields) -> RunningServer (in-process); all stopped at teardown."""
    with contextlib.ExitStack() as stack:

        def make(**overrides: Any) -> RunningServer:
            data_path = overrides.pop("data_path", None) or tmp_path_factory.mktemp("server-data")
            return stack.enter_context(run_server(data_path, **overrides))

        yield make


@pytest.fixture
def central_server(tmp_path_factory) -> Iterator[RunningServer]:
    """The server with defaults for tests (Civitai worker off); needs no other fixture imported."""
    with run_server(tmp_path_factory.mktemp("server-data")) as server:
        yield server


def wait_for(condition: Any, timeout: float = 20.0) -> Any:
    """condition()'s first truthy value, asked every 50 ms (for what the server does after answering)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def push_files(server: RunningServer, server_id: str, files: list[dict], token: str | None = None) -> dict:
    """A node's sync with these inventory entries, as JSON; the answer (asserted 200)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    r = server.post(f"/api/v1/servers/{server_id}/models/sync", json={"format": 1, "server_id": server_id, "files": files},
                    headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


def raw_http(server: RunningServer, request_head: bytes, body: bytes = b"", source: str = "127.0.0.1",
             timeout: float = 30) -> tuple[int, bytes]:
    """Send these exact bytes (a request's head, then `body`) from `source` and read the answer until the server
    closes or has sent the whole response: (status, raw response). Raises on a reset or timeout."""
    host, port = server.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout, source_address=(source, 0)) as conn:
        conn.sendall(request_head + body)
        response = b""
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                break
            response += chunk
            head, sep, rest = response.partition(b"\r\n\r\n")
            if sep:
                lengths = [line.split(b":", 1)[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")]
                if lengths and len(rest) >= int(lengths[0]):
                    break
    return int(response.split(b" ", 2)[1]), response
