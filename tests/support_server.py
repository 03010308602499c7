"""The real central server for tests: uvicorn on 127.0.0.1, a free port, its own data folder.

    def test_x(central_server):                 # Civitai worker off, admin token known
        central_server.get("/api/v1/health")
    def test_y(make_server, civitai_stub):      # any ServerConfig field as keyword
        server = make_server(civitai_api_base=civitai_stub.base_url, civitai_enabled=True)

`run_server(...)` runs it in a thread of the test process; `server_process(...)` in a subprocess
(`python -m modelsync.server.main`), for kill tests and benches.

Every answer a test receives from such a server (through any requests.Session, or `raw_http`) is kept in ANSWERS
and checked against the OpenAPI document (`check_answers`; tests/conftest.py runs it after each test).
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import unquote, urlsplit

import pytest
import requests
import uvicorn
from starlette.routing import Match

from modelsync.server.app import create_app
from modelsync.server.auth import new_token
from modelsync.server.config import ServerConfig
from modelsync.server.main import UVICORN_OPTIONS
from modelsync.server.openapi import build_document


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
        admin_token=new_token(),  # as the server makes one: never "-..." (given after --admin-token)
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
    app = create_app(config)

    def before_stop() -> None:
        ctx = getattr(app.state, "modelsync", None)
        if ctx is not None:
            ctx.signals.close()  # as `modelsync serve` does on SIGTERM: held long-polls answered at once

    with serve_asgi(app, "uvicorn", before_stop=before_stop, lifespan="on", **UVICORN_OPTIONS) as base_url:
        running = RunningServer(base_url, config.admin_token or "", Path(data_path), config)
        try:
            with ANSWERS.watching(running.base_url):
                yield running
        finally:
            running.session.close()


@contextlib.contextmanager
def serve_asgi(app: Any, name: str, before_stop: Any = None, **uvicorn_config: Any) -> Iterator[str]:
    """An ASGI app run by uvicorn on a loopback port in a thread: its base URL once it answers; stopped on exit
    (`before_stop()` first)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, **uvicorn_config))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=f"{name}-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the test server {name} did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        if before_stop is not None:
            before_stop()
        server.should_exit = True
        thread.join(30)
        sock.close()


_PORTS_HANDED_OUT: set[int] = set()
_PORTS_LOCK = threading.Lock()


