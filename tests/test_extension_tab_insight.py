"""The tab's insight parts, against the extension's host stand-in (tests/support_forge_host.py) and the real central
server on loopback: this node's recommendations read in the background, one button per orderable place (a fixed set
of slots in the tab's gradio app; the click gives the button's label), a click ordering that copy with the node's own
token (only while the node takes transfers), the transfers' Source column for peer, Civitai and URL sources, and the
"update available" badge on a model the server reports with an update."""
from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import gradio as gr
import model_factory
import pytest
from fastapi import FastAPI
from modelsync.extension.tab import (
    ORDER_SLOTS,
    RECOMMENDATION_HEADERS,
    UPDATE_BADGE,
    TabActions,
    source_text,
    transfer_row,
)
from support_forge_host import extension_host
from support_server import central_server, push_files  # noqa: F401  (fixture)
from test_demand_analytics import age_demand

TOKEN = "forge-insight-token-0123456789abcdef"
NODE = "forge-dst"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
def host(tmp_path):
    with extension_host(tmp_path, ("models/Stable-diffusion",), register=True) as host:
        yield host


def start_node(host, server, **settings) -> TabActions:
    """The extension started in the host; the tab's gradio app built as the host builds it. Returns the actions its
    order buttons call (the same object its load and Refresh events call)."""
    options = {"server_url": server.base_url, "node_id": NODE, "token": TOKEN, "push_on_startup": False,
               "watch_folders": False, "heartbeat_seconds": 0, **settings}
    for key, value in options.items():
        setattr(host.opts, f"modelsync_{key}", value)
    host.settings_ui()
    host.start_app(None, FastAPI())
    [(blocks, _title, _elem_id)] = host.tabs()
    [click, *_] = order_clicks(blocks)
    return click.fn.__self__


def order_clicks(blocks: gr.Blocks) -> list:
    """The click events of the order buttons, slot by slot: each gives the clicked button itself as its first input."""
    functions = blocks.fns.values() if isinstance(blocks.fns, dict) else blocks.fns  # gradio 4 / gradio 3
    return [f for f in functions if f.inputs and isinstance(f.inputs[0], gr.Button) and f.name == "order_recommended"]


def chained_after(blocks: gr.Blocks, first) -> list[str]:
    """The names of the functions run one after another (`.then`) after the event of `first`."""
    functions = list(blocks.fns.values()) if isinstance(blocks.fns, dict) else list(blocks.fns)
    ids = list(blocks.fns) if isinstance(blocks.fns, dict) else list(range(len(functions)))  # gradio 4 / gradio 3
    dependencies = blocks.get_config_file()["dependencies"]
    names, current = [], ids[functions.index(first)]
    while (after := next((i for i, d in enumerate(dependencies) if d.get("trigger_after") == current), None)) is not None:
        names.append(functions[after].name)
        current = ids[after]
    return names


def split(outputs: tuple) -> tuple:
    """insight_outputs: (table, note, buttons, models table, order note)."""
    table, note, *buttons, models, order_note = outputs
    assert len(buttons) == ORDER_SLOTS
    return table, note, buttons, models, order_note


def shown(buttons: list[dict]) -> list[str]:
    return [b["value"] for b in buttons if b["visible"]]


def fleet_with_demand(server, sizes: dict[str, int] | None = None, free_bytes: int = 10_000) -> None:
    """A peer holding the models of `sizes` (stem -> bytes; else "mid" and "huge"); jobs asked for each (the first
    twice); this node reports `free_bytes` free above a 2 kB floor."""
    sizes = sizes or {"mid": 4_000, "huge": 50_000}
    first = server.post("/api/v1/servers/peer/heartbeat", json={})
    peer = {"Authorization": f"Bearer {first.json()['token']}"}
    files = [{"path": f"/m/{stem}.safetensors", "rel_name": f"{stem}.safetensors", "role": "checkpoint", "size": size,
              "mtime_ns": 1, "sha256": sha(stem), "type": "checkpoint"} for stem, size in sizes.items()]
    push_files(server, "peer", files, token=first.json()["token"])
    server.post("/api/v1/servers/peer/heartbeat", json={"files_url": "http://127.0.0.1:9/files"}, headers=peer)
    state = {"disks": [{"root": "/models", "role": "checkpoint", "free_bytes": free_bytes, "total_bytes": 10**8}],
             "floor_bytes": 2_000}
    beat = server.post(f"/api/v1/servers/{NODE}/heartbeat", json={"state": state},
                       headers={"Authorization": f"Bearer {TOKEN}"})
    assert beat.status_code == 200, beat.text
    for stem in [*sizes, next(iter(sizes))]:
        server.post("/api/v1/jobs/availability",
                    json={"job": [{"type": "checkpoint", "sha256": sha(stem)}], "format": "requirements"})
    age_demand(server)  # counted in the last complete hour: the running hour is in no window


