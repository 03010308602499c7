"""A URL order, end to end: the central server (in-process) orders a URL download with its SHA256 and its folder role
(the registry does not know the model), a `modelsync node` process fetches it from a local HTTP server that serves
Range (the storage stand-in of tests/support_civitai.py, whose signed URL's query is a credential), and the file lands
under the URL's last path segment in the role folder, its SHA256 checked; a URL whose bytes do not match its SHA256
fails hash_mismatch and leaves nothing. The query string never appears in an answer, a page or a log."""
from __future__ import annotations

import hashlib
import logging
from urllib.parse import parse_qs, urlsplit

import pytest
from support_civitai import civitai_stub  # noqa: F401  (fixture)
from support_server import make_server, wait_for  # noqa: F401  (fixture)
from support_transfer import write_large_safetensors
from test_node_agent import held_by, node_process, server_entry

pytestmark = pytest.mark.timeout(180)


def finished(central, transfer_id: int) -> dict:
    return wait_for(lambda: (t := central.get(f"/api/v1/transfers/{transfer_id}").json())["state"] in
                    ("done", "failed") and t, timeout=90)


def test_a_url_download_lands_under_its_last_segment_in_the_role_folder_verified(
        tmp_path, make_server, civitai_stub, caplog):  # noqa: F811
    caplog.set_level(logging.DEBUG)
    data = write_large_safetensors(tmp_path / "made" / "ink.safetensors", 3).read_bytes()
    sha256 = hashlib.sha256(data).hexdigest()
    storage = civitai_stub.storage
    storage.objects["operator/ink-v2.safetensors"] = data
    storage.objects["operator/wrong.safetensors"] = data[::-1]
    url = storage.signed_url("operator/ink-v2.safetensors", "ink-v2.safetensors")
    wrong_url = storage.signed_url("operator/wrong.safetensors", "wrong.safetensors")
    secrets = [parse_qs(urlsplit(u).query)["X-Amz-Signature"][0] for u in (url, wrong_url)]
    central = make_server()
    lora, vae = tmp_path / "node" / "Lora", tmp_path / "node" / "VAE"
    lora.mkdir(parents=True)
    vae.mkdir(parents=True)

    with node_process(tmp_path, "gpu-url", central.base_url, f"lora={lora}", f"vae={vae}") as node:
        wait_for(lambda: server_entry(central, "gpu-url"), timeout=30)
        r = central.post("/api/v1/transfers", json={"server_id": "gpu-url", "url": url, "sha256": sha256},
                         headers=central.admin_headers)
        assert (r.status_code, r.json()["field"]) == (400, "role")  # unknown model: the order says where it goes
        ordered = central.post("/api/v1/transfers", json={"server_id": "gpu-url", "url": url, "sha256": sha256,
                                                          "role": "lora"}, headers=central.admin_headers)
        assert ordered.status_code == 201, ordered.text
        done = finished(central, ordered.json()["id"])
        assert (done["state"], done["reason"]) == ("done", None), done
        assert done["source"]["url"] == url.split("?")[0]
        placed = lora / "ink-v2.safetensors"
        assert sorted(p.name for p in lora.iterdir()) == ["ink-v2.safetensors"] and not any(vae.iterdir())
        assert hashlib.sha256(placed.read_bytes()).hexdigest() == sha256
        wait_for(lambda: sha256 in held_by(central, "gpu-url"), timeout=30)  # the node's next scan knows it

        wrong = central.post("/api/v1/transfers", json={"server_id": "gpu-url", "url": wrong_url, "sha256": "ab" * 32,
                                                        "role": "vae"}, headers=central.admin_headers)
        failed = finished(central, wrong.json()["id"])
        assert (failed["state"], failed["reason"]) == ("failed", "hash_mismatch"), failed
        assert not any(vae.iterdir())  # no partial or wrong file in the model folder

        shown = [central.get("/api/v1/transfers").text, central.get("/dashboard/transfers").text,
                 central.get(f"/api/v1/transfers/{failed['id']}").text, caplog.text, node.log()]
        assert not any(secret in text for text in shown for secret in secrets)
    assert storage.count() >= 2  # both were fetched from the Range-serving stand-in
