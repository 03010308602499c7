"""Transfers from Civitai and from URLs over the real API: a real server (uvicorn) whose Civitai is the local stand-in
(tests/support_civitai.py), nodes pushing real scans. Ordering by Civitai version (the primary file, or the one
named), the registered model, the orders the destination receives (Civitai's endpoint, the version JSON, the key only
when shared), a file without SHA256 refused, URL orders (the SHA256 required, the query never shown), "auto" falling
back to Civitai, the fleet's back-off from a node's civitai_retry_after, terminal download reasons never handed out
again until retried, and fulfil by hash (the file whose AutoV3 matched), cached and never guessing."""
from __future__ import annotations

import hashlib
import json
import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

import model_factory
import pytest
from modelsync.server.civitai_worker import CivitaiWorker
from modelsync.server.config import ServerConfig
from modelsync.server.registry import Registry, utc_now
from modelsync.server.transfers.civitai_calls import CivitaiCalls
from modelsync.server.transfers.downloads import DownloadSettings
from modelsync.server.transfers.orders import orders_for
from modelsync.shared.civitai.client import CivitaiClient
from support_civitai import CivitaiStub, civitai_stub  # noqa: F401  (fixture)
from support_jobs import addnet_of
from support_server import RunningServer, make_server, wait_for  # noqa: F401  (fixture)
from test_transfer_api import Fleet

FIXTURE = "civitai_model_version_1387174_lora_flux_lora-manager.json"
KEY = "civitai-secret-key-5f1e"


def lora_bytes(tmp_path: Path, name: str, base: str = "sdxl") -> tuple[bytes, str]:
    """A real LoRA's bytes and its AutoV3 as A1111 writes it in `Lora hashes` (12 hex)."""
    path = model_factory.write_lora(tmp_path / name, base=base)
    return path.read_bytes(), addnet_of(path)[:12]


class DownloadFleet(Fleet):
    def __init__(self, server: RunningServer, base: Path, stub: CivitaiStub):
        super().__init__(server, base)
        self.stub = stub

    def version(self, data: bytes, **kwargs: Any) -> dict[str, Any]:
        return self.stub.add_version(FIXTURE, data=data, **kwargs)

    def created(self, body: dict[str, Any], status: int = 201) -> dict[str, Any]:
        r = self.order(body)
        assert r.status_code == status, r.text
        return r.json()

    def only_order(self, node: str = "b") -> dict[str, Any]:
        r = getattr(self, node).orders()
        assert r.status_code == 200, r.text
        (order,) = r.json()["orders"]
        return order


def civitai_server(make_server, stub: CivitaiStub, **overrides: Any) -> RunningServer:  # noqa: F811
    return make_server(civitai_enabled=True, civitai_api_base=stub.base_url, **overrides)


@pytest.fixture
def fleet(make_server, civitai_stub, tmp_path):  # noqa: F811
    return DownloadFleet(civitai_server(make_server, civitai_stub, civitai_api_key=KEY), tmp_path, civitai_stub)


def test_an_order_by_civitai_version_registers_the_model_and_hands_the_node_civitais_endpoint(fleet, tmp_path):
    data, _ = lora_bytes(tmp_path, "storybook.safetensors")
    version = fleet.version(data, file_name="pp-storybook_rank2_bf16.safetensors")
    sha256 = hashlib.sha256(data).hexdigest()
    transfer = fleet.created({"server_id": "node-b", "civitai_version_id": version["id"]})
    primary = version["files"][0]
    assert (transfer["sha256"], transfer["state"], transfer["size"]) == (sha256, "queued", None)
    assert transfer["source"] == {"kind": "civitai", "server_id": None, "url": None, "civitai": {
        "model_id": version["modelId"], "model_name": "Vivid Impressions Storybook Style", "version_id": version["id"],
        "version_name": "v1.0", "file_id": primary["id"], "file_name": "pp-storybook_rank2_bf16.safetensors"}}
    model = fleet.server.get(f"/api/v1/models/{transfer['model_id']}/info").json()
    assert model["hash_sha256"] == sha256 and model["civitai_version_id"] == version["id"]
    assert fleet.created({"server_id": "node-b", "civitai_version_id": version["id"]}, 200)["id"] == transfer["id"]

    order = fleet.only_order()
    assert (order["rel_name"], order["role"], order["size"]) == ("pp-storybook_rank2_bf16.safetensors", "lora", None)
    (source,) = order["sources"]
    assert source["download_url"] == fleet.stub.download_url(version["id"], primary["id"])
    assert source["version"]["files"][0]["hashes"]["SHA256"] == sha256.upper() and "api_key" not in source
    assert (source["kind"], source["version_id"], source["file_id"]) == ("civitai", version["id"], primary["id"])


