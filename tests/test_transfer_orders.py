"""Transfer orders over a real registry file: ordering (idempotent, refused when it cannot succeed), the orders a
destination node gets (source choice, fresh grants that verify with the source's token hash and are never stored or
listed), what its reports make of a transfer (the state table of server/transfers/progress.py), exclusions after
wrong bytes and their end when the source hashes its file again, cancel and retry.

Nodes and their files are written as a sync writes them (shared.inventory_apply over real .safetensors files), node
tokens as the server issues them, and which nodes are online is the server's own Liveness."""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import threading
from datetime import timedelta
from pathlib import Path

import pytest

import model_factory
from modelsync.server.auth import issue_token, token_hash
from modelsync.server.errors import ApiError
from modelsync.server.queries import Liveness
from modelsync.server.registry import Registry, iso, utc_now
from modelsync.server.sync import record_heartbeat
from modelsync.server.transfers import (cancel, clear_exclusions_after_sync, get_transfer, list_transfers,
                                        order_transfer, orders_for, report_progress, retry, set_files_url)
from modelsync.shared.scan.hashing import hash_file
from modelsync.shared.inventory import Inventory, InventoryFile
from modelsync.shared.inventory_apply import apply_inventory
from modelsync.shared.transfer.grants import GrantRefused, verify_grant
from modelsync.shared.transfer.protocol import file_url

TRANSFER_KEYS = {"id", "server_id", "sha256", "model_id", "state", "source", "bytes_done", "size", "speed_bps",
                 "eta_seconds", "dest_path", "reason", "error", "created_at", "updated_at"}


class Fleet:
    """A registry with nodes, their tokens and files, as the central server holds them."""

    def __init__(self, registry: Registry, root: Path):
        self.registry = registry
        self.db = registry.db()
        self.root = root
        self.tokens: dict[str, str] = {}
        self.files: dict[str, list[InventoryFile]] = {}
        self.liveness = Liveness(offline_after_seconds=120, own_server_id="central")

    def node(self, server_id: str, *, files_url: str | None = "auto", heard_seconds_ago: float = 5) -> str:
        self.tokens[server_id] = issue_token(self.db, server_id)
        if files_url:
            set_files_url(self.db, server_id, f"http://10.0.0.{len(self.tokens)}:7860" if files_url == "auto" else files_url)
        self.heard(server_id, heard_seconds_ago)
        return server_id

    def heard(self, server_id: str, seconds_ago: float) -> None:
        self.db.conn.execute("UPDATE servers SET last_heartbeat = ? WHERE id = ?",
                             [iso(utc_now() - timedelta(seconds=seconds_ago)), server_id])

    def online(self) -> set[str]:
        return set(self.liveness.online_ids(self.db))

    def put(self, server_id: str, source: Path, rel_name: str, role: str = "lora", state: str = "ok") -> InventoryFile:
        """Copy a real model file into the node's folder (a new mtime) and sync the node with it."""
        path = self.root / server_id / rel_name
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, path)
        entry = self.entry(path, rel_name, role, state)
        self.files.setdefault(server_id, [])
        self.files[server_id] = [f for f in self.files[server_id] if f.path != entry.path] + [entry]
        self.sync(server_id)
        return entry

    @staticmethod
    def entry(path: Path, rel_name: str, role: str, state: str = "ok") -> InventoryFile:
        hashes, stat = hash_file(str(path)), os.stat(path)
        return InventoryFile(path=str(path), rel_name=rel_name, role=role, size=stat.st_size, mtime_ns=stat.st_mtime_ns,
                             sha256=hashes.sha256, autov1=hashes.autov1, autov3=hashes.autov3, type=role, state=state)

    def sync(self, server_id: str) -> None:
        apply_inventory(self.db, Inventory(server_id, files=self.files.get(server_id, [])))

    def rescan(self, server_id: str, path: str, *, state: str = "ok") -> None:
        """The node's scan of one file again (its mtime as on disk now), then its sync."""
        old = next(f for f in self.files[server_id] if f.path == path)
        self.files[server_id] = [f if f.path != path else self.entry(Path(path), old.rel_name, old.role or "lora", state)
                                 for f in self.files[server_id]]
        self.sync(server_id)

    def key(self, server_id: str) -> str:
        return token_hash(self.tokens[server_id])


