"""The extension's part in transfers, against the host stand-in (tests/support_forge_host.py): the peers' file route on
the host's FastAPI app (run by uvicorn on a loopback port), the host's model lists refreshed after a copy but never
while it generates, the tab's transfers with their progress, and the status line's warning about a files URL peers
cannot reach. The fleet test runs the real central server, a source node serving from the extension's route and the
destination node of the stand-in host. The source's app sits behind a hold that stalls the LoRA's copy midway until
the test has seen the tab show it under way."""
import asyncio
import hashlib
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import model_factory
import pytest
import requests
from fastapi import FastAPI
from modelsync.cli.node_files import FileServer
from modelsync.extension import forge_callbacks
from modelsync.extension.node_service import NodeService
from modelsync.extension.settings import NodeSettings
from modelsync.extension.tab import TRANSFER_HEADERS, TabActions
from modelsync.shared.records import Root
from modelsync.shared.transfer.grants import issue_grant, signing_key
from modelsync.shared.transfer.peer_source import PeerSource
from modelsync.shared.transfer.protocol import (
    FILES_PATH,
    GRANT_HEADER,
    NODE_HEADER,
    file_url,
)
from modelsync.shared.transfer.receiver import receive
from starlette.types import ASGIApp, Receive, Scope, Send
from support_forge_host import extension_host
from support_server import central_server, wait_for  # noqa: F401  (fixture)
from support_transfer import tampered, write_large_safetensors

TOKEN = "forge-a-token-for-the-tests-0123456789"
MIB = 1024 * 1024
HOLD_AFTER = MIB  # body bytes of the held model's file a response sends before it stalls (the copy is 3 MiB)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def host(tmp_path):
    with extension_host(tmp_path, ("models/Lora", "models/Stable-diffusion", "embeddings"), register=True) as host:
        yield host


def webui_of(host) -> Path:
    return Path(host.modules["modules.paths"].data_path)


@dataclass
class HeldSource:
    """An ASGI layer in front of a node's app: a response of the model `sha256`'s file stalls after HOLD_AFTER body
    bytes until `release` is set (`holding` tells it has stalled); every other request passes as it is."""
    app: ASGIApp
    sha256: str
    release: threading.Event = field(default_factory=threading.Event)
    holding: threading.Event = field(default_factory=threading.Event)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != FILES_PATH + self.sha256:
            await self.app(scope, receive, send)
            return
        sent = 0

        async def held_send(message: dict) -> None:
            nonlocal sent
            if message["type"] == "http.response.body":
                if sent >= HOLD_AFTER and not self.release.is_set():
                    self.holding.set()
                    while not self.release.is_set():  # polled: the server's loop stays free and its stop can cancel
                        await asyncio.sleep(0.05)
                sent += len(message.get("body", b""))
            await send(message)

        await self.app(scope, receive, held_send)


def serve(app: ASGIApp) -> FileServer:
    server = FileServer(app, "127.0.0.1", 0)
    server.start()
    wait_for(lambda: server.server.started, timeout=10)
    return server


def granted(sha256: str, destination: str, source: str = "forge-a", token: str = TOKEN) -> dict[str, str]:
    return {GRANT_HEADER: issue_grant(signing_key(token), sha256=sha256, source=source, destination=destination).value,
            NODE_HEADER: destination}


