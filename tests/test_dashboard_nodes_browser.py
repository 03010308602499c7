"""The Nodes page's node state (issue #13) in a real headless Chromium against the real server: two nodes with real
model files push their inventories and heartbeat their state as the node engine builds it (shared/node/state.py:
the host's activity, the real free space of their model folders' disk, the floor each keeps free); the page shows
what GET /api/v1/servers answers (loaded and selected checkpoint, modules, busy or idle, the least free disk, red
below the floor); a node that falls silent keeps its last state on the page, greyed "as of" its report, and the job
checks no longer use it."""
from __future__ import annotations

import re
import sqlite3

import model_factory
import pytest
from modelsync.shared.scan.model_folders import roots_for
from modelsync.shared.node.client import NodeClient
from modelsync.shared.node.state import (
    Checkpoint,
    HostActivity,
    StateReport,
    disk_spaces,
)
from modelsync.shared.push_client import NodeCredentials
from modelsync.shared.units import human_size
from support_browser import (  # noqa: F401  (fixtures)
    BROWSER_TIMEZONE,
    browser,
    browser_page,
    screenshot,
    sha256_of,
)
from support_jobs import JobNode, set_last_contact
from support_server import make_server  # noqa: F401  (fixture)

pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed (pip install -e .[test])")
from playwright.sync_api import expect

SILENT_SINCE = "2000-01-01T00:00:00Z"
JOB = {"job": {"prompt": "a lighthouse", "override_settings": {"sd_model_checkpoint": "base_xl"}}, "record": False}


def checkpoint(path) -> Checkpoint:
    """As Forge titles a checkpoint: file name and AutoV2 (the first 10 hex digits of its SHA256)."""
    sha256 = sha256_of(path)
    return Checkpoint(f"{path.name} [{sha256[:10]}]", sha256)


def report_state(server, node: JobNode, activity: HostActivity, floor_of) -> dict:
    """A heartbeat with the node's state as the node engine builds it; `floor_of(disks)` gives its free-disk floor."""
    disks = disk_spaces(roots_for(str(node.models)))
    assert disks, "the node's model folders have a disk"
    state = StateReport(activity, disks, None, floor_of(disks)).to_dict()
    client = NodeClient(server.base_url, NodeCredentials.load(node.models.parent, node.server_id), retries=0)
    client.heartbeat(state=state)
    return state


def api_nodes(server) -> dict[str, dict]:
    return {n["id"]: n for n in server.get("/api/v1/servers").json()["servers"]}


def expect_state_shown(row, node: dict) -> None:
    """The row's Doing and Free disk cells say what the API's `state` says."""
    state = node["state"]
    expect(row.locator("td.activity .badge")).to_have_text("busy" if state["busy"] else "idle")
    loaded = row.locator("td.activity .loaded")
    expect(loaded).to_have_text(state["loaded"]["title"])
    expect(loaded).to_have_attribute("title", state["loaded"]["sha256"])
    selected = state["selected"]["title"] if state["selected"] else None
    if selected and selected != state["loaded"]["title"]:
        expect(row.locator("td.activity .sub", has_text="selected:")).to_have_text(f"selected: {selected}")
    else:
        expect(row.locator("td.activity .sub", has_text="selected:")).to_have_count(0)
    if state["modules"]:
        expect(row.locator("td.activity .sub", has_text="modules:")).to_have_text("modules: " + ", ".join(state["modules"]))
    assert state["gpu"] is None  # no GPU here: nothing said of one
    expect(row.locator("td.activity .sub", has_text="GPU")).to_have_count(0)
    free = row.locator("td.free-disk span")
    expect(free).to_have_text(human_size(state["free_bytes_min"]))
    assert state["free_bytes_min"] == min(d["free_bytes"] for d in state["disks"])
    hover = free.get_attribute("title")
    for disk in state["disks"]:
        assert f"{disk['root']}: {human_size(disk['free_bytes'])} free of {human_size(disk['total_bytes'])}" in hover
    below_floor = state["free_bytes_min"] < state["floor_bytes"]
    expect(free).to_have_class("bad" if below_floor else "")


