"""`modelsync node` as real processes: against a real central server (registration, push, heartbeats, the file server
with grants, re-scans after a change, an unchanged re-scan that pushes nothing, SIGTERM), and the transfer loop
against a stand-in of the two transfer endpoints (orders, progress) that passes every other request on to the real
central server: a copy from a peer, another source when one stops mid-transfer, a stop and a resume, a cancel, and
orphaned temp files removed at start-up. "Mid-transfer" is made sure of, not hoped for: the stand-in holds the
transfer's progress report at a gate while the source is killed or the node stopped (ReportGate)."""
from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import model_factory
import numpy as np
import pytest
import requests
from modelsync.shared.transfer.grants import issue_grant, signing_key
from modelsync.shared.transfer.partfiles import part_name
from modelsync.shared.transfer.protocol import GRANT_HEADER, NODE_HEADER, file_url
from support_server import RunningServer, free_port, serve_http, server_process, wait_for
from support_transfer import ReportGate, tampered

pytestmark = pytest.mark.timeout(240)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def big_lora(path: Path, megabytes: int) -> Path:
    """A real LoRA with one large tensor, so a copy takes long enough to stop it midway."""
    model_factory.write_lora(path)  # the small tensors the classifier reads...
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(path))
    rows = megabytes * 1024 * 1024 // (2 * 1024)
    noise = np.random.default_rng(len(path.name) + megabytes).standard_normal((rows, 1024), dtype=np.float32)
    tensors["lora_unet_mid_block_attentions_0_proj_in.lora_down.weight"] = noise.astype(np.float16)
    save_file(tensors, str(path))
    return path


@dataclass
class NodeProcess:
    node_id: str
    data: Path
    files_url: str
    process: subprocess.Popen
    log_path: Path

    @property
    def token(self) -> str:
        """The token the node stored at registration: the server lists the node before the node has written it."""
        stored = self.data / "node_tokens.json"
        wait_for(stored.exists, timeout=30)
        return json.loads(stored.read_text())[self.node_id]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def grant_for(self, sha256: str, destination: str) -> str:
        return issue_grant(signing_key(self.token), sha256=sha256, source=self.node_id, destination=destination).value

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 40) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout)


@contextlib.contextmanager
def node_process(tmp_path: Path, node_id: str, server_url: str, *roles: str, extra: tuple[str, ...] = (),
                 data: Path | None = None) -> Iterator[NodeProcess]:
    data = data or tmp_path / f"{node_id}-data"
    port = free_port()
    log_path = tmp_path / f"{node_id}.log"
    args = [sys.executable, "-m", "modelsync.cli.main", "node", "-v", "--server", server_url, "--server-id", node_id,
            "--data", str(data), "--listen", f"127.0.0.1:{port}", "--heartbeat", "1", "--rescan", "0",
            *[f"--role={role}" for role in roles], *extra]
    with open(log_path, "ab") as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    node = NodeProcess(node_id, data, f"http://127.0.0.1:{port}", process, log_path)
    try:
        yield node
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def quiet(node: NodeProcess, seconds: float = 2.0) -> None:
    """Until the node has logged nothing but DEBUG lines for `seconds` (the watcher's debounce is 1.6 s)."""
    lines, since = -1, time.monotonic()
    while time.monotonic() - since < seconds:
        now = sum(1 for line in node.log().splitlines() if " DEBUG " not in line)
        if now != lines:
            lines, since = now, time.monotonic()
        time.sleep(0.1)


def server_entry(server: RunningServer, node_id: str) -> dict | None:
    return next((s for s in server.get("/api/v1/servers").json()["servers"] if s["id"] == node_id), None)


def held_by(server: RunningServer, node_id: str) -> set[str]:
    return {m["sha256"] for m in server.get("/api/v1/models", params={"server": node_id, "limit": 500}).json()["models"]}


