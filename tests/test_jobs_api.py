"""The job checks over HTTP: the real server (uvicorn), nodes that push inventories from real scans of real files
(one Linux node with sub-folders, one Windows node, one that went silent), and real job bodies."""
import json

import model_factory
import pytest
from support_jobs import INFOTEXT_1_9_4, JobNode, addnet_of, set_last_contact, sha256_of
from support_server import make_server, wait_for  # noqa: F401  (fixture)

from modelsync.shared.catalog import open_catalog
from modelsync.shared.jobs.requirements import MAX_JOB_DEPTH

class ApiFleet:
    def __init__(self, server, tmp_path):
        self.server = server
        self.tmp = tmp_path
        self.linux = self.node("gpu-linux")
        self.windows = self.node("gpu-win", windows=True)
        self.old = self.node("gpu-old")
        lx, win = self.linux, self.windows
        self.checkpoint = lx.add("Stable-diffusion", "sdxl/juggernautXL_v9.safetensors", model_factory.write_checkpoint, base="sdxl")
        self.hero = lx.add("Lora", "chars/hero.safetensors", base="sdxl", metadata={"ss_output_name": "hero_v1"})
        self.ink = lx.add("Lora", "styles/ink.safetensors", base="sdxl")
        self.detail = lx.add("Lora", "detail_tweaker.safetensors", base="sdxl")
        self.vae = lx.add("VAE", "sdxl_vae.safetensors", model_factory.write_vae)
        self.embedding = lx.add("embeddings", "easynegative.safetensors", model_factory.write_embedding, base="sdxl")
        win.copy(self.checkpoint, "Stable-diffusion", "XL/juggernautXL_v9.safetensors")
        win.copy(self.hero, "Lora", "sub/hero_renamed.safetensors")
        win.copy(self.ink, "Lora", "ink.safetensors")
        win.copy(self.vae, "VAE", "sdxl_vae.safetensors")
        win.copy(self.embedding, "embeddings", "easynegative.safetensors")
        self.pony = self.old.add("Stable-diffusion", "pony/ponyDiffusionV6XL.safetensors", model_factory.write_checkpoint, base="sdxl")
        for node in (lx, win, self.old):
            node.push()
        set_last_contact(server.db_path, "gpu-old", "2020-01-01T00:00:00Z")

    def node(self, server_id: str, windows: bool = False) -> JobNode:
        return JobNode(self.tmp, server_id, windows=windows, base_url=self.server.base_url)

    def availability(self, job, fmt="auto"):
        r = self.server.post("/api/v1/jobs/availability", json={"job": job, "format": fmt})
        assert r.status_code == 200, r.text
        return r.json()["model_availability"]

    def dispatch(self, server_id, job, fmt="auto"):
        r = self.server.post(f"/api/v1/servers/{server_id}/dispatch-check", json={"job": job, "format": fmt})
        assert r.status_code == 200, r.text
        return r.json()

    def model_id(self, path) -> int:
        r = self.server.get("/api/v1/models", params={"text": sha256_of(path)[:16]})
        (model,) = r.json()["models"]
        return model["id"]


@pytest.fixture
def fleet(make_server, tmp_path):  # noqa: F811
    return ApiFleet(make_server(), tmp_path)


@pytest.fixture
def strict_fleet(make_server, tmp_path):  # noqa: F811
    """MODELSYNC_NAME_CONFLICTS=strict: a name that means different content on different nodes is ambiguous."""
    return ApiFleet(make_server(name_conflicts="strict"), tmp_path)


def txt2img(fleet: ApiFleet, lora_line: str = "<lora:hero_v1:0.8> <lora:ink:0.4>") -> dict:
    autov2 = sha256_of(fleet.checkpoint)[:10]
    return {
        "prompt": f"a knight in the rain, {lora_line}", "negative_prompt": "easynegative, lowres",
        "steps": 24, "cfg_scale": 6.5, "width": 832, "height": 1216, "sampler_name": "DPM++ 2M", "scheduler": "Karras",
        "override_settings": {"sd_model_checkpoint": f"sdxl/juggernautXL_v9.safetensors [{autov2}]", "sd_vae": "sdxl_vae.safetensors"},
        "override_settings_restore_afterwards": True,
    }


