"""What each node reports (issue #13), end to end: the extension in the Forge stand-in (tests/support_forge_host.py)
loads a model (on_model_loaded), its state reaches the real central server in a heartbeat and puts that node first in
the availability check and the dispatch-check; a state flipping 20 times in a second costs at most one extra
heartbeat per 5 s (counted as the central server receives them); `modelsync node` reports its disks, loaded null."""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import model_factory
import pytest
from modelsync.server.app import create_app
from modelsync.shared.node.config import NodeConfig
from modelsync.shared.node.service import NodeService
from modelsync.shared.node.state import Checkpoint, HostActivity
from modelsync.shared.node.state_reporter import EXTRA_HEARTBEAT_SECONDS, STATE_POLL_SECONDS
from modelsync.shared.records import Root
from support_forge_host import extension_host, run_script
from support_jobs import sha256_of
from support_server import (
    ANSWERS,
    RunningServer,
    push_files,
    serve_asgi,
    server_config,
    wait_for,
)

REPO = Path(__file__).resolve().parent.parent


class HeartbeatLog:
    """ASGI middleware before the central server: every heartbeat body it receives, with when (monotonic)."""

    def __init__(self, app):
        self.app = app
        self.received: list[tuple[float, str, dict]] = []
        self._lock = threading.Lock()
        self.refuse_models_list = False  # GET /api/v1/models (the fleet counts) answers 503 while set

    async def __call__(self, scope, receive, send):
        if self.refuse_models_list and scope["type"] == "http" and scope["path"] == "/api/v1/models":
            await send({"type": "http.response.start", "status": 503, "headers": [(b"content-type", b"text/plain")]})
            return await send({"type": "http.response.body", "body": b"down for a moment"})
        if scope["type"] != "http" or not scope["path"].endswith("/heartbeat"):
            return await self.app(scope, receive, send)
        chunks: list[bytes] = []

        async def reading():
            message = await receive()
            if message["type"] == "http.request":
                chunks.append(message.get("body", b""))
                if not message.get("more_body"):
                    with self._lock:
                        node = scope["path"].split("/")[-2]
                        self.received.append((time.monotonic(), node, json.loads(b"".join(chunks) or b"{}")))
            return message

        return await self.app(scope, reading, send)

    def of(self, node_id: str) -> list[tuple[float, dict]]:
        with self._lock:
            return [(at, body) for at, node, body in self.received if node == node_id]


@contextlib.contextmanager
def counting_server(data_path: Path) -> Iterator[tuple[RunningServer, HeartbeatLog]]:
    config = server_config(data_path)
    counted = HeartbeatLog(create_app(config))
    with serve_asgi(counted, "uvicorn", lifespan="on", log_level="warning") as base_url:
        running = RunningServer(base_url, config.admin_token or "", data_path, config)
        with ANSWERS.watching(base_url):
            yield running, counted
        running.session.close()


def server_entry(server: RunningServer, node_id: str) -> dict | None:
    return next((s for s in server.get("/api/v1/servers").json()["servers"] if s["id"] == node_id), None)


@pytest.fixture
def host(tmp_path):
    with extension_host(tmp_path) as host:
        yield host


