"""Authenticate before the body: a request that may not act for a node (no token, a wrong token, a first contact
registration does not allow) is refused from its headers and peer, before a byte of its body is read; only an
admitted request has its body read, and then within the limits (gzip inflated into one bounded buffer)."""
from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import tracemalloc

import pytest
from starlette.requests import Request
from support_server import RunningServer, raw_http, run_server

from modelsync.server.body import read_body
from modelsync.server.errors import ApiError


def inventory(server_id: str, *contents: str) -> dict:
    return {"format": 1, "server_id": server_id, "files": [
        {"path": f"/m/{c}.safetensors", "rel_name": f"{c}.safetensors", "role": "lora", "size": 1,
         "sha256": hashlib.sha256(c.encode()).hexdigest()} for c in contents]}


def register(server: RunningServer, server_id: str) -> str:
    r = server.post(f"/api/v1/servers/{server_id}/models/sync", json=inventory(server_id, "a"))
    assert r.status_code == 200 and r.json()["registered"] is True, r.text
    return r.json()["token"]


def head_only(method: str, path: str, length: int, token: str | None = None, extra: str = "") -> bytes:
    """A request's head announcing `length` body bytes that are never sent."""
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return (f"{method} {path} HTTP/1.1\r\nHost: registry\r\nContent-Type: application/json\r\n{auth}{extra}"
            f"Content-Length: {length}\r\n\r\n").encode()


@pytest.fixture
def server(tmp_path):
    with run_server(tmp_path) as running:
        yield running


@pytest.mark.parametrize("length", [100_000_000, 50_000_000])
def test_a_sync_without_the_nodes_token_is_refused_before_its_body_is_sent(server, length):
    register(server, "gpu-01")
    # the client sends only the head: an answer at all proves the server did not wait for the body
    status, response = raw_http(server, head_only("POST", "/api/v1/servers/gpu-01/models/sync", length))
    assert status == 401 and b'"field":"Authorization"' in response
    status, response = raw_http(server, head_only("POST", "/api/v1/servers/gpu-01/models/sync", length, "wrong-" * 8))
    assert status == 403 and b"not the one node gpu-01 was given" in response
    status, _ = raw_http(server, head_only("POST", "/api/v1/servers/gpu-01/heartbeat", length))
    assert status == 401


def test_a_first_contact_registration_does_not_allow_is_refused_before_its_body(tmp_path):
    with run_server(tmp_path, registration="closed") as server:
        status, response = raw_http(server, head_only("POST", "/api/v1/servers/gpu-02/models/sync", 50_000_000))
        assert status == 403 and b"does not register new nodes" in response
        status, _ = raw_http(server, head_only("POST", "/api/v1/servers/gpu-02/heartbeat", 50_000_000))
        assert status == 403
        # a node action whose node is named in the body: the caller is no one the server knows
        status, _ = raw_http(server, head_only("POST", "/api/v1/models/1/availability", 50_000_000))
        assert status == 401
        status, _ = raw_http(server, head_only("DELETE", "/api/v1/models/1/availability", 50_000_000, "not-a-token-of-any-node"))
        assert status == 403
        assert server.get("/api/v1/servers").json()["servers"] == []


def test_admin_routes_check_the_admin_token_before_the_body(server):
    register(server, "gpu-01")
    for method, path in (("PATCH", "/api/v1/models/1"), ("POST", "/api/v1/models/reset-database"),
                         ("POST", "/api/v1/servers/gpu-01/token"), ("DELETE", "/api/v1/servers/gpu-01")):
        status, _ = raw_http(server, head_only(method, path, 50_000_000))
        assert status == 401, (method, path)


def test_a_refused_request_is_refused_whatever_its_body(server):
    """Before, an invalid body got 400 before the missing token's 401: the body was read and parsed first."""
    register(server, "gpu-01")
    for body in (b"{not json", b"[" * 100_000, gzip.compress(b"[" + b" " * 5_000_000 + b"]")):
        headers = {"Content-Encoding": "gzip"} if body[:2] == b"\x1f\x8b" else {}
        r = server.post("/api/v1/servers/gpu-01/models/sync", data=body, headers=headers)
        assert r.status_code == 401 and r.json()["field"] == "Authorization"


def test_an_admitted_request_is_still_read_within_the_limits(tmp_path):
    with run_server(tmp_path, max_request_bytes=100_000, max_decompressed_bytes=1_000_000) as server:
        token = register(server, "gpu-01")
        bearer = {"Authorization": f"Bearer {token}"}
        r = server.post("/api/v1/servers/gpu-01/models/sync", data=b" " * 200_000, headers=bearer)
        assert r.status_code == 413 and "limit is 100000" in r.json()["error"]
        bomb = gzip.compress(b"[" + b" " * 5_000_000 + b"]")
        r = server.post("/api/v1/servers/gpu-01/models/sync", data=bomb, headers={**bearer, "Content-Encoding": "gzip"})
        assert r.status_code == 413 and "decompresses to more than 1000000 bytes" in r.json()["error"]
        body = gzip.compress(json.dumps(inventory("gpu-01", "a", "b")).encode())
        r = server.post("/api/v1/servers/gpu-01/models/sync", data=body, headers={**bearer, "Content-Encoding": "gzip"})
        assert r.status_code == 200 and r.json()["added"] == 1 and r.json()["registered"] is False


def test_a_first_contact_that_may_register_gets_its_body_read_and_its_token(server):
    r = server.post("/api/v1/servers/gpu-03/heartbeat", json={"display_name": "GPU 3"})
    assert r.status_code == 200 and r.json()["registered"] is True and len(r.json()["token"]) >= 16
    r = server.post("/api/v1/servers/gpu-04/models/sync", data=b"[" * 100_000)
    assert r.status_code == 400 and r.json()["field"] == "body"
    assert [s["id"] for s in server.get("/api/v1/servers").json()["servers"]] == ["gpu-03"]  # a bad body registers nothing


def _request(chunks: list[bytes], encoding: str) -> Request:
    """A Starlette request whose body arrives in these chunks, as uvicorn hands them to the app."""
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]

    async def receive() -> dict:
        return messages.pop(0)

    headers = [(b"content-encoding", encoding.encode())] if encoding else []
    return Request({"type": "http", "method": "POST", "path": "/", "headers": headers, "query_string": b""}, receive)


@pytest.mark.parametrize("size", [40_000_000, 40_000_001])
def test_gzip_is_inflated_into_one_buffer_never_twice_the_limit(size):
    """Peak memory while reading a gzip body of (just over) the decompressed limit stays near that limit: the
    inflated pieces are not kept beside a joined copy, and the compressed bytes are not kept whole."""
    limit = 40_000_000
    compressed = gzip.compress(b"[" + b" " * (size - 2) + b"]")
    chunks = [compressed[i : i + 65536] for i in range(0, len(compressed), 65536)]
    del compressed

    async def body_length() -> int:  # the length only: asyncio.run's own handling of a huge result would count
        try:
            return len(await read_body(_request(chunks, "gzip"), 64_000_000, limit))
        except ApiError as exc:
            return exc.status

    tracemalloc.start()
    result = asyncio.run(body_length())
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert result == (size if size <= limit else 413)
    assert peak < 1.3 * limit, f"peak {peak / 1e6:.1f} MB for a limit of {limit / 1e6:.0f} MB"
