"""The Civitai worker in the real server against a local Civitai stand-in serving the real fixture responses."""
import hashlib
import io
import time

import pytest
from PIL import Image
from support_civitai import civitai_stub  # noqa: F401  (fixture)
from support_server import make_server, registry_row, wait_for  # noqa: F401  (fixture)

from modelsync.shared.inventory import Inventory, InventoryFile
from modelsync.shared.push_client import NodeCredentials, ServerClient

FOUND = "civitai_model_version_1387174_lora_flux_lora-manager.json"
OTHER = "civitai_model_version_1255556_lora_flux_lora-manager.json"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def enriching_server(make_server, civitai_stub):
    def make(**overrides):
        return make_server(civitai_enabled=True, civitai_api_base=civitai_stub.base_url, civitai_image_hosts=("127.0.0.1",),
                           civitai_api_key="secret-key", **overrides)

    return make


def node_files(tmp_path, *contents: str) -> tuple[Inventory, list]:
    files = []
    for content in contents:
        path = tmp_path / "Lora" / f"{content}.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode())
        files.append(InventoryFile(path=str(path), rel_name=path.name, role="lora", size=len(content), mtime_ns=1, sha256=sha(content)))
    return Inventory("n1", files=files), files


def lookup(server, sha256: str) -> dict | None:
    return registry_row(server, "civitai_lookups", sha256)


def model_info(server, sha256: str) -> dict:
    model_id = server.get("/api/v1/models", params={"text": sha256}).json()["models"][0]["id"]
    return server.get(f"/api/v1/models/{model_id}/info").json()


def test_found_fills_null_fields_stores_the_preview_and_nodes_receive_both(enriching_server, civitai_stub, tmp_path):
    server = enriching_server()
    inventory, files = node_files(tmp_path, "storybook")
    version = civitai_stub.add_version(FOUND, sha256=files[0].sha256)
    client = ServerClient(server.base_url, NodeCredentials.load(tmp_path, "n1"), retries=0)
    client.push_inventory(inventory)

    info = wait_for(lambda: (i := model_info(server, files[0].sha256))["preview_url"] and i)
    assert info["civitai_version_id"] == version["id"] and info["civitai_id"] == version["modelId"]
    assert info["civitai_model_name"] == version["model"]["name"] and info["base"] == "flux1"
    assert info["civitai_trained_words"] == version["trainedWords"]
    assert info["field_sources"]["civitai_model_name"] == "civitai_api" and info["metadata_source"] == "civitai_api"
    assert info["civitai_lookup"]["status"] == "found"
    auth = {a for _, path, a in civitai_stub.requests if "by-hash" in path}
    assert auth == {"Bearer secret-key"}

    image = server.get(info["preview_url"])
    assert image.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(image.content)).format == "JPEG"

    answer = client.push_inventory(inventory)
    enriched = answer["enriched"][files[0].sha256]
    assert enriched["metadata"]["civitai_version_id"] == version["id"]
    assert enriched["preview_url"] == info["preview_url"]
    assert client.save_previews(inventory, answer) == [str(tmp_path / "Lora" / "storybook.preview.jpeg")]
    assert (tmp_path / "Lora" / "storybook.preview.jpeg").read_bytes() == image.content


def test_existing_values_are_never_overwritten(enriching_server, civitai_stub, tmp_path):
    server = enriching_server()
    inventory, files = node_files(tmp_path, "named")
    files[0].metadata = {"name": "My own name", "base": "sdxl"}
    files[0].field_sources = {"name": "a1111", "base": "a1111"}
    civitai_stub.add_version(FOUND, sha256=files[0].sha256)
    ServerClient(server.base_url, NodeCredentials.load(tmp_path, "n1"), retries=0).push_inventory(inventory)
    info = wait_for(lambda: (i := model_info(server, files[0].sha256))["civitai_version_id"] and i)
    assert (info["name"], info["base"]) == ("My own name", "sdxl")
    assert info["metadata_source"] == "a1111"


def test_not_found_marks_none_and_is_not_asked_again(enriching_server, civitai_stub, tmp_path):
    server = enriching_server()
    inventory, files = node_files(tmp_path, "unknown")
    ServerClient(server.base_url, NodeCredentials.load(tmp_path, "n1"), retries=0).push_inventory(inventory)
    info = wait_for(lambda: (i := model_info(server, files[0].sha256))["civitai_lookup"] and i)
    assert info["civitai_lookup"]["status"] == "not_found"
    assert info["civitai_model_name"] == "none" and info["civitai_download_url"] == "none"
    assert info["civitai_version_id"] is None and info["metadata_source"] is None
    asked = civitai_stub.count("by-hash")
    time.sleep(1.5)  # several idle rounds of the worker (worker_idle_seconds = 0.5)
    assert civitai_stub.count("by-hash") == asked

    # refresh-metadata asks again; a model Civitai now knows replaces the "none" marks
    civitai_stub.add_version(FOUND, sha256=files[0].sha256)
    server.post(f"/api/v1/models/{info['id']}/refresh-metadata")
    info = wait_for(lambda: (i := model_info(server, files[0].sha256))["civitai_lookup"]["status"] == "found" and i)
    assert info["civitai_model_name"] == "Vivid Impressions Storybook Style"


