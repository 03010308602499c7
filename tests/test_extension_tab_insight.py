"""The tab's insight parts, against the extension's host stand-in (tests/support_forge_host.py) and the real central
server on loopback: this node's recommendations read in the background, a recommended copy ordered with the node's
own token (only while the node takes transfers), the transfers' Source column for peer, Civitai and URL sources, and
the "update available" badge on a model the server reports with an update."""
from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import model_factory
import pytest
from fastapi import FastAPI
from support_forge_host import forge_host
from support_server import central_server, push_files  # noqa: F401  (fixture)
from test_demand_analytics import age_demand

from modelsync.extension import forge_callbacks
from modelsync.extension.tab import RECOMMENDATION_HEADERS, UPDATE_BADGE, TabActions, source_text, transfer_row

TOKEN = "forge-insight-token-0123456789abcdef"
NODE = "forge-dst"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def host(tmp_path):
    forge_callbacks._service = None
    with forge_host(tmp_path) as host:
        webui = Path(host.modules["modules.paths"].data_path)
        (webui / "models" / "Stable-diffusion").mkdir(parents=True, exist_ok=True)
        forge_callbacks.register()
        yield host
        if forge_callbacks._service is not None:
            forge_callbacks._service.stop(10)
    forge_callbacks._service = None


def start_node(host, server, **settings) -> TabActions:
    options = {"server_url": server.base_url, "node_id": NODE, "token": TOKEN, "push_on_startup": False,
               "watch_folders": False, "heartbeat_seconds": 0, **settings}
    for key, value in options.items():
        setattr(host.opts, f"modelsync_{key}", value)
    host.settings_ui()
    host.start_app(None, FastAPI())
    return TabActions(forge_callbacks.service())


def fleet_with_demand(server) -> None:
    """A peer holding "mid" and "huge"; jobs asked for both; this node reports 10 kB free above a 2 kB floor."""
    first = server.post("/api/v1/servers/peer/heartbeat", json={})
    peer = {"Authorization": f"Bearer {first.json()['token']}"}
    files = [{"path": f"/m/{stem}.safetensors", "rel_name": f"{stem}.safetensors", "role": "checkpoint", "size": size,
              "mtime_ns": 1, "sha256": sha(stem), "type": "checkpoint"} for stem, size in (("mid", 4_000), ("huge", 50_000))]
    push_files(server, "peer", files, token=first.json()["token"])
    server.post("/api/v1/servers/peer/heartbeat", json={"files_url": "http://127.0.0.1:9/files"}, headers=peer)
    state = {"disks": [{"root": "/models", "role": "checkpoint", "free_bytes": 10_000, "total_bytes": 10**6}],
             "floor_bytes": 2_000}
    beat = server.post(f"/api/v1/servers/{NODE}/heartbeat", json={"state": state},
                       headers={"Authorization": f"Bearer {TOKEN}"})
    assert beat.status_code == 200, beat.text
    for stem in ("mid", "huge", "mid"):
        server.post("/api/v1/jobs/availability",
                    json={"job": [{"type": "checkpoint", "sha256": sha(stem)}], "format": "requirements"})
    age_demand(server)  # counted in the last complete hour: the running hour is in no window


