"""A name that means different content on different nodes (issue 10, "Name conflicts across nodes"), against the real
server and nodes that push real scans: two nodes each hold their own `sdxl_vae.safetensors`, a third holds both.
By default (MODELSYNC_NAME_CONFLICTS=per-node) a job naming it by name alone runs on a node that holds exactly one
file of that name, with a warning; with `strict` it is ambiguous everywhere, as before."""
import re

import model_factory
import pytest
from support_jobs import JobNode, sha256_of
from support_server import make_server, wait_for  # noqa: F401  (fixture)

JOB = {"prompt": "a castle", "override_settings": {"sd_model_checkpoint": "base.safetensors", "sd_vae": "sdxl_vae.safetensors"}}


class ConflictFleet:
    def __init__(self, server, tmp_path):
        self.server = server
        a, b, both = (JobNode(tmp_path, sid, base_url=server.base_url) for sid in ("gpu-a", "gpu-b", "gpu-both"))
        self.checkpoint = a.add("Stable-diffusion", "base.safetensors", model_factory.write_checkpoint, base="sdxl")
        self.vae_a = a.add("VAE", "sdxl_vae.safetensors", model_factory.write_vae)
        self.vae_b = b.add("VAE", "sdxl_vae.safetensors", model_factory.write_vae)  # same name, other content
        for node in (b, both):
            node.copy(self.checkpoint, "Stable-diffusion", "base.safetensors")
        both.copy(self.vae_a, "VAE", "sdxl_vae.safetensors")
        both.copy(self.vae_b, "VAE", "fixed/sdxl_vae.safetensors")  # both contents under one name: ambiguous there
        for node in (a, b, both):
            node.push()

    def model(self, path) -> dict:
        (model,) = self.server.get("/api/v1/models", params={"text": sha256_of(path)[:16]}).json()["models"]
        return model

    def check(self, path: str, job=JOB) -> dict:
        r = self.server.post(path, json={"job": job})
        assert r.status_code == 200, r.text
        return r.json()


@pytest.fixture
def conflict_fleet(make_server, tmp_path):  # noqa: F811
    return ConflictFleet(make_server(), tmp_path)


def short(fleet: ConflictFleet, path) -> dict:
    model = fleet.model(path)
    return {"id": model["id"], "filename": "sdxl_vae.safetensors", "sha256": sha256_of(path), "autov2": sha256_of(path)[:10]}


def test_a_dispatch_check_on_a_node_holding_one_file_of_the_name_is_ok_with_a_warning(conflict_fleet):
    fleet = conflict_fleet
    vae_a, vae_b = short(fleet, fleet.vae_a), short(fleet, fleet.vae_b)
    on_b = fleet.check("/api/v1/servers/gpu-b/dispatch-check")
    assert on_b["ok"] is True and on_b["warnings"][0]["model"] == vae_b
    assert on_b["warnings"][0]["others"] == [{**vae_a, "nodes": ["gpu-a", "gpu-both"]}]
    # what A1111 on gpu-b loads is marked used, not the other content of that name
    wait_for(lambda: fleet.model(fleet.vae_b)["last_used"])
    assert fleet.model(fleet.vae_a)["last_used"] is None

    on_a = fleet.check("/api/v1/servers/gpu-a/dispatch-check")
    assert (on_a["ok"], on_a["action"], on_a["missing"]) == (True, None, [])
    assert on_a["payload"]["override_settings"] == {"sd_model_checkpoint": "base.safetensors", "sd_vae": "sdxl_vae.safetensors"}
    (warning,) = on_a["warnings"]
    assert warning == {
        "type": "name_conflict", "kind": "vae", "reference": "sdxl_vae.safetensors", "written": "sdxl_vae.safetensors",
        "reason": f"vae 'sdxl_vae.safetensors' is model {vae_a['id']} [{vae_a['autov2']}] on gpu-a; gpu-b, gpu-both "
                  f"hold(s) model {vae_b['id']} [{vae_b['autov2']}] under that name",
        "model": vae_a, "others": [{**vae_b, "nodes": ["gpu-b", "gpu-both"]}]}
    vae = next(r for r in on_a["requirements"] if r["kind"] == "vae")
    assert (vae["status"], vae["model"]["sha256"], vae["local_name"]) == (
        "name_conflict", vae_a["sha256"], "sdxl_vae.safetensors")

    # gpu-both holds two files of that name: it cannot be told which to load
    on_both = fleet.check("/api/v1/servers/gpu-both/dispatch-check")
    assert (on_both["ok"], on_both["action"], on_both["warnings"]) == (False, "route_elsewhere", [])
    assert on_both["missing"] == [{"kind": "vae", "reference": "sdxl_vae.safetensors", "written": "sdxl_vae.safetensors",
                                   "why": "ambiguous"}]
    assert [n["server_id"] for n in on_both["nodes"]] == ["gpu-a", "gpu-b"]


