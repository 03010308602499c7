"""A real source node for the transfer tests: a folder of real .safetensors files, its catalog from a real scan,
and its file server (Starlette's FileResponse, the decisions of shared/transfer/serving.py) run by uvicorn on
127.0.0.1 in a thread, behind an ASGI layer that injects faults: a dropped connection mid-stream, wrong bytes, a
Range ignored, a slow stream, bytes past the end. Every request is logged as the server saw it.

    node = make_source_node(tmp_path, {"Lora/style.safetensors": 6})      # sizes in MiB
    with run_peer(node) as peer:
        peer.faults.drops, peer.faults.drop_after = 1, 2 * MIB
        receive(peer.source(node, "Lora/style.safetensors", "node-b"), ...)

For the node agents' transfers, the central server's side: a gate that holds a node's progress reports
(ReportGate) and a pass-through from a node to the central server that reports through it (CentralTap).
"""
from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import secrets
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import requests
from safetensors.numpy import save_file
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from modelsync.shared.catalog import migrate, open_catalog
from modelsync.shared.node.client import REPORT_TIMEOUT_SECONDS
from modelsync.shared.records import Root
from modelsync.shared.scan.scanner import scan
from modelsync.shared.transfer.grants import issue_grant, signing_key
from modelsync.shared.transfer.peer_source import PeerSource
from modelsync.shared.transfer.protocol import FILES_PATH, GRANT_HEADER, NODE_HEADER
from modelsync.shared.transfer.serving import Refusal, ServingNode
from support_server import serve_asgi, serve_http

MIB = 1024 * 1024
SOURCE_ID = "node-a"
DEST_ID = "node-b"
_rng = np.random.default_rng(1234)
# The request headers a pass-through does not pass on: its own connection's, and those requests sets itself.
HOP_BY_HOP = frozenset({"host", "connection", "keep-alive", "transfer-encoding", "content-length"})


def write_large_safetensors(path: Path, mib: float) -> Path:
    """A real safetensors file of about `mib` MiB with random content (its own SHA256 every call)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tensor = _rng.integers(0, 256, size=int(mib * MIB), dtype=np.uint8)
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": tensor}, str(path),
              metadata={"ss_output_name": path.stem})
    return path


@dataclass
class SourceNode:
    root: Path
    serving: ServingNode
    token: str = field(repr=False)
    files: dict[str, Path] = field(default_factory=dict)  # rel_name -> path
    sha256: dict[str, str] = field(default_factory=dict)  # rel_name -> SHA256 from the scan

    @property
    def key(self) -> str:
        return signing_key(self.token)

    def size(self, rel_name: str) -> int:
        return self.files[rel_name].stat().st_size

    def grant(self, rel_name: str, destination: str = DEST_ID, **kwargs: Any) -> str:
        return issue_grant(self.key, sha256=self.sha256[rel_name], source=SOURCE_ID, destination=destination,
                           **kwargs).value


@pytest.fixture
def model(tmp_path) -> bytes:
    """The bytes a download test's source serves: a real .safetensors file of 3 MiB."""
    return write_large_safetensors(tmp_path / "made" / "model.safetensors", 3).read_bytes()


@pytest.fixture
def dest(tmp_path) -> Path:
    """The role folder a download test's file lands in."""
    root = tmp_path / "models" / "Lora"
    root.mkdir(parents=True)
    return root


def make_source_node(tmp_path: Path, sizes_mib: dict[str, float]) -> SourceNode:
    root = tmp_path / "node-a" / "models"
    files = {rel: write_large_safetensors(root / rel, mib) for rel, mib in sizes_mib.items()}
    catalog = open_catalog(tmp_path / "node-a" / "catalog.db")
    migrate(catalog)
    scan([Root(str(root), "lora")], catalog, SOURCE_ID, calculate_hashes=True)
    sha256 = {
        rel: catalog.execute("""SELECT m.hash_sha256 FROM model_server_availability a JOIN models m ON m.id = a.model_id
                                WHERE a.path = ?""", [str(path)]).fetchone()[0]
        for rel, path in files.items()
    }
    token = secrets.token_urlsafe(32)
    return SourceNode(root, ServingNode(SOURCE_ID, catalog, signing_key(token)), token, files, sha256)


