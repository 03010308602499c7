"""The extension's node service against the real central server: push back-off, heartbeats, timed re-scans,
fleet counts over several pages, and previews the server holds written beside the node's models.
Time is the test's own clock: `tick_at(now)` does what is due at `now`, nothing waits on a timer."""
import contextlib
import hashlib
import http.server
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import model_factory
from modelsync.extension.node_service import NodeService
from modelsync.extension.settings import NodeSettings
from modelsync.extension.tab import COLUMN, TabActions
from modelsync.shared.inventory import Inventory, InventoryFile
from modelsync.shared.node.contact import Timeouts
from modelsync.shared.push_client import NodeCredentials, ServerClient
from modelsync.shared.records import Root
from support_civitai import civitai_stub  # noqa: F401  (fixture)
from support_server import central_server, make_server, run_server, serve_http  # noqa: F401  (fixtures)

FOUND = "civitai_model_version_1387174_lora_flux_lora-manager.json"


def shown_file(actions: TabActions, row: list) -> str:
    """The file name of the file a table row shows."""
    return Path(actions.path_of(row)).name


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


def dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def node(tmp_path: Path, settings: NodeSettings, clock: Clock, retry_delays: tuple[float, ...] = (5.0, 15.0),
         timeouts: Timeouts | None = None) -> NodeService:
    lora = tmp_path / "models" / "Lora"
    lora.mkdir(parents=True, exist_ok=True)
    return NodeService(tmp_path / "data", lambda: settings, lambda extra: [Root(str(lora), "lora")],
                       retry_delays=retry_delays, clock=clock, timeouts=timeouts or Timeouts())


@contextlib.contextmanager
def silent_server() -> Iterator[str]:
    """A TCP server on loopback that accepts every connection and never answers; its URL."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                held.append(listener.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()
        for connection in held:
            connection.close()
        thread.join(5)


@contextlib.contextmanager
def full_backlog() -> Iterator[str]:
    """A listening port whose backlog is full: a new connection's SYN is dropped, so connecting never completes."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=0)
    waiting = socket.create_connection(listener.getsockname())
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        waiting.close()
        listener.close()


class NotFound(http.server.BaseHTTPRequestHandler):
    """A web server that is not a modelsync server: 404 and an HTML page for everything."""

    def _not_found(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        page = b"<html><body>404 Not Found</body></html>"
        self.send_response(404)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(page)))
        self.end_headers()
        self.wfile.write(page)

    do_GET = do_POST = _not_found

    def log_message(self, *args) -> None:
        pass


def other_web_server():
    return serve_http(NotFound)


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
    status = service.status_line()
    assert f"{settings.server_url}: unreachable. Nothing listens at" in status and "next try in 5 s (at " in status
    assert "The push failed 1 time in a row" in status

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
    assert f"{central_server.base_url}: reachable." in status and "added 1" in status
    assert "unreachable" not in status and "next try" not in status and "failed" not in status

    assert tick_at(service, clock, start + 64) == 1  # heartbeat not due yet
    assert server_entry(central_server, "gpu-09")["last_heartbeat"] is None
    assert tick_at(service, clock, start + 65) == 30
    assert server_entry(central_server, "gpu-09")["last_heartbeat"] is not None
    assert service.push_status.last_heartbeat is not None and "Last heartbeat" in service.status_line()
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
    list(actions.follow_background())  # the push ends in the background
    assert service.push_status.answer["added"] == 2
    sha = hashlib.sha256(lora.read_bytes()).hexdigest()
    model_id = next(m["id"] for m in server.get("/api/v1/models", params={"text": sha}).json()["models"])
    image = wait_for_preview(server, model_id)

    actions.start_scan(False)  # the button again: the push's answer now offers the preview
    list(actions.follow_scan())
    actions.refresh_table()
    report = list(actions.follow_background())[-1][2]
    target = tmp_path / "models" / "Lora" / "storybook.preview.jpeg"
    assert service.push_status.previews_written == [str(target)] and f"`{target}`" in report
    assert target.read_bytes() == image
    assert (tmp_path / "models" / "Lora" / "own.preview.jpeg").read_bytes() == b"the node's own preview"
    table, _choices, _status = actions.refresh_table()
    thumbnails = {shown_file(actions, row): row[COLUMN["Preview"]] for row in table["data"]}
    assert thumbnails[lora.name].startswith("![preview](data:image/jpeg;base64,")


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


def test_a_server_that_takes_the_connection_and_never_answers_holds_neither_the_scan_nor_the_table(tmp_path):
    model_factory.write_lora(tmp_path / "models" / "Lora" / "a.safetensors")
    with silent_server() as url:
        settings = NodeSettings(server_url=url, node_id="gpu-12", heartbeat_seconds=0)
        service = node(tmp_path, settings, Clock(), timeouts=Timeouts(connect=3, push=8, counts=4))
        actions = TabActions(service)
        actions.start_scan(True)
        *_, (button, progress, report) = actions.follow_scan()
        assert service.tab_push_running()  # the push still waits for an answer...
        assert button["interactive"] is True and progress == ""  # ...while the button is back and the report shown
        assert "Scan complete! Found 1 model files" in report and "Calculated: 1 hashes" in report
        assert "Pushing the inventory to the central server in the background..." in report

        table, _choices, status = actions.refresh_table()  # tab load and Refresh: the local table, at once
        assert service.reading_fleet_counts() and service.tab_push_running()
        assert [shown_file(actions, row) for row in table["data"]] == ["a.safetensors"]
        assert [row[COLUMN["AutoV2"]] for row in table["data"]] == [service.scan_state.report.inventory.files[0].sha256[:10]]
        assert "Pushing the inventory now" in status

        *_, (table, status, report) = actions.follow_background()  # what the page shows when both have ended
        assert not service.tab_push_running() and not service.reading_fleet_counts()
        assert status.startswith(f"Central server {url}: unreachable. {url}/ took the connection but did not answer within 8 s")
        assert "The push failed 1 time in a row; the inventory is kept" in status
        assert report.startswith("```\nScan complete!") and f"**The push failed:** {status}" in report
        assert [row[COLUMN["Fleet"]] for row in table["data"]] == [""]  # no counts from a silent server


