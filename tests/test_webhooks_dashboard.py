"""The dashboard's Webhooks page in a real browser (Debian's chromium through Playwright) on a real server: adding an
endpoint shows its secret once, the delivery log shows a failed delivery and its Retry sends it again."""
from __future__ import annotations

from support_browser import browser, browser_page, screenshot, sign_in  # noqa: F401  (fixtures)
from support_server import make_server, wait_for  # noqa: F401  (fixture)
from support_webhooks import create_webhook, deliveries, webhook_receiver


def test_the_delivery_log_and_a_retry(make_server, browser_page):
    server = make_server(webhook_retry_delays=(0.1,), webhook_clock_seconds=0.2)
    page = browser_page
    with webhook_receiver() as receiver:
        hook = create_webhook(server, receiver, ["job.blocked"], description="the queue's alerts")
        receiver.script = [500, 500]  # the try and its one retry fail: the delivery fails for good
        r = server.post("/api/v1/jobs/availability",
                        json={"job": {"prompt": "x", "override_settings": {"sd_model_checkpoint": "nowhere.safetensors"}}})
        assert r.status_code == 200
        wait_for(lambda: deliveries(server, hook["id"], state="failed")["total"] == 1)

        page.goto(server.url("/dashboard/webhooks"))
        sign_in(page, server.admin_token)
        row = page.locator(f"#webhooks tr[data-webhook-id='{hook['id']}']")
        row.wait_for()
        assert "the queue's alerts" in row.inner_text() and "job.blocked" in row.inner_text()
        assert hook["secret"] not in page.content()
        row.locator("button.show-log").click()
        failed = page.locator("#deliveries tr[data-state='failed']")
        failed.wait_for()
        assert "HTTP 500" in failed.inner_text() and "job.blocked" in failed.inner_text()
        screenshot(page, "webhooks")
        failed.locator("button.retry-delivery").click()
        receiver.wait_for(lambda e: e.type == "job.blocked")
        page.locator("#webhooks-message").filter(has_text="queued again").wait_for()
        wait_for(lambda: deliveries(server, hook["id"], state="delivered")["total"] == 1)
        row.locator("button.show-log").click()
        page.locator("#deliveries tr[data-state='delivered']").wait_for()

        page.fill("#webhook-url", receiver.url)
        page.click("#webhook-form button[type=submit]")
        secret = page.locator("#webhook-secret")
        secret.filter(has_text="whsec_").wait_for()
        page.reload()
        page.locator("#webhooks tbody tr").nth(1).wait_for()
        assert "whsec_" not in page.content()  # shown once, never again
