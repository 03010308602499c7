"""Standard Webhooks 1.0 signatures (https://www.standardwebhooks.com/): the `webhook-id`, `webhook-timestamp` and
`webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">` headers, keyed by a `whsec_` secret.

Signing is the `standardwebhooks` package's own (the one receivers verify with); this module adds the secret's
making and the headers of one try. Every try is signed afresh: its own timestamp, the same id and body."""
from __future__ import annotations

import base64
import secrets
import time
from datetime import datetime, timezone

from standardwebhooks.webhooks import Webhook

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def new_message_id() -> str:
    return "msg_" + secrets.token_hex(16)


def signed_headers(secret: str, message_id: str, body: bytes, now: float | None = None) -> dict[str, str]:
    """The three headers of one try of `body` (the exact bytes sent), timestamped `now` (Unix seconds)."""
    timestamp = int(time.time() if now is None else now)
    moment = datetime.fromtimestamp(timestamp, tz=timezone.utc)
    signature = Webhook(secret).sign(message_id, moment, body.decode("utf-8"))
    return {"webhook-id": message_id, "webhook-timestamp": str(timestamp), "webhook-signature": signature}
