"""A model's preview written by two parties at once, over the real server: the Civitai worker caught mid-download (its
image host holds the answer until the test releases it) while an operator rejects the match, or while the node sends
its own preview; and two nodes sending the same model's preview together. The file and the `model_previews` row
always agree, and the one that must win does."""
from __future__ import annotations

import io
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Iterator

import pytest
from PIL import Image
from support_civitai import civitai_stub  # noqa: F401  (fixture)
from support_jobs import JobNode, sha256_of
from support_server import make_server, registry_row, wait_for  # noqa: F401  (fixtures)
from test_node_previews import FOUND, push_with_previews, write_preview

HELD_SIZE = (40, 30)  # Civitai's image, unlike any node's below


class HeldImage:
    """A Civitai image host whose one image is answered only once `release` is set; `asked` says the worker waits."""

    def __init__(self) -> None:
        self.asked = threading.Event()
        self.release = threading.Event()
        buffer = io.BytesIO()
        Image.new("RGB", HELD_SIZE, (250, 0, 0)).save(buffer, "JPEG")
        image = buffer.getvalue()
        held = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                held.asked.set()
                held.release.wait(60)
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(image)))
                self.end_headers()
                self.wfile.write(image)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def show_in(self, version: dict[str, Any]) -> None:
        """The version's images point here."""
        for image in version["images"]:
            image["url"] = f"http://127.0.0.1:{self.server.server_address[1]}/images/held.jpeg"

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def held_image() -> Iterator[HeldImage]:
    held = HeldImage()
    yield held
    held.stop()


@pytest.fixture
def enriching(tmp_path, make_server, civitai_stub, held_image):
    """A server whose Civitai worker is downloading the preview of gpu-01's `storybook` LoRA, held there."""
    server = make_server(civitai_enabled=True, civitai_api_base=civitai_stub.base_url, civitai_image_hosts=("127.0.0.1",))
    node = JobNode(tmp_path, "gpu-01", base_url=server.base_url)
    lora = node.add("Lora", "storybook.safetensors", base="flux1")
    held_image.show_in(civitai_stub.add_version(FOUND, sha256=sha256_of(lora)))
    node.client.push_inventory(node.scan())
    assert held_image.asked.wait(30), "the worker never asked for the preview"
    return server, node, lora


def finish_held_download(server, node: JobNode, civitai_stub, held_image: HeldImage) -> None:
    """Release the held image, then wait until the worker is past it: it stored the preview of a model pushed
    meanwhile, which it looks up only after the held one (it is one thread)."""
    later = node.add("Lora", "later.safetensors", base="sdxl")
    civitai_stub.add_version(FOUND, sha256=sha256_of(later))
    node.client.push_inventory(node.scan())
    held_image.release.set()
    wait_for(lambda: (preview_row(server, sha256_of(later)) or {}).get("status") == "stored", timeout=30)


def preview_row(server, sha256: str) -> dict | None:
    return registry_row(server, "model_previews", sha256)


def preview_file(server, sha256: str) -> Image.Image | None:
    path = server.config.previews_path / f"{sha256}.jpeg"
    return Image.open(io.BytesIO(path.read_bytes())) if path.is_file() else None


def test_a_match_rejected_during_the_download_gets_no_preview(enriching, civitai_stub, held_image):
    server, node, lora = enriching
    sha = sha256_of(lora)
    model_id = server.get("/api/v1/models", params={"text": sha}).json()["models"][0]["id"]
    r = server.post(f"/api/v1/models/{model_id}/civitai/reject", headers=server.admin_headers)
    assert r.status_code == 200, r.text

    finish_held_download(server, node, civitai_stub, held_image)
    assert preview_row(server, sha) is None
    assert preview_file(server, sha) is None
    assert server.get(f"/api/v1/models/{model_id}/preview").status_code == 404


def test_a_nodes_preview_sent_during_the_download_stays(enriching, civitai_stub, held_image):
    server, node, lora = enriching
    sha = sha256_of(lora)
    write_preview(lora, size=(64, 48), color=(10, 200, 10))
    answer, sent = push_with_previews(node)
    assert answer["previews_wanted"] == [sha] and len(sent) == 1

    finish_held_download(server, node, civitai_stub, held_image)
    row = preview_row(server, sha)
    assert (row["status"], row["source_server"], row["width"], row["height"]) == ("stored", "gpu-01", 64, 48)
    assert preview_file(server, sha).size == (64, 48)


def test_two_nodes_sending_one_models_preview_at_once_agree_with_the_row(tmp_path, make_server):
    """Not forced (nothing to hold between a node's check and its write): whatever the order, one node's preview is
    stored, and the file is the one the row names."""
    server = make_server()
    colors = {"gpu-01": (200, 30, 30), "gpu-02": (30, 30, 200)}
    nodes = [JobNode(tmp_path, server_id, base_url=server.base_url) for server_id in colors]
    lora = nodes[0].add("Lora", "hero.safetensors", base="sdxl")
    sha = sha256_of(lora)
    nodes[1].copy(lora, "Lora", "hero.safetensors")
    for node in nodes:
        write_preview(node.models / "Lora" / "hero.safetensors", size=(64, 48), color=colors[node.server_id])
        assert node.client.push_inventory(node.scan())["previews_wanted"] == [sha]

    together = threading.Barrier(len(nodes))
    answers: dict[str, dict] = {}

    def send(node: JobNode) -> None:
        data = (node.models / "Lora" / "hero.preview.jpeg").read_bytes()
        together.wait(30)
        answers[node.server_id] = node.client.upload_preview(sha, data)

    threads = [threading.Thread(target=send, args=(node,)) for node in nodes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(answer["stored"] for answer in answers.values()) == [False, True]
    winner = next(server_id for server_id, answer in answers.items() if answer["stored"])
    assert preview_row(server, sha)["source_server"] == winner
    red, _, blue = preview_file(server, sha).getpixel((10, 10))
    assert (red > blue) == (winner == "gpu-01")