def test_a_model_loaded_in_the_host_reaches_the_central_server_and_ranks_that_node_first(tmp_path, host):
    webui = Path(host.modules["modules.paths"].data_path)
    checkpoint = model_factory.write_checkpoint(webui / "models" / "Stable-diffusion" / "base.safetensors", base="sdxl")
    sha = sha256_of(checkpoint)
    with counting_server(tmp_path / "central") as (server, heartbeats):
        run_script(REPO / "scripts" / "modelsync_tab.py")
        host.opts.modelsync_server_url = server.base_url
        host.opts.modelsync_node_id = "gpu-forge"
        host.opts.forge_additional_modules = [str(webui / "models" / "VAE" / "sdxl_vae.safetensors")]
        host.start_app(None, None)

        # the start-up push, then at once a heartbeat with the state: idle, nothing loaded yet (Forge loads lazily)
        first = wait_for(lambda: (e := server_entry(server, "gpu-forge")) and e["file_count"] == 1 and e["state"] and e)
        assert first["state"]["loaded"] is None and first["state"]["busy"] is False and first["state"]["gpu"] is None
        assert first["state"]["modules"] == ["sdxl_vae.safetensors"] and first["state"]["current"] is True
        roots = {d["root"]: d for d in first["state"]["disks"]}
        checkpoints = os.path.realpath(webui / "models" / "Stable-diffusion")
        assert roots[checkpoints]["role"] == "checkpoint"
        assert 0 < roots[checkpoints]["free_bytes"] <= roots[checkpoints]["total_bytes"]
        assert first["state"]["floor_bytes"] == NodeConfig("x").free_floor_bytes

        # gpu-forge's start-up heartbeats are over (the push's and maybe one of the state thread's, which looks every
        # STATE_POLL_SECONDS): none for longer than that, so the next one heard is gpu-alpha's
        wait_for(lambda: time.monotonic() - heartbeats.of("gpu-forge")[-1][0] > STATE_POLL_SECONDS + 1.0, timeout=30)
        # another node with the same checkpoint, idle, heard from more recently (or in the same second: its id sorts first)
        token = push_files(server, "gpu-alpha", [{"path": "/m/base.safetensors", "rel_name": "base.safetensors",
                                                  "role": "checkpoint", "size": checkpoint.stat().st_size,
                                                  "mtime_ns": 1, "sha256": sha, "type": "checkpoint"}])["token"]
        idle = {"busy": False, "disks": [], "loaded": None}
        assert server.post("/api/v1/servers/gpu-alpha/heartbeat", json={"state": idle},
                           headers={"Authorization": f"Bearer {token}"}).status_code == 200
        job = {"job": {"prompt": "a lighthouse", "override_settings": {"sd_model_checkpoint": "base"}}, "record": False}
        before = server.post("/api/v1/jobs/availability", json=job).json()["model_availability"]["candidates"]
        assert [(n["server_id"], n["reasons"]) for n in before] == [("gpu-alpha", ["idle"]), ("gpu-forge", ["idle"])]

        title = f"base.safetensors [{sha[:10]}]"
        threading.Thread(target=host.load_model, args=(title, sha)).start()  # the host's generation thread
        loaded = wait_for(lambda: (s := server_entry(server, "gpu-forge")["state"])["loaded"] and s, timeout=20)
        assert loaded["loaded"] == {"title": title, "sha256": sha} and loaded["selected"] == {"title": title, "sha256": None}

        after = server.post("/api/v1/jobs/availability", json=job).json()["model_availability"]["candidates"]
        assert [(n["server_id"], n["rank"], n["reasons"]) for n in after] == [
            ("gpu-forge", 1, ["checkpoint loaded", "idle"]), ("gpu-alpha", 2, ["idle"])]
        check = server.post("/api/v1/servers/gpu-alpha/dispatch-check", json=job).json()
        assert check["ok"] is True  # a hint only: the queue decides
        assert [(n["server_id"], n["reasons"]) for n in check["better_nodes"]] == [("gpu-forge", ["checkpoint loaded", "idle"])]
        assert server.post("/api/v1/servers/gpu-forge/dispatch-check", json=job).json()["better_nodes"] == []

        host.state.begin("txt2img")  # busy now: reported on the poll (no event for it), ranked behind the idle node
        wait_for(lambda: server_entry(server, "gpu-forge")["state"]["busy"] is True, timeout=20)
        busy = server.post("/api/v1/jobs/availability", json=job).json()["model_availability"]["candidates"]
        assert [(n["server_id"], n["reasons"]) for n in busy] == [("gpu-forge", ["checkpoint loaded", "busy"]),
                                                                 ("gpu-alpha", ["idle"])]  # loaded still goes first
        sent = heartbeats.of("gpu-forge")
        assert len(sent) >= 3 and all("state" in body for _, body in sent)


