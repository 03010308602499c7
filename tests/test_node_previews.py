"""A node's own preview (`<stem>.preview.jpeg`) reaches the central server once per model, shrunk and re-encoded; it
wins over Civitai's; between nodes the first one stays until its node no longer has it."""
import io
import shutil

import pytest
import requests
from PIL import Image
from support_civitai import civitai_stub  # noqa: F401  (fixture)
from support_jobs import JobNode, sha256_of
from support_server import central_server, make_server, wait_for  # noqa: F401  (fixtures)

from modelsync.shared.push_client import send_previews

FOUND = "civitai_model_version_1387174_lora_flux_lora-manager.json"


def write_preview(model, size=(1600, 900), color=(200, 30, 30)):
    Image.new("RGB", size, color).save(model.with_name(model.name.rsplit(".", 1)[0] + ".preview.jpeg"), "JPEG")


def push_with_previews(node: JobNode) -> tuple[dict, list[str]]:
    inventory = node.scan()
    answer = node.client.push_inventory(inventory)
    return answer, send_previews(node.client, inventory, answer)


def stored_preview(server, sha256: str):
    model = server.get("/api/v1/models", params={"text": sha256}).json()["models"][0]
    if not model["preview_url"]:
        return None
    response = server.get(model["preview_url"])
    return Image.open(io.BytesIO(response.content)) if response.status_code == 200 else None


def test_a_node_preview_is_sent_once_and_the_first_node_keeps_it_until_it_is_gone(tmp_path, central_server):
    one = JobNode(tmp_path, "gpu-01", base_url=central_server.base_url)
    two = JobNode(tmp_path, "gpu-02", base_url=central_server.base_url)
    lora = one.add("Lora", "hero.safetensors", base="sdxl")
    plain = one.add("Lora", "plain.safetensors", base="sd1")
    write_preview(lora, color=(200, 30, 30))
    answer, sent = push_with_previews(one)
    sha = sha256_of(lora)
    assert answer["previews_wanted"] == [sha] and len(sent) == 1
    image = stored_preview(central_server, sha)
    assert image.format == "JPEG" and max(image.size) == 1024 and image.getpixel((10, 10))[0] > 150  # shrunk, red
    assert stored_preview(central_server, sha256_of(plain)) is None
    again, _ = push_with_previews(one)
    assert again["previews_wanted"] == []  # once per model

    copy = two.copy(lora, "Lora", "hero.safetensors")
    write_preview(copy, color=(30, 30, 200))
    answer, sent = push_with_previews(two)
    assert answer["previews_wanted"] == [] and sent == []  # gpu-01's came first
    assert stored_preview(central_server, sha).getpixel((10, 10))[2] < 100

    lora.with_name("hero.preview.jpeg").unlink()
    push_with_previews(one)  # gpu-01 no longer has it: forgotten
    assert stored_preview(central_server, sha) is None
    answer, sent = push_with_previews(two)
    assert answer["previews_wanted"] == [sha] and len(sent) == 1
    assert stored_preview(central_server, sha).getpixel((10, 10))[2] > 150  # now gpu-02's, blue


def test_a_node_preview_wins_over_civitais(tmp_path, make_server, civitai_stub):
    server = make_server(civitai_enabled=True, civitai_api_base=civitai_stub.base_url, civitai_image_hosts=("127.0.0.1",))
    node = JobNode(tmp_path, "gpu-01", base_url=server.base_url)
    lora = node.add("Lora", "storybook.safetensors", base="flux1")
    civitai_stub.add_version(FOUND, sha256=sha256_of(lora))
    push_with_previews(node)
    civitai = wait_for(lambda: stored_preview(server, sha256_of(lora)))
    write_preview(lora, size=(64, 48), color=(10, 200, 10))
    answer, sent = push_with_previews(node)
    assert answer["previews_wanted"] == [sha256_of(lora)] and len(sent) == 1
    mine = stored_preview(server, sha256_of(lora))
    assert mine.size == (64, 48) and mine.size != civitai.size


@pytest.fixture
def registered(tmp_path, central_server):
    node = JobNode(tmp_path, "gpu-01", base_url=central_server.base_url)
    lora = node.add("Lora", "hero.safetensors", base="sdxl")
    write_preview(lora)
    node.client.push_inventory(node.scan())
    return node, sha256_of(lora)


def upload(server, node_id: str, sha256: str, data: bytes, token: str | None) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return server.request("PUT", f"/api/v1/servers/{node_id}/previews/{sha256}", data=data, headers=headers)


def jpeg(size=(32, 32)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size).save(buffer, "JPEG")
    return buffer.getvalue()


def test_a_preview_upload_is_refused_early_and_cheaply(registered, central_server):
    node, sha = registered
    token = node.client.credentials.token
    assert upload(central_server, "gpu-01", sha, jpeg(), None).status_code == 401
    assert upload(central_server, "gpu-01", sha, jpeg(), "x" * 40).status_code == 403
    assert upload(central_server, "gpu-09", sha, jpeg(), None).status_code == 403  # unregistered, not a sync
    assert upload(central_server, "gpu-01", "ab" * 32, jpeg(), token).status_code == 409  # no such copy there
    assert upload(central_server, "gpu-01", sha, b"not an image", token).status_code == 400
    assert upload(central_server, "gpu-01", sha, b"x" * (9 * 1024 * 1024), token).status_code == 413
    bomb = io.BytesIO()
    Image.new("1", (8000, 8000)).save(bomb, "PNG")  # 64 megapixels in a few KB
    r = upload(central_server, "gpu-01", sha, bomb.getvalue(), token)
    assert r.status_code == 400 and "pixels" in r.json()["error"]
    assert upload(central_server, "gpu-01", "not-a-hash", jpeg(), token).status_code == 404
    assert upload(central_server, "gpu-01", sha, jpeg(), token).json()["stored"] is True


def test_deleting_a_node_drops_its_preview(registered, central_server):
    node, sha = registered
    send_previews(node.client, node.scan(), {"previews_wanted": [sha]})
    assert stored_preview(central_server, sha) is not None
    assert central_server.delete("/api/v1/servers/gpu-01", headers=central_server.admin_headers).status_code == 200
    assert stored_preview(central_server, sha) is None
    shutil.rmtree(node.models)
