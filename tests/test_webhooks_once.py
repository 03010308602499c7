"""Each event reaches a healthy endpoint exactly once, however the scheduler's looks and the tries interleave: many
events in quick succession to two endpoints (one failing now and then), every message id counted at the receiver."""
from __future__ import annotations

from collections import Counter

from support_server import make_server, wait_for  # noqa: F401  (fixture)
from support_webhooks import create_webhook, webhook_receiver

EVENTS = 40


def test_every_event_is_delivered_once_to_each_endpoint(make_server):
    server = make_server(webhook_retry_delays=(0.05, 0.05, 0.05), webhook_clock_seconds=0.2)
    with webhook_receiver() as steady, webhook_receiver() as flaky:
        create_webhook(server, steady, ["job.blocked"])
        create_webhook(server, flaky, ["*"])
        flaky.script = [500, 204, 503, 204, 204, 500] * 3
        for n in range(EVENTS):
            r = server.post("/api/v1/jobs/availability",
                            json={"job": {"prompt": "x", "override_settings": {"sd_model_checkpoint": f"m{n}.safetensors"}}})
            assert r.status_code == 200, r.text
        for receiver in (steady, flaky):
            wait_for(lambda: len(receiver.delivered()) >= EVENTS, timeout=60)
            counts = Counter(r.webhook_id for r in receiver.delivered())
            assert len(counts) == EVENTS and set(counts.values()) == {1}, counts.most_common(3)
            assert all(r.verified for r in receiver.requests)
