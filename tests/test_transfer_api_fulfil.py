"""A dispatch-check with "fulfil": the server orders the copies a node lacks from an online peer and answers with
them (route_elsewhere when another node can run the job now, retry_later when none can), the same transfers on a
repeat, ok with the node's own names once the node has synced the file; never a copy for a name that means different
content on different nodes; a transfer that failed for good returned as it is; who may order (loopback clients, or
the queue token when one is set), judged on the real client behind a trusted proxy (127.0.0.2 plays the proxy)."""
from __future__ import annotations

import json
from typing import Any

import pytest
from support_jobs import set_last_contact, sha256_of
from support_server import RunningServer, make_server, raw_http  # noqa: F401  (fixture)
from test_transfer_api import Fleet

PROXY = "127.0.0.2"
REMOTE = "203.0.113.9"
JOB = {"prompt": "a lighthouse at dusk, <lora:ink:0.8>", "steps": 20,
       "override_settings": {"sd_model_checkpoint": "base.safetensors"}}


class FulfilFleet(Fleet):
    """node-a holds the LoRA and the checkpoint (it can run JOB); node-b holds only the checkpoint."""

    def __init__(self, server: RunningServer, base):
        super().__init__(server, base)
        self.b.job.copy(self.checkpoint, "Stable-diffusion", "base.safetensors")
        self.b.push()

    def check(self, server_id: str = "node-b", headers: dict[str, str] | None = None, **body: Any) -> dict[str, Any]:
        r = self.server.post(f"/api/v1/servers/{server_id}/dispatch-check", json={"job": JOB, **body}, headers=headers)
        assert r.status_code == 200, r.text
        return r.json()


@pytest.fixture
def fleet(make_server, tmp_path):  # noqa: F811
    return FulfilFleet(make_server(), tmp_path)


def via_proxy(server: RunningServer, path: str, body: dict[str, Any], forwarded_for: str,
              token: str | None = None) -> tuple[int, dict[str, Any]]:
    """A POST that reaches the server through the trusted proxy, for the client it names."""
    data = json.dumps(body).encode()
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    head = (f"POST {path} HTTP/1.1\r\nHost: registry\r\nContent-Type: application/json\r\nConnection: close\r\n"
            f"X-Forwarded-For: {forwarded_for}\r\n{auth}Content-Length: {len(data)}\r\n\r\n").encode()
    status, response = raw_http(server, head, data, source=PROXY)
    return status, json.loads(response.partition(b"\r\n\r\n")[2])


def test_fulfil_orders_the_missing_model_once_and_answers_ok_when_the_node_has_it(fleet):
    without = fleet.check()
    assert without["action"] == "route_elsewhere" and "transfers" not in without
    answer = fleet.check(fulfil=True)
    assert (answer["ok"], answer["action"]) == (False, "route_elsewhere")
    assert [n["server_id"] for n in answer["nodes"]] == ["node-a"]
    (transfer,) = answer["transfers"]
    assert (transfer["server_id"], transfer["sha256"], transfer["state"]) == ("node-b", sha256_of(fleet.lora), "queued")
    assert transfer["size"] == fleet.lora.stat().st_size and "eta_seconds" in transfer
    assert answer["missing"] == without["missing"] and answer["requirements"] == without["requirements"]
    assert fleet.check(fulfil=True)["transfers"] == [transfer]  # asking again: the same transfer, no second copy
    (order,) = fleet.b.orders().json()["orders"]
    assert order["transfer_id"] == transfer["id"]
    # the node receives the file and says so; until its sync lists it, the done transfer is the answer
    size = fleet.lora.stat().st_size
    assert fleet.b.report(transfer["id"], "done", bytes_done=size).json()["state"] == "done"
    waiting = fleet.check(fulfil=True)
    assert waiting["ok"] is False and [t["id"] for t in waiting["transfers"]] == [transfer["id"]]
    assert waiting["transfers"][0]["state"] == "done"
    fleet.b.job.copy(fleet.lora, "Lora", "styles/ink.safetensors")
    fleet.b.push()
    done = fleet.check(fulfil=True)
    assert done["ok"] is True and done["action"] is None and "transfers" not in done
    assert "<lora:ink:0.8>" in done["payload"]["prompt"]
    assert fleet.transfers()["total"] == 1


def test_retry_later_with_the_transfers_when_no_node_can_run_the_job_now(make_server, tmp_path):  # noqa: F811
    fleet = FulfilFleet(make_server(), tmp_path)
    fleet.a.job.models.joinpath("Stable-diffusion", "base.safetensors").unlink()  # node-a keeps only the LoRA
    fleet.a.push()
    without = fleet.check()
    assert without["action"] == "fail" and "transfers" not in without
    answer = fleet.check(fulfil=True)
    assert (answer["ok"], answer["action"], answer["nodes"]) == (False, "retry_later", [])
    (transfer,) = answer["transfers"]
    assert transfer["sha256"] == sha256_of(fleet.lora)
    assert fleet.check(fulfil=True)["transfers"] == [transfer]