def test_the_tab_builds_hidden_order_buttons_each_clicked_with_its_own_label(host, central_server):  # noqa: F811
    start_node(host, central_server)
    [(blocks, _title, _elem_id)] = host.tabs()
    components = [c.get("props", {}) for c in blocks.get_config_file()["components"]]
    slots = [p for p in components if str(p.get("elem_id", "")).startswith("modelsync_order_")]
    assert [p["elem_id"] for p in slots] == [f"modelsync_order_{i}" for i in range(ORDER_SLOTS)]
    assert all(p["visible"] is False and p["interactive"] is False for p in slots)  # until the advice is read
    clicks = order_clicks(blocks)
    buttons = [f.inputs[0] for f in clicks]
    assert [b.elem_id for b in buttons] == [p["elem_id"] for p in slots]  # a click sends its button.s label
    assert all(set(buttons) <= set(f.outputs) for f in clicks)  # and updates every slot
    # after a click: the transfers followed until they end, then the models table (the new files) and the advice again
    assert all(chained_after(blocks, click) == ["follow_transfers", "refresh_table", "after_order"] for click in clicks)


def test_a_button_per_place_and_a_click_orders_that_copy_for_this_node(host, central_server):  # noqa: F811
    fleet_with_demand(central_server)
    actions = start_node(host, central_server)
    reading, done = list(actions.follow_insight())
    assert reading[1] == "Reading this node's recommendations..."  # shown before the read ends
    table, note, buttons, _models, order_note = split(done)
    assert table["headers"] == RECOMMENDATION_HEADERS
    assert [row[:2] for row in table["data"]] == [["place", "mid.safetensors"]]  # huge does not fit above the floor
    assert table["data"][0][4] == "node peer"
    assert note.startswith("1 model(s) to place here") and "more to place" not in note
    label = "Copy mid.safetensors here from node peer"
    assert shown(buttons) == [label] and buttons[0]["interactive"] is True
    assert [b["visible"] for b in buttons[1:]] == [False] * (ORDER_SLOTS - 1)

    ordering, done = list(actions.order_recommended(label))  # what the click on that button runs, with its label
    assert ordering[1] == "Reading this node's recommendations..."  # shown while the order is under way
    table, _note, buttons, _models, order_note = split(done)
    assert order_note.startswith("Transfer ") and order_note.endswith(" of mid.safetensors from node peer: queued.")
    listed = central_server.get("/api/v1/transfers", params={"server_id": NODE}).json()["transfers"]
    assert [t["sha256"] for t in listed] == [sha("mid")]  # ordered with the node's own token (403 otherwise)
    assert "(transfer " in table["data"][0][4]  # the place now shows its transfer, and no button
    assert shown(buttons) == []
    *_, after = list(actions.after_order())  # what the click's chain runs once the copies ended
    assert split(after)[4] == ""  # the order's note has gone: the advice shows where that transfer is


def test_more_places_than_buttons_the_note_sends_the_rest_to_the_dashboard(host, central_server):  # noqa: F811
    stems = [f"style{i:02d}" for i in range(ORDER_SLOTS + 2)]
    fleet_with_demand(central_server, {stem: 1_000 for stem in stems}, free_bytes=10**7)
    actions = start_node(host, central_server)
    *_, done = list(actions.follow_insight())
    table, note, buttons, _models, _order = split(done)
    places = [row[1] for row in table["data"] if row[0] == "place"]
    assert sorted(places) == [f"{stem}.safetensors" for stem in stems]
    assert shown(buttons) == [f"Copy {name} here from node peer" for name in places[:ORDER_SLOTS]]  # table order
    assert "2 more to place than the buttons below show" in note and "/dashboard/insights" in note

    third = buttons[2]["value"]
    *_, done = list(actions.order_recommended(third))
    _table, note, buttons, _models, order_note = split(done)
    ordered = places[2]
    assert order_note.endswith(f" of {ordered} from node peer: queued.")
    listed = central_server.get("/api/v1/transfers", params={"server_id": NODE}).json()["transfers"]
    assert [t["sha256"] for t in listed] == [sha(ordered.removesuffix(".safetensors"))]
    assert third not in shown(buttons) and len(shown(buttons)) == ORDER_SLOTS and "1 more to place" in note


def test_no_order_while_the_node_takes_no_transfers(host, central_server):  # noqa: F811
    fleet_with_demand(central_server)
    actions = start_node(host, central_server, allow_transfers=False)
    *_, done = list(actions.follow_insight())
    _table, note, buttons, _models, _order = split(done)
    label = "Copy mid.safetensors here from node peer"
    assert shown(buttons) == [label] and buttons[0]["interactive"] is False  # shown, not clickable
    assert "Transfers to this node are off" in note
    [done] = list(actions.order_recommended(label))
    _table, _note, buttons, _models, order_note = split(done)
    assert order_note.startswith("Transfers to this node are off") and buttons[0]["interactive"] is False
    *_, after = list(actions.after_order())  # what the click's chain runs last: the reason why stays
    assert split(after)[4].startswith("Transfers to this node are off")
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
    *_, done = list(actions.follow_insight())
    _table, _note, _buttons, models, _order = split(done)
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