def test_the_availability_check_groups_the_candidates_by_content(conflict_fleet):
    fleet = conflict_fleet
    vae_a, vae_b = short(fleet, fleet.vae_a), short(fleet, fleet.vae_b)
    answer = fleet.check("/api/v1/jobs/availability")["model_availability"]
    assert answer["available"] is True
    assert sorted(c["server_id"] for c in answer["candidates"]) == ["gpu-a", "gpu-b"]
    vae = next(r for r in answer["requirements"] if r["kind"] == "vae")
    # no single content: nothing may be copied or fetched for this reference, it stays identifiable as such
    assert (vae["status"], vae["model"], vae["nodes"]) == ("name_conflict", None, ["gpu-a", "gpu-b"])
    assert {c["sha256"]: (c["nodes"], c["loaded_by"]) for c in vae["candidates"]} == {
        vae_a["sha256"]: (["gpu-a", "gpu-both"], ["gpu-a"]), vae_b["sha256"]: (["gpu-b", "gpu-both"], ["gpu-b"])}
    loads = {s["server_id"]: [(x["kind"], x["model"]) for x in s["loads"]] for s in answer["servers"]}
    assert loads == {"gpu-a": [("vae", vae_a)], "gpu-b": [("vae", vae_b)], "gpu-both": []}
    both = next(s for s in answer["servers"] if s["server_id"] == "gpu-both")
    assert (both["has_all"], [m["why"] for m in both["missing"]]) == (False, ["ambiguous"])
    (warning,) = answer["warnings"]
    assert warning["type"] == "name_conflict" and warning["models"] == [
        {**vae_a, "nodes": ["gpu-a", "gpu-both"], "loaded_by": ["gpu-a"]},
        {**vae_b, "nodes": ["gpu-b", "gpu-both"], "loaded_by": ["gpu-b"]}]
    assert "names 2 different models on different nodes" in warning["reason"]

    # a name conflict is not a missing model: nothing is counted as wanted
    fleet.check("/api/v1/servers/gpu-both/dispatch-check")
    assert fleet.server.get("/api/v1/models/wanted", params={"missing_only": "false"}).json()["wanted"] == []

    # a hash still chooses one content for the whole fleet
    by_hash = {**JOB, "override_settings": {**JOB["override_settings"], "sd_vae": f"sdxl_vae.safetensors [{vae_b['autov2']}]"}}
    answer = fleet.check("/api/v1/jobs/availability", by_hash)["model_availability"]
    vae = next(r for r in answer["requirements"] if r["kind"] == "vae")
    assert (vae["status"], vae["model"]["sha256"], answer["warnings"]) == ("resolved", vae_b["sha256"], [])


def test_strict_keeps_a_conflicting_name_ambiguous_everywhere(make_server, tmp_path):  # noqa: F811
    fleet = ConflictFleet(make_server(name_conflicts="strict"), tmp_path)
    on_a = fleet.check("/api/v1/servers/gpu-a/dispatch-check")
    assert (on_a["ok"], on_a["action"], on_a["warnings"]) == (False, "fail", [])
    assert on_a["reason"] == "vae 'sdxl_vae.safetensors' names 2 different models; name it by SHA256 to choose"
    answer = fleet.check("/api/v1/jobs/availability")["model_availability"]
    assert (answer["available"], answer["warnings"]) == (False, [])
    assert next(r for r in answer["requirements"] if r["kind"] == "vae")["status"] == "ambiguous"


def test_the_matrix_tells_same_named_models_apart(conflict_fleet):
    fleet = conflict_fleet
    page = fleet.server.get("/dashboard/nodes", params={"type": "vae"}).text
    for path in (fleet.vae_a, fleet.vae_b):
        model_id = fleet.model(path)["id"]
        row = re.search(rf'<tr data-model-id="{model_id}">(.*?)</tr>', page, re.DOTALL).group(1)
        assert "sdxl_vae.safetensors" in row and sha256_of(path)[:10] in row
