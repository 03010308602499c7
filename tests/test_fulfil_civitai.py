"""Fulfil from Civitai, end to end with real processes: a central server (`python -m modelsync.server.main`) whose
Civitai is the local stand-in (its download endpoint redirecting to a storage stand-in on another port), and a
`modelsync node` agent that has no LoRA. A job whose infotext names, in `Lora hashes`, the AutoV3 of a LoRA no node
has: dispatch-check with "fulfil": true answers retry_later with a Civitai transfer; the node downloads the file
(with the key the server shares, which the storage never sees); then ok with the node's own name for it, the file's
SHA256 Civitai's, the Civitai sidecar and preview beside it."""
from __future__ import annotations

import hashlib
import json

import model_factory
import pytest
from support_civitai import civitai_stub  # noqa: F401  (fixture)
from support_jobs import addnet_of
from support_server import server_process, wait_for
from test_node_agent import node_process, server_entry

pytestmark = pytest.mark.timeout(300)

FIXTURE = "civitai_model_version_1387174_lora_flux_lora-manager.json"
KEY = "fleet-civitai-key-91c0"


def infotext(alias: str, autov3: str) -> str:
    return (f"a storybook fox, <lora:{alias}:0.8>\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 512x512, "
            f'Lora hashes: "{alias}: {autov3}", Version: v1.10.1')


def test_a_lora_no_node_has_is_downloaded_from_civitai_by_its_autov3_and_the_job_then_runs(
        tmp_path, civitai_stub, monkeypatch):  # noqa: F811
    made = model_factory.write_lora(tmp_path / "made" / "fox.safetensors", base="sd1")
    data, autov3 = made.read_bytes(), addnet_of(made)[:12]
    version = civitai_stub.add_version(FIXTURE, data=data, file_name="storybook-fox.safetensors", autov3=autov3)
    civitai_stub.require_key = KEY  # the endpoint wants a key: the node has none but the one the server shares
    monkeypatch.delenv("CIVITAI_API_KEY", raising=False)
    monkeypatch.setenv("CIVITAI_API_BASE", civitai_stub.base_url)
    monkeypatch.setenv("CIVITAI_IMAGE_HOSTS", "127.0.0.1")
    lora_dir = tmp_path / "node" / "models" / "Lora"
    lora_dir.mkdir(parents=True)

    with server_process(tmp_path / "central", civitai_enabled=True, civitai_api_base=civitai_stub.base_url,
                        civitai_image_hosts=("127.0.0.1",), civitai_api_key=KEY, share_civitai_key=True) as central, \
            node_process(tmp_path, "gpu-b", central.base_url, f"lora={lora_dir}") as node:
        wait_for(lambda: (e := server_entry(central, "gpu-b")) and e["last_heartbeat"], timeout=60)
        job = {"job": infotext("fox", autov3), "fulfil": True}

        first = central.post("/api/v1/servers/gpu-b/dispatch-check", json=job).json()
        assert (first["ok"], first["action"]) == (False, "retry_later"), first
        (transfer,) = first["transfers"]
        assert transfer["source"]["kind"] == "civitai" and transfer["source"]["civitai"]["file_name"] == "storybook-fox.safetensors"

        def dispatched() -> dict | None:
            answer = central.post("/api/v1/servers/gpu-b/dispatch-check", json=job).json()
            return answer if answer["ok"] else None

        done = wait_for(dispatched, timeout=120)
        assert "<lora:storybook-fox:0.8>" in done["payload"]  # the infotext in the node's own name
        shown = wait_for(lambda: (t := central.get(f"/api/v1/transfers/{transfer['id']}").json())["state"] == "done" and t)
        assert shown["reason"] is None and shown["source"]["kind"] == "civitai"
        placed = lora_dir / "storybook-fox.safetensors"
        assert hashlib.sha256(placed.read_bytes()).hexdigest().upper() == version["files"][0]["hashes"]["SHA256"]
        sidecar = json.loads((lora_dir / "storybook-fox.civitai.info").read_text())
        assert sidecar["id"] == version["id"]
        assert (lora_dir / "storybook-fox.preview.jpeg").read_bytes()[:2] == b"\xff\xd8"
        assert sorted(p.name for p in lora_dir.iterdir()) == [  # nothing partial left beside them
            "storybook-fox.civitai.info", "storybook-fox.preview.jpeg", "storybook-fox.safetensors"]
        assert civitai_stub.count("/by-hash/") == 1  # every later check used the cached answer
        for text in (central.get("/api/v1/transfers").text, central.get("/dashboard/transfers").text,
                     (tmp_path / "central" / "server.log").read_text(), node.log()):
            assert KEY not in text
