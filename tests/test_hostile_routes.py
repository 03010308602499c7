"""No input gives a 500 or a dropped connection: every route of the app's own route table (so a route added later
is walked too), every method it allows, hostile path values, with and without tokens, with hostile bodies;
against a real uvicorn configured as `modelsync serve` runs it."""
from __future__ import annotations

import gzip
import hashlib
from typing import Iterator
from urllib.parse import quote

import pytest
import requests
from starlette.routing import Mount, Route
from support_server import RunningServer, run_server

from modelsync.server.app import create_app

HOSTILE_PATH_VALUES = [
    str(2**63),
    str(10**23),
    "99999999999999999999999",
    "-1",
    "0",
    "abc",
    "%00",
    "..%2F..",
    "x" * 10_000,
    quote("模型-ünïcødé-🙂"),
]
HUGE_NUMBERS = (
    b'{"format": 1, "server_id": "n1", "files": [{"path": "/m/a.safetensors", "size": 1e999, '
    b'"mtime_ns": 99999999999999999999999, "sha256": 1e999}], "job": {"steps": 1e999, "sd_model_checkpoint": 1e999}, '
    b'"civitai_version_id": 99999999999999999999999, "hash": 99999999999999999999999, "calculate_hashes": 1, '
    b'"name": 99999999999999999999999, "trained_words": [1e999], "limit": 99999999999999999999999, '
    b'"display_name": 1e999, "api_url": -1e999, "rel_name": 99999999999999999999999}'
)
HOSTILE_BODIES = {
    "deep nesting": b"[" * 100_000,
    "deep nesting, gzip": gzip.compress(b'{"a":' * 100_000),
    "invalid UTF-8": b'{"server_id": "n1", "job": "\xff\xfe\xfd", "format": 1}',
    "a JSON array": b'[{"server_id": "n1"}, 1, 2]',
    "huge numbers": HUGE_NUMBERS,
    "a number of 5,000 digits": b'{"civitai_version_id": ' + b"9" * 5000 + b"}",
}
BODY_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


def endpoints() -> Iterator[tuple[str, list[str], set[str]]]:
    """(path format, its parameters, methods) of every route and mount the app has."""
    for route in create_app().routes:
        if isinstance(route, Route):
            yield route.path_format, list(route.param_convertors), set(route.methods or {"GET"})
        elif isinstance(route, Mount):
            yield route.path + "/{path}", ["path"], {"GET", "HEAD"}
        else:
            raise AssertionError(f"a kind of route this walk does not know: {route!r}")


def seed(server: RunningServer, state: dict) -> None:
    """A registered node n1 holding one model, whatever the previous requests did (reset, deleted the node...)."""
    files = [{"path": "/m/a.safetensors", "rel_name": "a.safetensors", "role": "lora", "size": 1,
              "sha256": hashlib.sha256(b"a").hexdigest()}]
    r = server.post("/api/v1/servers/n1/token", headers=server.admin_headers)
    assert r.status_code == 200, r.text
    state["node_token"] = r.json()["token"]
    r = server.post("/api/v1/servers/n1/models/sync", json={"format": 1, "server_id": "n1", "files": files},
                    headers={"Authorization": f"Bearer {state['node_token']}"})
    assert r.status_code == 200, r.text
    state["model_id"] = str(server.get("/api/v1/models").json()["models"][0]["id"])


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[RunningServer]:
    with run_server(tmp_path_factory.mktemp("hostile-routes")) as running:
        yield running


def test_every_route_answers_hostile_input_without_a_5xx_or_a_dropped_connection(server):
    state: dict = {}
    failures: list[str] = []
    requests_sent = 0

    def send(method: str, path: str, auth: str, body: bytes | None, body_name: str) -> None:
        nonlocal requests_sent
        headers = {"Content-Type": "application/json"}
        if auth == "admin":
            headers["Authorization"] = f"Bearer {server.admin_token}"
        elif auth == "node":
            headers["Authorization"] = f"Bearer {state['node_token']}"
        if body_name.endswith("gzip"):
            headers["Content-Encoding"] = "gzip"
        requests_sent += 1
        where = f"{method} {path[:120]} ({auth} token, body: {body_name})"
        try:
            # a fresh connection each time: a refused request's connection is closed by the server, by design
            r = requests.request(method, server.url(path), data=body, headers=headers, timeout=60)
        except requests.RequestException as exc:
            failures.append(f"{where}: connection failed: {exc!r}")
            return
        if r.status_code >= 500:
            failures.append(f"{where}: {r.status_code} {r.text[:200]}")

    walked = 0
    for path_format, params, methods in endpoints():
        walked += 1
        seed(server, state)
        normal = {"id": state["model_id"], "file_id": "1", "server_id": "n1", "path": "style.css"}
        for method in sorted(methods):
            for auth in ("none", "admin", "node"):
                for value in HOSTILE_PATH_VALUES if params else [None]:
                    path = path_format.format(**{p: value for p in params})
                    send(method, path, auth, b"[" * 100_000 if method in BODY_METHODS else None, "deep nesting")
                if method in BODY_METHODS:
                    path = path_format.format(**{p: normal.get(p, "n1") for p in params})
                    for body_name, body in HOSTILE_BODIES.items():
                        send(method, path, auth, body, body_name)
    assert walked >= 25 and requests_sent > 1000  # the whole table was walked, not a part of it
    assert not failures, f"{len(failures)} of {requests_sent} requests failed:\n" + "\n".join(failures[:40])
    assert server.get("/api/v1/health").json()["status"] == "ok"


def test_the_job_checks_answer_after_a_reset_of_the_registry(server):
    """Found by the walk: reset-database emptied the change counters the job checks read (a 500 TypeError after)."""
    state: dict = {}
    seed(server, state)
    assert server.post("/api/v1/models/reset-database", headers=server.admin_headers).status_code == 200
    r = server.post("/api/v1/jobs/availability", json={"job": {"prompt": "a cat", "sd_model_checkpoint": "a"}})
    assert r.status_code == 200 and r.json()["model_availability"]["available"] is False
    seed(server, state)
    r = server.post("/api/v1/jobs/availability", json={"job": {"prompt": "a cat <lora:a:1>"}})
    assert r.status_code == 200 and r.json()["model_availability"]["requirements"][0]["status"] == "resolved", r.text
