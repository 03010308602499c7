"""The operator's corrections over the real server: overrides (validation, survival of syncs, scans and Civitai
lookups, clearing), rejecting a Civitai match (from the API worker and from a node's sidecar), removing a stale
file with the admin token, the admin check, and the dashboard's HTTP side (CSP header, HTML errors)."""
from __future__ import annotations

import hashlib
import re

import model_factory
import pytest
from support_civitai import civitai_stub  # noqa: F401  (fixture)
from support_server import central_server, make_server, push_files, wait_for  # noqa: F401  (fixtures)
from test_server_civitai import FOUND, lookup

from modelsync.shared.catalog import SCHEMA_VERSION


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def lora(content: str, rel: str, metadata: dict | None = None, sources: dict | None = None) -> dict:
    metadata = {"type": "lora", "base": "sdxl", **(metadata or {})}
    return {"path": f"/models/Lora/{rel}", "rel_name": rel, "role": "lora", "size": 100, "sha256": sha(content),
            "type": "lora", "base": "sdxl", "metadata": metadata,
            "field_sources": {"type": "embedded", "base": "embedded", **(sources or {})}}


def patch(server, model_id: int, body, headers=None):
    return server.request("PATCH", f"/api/v1/models/{model_id}", json=body,
                          headers=server.admin_headers if headers is None else headers)


def info(server, model_id: int) -> dict:
    return server.get(f"/api/v1/models/{model_id}/info").json()


@pytest.fixture
def one_model(central_server):
    """Node n1 with one LoRA named by its A1111 JSON."""
    files = [lora("hero", "Hero.safetensors", {"name": "Hero", "trained_words": ["hero pose"]},
                  {"name": "a1111", "trained_words": "a1111"})]
    token = push_files(central_server, "n1", files)["token"]
    model_id = central_server.get("/api/v1/models").json()["models"][0]["id"]
    return central_server, model_id, files, token


@pytest.mark.parametrize("body, status, field", [
    ({"description": "x"}, 400, "description"),
    ({"type": "rocket"}, 400, "type"),
    ({"base": "sd9"}, 400, "base"),
    ({"name": "  "}, 400, "name"),
    ({"name": 7}, 400, "name"),
    ({"trained_words": "a, b"}, 400, "trained_words"),
    ({"trained_words": ["ok", ""]}, 400, "trained_words[1]"),
    ({}, 400, None),
])
def test_an_override_names_its_bad_field(one_model, body, status, field):
    server, model_id, _, _ = one_model
    r = patch(server, model_id, body)
    assert (r.status_code, r.json()["field"]) == (status, field)
    assert info(server, model_id)["overrides"] == {}


def test_overrides_need_the_admin_token(one_model):
    server, model_id, _, node_token = one_model
    assert patch(server, model_id, {"name": "x"}, headers={}).status_code == 401
    assert patch(server, model_id, {"name": "x"}, headers={"Authorization": f"Bearer {node_token}"}).status_code == 403
    assert server.post(f"/api/v1/models/{model_id}/civitai/reject").status_code == 401
    assert server.post(f"/api/v1/models/{model_id}/civitai/reject",
                       headers={"Authorization": f"Bearer {node_token}"}).status_code == 403
    assert patch(server, 424242, {"name": "x"}).status_code == 404
    assert server.get("/api/v1/admin/check").status_code == 401
    assert server.get("/api/v1/admin/check", headers={"Authorization": "Bearer nope"}).status_code == 403
    assert server.get("/api/v1/admin/check", headers=server.admin_headers).json() == {"admin": True}


def test_an_override_wins_over_every_later_sync_and_clearing_it_lets_the_sync_fill_it(one_model):
    server, model_id, _, token = one_model
    r = patch(server, model_id, {"name": "Operator name", "type": "locon", "base": "sd1",
                                 "trained_words": ["  first ", "second, with comma", "first"]})
    assert r.status_code == 200, r.text
    assert r.json()["overrides"] == {"name": "Operator name", "type": "locon", "base": "sd1",
                                     "trained_words": ["first", "second, with comma"]}
    model = info(server, model_id)
    assert (model["name"], model["type"], model["base"]) == ("Operator name", "locon", "sd1")
    assert model["trained_words"] == ["first", "second, with comma"]
    assert {model["field_sources"][f] for f in ("name", "type", "base", "trained_words")} == {"manual"}
    assert model["metadata_source"] == "manual"
    summary = server.get("/api/v1/models", params={"type": "locon"}).json()["models"][0]
    assert summary["overridden"] == ["base", "name", "trained_words", "type"]

    # the node changes the file's metadata and syncs (a new copy too): the overrides stay
    changed = [lora("hero", "Hero.safetensors", {"name": "Node says", "description": "new"}, {"name": "a1111", "description": "a1111"}),
               {**lora("hero", "copy/Hero.safetensors"), "path": "/models/Lora/copy/Hero.safetensors"}]
    assert push_files(server, "n1", changed, token)["added"] == 1
    model = info(server, model_id)
    assert (model["name"], model["type"], model["base"]) == ("Operator name", "locon", "sd1")
    assert model["description"] == "new"  # other fields still fill

    # clearing: the field empties, the next sync (even an identical re-send) fills it again
    r = patch(server, model_id, {"name": None, "type": None})
    assert r.json()["overrides"] == {"base": "sd1", "trained_words": ["first", "second, with comma"]}
    assert r.json()["model"]["name"] is None and r.json()["model"]["type"] is None
    assert push_files(server, "n1", changed, token)["unchanged"] == 0
    model = info(server, model_id)
    assert (model["name"], model["type"], model["base"]) == ("Node says", "lora", "sd1")
    assert model["field_sources"]["name"] == "a1111"