def test_a_named_file_is_the_one_ordered_and_a_file_without_sha256_is_refused(fleet, tmp_path):
    data, _ = lora_bytes(tmp_path, "a.safetensors")
    other, _ = lora_bytes(tmp_path, "b.safetensors", base="sd1")
    version = fleet.version(data)
    second = fleet.stub.add_file(version["id"], "second.safetensors", data=other)
    unhashed = fleet.stub.add_file(version["id"], "nohash.safetensors", data=b"x" * 100, hashes={})
    transfer = fleet.created({"server_id": "node-b", "civitai_version_id": version["id"], "file_id": second["id"]})
    assert transfer["sha256"] == hashlib.sha256(other).hexdigest()
    assert transfer["source"]["civitai"]["file_name"] == "second.safetensors"

    before = fleet.transfers()["total"]
    r = fleet.order({"server_id": "node-a", "civitai_version_id": version["id"], "file_id": unhashed["id"]})
    assert (r.status_code, r.json()["field"]) == (422, "file_id") and "no_hash" in r.json()["error"]
    assert fleet.transfers()["total"] == before
    r = fleet.order({"server_id": "node-a", "civitai_version_id": version["id"], "file_id": 4242})
    assert (r.status_code, r.json()["field"]) == (404, "file_id")
    r = fleet.order({"server_id": "node-a", "civitai_version_id": 777777})
    assert (r.status_code, r.json()["field"]) == (404, "civitai_version_id")
    r = fleet.order({"server_id": "node-a", "file_id": second["id"], "sha256": transfer["sha256"]})
    assert (r.status_code, r.json()["field"]) == (400, "file_id")


def test_a_url_order_needs_its_sha256_and_its_query_is_never_shown(fleet, caplog):
    caplog.set_level(logging.DEBUG)
    sha256 = "ab" * 32
    url = "https://files.example.org/models/ink%20v2.safetensors?token=hunter2-secret&x=1"
    for body, field in (({"server_id": "node-b", "url": url}, "sha256"),
                        ({"server_id": "node-b", "url": "ftp://files.example.org/a.safetensors", "sha256": sha256}, "url"),
                        ({"server_id": "node-b", "url": "https://user:pw@example.org/a.safetensors", "sha256": sha256}, "url"),
                        ({"server_id": "node-b", "url": url, "sha256": sha256, "source": "peer"}, "url"),
                        ({"server_id": "node-b", "url": url, "sha256": "xyz"}, "sha256"),
                        ({"server_id": "node-b", "url": "http://h/..", "sha256": sha256, "role": "lora"}, "url"),
                        ({"server_id": "node-b", "url": "http://h/dir/", "sha256": sha256, "role": "lora"}, "url"),
                        ({"server_id": "node-b", "url": url, "sha256": sha256}, "role"),  # unknown model: say where
                        ({"server_id": "node-b", "url": url, "sha256": sha256, "role": "Lora"}, "role"),
                        ({"server_id": "node-b", "sha256": sha256, "role": "lora"}, "role")):
        r = fleet.order(body)
        assert (r.status_code, r.json()["field"]) == (400, field), body
    transfer = fleet.created({"server_id": "node-b", "url": url, "sha256": sha256.upper(), "role": "lora"})
    assert transfer["source"] == {"kind": "url", "server_id": None, "civitai": None,
                                  "url": "https://files.example.org/models/ink%20v2.safetensors"}
    assert transfer["sha256"] == sha256 and transfer["model_id"] is None
    order = fleet.only_order()
    assert order["sources"] == [{"kind": "url", "url": url}] and order["rel_name"] == "ink v2.safetensors"
    assert order["role"] == "lora"
    shown = [fleet.server.get(f"/api/v1/transfers/{transfer['id']}").text, fleet.server.get("/api/v1/transfers").text,
             fleet.server.get("/dashboard/transfers").text, json.dumps(transfer)]
    assert not any("hunter2" in text for text in shown)
    assert "hunter2" not in caplog.text


