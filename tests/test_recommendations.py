"""A node's recommendations from the real server: models to place (most requested first, each fitting the free disk
of its root above the node's floor, counting the ones listed before it, with the source a transfer would use) and
models to drop (cold, held by two other nodes); who may read them; a node ordering a recommended copy for itself."""
from __future__ import annotations

import hashlib
import sqlite3
from datetime import datetime, timedelta, timezone

import pytest
from support_server import make_server, push_files  # noqa: F401  (fixture)
from test_demand_analytics import age_demand

FREE, FLOOR = 10_000, 3_000
TIME = "%Y-%m-%dT%H:%M:%SZ"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def entry(stem: str, size: int, **metadata) -> dict:
    return {"path": f"/models/Stable-diffusion/{stem}.safetensors", "rel_name": f"{stem}.safetensors",
            "role": "checkpoint", "size": size, "mtime_ns": 1, "sha256": sha(stem), "type": "checkpoint",
            "metadata": metadata, "field_sources": {k: "a1111" for k in metadata}}


def stem(model: dict) -> str:
    return model["filename"].removesuffix(".safetensors")


class Fleet:
    def __init__(self, server):
        self.server = server
        self.tokens: dict[str, str] = {}

    def node(self, server_id: str, files: list[dict], state: dict | None = None, files_url: str | None = None) -> None:
        first = self.server.post(f"/api/v1/servers/{server_id}/heartbeat", json={})
        assert first.status_code == 200, first.text
        self.tokens[server_id] = first.json()["token"]
        push_files(self.server, server_id, files, token=self.tokens[server_id])
        body: dict = {}
        if state is not None:
            body["state"] = state
        if files_url is not None:
            body["files_url"] = files_url
        if body:
            beat = self.server.post(f"/api/v1/servers/{server_id}/heartbeat", json=body, headers=self.auth(server_id))
            assert beat.status_code == 200, beat.text

    def auth(self, server_id: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[server_id]}"}

    def ask(self, stem: str, times: int, headers: dict | None = None, kind: str = "checkpoint") -> None:
        """Pre-submission checks naming the model, counted in the last complete hour (the running one is in no
        window)."""
        for _ in range(times):
            answer = self.server.post("/api/v1/jobs/availability", headers=headers or {},
                                      json={"job": [{"type": kind, "sha256": sha(stem)}], "format": "requirements"})
            assert answer.status_code == 200, answer.text
        age_demand(self.server)

    def sql(self, statement: str, params: list) -> None:
        with sqlite3.connect(self.server.db_path) as conn:
            conn.execute(statement, params)


DISK = {"disks": [{"root": "/models/Stable-diffusion", "role": "checkpoint", "free_bytes": FREE, "total_bytes": 100_000}],
        "floor_bytes": FLOOR}


@pytest.fixture
def fleet(make_server):
    f = Fleet(make_server())
    f.node("dest", [entry("owned", 100), entry("stale", 900), entry("lonely", 800)], state=DISK)
    f.node("peer", [entry("big", 8_000), entry("mid", 4_000), entry("small", 2_500), entry("owned", 100),
                    entry("stale", 900), entry("lonely", 800)], files_url="http://127.0.0.1:9/files")
    f.node("old", [entry("civ", 400, civitai_version_id=777, civitai_model_name="Civ model"), entry("nosrc", 100),
                   entry("stale", 900)])
    f.sql("UPDATE servers SET last_sync = '2000-01-01T00:00:00Z', last_heartbeat = '2000-01-01T00:00:00Z' "
          "WHERE id = 'old'", [])
    f.node("bare", [entry("other", 10)])  # reports no disk
    return f