def test_429_pauses_the_fleet_honours_retry_after_and_never_marks_unknown(enriching_server, civitai_stub, tmp_path):
    server = enriching_server()
    inventory, files = node_files(tmp_path, "busy")
    civitai_stub.add_version(FOUND, sha256=files[0].sha256)
    civitai_stub.fail_next(429, retry_after=5)
    ServerClient(server.base_url, NodeCredentials.load(tmp_path, "n1"), retries=0).push_inventory(inventory)
    row = wait_for(lambda: lookup(server, files[0].sha256))
    assert row["status"] == "error" and "429" in row["error"]
    assert server.get("/api/v1/health").json()["civitai_worker"]["paused_seconds"] > 0.5
    info = model_info(server, files[0].sha256)
    assert info["civitai_model_name"] is None  # not "none": a rate limit says nothing about the model
    info = wait_for(lambda: (i := model_info(server, files[0].sha256))["civitai_lookup"]["status"] == "found" and i)
    assert info["civitai_lookup"]["attempts"] == 2


def test_a_timeout_is_an_error_not_unknown(enriching_server, civitai_stub, tmp_path):
    server = enriching_server(civitai_timeout_seconds=0.3)
    inventory, files = node_files(tmp_path, "slow")
    civitai_stub.delay = 1.0
    ServerClient(server.base_url, NodeCredentials.load(tmp_path, "n1"), retries=0).push_inventory(inventory)
    row = wait_for(lambda: lookup(server, files[0].sha256))
    assert row["status"] == "error" and "Timeout" in row["error"]
    assert model_info(server, files[0].sha256)["civitai_model_name"] is None
    civitai_stub.delay = 0  # the next try answers within 0.3 s: on a loaded machine maybe only a later one
    wait_for(lambda: model_info(server, files[0].sha256)["civitai_lookup"]["status"] == "not_found", timeout=60)


def test_several_due_models_go_in_one_bulk_request(enriching_server, civitai_stub, tmp_path):
    server = enriching_server()
    inventory, files = node_files(tmp_path, "one", "two", "three")
    civitai_stub.add_version(FOUND, sha256=files[0].sha256)
    civitai_stub.add_version(OTHER, sha256=files[1].sha256)
    ServerClient(server.base_url, NodeCredentials.load(tmp_path, "n1"), retries=0).push_inventory(inventory)
    wait_for(lambda: all(lookup(server, f.sha256) for f in files))
    assert [lookup(server, f.sha256)["status"] for f in files] == ["found", "found", "not_found"]
    assert civitai_stub.count("/api/v1/model-versions/by-hash") == 1
    assert model_info(server, files[1].sha256)["civitai_version_id"] == 1255556


def test_images_from_other_hosts_are_not_fetched(make_server, civitai_stub, tmp_path):
    server = make_server(civitai_enabled=True, civitai_api_base=civitai_stub.base_url)  # default hosts: Civitai's own
    inventory, files = node_files(tmp_path, "elsewhere")
    civitai_stub.add_version(FOUND, sha256=files[0].sha256)
    ServerClient(server.base_url, NodeCredentials.load(tmp_path, "n1"), retries=0).push_inventory(inventory)
    info = wait_for(lambda: (i := model_info(server, files[0].sha256))["preview"] and i)
    assert info["preview"]["status"] == "failed" and "not an allowed image host" in info["preview"]["error"]
    assert civitai_stub.count("/images/") == 0


def test_non_image_content_is_not_stored(enriching_server, civitai_stub, tmp_path):
    server = enriching_server()
    civitai_stub.image_content_type = "text/html"
    inventory, files = node_files(tmp_path, "html")
    civitai_stub.add_version(FOUND, sha256=files[0].sha256)
    ServerClient(server.base_url, NodeCredentials.load(tmp_path, "n1"), retries=0).push_inventory(inventory)
    info = wait_for(lambda: (i := model_info(server, files[0].sha256))["preview"] and i)
    assert info["preview"]["status"] == "failed" and info["preview_url"] is None
    assert not list((server.data_path / "previews").glob("*.jpeg"))


def test_a_passing_image_failure_is_tried_again_not_marked_failed(enriching_server, civitai_stub, tmp_path):
    server = enriching_server()
    inventory, files = node_files(tmp_path, "flaky")
    civitai_stub.add_version(FOUND, sha256=files[0].sha256)
    civitai_stub.fail_next(503, retry_after=1, path="/images/")
    ServerClient(server.base_url, NodeCredentials.load(tmp_path, "n1"), retries=0).push_inventory(inventory)
    info = wait_for(lambda: (i := model_info(server, files[0].sha256))["preview_url"] and i)
    assert info["preview"]["status"] == "stored"
    assert civitai_stub.count("/images/") == 2
