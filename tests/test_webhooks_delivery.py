"""Webhook delivery over real HTTP: a real central server (uvicorn), a loopback receiver that verifies every signature
with the `standardwebhooks` package. Events come from their real condition (a job asking for a checkpoint no node
has: job.blocked). Retry delays are shortened through the server's configuration."""
from __future__ import annotations

import json
import logging
from datetime import datetime, timezone

import pytest
from support_server import RunningServer, free_port, make_server, wait_for  # noqa: F401  (fixture)
from support_webhooks import create_webhook, deliveries, webhook_receiver

from modelsync.server.webhooks import store
from modelsync.server.webhooks.delivery import Outcome, next_attempt
from modelsync.server.webhooks.events import emit
from modelsync.shared.catalog import migrate, open_catalog, write_transaction
from modelsync.shared.civitai.client import parse_retry_after

FAST = {"webhook_retry_delays": (0.2, 0.4, 0.8), "webhook_clock_seconds": 0.2}


def ask_for_missing(server: RunningServer, name: str, hook_id: int | None = None) -> None:
    """A pre-submission check of a job whose checkpoint no node has: job.blocked for that name. With `hook_id`: waits
    until the event is in that endpoint's outbox (each check's bookkeeping runs after its answer, so two checks'
    events are queued in the order they commit, not necessarily the order they were asked)."""
    before = _outbox_size(server, hook_id) if hook_id else 0
    r = server.post("/api/v1/jobs/availability",
                    json={"job": {"prompt": "x", "override_settings": {"sd_model_checkpoint": name}}})
    assert r.status_code == 200, r.text
    assert r.json()["model_availability"]["available"] is False
    if hook_id:
        wait_for(lambda: _outbox_size(server, hook_id) > before)


def _outbox_size(server: RunningServer, hook_id: int) -> int:
    listed = deliveries(server, hook_id)
    return listed["total"] + listed["webhook"]["dropped"]


def webhooks(server: RunningServer) -> list[dict]:
    r = server.get("/api/v1/webhooks", headers=server.admin_headers)
    assert r.status_code == 200, r.text
    return r.json()["webhooks"]


def blocked_names(received) -> list[str]:
    return [r.data["reference"] for r in received if r.type == "job.blocked"]


def test_a_failing_receiver_gets_the_event_again_with_the_same_id_and_in_order(make_server):
    server = make_server(**FAST)
    with webhook_receiver() as receiver:
        hook = create_webhook(server, receiver, ["job.blocked"])
        receiver.script = [500, 503]  # the first two tries fail
        ask_for_missing(server, "first.safetensors", hook["id"])
        ask_for_missing(server, "second.safetensors", hook["id"])
        wait_for(lambda: len(receiver.delivered()) >= 2)
        assert blocked_names(receiver.delivered()) == ["first.safetensors", "second.safetensors"]
        first_tries = [r for r in receiver.requests if r.data["reference"] == "first.safetensors"]
        assert [r.status for r in first_tries] == [500, 503, 204]
        assert len({r.webhook_id for r in first_tries}) == 1 and first_tries[0].webhook_id.startswith("msg_")
        assert all(r.verified for r in receiver.requests) and not receiver.unverified
        # the second event waited for the first: it came after the first's last try, once
        order = [r.data["reference"] for r in receiver.requests]
        assert order == ["first.safetensors"] * 3 + ["second.safetensors"]
        log = deliveries(server, hook["id"])
        by_reference = {d["payload"]["data"]["reference"]: d for d in log["deliveries"]}
        assert by_reference["first.safetensors"]["attempts"] == 3
        assert by_reference["first.safetensors"]["state"] == "delivered"
        assert by_reference["first.safetensors"]["message_id"] == first_tries[0].webhook_id