def test_place_respects_free_disk_and_floor_in_demand_order_with_sources(fleet):
    for name, times in (("big", 5), ("mid", 4), ("small", 3), ("civ", 2), ("nosrc", 1), ("owned", 6)):
        fleet.ask(name, times)
    answer = fleet.server.get("/api/v1/servers/dest/recommendations")
    assert answer.status_code == 200, answer.text
    rec = answer.json()
    assert (rec["disk_known"], rec["free_bytes"], rec["floor_bytes"]) == (True, FREE, FLOOR)
    place = [(stem(p["model"]), p["requests"], p["source"]["kind"], p["free_after_bytes"]) for p in rec["place"]]
    # usable: 10,000 - 3,000 floor = 7,000. big (8,000) never fits; mid 4,000 -> 6,000 free; small 2,500 -> 3,500;
    # civ 400 -> 3,100; nosrc 100 -> 3,000 (exactly the floor). owned: already held.
    assert place == [("mid", 4, "peer", 6_000), ("small", 3, "peer", 3_500), ("civ", 2, "civitai", 3_100),
                     ("nosrc", 1, "none", 3_000)]
    assert rec["skipped_for_space"] == 1
    assert rec["place"][0]["source"] == {"kind": "peer", "server_id": "peer"}
    assert rec["place"][2]["source"] == {"kind": "civitai", "version_id": 777, "model_name": "Civ model",
                                         "version_name": None}
    assert "asked for 4 time(s)" in rec["place"][0]["reason"]
    assert all(p["free_after_bytes"] >= FLOOR for p in rec["place"])
    assert rec["drop"] == [] and rec["cold_known"] is False  # demand recorded for minutes: nothing is cold yet

    bare = fleet.server.get("/api/v1/servers/bare/recommendations").json()
    assert (bare["disk_known"], bare["place"]) == (False, [])  # no free disk reported: nothing is placed
    assert fleet.server.get("/api/v1/servers/nobody/recommendations").status_code == 404
    assert fleet.server.get("/api/v1/servers/bad%20id/recommendations").status_code == 400


def test_a_lower_floor_makes_room_and_a_full_disk_gets_nothing(fleet):
    fleet.ask("big", 2)
    assert fleet.server.get("/api/v1/servers/dest/recommendations").json()["place"] == []  # 8,000 > 7,000
    roomy = {**DISK, "floor_bytes": 1_000}
    fleet.server.post("/api/v1/servers/dest/heartbeat", json={"state": roomy}, headers=fleet.auth("dest"))
    assert [stem(p["model"]) for p in fleet.server.get("/api/v1/servers/dest/recommendations").json()["place"]] == ["big"]


def test_drop_lists_cold_models_held_by_two_other_nodes(fleet):
    fleet.ask("owned", 1)
    fleet.server.get("/api/v1/analytics/fleet")  # flushes the counts, so the recording has begun
    began = (datetime.now(timezone.utc) - timedelta(days=31)).strftime(TIME)
    fleet.sql("UPDATE demand_recording SET started_at = ?", [began])
    rec = fleet.server.get("/api/v1/servers/dest/recommendations").json()
    assert rec["cold_known"] is True
    # stale: cold, also on peer and old; lonely: cold but on one other node only; owned: asked for
    assert [(stem(d["model"]), d["bytes"], d["other_holders"]) for d in rec["drop"]] == [("stale", 900, ["old", "peer"])]
    fleet_answer = fleet.server.get("/api/v1/analytics/fleet").json()
    cold = {stem(c["model"]) for c in fleet_answer["cold"]["models"]}
    assert {"stale", "lonely", "big", "mid", "small"} <= cold and "owned" not in cold
    reclaim = {n["server_id"]: n["bytes"] for n in fleet_answer["cold"]["nodes"]}
    assert reclaim["dest"] == 900 + 800
    assert {stem(s["model"]) for s in fleet_answer["single_holder"]} >= {"big", "mid", "small", "civ", "nosrc"}
    disks = {n["server_id"]: n for n in fleet_answer["nodes"]}
    assert (disks["dest"]["free_bytes"], disks["dest"]["floor_bytes"], disks["bare"]["free_bytes"]) == (FREE, FLOOR, None)


