"""A cancelled transfer and a new order of the same model on the same node, end to end with real processes: a central
server, the source node `gpu-a` and the receiving node `gpu-b` (`modelsync node`), real .safetensors files.

Both transfers write the one temp file named by the SHA256. The cancelled transfer learns of its cancel only at its
next progress report, so while that report is on its way it is still under way when the new order reaches the node: the
new one must wait until the cancelled one has ended (and removed its temp file), then copy the model whole, and the
healthy source must not be excluded for "wrong bytes".

gpu-a's file server sits behind a pass-through that holds every response of the model's file after HOLD_AFTER bytes
until the test releases it (a stalled source). gpu-b talks to the central server through a pass-through that records
its long-polls for orders, so the test knows when the node has had the new order and decided about it, and that holds
its progress reports at a gate while the test has it closed (CentralTap): the node may still be reading what the
stalled source had already sent, and a report answered "cancelled" before the new order is decided would end the
cancelled transfer too early for the test to see the new order wait."""
from __future__ import annotations

import contextlib
import http.server
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
import requests
from modelsync.shared.transfer.partfiles import part_name
from modelsync.shared.transfer.protocol import FILES_PATH
from support_server import RunningServer, serve_http, server_process, wait_for
from support_transfer import HOP_BY_HOP, CentralTap
from test_fleet_transfers import models_tree, roles, transfer
from test_node_agent import big_lora, held_by, node_process, server_entry, sha256_of

pytestmark = pytest.mark.timeout(240)

HOLD_AFTER = 2 * 1024 * 1024  # body bytes of the model's file a response sends before it stalls
SLOW = ("--bandwidth", "8MB/s")  # the rest of a 24 MiB copy takes seconds: the cancelled one hears of it midway


@dataclass
class FileRequest:
    path: str
    range: str | None
    first_ended: bool  # transfer 1 had ended on the receiving node when this request arrived


@dataclass
class StallingSource:
    """A pass-through to a node's file server; a response of the model's file stalls after HOLD_AFTER bytes until
    `release` is set. Every request of the file is logged."""
    sha256: str
    upstream: str = ""
    release: threading.Event = field(default_factory=threading.Event)
    holding: threading.Event = field(default_factory=threading.Event)
    requests: list[FileRequest] = field(default_factory=list)
    first_ended: Callable[[], bool] = lambda: False

    @contextlib.contextmanager
    def serving(self) -> Iterator[str]:
        source = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                model_file = self.path == FILES_PATH + source.sha256
                if model_file:
                    source.requests.append(FileRequest(self.path, self.headers.get("Range"), source.first_ended()))
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                with requests.get(source.upstream + self.path, headers=headers, stream=True, allow_redirects=False,
                                  timeout=60) as answer:
                    self.send_response(answer.status_code)
                    for name, value in answer.headers.items():
                        if name.lower() not in HOP_BY_HOP | {"date", "server"}:
                            self.send_header(name, value)
                    self.end_headers()  # HTTP/1.0: the body ends when the connection closes
                    sent = 0
                    with contextlib.suppress(ConnectionError):  # the node hung up: a cancelled transfer, a stop
                        for block in answer.raw.stream(64 * 1024, decode_content=False):
                            if model_file and sent >= HOLD_AFTER and not source.release.is_set():
                                source.holding.set()
                                source.release.wait()
                            self.wfile.write(block)
                            sent += len(block)

            def log_message(self, *args) -> None:
                pass

        with serve_http(Handler) as base_url:
            yield base_url


def exclusions(central: RunningServer) -> list[tuple]:
    with contextlib.closing(sqlite3.connect(central.db_path)) as db:
        return db.execute("SELECT source_server_id, sha256 FROM transfer_source_exclusions").fetchall()


def test_a_new_order_of_a_cancelled_transfers_model_waits_until_the_cancelled_one_has_ended(tmp_path):
    a_models, b_models = models_tree(tmp_path / "a"), models_tree(tmp_path / "b")
    big = big_lora(a_models / "Lora" / "big.safetensors", 24)
    big_sha = sha256_of(big)
    source = StallingSource(big_sha)
    with server_process(tmp_path / "central") as central, contextlib.ExitStack() as stack:
        tap = CentralTap(central.base_url)
        tap_url = stack.enter_context(tap.serving())
        source_url = stack.enter_context(source.serving())
        stack.callback(source.release.set)  # never leave a response held, whatever fails
        a = stack.enter_context(node_process(tmp_path, "gpu-a", central.base_url, *roles(a_models),
                                             extra=("--files-url", source_url)))
        source.upstream = a.files_url
        b = stack.enter_context(node_process(tmp_path, "gpu-b", tap_url, *roles(b_models), extra=SLOW))
        wait_for(lambda: big_sha in held_by(central, "gpu-a") and server_entry(central, "gpu-b"), timeout=60)

        first = central.post("/api/v1/transfers", json={"server_id": "gpu-b", "sha256": big_sha},
                             headers=central.admin_headers).json()["id"]
        source.first_ended = lambda: f"transfer {first} was cancelled on the central server" in b.log()
        wait_for(source.holding.is_set, timeout=30)  # transfer 1 is under way, its source stalled
        with tap.gate.closed():  # transfer 1 hears of its cancel only once the new order has been decided
            cancelled = central.delete(f"/api/v1/transfers/{first}", headers=central.admin_headers)
            assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
            again = central.post("/api/v1/transfers", json={"server_id": "gpu-b", "sha256": big_sha},
                                 headers=central.admin_headers)
            assert again.status_code == 201, again.text
            second = again.json()["id"]

            # the node has had the new order and decided (it asks again), or started it at once (it fetches the file)
            wait_for(lambda: tap.asked_again_after_being_given(second) or len(source.requests) > 1, timeout=30)
            assert len(source.requests) == 1, "transfer 2 fetched the file while transfer 1 was still writing it"
            assert not source.first_ended()

        source.release.set()
        done = wait_for(lambda: (t := transfer(central, second))["state"] in ("done", "failed") and t, timeout=60)
        assert done["state"] == "done", done
        assert done["source"]["server_id"] == "gpu-a"
        assert sha256_of(b_models / "Lora" / "big.safetensors") == big_sha
        assert not (b_models / "Lora" / part_name(big_sha)).exists()
        assert transfer(central, first)["state"] == "cancelled"
        assert exclusions(central) == []
        later = source.requests[1:]
        assert later and all(r.first_ended for r in later)  # transfer 2 began only once transfer 1 had ended
        assert later[0].range is None  # from byte 0: transfer 1 removed its temp file before transfer 2 began
        assert b.stop() == 0 and a.stop() == 0
        assert "Traceback" not in a.log() + b.log()
