"""Stopping the central server answers the nodes' long-polls for orders at once instead of waiting out their hold."""
import signal
import threading

import requests
from support_server import push_files, server_process

HOLD = 30  # the longest a long-poll may be held


def test_sigterm_answers_a_held_long_poll_and_the_server_stops(tmp_path):
    with server_process(tmp_path / "data") as server:
        token = push_files(server, "gpu-01", [])["token"]
        answers: list[requests.Response] = []
        polling = threading.Thread(target=lambda: answers.append(requests.get(
            server.url(f"/api/v1/servers/gpu-01/transfers/orders?wait={HOLD}"),
            headers={"Authorization": f"Bearer {token}"}, timeout=HOLD + 30)))
        polling.start()
        threading.Event().wait(1.0)  # the poll is held by now
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(HOLD / 2)  # well before the hold would have ended
        polling.join(HOLD / 2)
    assert answers and answers[0].status_code == 200 and answers[0].json() == {"orders": []}