def test_connecting_takes_at_most_the_connect_timeout_and_a_sync_may_take_longer(tmp_path):
    assert Timeouts().connect <= 3 and Timeouts().push >= 60 and Timeouts().counts <= 10
    model_factory.write_lora(tmp_path / "models" / "Lora" / "a.safetensors")
    with full_backlog() as url:
        settings = NodeSettings(server_url=url, node_id="gpu-13", heartbeat_seconds=0)
        service = node(tmp_path, settings, Clock(), timeouts=Timeouts(connect=0.5, push=120, counts=120))
        started = time.monotonic()
        service.scan_and_push(calculate_hashes=False)
        assert time.monotonic() - started < 30  # the SYN is never answered: only the connect timeout ends the wait
    assert service.push_status.reachable is False
    assert service.push_status.error.startswith(f"no answer from {url}/ within") and "check the host and the port" in service.push_status.error


def test_a_web_server_that_is_not_a_modelsync_server_is_not_reachable(tmp_path):
    model_factory.write_lora(tmp_path / "models" / "Lora" / "a.safetensors")
    with other_web_server() as url:
        settings = NodeSettings(server_url=url, node_id="gpu-14", heartbeat_seconds=0)
        service = node(tmp_path, settings, Clock())
        service.scan_and_push(calculate_hashes=False)
        assert service.push_status.reachable is False and service.push_status.attempts == 1
        status = service.status_line()
        assert status.startswith(f"Central server {url}: answered with an error. {url}/ answered HTTP 404 for "
                                 "/api/v1/servers/gpu-14/models/sync, not as a modelsync server does: check the URL.")
        assert ": reachable" not in status and "The push failed 1 time in a row" in status
        assert service.fleet_counts() is None and service.push_status.reachable is False


def test_a_server_url_without_http_is_taken_as_http_and_the_status_line_says_so(tmp_path, central_server):  # noqa: F811
    model_factory.write_lora(tmp_path / "models" / "Lora" / "a.safetensors")
    written = central_server.base_url.removeprefix("http://")
    settings = NodeSettings(server_url=written, node_id="gpu-15", heartbeat_seconds=0)
    service = node(tmp_path, settings, Clock())
    service.scan_and_push(calculate_hashes=True)
    assert service.push_status.reachable is True and server_entry(central_server, "gpu-15")["file_count"] == 1
    assert service.status_line().startswith(
        f"Central server {central_server.base_url}: reachable. The setting {written!r} has no http://, so "
        f"{central_server.base_url} is used: write it so in Settings > Model Sync.")

    settings.server_url = "ftp://central:8188"  # no fix for this one: nothing is pushed, the line says why
    service = node(tmp_path / "n2", settings, Clock())
    assert service.scan_and_push(calculate_hashes=False) is not None and service.push_status.attempts == 0
    assert service.fleet_counts() is None
    assert service.status_line() == ("No usable central server: 'ftp://central:8188' is not a server URL: it must start "
                                     "with http:// or https://; fix it in Settings > Model Sync.")


def test_the_status_line_turns_unreachable_when_the_server_goes_down(tmp_path):
    model_factory.write_lora(tmp_path / "models" / "Lora" / "a.safetensors")
    settings = NodeSettings(node_id="gpu-16", heartbeat_seconds=30)
    clock = Clock()
    service = node(tmp_path, settings, clock)
    actions = TabActions(service)
    with run_server(tmp_path / "central") as server:
        settings.server_url = server.base_url
        service.scan_and_push(calculate_hashes=True)
        actions.refresh_table()
        *_, (table, status, _report) = actions.follow_background()
        assert status.startswith(f"Central server {server.base_url}: reachable.")
        assert [row[COLUMN["Fleet"]] for row in table["data"]] == ["1"]
    down = f"Central server {server.base_url}: unreachable. Nothing listens at {server.base_url}/ (connection refused)"

    actions.refresh_table()  # Refresh with the server down: the fleet counts cannot be read
    *_, (table, status, _report) = actions.follow_background()
    assert status.startswith(down) and [row[COLUMN["Fleet"]] for row in table["data"]] == [""]
    assert "Last push accepted" in status  # what was last taken is still said

    service.push_status.contact = "answered"  # as after the last heartbeat; then the next one fails
    assert tick_at(service, clock, clock.now + 30) == 30 and service.status_line().startswith(down)


def test_the_status_line_never_names_a_next_try_that_has_passed(tmp_path):
    model_factory.write_lora(tmp_path / "models" / "Lora" / "a.safetensors")
    settings = NodeSettings(server_url=dead_url(), node_id="gpu-17", heartbeat_seconds=0)
    service = node(tmp_path, settings, Clock())
    service.scan_and_push(calculate_hashes=False)
    due = service.push_status.next_retry
    assert "next try in 5 s (at " in service.status_line(now=due - 5)
    assert "next try in 2 s (at " in service.status_line(now=due - 2)
    late = service.status_line(now=due + 120)  # the background thread is late (a long scan, a push under way)
    assert "The push failed 1 time in a row; the inventory is kept, next try now." in late and "(at " not in late
