"""JSON too deep for the parser, or with numbers Python will not convert, is a 400 naming the body (it was a 500
RecursionError / ValueError): on the sync, the heartbeat, the job checks and every other JSON body."""
from __future__ import annotations

import gzip

import pytest
from support_server import run_server

DEEP = b"[" * 100_000
DEEP_OBJECT = b'{"job":' * 100_000
LONG_NUMBER = b'{"job": ' + b"9" * 5000 + b"}"


@pytest.fixture(scope="module")
def server_and_token(tmp_path_factory):
    """The server, and the token of its registered node gpu-01."""
    with run_server(tmp_path_factory.mktemp("hostile-json")) as running:
        yield running, running.post("/api/v1/servers/gpu-01/heartbeat").json()["token"]


PATHS = [
    "/api/v1/servers/gpu-02/models/sync",  # a first contact from loopback: its body is read
    "/api/v1/servers/gpu-01/models/sync",  # a registered node with its token
    "/api/v1/servers/gpu-01/heartbeat",
    "/api/v1/jobs/availability",
    "/api/v1/servers/gpu-01/dispatch-check",
    "/api/v1/checkpoint-verify",
]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("body, gzipped", [(DEEP, False), (DEEP_OBJECT, False), (DEEP, True), (LONG_NUMBER, False)],
                         ids=["deep-array", "deep-object", "deep-gzip", "5000-digit-number"])
def test_hostile_json_is_a_400_naming_the_body(server_and_token, path, body, gzipped):
    server, token = server_and_token
    headers = {"Authorization": f"Bearer {token}"} if "gpu-01" in path else {}
    if gzipped:
        body, headers = gzip.compress(body), {**headers, "Content-Encoding": "gzip"}
    r = server.post(path, data=body, headers={**headers, "Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.json()["field"] == "body" and ("too deeply" in r.json()["error"] or "not valid JSON" in r.json()["error"])
    assert "gpu-02" not in [s["id"] for s in server.get("/api/v1/servers").json()["servers"]]