def test_the_host_app_serves_a_catalog_file_by_grant_with_range_and_refuses_everything_else(host, tmp_path):
    lora = model_factory.write_lora(webui_of(host) / "models" / "Lora" / "hero.safetensors", base="sdxl")
    host.opts.modelsync_node_id, host.opts.modelsync_token = "forge-a", TOKEN
    host.opts.modelsync_push_on_startup = False
    host.settings_ui()
    app = FastAPI()
    host.start_app(None, app)
    node = forge_callbacks.service()
    node.scan_and_push(True)
    server = serve(app)
    try:
        base = f"http://127.0.0.1:{server.port}"
        sha, data = sha256_of(lora), lora.read_bytes()
        url = file_url(base, sha)
        headers = granted(sha, "forge-b")
        whole = requests.get(url, headers=headers, timeout=10)
        assert whole.status_code == 200 and whole.content == data, whole.text
        assert whole.headers["ETag"] == f'"{sha}"' and whole.headers["Accept-Ranges"] == "bytes"
        part = requests.get(url, headers={**headers, "Range": "bytes=100-", "If-Range": f'"{sha}"'}, timeout=10)
        assert part.status_code == 206 and part.content == data[100:]
        assert part.headers["Content-Range"] == f"bytes 100-{len(data) - 1}/{len(data)}"
        stale = requests.get(url, headers={**headers, "Range": "bytes=100-", "If-Range": '"another"'}, timeout=10)
        assert stale.status_code == 200 and stale.content == data
        beyond = requests.get(url, headers={**headers, "Range": f"bytes={len(data)}-"}, timeout=10)
        assert beyond.status_code == 416 and beyond.headers["Content-Range"] == f"bytes */{len(data)}"
        assert requests.head(url, headers=headers, timeout=10).headers["Content-Length"] == str(len(data))
        lora.with_name("hero.civitai.info").write_text('{"id": 7}')
        info = requests.get(url + "/civitai-info", headers=headers, timeout=10)
        assert info.status_code == 200 and info.content == b'{"id": 7}'  # a companion comes with the model's grant
        assert requests.get(url + "/preview", headers=headers, timeout=10).json()["reason"] == "no_companion"
        assert requests.get(url + "/civitai-info", timeout=10).status_code == 401

        # the receiver of the engine, resuming from a temp file, against the host's route
        dest = tmp_path / "dest"
        dest.mkdir()
        received = receive(PeerSource(base, sha, len(data), "forge-b", headers[GRANT_HEADER]), str(dest), "Lora/hero.safetensors")
        assert received.hashes.sha256 == sha and (dest / "Lora" / "hero.safetensors").read_bytes() == data

        refused = {
            "no grant": requests.get(url, headers={NODE_HEADER: "forge-b"}, timeout=10),
            "another node": requests.get(url, headers={**headers, NODE_HEADER: "forge-c"}, timeout=10),
            "tampered": requests.get(url, headers={**headers, GRANT_HEADER: tampered(headers[GRANT_HEADER])}, timeout=10),
            "another sha256": requests.get(file_url(base, "0" * 64), headers=headers, timeout=10),
            "expired": requests.get(url, headers={**headers, GRANT_HEADER: issue_grant(
                signing_key(TOKEN), sha256=sha, source="forge-a", destination="forge-b", ttl_seconds=60,
                now=time.time() - 3600).value}, timeout=10),
            "signed with another token": requests.get(url, headers=granted(sha, "forge-b", token="another-token"), timeout=10),
            "a path": requests.get(base + FILES_PATH + "hero.safetensors", headers=headers, timeout=10),
        }
        assert {why: a.status_code for why, a in refused.items()} == {
            "no grant": 401, "another node": 403, "tampered": 403, "another sha256": 403, "expired": 403,
            "signed with another token": 403, "a path": 400}
        assert all(data[:64] not in a.content for a in refused.values())

        # a file changed since its scan: 409, a re-scan, then it is served again with its new content
        model_factory.write_lora(lora, base="sd1")
        changed = requests.get(url, headers=headers, timeout=10)
        assert changed.status_code == 409 and changed.json()["reason"] == "changed"
        # the background thread's next round re-scans, as the refusal asked: the old content is no longer here
        wait_for(lambda: requests.get(url, headers=headers, timeout=10).status_code == 404)
        new_sha = sha256_of(lora)
        again = requests.get(file_url(base, new_sha), headers=granted(new_sha, "forge-b"), timeout=10)
        assert again.status_code == 200 and again.content == lora.read_bytes()

        # serving to peers turned off in the settings: refused at once, without a restart
        host.opts.modelsync_allow_serving = False
        off = requests.get(file_url(base, new_sha), headers=granted(new_sha, "forge-b"), timeout=10)
        assert off.status_code == 403 and off.json()["reason"] == "not_serving"
    finally:
        server.stop()