def test_an_override_survives_the_servers_own_rescan(make_server, tmp_path):
    root = tmp_path / "models"
    path = model_factory.write_lora(root / "Lora" / "own.safetensors", base="sdxl", metadata={"ss_output_name": "own_v1"})
    server = make_server(model_paths=[root])
    server.post("/api/v1/models/scan", json={"calculate_hashes": True})
    model_id = server.get("/api/v1/models").json()["models"][0]["id"]
    assert info(server, model_id)["name"] == "own_v1"
    patch(server, model_id, {"name": "Fixed", "base": "sd1"})
    path.touch()  # a changed mtime: the file is read and merged again
    second = server.post("/api/v1/models/scan", json={"calculate_hashes": True}).json()
    assert second["hashesCalculated"] == 1
    model = info(server, model_id)
    assert (model["name"], model["base"], model["field_sources"]["base"]) == ("Fixed", "sd1", "manual")


@pytest.fixture
def enriching(make_server, civitai_stub):
    server = make_server(civitai_enabled=True, civitai_api_base=civitai_stub.base_url, civitai_image_hosts=("127.0.0.1",))
    version = civitai_stub.add_version(FOUND, sha256=sha("story"))
    push_files(server, "n1", [lora("story", "Story.safetensors")])
    model_id = server.get("/api/v1/models").json()["models"][0]["id"]
    wait_for(lambda: info(server, model_id)["preview_url"])
    return server, model_id, version


def test_an_override_survives_a_civitai_lookup(enriching):
    server, model_id, version = enriching
    patch(server, model_id, {"name": "Mine", "base": "sdxl"})
    before = lookup(server, sha("story"))["attempts"]
    server.post(f"/api/v1/models/{model_id}/refresh-metadata")
    wait_for(lambda: lookup(server, sha("story"))["attempts"] > before)
    model = info(server, model_id)
    assert (model["name"], model["base"]) == ("Mine", "sdxl")
    assert model["civitai_model_name"] == version["model"]["name"]


def test_a_rejected_civitai_match_is_cleared_and_never_applied_again(enriching):
    server, model_id, version = enriching
    patch(server, model_id, {"name": "Kept"})
    r = server.post(f"/api/v1/models/{model_id}/civitai/reject", headers=server.admin_headers)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["rejected_version_id"] == version["id"]
    assert {"civitai_version_id", "civitai_id", "civitai_model_name", "trained_words"} <= set(answer["cleared"])
    model = answer["model"]
    assert model["civitai_version_id"] is None and model["civitai_model_name"] is None and model["trained_words"] is None
    assert (model["name"], model["base"], model["field_sources"]["base"]) == ("Kept", "sdxl", "embedded")
    assert model["civitai_rejected"][0]["version_id"] == version["id"]
    assert model["preview_url"] is None
    assert server.get(f"/api/v1/models/{model_id}/preview").status_code == 404
    assert lookup(server, sha("story"))["status"] == "rejected"

    # asked again, Civitai gives the same version: recorded as rejected, nothing filled
    before = lookup(server, sha("story"))["attempts"]
    server.post(f"/api/v1/models/{model_id}/refresh-metadata")
    wait_for(lambda: lookup(server, sha("story"))["attempts"] > before)
    model = info(server, model_id)
    assert model["civitai_version_id"] is None and model["civitai_model_name"] is None
    assert lookup(server, sha("story"))["status"] == "rejected"
    r = server.post(f"/api/v1/models/{model_id}/civitai/reject", headers=server.admin_headers)
    assert r.status_code == 409 and r.json()["field"] == "civitai_version_id"


