"""Every webhook event fired by its real condition, on a real central server (uvicorn), received by a loopback
receiver that verifies each signature with the `standardwebhooks` package: a node going silent with no API traffic
at all and coming back, a disk below the node's floor in a heartbeat's state, the last copy of a used model removed
by a sync, a job asking for a model no node has (once per hour), transfers completed and failed through the progress
API, a newer Civitai version found by the update checks. A restart of the central judges nobody offline before its
nodes could reach it. A tick of the clock that finds nothing new takes no write lock."""
from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import model_factory
from support_civitai import civitai_stub  # noqa: F401  (fixture)
import test_transfer_api as transfer_api
from support_jobs import sha256_of
from support_server import RunningServer, make_server, push_files, run_server, wait_for  # noqa: F401  (fixture)
from support_webhooks import Receiver, create_webhook, deliveries, webhook_receiver

from modelsync.server.civitai_updates import UpdateChecks
from modelsync.server.civitai_worker import CivitaiRate
from modelsync.server.queries import Liveness
from modelsync.server.registry import Registry, iso, iso_ago, utc_now
from modelsync.server.webhooks import store
from modelsync.server.webhooks.clock import judge
from modelsync.shared.catalog import migrate, open_catalog, write_transaction
from modelsync.shared.civitai.client import CivitaiClient

GIB = 1024**3
CLOCK = {"webhook_retry_delays": (0.2, 0.4), "webhook_clock_seconds": 0.2}


class Node(transfer_api.Node):
    """The transfer API tests' node; its heartbeats and reports must be taken."""

    def heartbeat(self, **body: Any) -> None:
        r = super().heartbeat(**body)
        assert r.status_code == 200, r.text

    def report(self, transfer_id: int, state: str, **fields: Any) -> dict[str, Any]:
        r = super().report(transfer_id, state, **fields)
        assert r.status_code == 200, r.text
        return r.json()


def of_type(receiver: Receiver, event_type: str) -> list:
    return [r for r in receiver.delivered() if r.type == event_type]


def test_a_node_going_silent_is_judged_offline_by_the_clock_and_online_when_heard_again(make_server, tmp_path):
    server = make_server(offline_after_seconds=5.0, **CLOCK)
    with webhook_receiver() as receiver:
        create_webhook(server, receiver, ["node.offline", "node.online"])
        node = Node(server, tmp_path, "node-a")
        node.heartbeat(display_name="Node A")
        with heartbeating(node):  # until the clock has seen it online (first sight: no event), however loaded
            wait_for(lambda: _watched(server) == {"node-a": 1})
        # no request at all from here on: only the server's clock can tell
        offline = receiver.wait_for(lambda e: e.type == "node.offline")
        assert offline.data["server_id"] == "node-a" and offline.data["display_name"] == "Node A"
        assert offline.data["last_contact"] and offline.data["offline_after_seconds"] == 5.0
        node.heartbeat()
        online = receiver.wait_for(lambda e: e.type == "node.online")
        assert online.data["server_id"] == "node-a"
        assert [r.type for r in receiver.delivered()] == ["node.offline", "node.online"]
        assert all(r.verified for r in receiver.requests)


OFFLINE_AFTER = 10.0  # the steady node must be heard within this of the restart: room for a slow start


def test_a_restarted_central_judges_no_node_offline_before_it_could_be_heard(tmp_path):
    data = tmp_path / "central"
    with webhook_receiver() as receiver:
        with run_server(data, offline_after_seconds=OFFLINE_AFTER, **CLOCK) as server:
            create_webhook(server, receiver, ["node.offline"])
            steady, silent = Node(server, tmp_path, "steady"), Node(server, tmp_path, "silent")
            steady.heartbeat()
            silent.heartbeat()
            wait_for(lambda: _watched(server) == {"steady": 1, "silent": 1})
        # down longer than offline_after: every node looks silent
        wait_for(lambda: _silent_for(data, OFFLINE_AFTER + 1), timeout=OFFLINE_AFTER + 20)
        with run_server(data, offline_after_seconds=OFFLINE_AFTER, **CLOCK) as server:
            steady.server = server
            with heartbeating(steady):  # heard again soon after the start, as a running node is
                gone = receiver.wait_for(lambda e: e.type == "node.offline")  # the clock judges on ...
                assert gone.data["server_id"] == "silent"  # ... and only the node that stayed silent is offline
            assert [r.data["server_id"] for r in of_type(receiver, "node.offline")] == ["silent"]