def test_all_present_on_every_node_and_the_payload_in_each_nodes_names(fleet):
    job = txt2img(fleet)
    answer = fleet.availability(job)
    assert answer["available"] is True
    assert [c["server_id"] for c in answer["candidates"]] == ["gpu-linux", "gpu-win"]  # gpu-linux needs no renaming
    assert {r["reference"]: r["status"] for r in answer["requirements"]} == {
        f"sdxl/juggernautXL_v9.safetensors [{sha256_of(fleet.checkpoint)[:10]}]": "resolved", "sdxl_vae.safetensors": "resolved",
        "hero_v1": "resolved", "ink": "resolved", "easynegative": "resolved"}
    assert {s["server_id"]: (s["online"], s["has_all"]) for s in answer["servers"]} == {
        "gpu-linux": (True, True), "gpu-win": (True, True), "gpu-old": (False, False)}

    win = fleet.dispatch("gpu-win", job)
    assert (win["ok"], win["action"], win["missing"]) == (True, None, [])
    assert win["payload"] == {**job, "prompt": "a knight in the rain, <lora:hero_renamed:0.8> <lora:ink:0.4>",
                              "override_settings": {"sd_model_checkpoint": "XL\\juggernautXL_v9.safetensors",
                                                    "sd_vae": "sdxl_vae.safetensors"}}
    checkpoint = next(r for r in win["requirements"] if r["kind"] == "checkpoint")
    assert checkpoint["title"] == f"XL\\juggernautXL_v9.safetensors [{sha256_of(fleet.checkpoint)[:10]}]"
    assert checkpoint["model"]["sha256"] == sha256_of(fleet.checkpoint)
    linux = fleet.dispatch("gpu-linux", job)
    # the stem, which A1111 always knows, rather than the ss_output_name alias another LoRA may shadow
    assert linux["ok"] and linux["payload"]["prompt"] == "a knight in the rain, <lora:hero:0.8> <lora:ink:0.4>"
    assert linux["payload"]["override_settings"]["sd_model_checkpoint"] == "sdxl/juggernautXL_v9.safetensors"

    # the approved dispatch recorded last_used for every model of the job
    ids = [fleet.model_id(p) for p in (fleet.checkpoint, fleet.hero, fleet.ink, fleet.vae, fleet.embedding)]
    used = lambda: all(fleet.server.get(f"/api/v1/models/{i}/info").json()["last_used"] for i in ids)  # noqa: E731
    wait_for(used)
    assert fleet.server.get(f"/api/v1/models/{fleet.model_id(fleet.detail)}/info").json()["last_used"] is None


def test_one_lora_missing_on_one_node(fleet):
    job = txt2img(fleet, "<lora:hero_v1:0.8> <lora:detail_tweaker:0.5>")
    answer = fleet.availability(job)
    assert answer["available"] is True and [c["server_id"] for c in answer["candidates"]] == ["gpu-linux"]
    win = next(s for s in answer["servers"] if s["server_id"] == "gpu-win")
    assert (win["has_all"], win["missing"]) == (False, [
        {"kind": "lora", "reference": "detail_tweaker", "written": "<lora:detail_tweaker:0.5>", "why": "not_on_node"}])
    routed = fleet.dispatch("gpu-win", job)
    assert (routed["ok"], routed["action"], routed["payload"]) == (False, "route_elsewhere", None)
    assert [n["server_id"] for n in routed["nodes"]] == ["gpu-linux"]
    assert [m["reference"] for m in routed["missing"]] == ["detail_tweaker"]


def test_checkpoint_only_on_an_offline_node(fleet):
    job = {"prompt": "score_9, a fox", "override_settings": {"sd_model_checkpoint": "pony/ponyDiffusionV6XL.safetensors"}}
    answer = fleet.availability(job)
    assert (answer["available"], answer["reason"]) == (False, "only offline nodes have every model: gpu-old")
    assert answer["candidates"] == []
    checkpoint = answer["requirements"][0]
    assert (checkpoint["status"], checkpoint["nodes"]) == ("resolved", ["gpu-old"])
    on_linux = fleet.dispatch("gpu-linux", job)
    assert (on_linux["ok"], on_linux["action"], [n["server_id"] for n in on_linux["nodes"]]) == (False, "retry_later", ["gpu-old"])
    on_old = fleet.dispatch("gpu-old", job)
    assert (on_old["ok"], on_old["online"], on_old["action"]) == (False, False, "retry_later")
    assert on_old["reason"] == "gpu-old is offline (last heard from 2020-01-01T00:00:00Z)" and on_old["missing"] == []

    with_lora = {**job, "prompt": "score_9, a fox <lora:hero_v1:1>"}
    answer = fleet.availability(with_lora)
    assert answer["reason"] == "checkpoint 'pony/ponyDiffusionV6XL.safetensors' is only on offline nodes: gpu-old"
    assert fleet.dispatch("gpu-linux", with_lora)["action"] == "fail"  # even with gpu-old back no node has both