def test_a_rejected_match_from_a_nodes_sidecar_is_not_taken_again(central_server):
    sidecar = {"civitai_version_id": 1387174, "civitai_id": 1231067, "civitai_model_name": "Wrong", "name": "Wrong",
               "output_name": "right_v1"}
    files = [lora("x", "X.safetensors", sidecar, {**{k: "civitai_json" for k in sidecar}, "output_name": "embedded"})]
    token = push_files(central_server, "n1", files)["token"]
    model_id = central_server.get("/api/v1/models").json()["models"][0]["id"]
    assert info(central_server, model_id)["name"] == "Wrong"
    r = central_server.post(f"/api/v1/models/{model_id}/civitai/reject", headers=central_server.admin_headers)
    assert r.json()["rejected_version_id"] == 1387174
    push_files(central_server, "n1", files, token)  # the same inventory, applied again (the digest was forgotten)
    model = info(central_server, model_id)
    assert model["name"] is None and model["civitai_model_name"] is None and model["civitai_version_id"] is None
    assert model["output_name"] == "right_v1"
    # another match (a corrected sidecar) is taken
    other = [lora("x", "X.safetensors", {**sidecar, "civitai_version_id": 99, "civitai_model_name": "Right"},
                  {k: "civitai_json" for k in sidecar})]
    push_files(central_server, "n1", other, token)
    assert info(central_server, model_id)["civitai_model_name"] == "Right"


def test_the_admin_removes_a_stale_file(one_model):
    server, model_id, _, _ = one_model
    params = {"server_id": "n1", "path": "/models/Lora/Hero.safetensors"}
    assert server.delete(f"/api/v1/models/{model_id}/availability", params=params,
                         headers={"Authorization": "Bearer wrong-token-wrong-token"}).status_code == 403
    r = server.delete(f"/api/v1/models/{model_id}/availability", params=params, headers=server.admin_headers)
    assert r.json()["removed"] == 1
    assert server.get(f"/api/v1/models/{model_id}/availability").json()["servers"] == []


def test_dashboard_pages_send_the_csp_and_answer_errors_in_html(one_model):
    server, model_id, _, _ = one_model
    for path in ("/dashboard/models", f"/dashboard/models/{model_id}", "/dashboard/nodes", "/dashboard/jobs",
                 "/dashboard/overrides", "/dashboard/static/common.js", "/api/v1/models"):
        r = server.get(path)
        assert r.status_code == 200, path
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "default-src 'self'" in csp and "unsafe-inline" not in csp
        assert r.headers["x-content-type-options"] == "nosniff"
    assert "<script>" not in server.get("/dashboard/models").text.replace('<script src="', "")
    assert server.get("/", allow_redirects=False).headers["location"] == "/dashboard/models"
    missing = server.get("/dashboard/models/424242")
    assert missing.status_code == 404 and "no model with id 424242" in missing.text
    assert missing.headers["content-type"].startswith("text/html")
    assert server.get("/dashboard/models", params={"sort": "evil"}).status_code == 400
    assert server.get("/dashboard/nodes", params={"type": "rocket"}).status_code == 400
    assert server.get("/dashboard/nodes", params={"page": "0"}).status_code == 400
    assert server.get("/dashboard/nodes", params={"page": "9" * 30}).status_code == 400


def test_pages_escape_what_nodes_send_without_a_browser(central_server):
    evil = "<script>alert('x')</script><b>bold</b>"
    push_files(central_server, "n-evil", [lora("evil", "evil.safetensors", {"name": evil}, {"name": "a1111"})])
    model_id = next(m["id"] for m in central_server.get("/api/v1/models").json()["models"] if m["name"] == evil)
    for path in ("/dashboard/models", f"/dashboard/models/{model_id}", "/dashboard/nodes?type=lora"):
        page = central_server.get(path).text
        assert "&lt;script&gt;alert(" in page and "<b>bold</b>" not in page and "<script>alert(" not in page, path


def test_the_matrix_pages_through_more_models_than_one_page(make_server):
    server = make_server()
    files = [lora(f"matrix-{i}", f"matrix/{i:03d}.safetensors", {"name": f"matrix {i:03d}"}, {"name": "a1111"})
             for i in range(60)]
    push_files(server, "n-matrix", files)
    pages = [sorted(set(re.findall(r"matrix \d{3}", server.get("/dashboard/nodes", params={"type": "lora", "page": page}).text)))
             for page in (1, 2)]
    assert [len(p) for p in pages] == [50, 10] and pages[0] + pages[1] == [f"matrix {i:03d}" for i in range(60)]


def test_openapi_describes_the_new_endpoints_and_the_schema_is_current(central_server):
    spec = central_server.get("/api/v1/openapi.json").json()
    assert "patch" in spec["paths"]["/api/v1/models/{id}"]
    assert "post" in spec["paths"]["/api/v1/models/{id}/civitai/reject"]
    assert "/api/v1/admin/check" in spec["paths"]
    assert not any(path.startswith("/dashboard") for path in spec["paths"])
    assert central_server.get("/api/v1/health").json()["schema_version"] == SCHEMA_VERSION
