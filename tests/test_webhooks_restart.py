"""A crash of the central server (SIGKILL of its real process) in the middle of a delivery's retries loses nothing:
a fresh start on the same SQLite file delivers the event with its webhook-id, then the one queued behind it."""
from __future__ import annotations

import json
import signal
import sqlite3

from support_server import server_process, wait_for
from support_webhooks import create_webhook, deliveries, webhook_receiver

# many short retries: the schedule cannot run out between the kill and the restart, however slow the machine
RETRY_DELAYS = ",".join(["0.3"] * 40)


def test_a_kill_mid_retry_loses_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("MODELSYNC_WEBHOOK_RETRY_DELAYS", RETRY_DELAYS)
    monkeypatch.setenv("MODELSYNC_WEBHOOK_CLOCK", "0.2")
    data = tmp_path / "central"
    with webhook_receiver() as receiver:
        receiver.script = [500] * 1000  # down until the test says otherwise
        with server_process(data) as server:
            hook = create_webhook(server, receiver, ["job.blocked"])
            for queued, name in enumerate(("before-1.safetensors", "before-2.safetensors"), start=1):
                r = server.post("/api/v1/jobs/availability",
                                json={"job": {"prompt": "x", "override_settings": {"sd_model_checkpoint": name}}})
                assert r.status_code == 200
                wait_for(lambda n=queued: deliveries(server, hook["id"])["total"] == n)  # in the outbox in this order
            # mid-retry: the first event's failed tries recorded, still pending
            wait_for(lambda: _head(server.db_path)[1] >= 2)
            server.process.send_signal(signal.SIGKILL)
            assert server.process.wait(30) == -signal.SIGKILL
            admin = server.admin_token
        reference, attempts, state = _head(data / "registry.db")
        assert (reference, state) == ("before-1.safetensors", "pending") and attempts >= 2
        tried = {r.webhook_id for r in receiver.requests}
        assert len(tried) == 1 and {r.data["reference"] for r in receiver.requests} == {"before-1.safetensors"}
        with receiver.lock:
            receiver.script = []  # the receiver is back
        with server_process(data, admin_token=admin) as server:
            wait_for(lambda: len(receiver.delivered()) >= 2, timeout=60)
            got = receiver.delivered()
            assert [r.data["reference"] for r in got] == ["before-1.safetensors", "before-2.safetensors"]
            assert got[0].webhook_id in tried and all(r.verified for r in receiver.requests)
            log = wait_for(lambda: (found := deliveries(server, hook["id"]))["deliveries"][0]["state"] == "delivered"
                           and found)
            assert {d["state"] for d in log["deliveries"]} == {"delivered"} and log["total"] == 2
            assert {d["message_id"] for d in log["deliveries"]} == {r.webhook_id for r in got}


def _head(db_path) -> tuple[str, int, str]:
    """The oldest delivery: its reference, tries and state, read from the SQLite file."""
    with sqlite3.connect(db_path) as conn:
        row = conn.execute("SELECT payload, attempts, state FROM webhook_deliveries ORDER BY id LIMIT 1").fetchone()
    return (json.loads(row[0])["data"]["reference"], row[1], row[2]) if row else ("", 0, "")
