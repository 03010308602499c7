"""A JSON string with a lone UTF-16 surrogate ("\\ud800": valid JSON escapes, but no UTF-8 text) is a 400 naming the
body on every JSON route (it was a 500: UnicodeEncodeError when the string was written to the registry or a log),
and nothing it carried is kept; a valid surrogate pair (an emoji) is taken as the character it spells."""
from __future__ import annotations

import json

import pytest
from support_server import run_server


@pytest.fixture(scope="module")
def server_and_token(tmp_path_factory):
    """The server, and the token of its registered node gpu-01."""
    with run_server(tmp_path_factory.mktemp("hostile-surrogates")) as running:
        yield running, running.post("/api/v1/servers/gpu-01/heartbeat").json()["token"]


def escaped(body: dict) -> bytes:
    """The body as JSON with "<LONE>" written as the escape \\ud800 (json.dumps would write the character itself)."""
    return json.dumps(body).replace("<LONE>", "\\ud800").encode()


CASES = {
    "webhook-url": ("/api/v1/webhooks", "admin", {"url": "http://127.0.0.1:9/<LONE>", "events": ["*"]}),
    "webhook-description": ("/api/v1/webhooks", "admin",
                            {"url": "http://127.0.0.1:9/hook", "events": ["*"], "description": "x<LONE>"}),
    "heartbeat-loaded-title": ("/api/v1/servers/gpu-01/heartbeat", "node",
                               {"state": {"loaded": {"title": "model<LONE>.safetensors", "sha256": None}}}),
    "heartbeat-module": ("/api/v1/servers/gpu-01/heartbeat", "node", {"state": {"modules": ["vae<LONE>.safetensors"]}}),
    "heartbeat-display-name": ("/api/v1/servers/gpu-01/heartbeat", "node", {"display_name": "GPU <LONE>"}),
    "job-prompt": ("/api/v1/jobs/availability", "none", {"job": {"prompt": "a cat <lora:x<LONE>:1>"}}),
    "job-key": ("/api/v1/jobs/availability", "none", {"job": {"prompt": "a cat"}, "<LONE>": 1}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_lone_surrogate_is_a_400_naming_the_body(server_and_token, case):
    server, token = server_and_token
    path, who, body = CASES[case]
    headers = {"admin": server.admin_headers, "node": {"Authorization": f"Bearer {token}"}, "none": {}}[who]
    r = server.post(path, data=escaped(body), headers={**headers, "Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.json()["field"] == "body" and "surrogate" in r.json()["error"]
    node = {s["id"]: s for s in server.get("/api/v1/servers").json()["servers"]}["gpu-01"]
    assert node["display_name"] != "GPU \ud800"
    assert not server.get("/api/v1/webhooks", headers=server.admin_headers).json()["webhooks"]


def test_a_surrogate_written_as_utf8_bytes_is_refused_too(server_and_token):
    server, token = server_and_token
    body = b'{"display_name": "GPU \xed\xa0\x80"}'  # U+D800 encoded as if it were a character
    r = server.post("/api/v1/servers/gpu-01/heartbeat", data=body,
                    headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.json()["field"] == "body"


def test_a_valid_surrogate_pair_is_the_character_it_spells(server_and_token):
    server, token = server_and_token
    body = b'{"display_name": "GPU \\ud83d\\ude80"}'
    r = server.post("/api/v1/servers/gpu-01/heartbeat", data=body,
                    headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    node = {s["id"]: s for s in server.get("/api/v1/servers").json()["servers"]}["gpu-01"]
    assert node["display_name"] == "GPU \U0001F680"