def test_ambiguous_names_list_their_candidates_and_a_hash_decides(strict_fleet):
    fleet = strict_fleet
    other = fleet.node("gpu-other")
    other_ink = other.add("Lora", "ink.safetensors", base="sdxl")  # same name, different content
    other.push()
    answer = fleet.availability({"prompt": "<lora:ink:0.4>"})
    assert answer["available"] is False and answer["candidates"] == []
    (ink,) = answer["requirements"]
    assert ink["status"] == "ambiguous" and ink["model"] is None
    assert {c["sha256"]: sorted(c["nodes"]) for c in ink["candidates"]} == {
        sha256_of(fleet.ink): ["gpu-linux", "gpu-win"], sha256_of(other_ink): ["gpu-other"]}
    failed = fleet.dispatch("gpu-linux", {"prompt": "<lora:ink:0.4>"})
    assert (failed["ok"], failed["action"], failed["payload"]) == (False, "fail", None)
    assert failed["reason"] == "lora 'ink' names 2 different models; name it by SHA256 to choose"

    infotext = (INFOTEXT_1_9_4.replace("<lora:LCM_15:1>, <lora:ip-adapter-faceid-plusv2_sd15_lora:1>", "<lora:ink:1>")
                .replace('Lora hashes: "LCM_15: aaebf6360f7d, ip-adapter-faceid-plusv2_sd15_lora: a95a0f4bdcb9", ',
                         f'Lora hashes: "ink: {addnet_of(other_ink)[:12]}", '))
    answer = fleet.availability(infotext)
    ink = next(r for r in answer["requirements"] if r["kind"] == "lora")
    assert (ink["status"], ink["match_type"], ink["nodes"]) == ("resolved", "autov3", ["gpu-other"])


def test_unknown_hash_fails_and_is_wanted(fleet):
    unknown = "5a" * 32
    items = [{"type": "lora", "sha256": unknown}, {"type": "checkpoint", "name": "sdxl/juggernautXL_v9.safetensors"}]
    look = fleet.server.post("/api/v1/jobs/availability", json={"job": items, "record": False}).json()  # not counted
    assert look["model_availability"]["available"] is False
    answer = fleet.availability(items, "requirements")
    assert answer["available"] is False and "no model with" in answer["reason"]
    assert [r["status"] for r in answer["requirements"]] == ["unknown", "resolved"]
    failed = fleet.dispatch("gpu-linux", items)
    assert (failed["ok"], failed["action"]) == (False, "fail")
    stablequeue = {"target_server_alias": "gpu-linux", "generation_params": {
        "positive_prompt": "a lighthouse", "negative_prompt": "blurry", "checkpoint_name": "realismEngineSDXL_v30VAE.safetensors",
        "model_hash": "abc123def456", "width": 1024, "height": 1024, "steps": 20, "cfg_scale": 7, "sampler_name": "Euler a"}}
    assert fleet.dispatch("gpu-linux", stablequeue)["action"] == "fail"

    def wanted():
        rows = fleet.server.get("/api/v1/models/wanted").json()["wanted"]
        return rows if len(rows) == 2 and rows[0]["requests"] == 2 else None

    rows = wait_for(wanted)
    assert [(r["kind"], r["reference_key"], r["requests"]) for r in rows] == [
        ("lora", f"sha256:{unknown}", 2), ("checkpoint", "any:abc123def456", 1)]
    assert fleet.server.get("/api/v1/models/wanted", params={"kind": "checkpoint"}).json()["wanted"][0]["reference"] == \
        "realismEngineSDXL_v30VAE.safetensors"