def test_nodes_page_shows_each_nodes_state_and_an_offline_nodes_last_one(browser_page, make_server, tmp_path):  # noqa: F811
    server = make_server()
    page = browser_page
    base = tmp_path / "nodes"
    idle, busy = (JobNode(base, sid, base_url=server.base_url) for sid in ("gpu-idle", "gpu-busy"))
    base_xl = idle.add("Stable-diffusion", "base_xl.safetensors", model_factory.write_checkpoint, base="sdxl")
    vae = idle.add("VAE", "sdxl_vae.safetensors", model_factory.write_vae)
    busy.copy(base_xl, "Stable-diffusion", "base_xl.safetensors")
    dreamer = busy.add("Stable-diffusion", "dreamer.safetensors", model_factory.write_checkpoint, base="sd1")
    for node in (idle, busy):
        node.push()
    # gpu-idle: base_xl resident, a VAE module, idle, a floor its disk affords
    report_state(server, idle, HostActivity(checkpoint(base_xl), checkpoint(base_xl), (vae.name,), busy=False),
                 lambda disks: min(d.free_bytes for d in disks) // 2)
    # gpu-busy: generating with base_xl while dreamer is selected for the next job; its floor is above its free disk
    report_state(server, busy, HostActivity(checkpoint(base_xl), checkpoint(dreamer), (), busy=True),
                 lambda disks: max(d.free_bytes for d in disks) + 2**30)

    page.goto(server.url("/dashboard/nodes"))
    nodes = api_nodes(server)
    assert set(nodes) == {"gpu-idle", "gpu-busy"}
    for server_id, node in nodes.items():
        assert node["online"] is True and node["state"]["current"] is True
        row = page.locator(f"#nodes tr[data-server-id='{server_id}']")
        expect_state_shown(row, node)
        expect(row.locator("td.activity")).not_to_have_class(re.compile(r"\bstale\b"))
        expect(row.locator("td.activity .as-of")).to_have_count(0)
    assert nodes["gpu-busy"]["state"]["busy"] is True and nodes["gpu-idle"]["state"]["busy"] is False
    expect(page.locator("#nodes td.free-disk span.bad")).to_have_count(1)
    expect(page.locator("#nodes tr[data-server-id='gpu-busy'] td.free-disk span.bad")).to_have_count(1)
    # the idle node with the checkpoint loaded ranks first, and an ok dispatch-check on the busy node names it
    candidates = server.post("/api/v1/jobs/availability", json=JOB).json()["model_availability"]["candidates"]
    assert [(c["server_id"], c["reasons"]) for c in candidates] == [
        ("gpu-idle", ["checkpoint loaded", "idle"]), ("gpu-busy", ["checkpoint loaded", "busy"])]
    hint = server.post("/api/v1/servers/gpu-busy/dispatch-check", json=JOB).json()
    assert hint["ok"] is True and [n["server_id"] for n in hint["better_nodes"]] == ["gpu-idle"]

    # gpu-idle falls silent: its last report stays, greyed and dated, and no job check uses it
    set_last_contact(server.db_path, "gpu-idle", SILENT_SINCE)
    with sqlite3.connect(server.db_path, timeout=30) as conn:
        conn.execute("UPDATE node_states SET reported_at = ? WHERE server_id = 'gpu-idle'", [SILENT_SINCE])
    page.goto(server.url("/dashboard/nodes"))
    nodes = api_nodes(server)
    gone = nodes["gpu-idle"]
    assert gone["online"] is False and gone["state"]["current"] is False
    assert gone["state"]["reported_at"] == SILENT_SINCE
    row = page.locator("#nodes tr[data-server-id='gpu-idle']")
    expect(row.locator("td:nth-child(2)")).to_have_text("offline")
    expect_state_shown(row, gone)
    expect(row.locator("td.activity")).to_have_class(re.compile(r"\bstale\b"))
    expect(row.locator("td.free-disk")).to_have_class(re.compile(r"\bstale\b"))
    assert BROWSER_TIMEZONE == "Asia/Kolkata"  # UTC+05:30: the report's moment in the browser's time, no "ago" after years
    expect(row.locator("td.activity .as-of")).to_have_text("as of 2000-01-01 05:30")
    expect(row.locator("td.activity .as-of time")).to_have_attribute("title", gone["state"]["reported_at"] + " UTC")
    live = page.locator("#nodes tr[data-server-id='gpu-busy']")
    expect_state_shown(live, nodes["gpu-busy"])
    expect(live.locator("td.activity")).not_to_have_class(re.compile(r"\bstale\b"))
    scroller = page.locator("#nodes").locator("xpath=..")
    assert scroller.evaluate("el => el.scrollWidth <= el.clientWidth")  # the whole row fits: nothing hidden to scroll to
    screenshot(page, "nodes")
    candidates = server.post("/api/v1/jobs/availability", json=JOB).json()["model_availability"]["candidates"]
    assert [(c["server_id"], c["reasons"]) for c in candidates] == [("gpu-busy", ["checkpoint loaded", "busy"])]
    hint = server.post("/api/v1/servers/gpu-busy/dispatch-check", json=JOB).json()
    assert hint["ok"] is True and hint["better_nodes"] == []