def test_a_node_orders_a_recommended_copy_for_itself(fleet):
    fleet.ask("mid", 1)
    mid = fleet.server.get("/api/v1/servers/dest/recommendations", headers=fleet.auth("dest")).json()["place"][0]
    ordered = fleet.server.post("/api/v1/transfers", json={"server_id": "dest", "model_id": mid["model"]["id"]},
                                headers=fleet.auth("dest"))
    assert ordered.status_code == 201, ordered.text
    again = fleet.server.get("/api/v1/servers/dest/recommendations").json()["place"][0]
    assert again["transfer"] == {"id": ordered.json()["id"], "state": "queued"}
    other = fleet.server.post("/api/v1/transfers", json={"server_id": "bare", "model_id": mid["model"]["id"]},
                              headers=fleet.auth("dest"))
    assert other.status_code == 403  # a node orders only for itself


def test_with_a_queue_token_only_the_queue_admin_or_the_node_itself_reads(make_server):
    server = make_server(queue_token="q" * 32)
    f = Fleet(server)
    f.node("dest", [entry("owned", 100)], state=DISK)
    f.node("peer", [entry("mid", 4_000)])
    queue = {"Authorization": "Bearer " + "q" * 32}
    f.ask("mid", 1, headers=queue)
    assert server.get("/api/v1/servers/dest/recommendations").status_code == 401
    assert server.get("/api/v1/servers/dest/recommendations", headers=f.auth("peer")).status_code == 403
    assert server.get("/api/v1/servers/dest/recommendations", headers=f.auth("dest")).status_code == 200
    assert server.get("/api/v1/servers/dest/recommendations", headers=queue).status_code == 200
    assert server.get("/api/v1/servers/dest/recommendations", headers=server.admin_headers).status_code == 200
    for path in ("/api/v1/analytics/demand", "/api/v1/analytics/fleet"):
        assert server.get(path).status_code == 401
        assert server.get(path, headers=f.auth("dest")).status_code == 403
        assert server.get(path, headers=queue).status_code == 200


@pytest.mark.parametrize("device", [7, None], ids=["same-device-id", "same-size-no-device"])
def test_a_copy_takes_its_space_from_every_root_on_the_same_filesystem(make_server, device):
    """Two model roots on one filesystem (the same device id, or without one the same total and free bytes): a copy
    placed under one leaves less room under the other too."""
    f = Fleet(make_server())
    shared = [{"root": "/models/Stable-diffusion", "role": "checkpoint", "free_bytes": FREE, "total_bytes": 100_000,
               "device": device},
              {"root": "/models/Lora", "role": "lora", "free_bytes": FREE, "total_bytes": 100_000, "device": device}]
    f.node("dest", [], state={"disks": shared, "floor_bytes": FLOOR})
    lora = {**entry("style", 4_000), "path": "/models/Lora/style.safetensors", "role": "lora", "type": "lora"}
    f.node("peer", [entry("mid", 4_000), lora], files_url="http://127.0.0.1:9/files")
    f.ask("mid", 2)
    f.ask("style", 1, kind="lora")
    rec = f.server.get("/api/v1/servers/dest/recommendations").json()
    # mid: 10,000 -> 6,000 on the shared filesystem; style would leave 2,000 < the 3,000 floor
    assert [(stem(p["model"]), p["root"], p["free_after_bytes"]) for p in rec["place"]] == [
        ("mid", "/models/Stable-diffusion", 6_000)]
    assert rec["skipped_for_space"] == 1

    apart = [{**shared[0], "device": 1}, {**shared[1], "device": 2}]  # two filesystems: each keeps its own room
    f.server.post("/api/v1/servers/dest/heartbeat", json={"state": {"disks": apart, "floor_bytes": FLOOR}},
                  headers=f.auth("dest"))
    rec = f.server.get("/api/v1/servers/dest/recommendations").json()
    assert [(stem(p["model"]), p["root"], p["free_after_bytes"]) for p in rec["place"]] == [
        ("mid", "/models/Stable-diffusion", 6_000), ("style", "/models/Lora", 6_000)]