@pytest.mark.parametrize("body, field", [
    ({"job": {"override_settings": ["sd_model_checkpoint"]}}, "job.override_settings"),
    ({"job": {"prompt": "<lora:hero:1>", "alwayson_scripts": {"controlnet": {"args": [{"model": 3}]}}}},
     "job.alwayson_scripts.controlnet.args[0].model"),
    ({"job": [{"type": "lora", "autov2": "xyz"}]}, "job[0].autov2"),
    ({"job": "a cat\nSteps: 20, Sampler: Euler, Seed: 1, Lora hashes: \"broken\""}, "job:Lora hashes"),
    ({"job": {"prompt": "x"}, "format": "comfy"}, "format"),
    ({"format": "a1111"}, "job"),
    ({"job": {"prompt": "x"}, "record": "no"}, "record"),
    ([], "body"),
])
def test_malformed_jobs_get_a_400_naming_the_field(fleet, body, field):
    for path in ("/api/v1/jobs/availability", "/api/v1/servers/gpu-linux/dispatch-check"):
        r = fleet.server.post(path, json=body)
        assert r.status_code == 400 and r.json()["field"] == field, (path, r.text)
        assert r.json()["error"]


def test_not_json_and_unknown_nodes(fleet):
    r = fleet.server.post("/api/v1/jobs/availability", data=b"{nope", headers={"Content-Type": "application/json"})
    assert (r.status_code, r.json()["field"]) == (400, "body")
    r = fleet.server.post("/api/v1/servers/gpu-nope/dispatch-check", json={"job": {"prompt": "x"}})
    assert (r.status_code, r.json()["field"]) == (404, "server_id")
    r = fleet.server.post("/api/v1/servers/bad id!/dispatch-check", json={"job": {"prompt": "x"}})
    assert (r.status_code, r.json()["field"]) == (400, "server_id")
    for params, field in (({"kind": "rocket"}, "kind"), ({"limit": "0"}, "limit"), ({"missing_only": "maybe"}, "missing_only")):
        r = fleet.server.get("/api/v1/models/wanted", params=params)
        assert (r.status_code, r.json()["field"]) == (400, field)
    assert fleet.server.get("/api/v1/models/wanted", params={"kind": "lycoris"}).status_code == 200  # a synonym of lora


def test_infotext_and_stablequeue_jobs_are_rewritten_for_the_node(fleet):
    checkpoint_sha, hero_addnet = sha256_of(fleet.checkpoint), addnet_of(fleet.hero)
    infotext = (INFOTEXT_1_9_4.replace("<lora:LCM_15:1>, <lora:ip-adapter-faceid-plusv2_sd15_lora:1>", "<lora:hero:0.9>")
                .replace("MajicNegative_V2,badhandv4,", "easynegative,")
                .replace("Model hash: 19bbe9faa4, Model: fantasticmix_k2", f"Model hash: {checkpoint_sha[:10]}, Model: juggernautXL_v9")
                .replace("VAE hash: 07af11b95c, VAE: vae-ft-mse-840000-ema-pruned.safetensors",
                         f"VAE hash: {sha256_of(fleet.vae)[:10]}, VAE: sdxl_vae.safetensors")
                .replace('Lora hashes: "LCM_15: aaebf6360f7d, ip-adapter-faceid-plusv2_sd15_lora: a95a0f4bdcb9"',
                         f'Lora hashes: "hero: {hero_addnet[:12]}"')
                .replace('TI hashes: "MajicNegative_V2: a53884ef726b, badhandv4: 5e40d722fc3d"',
                         f'TI hashes: "easynegative: {sha256_of(fleet.embedding)[:12]}"'))
    answer = fleet.availability(infotext)
    assert answer["available"] is True and {r["kind"] for r in answer["requirements"]} == {"checkpoint", "vae", "lora", "embedding"}
    win = fleet.dispatch("gpu-win", infotext)
    assert win["ok"] is True
    assert win["payload"] == infotext.replace("<lora:hero:0.9>", "<lora:hero_renamed:0.9>").replace(
        f'Lora hashes: "hero: {hero_addnet[:12]}"', f'Lora hashes: "hero_renamed: {hero_addnet[:12]}"')
    assert win["override_settings"] == {"sd_model_checkpoint": "XL\\juggernautXL_v9.safetensors", "sd_vae": "sdxl_vae.safetensors"}

    body = {"infotext": infotext, "width": 1024}
    win = fleet.dispatch("gpu-win", body)
    assert win["payload"]["override_settings"] == {"sd_model_checkpoint": "XL\\juggernautXL_v9.safetensors"}

    stablequeue = {"target_server_alias": "gpu-win", "generation_params": {
        "positive_prompt": "a knight, <lora:hero_v1:0.7>", "negative_prompt": "easynegative",
        "checkpoint_name": "sdxl/juggernautXL_v9.safetensors", "model_hash": checkpoint_sha[:10], "width": 1024, "height": 1024,
        "steps": 20, "cfg_scale": 7, "sampler_name": "Euler a", "seed": -1}}
    win = fleet.dispatch("gpu-win", stablequeue)
    assert win["ok"] is True and win["payload"]["target_server_alias"] == "gpu-win"
    assert win["payload"]["generation_params"] == {**stablequeue["generation_params"],
                                                   "checkpoint_name": "XL\\juggernautXL_v9.safetensors",
                                                   "positive_prompt": "a knight, <lora:hero_renamed:0.7>"}