def test_the_status_line_warns_when_peers_cannot_reach_the_files_url(host):
    host.settings_ui()
    host.opts.modelsync_files_url = "http://127.0.0.1:7860"
    node = forge_callbacks.service()
    assert "the files URL http://127.0.0.1:7860 is loopback-only" in node.status_line()
    host.opts.modelsync_files_url = "http://10.0.0.5:7860"
    assert "started without --listen" in node.status_line()  # the stand-in host has no --listen
    host.modules["modules.shared"].cmd_opts.listen = True
    assert "Warning" not in node.status_line()
    host.opts.modelsync_files_url = "http://127.0.0.1:7860"
    host.opts.modelsync_allow_serving = False  # serving nothing: nothing to warn about
    assert "Warning" not in node.status_line()


def source_node(tmp_path: Path, server_url: str) -> tuple[NodeService, FileServer, dict[str, Path], HeldSource]:
    """Another node running the extension's engine and route (its own app, behind a hold of the LoRA's file),
    holding what the host lacks."""
    folders = {role: tmp_path / "source" / name for role, name in
               (("lora", "Lora"), ("checkpoint", "Stable-diffusion"), ("embedding", "embeddings"))}
    files = {
        "lora": write_large_safetensors(folders["lora"] / "styles" / "big-style.safetensors", 3),
        "checkpoint": model_factory.write_checkpoint(folders["checkpoint"] / "base-xl.safetensors", base="sdxl"),
        "embedding": model_factory.write_embedding(folders["embedding"] / "ink.safetensors"),
    }
    app = FastAPI()
    hold = HeldSource(app, sha256_of(files["lora"]))
    server = serve(hold)
    settings = NodeSettings(server_url=server_url, node_id="forge-src", files_url=f"http://127.0.0.1:{server.port}",
                            allow_transfers=False, watch_folders=False)
    node = NodeService(tmp_path / "source-data", lambda: settings, lambda extra: [Root(str(p), r) for r, p in folders.items()])
    node.register_files_route(app)
    assert node.scan_and_push(True) is not None and node.push_status.last_push is not None
    return node, server, files, hold


def lora_under_way(seen: list[tuple[dict, str]]) -> list[list[str]]:
    """The tab's rows that showed the LoRA's copy running."""
    return [row for table, _note in seen for row in table["data"]
            if row and row[0] == "big-style.safetensors" and row[1] == "running"]


def with_progress(row: list[str]) -> bool:
    return "%" in row[2] and row[3].endswith("/s") and row[4].endswith(" s")


