"""The extension's node service against the real central server: push back-off, heartbeats, timed re-scans,
fleet counts over several pages, and previews the server holds written beside the node's models.
Time is the test's own clock: `tick_at(now)` does what is due at `now`, nothing waits on a timer."""
import hashlib
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import model_factory
from support_civitai import civitai_stub  # noqa: F401  (fixture)
from support_server import central_server, make_server  # noqa: F401  (fixtures)

from modelsync.extension.node_service import NodeService
from modelsync.extension.settings import NodeSettings
from modelsync.extension.tab import TabActions
from modelsync.shared.inventory import Inventory, InventoryFile
from modelsync.shared.push_client import NodeCredentials, ServerClient
from modelsync.shared.records import Root

FOUND = "civitai_model_version_1387174_lora_flux_lora-manager.json"


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


def dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def node(tmp_path: Path, settings: NodeSettings, clock: Clock, retry_delays: tuple[float, ...] = (5.0, 15.0)) -> NodeService:
    lora = tmp_path / "models" / "Lora"
    lora.mkdir(parents=True, exist_ok=True)
    return NodeService(tmp_path / "data", lambda: settings, lambda extra: [Root(str(lora), "lora")],
                       retry_delays=retry_delays, clock=clock)


def tick_at(service: NodeService, clock: Clock, now: float) -> float:
    """What the background thread does when it wakes at `now`."""
    clock.now = now
    return service.tick()


def server_entry(server, node_id: str) -> dict:
    return next(s for s in server.get("/api/v1/servers").json()["servers"] if s["id"] == node_id)


def test_an_unreachable_server_is_retried_with_back_off_then_heartbeats_follow(tmp_path, central_server):  # noqa: F811
    model_factory.write_lora(tmp_path / "models" / "Lora" / "a.safetensors")
    settings = NodeSettings(server_url=dead_url(), node_id="gpu-09", heartbeat_seconds=30)
    clock = Clock()
    service = node(tmp_path, settings, clock)
    start = clock.now

    service.scan_and_push(calculate_hashes=True)
    assert service.push_status.attempts == 1 and service.push_status.reachable is False
    assert service.schedule.push_at == start + 5
    assert "unreachable" in service.status_line() and "next try at" in service.status_line()
    assert "push failed 1 time in a row" in service.status_line()

    assert tick_at(service, clock, start + 1) == 4  # not due yet: nothing tried
    assert service.push_status.attempts == 1
    assert tick_at(service, clock, start + 5) == 15  # 2nd failure: the next delay
    assert tick_at(service, clock, start + 20) == 15  # further failures keep the last delay
    assert service.push_status.attempts == 3 and service.schedule.failures == 3

    settings.server_url = central_server.base_url  # the server is back (settings are read on every round)
    assert tick_at(service, clock, start + 35) == 30  # pushed; the next thing due is the heartbeat
    assert service.push_status.attempts == 4 and service.push_status.reachable is True
    assert service.schedule.failures == 0 and service.schedule.push_at is None
    entry = server_entry(central_server, "gpu-09")
    assert entry["file_count"] == 1 and entry["last_heartbeat"] is None
    status = service.status_line()
    assert "reachable" in status and "added 1" in status and "unreachable" not in status and "next try" not in status

    assert tick_at(service, clock, start + 64) == 1  # heartbeat not due yet
    assert server_entry(central_server, "gpu-09")["last_heartbeat"] is None
    assert tick_at(service, clock, start + 65) == 30
    assert server_entry(central_server, "gpu-09")["last_heartbeat"] is not None
    assert service.push_status.last_heartbeat is not None and "last heartbeat" in service.status_line()
    assert service.push_status.attempts == 4  # a heartbeat is no push

    settings.heartbeat_seconds = 0  # heartbeats off: nothing is planned any more
    assert tick_at(service, clock, start + 95) == 60 and service.schedule.heartbeat_at is None


def test_the_re_scan_interval_scans_and_pushes_on_time_and_is_off_by_default(tmp_path, central_server):  # noqa: F811
    first = model_factory.write_lora(tmp_path / "models" / "Lora" / "first.safetensors")
    settings = NodeSettings(server_url=central_server.base_url, node_id="gpu-10", heartbeat_seconds=0)
    assert settings.rescan_minutes == 0
    clock = Clock()
    service = node(tmp_path, settings, clock)
    start = clock.now
    service.scan_and_push(calculate_hashes=True)
    assert tick_at(service, clock, start) == 60 and service.schedule.scan_at is None  # off: no scan planned

    settings.rescan_minutes = 2
    assert tick_at(service, clock, start) == 60  # idle check first; the re-scan is planned 120 s ahead
    assert service.schedule.scan_at == start + 120
    second = model_factory.write_lora(tmp_path / "models" / "Lora" / "second.safetensors", base="sdxl")
    assert tick_at(service, clock, start + 119) == 1
    assert server_entry(central_server, "gpu-10")["file_count"] == 1
    assert tick_at(service, clock, start + 120) == 60
    assert service.schedule.scan_at == start + 240
    assert service.scan_state.report.stats.added == 1 and service.scan_state.report.stats.hashesCalculated == 1
    hashes = {m["sha256"] for m in central_server.get("/api/v1/models", params={"server": "gpu-10"}).json()["models"]}
    assert hashes == {hashlib.sha256(p.read_bytes()).hexdigest() for p in (first, second)}

    settings.rescan_minutes = 0
    tick_at(service, clock, start + 130)
    assert service.schedule.scan_at is None