def test_a_node_registers_pushes_heartbeats_serves_by_grant_rescans_and_stops(tmp_path):
    lora = tmp_path / "a" / "Lora"
    first = model_factory.write_lora(lora / "first.safetensors")
    with server_process(tmp_path / "central") as central, \
            node_process(tmp_path, "gpu-a", central.base_url, f"lora={lora}") as node:
        entry = wait_for(lambda: (e := server_entry(central, "gpu-a")) and e["file_count"] == 1 and e["last_heartbeat"] and e,
                         timeout=60)  # a cold start: imports, registration, a scan, hashing, a push, a heartbeat
        assert held_by(central, "gpu-a") == {sha256_of(first)}
        heartbeats = entry["last_heartbeat"]
        wait_for(lambda: server_entry(central, "gpu-a")["last_heartbeat"] != heartbeats, timeout=30)

        sha = sha256_of(first)
        url = file_url(node.files_url, sha)
        granted = {GRANT_HEADER: node.grant_for(sha, "gpu-b"), NODE_HEADER: "gpu-b"}
        answer = requests.get(url, headers=granted, timeout=10)
        assert answer.status_code == 200 and answer.content == first.read_bytes()
        assert answer.headers["ETag"] == f'"{sha}"'
        part = requests.get(url, headers={**granted, "Range": "bytes=100-", "If-Range": f'"{sha}"'}, timeout=10)
        assert part.status_code == 206 and part.content == first.read_bytes()[100:]
        refused = {
            "no grant": requests.get(url, headers={NODE_HEADER: "gpu-b"}, timeout=10),
            "another node": requests.get(url, headers={**granted, NODE_HEADER: "gpu-c"}, timeout=10),
            "tampered": requests.get(url, headers={**granted, GRANT_HEADER: tampered(granted[GRANT_HEADER])}, timeout=10),
            "a path": requests.get(node.files_url + "/modelsync/v1/files/first.safetensors", headers=granted, timeout=10),
        }
        assert {why: a.status_code for why, a in refused.items()} == {"no grant": 401, "another node": 403,
                                                                       "tampered": 403, "a path": 400}
        assert all(first.read_bytes()[:64] not in a.content for a in refused.values())

        second = model_factory.write_lora(lora / "second.safetensors", base="sdxl")  # the watcher: a re-scan soon
        wait_for(lambda: held_by(central, "gpu-a") == {sha, sha256_of(second)}, timeout=30)
        quiet(node)
        synced = server_entry(central, "gpu-a")["last_sync"]
        unchanged = node.log().count("nothing changed since the last push")
        stat = os.stat(second)
        os.utime(second, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # a change event, the same file: nothing to push
        wait_for(lambda: node.log().count("nothing changed since the last push") > unchanged, timeout=30)
        quiet(node)
        assert server_entry(central, "gpu-a")["last_sync"] == synced

        assert node.stop() == 0
        assert "stopped" in node.log() and "Traceback" not in node.log()


class OrderDesk:
    """The central server's two transfer endpoints as the contract gives them (`GET .../transfers/orders` with a
    long-poll and `running`, `POST /api/v1/transfers/{id}/progress`), held in the test; every other request is passed
    on to the real central server. A source that failed is not handed out again for that transfer (as the server
    does until that node is heard from)."""

    def __init__(self, central: RunningServer):
        self.central = central
        self.orders: dict[int, dict] = {}
        self.destinations: dict[int, str] = {}
        self.states: dict[int, str] = {}
        self.reports: list[tuple[int, dict]] = []
        self.cancel: set[int] = set()
        self.changed = threading.Condition()
        self.gate = ReportGate()

    def order(self, transfer_id: int, destination: str, order: dict) -> None:
        with self.changed:
            self.orders[transfer_id], self.states[transfer_id] = order, "queued"
            self.destinations[transfer_id] = destination
            self.changed.notify_all()

    def reported(self, transfer_id: int) -> list[dict]:
        return [body for tid, body in self.reports if tid == transfer_id]

    def _orders(self, node_id: str, query: dict) -> dict:
        wait = min(int(query.get("wait", ["0"])[0]), 30)
        running = {int(i) for i in query.get("running", [""])[0].split(",") if i}
        deadline = time.monotonic() + wait
        with self.changed:
            while True:
                found = [o for tid, o in self.orders.items() if tid not in running and o["sources"]
                         and self.destinations[tid] == node_id
                         and self.states[tid] in ("queued", "running")]
                if found or time.monotonic() >= deadline:
                    return {"orders": found}
                self.changed.wait(max(0.0, deadline - time.monotonic()))

    def _progress(self, transfer_id: int, body: dict) -> dict:
        with self.changed:
            self.reports.append((transfer_id, body))
            state = body["state"]
            if transfer_id in self.cancel:
                state = "cancelled"
            elif state == "failed" and body.get("reason") in ("source_gone", "changed", "not_allowed"):
                order = self.orders[transfer_id]
                order["sources"] = [s for s in order["sources"] if s["server_id"] != body.get("source_server_id")]
                state = "queued" if order["sources"] else "waiting_source"
            self.states[transfer_id] = state
            self.changed.notify_all()
            return {"id": transfer_id, "state": state}

    @contextlib.contextmanager
    def serving(self) -> Iterator[str]:
        desk = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self, status: int, body: bytes, content_type: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _handle(self) -> None:
                url = urlsplit(self.path)
                parts = url.path.strip("/").split("/")
                data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if parts[-2:] == ["transfers", "orders"] and self.command == "GET":
                    return self._answer(200, json.dumps(desk._orders(parts[3], parse_qs(url.query))).encode())
                if parts[:3] == ["api", "v1", "transfers"] and parts[-1] == "progress":
                    report = json.loads(data)
                    with desk.gate.passing(int(parts[3]), report):
                        answer = desk._progress(int(parts[3]), report)
                    return self._answer(200, json.dumps(answer).encode())
                headers = {k: v for k, v in self.headers.items() if k.lower() in ("authorization", "content-type",
                                                                                  "content-encoding", "accept")}
                answer = requests.request(self.command, desk.central.base_url + self.path, data=data, headers=headers,
                                          timeout=60)
                self._answer(answer.status_code, answer.content, answer.headers.get("Content-Type", "application/json"))

            do_GET = do_POST = do_PUT = _handle

            def log_message(self, *args) -> None:
                pass

        with serve_http(Handler) as base_url:
            yield base_url


def peer_order(transfer_id: int, sha256: str, size: int, rel_name: str, role: str, destination: str,
               *sources: NodeProcess) -> dict:
    return {"transfer_id": transfer_id, "sha256": sha256, "size": size, "rel_name": rel_name, "role": role,
            "sources": [{"server_id": s.node_id, "url": file_url(s.files_url, sha256),
                         "grant": s.grant_for(sha256, destination)} for s in sources]}


def test_a_node_copies_an_ordered_lora_from_a_peer_another_source_after_a_stop_and_resumes_after_its_own(tmp_path):
    a_lora, c_lora, b_lora = (tmp_path / n / "Lora" for n in ("a", "c", "b"))
    small = model_factory.write_lora(a_lora / "style" / "small.safetensors")
    big = big_lora(a_lora / "big.safetensors", 24)
    c_lora.mkdir(parents=True)
    (c_lora / "big.safetensors").write_bytes(big.read_bytes())
    b_lora.mkdir(parents=True)
    orphan = b_lora / part_name("0" * 64)
    orphan.write_bytes(b"left by a crash")
    small_sha, big_sha = sha256_of(small), sha256_of(big)
    slow = ("--bandwidth", "6MB/s")
    with server_process(tmp_path / "central") as central, contextlib.ExitStack() as stack:
        desk = OrderDesk(central)
        desk_url = stack.enter_context(desk.serving())
        a = stack.enter_context(node_process(tmp_path, "gpu-a", desk_url, f"lora={a_lora}"))
        c = stack.enter_context(node_process(tmp_path, "gpu-c", desk_url, f"lora={c_lora}"))
        b_data = tmp_path / "gpu-b-data"
        b = stack.enter_context(node_process(tmp_path, "gpu-b", desk_url, f"lora={b_lora}", extra=slow, data=b_data))
        wait_for(lambda: all(server_entry(central, n) for n in ("gpu-a", "gpu-b", "gpu-c")), timeout=30)
        wait_for(lambda: not orphan.exists(), timeout=30)  # removed once the server told which transfers stand

        # a copy from a peer, into the role folder under the source's relative name, not hashed again
        desk.order(1, "gpu-b", peer_order(1, small_sha, small.stat().st_size, "style/small.safetensors", "lora", "gpu-b", a))
        copied = b_lora / "style" / "small.safetensors"
        done = wait_for(lambda: [r for r in desk.reported(1) if r["state"] == "done"], timeout=30)[0]
        assert sha256_of(copied) == small_sha and done["dest_path"] == str(copied)
        assert done["source_server_id"] == "gpu-a"
        assert small_sha in held_by(central, "gpu-b")  # pushed before `done`
        assert f"{copied}: hashes from catalog" in b.log() and f"{copied}: hashed" not in b.log()

        # the source stops mid-transfer: the next source of the order, from the bytes on disk
        # the transfer waits for the answer to a report of some MB (so a start over would show) while its source is killed
        with desk.gate.closed(from_bytes=1024 * 1024):
            desk.order(2, "gpu-b", peer_order(2, big_sha, big.stat().st_size, "big.safetensors", "lora", "gpu-b", a, c))
            wait_for(lambda: desk.gate.holding(2), timeout=30)
            assert a.stop(signal.SIGKILL) == -signal.SIGKILL  # the source vanishes
        done = wait_for(lambda: [r for r in desk.reported(2) if r["state"] == "done"], timeout=90)[0]
        failed = [r for r in desk.reported(2) if r["state"] == "failed"]
        assert [(r["reason"], r["source_server_id"]) for r in failed] == [("source_gone", "gpu-a")]
        assert done["source_server_id"] == "gpu-c" and sha256_of(b_lora / "big.safetensors") == big_sha
        from_c = [r["bytes_done"] for r in desk.reported(2) if r["state"] == "running" and r.get("source_server_id") == "gpu-c"]
        before = max(r["bytes_done"] for r in desk.reported(2) if r.get("source_server_id") == "gpu-a")
        assert from_c and from_c[0] >= before  # resumed, not started over

        # this node stops mid-transfer: the temp file stays, nothing is reported; started again, it resumes
        (c_lora / "other.safetensors").write_bytes(big_lora(tmp_path / "other.safetensors", 24).read_bytes())
        other_sha = sha256_of(c_lora / "other.safetensors")
        wait_for(lambda: other_sha in held_by(central, "gpu-c"), timeout=30)
        with desk.gate.closed():  # the transfer waits for the answer to its first report while the node is stopped
            desk.order(3, "gpu-b", peer_order(3, other_sha, (c_lora / "other.safetensors").stat().st_size,
                                              "other.safetensors", "lora", "gpu-b", c))
            wait_for(lambda: desk.gate.holding(3), timeout=30)
            stops = b.log().count(": stopping")
            b.process.send_signal(signal.SIGTERM)
            wait_for(lambda: b.log().count(": stopping") > stops, timeout=30)  # the stop cancels the transfer first
        assert b.stop() == 0  # the report is answered; the transfer sees its cancel
        temp = b_lora / part_name(other_sha)
        kept = temp.stat().st_size
        assert kept > 0 and all(r["state"] == "running" for r in desk.reported(3))
        b2 = stack.enter_context(node_process(tmp_path, "gpu-b", desk_url, f"lora={b_lora}", extra=slow, data=b_data))
        done = wait_for(lambda: [r for r in desk.reported(3) if r["state"] == "done"], timeout=60)[0]
        assert sha256_of(b_lora / "other.safetensors") == other_sha and not temp.exists()
        assert "resumes from its temp file" in b.log()
        restarted = [r["bytes_done"] for r in desk.reported(3) if r["state"] == "running"][-1:]
        assert restarted and restarted[0] >= kept

        # cancelled on the server: the transfer stops and its temp file goes
        (c_lora / "third.safetensors").write_bytes(big_lora(tmp_path / "third.safetensors", 24).read_bytes())
        third_sha = sha256_of(c_lora / "third.safetensors")
        wait_for(lambda: third_sha in held_by(central, "gpu-c"), timeout=30)
        desk.cancel.add(4)
        desk.order(4, "gpu-b", peer_order(4, third_sha, (c_lora / "third.safetensors").stat().st_size, "third.safetensors", "lora",
                                 "gpu-b", c))
        wait_for(lambda: "transfer 4 was cancelled on the central server" in b2.log(), timeout=30)
        assert not (b_lora / part_name(third_sha)).exists() and not (b_lora / "third.safetensors").exists()
        assert b2.stop() == 0 and c.stop() == 0