def test_a_transfer_that_failed_for_good_is_returned_as_it_is_until_retried(fleet):
    (transfer,) = fleet.check(fulfil=True)["transfers"]
    failed = fleet.b.report(transfer["id"], "failed", bytes_done=0, reason="disk_full", error="12 MiB free, 2 GiB needed")
    assert failed.json()["state"] == "failed"
    without = fleet.check()
    answer = fleet.check(fulfil=True)
    assert [(t["id"], t["state"], t["reason"]) for t in answer["transfers"]] == [(transfer["id"], "failed", "disk_full")]
    assert (answer["action"], answer["nodes"]) == (without["action"], without["nodes"])
    assert answer["reason"].startswith(without["reason"]) and "disk_full" in answer["reason"]
    assert fleet.transfers()["total"] == 1  # not ordered again
    r = fleet.server.post(f"/api/v1/transfers/{transfer['id']}/retry", headers=fleet.server.admin_headers)
    assert r.status_code == 200
    again = fleet.check(fulfil=True)
    assert again["action"] == "route_elsewhere"
    assert [(t["id"], t["state"]) for t in again["transfers"]] == [(transfer["id"], "queued")]


def test_a_name_meaning_different_content_on_different_nodes_is_never_copied(fleet):
    c = fleet.node("node-c", "http://127.0.0.1:17003")
    fleet.a.job.add("Lora", "detail.safetensors", base="sdxl")
    c.job.add("Lora", "detail.safetensors", base="sd1")  # the same name, other content
    fleet.a.push()
    c.push()
    job = {"prompt": "a lighthouse, <lora:detail:1>"}
    path = "/api/v1/servers/node-b/dispatch-check"
    without = fleet.server.post(path, json={"job": job}).json()
    answer = fleet.server.post(path, json={"job": job, "fulfil": True}).json()
    assert answer["requirements"][0]["status"] == "name_conflict"
    assert answer == without and answer["action"] == "route_elsewhere"
    assert fleet.transfers()["total"] == 0


def test_the_server_wide_default_and_an_explicit_no(make_server, tmp_path):  # noqa: F811
    fleet = FulfilFleet(make_server(fulfil="peer"), tmp_path)
    assert "transfers" not in fleet.check(fulfil=False)
    (transfer,) = fleet.check()["transfers"]
    assert transfer["sha256"] == sha256_of(fleet.lora)
    r = fleet.server.post("/api/v1/servers/node-b/dispatch-check", json={"job": JOB, "fulfil": "yes"})
    assert r.status_code == 400 and r.json()["field"] == "fulfil"


def test_fulfil_from_a_client_not_on_loopback_is_not_authorised_without_a_queue_token(make_server, tmp_path):  # noqa: F811
    fleet = FulfilFleet(make_server(trusted_proxies=(PROXY,)), tmp_path)
    path = "/api/v1/servers/node-b/dispatch-check"
    status, remote = via_proxy(fleet.server, path, {"job": JOB, "fulfil": True}, REMOTE)
    assert status == 200 and "transfers" not in remote
    assert remote["warnings"][-1]["type"] == "fulfil_not_authorised"
    assert remote["action"] == fleet.check()["action"] == "route_elsewhere"
    assert fleet.transfers()["total"] == 0
    status, local = via_proxy(fleet.server, path, {"job": JOB, "fulfil": True}, "127.0.0.1")  # the server's own host
    assert status == 200 and len(local["transfers"]) == 1
    assert all(w["type"] != "fulfil_not_authorised" for w in local["warnings"])


def test_with_a_queue_token_fulfil_needs_it(make_server, tmp_path):  # noqa: F811
    queue_token = "queue-token-0123456789abcdef"
    fleet = FulfilFleet(make_server(trusted_proxies=(PROXY,), queue_token=queue_token), tmp_path)
    path = "/api/v1/servers/node-b/dispatch-check"
    status, refused = via_proxy(fleet.server, path, {"job": JOB, "fulfil": True}, REMOTE, token="wrong-token-0123456789")
    assert status == 403 and refused["field"] == "Authorization"
    status, refused = via_proxy(fleet.server, path, {"job": JOB, "fulfil": True}, "127.0.0.1", token=fleet.b.token)
    assert status == 403  # a node's token is not the queue token, even from loopback
    assert fleet.transfers()["total"] == 0
    status, answer = via_proxy(fleet.server, path, {"job": JOB, "fulfil": True}, REMOTE, token=queue_token)
    assert status == 200 and len(answer["transfers"]) == 1
    status, answer = via_proxy(fleet.server, path, {"job": JOB, "fulfil": True}, REMOTE, token=fleet.server.admin_token)
    assert status == 200 and [t["id"] for t in answer["transfers"]] == [answer["transfers"][0]["id"]]
    assert fleet.transfers()["total"] == 1


def test_fulfil_orders_nothing_for_an_offline_node_or_the_server_s_own(make_server, tmp_path):  # noqa: F811
    model_root = tmp_path / "central-models"
    model_root.mkdir()
    fleet = FulfilFleet(make_server(model_paths=[model_root]), tmp_path)
    assert fleet.server.post("/api/v1/models/scan", json={"calculate_hashes": True}).status_code == 200
    own = fleet.check("central", fulfil=True)  # the server's own node lacks both models and runs no agent
    assert own["ok"] is False and "transfers" not in own
    set_last_contact(fleet.server.db_path, "node-b", "2020-01-01T00:00:00Z")
    offline = fleet.check(fulfil=True)
    assert offline["online"] is False and "transfers" not in offline
    assert fleet.transfers()["total"] == 0