def test_the_background_thread_stops_when_asked(tmp_path):
    settings = NodeSettings(rescan_minutes=1)
    service = node(tmp_path, settings, Clock())
    thread = service.start_background(initial_sync=False)
    assert thread.is_alive()
    service.stop(timeout=30)
    assert not thread.is_alive()


def test_fleet_counts_come_from_the_server_page_by_page(tmp_path, central_server):  # noqa: F811
    def fake_files(count: int, offset: int = 0) -> list[InventoryFile]:
        return [InventoryFile(path=f"/m/Lora/{i}.safetensors", rel_name=f"{i}.safetensors", role="lora", size=10, mtime_ns=1,
                              sha256=hashlib.sha256(str(i).encode()).hexdigest()) for i in range(offset, offset + count)]

    big = fake_files(520)
    ServerClient(central_server.base_url, NodeCredentials.load(tmp_path / "big", "gpu-big"), retries=0).push_inventory(
        Inventory("gpu-big", files=big))
    ServerClient(central_server.base_url, NodeCredentials.load(tmp_path / "other", "gpu-other"), retries=0).push_inventory(
        Inventory("gpu-other", files=fake_files(30, offset=510)))  # 10 shared with gpu-big, 20 only here

    client = ServerClient(central_server.base_url, NodeCredentials("gpu-big"), retries=0)
    counts = client.node_counts("gpu-big")
    assert set(counts) == {f.sha256 for f in big}  # more than one page of 500
    assert list(counts.values()).count(2) == 10 and list(counts.values()).count(1) == 510
    small_pages = client.node_counts("gpu-other", page_size=7)  # 30 models in pages of 7
    assert len(small_pages) == 30 and list(small_pages.values()).count(2) == 10

    settings = NodeSettings(server_url=central_server.base_url, node_id="gpu-big")
    assert node(tmp_path, settings, Clock()).fleet_counts() == counts
    settings.server_url = dead_url()
    assert node(tmp_path / "n2", settings, Clock()).fleet_counts() is None


def test_previews_the_server_holds_are_written_beside_models_that_have_none(tmp_path, make_server, civitai_stub):  # noqa: F811
    server = make_server(civitai_enabled=True, civitai_api_base=civitai_stub.base_url, civitai_image_hosts=("127.0.0.1",))
    lora = model_factory.write_lora(tmp_path / "models" / "Lora" / "storybook.safetensors", base="flux1")
    kept = model_factory.write_lora(tmp_path / "models" / "Lora" / "own.safetensors", base="sdxl")
    (tmp_path / "models" / "Lora" / "own.preview.jpeg").write_bytes(b"the node's own preview")
    for path in (lora, kept):
        civitai_stub.add_version(FOUND, sha256=hashlib.sha256(path.read_bytes()).hexdigest())
    settings = NodeSettings(server_url=server.base_url, node_id="gpu-11")
    service = node(tmp_path, settings, Clock())
    actions = TabActions(service)

    actions.start_scan(True)
    list(actions.follow_scan())
    assert service.push_status.answer["added"] == 2
    sha = hashlib.sha256(lora.read_bytes()).hexdigest()
    model_id = next(m["id"] for m in server.get("/api/v1/models", params={"text": sha}).json()["models"])
    image = wait_for_preview(server, model_id)

    actions.start_scan(False)  # the button again: the push's answer now offers the preview
    report = list(actions.follow_scan())[-1][2]
    target = tmp_path / "models" / "Lora" / "storybook.preview.jpeg"
    assert service.push_status.previews_written == [str(target)] and f"`{target}`" in report
    assert target.read_bytes() == image
    assert (tmp_path / "models" / "Lora" / "own.preview.jpeg").read_bytes() == b"the node's own preview"
    rows, _choices, _status = actions.refresh_table()
    thumbnails = {row[-1]: row[0] for row in rows}
    assert thumbnails[str(lora)].startswith("![preview](data:image/jpeg;base64,")


def wait_for_preview(server, model_id: int) -> bytes:
    """The server's Civitai worker runs on its own; poll the server until it has stored the preview."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        answer = server.get(f"/api/v1/models/{model_id}/preview")
        if answer.status_code == 200:
            return answer.content
        time.sleep(0.05)
    raise AssertionError("the server stored no preview in time")


def test_a_preview_that_cannot_be_fetched_does_not_stop_the_others(tmp_path, central_server):  # noqa: F811
    files = [InventoryFile(path=str(tmp_path / f"{name}.safetensors"), rel_name=f"{name}.safetensors", role="lora", size=1,
                           mtime_ns=1, sha256=hashlib.sha256(name.encode()).hexdigest()) for name in ("first", "second")]
    answer = {"enriched": {files[0].sha256: {"preview_url": "/api/v1/models/scan"},  # a GET there: HTTP 405
                           files[1].sha256: {"preview_url": "/api/v1/health"}}}
    client = ServerClient(central_server.base_url, NodeCredentials("gpu-previews"), retries=0)
    written = client.save_previews(Inventory("gpu-previews", files=files), answer)
    assert written == [str(tmp_path / "second.preview.jpeg")]
    assert (tmp_path / "second.preview.jpeg").exists() and not (tmp_path / "first.preview.jpeg").exists()