def test_the_key_goes_only_to_the_destination_node_and_only_when_shared(make_server, civitai_stub, tmp_path, caplog):  # noqa: F811
    caplog.set_level(logging.DEBUG)
    data, _ = lora_bytes(tmp_path, "k.safetensors")
    for share in (False, True):
        fleet = DownloadFleet(civitai_server(make_server, civitai_stub, civitai_api_key=KEY, share_civitai_key=share),
                              tmp_path / str(share), civitai_stub)
        version = fleet.version(data)
        transfer = fleet.created({"server_id": "node-b", "civitai_version_id": version["id"]})
        (source,) = fleet.only_order()["sources"]
        assert source.get("api_key") == (KEY if share else None)
        assert fleet.a.orders().json() == {"orders": []}  # another node's orders: not this one's, nor the key
        r = fleet.server.get("/api/v1/servers/node-b/transfers/orders", headers=fleet.server.admin_headers)
        assert r.status_code == 403 and KEY not in r.text
        failed = fleet.b.report(transfer["id"], "failed", bytes_done=0, reason="auth_required",
                                error=f"401 from https://civitai.com/api/download/models/1?token={KEY}")
        assert failed.json()["error"] == "401 from https://civitai.com/api/download/models/1?token=[CIVITAI_API_KEY]"
        shown = [fleet.server.get(f"/api/v1/transfers/{transfer['id']}").text, fleet.server.get("/api/v1/transfers").text,
                 fleet.server.get("/dashboard/transfers").text, fleet.server.get("/api/v1/health").text]
        assert not any(KEY in text for text in shown)
    assert KEY not in caplog.text


def test_auto_prefers_a_peer_and_falls_back_to_civitai_when_no_node_holds_the_model(fleet, tmp_path):
    data, _ = lora_bytes(tmp_path, "auto.safetensors")
    version = fleet.version(data)
    sha256 = hashlib.sha256(data).hexdigest()
    first = fleet.created({"server_id": "node-b", "civitai_version_id": version["id"]})  # registers the model
    fallback = fleet.created({"server_id": "node-a", "sha256": sha256})
    assert fallback["source"]["kind"] == "civitai" and fallback["source"]["civitai"] == first["source"]["civitai"]
    r = fleet.order({"server_id": "node-a", "sha256": sha256, "source": "peer"})
    assert r.status_code == 200 and r.json()["id"] == fallback["id"]  # it stands already
    peer = fleet.order_lora()  # node-a holds this one: auto is a peer
    assert peer["source"]["kind"] == "peer"
    r = fleet.order({"server_id": "node-b", "sha256": fleet.a.job.scan().files[0].sha256, "source": "civitai"})
    assert r.status_code == 409  # the registry knows no Civitai version of it


def test_terminal_download_reasons_are_never_handed_out_again_until_retried(fleet, tmp_path):
    for reason in ("auth_required", "early_access", "not_found", "no_hash", "url_refused"):
        data, _ = lora_bytes(tmp_path, f"{reason}.safetensors")
        version = fleet.version(data)
        transfer = fleet.created({"server_id": "node-b", "civitai_version_id": version["id"]})
        assert [o["transfer_id"] for o in fleet.b.orders().json()["orders"]] == [transfer["id"]]
        failed = fleet.b.report(transfer["id"], "failed", bytes_done=0, reason=reason).json()
        assert (failed["state"], failed["reason"]) == ("failed", reason)
        assert fleet.b.orders().json() == {"orders": []}
        assert fleet.created({"server_id": "node-b", "civitai_version_id": version["id"]}, 200)["state"] == "failed"
        r = fleet.server.post(f"/api/v1/transfers/{transfer['id']}/retry", headers=fleet.server.admin_headers)
        assert r.status_code == 200 and r.json()["state"] == "queued"
        assert [o["transfer_id"] for o in fleet.b.orders().json()["orders"]] == [transfer["id"]]
        fleet.server.delete(f"/api/v1/transfers/{transfer['id']}", headers=fleet.server.admin_headers)


