"""The transfer API over real HTTP: a real server (uvicorn), nodes pushing inventories from real scans of real
.safetensors files, their tokens as the server issues them. Who may order, read, cancel, retry and report; the
long-poll for orders (answers an order made meanwhile at once, holds while there is nothing, wakes when a holder comes
back online); grants only in the orders; files_url from heartbeats and syncs."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import model_factory
import pytest
import requests
from support_jobs import JobNode, set_last_contact, sha256_of
from support_server import RunningServer, make_server, raw_http  # noqa: F401  (fixture)

from modelsync.shared.transfer.grants import signing_key, verify_grant
from modelsync.shared.transfer.protocol import file_url

LONG_WAIT = 20  # a long-poll's wait that only a wake-up ends early


class Node:
    """A node of the fleet: its Forge models/ tree, scanned for real, and its token as the admin issued it."""

    def __init__(self, server: RunningServer, base: Path, server_id: str, files_url: str | None = None):
        self.server = server
        self.id = server_id
        self.files_url = files_url
        self.job = JobNode(base, server_id)
        r = server.post(f"/api/v1/servers/{server_id}/token", headers=server.admin_headers)
        assert r.status_code == 200, r.text
        self.token = r.json()["token"]

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def push(self) -> dict[str, Any]:
        body = self.job.scan().to_dict()
        if self.files_url:
            body["files_url"] = self.files_url
        r = self.server.post(f"/api/v1/servers/{self.id}/models/sync", json=body, headers=self.headers)
        assert r.status_code == 200, r.text
        return r.json()

    def heartbeat(self, **body: Any) -> requests.Response:
        return self.server.post(f"/api/v1/servers/{self.id}/heartbeat", json=body, headers=self.headers)

    def orders(self, wait: float = 0, running: tuple[int, ...] = ()) -> requests.Response:
        params: dict[str, Any] = {"wait": wait}
        if running:
            params["running"] = ",".join(map(str, running))
        return self.server.get(f"/api/v1/servers/{self.id}/transfers/orders", params=params, headers=self.headers)

    def report(self, transfer_id: int, state: str, **fields: Any) -> requests.Response:
        return self.server.post(f"/api/v1/transfers/{transfer_id}/progress", json={"state": state, **fields},
                                headers=self.headers)


class Fleet:
    """Node a holds a LoRA and a checkpoint and serves files (its files_url); node b holds nothing yet."""

    def __init__(self, server: RunningServer, base: Path):
        self.server = server
        self.base = base
        self.a = self.node("node-a", "http://127.0.0.1:17001")
        self.b = self.node("node-b", "http://127.0.0.1:17002")
        self.lora = self.a.job.add("Lora", "styles/ink.safetensors", base="sdxl")
        self.checkpoint = self.a.job.add("Stable-diffusion", "base.safetensors", model_factory.write_checkpoint, base="sdxl")
        self.a.push()
        self.b.push()

    def node(self, server_id: str, files_url: str | None) -> Node:
        return Node(self.server, self.base, server_id, files_url)

    def order(self, body: dict[str, Any], headers: dict[str, str] | None = None) -> requests.Response:
        return self.server.post("/api/v1/transfers", json=body, headers=self.server.admin_headers if headers is None else headers)

    def order_lora(self) -> dict[str, Any]:
        r = self.order({"server_id": "node-b", "sha256": sha256_of(self.lora)})
        assert r.status_code in (200, 201), r.text
        return r.json()

    def transfers(self, **params: Any) -> dict[str, Any]:
        r = self.server.get("/api/v1/transfers", params=params)
        assert r.status_code == 200, r.text
        return r.json()


@pytest.fixture
def fleet(make_server, tmp_path):  # noqa: F811
    return Fleet(make_server(), tmp_path)


def head_only(method: str, path: str, length: int, token: str | None = None) -> bytes:
    """A request's head announcing `length` body bytes that are never sent: any answer proves the server did not
    read a body."""
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return (f"{method} {path} HTTP/1.1\r\nHost: registry\r\nContent-Type: application/json\r\n{auth}"
            f"Content-Length: {length}\r\n\r\n").encode()


def test_the_admin_orders_a_copy_once_and_ordering_it_again_returns_the_same_transfer(fleet):
    sha256 = sha256_of(fleet.lora)
    r = fleet.order({"server_id": "node-b", "sha256": sha256})
    assert r.status_code == 201, r.text
    transfer = r.json()
    assert (transfer["server_id"], transfer["sha256"], transfer["state"]) == ("node-b", sha256, "queued")
    assert transfer["source"] == {"kind": "peer", "server_id": None, "civitai": None, "url": None} and transfer["size"] == fleet.lora.stat().st_size
    again = fleet.order({"server_id": "node-b", "model_id": transfer["model_id"], "source": "peer"})
    assert again.status_code == 200 and again.json()["id"] == transfer["id"]
    assert fleet.transfers(server_id="node-b")["total"] == 1
    assert fleet.transfers(server_id="node-a")["total"] == 0


def test_a_node_orders_for_itself_only(fleet):
    sha256 = sha256_of(fleet.checkpoint)
    refused = fleet.order({"server_id": "node-b", "sha256": sha256}, headers=fleet.a.headers)
    assert refused.status_code == 403 and refused.json()["field"] == "server_id"
    assert fleet.transfers()["total"] == 0
    r = fleet.order({"server_id": "node-b", "sha256": sha256}, headers=fleet.b.headers)
    assert r.status_code == 201, r.text
    assert fleet.order({"server_id": "node-b", "sha256": sha256}, headers=fleet.b.headers).json()["id"] == r.json()["id"]


def test_an_order_without_a_token_or_with_a_stranger_s_is_refused_before_its_body(fleet):
    for token, status in ((None, 401), ("not-a-token-of-this-server", 403)):
        answered, response = raw_http(fleet.server, head_only("POST", "/api/v1/transfers", 50_000_000, token), timeout=10)
        assert answered == status and b'"field":"Authorization"' in response
    # another node's token on a progress report: refused before the report is read
    transfer = fleet.order_lora()
    answered, response = raw_http(fleet.server, head_only("POST", f"/api/v1/transfers/{transfer['id']}/progress",
                                                          50_000_000, fleet.a.token), timeout=10)
    assert answered == 403 and b'"field":"Authorization"' in response
    assert fleet.transfers()["total"] == 1


def test_what_cannot_be_ordered_is_refused_with_its_field(fleet):
    sha256 = sha256_of(fleet.lora)
    cases = [
        ({"server_id": "central", "sha256": sha256}, 409, "server_id"),  # the server's own node runs no agent
        ({"server_id": "node-a", "sha256": sha256}, 409, "sha256"),  # it holds the model
        ({"server_id": "node-z", "sha256": sha256}, 404, "server_id"),
        ({"server_id": "node-b", "sha256": "0" * 64}, 404, "sha256"),
        ({"server_id": "node-b"}, 400, "sha256"),
        ({"server_id": "node-b", "sha256": sha256, "source": "ftp"}, 400, "source"),
        ({"server_id": "node-b", "sha256": sha256, "path": "/etc/passwd"}, 400, "path"),
    ]
    for body, status, field in cases:
        r = fleet.order(body)
        assert (r.status_code, r.json()["field"]) == (status, field), (body, r.text)
    assert fleet.transfers()["total"] == 0


def test_orders_carry_grants_that_never_appear_in_the_list_or_a_transfer(fleet):
    transfer = fleet.order_lora()
    r = fleet.b.orders()
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    (order,) = r.json()["orders"]
    (source,) = order["sources"]
    assert (order["transfer_id"], order["rel_name"], order["role"]) == (transfer["id"], "styles/ink.safetensors", "lora")
    assert source["url"] == file_url("http://127.0.0.1:17001", transfer["sha256"])
    claims = verify_grant(source["grant"], signing_key(fleet.a.token), sha256=transfer["sha256"], source="node-a",
                          destination="node-b", now=time.time())
    assert (claims.sha256, claims.destination) == (transfer["sha256"], "node-b")
    listed = [fleet.server.get("/api/v1/transfers").text, fleet.server.get(f"/api/v1/transfers/{transfer['id']}").text,
              fleet.server.get("/api/v1/transfers", params={"state": "queued", "server_id": "node-b"}).text]
    for text in listed:
        assert transfer["sha256"] in text and source["grant"] not in text and "grant" not in json.loads(text)
    # the orders are the node's own: neither the admin nor another node reads them
    assert fleet.server.get("/api/v1/servers/node-b/transfers/orders", headers=fleet.server.admin_headers).status_code == 403
    assert fleet.server.get("/api/v1/servers/node-b/transfers/orders", headers=fleet.a.headers).status_code == 403
    assert fleet.server.get("/api/v1/servers/node-b/transfers/orders").status_code == 401


def test_the_long_poll_answers_an_order_made_while_it_waits(fleet):
    assert fleet.b.orders().json() == {"orders": []}

    def order_soon() -> None:
        time.sleep(0.5)
        fleet.order_lora()

    thread = threading.Thread(target=order_soon)
    thread.start()
    r = fleet.b.orders(wait=LONG_WAIT)
    thread.join()
    # a wait that ran out answers with nothing: an order in the answer means the order woke the long-poll
    (order,) = r.json()["orders"]
    assert order["sha256"] == sha256_of(fleet.lora)
    # a transfer the node says it runs is not handed out again
    assert fleet.b.orders(running=(order["transfer_id"],)).json() == {"orders": []}


def test_the_long_poll_holds_until_its_wait_when_there_is_nothing(fleet):
    started = time.monotonic()
    r = fleet.b.orders(wait=1)
    assert r.status_code == 200 and r.json() == {"orders": []}
    assert time.monotonic() - started >= 1
    for wait, running in (("-1", ""), ("nan", ""), ("1", "1,x"), ("1", "0")):
        r = fleet.server.get("/api/v1/servers/node-b/transfers/orders", params={"wait": wait, "running": running},
                             headers=fleet.b.headers)
        assert r.status_code == 400 and r.json()["field"] in ("wait", "running"), r.text


def test_the_long_poll_wakes_when_a_holder_comes_back_online(fleet):
    set_last_contact(fleet.server.db_path, "node-a", "2020-01-01T00:00:00Z")  # node-a went silent long ago
    transfer = fleet.order_lora()
    assert fleet.b.orders().json() == {"orders": []}
    waiting = fleet.server.get(f"/api/v1/transfers/{transfer['id']}").json()
    assert (waiting["state"], waiting["reason"]) == ("waiting_source", "no_online_holder")

    def come_back() -> None:
        time.sleep(0.5)
        assert fleet.a.heartbeat().status_code == 200

    thread = threading.Thread(target=come_back)
    thread.start()
    r = fleet.b.orders(wait=LONG_WAIT)
    thread.join()
    (order,) = r.json()["orders"]
    assert [s["server_id"] for s in order["sources"]] == ["node-a"]
    assert fleet.server.get(f"/api/v1/transfers/{transfer['id']}").json()["state"] == "queued"


def test_files_url_from_a_heartbeat_is_where_peers_fetch_from(fleet):
    fleet.order_lora()
    assert fleet.a.heartbeat(files_url="http://10.9.8.7:7860/").status_code == 200
    (order,) = fleet.b.orders().json()["orders"]
    assert order["sources"][0]["url"] == file_url("http://10.9.8.7:7860/", sha256_of(fleet.lora))
    for bad in ("ftp://10.9.8.7/", "http://user:secret@10.9.8.7/", "http://10.9.8.7/?x=1", 7):
        r = fleet.a.heartbeat(files_url=bad)
        assert r.status_code == 400 and r.json()["field"] == "files_url", bad
    (order,) = fleet.b.orders().json()["orders"]
    assert order["sources"][0]["url"].startswith("http://10.9.8.7:7860/")  # a refused heartbeat changed nothing


def test_only_the_destination_node_reports_progress(fleet):
    transfer = fleet.order_lora()
    path = f"/api/v1/transfers/{transfer['id']}/progress"
    running = {"state": "running", "bytes_done": 1024, "speed_bps": 2048.0, "eta_seconds": 3.5, "source_server_id": "node-a"}
    assert fleet.server.post(path, json=running, headers=fleet.a.headers).status_code == 403
    assert fleet.server.post(path, json=running, headers=fleet.server.admin_headers).status_code == 403
    assert fleet.server.post(path, json=running).status_code == 401
    r = fleet.b.report(transfer["id"], **running)
    assert r.status_code == 200, r.text
    reported = r.json()
    assert (reported["state"], reported["bytes_done"], reported["eta_seconds"]) == ("running", 1024, 3.5)
    assert reported["source"] == {"kind": "peer", "server_id": "node-a", "civitai": None, "url": None}
    for body, field in (({"state": "queued", "bytes_done": 0}, "state"), ({"state": "running"}, "bytes_done"),
                        ({"state": "failed", "bytes_done": 0, "reason": "bored"}, "reason"),
                        ({"state": "running", "bytes_done": 0, "grant": "x"}, "grant")):
        r = fleet.b.report(transfer["id"], **body)
        assert r.status_code == 400 and r.json()["field"] == field, r.text
    size = fleet.lora.stat().st_size
    done = fleet.b.report(transfer["id"], "done", bytes_done=size, dest_path="/models/Lora/styles/ink.safetensors")
    assert done.json()["state"] == "done" and done.json()["bytes_done"] == size
    assert fleet.server.get(f"/api/v1/transfers/{transfer['id']}").json()["dest_path"] == "/models/Lora/styles/ink.safetensors"


def test_a_source_failure_is_ordered_again_at_once_from_another_holder(fleet):
    c = fleet.node("node-c", "http://127.0.0.1:17003")
    c.job.copy(fleet.lora, "Lora", "ink.safetensors")
    c.push()
    transfer = fleet.order_lora()
    (order,) = fleet.b.orders().json()["orders"]
    first = order["sources"][0]["server_id"]
    r = fleet.b.report(transfer["id"], "running", bytes_done=0, source_server_id=first)
    assert r.status_code == 200
    r = fleet.b.report(transfer["id"], "failed", bytes_done=0, reason="source_gone", error="connection reset",
                       source_server_id=first)
    assert r.json()["state"] == "queued" and r.json()["reason"] == "source_gone"
    (order,) = fleet.b.orders(wait=LONG_WAIT).json()["orders"]
    assert [s["server_id"] for s in order["sources"]] == [({"node-a", "node-c"} - {first}).pop()]


def test_cancel_by_the_admin_or_the_destination_and_retry_by_the_admin(fleet):
    transfer = fleet.order_lora()
    path = f"/api/v1/transfers/{transfer['id']}"
    assert fleet.server.delete(path, headers=fleet.a.headers).status_code == 403
    assert fleet.server.delete(path).status_code == 401
    r = fleet.server.delete(path, headers=fleet.b.headers)
    assert r.status_code == 200 and (r.json()["state"], r.json()["reason"]) == ("cancelled", "cancelled")
    # the node's next report learns it
    assert fleet.b.report(transfer["id"], "running", bytes_done=10).json()["state"] == "cancelled"
    assert fleet.b.orders().json() == {"orders": []}
    assert fleet.server.post(path + "/retry", headers=fleet.b.headers).status_code == 403
    r = fleet.server.post(path + "/retry", headers=fleet.server.admin_headers)
    assert r.status_code == 200 and r.json()["state"] == "queued" and r.json()["reason"] is None
    assert fleet.server.post(path + "/retry", headers=fleet.server.admin_headers).status_code == 409  # queued already
    (order,) = fleet.b.orders().json()["orders"]
    assert order["transfer_id"] == transfer["id"]
    r = fleet.server.delete(path, headers=fleet.server.admin_headers)
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    assert fleet.server.delete("/api/v1/transfers/999999", headers=fleet.server.admin_headers).status_code == 404


def test_the_list_pages_and_filters(fleet):
    fleet.order_lora()
    fleet.order({"server_id": "node-b", "sha256": sha256_of(fleet.checkpoint)})
    page = fleet.transfers(limit=1)
    assert (page["total"], page["limit"], len(page["transfers"])) == (2, 1, 1)
    assert page["transfers"][0]["sha256"] == sha256_of(fleet.checkpoint)  # newest first
    assert fleet.transfers(limit=1, offset=1)["transfers"][0]["sha256"] == sha256_of(fleet.lora)
    assert fleet.transfers(state="done")["total"] == 0
    for params, field in (({"state": "lost"}, "state"), ({"limit": 0}, "limit"), ({"server_id": "../x"}, "server_id")):
        r = fleet.server.get("/api/v1/transfers", params=params)
        assert r.status_code == 400 and r.json()["field"] == field
