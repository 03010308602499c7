"""A webhook receiver for tests: a loopback HTTP server that verifies every request's signature with the
`standardwebhooks` package (as a stock receiver does) and answers from a script.

    with webhook_receiver() as receiver:              # answers 204 unless scripted
        receiver.script = [500, 500]                   # the next two requests get 500, then 204 again
        hook = create_webhook(server, receiver.url, ["*"])
        receiver.secret = hook["secret"]
        event = receiver.wait_for(lambda e: e.type == "node.offline")
"""
from __future__ import annotations

import contextlib
import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any, Callable, Iterator

from standardwebhooks import Webhook
from support_server import RunningServer, serve_http


@dataclass
class Received:
    webhook_id: str
    timestamp: int
    body: dict[str, Any]
    status: int  # what the receiver answered
    verified: bool

    @property
    def type(self) -> str:
        return self.body["type"]

    @property
    def data(self) -> dict[str, Any]:
        return self.body["data"]


class Receiver:
    def __init__(self) -> None:
        self.url = ""
        self.secret: str | None = None
        self.script: list[int | tuple[int, dict[str, str]]] = []  # answers for the next requests (then 204)
        self.requests: list[Received] = []
        self.unverified: list[str] = []
        self.lock = threading.Lock()

    def answer_for(self) -> tuple[int, dict[str, str]]:
        with self.lock:
            step = self.script.pop(0) if self.script else 204
        return step if isinstance(step, tuple) else (step, {})

    def delivered(self) -> list[Received]:
        """The events this receiver accepted (2xx), in the order they came."""
        with self.lock:
            return [r for r in self.requests if 200 <= r.status < 300]

    def wait_for(self, match: Callable[[Received], bool], timeout: float = 30.0) -> Received:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [r for r in self.delivered() if match(r)]
            if found:
                return found[0]
            time.sleep(0.05)
        raise AssertionError(f"no matching event arrived; got {[(r.type, r.status) for r in self.requests]}")


def _handler(receiver: Receiver) -> type:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {k.lower(): v for k, v in self.headers.items()}
            try:
                assert receiver.secret is not None, "the test set no secret"
                body = Webhook(receiver.secret).verify(raw, headers)
                verified = True
            except Exception as exc:  # recorded: the test asserts every request verified
                receiver.unverified.append(f"{type(exc).__name__}: {exc}")
                body, verified = json.loads(raw or b"{}"), False
            status, extra = receiver.answer_for() if verified else (400, {})
            with receiver.lock:
                receiver.requests.append(Received(headers.get("webhook-id", ""), int(headers.get("webhook-timestamp", 0)),
                                                  body, status, verified))
            self.send_response(status)
            for name, value in extra.items():
                self.send_header(name, value)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


@contextlib.contextmanager
def webhook_receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    with serve_http(_handler(receiver)) as base_url:
        receiver.url = base_url + "/hook"
        yield receiver


def create_webhook(server: RunningServer, receiver: Receiver, events: list[str], **extra: Any) -> dict[str, Any]:
    """An endpoint for this receiver; its secret given to the receiver."""
    r = server.post("/api/v1/webhooks", json={"url": receiver.url, "events": events, **extra}, headers=server.admin_headers)
    assert r.status_code == 201, r.text
    created = r.json()
    receiver.secret = created["secret"]
    return created


def deliveries(server: RunningServer, webhook_id: int, **params: Any) -> dict[str, Any]:
    r = server.get(f"/api/v1/webhooks/{webhook_id}/deliveries", params=params, headers=server.admin_headers)
    assert r.status_code == 200, r.text
    return r.json()