def test_a_rate_limited_download_waits_out_the_fleets_back_off(fleet, tmp_path):
    data, _ = lora_bytes(tmp_path, "busy.safetensors")
    version = fleet.version(data)
    transfer = fleet.created({"server_id": "node-b", "civitai_version_id": version["id"]})
    assert fleet.b.report(transfer["id"], "running", bytes_done=0).json()["state"] == "running"
    r = fleet.b.report(transfer["id"], "failed", bytes_done=0, reason="rate_limited", civitai_retry_after=600)
    assert r.status_code == 200 and (r.json()["state"], r.json()["reason"]) == ("queued", "rate_limited")
    assert fleet.b.orders().json() == {"orders": []}  # no Civitai order while the fleet backs off
    health = fleet.server.get("/api/v1/health").json()
    assert health["civitai_worker"]["paused_seconds"] > 500
    url = fleet.created({"server_id": "node-b", "url": "http://127.0.0.1:9/x.safetensors", "sha256": "cd" * 32,
                         "role": "vae"})
    assert [o["transfer_id"] for o in fleet.b.orders().json()["orders"]] == [url["id"]]  # other sources go on
    r = fleet.order({"server_id": "node-a", "civitai_version_id": version["id"] + 1})
    assert r.status_code == 503 and r.headers["Retry-After"]  # Civitai is not asked meanwhile
    bad = fleet.b.report(transfer["id"], "failed", bytes_done=0, reason="rate_limited", civitai_retry_after=-1)
    assert (bad.status_code, bad.json()["field"]) == (400, "civitai_retry_after")


def test_a_download_failing_before_its_first_report_backs_off_and_fails_after_five_attempts(fleet):
    transfer = fleet.created({"server_id": "node-b", "url": "http://127.0.0.1:9/gone.safetensors", "sha256": "ef" * 32,
                              "role": "vae"})
    registry = Registry(fleet.server.config.database_path, fleet.server.config.backups_path)
    registry.open()
    settings = DownloadSettings(fleet.server.config.civitai_api_base)

    def handed_out(after_seconds: float) -> bool:
        orders = orders_for(registry.db(), "node-b", ["node-b"], utc_now() + timedelta(seconds=after_seconds),
                            downloads=settings)
        return [o.transfer_id for o in orders] == [transfer["id"]]

    try:
        assert [o["transfer_id"] for o in fleet.b.orders().json()["orders"]] == [transfer["id"]]
        for attempt in range(1, 5):  # the host cannot be reached: each failure comes before any running report
            failed = fleet.b.report(transfer["id"], "failed", bytes_done=0, reason="source_gone").json()
            assert (failed["state"], failed["reason"]) == ("queued", "source_gone")
            assert fleet.b.orders().json() == {"orders": []}  # not handed out again at once
            back_off = 30 * 2 ** (attempt - 1)  # 30 s, doubling
            assert not handed_out(back_off - 5) and handed_out(back_off + 5)
        last = fleet.b.report(transfer["id"], "failed", bytes_done=0, reason="source_gone").json()
        assert (last["state"], last["reason"]) == ("failed", "source_gone")  # the fifth attempt was the last
        assert not handed_out(3600)
    finally:
        registry.close()


def test_huge_numbers_in_a_progress_report_are_refused(fleet):
    transfer = fleet.created({"server_id": "node-b", "url": "http://127.0.0.1:9/n.safetensors", "sha256": "ab" * 32,
                              "role": "lora"})
    for field in ("speed_bps", "eta_seconds", "civitai_retry_after"):
        r = fleet.b.report(transfer["id"], "running", bytes_done=0, **{field: 10**400})
        assert (r.status_code, r.json()["field"]) == (400, field)
    assert fleet.b.report(transfer["id"], "running", bytes_done=0, speed_bps=1.5e6, eta_seconds=12).status_code == 200


