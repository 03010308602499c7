"""A node downloads from Civitai, end to end: the central server (in-process, its Civitai base the stand-in) orders
a Civitai transfer, a `modelsync node` process fetches it with its own CIVITAI_API_KEY (never sent to the storage),
names it by Civitai's file name in the role folder, writes the sidecar and preview beside it, and the next scan
knows it; a terminal answer is reported failed with its reason and leaves nothing in the model folder."""
from __future__ import annotations

import hashlib
import json

import model_factory
import pytest
from support_civitai import civitai_stub  # noqa: F401  (fixture)
from support_server import make_server, wait_for  # noqa: F401  (fixture)
from test_node_agent import held_by, node_process, server_entry

pytestmark = pytest.mark.timeout(180)

FIXTURE = "civitai_model_version_1387174_lora_flux_lora-manager.json"
KEY = "node-own-k3y-0123456789abcdef"


@pytest.fixture
def fleet(tmp_path, make_server, civitai_stub, monkeypatch):
    civitai_stub.require_key = KEY
    monkeypatch.setenv("CIVITAI_API_KEY", KEY)  # the node's own key (inherited by its process)
    monkeypatch.setenv("CIVITAI_API_BASE", civitai_stub.base_url)  # the only host it goes to
    monkeypatch.setenv("CIVITAI_IMAGE_HOSTS", "127.0.0.1")
    central = make_server(civitai_enabled=True, civitai_api_base=civitai_stub.base_url, civitai_image_hosts=("127.0.0.1",))
    lora = tmp_path / "node" / "Lora"
    lora.mkdir(parents=True)
    with node_process(tmp_path, "gpu-dl", central.base_url, f"lora={lora}") as node:
        wait_for(lambda: server_entry(central, "gpu-dl"), timeout=30)
        yield central, civitai_stub, lora, node


def order(central, version_id: int) -> dict:
    answer = central.post("/api/v1/transfers", json={"server_id": "gpu-dl", "civitai_version_id": version_id},
                          headers=central.admin_headers)
    assert answer.status_code in (200, 201), answer.text
    return answer.json()


def finished(central, transfer_id: int) -> dict:
    return wait_for(lambda: (t := central.get(f"/api/v1/transfers/{transfer_id}").json())["state"] in
                    ("done", "failed") and t, timeout=60)


def test_a_civitai_download_lands_named_verified_with_sidecar_and_preview(fleet, tmp_path):
    central, stub, lora, node = fleet
    data = model_factory.write_lora(tmp_path / "made" / "x.safetensors", base="sdxl").read_bytes()
    sha256 = hashlib.sha256(data).hexdigest()
    version = stub.add_version(FIXTURE, data=data, file_name="Storybook_v2.safetensors")
    stub.script("drop", after=len(data) // 2)
    transfer = finished(central, order(central, version["id"])["id"])
    assert transfer["state"] == "done", transfer
    assert sorted(p.name for p in lora.iterdir()) == [
        "Storybook_v2.civitai.info", "Storybook_v2.preview.jpeg", "Storybook_v2.safetensors"]
    assert hashlib.sha256((lora / "Storybook_v2.safetensors").read_bytes()).hexdigest() == sha256
    assert json.loads((lora / "Storybook_v2.civitai.info").read_text())["id"] == version["id"]
    assert (lora / "Storybook_v2.preview.jpeg").read_bytes() == stub.image
    assert {auth for _, path, auth in stub.requests if "/api/download/" in path} == {f"Bearer {KEY}"}
    assert KEY not in json.dumps(transfer) and KEY not in node.log()
    wait_for(lambda: sha256 in held_by(central, "gpu-dl"), timeout=30)


@pytest.mark.parametrize("fault, reason", [("early_access", "early_access"), ("login", "auth_required"),
                                           ("not_found", "not_found")])
def test_a_terminal_answer_is_reported_once_and_leaves_nothing(fleet, tmp_path, fault, reason):
    central, stub, lora, node = fleet
    data = model_factory.write_lora(tmp_path / "made" / "y.safetensors").read_bytes()
    version = stub.add_version(FIXTURE, data=data)
    stub.script(fault)
    transfer = finished(central, order(central, version["id"])["id"])
    assert transfer["state"] == "failed" and transfer["reason"] == reason, transfer
    assert list(lora.iterdir()) == []
    assert stub.count("/api/download/") == 1  # never tried again


def test_a_5xx_from_civitai_is_reported_so_the_whole_fleet_backs_off(fleet, tmp_path):
    central, stub, lora, node = fleet
    data = model_factory.write_lora(tmp_path / "made" / "z.safetensors").read_bytes()
    version = stub.add_version(FIXTURE, data=data)
    stub.fail_next(503, retry_after=60, path="/api/download/")
    order(central, version["id"])
    paused = lambda: central.get("/api/v1/health").json()["civitai_worker"]["paused_seconds"]  # noqa: E731
    wait_for(lambda: paused() > 30, timeout=60)  # the node's civitai_retry_after reached the central server
    assert all(p.name.endswith(".part") for p in lora.iterdir())  # nothing in place while it waits
    assert stub.count("/api/download/") == 1
