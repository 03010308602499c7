"""Ids out of SQLite's range (2^63 and up, 10^23), zero, negative or not numbers are a 404 of the router on every
route that takes a registry id (it was a 500 OverflowError, or a reset connection); real ids still work."""
from __future__ import annotations

import hashlib

import pytest
from support_server import run_server

from modelsync.server.registry import MAX_ROW_ID

OUT_OF_RANGE = [str(2**63), "99999999999999999999999", str(10**23), "0", "-1", "007"]
ROUTES = [
    ("GET", "/api/v1/models/{}/info"),
    ("GET", "/api/v1/models/{}/preview"),
    ("GET", "/api/v1/models/{}/availability"),
    ("POST", "/api/v1/models/{}/availability"),
    ("DELETE", "/api/v1/models/{}/availability"),
    ("PATCH", "/api/v1/models/{}"),
    ("POST", "/api/v1/models/{}/refresh-metadata"),
    ("POST", "/api/v1/models/{}/calculate-hash"),
    ("POST", "/api/v1/files/{}/calculate-hash"),
    ("POST", "/api/v1/models/{}/civitai/reject"),
    ("GET", "/dashboard/models/{}"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with run_server(tmp_path_factory.mktemp("hostile-ids")) as running:
        files = [{"path": "/m/a.safetensors", "rel_name": "a.safetensors", "role": "lora", "size": 1,
                  "sha256": hashlib.sha256(b"a").hexdigest()}]
        r = running.post("/api/v1/servers/gpu-01/models/sync", json={"format": 1, "server_id": "gpu-01", "files": files})
        assert r.status_code == 200
        yield running


def body_for(method: str) -> dict:
    return {"name": "x"} if method == "PATCH" else {"server_id": "gpu-01"}


@pytest.mark.parametrize("method, path", ROUTES)
@pytest.mark.parametrize("model_id", OUT_OF_RANGE)
def test_an_id_out_of_range_is_a_404(server, method, path, model_id):
    r = server.request(method, path.format(model_id), json=body_for(method), headers=server.admin_headers)
    assert r.status_code == 404, r.text


@pytest.mark.parametrize("method, path", ROUTES)
def test_the_largest_id_sqlite_has_reaches_its_handler(server, method, path):
    r = server.request(method, path.format(MAX_ROW_ID), json=body_for(method), headers=server.admin_headers)
    assert r.status_code == 404 and str(MAX_ROW_ID) in r.text, r.text  # the handler's own "no model/file <id>"


def test_real_ids_still_work(server):
    model_id = server.get("/api/v1/models").json()["models"][0]["id"]
    assert server.get(f"/api/v1/models/{model_id}/info").json()["id"] == model_id
    assert server.get(f"/api/v1/models/{model_id}/availability").json()["available"] is True
    assert server.get(f"/dashboard/models/{model_id}").status_code == 200
