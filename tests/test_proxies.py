"""Who the client is behind a reverse proxy: X-Forwarded-For is believed only from MODELSYNC_TRUSTED_PROXIES (none
by default; uvicorn's own trust of 127.0.0.1 is off), a trusted proxy that names no client is not loopback, and
loopback registration, scanning and hashing judge the real client. Real requests from real loopback addresses:
127.0.0.2 plays the proxy, 127.0.0.1 a client on the server's host."""
from __future__ import annotations

import http.client
import json

import pytest
from support_server import RunningServer, server_process, run_server

from modelsync.server.app import create_app
from modelsync.server.config import ConfigError, ServerConfig

PROXY = "127.0.0.2"
REMOTE = "203.0.113.9"


def post_from(server: RunningServer, source: str, path: str, forwarded_for: str | None = None,
              token: str | None = None) -> tuple[int, dict]:
    host, port = server.base_url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30, source_address=(source, 0))
    headers = {"Content-Type": "application/json"}
    if forwarded_for is not None:
        headers["X-Forwarded-For"] = forwarded_for
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    try:
        conn.request("POST", path, body=b"{}", headers=headers)
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        conn.close()


def test_a_forged_forwarded_for_from_loopback_is_not_believed_by_the_server_as_served(tmp_path):
    """`python -m modelsync.server.main` (what `modelsync serve` runs): before, uvicorn believed X-Forwarded-For from
    127.0.0.1, so a local client was "remote" (and behind a local proxy, every remote client was "loopback")."""
    with server_process(tmp_path) as server:
        status, answer = post_from(server, "127.0.0.1", "/api/v1/servers/n1/heartbeat", forwarded_for=REMOTE)
        assert status == 200 and answer["registered"] is True


def test_without_trusted_proxies_the_peer_is_the_client(tmp_path):
    with run_server(tmp_path) as server:
        status, answer = post_from(server, "127.0.0.1", "/api/v1/servers/n1/heartbeat", forwarded_for=REMOTE)
        assert status == 200 and answer["registered"] is True
        status, answer = post_from(server, PROXY, "/api/v1/models/scan", forwarded_for=REMOTE)
        assert status == 409 and answer["field"] == "MODEL_PATH"  # loopback may scan; this server has no MODEL_PATH


@pytest.fixture
def behind_proxy(tmp_path):
    with run_server(tmp_path, trusted_proxies=("10.0.0.0/8", PROXY)) as server:
        yield server


def test_through_a_trusted_proxy_registration_judges_the_forwarded_client(behind_proxy):
    status, answer = post_from(behind_proxy, PROXY, "/api/v1/servers/n1/heartbeat", forwarded_for=REMOTE)
    assert status == 403 and REMOTE in answer["error"]
    # the client wrote its own X-Forwarded-For: 127.0.0.1; the proxy appended the address it really came from
    status, answer = post_from(behind_proxy, PROXY, "/api/v1/servers/n1/heartbeat", forwarded_for=f"127.0.0.1, {REMOTE}")
    assert status == 403 and REMOTE in answer["error"]
    # a proxy that names no client: not loopback
    status, answer = post_from(behind_proxy, PROXY, "/api/v1/servers/n1/heartbeat")
    assert status == 403 and "does not name" in answer["error"]
    # a client on the proxy's host, through a chain of trusted proxies
    status, answer = post_from(behind_proxy, PROXY, "/api/v1/servers/n1/heartbeat", forwarded_for="127.0.0.1, 10.1.2.3")
    assert status == 200 and answer["registered"] is True
    # the proxy's own header is not believed from anyone else
    status, answer = post_from(behind_proxy, "127.0.0.1", "/api/v1/servers/n2/heartbeat", forwarded_for=REMOTE)
    assert status == 200 and answer["registered"] is True


@pytest.mark.parametrize("path", ["/api/v1/models/scan", "/api/v1/models/1/calculate-hash", "/api/v1/files/1/calculate-hash"])
def test_scanning_and_hashing_need_the_admin_token_unless_the_real_client_is_loopback(behind_proxy, path):
    status, answer = post_from(behind_proxy, PROXY, path, forwarded_for=REMOTE)
    assert status == 401 and answer["field"] == "Authorization"
    status, answer = post_from(behind_proxy, PROXY, path, forwarded_for=REMOTE, token="not-the-admin-token-at-all")
    assert status == 403
    admin_status, _ = post_from(behind_proxy, PROXY, path, forwarded_for=REMOTE, token=behind_proxy.admin_token)
    loopback_status, _ = post_from(behind_proxy, PROXY, path, forwarded_for="127.0.0.1")
    assert admin_status == loopback_status and admin_status in (404, 409)  # let in: no such model / no MODEL_PATH


def test_a_malformed_trusted_proxy_stops_the_server_at_start_up(tmp_path):
    with pytest.raises(ConfigError, match="not-an-address"):
        create_app(ServerConfig(data_path=tmp_path, trusted_proxies=("127.0.0.1", "not-an-address")))