@pytest.fixture
def fleet(tmp_path):
    registry = Registry(tmp_path / "data" / "registry.db", tmp_path / "data" / "backups")
    registry.open()
    yield Fleet(registry, tmp_path / "nodes")
    registry.close()


@pytest.fixture
def lora(tmp_path) -> Path:
    return model_factory.write_lora(tmp_path / "made" / "style.safetensors", base="sdxl")


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    return model_factory.write_checkpoint(tmp_path / "made" / "base.safetensors", base="sdxl")


def refused(call, *args, **kwargs) -> tuple[int, str | None]:
    with pytest.raises(ApiError) as error:
        call(*args, **kwargs)
    return error.value.status, error.value.field


def order(fleet: Fleet, server_id: str, sha256: str, **kwargs):
    return order_transfer(fleet.db, server_id=server_id, sha256=sha256, requested_by=kwargs.pop("requested_by", "admin"),
                          **kwargs)


def report(fleet: Fleet, transfer, state: str, bytes_done: int = 0, **kwargs):
    kwargs.setdefault("online_ids", fleet.online())
    return report_progress(fleet.db, transfer.id, transfer.server_id, state=state, bytes_done=bytes_done, **kwargs)


# ordering

def test_ordering_twice_gives_the_same_transfer_in_the_issue_s_shape(fleet, lora):
    fleet.node("a"), fleet.node("b")
    held = fleet.put("a", lora, "Styles/style.safetensors")
    transfer, created = order(fleet, "b", held.sha256.upper())
    assert created and transfer.state == "queued" and transfer.requested_by == "admin"
    assert (transfer.rel_name, transfer.role, transfer.size) == ("Styles/style.safetensors", "lora", held.size)
    shown = transfer.to_dict()
    assert set(shown) == TRANSFER_KEYS
    assert shown["sha256"] == held.sha256 and shown["source"] == {"kind": "peer", "server_id": None, "civitai": None, "url": None}
    again, created_again = order_transfer(fleet.db, server_id="b", model_id=transfer.model_id, source="peer",
                                          requested_by="queue")
    assert not created_again and again.id == transfer.id
    assert list_transfers(fleet.db).total == 1