@contextlib.contextmanager
def state_reporting_node(tmp_path: Path, server: RunningServer, node_id: str,
                         activity: list[HostActivity]) -> Iterator[NodeService]:
    """A node agent with one LoRA, no timer heartbeat (an hour), reporting activity[-1] as its host's state."""
    models = tmp_path / "models"
    model_factory.write_lora(models / "x.safetensors")
    config = NodeConfig(node_id, server_url=server.base_url, heartbeat_seconds=3600, rescan_seconds=0,
                        watch=False, receive=False)
    service = NodeService(tmp_path / "node", lambda: config, lambda: [Root(str(models), "lora")],
                          activity=lambda: activity[-1])
    service.start_background(initial_sync=True)
    try:
        yield service
    finally:
        service.stop(timeout=30)


def test_a_state_flipping_20_times_in_a_second_costs_at_most_one_extra_heartbeat_per_5_seconds(tmp_path):
    flips = [HostActivity(busy=False)]
    with counting_server(tmp_path / "central") as (server, heartbeats), \
            state_reporting_node(tmp_path, server, "gpu-flip", flips) as service:
        wait_for(lambda: heartbeats.of("gpu-flip"), timeout=30)  # the one after the start-up push
        started = time.monotonic()
        for i in range(20):
            flips.append(HostActivity(loaded=Checkpoint(f"model_{i}.safetensors"), busy=i % 2 == 0))
            service.state_changed()
            time.sleep(0.05)
        final = {"title": "model_19.safetensors", "sha256": None}
        wait_for(lambda: (s := server_entry(server, "gpu-flip")["state"]) and s["loaded"] == final and not s["busy"],
                 timeout=30)
        ended = time.monotonic()
        during = [at for at, _ in heartbeats.of("gpu-flip") if at >= started]
        allowed = 1 + math.ceil((ended - started) / EXTRA_HEARTBEAT_SECONDS)
        assert 1 <= len(during) <= allowed, (len(during), ended - started)
        assert len(during) < 20 and service.state_heartbeats <= allowed + 1


def test_a_failed_read_of_the_fleet_counts_does_not_hold_back_a_changed_state(tmp_path):
    """Only the server URL and a push still waiting hold the state's heartbeat back; a request that failed (here the
    fleet counts, answered 503) does not: the model loaded next is reported at once, not at the timer's heartbeat."""
    activity = [HostActivity(busy=False)]
    with counting_server(tmp_path / "central") as (server, heartbeats), \
            state_reporting_node(tmp_path, server, "gpu-counts", activity) as service:
        wait_for(lambda: heartbeats.of("gpu-counts"), timeout=30)  # the one after the start-up push
        heartbeats.refuse_models_list = True
        assert service.fleet_counts() is None and service.push_status.reachable is False
        activity.append(HostActivity(loaded=Checkpoint("after.safetensors"), busy=True))
        service.state_changed()
        loaded = {"title": "after.safetensors", "sha256": None}
        state = wait_for(lambda: (s := server_entry(server, "gpu-counts")["state"]) and s["loaded"] == loaded and s,
                         timeout=30)
    assert state["busy"] is True and service.state_heartbeats >= 1 and service.push_status.reachable is True


def test_modelsync_node_reports_its_disks_with_loaded_null(tmp_path):
    lora = tmp_path / "Lora"
    model_factory.write_lora(lora / "one.safetensors")
    with counting_server(tmp_path / "central") as (server, _):
        args = [sys.executable, "-m", "modelsync.cli.main", "node", "--server", server.base_url, "--server-id", "gpu-cli",
                "--data", str(tmp_path / "data"), "--no-serve", "--heartbeat", "1", "--rescan", "0",
                "--free-floor", "3GiB", f"--role=lora={lora}"]
        with open(tmp_path / "node.log", "wb") as log:
            process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        try:
            state = wait_for(lambda: (e := server_entry(server, "gpu-cli")) and e["state"], timeout=60)
        finally:
            process.terminate()
            process.wait(30)
    assert state["loaded"] is None and state["selected"] is None and state["busy"] is None and state["gpu"] is None
    assert state["modules"] == [] and state["floor_bytes"] == 3 * 2**30
    (disk,) = state["disks"]
    usage = shutil.disk_usage(lora)
    assert disk["root"] == str(lora) and disk["role"] == "lora" and disk["total_bytes"] == usage.total
    assert 0 < disk["free_bytes"] <= usage.total
    assert "torch" not in (tmp_path / "node.log").read_text()