def test_the_tab_shows_recommendations_and_orders_a_copy_for_this_node(host, central_server):  # noqa: F811
    fleet_with_demand(central_server)
    actions = start_node(host, central_server)
    reading, (table, note, choices, button, _models, order_note) = list(actions.follow_insight())
    assert reading[1] == "Reading this node's recommendations..."  # shown before the read ends
    assert table["headers"] == RECOMMENDATION_HEADERS
    assert [row[:2] for row in table["data"]] == [["place", "mid.safetensors"]]  # huge does not fit above the floor
    assert table["data"][0][4] == "node peer"
    assert note.startswith("1 model(s) to place here")
    assert choices["choices"] and button["interactive"] is True
    label = "mid.safetensors from node peer"
    assert [c if isinstance(c, str) else c[0] for c in choices["choices"]] == [label]

    ordering, (table, _note, choices, button, _models, order_note) = list(actions.order_recommended(label))
    assert ordering[1] == "Reading this node's recommendations..."  # shown while the order is under way
    assert order_note.startswith("Transfer ") and order_note.endswith(": queued.")
    listed = central_server.get("/api/v1/transfers", params={"server_id": NODE}).json()["transfers"]
    assert [t["sha256"] for t in listed] == [sha("mid")]  # ordered with the node's own token (403 otherwise)
    assert "(transfer " in table["data"][0][4]  # the place now shows its transfer
    assert choices["choices"] == [] and button["interactive"] is False


def test_no_order_while_the_node_takes_no_transfers(host, central_server):  # noqa: F811
    fleet_with_demand(central_server)
    actions = start_node(host, central_server, allow_transfers=False)
    *_, (_table, note, _choices, button, _models, _order) = list(actions.follow_insight())
    assert button["interactive"] is False and "Transfers to this node are off" in note
    [(_table, _note, _choices, _button, _models, order_note)] = list(
        actions.order_recommended("mid.safetensors from node peer"))
    assert order_note.startswith("Transfers to this node are off")
    assert central_server.get("/api/v1/transfers", params={"server_id": NODE}).json()["transfers"] == []


def test_the_update_badge_marks_a_model_the_server_reports_with_an_update(host, central_server):  # noqa: F811
    webui = Path(host.modules["modules.paths"].data_path)
    model_factory.write_checkpoint(webui / "models" / "Stable-diffusion" / "base.safetensors")
    model_factory.write_checkpoint(webui / "models" / "Stable-diffusion" / "other.safetensors", base="sdxl")
    actions = start_node(host, central_server)
    actions.service.scan_and_push(True)
    digest = hashlib.sha256((webui / "models" / "Stable-diffusion" / "base.safetensors").read_bytes()).hexdigest()
    with sqlite3.connect(central_server.db_path) as conn:
        model_id = conn.execute("SELECT id FROM models WHERE hash_sha256 = ?", [digest]).fetchone()[0]
        conn.execute("UPDATE models SET civitai_id = 10, civitai_version_id = 100 WHERE id = ?", [model_id])
        conn.execute("""INSERT INTO civitai_updates (model_id, civitai_model_id, held_version_id, version_id, name,
                                                     download_url, checked_at)
                        VALUES (?, 10, 100, 200, 'v2', 'https://civitai.com/models/10?modelVersionId=200',
                                '2026-01-01T00:00:00Z')""", [model_id])
    actions.refresh_table()
    *_, (_table, _note, _choices, _button, models, _order) = list(actions.follow_insight())
    badged = [row[0] for row in models["data"] if UPDATE_BADGE in row[0]]
    assert len(badged) == 1 and badged[0].startswith("base")
    assert any(row[0].startswith("other") and UPDATE_BADGE not in row[0] for row in models["data"])


def test_the_transfers_source_column_names_peer_civitai_and_url_sources():
    assert source_text({"kind": "peer", "server_id": "gpu-02"}) == "gpu-02"
    civitai = {"kind": "civitai", "server_id": None, "url": None,
               "civitai": {"model_id": 1, "model_name": "Juggernaut XL", "version_id": 2, "version_name": "v9",
                           "file_id": 3, "file_name": "jugg.safetensors"}}
    assert source_text(civitai) == "Civitai: Juggernaut XL / v9"
    assert source_text({"kind": "url", "url": "https://example.org/files/x.safetensors"}) == "example.org/files/x.safetensors"
    row = transfer_row({"sha256": "a" * 64, "state": "queued", "source": civitai, "dest_path": "/m/jugg.safetensors"}, {})
    assert row[0] == "jugg.safetensors" and row[5] == "Civitai: Juggernaut XL / v9"
