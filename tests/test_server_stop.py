"""Stopping the central server answers the nodes' long-polls for orders at once instead of waiting out their hold."""
import http.client
import json
import signal
import threading
from pathlib import Path
from urllib.parse import urlsplit

from support_server import push_files, server_process, wait_for

HOLD = 30  # the longest a long-poll may be held


def unread_by_the_server(server_port: int, client_port: int) -> int | None:
    """Bytes the server has not read yet on its end of the loopback connection from client_port (Linux's
    /proc/net/tcp); None while it has no such connection."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, queues = fields[1], fields[2], fields[4]
        if int(local.split(":")[1], 16) == server_port and int(remote.split(":")[1], 16) == client_port:
            return int(queues.split(":")[1], 16)
    return None


def test_sigterm_answers_a_held_long_poll_and_the_server_stops(tmp_path):
    with server_process(tmp_path / "data") as server:
        token = push_files(server, "gpu-01", [])["token"]
        port = urlsplit(server.base_url).port
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=HOLD + 30)
        connection.request("GET", f"/api/v1/servers/gpu-01/transfers/orders?wait={HOLD}",
                           headers={"Authorization": f"Bearer {token}"})  # sent in full when this returns
        answers: list[tuple[int, bytes]] = []

        def answer() -> None:
            response = connection.getresponse()
            answers.append((response.status, response.read()))

        polling = threading.Thread(target=answer)
        polling.start()
        # the server has read the whole request: its handler runs and holds the poll
        wait_for(lambda: unread_by_the_server(port, connection.sock.getsockname()[1]) == 0)
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(HOLD / 2)  # well before the hold would have ended
        polling.join(HOLD / 2)
        connection.close()
    assert answers and answers[0][0] == 200 and json.loads(answers[0][1]) == {"orders": []}