@contextlib.contextmanager
def heartbeating(node: Node, every: float = 0.3) -> Iterator[None]:
    stop = threading.Event()

    def beat() -> None:
        while not stop.is_set():
            node.heartbeat()
            stop.wait(every)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(10)


def _watched(server: RunningServer) -> dict[str, int]:
    with sqlite3.connect(server.db_path) as conn:
        return dict(conn.execute("SELECT server_id, online FROM webhook_node_watch"))


def _silent_for(data: Path, seconds: float) -> bool:
    with sqlite3.connect(data / "registry.db") as conn:
        last = conn.execute("SELECT MAX(MAX(COALESCE(last_sync, ''), COALESCE(last_heartbeat, ''))) FROM servers").fetchone()[0]
    return last < iso_ago(seconds)


def test_a_disk_below_the_nodes_floor_fires_once(make_server, tmp_path):
    server = make_server(**CLOCK)
    with webhook_receiver() as receiver:
        create_webhook(server, receiver, ["node.disk_low"])
        node = Node(server, tmp_path, "node-a")
        disk = {"root": "/models", "role": None, "total_bytes": 100 * GIB}
        node.heartbeat(state={"disks": [{**disk, "free_bytes": 50 * GIB}], "floor_bytes": 2 * GIB})
        node.heartbeat(state={"disks": [{**disk, "free_bytes": GIB}], "floor_bytes": 2 * GIB})
        low = receiver.wait_for(lambda e: e.type == "node.disk_low")
        assert low.data["server_id"] == "node-a" and low.data["floor_bytes"] == 2 * GIB
        assert low.data["free_bytes"] == GIB and [d["root"] for d in low.data["disks"]] == ["/models"]
        node.heartbeat(state={"disks": [{**disk, "free_bytes": GIB // 2}], "floor_bytes": 2 * GIB})  # still low
        node.heartbeat(state={"disks": [{**disk, "free_bytes": 10 * GIB}], "floor_bytes": 2 * GIB})  # recovered
        wait_for(lambda: _disk_low(server) == 0)
        assert _queued(server, "node.disk_low") == 1  # the heartbeat still below the floor fired nothing more
        node.heartbeat(state={"disks": [{**disk, "free_bytes": GIB}], "floor_bytes": 2 * GIB})  # low again
        wait_for(lambda: len(of_type(receiver, "node.disk_low")) == 2)
        assert _queued(server, "node.disk_low") == 2


def _queued(server: RunningServer, event_type: str) -> int:
    """Events of that type in the outbox, delivered or not."""
    with sqlite3.connect(server.db_path) as conn:
        return conn.execute("SELECT COUNT(*) FROM webhook_deliveries WHERE event_type = ?", [event_type]).fetchone()[0]


def _disk_low(server: RunningServer) -> int:
    with sqlite3.connect(server.db_path) as conn:
        return conn.execute("SELECT disk_low FROM webhook_node_watch WHERE server_id = 'node-a'").fetchone()[0]


def test_the_last_copy_of_a_used_model_removed_by_a_sync(make_server, tmp_path):
    server = make_server(**CLOCK)
    with webhook_receiver() as receiver:
        create_webhook(server, receiver, ["model.last_copy_lost"])
        a, b = Node(server, tmp_path, "node-a"), Node(server, tmp_path, "node-b")
        checkpoint = a.job.add("Stable-diffusion", "keep.safetensors", model_factory.write_checkpoint)
        b.job.copy(checkpoint, "Stable-diffusion", "keep.safetensors")
        for node in (a, b):  # a folder left empty would look like an unmounted share: its files kept
            node.job.add("Stable-diffusion", "stays.safetensors", model_factory.write_checkpoint, base="sdxl")
        a.push()
        b.push()
        wait_for(lambda: _watched(server) == {"node-a": 1, "node-b": 1})  # the clock has judged the fleet once
        job = {"job": {"prompt": "x", "override_settings": {"sd_model_checkpoint": "keep.safetensors"}}}
        r = server.post("/api/v1/servers/node-a/dispatch-check", json=job)
        assert r.status_code == 200 and r.json()["ok"], r.text
        sha256 = sha256_of(checkpoint)
        wait_for(lambda: _last_used(server, sha256))  # the approved dispatch recorded its use
        checkpoint.unlink()
        a.push()  # node-b still holds it: not the last copy
        (b.job.models / "Stable-diffusion" / "keep.safetensors").unlink()
        b.push()
        lost = receiver.wait_for(lambda e: e.type == "model.last_copy_lost")
        assert lost.data["model"]["sha256"] == sha256 and lost.data["offline_holders"] == []
        assert lost.data["last_used"]
        assert len(of_type(receiver, "model.last_copy_lost")) == 1


def _last_used(server: RunningServer, sha256: str) -> str | None:
    with sqlite3.connect(server.db_path) as conn:
        return conn.execute("SELECT last_used FROM models WHERE hash_sha256 = ?", [sha256]).fetchone()[0]


def test_a_job_asking_for_a_model_no_node_has_is_reported_once_an_hour(make_server):
    server = make_server(**CLOCK)
    with webhook_receiver() as receiver:
        create_webhook(server, receiver, ["job.blocked"])
        job = {"job": {"prompt": "<lora:nowhere:0.8>", "override_settings": {"sd_model_checkpoint": "missing.safetensors"}}}
        for _ in range(3):
            assert server.post("/api/v1/jobs/availability", json=job).status_code == 200
        wait_for(lambda: len(of_type(receiver, "job.blocked")) == 2)
        # all three counted for the most-wanted list, the event sent once for each reference
        wait_for(lambda: {w["requests"] for w in server.get("/api/v1/models/wanted").json()["wanted"]} == {3})
        assert sorted((e.data["kind"], e.data["reference"]) for e in of_type(receiver, "job.blocked")) == [
            ("checkpoint", "missing.safetensors"), ("lora", "<lora:nowhere:0.8>")]
        look = {**job, "record": False}  # a look only (the dashboard's job check) reports nothing
        assert server.post("/api/v1/jobs/availability", json={**look, "job": {"prompt": "<lora:other:1>"}}).status_code == 200
        assert server.post("/api/v1/jobs/availability", json={"job": {"prompt": "<lora:third:1>"}}).status_code == 200
        receiver.wait_for(lambda e: e.type == "job.blocked" and e.data["reference"] == "<lora:third:1>")
        # delivered in order: had the first three checks sent more, they would have come before this one
        assert [e.data["reference"] for e in of_type(receiver, "job.blocked")][2:] == ["<lora:third:1>"]


def test_transfers_completed_and_failed_through_the_progress_api(make_server, tmp_path):
    server = make_server(**CLOCK)
    with webhook_receiver() as receiver:
        create_webhook(server, receiver, ["transfer.completed", "transfer.failed"])
        a = Node(server, tmp_path, "node-a", "http://127.0.0.1:17001")
        b = Node(server, tmp_path, "node-b", "http://127.0.0.1:17002")
        lora = a.job.add("Lora", "ink.safetensors", base="sdxl")
        checkpoint = a.job.add("Stable-diffusion", "base.safetensors", model_factory.write_checkpoint, base="sdxl")
        a.push()
        b.push()
        ordered = {}
        for name, path in (("lora", lora), ("checkpoint", checkpoint)):
            r = server.post("/api/v1/transfers", json={"server_id": "node-b", "sha256": sha256_of(path)},
                            headers=server.admin_headers)
            assert r.status_code == 201, r.text
            ordered[name] = r.json()
        done = ordered["lora"]
        b.report(done["id"], "running", bytes_done=10, source_server_id="node-a")
        b.report(done["id"], "done", bytes_done=lora.stat().st_size, source_server_id="node-a")
        failed = ordered["checkpoint"]
        b.report(failed["id"], "failed", bytes_done=0, reason="disk_full", error="no space left on the disk")
        completed = receiver.wait_for(lambda e: e.type == "transfer.completed")
        assert completed.data["transfer"]["id"] == done["id"] and completed.data["transfer"]["state"] == "done"
        assert completed.data["transfer"]["server_id"] == "node-b"
        lost = receiver.wait_for(lambda e: e.type == "transfer.failed")
        assert lost.data["transfer"]["id"] == failed["id"] and lost.data["transfer"]["reason"] == "disk_full"
        assert lost.data["reason_text"] == "no space left on the disk"
        assert [e.type for e in receiver.delivered()] == ["transfer.completed", "transfer.failed"]



def test_job_blocked_is_noted_only_while_an_endpoint_wants_it(make_server):
    server = make_server(**CLOCK)
    job = {"job": {"prompt": "x", "override_settings": {"sd_model_checkpoint": "unheard.safetensors"}}}
    assert server.post("/api/v1/jobs/availability", json=job).status_code == 200
    wait_for(lambda: _wanted(server) == {"unheard.safetensors": 1})  # the check's bookkeeping is done ...
    assert _blocked_refs(server) == []  # ... and nothing was noted as sent: nobody listens
    with webhook_receiver() as receiver:
        create_webhook(server, receiver, ["job.blocked"])
        assert server.post("/api/v1/jobs/availability", json=job).status_code == 200
        event = receiver.wait_for(lambda e: e.type == "job.blocked")  # at once, not an hour later
        assert event.data["reference"] == "unheard.safetensors"
        with sqlite3.connect(server.db_path) as conn:  # a note older than the quiet hour
            conn.execute("INSERT INTO webhook_blocked_refs VALUES ('checkpoint', 'old', ?)", [iso_ago(2 * 3600)])
        other = {"job": {"prompt": "x", "override_settings": {"sd_model_checkpoint": "other.safetensors"}}}
        assert server.post("/api/v1/jobs/availability", json=other).status_code == 200
        receiver.wait_for(lambda e: e.type == "job.blocked" and e.data["reference"] == "other.safetensors")
        assert sorted(key for _, key in _blocked_refs(server)) == sorted(
            e.data["reference_key"] for e in of_type(receiver, "job.blocked"))  # the expired note is gone


def _wanted(server: RunningServer) -> dict[str, int]:
    return {w["reference"]: w["requests"] for w in server.get("/api/v1/models/wanted").json()["wanted"]}


def _blocked_refs(server: RunningServer) -> list[tuple[str, str]]:
    with sqlite3.connect(server.db_path) as conn:
        return conn.execute("SELECT kind, reference_key FROM webhook_blocked_refs ORDER BY reference_key").fetchall()


def test_the_clock_takes_no_write_lock_when_nothing_changed(tmp_path):
    """A heartbeat or a sync holding the write lock does not stop a tick that finds nothing new (nor the backlog
    trim's look); a change is still stored, with its event."""
    db = open_catalog(tmp_path / "registry.db")
    migrate(db)
    now = iso(utc_now())
    with write_transaction(db):
        db.conn.execute("INSERT INTO servers (id, display_name, last_heartbeat) VALUES ('node-a', 'A', ?)", [now])
        db.conn.execute("INSERT INTO models (id, filename, type, hash_sha256, last_used) VALUES (1, 'm', 'checkpoint', ?, ?)",
                        ["ab" * 32, now])
        db.conn.execute("""INSERT INTO model_server_availability (model_id, server_id, path, rel_name, role)
                           VALUES (1, 'node-a', '/m/m.safetensors', 'm.safetensors', 'checkpoint')""")
        endpoint = store.create_endpoint(db, "http://127.0.0.1:9/hook", ["*"], None, "whsec_dGVzdA==")
    assert "whsec_" not in repr(endpoint)
    liveness = Liveness(60.0, "central")
    judge(db, liveness, now, first_tick=True)
    db.conn.execute("PRAGMA busy_timeout = 100")  # a wrongly wanted write lock fails fast instead of waiting
    writer = sqlite3.connect(tmp_path / "registry.db", isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # someone else is writing
    try:
        judge(db, liveness, now)
        assert store.trim_backlogs(db, 1, set()) == 0
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    db.conn.execute("DELETE FROM model_server_availability")  # its last copy is gone
    judge(db, liveness, now)
    assert db.conn.execute("SELECT model_id FROM webhook_lost_models").fetchall() == [(1,)]
    event = db.conn.execute("SELECT event_type, payload FROM webhook_deliveries").fetchall()
    assert [(kind, json.loads(body)["data"]["model"]["id"]) for kind, body in event] == [("model.last_copy_lost", 1)]


# --- model.update_available: the Civitai update checks on an injected clock, against the Civitai stand-in ---------
CIVITAI_MODEL, HELD = 1231067, 1387174  # the real model and version of the fixtures
VERSION_FIXTURE = "civitai_model_version_1387174_lora_flux_lora-manager.json"


def test_a_newer_civitai_version_is_announced_once(make_server, civitai_stub):  # noqa: F811
    server = make_server(civitai_enabled=False, civitai_api_base=civitai_stub.base_url, **CLOCK)
    held = civitai_stub.add_version(VERSION_FIXTURE, sha256=_sha("held"), version_id=HELD, model_id=CIVITAI_MODEL)
    newer = civitai_stub.add_version(VERSION_FIXTURE, sha256=_sha("v2"), version_id=5002, model_id=CIVITAI_MODEL,
                                     name="v2.0", published_at="2025-06-01T00:00:00.000Z")
    civitai_stub.add_model(CIVITAI_MODEL, [newer, held])
    metadata = {"civitai_id": CIVITAI_MODEL, "civitai_version_id": HELD, "civitai_model_base": held["baseModel"],
                "civitai_model_version_date": held["publishedAt"], "civitai_model_name": "Storybook"}
    push_files(server, "gpu-01", [{"path": "/models/Lora/held.safetensors", "rel_name": "held.safetensors",
                                   "role": "lora", "size": 10, "mtime_ns": 1, "sha256": _sha("held"), "type": "lora",
                                   "metadata": metadata, "field_sources": {k: "civitai_json" for k in metadata}}])
    registry = Registry(server.config.database_path, server.config.backups_path)
    registry.open()
    try:
        with webhook_receiver() as receiver:
            hook = create_webhook(server, receiver, ["model.update_available"])
            now = datetime(2025, 10, 1, tzinfo=timezone.utc)
            checks = UpdateChecks(registry, server.config, CivitaiRate(6000, 30), CivitaiClient(civitai_stub.base_url),
                                  lambda: now)
            assert checks.step() is True
            event = receiver.wait_for(lambda e: e.type == "model.update_available")
            model_id = server.get("/api/v1/models", params={"text": _sha("held")}).json()["models"][0]["id"]
            assert (event.data["model_id"], event.data["civitai_model_id"], event.data["held_version_id"]) == (
                model_id, CIVITAI_MODEL, HELD)
            assert (event.data["version"]["id"], event.data["version"]["name"]) == (5002, "v2.0")
            assert event.data["version"]["download_url"].endswith(f"/models/{CIVITAI_MODEL}?modelVersionId=5002")
            now += timedelta(days=1, minutes=1)  # the next day's check finds the same update: no second event
            assert checks.step() is True and civitai_stub.count(f"/api/v1/models/{CIVITAI_MODEL}") == 2
            assert deliveries(server, hook["id"])["total"] == 1  # the outbox is written in the check's transaction
            assert all(r.verified for r in receiver.requests)
    finally:
        registry.close()


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