def test_a_model_on_its_way_means_retry_later(fleet):
    fleet.windows.add("Lora", "detail_tweaker.safetensors")  # a different file of that name, not hashed yet
    fleet.windows.push(calculate_hashes=False)
    job = {"prompt": "<lora:detail_tweaker:0.5>"}
    on_win = fleet.dispatch("gpu-win", job)
    assert (on_win["ok"], on_win["action"]) == (False, "retry_later") and "on its way" in on_win["reason"]
    assert on_win["missing"][0]["why"] == "pending"
    assert [n["server_id"] for n in on_win["nodes"]] == ["gpu-linux"]
    fresh = {"prompt": "<lora:brand_new:1>"}
    fleet.linux.add("Lora", "brand_new.safetensors")
    fleet.linux.push(calculate_hashes=False)
    assert fleet.dispatch("gpu-win", fresh)["action"] == "retry_later"
    fleet.linux.push()
    assert fleet.dispatch("gpu-linux", fresh)["ok"] is True


def test_checkpoint_verify_by_civitai_version_and_by_hash(fleet):
    lora = fleet.linux.add("Lora", "flux/detailer.safetensors", base="flux1")
    version = fleet.linux.civitai_sidecar(lora)
    fleet.linux.push()
    r = fleet.server.post("/api/v1/checkpoint-verify", json={"civitai_version_id": version["id"], "type": "lora"})
    answer = r.json()
    assert (answer["available"], answer["interpreted_as"], answer["match_type"]) == (True, "civitai_version_id", "civitai_version_id")
    assert answer["model_info"]["hash_sha256"] == sha256_of(lora) and answer["model_info"]["civitai_version_id"] == version["id"]
    assert [(s["server_id"], s["local_name"]) for s in answer["servers"]] == [("gpu-linux", "detailer")]

    # the seed's usage: a hash in civitai_version_id (a value of digits only is a version id there)
    checkpoint, n = fleet.checkpoint, 0
    while sha256_of(checkpoint)[:10].isdigit():
        n += 1
        checkpoint = fleet.linux.add("Stable-diffusion", f"extra_{n}.safetensors", model_factory.write_checkpoint, base="sdxl")
    fleet.linux.push()
    autov2 = sha256_of(checkpoint)[:10].upper()
    answer = fleet.server.post("/api/v1/checkpoint-verify", json={"civitai_version_id": autov2}).json()
    assert (answer["available"], answer["interpreted_as"], answer["match_type"]) == (True, "hash", "autov2")
    assert answer["model_info"]["hash_autov2"] == autov2.lower()
    digits = fleet.server.post("/api/v1/checkpoint-verify", json={"civitai_version_id": "9999999999"}).json()
    assert (digits["interpreted_as"], digits["status"], digits["available"]) == ("civitai_version_id", "unknown", False)
    pony = fleet.server.post("/api/v1/checkpoint-verify", json={"hash": sha256_of(fleet.pony)}).json()
    assert (pony["available"], pony["match_type"]) == (False, "sha256") and "offline" in pony["reason"]
    unknown = fleet.server.post("/api/v1/checkpoint-verify", json={"hash": "0123456789"}).json()
    assert (unknown["available"], unknown["model_info"], unknown["status"]) == (False, None, "unknown")
    for body, field in (({}, "civitai_version_id"), ({"hash": "xyz"}, "hash"), ({"hash": "ab", "type": "sampler"}, "type")):
        r = fleet.server.post("/api/v1/checkpoint-verify", json=body)
        assert (r.status_code, r.json()["field"]) == (400, field)