def test_a_copy_lands_in_the_host_folders_the_host_lists_refresh_after_its_generation_and_the_tab_shows_progress(
        central_server, host, tmp_path):  # noqa: F811
    source, source_server, files, hold = source_node(tmp_path, central_server.base_url)
    try:
        for key, value in {"server_url": central_server.base_url, "node_id": "forge-dst", "max_transfers": 1,
                           "bandwidth_mb": 1, "watch_folders": False}.items():
            setattr(host.opts, f"modelsync_{key}", value)
        host.settings_ui()
        host.start_app(None, FastAPI())
        node = forge_callbacks.service()
        wait_for(lambda: node.push_status.last_push is not None)
        host.state.begin("txt2img")  # the host generates while the copies arrive

        admin = {"Authorization": f"Bearer {central_server.admin_token}"}
        ordered = {}
        for role in ("lora", "checkpoint", "embedding"):  # one at a time (max_transfers 1), in this order
            answer = central_server.post("/api/v1/transfers", headers=admin,
                                         json={"server_id": "forge-dst", "sha256": sha256_of(files[role])})
            assert answer.status_code == 201, answer.text
            ordered[role] = answer.json()["id"]
        cancelled = central_server.session.delete(central_server.url(f"/api/v1/transfers/{ordered['embedding']}"),
                                                  headers=admin, timeout=10)
        assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"

        wait_for(hold.holding.is_set, timeout=60)  # the LoRA's copy is under way, its source stalled midway
        actions = TabActions(node)
        actions.refresh_table()
        following = actions.follow_transfers()  # follows until none is under way
        seen = []
        deadline = time.monotonic() + 30  # well within the receiver's 60 s read timeout
        for shown in following:  # read about once a second while the copy is held
            seen.append(shown)
            if any(with_progress(row) for row in lora_under_way(seen)) or time.monotonic() > deadline:
                break
        hold.release.set()
        seen.extend(following)
        running = lora_under_way(seen)
        assert running, "the tab never showed the LoRA's copy under way"
        assert any(with_progress(row) for row in running)
        assert all(row[5] == "forge-src" for row in running)
        final, note = seen[-1]
        assert final["headers"] == TRANSFER_HEADERS
        rows = {row[0]: row for row in final["data"]}
        assert rows["big-style.safetensors"][1:3] == ["done", "100% (3.0 MB / 3.0 MB)"]
        assert rows["base-xl.safetensors"][1] == "done" and rows["base-xl.safetensors"][5] == "forge-src"
        embedding_row = rows[sha256_of(files["embedding"])[:10]]  # never copied: shown by its hash
        assert embedding_row[1] == "cancelled" and embedding_row[6].startswith("cancelled")
        assert note == "This node's 3 latest transfers, 0 under way."

        webui = webui_of(host)
        copied = webui / "models" / "Lora" / "styles" / "big-style.safetensors"
        assert sha256_of(copied) == sha256_of(files["lora"])
        assert sha256_of(webui / "models" / "Stable-diffusion" / "base-xl.safetensors") == sha256_of(files["checkpoint"])
        retried = central_server.post(f"/api/v1/transfers/{ordered['embedding']}/retry", headers=admin)
        assert retried.status_code == 200, retried.text
        wait_for(lambda: (webui / "embeddings" / "ink.safetensors").is_file()
                 and central_server.get(f"/api/v1/transfers/{ordered['embedding']}").json()["state"] == "done")

        # each copy asked for its list; the host still generates: nothing refreshed, all three wait
        wait_for(lambda: node.refresher.pending == ["checkpoint", "embedding", "lora"] and node.refresher.waiting_for_host)
        assert host.refreshes == []
        assert "styles/big-style" not in host.loras
        host.state.end()
        wait_for(lambda: {"lora", "checkpoint", "embedding"} <= {what for what, _busy, _kw in host.refreshes})
        assert "styles/big-style" in host.loras and "base-xl" in host.checkpoints and "ink" in host.embeddings
        assert all(not busy for _what, busy, _kw in host.refreshes)
        assert next(kw for what, _busy, kw in host.refreshes if what == "embedding") == {
            "force_reload": True, "sync_with_sd_model": False}
        assert not node.refresher.waiting_for_host
    finally:
        hold.release.set()  # never leave a response held, whatever failed
        source.stop(5)
        source_server.stop()


def test_the_tab_says_when_there_is_no_server_and_when_the_transfers_cannot_be_read(host):
    host.settings_ui()
    actions = TabActions(forge_callbacks.service())
    [(table, note)] = list(actions.follow_transfers())
    assert note == "Transfers: no central server configured." and table == {"headers": TRANSFER_HEADERS, "data": [[]]}
    host.opts.modelsync_server_url = "http://127.0.0.1:9"  # nothing listens there
    [(table, note)] = list(actions.follow_transfers())
    assert note.startswith("Transfers could not be read: ") and "127.0.0.1:9" in note


def test_fractional_transfer_settings_are_kept_and_every_setting_has_a_settings_component(host):
    host.settings_ui()  # the stand-in refuses, as Forge's Settings tab does, a float option without a component
    host.opts.modelsync_bandwidth_mb, host.opts.modelsync_free_floor_gb = 0.5, 1.5
    config = forge_callbacks.read_settings().node_config()
    assert config.bandwidth_bps == MIB // 2 and config.free_floor_bytes == 3 * 1024 * MIB // 2