def test_a_failing_endpoint_holds_back_only_its_own_events(make_server):
    server = make_server(webhook_retry_delays=(60,), webhook_clock_seconds=0.2)
    with webhook_receiver() as dead, webhook_receiver() as alive:
        dead_hook = create_webhook(server, dead, ["job.blocked"])
        create_webhook(server, alive, ["*"])
        dead.script = [500] * 10
        ask_for_missing(server, "a.safetensors", dead_hook["id"])
        ask_for_missing(server, "b.safetensors", dead_hook["id"])
        wait_for(lambda: len(alive.delivered()) >= 2)
        assert blocked_names(alive.delivered()) == ["a.safetensors", "b.safetensors"]
        # the receiver answers before the server records the try: wait for the record
        head = wait_for(lambda: next((d for d in deliveries(server, dead_hook["id"])["deliveries"]
                                      if d["payload"]["data"]["reference"] == "a.safetensors" and d["attempts"] == 1), None))
        assert head["state"] == "pending" and head["last_status"] == 500 and head["next_attempt_at"]
        assert [r.data["reference"] for r in dead.requests] == ["a.safetensors"]  # b waits behind a's retry
        assert deliveries(server, dead_hook["id"])["webhook"]["backlog"] == 2


def test_410_disables_the_endpoint_and_a_retry_enables_it_again(make_server):
    server = make_server(**FAST)
    with webhook_receiver() as receiver:
        hook = create_webhook(server, receiver, ["job.blocked"])
        receiver.script = [410]
        ask_for_missing(server, "gone.safetensors")
        listed = wait_for(lambda: next((w for w in webhooks(server) if not w["enabled"]), None))
        assert listed["id"] == hook["id"] and "410" in listed["disabled_reason"]
        failed = deliveries(server, hook["id"], state="failed")["deliveries"]
        assert [d["last_status"] for d in failed] == [410]
        ask_for_missing(server, "while-disabled.safetensors")  # a disabled endpoint gets no new events
        wait_for(lambda: any(w["reference"] == "while-disabled.safetensors"  # the check's bookkeeping is done
                             for w in server.get("/api/v1/models/wanted").json()["wanted"]))
        assert deliveries(server, hook["id"])["total"] == 1
        r = server.post(f"/api/v1/webhooks/{hook['id']}/deliveries/{failed[0]['id']}/retry", headers=server.admin_headers)
        assert r.status_code == 200, r.text
        assert r.json()["state"] == "pending"
        again = receiver.wait_for(lambda e: e.data["reference"] == "gone.safetensors")
        assert again.webhook_id == failed[0]["message_id"]
        assert webhooks(server)[0]["enabled"] is True


def test_a_dead_endpoints_backlog_is_capped_oldest_dropped_and_counted(make_server):
    server = make_server(webhook_retry_delays=(3600,), webhook_backlog_cap=3, webhook_clock_seconds=0.2)
    with webhook_receiver() as receiver:
        hook = create_webhook(server, receiver, ["job.blocked"])
        receiver.script = [500] * 100
        for n in range(6):
            ask_for_missing(server, f"m{n}.safetensors", hook["id"])
        listed = wait_for(lambda: next((w for w in webhooks(server) if w["dropped"] == 3), None))
        assert listed["backlog"] == 3 and listed["dropped_last_at"]
        pending = deliveries(server, hook["id"], state="pending")["deliveries"]
        assert sorted(d["payload"]["data"]["reference"] for d in pending) == ["m3.safetensors", "m4.safetensors",
                                                                              "m5.safetensors"]


def test_retry_delays_grow_and_honour_retry_after():
    delays = (5.0, 30.0, 120.0)
    failed = Outcome(False, 500, "HTTP 500")
    assert [next_attempt(n, failed, delays, 1000.0) for n in range(4)] == [1005.0, 1030.0, 1120.0, None]
    asked = Outcome(False, 429, "HTTP 429", retry_after=90.0)
    assert next_attempt(0, asked, delays, 1000.0) == 1090.0  # more than the schedule's 5 s
    assert next_attempt(0, Outcome(False, 429, "", retry_after=10**6), delays, 0.0) == 120.0  # at most the longest
    assert next_attempt(0, Outcome(False, 410, "", gone=True), delays, 0.0) is None
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT",
                             datetime.fromtimestamp(1445412480.0 - 60, timezone.utc)) == pytest.approx(60.0)
    assert parse_retry_after("soon") is None