def test_the_routes_are_described_in_openapi(fleet):
    paths = fleet.server.get("/api/v1/openapi.json").json()["paths"]
    assert {"/api/v1/jobs/availability", "/api/v1/servers/{server_id}/dispatch-check", "/api/v1/checkpoint-verify",
            "/api/v1/models/wanted"} <= set(paths)
    json.dumps(paths)
    assert open_catalog(fleet.server.db_path).execute("SELECT COUNT(*) FROM wanted_models").fetchone()[0] == 0


def test_a_job_given_as_json_text_is_read_as_json_or_refused(fleet):
    # issue 10: pasted JSON with its closing brace missing was read as an infotext naming no model ("can run")
    broken = '{"prompt": "x", "steps": "many"'
    for path in ("/api/v1/jobs/availability", "/api/v1/servers/gpu-linux/dispatch-check"):
        r = fleet.server.post(path, json={"job": broken})
        assert (r.status_code, r.json()["field"]) == (400, "job"), r.text
        assert r.json()["error"].startswith("is not valid JSON: Expecting ',' delimiter at line 1 column 32")
    # ... and JSON text naming a checkpoint no node has was "available" (an infotext naming nothing)
    text = json.dumps({"prompt": "x", "override_settings": {"sd_model_checkpoint": "nonexistent_model"}})
    r = fleet.server.post("/api/v1/jobs/availability", json={"job": text})
    assert (r.status_code, r.json()["format"]) == (200, "a1111")
    answer = r.json()["model_availability"]
    assert answer["available"] is False
    assert [(q["reference"], q["status"]) for q in answer["requirements"]] == [("nonexistent_model", "unknown")]
    r = fleet.server.post("/api/v1/jobs/availability",
                          json={"job": '{"prompt": ..., "sd_model_checkpoint": "nonexistent_model"}'})
    assert (r.status_code, r.json()["field"]) == (400, "job")  # the reproduction, as written
    # JSON text is rewritten for the node like the JSON itself
    win = fleet.dispatch("gpu-win", json.dumps({"prompt": "<lora:hero_v1:0.8>"}))
    assert win["ok"] is True and win["payload"] == {"prompt": "<lora:hero_renamed:0.8>"}
    items = fleet.availability(' [{"type": "lora", "name": "ink"}]')
    assert [q["status"] for q in items["requirements"]] == ["resolved"]

    # a prompt may start with [ or {: with its parameter line it is an infotext; format infotext always is one
    infotext = "[knight], <lora:hero_v1:0.8> {rain}\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x512"
    r = fleet.server.post("/api/v1/jobs/availability", json={"job": infotext})
    assert r.json()["format"] == "infotext"
    assert [q["reference"] for q in r.json()["model_availability"]["requirements"]] == ["hero_v1"]
    r = fleet.server.post("/api/v1/jobs/availability", json={"job": "{a castle} <lora:ink:1>", "format": "infotext"})
    assert r.json()["format"] == "infotext" and r.json()["model_availability"]["available"] is True


def test_deeply_nested_json_text_is_a_400(fleet):
    for text in ("[" * 100_000, "[" * 100_000 + "]" * 100_000, '{"a": ' * 50_000 + "1" + "}" * 50_000):
        for path in ("/api/v1/jobs/availability", "/api/v1/servers/gpu-linux/dispatch-check"):
            r = fleet.server.post(path, json={"job": text})
            assert (r.status_code, r.json()["field"]) == (400, "job"), (path, r.text[:200])
            assert r.json()["error"].startswith("is JSON nested too deeply to read")
    # nesting that Python reads but could not write back in the answer (the dispatch payload echoes the job), as
    # JSON text or as the body's own JSON: refused when it goes past MAX_JOB_DEPTH
    for depth in (MAX_JOB_DEPTH + 1, 900, 970):
        nested = "[" * depth + "]" * depth
        text = '{"prompt": "<lora:ink:1>", "extra": ' + nested + "}"
        body = '{"job": {"prompt": "<lora:ink:1>", "extra": ' + nested + "}}"
        for path in ("/api/v1/jobs/availability", "/api/v1/servers/gpu-linux/dispatch-check"):
            r = fleet.server.post(path, json={"job": text})
            assert (r.status_code, r.json()["field"]) == (400, "job"), (depth, path, r.text[:200])
            assert r.json()["error"] == f"nests arrays or objects more than {MAX_JOB_DEPTH} deep" or \
                r.json()["error"].startswith("is JSON nested too deeply")
            r = fleet.server.post(path, data=body, headers={"Content-Type": "application/json"})
            assert r.status_code == 400, (depth, path, r.text[:200])  # past what the body reader takes: "body"
            assert r.json()["field"] == "body" or r.json() == {
                "error": f"nests arrays or objects more than {MAX_JOB_DEPTH} deep", "field": "job"}
    shallow = "[" * (MAX_JOB_DEPTH - 1) + "]" * (MAX_JOB_DEPTH - 1)
    assert fleet.dispatch("gpu-linux", '{"prompt": "<lora:ink:1>", "extra": ' + shallow + "}")["ok"] is True
    assert fleet.server.get("/api/v1/health").status_code == 200


