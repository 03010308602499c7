"""Two dispatch-checks with "fulfil" that need the same hash at once, over the real API (a real server, its Civitai
the local stand-in): the stand-in holds its by-hash answer until both checks are asking, and Civitai is asked once
(one turn of the fleet's one rate); both checks get the same answer, the same Civitai transfer."""
from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests
from modelsync.server.transfers.civitai_calls import CivitaiCalls
from support_civitai import CivitaiStub
from support_server import make_server, wait_for  # noqa: F401  (fixture)
from test_transfer_api_downloads import (
    DownloadFleet,
    civitai_server,
    infotext,
    lora_bytes,
)


class HeldCivitai(CivitaiStub):
    """The stand-in whose by-hash answer for `held` waits until `release` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.held: str | None = None
        self.release = threading.Event()

    def find_version(self, file_hash: str) -> dict[str, Any] | None:
        if self.held is not None and file_hash.upper() == self.held.upper():
            self.release.wait(120)
        return super().find_version(file_hash)


@pytest.fixture
def held_civitai() -> Iterator[HeldCivitai]:
    stub = HeldCivitai().start()
    yield stub
    stub.release.set()
    stub.stop()
    stub.storage.assert_never_saw_key()


def threads_in_by_hash() -> int:
    """The threads of this process (the in-process server's) inside CivitaiCalls.by_hash now."""
    code, inside = CivitaiCalls.by_hash.__code__, 0
    for frame in sys._current_frames().values():
        while frame is not None and frame.f_code is not code:
            frame = frame.f_back
        inside += frame is not None
    return inside


def test_two_checks_needing_the_same_hash_at_once_ask_civitai_once_and_get_the_same_answer(
        make_server, held_civitai, tmp_path):  # noqa: F811
    fleet = DownloadFleet(civitai_server(make_server, held_civitai), tmp_path, held_civitai)
    wanted, autov3 = lora_bytes(tmp_path, "wanted.safetensors", base="sd1")
    fleet.version(wanted, file_name="wanted-lora.safetensors", autov3=autov3)
    held_civitai.held = autov3
    url = fleet.server.url("/api/v1/servers/node-b/dispatch-check")
    job = {"job": infotext("wanted", autov3), "fulfil": True}

    with ThreadPoolExecutor(2) as pool:
        checks = [pool.submit(requests.post, url, json=job, timeout=120) for _ in range(2)]
        wait_for(lambda: held_civitai.count(f"/by-hash/{autov3.upper()}") >= 1, timeout=60)
        wait_for(lambda: threads_in_by_hash() == 2, timeout=60)  # the second check is asking too
        held_civitai.release.set()
        answers = [check.result(timeout=120) for check in checks]

    assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
    first, second = (a.json() for a in answers)
    assert held_civitai.count(f"/by-hash/{autov3.upper()}") == 1  # one turn of the fleet's rate, not one per check
    assert (first["ok"], first["action"]) == (False, "retry_later"), first
    (transfer,) = first["transfers"]
    assert transfer["source"]["kind"] == "civitai"
    assert transfer["source"]["civitai"]["file_name"] == "wanted-lora.safetensors"
    assert second["transfers"] == first["transfers"] and second["action"] == first["action"]
    assert fleet.transfers()["total"] == 1