@dataclass
class Faults:
    drops: int = 0  # how many responses to cut after `drop_after` body bytes
    drop_after: int = 0
    corrupt: bool = False  # flip the first body byte of every response
    ignore_range: bool = False  # strip Range/If-Range: every answer is the whole file
    range_from_zero: bool = False  # answer a Range request from byte 0 (a 206 that does not continue)
    bytes_per_second: int | None = None
    extra: bytes = b""  # sent after a whole file, without a Content-Length


@dataclass
class Served:
    path: str
    range: str | None
    if_range: str | None
    status: int = 0
    body_bytes: int = 0


class DroppedOnPurpose(ConnectionAbortedError):
    pass


class FaultLayer:
    def __init__(self, app: Any, faults: Faults, served: list[Served]):
        self.app, self.faults, self.served = app, faults, served

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        record = Served(scope["path"], _text(headers.get(b"range")), _text(headers.get(b"if-range")))
        self.served.append(record)
        faults = self.faults
        if faults.ignore_range:
            scope = {**scope, "headers": [(k, v) for k, v in scope["headers"] if k not in (b"range", b"if-range")]}
        elif faults.range_from_zero and b"range" in headers:
            scope = {**scope, "headers": [(k, b"bytes=0-" if k == b"range" else v) for k, v in scope["headers"]]}
        drop = faults.drops > 0
        if drop:
            faults.drops -= 1
        corrupt_next = faults.corrupt

        async def faulty_send(message: dict) -> None:
            nonlocal corrupt_next
            if message["type"] == "http.response.start":
                record.status = message["status"]
                if faults.extra and record.status == 200:
                    message = {**message, "headers": [(k, v) for k, v in message["headers"] if k != b"content-length"]}
            elif message["type"] == "http.response.body":
                body = message.get("body", b"")
                if corrupt_next and body:
                    body, corrupt_next = bytes([body[0] ^ 0xFF]) + body[1:], False
                if faults.extra and record.status == 200 and not message.get("more_body"):
                    body += faults.extra
                if drop and record.body_bytes + len(body) > faults.drop_after:
                    cut = body[: faults.drop_after - record.body_bytes]
                    await send({"type": "http.response.body", "body": cut, "more_body": True})
                    record.body_bytes += len(cut)
                    raise DroppedOnPurpose("the test server cuts this connection")
                if faults.bytes_per_second and body:
                    await asyncio.sleep(len(body) / faults.bytes_per_second)
                record.body_bytes += len(body)
                message = {**message, "body": body}
            await send(message)

        await self.app(scope, receive, faulty_send)


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")


def peer_app(node: ServingNode, rescans: list[tuple[str, ...]]) -> Starlette:
    def serve_file(request: Request) -> Response:
        decision = node.decide(request.path_params["segment"], request.headers.get(GRANT_HEADER),
                               request.headers.get(NODE_HEADER))
        if isinstance(decision, Refusal):
            if decision.reason == "changed":
                rescans.append(decision.changed_paths)
            return JSONResponse(decision.body, status_code=decision.status)
        return FileResponse(decision.path, headers=decision.headers)

    return Starlette(routes=[Route(FILES_PATH + "{segment:path}", serve_file)])


@dataclass
class RunningPeer:
    base_url: str
    faults: Faults
    served: list[Served]
    rescans: list[tuple[str, ...]]

    @property
    def body_bytes(self) -> int:
        return sum(record.body_bytes for record in self.served)

    def source(self, node: SourceNode, rel_name: str, destination: str = DEST_ID, **grant_kwargs: Any) -> PeerSource:
        return PeerSource(self.base_url, node.sha256[rel_name], node.size(rel_name), destination,
                          node.grant(rel_name, destination, **grant_kwargs), timeout=(5.0, 5.0))


@contextlib.contextmanager
def run_peer(node: SourceNode) -> Iterator[RunningPeer]:
    served: list[Served] = []
    rescans: list[tuple[str, ...]] = []
    faults = Faults()
    app = FaultLayer(peer_app(node.serving, rescans), faults, served)
    with serve_asgi(app, "peer", lifespan="off", log_config=None, access_log=False, timeout_graceful_shutdown=2) as base_url:
        yield RunningPeer(base_url, faults, served, rescans)


def tampered(grant: str) -> str:
    """The grant with one character of its signature changed for sure (the second last: the last carries padding bits)."""
    return grant[:-2] + ("A" if grant[-2] != "A" else "B") + grant[-1]