def test_concurrent_orders_of_the_same_model_make_one_transfer(fleet, lora):
    fleet.node("a"), fleet.node("b")
    held = fleet.put("a", lora, "style.safetensors")
    barrier, results = threading.Barrier(4), []

    def order_it() -> None:
        barrier.wait()
        results.append(order_transfer(fleet.registry.db(), server_id="b", sha256=held.sha256, requested_by="queue"))

    threads = [threading.Thread(target=order_it) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(created for _, created in results) == [False, False, False, True]
    assert len({transfer.id for transfer, _ in results}) == 1


def test_orders_that_cannot_succeed_are_refused_naming_the_field(fleet, lora, checkpoint):
    fleet.node("a"), fleet.node("b"), fleet.node("c")
    held = fleet.put("a", lora, "style.safetensors")
    db = fleet.db
    assert refused(order, fleet, "nobody", held.sha256) == (404, "server_id")
    assert refused(order, fleet, "b", "0" * 64) == (404, "sha256")
    assert refused(order_transfer, db, server_id="b", model_id=10**6, requested_by="admin") == (404, "model_id")
    assert refused(order_transfer, db, server_id="b", requested_by="admin") == (400, "sha256")
    assert refused(order_transfer, db, server_id="b", sha256=held.sha256, model_id=1, requested_by="admin") == (400, "sha256")
    assert refused(order, fleet, "b", "../etc/passwd") == (400, "sha256")
    assert refused(order_transfer, db, server_id="b", model_id=True, requested_by="admin") == (400, "model_id")
    assert refused(order, fleet, ["b"], held.sha256) == (400, "server_id")
    assert refused(order, fleet, "b", held.sha256, source="ftp") == (400, "source")
    fleet.node("d")
    fleet.put("d", lora, "style.safetensors")
    with pytest.raises(ApiError, match="node a already holds this model") as holds:
        order(fleet, "a", held.sha256)
    assert (holds.value.status, holds.value.field) == (409, "sha256")
    assert refused(order, fleet, "b", held.sha256, from_server_id="ghost") == (404, "from_server_id")
    assert refused(order, fleet, "b", held.sha256, from_server_id="c") == (409, "from_server_id")
    unreachable = fleet.put("c", checkpoint, "base.safetensors", role="checkpoint")
    fleet.rescan("c", unreachable.path, state="unreachable")  # its share unmounted: the model stays known
    assert refused(order, fleet, "b", unreachable.sha256) == (409, "sha256")  # and has no usable copy to copy from
    assert list_transfers(db).total == 0


def test_a_copy_the_destination_cannot_use_does_not_count_as_holding_it(fleet, lora):
    fleet.node("a"), fleet.node("b")
    held = fleet.put("a", lora, "style.safetensors")
    fleet.put("b", lora, "style.safetensors", state="unreachable")
    transfer, created = order(fleet, "b", held.sha256)
    assert created and transfer.state == "queued"


# orders: source choice and grants

def test_the_order_lists_online_servable_sources_most_recent_first_with_grants_that_verify(fleet, lora):
    for name, seconds in (("alpha", 60), ("zulu", 2), ("asleep", 3600), ("no-url", 1), ("dest", 1)):
        fleet.node(name, heard_seconds_ago=seconds, files_url=None if name == "no-url" else "auto")
    fleet.db.conn.execute("INSERT INTO servers (id, last_heartbeat, files_url) VALUES ('tokenless', ?, 'http://t:1')",
                          [iso(utc_now())])
    held = None
    for name in ("alpha", "zulu", "asleep", "no-url", "tokenless"):
        held = fleet.put(name, lora, "style.safetensors")
    transfer, _ = order(fleet, "dest", held.sha256)
    now = utc_now()
    [only] = orders_for(fleet.db, "dest", fleet.online(), now)
    assert (only.transfer_id, only.sha256, only.size, only.rel_name, only.role) == (
        transfer.id, held.sha256, held.size, "style.safetensors", "lora")
    assert [s.server_id for s in only.sources] == ["zulu", "alpha"]  # the most recently heard from first
    for source in only.sources:
        files_url = fleet.db.conn.execute("SELECT files_url FROM servers WHERE id = ?", [source.server_id]).fetchone()[0]
        assert source.url == file_url(files_url, held.sha256)
        claims = verify_grant(source.grant, fleet.key(source.server_id), sha256=held.sha256, source=source.server_id,
                              destination="dest")
        assert claims.expires_at == int(now.timestamp()) + 600
    with pytest.raises(GrantRefused):  # signed with that source's token hash only
        verify_grant(only.sources[0].grant, fleet.key("alpha"), sha256=held.sha256, source="zulu", destination="dest")
    assert get_transfer(fleet.db, transfer.id).state == "queued"


def test_a_requested_source_is_the_only_one_used(fleet, lora):
    fleet.node("old", heard_seconds_ago=60), fleet.node("new"), fleet.node("dest")
    held = fleet.put("old", lora, "a.safetensors")
    fleet.put("new", lora, "b.safetensors")
    transfer, _ = order(fleet, "dest", held.sha256, from_server_id="old")
    assert transfer.rel_name == "a.safetensors" and transfer.to_dict()["source"] == {"kind": "peer", "server_id": "old", "civitai": None, "url": None}
    [only] = orders_for(fleet.db, "dest", fleet.online(), utc_now())
    assert [s.server_id for s in only.sources] == ["old"]


def test_grants_are_never_stored_listed_or_shown(fleet, lora):
    fleet.node("a"), fleet.node("b")
    held = fleet.put("a", lora, "style.safetensors")
    transfer, _ = order(fleet, "b", held.sha256)
    [only] = orders_for(fleet.db, "b", fleet.online(), utc_now())
    grant = only.sources[0].grant
    assert grant.startswith("v1.") and only.to_dict()["sources"][0]["grant"] == grant  # the node gets it
    assert grant not in repr(only)
    report(fleet, transfer, "running", 10, source_server_id="a")
    for table in fleet.db.table_names():
        for row in fleet.db[table].rows:
            assert grant not in json.dumps(row, default=str), table
    listed = json.dumps([list_transfers(fleet.db).to_dict(), get_transfer(fleet.db, transfer.id).to_dict()])
    assert grant not in listed and "grant" not in listed


def test_a_transfer_waits_for_a_source_and_goes_on_when_a_holder_is_back_online(fleet, lora):
    fleet.node("a", heard_seconds_ago=3600), fleet.node("b")
    held = fleet.put("a", lora, "style.safetensors")
    transfer, _ = order(fleet, "b", held.sha256)
    assert orders_for(fleet.db, "b", fleet.online(), utc_now()) == []
    waiting = get_transfer(fleet.db, transfer.id)
    assert (waiting.state, waiting.reason) == ("waiting_source", "no_online_holder") and waiting.error
    record_heartbeat(fleet.db, "a", {})
    [only] = orders_for(fleet.db, "b", fleet.online(), utc_now())
    assert [s.server_id for s in only.sources] == ["a"]
    back = get_transfer(fleet.db, transfer.id)
    assert (back.state, back.reason, back.error) == ("queued", None, None)


def test_transfers_the_node_is_running_are_left_out_and_a_restarted_node_gets_them_again(fleet, lora):
    fleet.node("a"), fleet.node("b")
    held = fleet.put("a", lora, "style.safetensors")
    transfer, _ = order(fleet, "b", held.sha256)
    report(fleet, transfer, "running", 100, source_server_id="a")
    assert orders_for(fleet.db, "b", fleet.online(), utc_now(), in_progress={transfer.id}) == []
    [resumed] = orders_for(fleet.db, "b", fleet.online(), utc_now())
    assert resumed.transfer_id == transfer.id and get_transfer(fleet.db, transfer.id).state == "running"


def test_a_model_the_destination_got_meanwhile_is_done_without_an_order(fleet, lora):
    fleet.node("a"), fleet.node("b")
    held = fleet.put("a", lora, "style.safetensors")
    transfer, _ = order(fleet, "b", held.sha256)
    copy = fleet.put("b", lora, "by-hand.safetensors")
    assert orders_for(fleet.db, "b", fleet.online(), utc_now()) == []
    done = get_transfer(fleet.db, transfer.id)
    assert (done.state, done.dest_path, done.bytes_done) == ("done", copy.path, held.size) and done.finished_at


def test_the_order_s_name_is_made_safe(fleet, lora):
    fleet.node("win"), fleet.node("b")
    held = fleet.put("win", lora, "style.safetensors")
    fleet.db.conn.execute("UPDATE model_server_availability SET rel_name = ? WHERE server_id = 'win'",
                          ["C:\\..\\..\\Styles\\style.safetensors"])
    order(fleet, "b", held.sha256)
    [only] = orders_for(fleet.db, "b", fleet.online(), utc_now())
    assert only.rel_name == "Styles/style.safetensors"


def test_a_name_that_is_empty_once_made_safe_fails_the_transfer(fleet, lora):
    fleet.node("odd"), fleet.node("b")
    held = fleet.put("odd", lora, "style.safetensors")
    fleet.db.conn.execute("UPDATE model_server_availability SET rel_name = '../..' WHERE server_id = 'odd'")
    transfer, _ = order(fleet, "b", held.sha256)
    assert orders_for(fleet.db, "b", fleet.online(), utc_now()) == []
    failed = get_transfer(fleet.db, transfer.id)
    assert (failed.state, failed.reason) == ("failed", "bad_name") and "'../..'" in failed.error


# progress: the state table

def test_running_verifying_done(fleet, lora):
    fleet.node("a"), fleet.node("b")
    held = fleet.put("a", lora, "style.safetensors")
    transfer, _ = order(fleet, "b", held.sha256)
    running = report(fleet, transfer, "running", 0, size=held.size, speed_bps=0, source_server_id="a")
    assert (running.state, running.attempts, running.to_dict()["source"]["server_id"]) == ("running", 1, "a")
    running = report(fleet, transfer, "running", held.size // 2, speed_bps=1000.5, eta_seconds=3)
    assert (running.bytes_done, running.speed_bps, running.eta_seconds, running.attempts) == (held.size // 2, 1000.5, 3.0, 1)
    assert report(fleet, transfer, "verifying", held.size).state == "verifying"
    dest = str(fleet.root / "b" / "style.safetensors")
    done = report(fleet, transfer, "done", held.size, dest_path=dest)
    assert (done.state, done.bytes_done, done.dest_path, done.reason) == ("done", held.size, dest, None)
    assert done.finished_at
    late = report(fleet, transfer, "running", 5)  # no going back from done
    assert (late.state, late.bytes_done, late.updated_at) == ("done", held.size, done.updated_at)
    assert refused(cancel, fleet.db, transfer.id) == (409, "id")
    assert refused(retry, fleet.db, transfer.id) == (409, "id")


def test_reports_are_checked(fleet, lora):
    fleet.node("a"), fleet.node("b"), fleet.node("c")
    held = fleet.put("a", lora, "style.safetensors")
    transfer, _ = order(fleet, "b", held.sha256)
    db = fleet.db
    assert refused(report_progress, db, transfer.id, "c", state="running", bytes_done=1) == (403, "id")
    assert refused(report_progress, db, 10**9, "b", state="running", bytes_done=1) == (404, "id")
    for bad, field in (({"state": "queued"}, "state"), ({"state": "waiting_source"}, "state"),
                       ({"bytes_done": -1}, "bytes_done"), ({"bytes_done": True}, "bytes_done"),
                       ({"bytes_done": held.size + 1}, "bytes_done"), ({"size": held.size + 1}, "size"),
                       ({"speed_bps": float("nan")}, "speed_bps"), ({"eta_seconds": "soon"}, "eta_seconds"),
                       ({"state": "failed", "reason": "oops"}, "reason"), ({"state": "failed"}, "reason"),
                       ({"source_server_id": "ghost"}, "source_server_id"), ({"dest_path": "x" * 5000}, "dest_path"),
                       ({"state": "failed", "reason": "source_gone"}, "source_server_id")):
        kwargs = {"state": "running", "bytes_done": 1, **bad}
        assert refused(report_progress, db, transfer.id, "b", **kwargs) == (400, field), bad
    assert get_transfer(db, transfer.id) == transfer  # nothing written


def test_a_cancelled_transfer_answers_cancelled_and_can_be_ordered_anew(fleet, lora):
    fleet.node("a"), fleet.node("b")
    held = fleet.put("a", lora, "style.safetensors")
    transfer, _ = order(fleet, "b", held.sha256)
    report(fleet, transfer, "running", 10, source_server_id="a")
    cancelled = cancel(fleet.db, transfer.id)
    assert (cancelled.state, cancelled.reason) == ("cancelled", "cancelled") and cancelled.finished_at
    assert cancel(fleet.db, transfer.id) == cancelled
    assert report(fleet, transfer, "running", 20).state == "cancelled"  # the node stops
    assert orders_for(fleet.db, "b", fleet.online(), utc_now()) == []
    anew, created = order(fleet, "b", held.sha256)
    assert created and anew.id != transfer.id
    assert refused(retry, fleet.db, transfer.id) == (409, "id")  # the new one stands


def test_the_node_s_own_cancel(fleet, lora):
    fleet.node("a"), fleet.node("b")
    held = fleet.put("a", lora, "style.safetensors")
    transfer, _ = order(fleet, "b", held.sha256)
    assert report(fleet, transfer, "failed", 0, reason="cancelled").state == "cancelled"


def test_a_source_gone_is_left_for_another_holder_until_it_is_heard_from_again(fleet, lora):
    fleet.node("first", heard_seconds_ago=1), fleet.node("second", heard_seconds_ago=30), fleet.node("dest")
    held = fleet.put("first", lora, "style.safetensors")
    fleet.put("second", lora, "style.safetensors")
    transfer, _ = order(fleet, "dest", held.sha256)
    [first_order] = orders_for(fleet.db, "dest", fleet.online(), utc_now())
    assert first_order.sources[0].server_id == "first"
    report(fleet, transfer, "running", 100, source_server_id="first")
    gone = report(fleet, transfer, "failed", 100, reason="source_gone", error="connection refused", source_server_id="first")
    assert (gone.state, gone.reason, gone.error, gone.bytes_done) == ("queued", "source_gone", "connection refused", 100)
    [next_order] = orders_for(fleet.db, "dest", fleet.online(), utc_now())
    assert [s.server_id for s in next_order.sources] == ["second"]
    report(fleet, transfer, "running", 100, source_server_id="second")
    assert get_transfer(fleet.db, transfer.id).reason == "source_gone"  # until bytes flow again
    flowing = report(fleet, transfer, "running", 200, source_server_id="second")
    assert (flowing.reason, flowing.error, flowing.attempts) == (None, None, 2)


def test_the_only_source_gone_waits_then_is_used_once_heard_from_again(fleet, lora):
    fleet.node("only", heard_seconds_ago=30), fleet.node("dest")
    held = fleet.put("only", lora, "style.safetensors")
    transfer, _ = order(fleet, "dest", held.sha256)
    report(fleet, transfer, "running", 0, source_server_id="only")
    gone = report(fleet, transfer, "failed", 0, reason="source_gone", source_server_id="only",
                  now=utc_now() - timedelta(seconds=20))  # after its last heartbeat
    assert (gone.state, gone.reason) == ("waiting_source", "source_gone")
    assert "only" in fleet.online()  # still counted online: heard from within the last minutes
    assert orders_for(fleet.db, "dest", fleet.online(), utc_now()) == []  # but not since it failed
    assert get_transfer(fleet.db, transfer.id).reason == "source_gone"
    record_heartbeat(fleet.db, "only", {})  # it is back
    [back] = orders_for(fleet.db, "dest", fleet.online(), utc_now())
    assert [s.server_id for s in back.sources] == ["only"] and get_transfer(fleet.db, transfer.id).state == "queued"


def test_not_allowed_gets_a_fresh_grant_once(fleet, lora):
    fleet.node("a"), fleet.node("b")
    held = fleet.put("a", lora, "style.safetensors")
    transfer, _ = order(fleet, "b", held.sha256)
    start = utc_now()
    [first] = orders_for(fleet.db, "b", fleet.online(), start)
    report(fleet, transfer, "running", 0, source_server_id="a")
    refused_once = report(fleet, transfer, "failed", 0, reason="not_allowed", source_server_id="a")
    assert refused_once.state == "queued"
    [fresh] = orders_for(fleet.db, "b", fleet.online(), start + timedelta(seconds=5))
    assert fresh.sources[0].grant != first.sources[0].grant
    assert verify_grant(fresh.sources[0].grant, fleet.key("a"), sha256=held.sha256, source="a",
                        destination="b").expires_at == int(start.timestamp()) + 605
    report(fleet, transfer, "running", 0, source_server_id="a")
    again = report(fleet, transfer, "failed", 0, reason="not_allowed", source_server_id="a")
    assert (again.state, again.reason) == ("failed", "not_allowed") and again.finished_at


@pytest.mark.parametrize("reason", ["disk_full", "root_unavailable", "bad_name"])
def test_what_the_destination_must_change_fails_for_good_until_retried(fleet, lora, reason):
    fleet.node("a"), fleet.node("b")
    held = fleet.put("a", lora, "style.safetensors")
    transfer, _ = order(fleet, "b", held.sha256)
    report(fleet, transfer, "running", 0, source_server_id="a")
    failed = report(fleet, transfer, "failed", 0, reason=reason)
    assert (failed.state, failed.reason) == ("failed", reason) and failed.error and failed.finished_at
    assert orders_for(fleet.db, "b", fleet.online(), utc_now()) == []
    assert order(fleet, "b", held.sha256) == (failed, False)  # returned as it is, not ordered again
    assert report(fleet, transfer, "running", 5).state == "failed"
    retried = retry(fleet.db, transfer.id)
    assert (retried.state, retried.attempts, retried.reason, retried.error) == ("queued", 0, None, None)
    assert retried.finished_at is None
    assert refused(retry, fleet.db, transfer.id) == (409, "id")  # queued: nothing to retry


def test_wrong_bytes_exclude_the_source_until_it_hashes_its_file_again(fleet, lora):
    fleet.node("bad", heard_seconds_ago=1), fleet.node("worse", heard_seconds_ago=20), fleet.node("dest")
    bad_file = fleet.put("bad", lora, "style.safetensors")
    fleet.put("worse", lora, "style.safetensors")
    sha = bad_file.sha256
    transfer, _ = order(fleet, "dest", sha)
    report(fleet, transfer, "running", 0, source_server_id="bad")
    mismatch = report(fleet, transfer, "failed", bad_file.size, reason="hash_mismatch", source_server_id="bad")
    assert (mismatch.state, mismatch.reason) == ("queued", "hash_mismatch")
    assert fleet.db.conn.execute("SELECT source_server_id, sha256, mtime_ns FROM transfer_source_exclusions").fetchall() == [
        ("bad", sha, bad_file.mtime_ns)]
    [next_order] = orders_for(fleet.db, "dest", fleet.online(), utc_now())
    assert [s.server_id for s in next_order.sources] == ["worse"]
    report(fleet, transfer, "running", 0, source_server_id="worse")
    failed = report(fleet, transfer, "failed", 0, reason="too_long", source_server_id="worse")
    assert (failed.state, failed.reason) == ("failed", "too_long")  # no other holder is left
    assert clear_exclusions_after_sync(fleet.db, "worse") == 0  # an unchanged re-sync ends nothing

    fleet.rescan("bad", bad_file.path, state="unreachable")  # its share unmounted: same file, same mtime
    assert clear_exclusions_after_sync(fleet.db, "bad") == 0
    os.utime(bad_file.path, ns=(bad_file.mtime_ns + 10**9, bad_file.mtime_ns + 10**9))  # replaced, hashed again
    fleet.rescan("bad", bad_file.path)
    assert clear_exclusions_after_sync(fleet.db, "bad") == 1
    assert fleet.db.conn.execute("SELECT source_server_id FROM transfer_source_exclusions").fetchall() == [("worse",)]
    retried = retry(fleet.db, transfer.id)
    assert retried.state == "queued"
    [after] = orders_for(fleet.db, "dest", fleet.online(), utc_now())
    assert [s.server_id for s in after.sources] == ["bad"]


def test_an_order_from_a_source_that_sent_wrong_bytes_is_refused(fleet, lora):
    fleet.node("bad"), fleet.node("dest"), fleet.node("dest2")
    held = fleet.put("bad", lora, "style.safetensors")
    transfer, _ = order(fleet, "dest", held.sha256)
    failed = report(fleet, transfer, "failed", 0, reason="hash_mismatch", source_server_id="bad")
    assert (failed.state, failed.reason) == ("failed", "hash_mismatch")
    assert refused(order, fleet, "dest2", held.sha256) == (409, "sha256")
    assert refused(order, fleet, "dest2", held.sha256, from_server_id="bad") == (409, "from_server_id")


def test_listing_filters_and_pages_newest_first(fleet, lora, checkpoint):
    fleet.node("a"), fleet.node("b"), fleet.node("c")
    shas = [fleet.put("a", lora, "style.safetensors").sha256,
            fleet.put("a", checkpoint, "base.safetensors", role="checkpoint").sha256]
    made = [order(fleet, dest, sha)[0] for dest in ("b", "c") for sha in shas]
    cancel(fleet.db, made[0].id)
    page = list_transfers(fleet.db, limit=2, offset=1)
    assert [t.id for t in page.transfers] == [made[2].id, made[1].id] and page.total == 4
    assert [t.id for t in list_transfers(fleet.db, server_id="b").transfers] == [made[1].id, made[0].id]
    assert [t.id for t in list_transfers(fleet.db, server_id="b", state="queued").transfers] == [made[1].id]
    assert list_transfers(fleet.db, state="cancelled").to_dict()["transfers"][0]["id"] == made[0].id
    assert refused(list_transfers, fleet.db, state="stuck") == (400, "state")
    assert refused(list_transfers, fleet.db, limit=0) == (400, "limit")
    assert refused(list_transfers, fleet.db, offset=-1) == (400, "offset")


def test_files_urls_are_checked(fleet):
    fleet.node("a", files_url=None)
    assert set_files_url(fleet.db, "a", "http://10.0.0.5:7860/") is True
    assert set_files_url(fleet.db, "a", "http://10.0.0.5:7860/") is False  # unchanged
    for bad in ("ftp://10.0.0.5/", "http://user:pw@10.0.0.5/", "http://10.0.0.5/?x=1", "http:///nohost",
                "http://10.0.0.5:99999/", 42, "http://x/" + "a" * 3000):
        assert refused(set_files_url, fleet.db, "a", bad) == (400, "files_url"), bad


def test_one_standing_transfer_per_node_and_model_is_the_registry_s_own_rule(fleet, lora):
    fleet.node("a"), fleet.node("b")
    held = fleet.put("a", lora, "style.safetensors")
    transfer, _ = order(fleet, "b", held.sha256)
    with pytest.raises(sqlite3.IntegrityError):
        fleet.db.conn.execute(
            """INSERT INTO transfers (server_id, sha256, state, source_kind, requested_by, created_at, updated_at)
               VALUES ('b', ?, 'failed', 'peer', 'admin', 'x', 'x')""", [held.sha256])
    cancel(fleet.db, transfer.id)
    fleet.db.conn.execute(
        """INSERT INTO transfers (server_id, sha256, state, source_kind, requested_by, created_at, updated_at)
           VALUES ('b', ?, 'done', 'peer', 'admin', 'x', 'x')""", [held.sha256])  # history is not limited