def test_retry_after_from_the_receiver_delays_the_next_try(make_server):
    server = make_server(webhook_retry_delays=(0.1, 0.1, 30), webhook_clock_seconds=0.2)
    with webhook_receiver() as receiver:
        hook = create_webhook(server, receiver, ["job.blocked"])
        receiver.script = [(429, {"Retry-After": "20"})]
        ask_for_missing(server, "slow.safetensors")
        delivery = wait_for(lambda: next((d for d in deliveries(server, hook["id"])["deliveries"] if d["attempts"] == 1),
                                         None))
        assert delivery["state"] == "pending" and delivery["last_status"] == 429
        # due again when the receiver asked (20 s), not after the schedule's 0.1 s (times in whole seconds)
        wait = _seconds(delivery["next_attempt_at"]) - _seconds(delivery["last_attempt_at"])
        assert 19 <= wait <= 21, delivery
        assert [r.status for r in receiver.requests] == [429]


def _seconds(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()


def test_an_unreachable_endpoints_error_never_shows_the_urls_query(make_server, caplog):
    """requests' own text of a refused connection holds the URL's path and query ("... with url: /hook?token=...")."""
    server = make_server(**FAST)
    token = "query-secret-7f3a9c"
    port = free_port()  # nothing listens there
    with caplog.at_level(logging.DEBUG):
        r = server.post("/api/v1/webhooks", json={"url": f"http://127.0.0.1:{port}/hook?token={token}", "events": ["*"]},
                        headers=server.admin_headers)
        assert r.status_code == 201, r.text
        hook = r.json()
        tested = server.post(f"/api/v1/webhooks/{hook['id']}/test", headers=server.admin_headers)
        assert tested.status_code == 200 and tested.json()["state"] == "failed"
        ask_for_missing(server, "unreachable.safetensors")  # a queued event, tried by the delivery threads
        retried = wait_for(lambda: next((d for d in deliveries(server, hook["id"])["deliveries"]
                                         if d["event_type"] == "job.blocked" and d["attempts"] >= 2), None))
        answers = [tested.text, server.get(f"/api/v1/webhooks/{hook['id']}/deliveries", headers=server.admin_headers).text,
                   server.get("/api/v1/webhooks", headers=server.admin_headers).text, server.get("/dashboard/webhooks").text]
    for error in (tested.json()["last_error"], retried["last_error"]):
        assert error == f"ConnectionError: no answer from http://127.0.0.1:{port}/hook (Connection refused)"
    assert f"failed (try 2): ConnectionError: no answer from http://127.0.0.1:{port}/hook" in caplog.text
    for text in (*answers, caplog.text):
        assert token not in text and "?token" not in text


def test_the_backlog_trim_leaves_an_endpoint_with_a_try_in_flight_for_later(tmp_path):
    """The head being sent is the oldest pending event: trimming it then would drop an event the receiver is getting
    and lose its recorded outcome. The endpoint is trimmed on the scheduler's next look, after the try."""
    db = open_catalog(tmp_path / "registry.db")
    migrate(db)
    hook = store.create_endpoint(db, "http://127.0.0.1:9/hook", ["*"], None, "whsec_dGVzdA==")
    with write_transaction(db):
        for n in range(4):
            emit(db, "job.blocked", {"reference": f"m{n}.safetensors"})
    head = store.head(db, hook.id)
    assert head is not None and json.loads(head.payload)["data"]["reference"] == "m0.safetensors"
    assert store.trim_backlogs(db, 2, {hook.id}) == 0
    assert store.head(db, hook.id) == head
    assert store.trim_backlogs(db, 2, set()) == 2
    remaining = store.deliveries(db, hook.id, "pending", 10, 0)[0]
    assert sorted(json.loads(d.payload)["data"]["reference"] for d in remaining) == ["m2.safetensors", "m3.safetensors"]
    assert store.endpoint(db, hook.id).dropped == 2