class ReportGate:
    """Holds a node's `running` progress reports (of at least `from_bytes` bytes) while the test has the gate closed.
    The node's receiver reports synchronously, so while its report waits here the transfer reads nothing more: it can
    neither finish nor hear of a stop or a cancel until the gate opens. Closing waits until no report is on its way
    (one let through just before is answered first). A report waits at most HOLD_SECONDS, less than the node waits for
    its answer: a node that gave up on a report would carry on and send it again, and a stale copy would reach the
    server after newer ones. A node still held then sends its next report, held in turn."""
    HOLD_SECONDS = REPORT_TIMEOUT_SECONDS - 3  # the margin: passing the report on and its answer back

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._closed = False
        self._passing = 0  # reports let through whose answer has not yet come back
        self.from_bytes = 1
        self.held: list[tuple[int, dict]] = []  # (transfer id, report) that waited at the gate while it was closed

    @contextlib.contextmanager
    def closed(self, from_bytes: int = 1) -> Iterator[ReportGate]:
        with self._changed:
            self.from_bytes, self.held, self._closed = from_bytes, [], True
            self._changed.wait_for(lambda: self._passing == 0, timeout=REPORT_TIMEOUT_SECONDS)
        try:
            yield self
        finally:
            with self._changed:
                self._closed = False
                self._changed.notify_all()

    def holding(self, transfer_id: int) -> dict | None:
        """A report of the transfer that came to the gate while it was closed: it waits there until the gate opens."""
        return next((body for tid, body in self.held if tid == transfer_id), None)

    @contextlib.contextmanager
    def passing(self, transfer_id: int, body: dict) -> Iterator[None]:
        """Enters once the report may go on (at once unless the gate is closed and it is a `running` report); the
        block passes it on and takes its answer."""
        with self._changed:
            if self._closed and body.get("state") == "running" and body.get("bytes_done", 0) >= self.from_bytes:
                self.held.append((transfer_id, body))
                self._changed.wait_for(lambda: not self._closed, timeout=self.HOLD_SECONDS)
            self._passing += 1
        try:
            yield
        finally:
            with self._changed:
                self._passing -= 1
                self._changed.notify_all()


class CentralTap:
    """A pass-through from a node to the central server at `central_url` (kept across a restart on the same port).
    Progress reports go on only through `gate`. The node's long-polls for orders are recorded in `polls`: ("asked",
    None) when one arrives, ("answered", transfer ids) when its answer goes back. While the central server is down the
    node's request is dropped unanswered, as the server's own port would drop it."""

    def __init__(self, central_url: str) -> None:
        self.central_url = central_url
        self.gate = ReportGate()
        self.polls: list[tuple[str, list[int] | None]] = []

    def asked_again_after_being_given(self, transfer_id: int) -> bool:
        """The node had `transfer_id` in an answer and then asked again: it has decided about that order."""
        polls = list(self.polls)
        given = next((i for i, (what, ids) in enumerate(polls) if what == "answered" and transfer_id in ids), None)
        return given is not None and any(what == "asked" for what, _ in polls[given + 1:])

    @contextlib.contextmanager
    def serving(self) -> Iterator[str]:
        tap = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                path = self.path.split("?")[0]
                orders = self.command == "GET" and path.endswith("/transfers/orders")
                if orders:
                    tap.polls.append(("asked", None))
                gate = contextlib.nullcontext()
                if self.command == "POST" and path.endswith("/progress"):
                    gate = tap.gate.passing(int(path.split("/")[-2]), json.loads(data))
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                try:
                    with gate:
                        answer = requests.request(self.command, tap.central_url + self.path, data=data,
                                                  headers=headers, timeout=60)
                except requests.RequestException:  # the central server is down
                    self.close_connection = True
                    return
                if orders and answer.status_code == 200:
                    tap.polls.append(("answered", [o["transfer_id"] for o in answer.json()["orders"]]))
                self.send_response(answer.status_code)
                for name in ("Content-Type", "Retry-After"):
                    if name in answer.headers:
                        self.send_header(name, answer.headers[name])
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                with contextlib.suppress(ConnectionError):  # the node hung up: a stop during a long-poll
                    self.wfile.write(answer.content)

            do_GET = do_POST = do_PUT = do_DELETE = _handle

            def log_message(self, *args) -> None:
                pass

        with serve_http(Handler) as base_url:
            yield base_url