QUEUE_TOKEN = "queue-token-for-tests-0123456789"
JOB_CHECKS = (
    ("POST", "/api/v1/jobs/availability", {"job": {"prompt": "<lora:ink:1>"}}),
    ("POST", "/api/v1/servers/gpu-linux/dispatch-check", {"job": {"prompt": "<lora:ink:1>"}}),
    ("POST", "/api/v1/checkpoint-verify", {"hash": "0123456789"}),
    ("GET", "/api/v1/models/wanted", None),
)


@pytest.fixture
def queue_server(make_server, tmp_path):  # noqa: F811
    server = make_server(queue_token=QUEUE_TOKEN, max_request_bytes=4096)
    node = JobNode(tmp_path, "gpu-linux", base_url=server.base_url)
    node.add("Lora", "ink.safetensors")
    node.push()  # a node's sync needs its own token, not the queue token
    return server


def test_with_a_queue_token_the_job_checks_need_it_or_the_admin_token(queue_server):
    server = queue_server
    for method, path, body in JOB_CHECKS:
        r = server.request(method, path, json=body)
        assert (r.status_code, r.json()["field"]) == (401, "Authorization"), (path, r.text)
        assert "queue token" in r.json()["error"] and r.headers["WWW-Authenticate"] == "Bearer"
        for header in ("Bearer not-the-token", f"Bearer {QUEUE_TOKEN}x", f"Basic {QUEUE_TOKEN}"):
            r = server.request(method, path, json=body, headers={"Authorization": header})
            assert r.status_code == (401 if header.startswith("Basic") else 403), (path, header, r.text)
        for token in (QUEUE_TOKEN, server.admin_token):
            r = server.request(method, path, json=body, headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 200, (path, r.text)
    ok = server.post("/api/v1/servers/gpu-linux/dispatch-check", json={"job": {"prompt": "<lora:ink:1>"}},
                     headers={"Authorization": f"Bearer {QUEUE_TOKEN}"}).json()
    assert ok["ok"] is True and ok["payload"] == {"prompt": "<lora:ink:1>"}


def test_the_queue_token_is_checked_before_the_body_is_read(queue_server):
    server = queue_server
    wrong = {"Authorization": "Bearer not-the-token"}
    for path in ("/api/v1/jobs/availability", "/api/v1/servers/gpu-linux/dispatch-check", "/api/v1/checkpoint-verify"):
        # a body the server would refuse (not JSON; over the 4 KiB limit; a node that does not exist) is not looked at
        r = server.post(path, data=b"{nope", headers={"Content-Type": "application/json"})
        assert r.status_code == 401, r.text
        r = server.post(path, data=b"[" * 100_000, headers={"Content-Type": "application/json", **wrong})
        assert r.status_code == 403, r.text
    r = server.post("/api/v1/servers/gpu-nope/dispatch-check", json={"job": {}}, headers=wrong)
    assert r.status_code == 403
    # with the token the same bodies get their own answers
    good = {"Authorization": f"Bearer {QUEUE_TOKEN}"}
    r = server.post("/api/v1/jobs/availability", data=b"{nope", headers={"Content-Type": "application/json", **good})
    assert (r.status_code, r.json()["field"]) == (400, "body")
    r = server.post("/api/v1/jobs/availability", data=b"[" * 100_000, headers={"Content-Type": "application/json", **good})
    assert r.status_code == 413
