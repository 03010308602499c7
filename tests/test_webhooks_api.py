"""The webhooks' admin API on a real server: the admin token before any body, the URL and events checked, the secret
shown once (never in a listing, a log line or a page), the test event signed in the Standard Webhooks form (checked
with the `standardwebhooks` package and by hand from the spec's formula)."""
from __future__ import annotations

import base64
import hashlib
import hmac
import logging

from standardwebhooks import Webhook
from support_server import make_server  # noqa: F401  (fixture)
from support_webhooks import create_webhook, deliveries, webhook_receiver

from modelsync.shared.webhooks.signing import new_secret, signed_headers


def test_signatures_follow_the_spec_and_verify_with_the_package():
    secret, body = new_secret(), b'{"data":{},"timestamp":"2026-01-01T00:00:00.000Z","type":"node.offline"}'
    assert secret.startswith("whsec_") and len(base64.b64decode(secret.removeprefix("whsec_"))) == 32
    headers = signed_headers(secret, "msg_1", body, now=1_700_000_000)
    key = base64.b64decode(secret.removeprefix("whsec_"))
    expected = base64.b64encode(hmac.new(key, b"msg_1.1700000000." + body, hashlib.sha256).digest()).decode()
    assert headers == {"webhook-id": "msg_1", "webhook-timestamp": "1700000000", "webhook-signature": f"v1,{expected}"}
    fresh = signed_headers(secret, "msg_1", body)
    assert Webhook(secret).verify(body, fresh)["type"] == "node.offline"


def test_admin_only_and_inputs_checked(make_server):
    server = make_server()
    assert server.get("/api/v1/webhooks").status_code == 401
    assert server.get("/api/v1/webhooks", headers={"Authorization": "Bearer nope"}).status_code == 403
    assert server.post("/api/v1/webhooks", json={"url": "http://x/", "events": ["*"]}).status_code == 401
    bad = [({"url": "ftp://host/x", "events": ["*"]}, "url"), ({"url": "http://u:p@host/x", "events": ["*"]}, "url"),
           ({"url": "http:///nohost", "events": ["*"]}, "url"), ({"url": "http://host:99999/", "events": ["*"]}, "url"),
           ({"url": "http://host/", "events": []}, "events"), ({"url": "http://host/", "events": ["node.exploded"]}, "events"),
           ({"url": "http://host/", "events": ["*"], "description": 5}, "description"), ({"events": ["*"]}, "url")]
    for body, field in bad:
        r = server.post("/api/v1/webhooks", json=body, headers=server.admin_headers)
        assert (r.status_code, r.json()["field"]) == (400, field), (body, r.text)
    assert server.delete("/api/v1/webhooks/99", headers=server.admin_headers).status_code == 404
    assert server.get("/api/v1/webhooks/99/deliveries", headers=server.admin_headers).status_code == 404
    assert server.post("/api/v1/webhooks/99/test", headers=server.admin_headers).status_code == 404
    assert server.post("/api/v1/webhooks/1/deliveries/1/retry", headers=server.admin_headers).status_code == 404


def test_the_secret_is_shown_once_and_a_test_event_is_signed(make_server, caplog):
    server = make_server()
    with caplog.at_level(logging.DEBUG), webhook_receiver() as receiver:
        created = create_webhook(server, receiver, ["node.offline", "job.blocked"], description="ops")
        secret = created.pop("secret")
        assert created["events"] == ["node.offline", "job.blocked"] and created["enabled"] and created["backlog"] == 0
        listed = server.get("/api/v1/webhooks", headers=server.admin_headers).json()
        assert listed["webhooks"] == [created] and "node.disk_low" in listed["events"]
        r = server.post(f"/api/v1/webhooks/{created['id']}/test", headers=server.admin_headers)
        assert r.status_code == 200, r.text
        assert (r.json()["state"], r.json()["last_status"], r.json()["attempts"]) == ("delivered", 204, 1)
        got = receiver.wait_for(lambda e: e.type == "webhook.test")
        assert got.verified and got.webhook_id == r.json()["message_id"]
        receiver.script = [503]
        failed = server.post(f"/api/v1/webhooks/{created['id']}/test", headers=server.admin_headers).json()
        assert (failed["state"], failed["last_status"]) == ("failed", 503)
        log = deliveries(server, created["id"])
        assert [d["event_type"] for d in log["deliveries"]] == ["webhook.test", "webhook.test"]
        page = server.get("/dashboard/webhooks")
        assert page.status_code == 200 and secret not in page.text
        assert server.delete(f"/api/v1/webhooks/{created['id']}", headers=server.admin_headers).json() == {"deleted": created["id"]}
        assert server.get("/api/v1/webhooks", headers=server.admin_headers).json()["webhooks"] == []
    assert secret not in caplog.text
    assert secret.removeprefix("whsec_") not in caplog.text