def free_port() -> int:
    """A free loopback port never handed out before in this process: several taken back to back, before any child
    binds its own, are all different."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        with _PORTS_LOCK:
            if port not in _PORTS_HANDED_OUT:
                _PORTS_HANDED_OUT.add(port)
                return port


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
        "MODELSYNC_FULFIL": config.fulfil,
        "CIVITAI_API_KEY": config.civitai_api_key or "",
        "MODELSYNC_SHARE_CIVITAI_KEY": "true" if config.share_civitai_key else "false",
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
        with ANSWERS.watching(running.base_url):
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
            if requests.get(server.url("/api/v1/health"), timeout=(1, 5)).status_code == 200:
                return
        except (requests.ConnectionError, requests.Timeout):  # not listening yet, or slow to answer its first request
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
    ANSWERS.record_raw(server.base_url, request_head, response)
    return int(response.split(b" ", 2)[1]), response


# --- every answer from a real server, checked against the OpenAPI document ------------------------------------------
@dataclass
class Answer:
    method: str
    path: str
    status: int
    content_type: str
    body: bytes
    test: str  # the test (and phase) that received it

    def __str__(self) -> str:
        path = self.path if len(self.path) <= 120 else self.path[:100] + f"... ({len(self.path)} characters)"
        return f"{self.method} {path} -> {self.status} (in {self.test})"


class AnswerLog:
    """Answers from the servers the tests run (their base URLs are watched while they run), kept until checked."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._bases: dict[str, int] = {}
        self._answers: list[Answer] = []
        self.validated = 0
        self.not_json = 0  # pages, previews, HEAD answers: no JSON body to check
        self.seen: set[str] = set()  # "method path status" of the answers that matched

    @contextlib.contextmanager
    def watching(self, base_url: str) -> Iterator[None]:
        with self._lock:
            self._bases[base_url] = self._bases.get(base_url, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                self._bases[base_url] -= 1
                if not self._bases[base_url]:
                    del self._bases[base_url]

    def _keep(self, base_url: str, method: str, path: str, status: int, content_type: str, body: bytes) -> None:
        with self._lock:
            if base_url in self._bases:
                self._answers.append(Answer(method.upper(), path, status, content_type, body,
                                            os.environ.get("PYTEST_CURRENT_TEST", "outside a test")))

    def record(self, response: requests.Response) -> None:
        """A requests answer (a streamed one is read only when it is JSON)."""
        url = urlsplit(response.url)
        base_url = f"{url.scheme}://{url.netloc}"
        if base_url not in self._bases:
            return
        content_type = response.headers.get("content-type", "")
        body = response.content if content_type.startswith("application/json") else b""
        self._keep(base_url, response.request.method or "GET", url.path, response.status_code, content_type, body)

    def record_raw(self, base_url: str, request_head: bytes, response: bytes) -> None:
        """An answer `raw_http` read: kept when it arrived whole."""
        request_line = request_head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
        head, _, body = response.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        if len(request_line) < 2 or len(lines[0].split(" ")) < 2 or headers.get("content-length") != str(len(body)):
            return
        if headers.get("content-encoding"):
            return
        self._keep(base_url, request_line[0], urlsplit(request_line[1]).path, int(lines[0].split(" ")[1]),
                   headers.get("content-type", ""), body)

    def take(self) -> list[Answer]:
        with self._lock:
            answers, self._answers = self._answers, []
        return answers


ANSWERS = AnswerLog()


@contextlib.contextmanager
def recording_answers(log: AnswerLog = ANSWERS) -> Iterator[AnswerLog]:
    """Every requests.Session (a test's, the node client's, requests.get's) hands its answers to `log`."""
    original = requests.Session.send

    def send(session: requests.Session, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        response = original(session, request, **kwargs)
        log.record(response)
        return response

    requests.Session.send = send  # type: ignore[method-assign]
    try:
        yield log
    finally:
        requests.Session.send = original  # type: ignore[method-assign]


@lru_cache(maxsize=1)
def api_routes() -> list[Any]:
    return create_app(server_config(Path("unused"))).routes


@lru_cache(maxsize=1)
def openapi_document() -> dict[str, Any]:
    """The document as a server serves it (built from the app's routes; no server needed)."""
    return build_document(api_routes())


def closed(schema: Any) -> Any:
    """The schema with every object's property list closed (additionalProperties: false where it says nothing):
    an answer carrying a field the document does not describe fails the check."""
    if isinstance(schema, list):
        return [closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    result = {key: closed(value) for key, value in schema.items()}
    if "properties" in schema and "additionalProperties" not in schema:
        result["additionalProperties"] = False
    return result


class AnswerChecker:
    """Finds each answer's operation as the server's router does (method and path) and validates the JSON body
    against the operation's schema for that status; a JSON error of a path or method no route takes (the router's
    404/405) against Error."""

    def __init__(self, document: dict[str, Any], routes: list[Any]):
        import jsonschema  # installed with openapi-spec-validator (the test extras)

        self._jsonschema = jsonschema
        self.document = document
        self._components = closed(document["components"])
        self._routes = routes
        self._validators: dict[str, Any] = {}

    def _template(self, method: str, path: str) -> str | None:
        scope = {"type": "http", "method": method, "path": unquote(path), "root_path": ""}  # as uvicorn decodes it
        for route in self._routes:
            match, _ = route.matches(scope)
            if match == Match.FULL:
                return re.sub(r":\w+}", "}", route.path)
        return None

    def _validator(self, key: str, schema: dict[str, Any]) -> Any:
        if key not in self._validators:
            root = {**closed(schema), "components": self._components}
            self._validators[key] = self._jsonschema.Draft202012Validator(
                root, format_checker=self._jsonschema.Draft202012Validator.FORMAT_CHECKER)
        return self._validators[key]

    def schema_for(self, answer: Answer) -> tuple[str, dict[str, Any] | None, str | None]:
        """(what was matched, the schema, or None with why no schema applies)."""
        path = self._template(answer.method, answer.path)
        operation = self.document["paths"].get(path or "", {}).get(answer.method.lower())
        if operation is None:
            if answer.status >= 400:
                return "no operation (a router error)", {"$ref": "#/components/schemas/Error"}, None
            return "no operation", None, "the document has no operation for this method and path"
        response = operation["responses"].get(str(answer.status))
        where = f"{answer.method.lower()} {path} {answer.status}"
        if response is None:
            return where, None, f"status {answer.status} is not documented for {answer.method} {path}"
        content = response.get("content", {}).get("application/json")
        if content is None:
            return where, None, f"the document gives {answer.method} {path} {answer.status} no JSON body"
        return where, content["schema"], None

    def check(self, answer: Answer) -> tuple[str, str | None]:
        """(the operation and status matched, None when the answer matches the document or what is wrong)."""
        where, schema, problem = self.schema_for(answer)
        if problem is not None:
            return where, f"{answer}: {problem}"
        try:
            body = json.loads(answer.body)
        except ValueError as exc:
            return where, f"{answer}: the body is not JSON ({exc})"
        errors = sorted(self._validator(where, schema).iter_errors(body), key=lambda e: list(e.absolute_path))
        if errors:
            shown = "; ".join(f"{e.json_path}: {e.message[:200]}" for e in errors[:3])
            return where, f"{answer}: does not match {where}: {shown}"
        return where, None


@lru_cache(maxsize=1)
def answer_checker() -> AnswerChecker:
    return AnswerChecker(copy.deepcopy(openapi_document()), api_routes())


def check_answers(answers: list[Answer], log: AnswerLog = ANSWERS, checker: AnswerChecker | None = None) -> list[str]:
    """The mismatches among these answers (JSON bodies only: HTML pages, JPEG previews and HEAD answers are skipped)."""
    checker = checker or answer_checker()
    problems = []
    for answer in answers:
        if answer.method == "HEAD" or not answer.content_type.startswith("application/json"):
            log.not_json += 1
            continue
        where, problem = checker.check(answer)
        if problem is None:
            log.validated += 1
            log.seen.add(where)
        else:
            problems.append(problem)
    return problems


@contextlib.contextmanager
def json_stub(answers: dict[tuple[str, str], tuple[int, Any]]) -> Iterator[str]:
    """A loopback HTTP server answering (method, path) with (status, JSON body): a server that answers wrongly, for
    the tests of the answer check. Yields its base URL."""
    from http.server import BaseHTTPRequestHandler

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            status, body = answers.get((self.command, self.path.split("?")[0]), (404, {"error": "no such path", "field": None}))
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

        def log_message(self, *args: Any) -> None:
            pass

    with serve_http(Handler) as base_url:
        yield base_url


@contextlib.contextmanager
def serve_http(handler: type) -> Iterator[str]:
    """A http.server handler class served on a loopback port in a thread: its base URL; stopped on exit."""
    from http.server import ThreadingHTTPServer

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)


def registry_row(server: RunningServer, table: str, sha256: str) -> dict[str, Any] | None:
    """The row of `table` for this SHA256, read from the server's SQLite file (what it committed)."""
    conn = sqlite3.connect(server.db_path)
    conn.row_factory = sqlite3.Row
    try:
        row = conn.execute(f"SELECT * FROM {table} WHERE sha256 = ?", [sha256]).fetchone()
    finally:
        conn.close()
    return dict(row) if row else None