def test_a_malformed_order_is_refused_before_civitai_is_asked(fleet, tmp_path):
    data, _ = lora_bytes(tmp_path, "m.safetensors")
    version = fleet.version(data)
    for body, status, field in (({"server_id": "node b", "civitai_version_id": version["id"]}, 400, "server_id"),
                                ({"civitai_version_id": version["id"]}, 400, "server_id"),
                                ({"server_id": "node-z", "civitai_version_id": version["id"]}, 404, "server_id"),
                                ({"server_id": "node-b", "civitai_version_id": version["id"], "file_id": 0}, 400, "file_id"),
                                ({"server_id": "node-b", "civitai_version_id": version["id"], "file_id": "1"}, 400, "file_id"),
                                ({"server_id": "node-b", "civitai_version_id": -1}, 400, "civitai_version_id"),
                                ({"server_id": "node-b", "civitai_version_id": version["id"], "role": "lora"}, 400, "role")):
        r = fleet.order(body)
        assert (r.status_code, r.json()["field"]) == (status, field), body
    assert fleet.stub.count(f"/api/v1/model-versions/{version['id']}") == 0


def test_a_civitai_5xx_pauses_the_fleet_one_second_doubling(civitai_stub, tmp_path):  # noqa: F811
    config = ServerConfig(data_path=tmp_path, civitai_api_base=civitai_stub.base_url, civitai_requests_per_minute=6000)
    calls = CivitaiCalls(CivitaiWorker(None, config, None, CivitaiClient(civitai_stub.base_url)))  # type: ignore[arg-type]
    for pause in (1.0, 2.0):
        wait_for(lambda: calls.paused_seconds() == 0)
        civitai_stub.fail_next(502, path="/api/v1/model-versions/")
        assert calls.version(1387174).status == "unavailable"
        assert pause - 0.5 < calls.paused_seconds() <= pause  # no Retry-After: 1 s, then 2 s
    wait_for(lambda: calls.paused_seconds() == 0)
    version = civitai_stub.add_version(FIXTURE, sha256="12" * 32)
    assert calls.version(version["id"]).status == "found" and civitai_stub.count("/api/v1/model-versions/") == 3


def test_a_civitai_turn_too_far_off_is_busy_not_a_held_thread(make_server, civitai_stub, tmp_path):  # noqa: F811
    fleet = DownloadFleet(civitai_server(make_server, civitai_stub, civitai_requests_per_minute=0.5), tmp_path,
                          civitai_stub)  # one Civitai request every 120 s
    data, autov3 = lora_bytes(tmp_path, "slow.safetensors", base="sd1")
    version = fleet.version(data, autov3=autov3)
    answers = [fleet.order({"server_id": "node-b", "civitai_version_id": version["id"]}) for _ in range(2)]
    busy = answers[-1]  # the first may have had the turn; the second's is ~120 s away
    assert busy.status_code == 503 and int(busy.headers["Retry-After"]) > 60, busy.text
    assert civitai_stub.count(f"/api/v1/model-versions/{version['id']}") <= 1
    answer = dispatch(fleet, infotext("slow", autov3), fulfil=True)
    assert answer["action"] == "fail" and not answer.get("transfers")  # it stays unknown for now
    assert [w["type"] for w in answer["warnings"]] == ["civitai_busy"]
    assert civitai_stub.count(f"/by-hash/{autov3.upper()}") == 0


# --- fulfil from Civitai -----------------------------------------------------------------------------------------
def infotext(alias: str, autov3: str) -> str:
    return (f"a lighthouse at dusk, <lora:{alias}:0.8>\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, "
            f'Size: 512x512, Lora hashes: "{alias}: {autov3}", Version: v1.10.1')


def dispatch(fleet: DownloadFleet, job: str, node: str = "node-b", **body: Any) -> dict[str, Any]:
    r = fleet.server.post(f"/api/v1/servers/{node}/dispatch-check", json={"job": job, **body})
    assert r.status_code == 200, r.text
    return r.json()


def test_fulfil_downloads_the_file_whose_autov3_matched_once_and_asks_civitai_once(fleet, tmp_path):
    primary, _ = lora_bytes(tmp_path, "primary.safetensors")
    wanted, autov3 = lora_bytes(tmp_path, "wanted.safetensors", base="sd1")
    version = fleet.version(primary)
    file = fleet.stub.add_file(version["id"], "wanted-lora.safetensors", data=wanted,
                               hashes={"SHA256": hashlib.sha256(wanted).hexdigest().upper(), "AutoV3": autov3.upper()})
    job = infotext("wanted", autov3)
    assert "transfers" not in dispatch(fleet, job)  # without fulfil: nothing ordered, Civitai not asked
    assert fleet.stub.count("/by-hash/") == 0
    answer = dispatch(fleet, job, fulfil=True)
    assert (answer["ok"], answer["action"]) == (False, "retry_later")
    (transfer,) = answer["transfers"]
    assert transfer["sha256"] == hashlib.sha256(wanted).hexdigest() and transfer["source"]["kind"] == "civitai"
    assert transfer["source"]["civitai"]["file_id"] == file["id"] and "from civitai" in answer["reason"]
    again = dispatch(fleet, job, fulfil=True)
    assert [t["id"] for t in again["transfers"]] == [transfer["id"]]
    assert fleet.stub.count(f"/by-hash/{autov3.upper()}") == 1  # the answer is cached per hash
    order = fleet.only_order()
    assert order["rel_name"] == "wanted-lora.safetensors" and order["sources"][0]["file_id"] == file["id"]


def test_fulfil_by_an_autov2_downloads_the_file_whose_autov2_matched(fleet, tmp_path):
    primary, _ = lora_bytes(tmp_path, "primary2.safetensors")
    wanted, _ = lora_bytes(tmp_path, "wanted2.safetensors", base="sd1")
    sha256 = hashlib.sha256(wanted).hexdigest()
    version = fleet.version(primary)
    file = fleet.stub.add_file(version["id"], "wanted-v2.safetensors", data=wanted,
                               hashes={"SHA256": sha256.upper(), "AutoV2": sha256[:10].upper()})
    answer = dispatch(fleet, infotext("wanted2", sha256[:10]), fulfil=True)
    assert (answer["ok"], answer["action"]) == (False, "retry_later"), answer
    (transfer,) = answer["transfers"]
    assert transfer["sha256"] == sha256 and transfer["source"]["civitai"]["file_id"] == file["id"]
    assert fleet.stub.count(f"/by-hash/{sha256[:10].upper()}") == 1
    assert fleet.only_order()["rel_name"] == "wanted-v2.safetensors"


def test_fulfil_never_guesses_a_sha256_prefix_or_a_name_and_warns_when_civitai_fails(fleet, tmp_path):
    data, _ = lora_bytes(tmp_path, "x.safetensors")
    sha256 = hashlib.sha256(data).hexdigest()
    fleet.version(data)
    prefix = dispatch(fleet, infotext("x", sha256[:12]), fulfil=True)  # a SHA256 prefix: no key at Civitai
    assert prefix["action"] == "fail" and not prefix.get("transfers")
    assert fleet.stub.count(f"/by-hash/{sha256[:12].upper()}") == 1
    by_name = dispatch(fleet, {"prompt": "<lora:nobody-has-this:1>", "steps": 1}, fulfil=True)
    assert by_name["action"] == "fail" and not by_name.get("transfers")
    assert fleet.stub.count("/by-hash/") == 1  # a name alone is never looked up
    fleet.stub.fail_next(500, path="/by-hash/")
    failed = dispatch(fleet, infotext("y", "0123456789ab"), fulfil=True)
    assert failed["action"] == "fail" and not failed.get("transfers")
    assert [w["type"] for w in failed["warnings"]] == ["civitai_lookup_failed"]
