"""The fleet copies what a job needs, end to end with real processes: a central server (`python -m
modelsync.server.main`) and `modelsync node` agents on loopback ports, real .safetensors files, real HTTP.

A dispatch-check with "fulfil" on the node that lacks a LoRA and a checkpoint orders both copies (route_elsewhere: the
holder can run the job), gives the same transfers when asked again, and soon answers ok with the node's own names, the
files in its role folders with the right SHA256; an admin's copy shows done in the list and never a grant. Faults: the
source killed mid-transfer (waiting_source, retry_later once it is offline; resumed from the temp file when it is back),
the central server restarted mid-transfer and the receiving node restarted mid-transfer (each: the copy completes,
resumed, not started over). The receiving node talks to the central server through a pass-through (CentralTap) that
holds its progress report at a gate around each fault, so the transfer is surely under way when it strikes."""
from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import model_factory
import pytest
import support_server
from modelsync.shared.transfer.partfiles import part_name
from support_server import RunningServer, server_process, wait_for
from support_transfer import CentralTap
from test_node_agent import big_lora, held_by, node_process, server_entry, sha256_of

pytestmark = pytest.mark.timeout(300)

OFFLINE_AFTER = 10.0  # seconds without a heartbeat (the agents beat every second; a push holds the beat)
SLOW = ("--bandwidth", "8MB/s")  # a 64 MiB copy takes about 8 s: long enough to stop something midway


def job(lora: str, checkpoint: str | None = None) -> dict:
    body: dict = {"prompt": f"a lighthouse at dusk, <lora:{lora}:0.8>", "steps": 20}
    if checkpoint:
        body["override_settings"] = {"sd_model_checkpoint": checkpoint}
    return body


def check(central: RunningServer, node_id: str, body: dict, fulfil: bool = True) -> dict:
    answer = central.post(f"/api/v1/servers/{node_id}/dispatch-check", json={"job": body, "fulfil": fulfil})
    assert answer.status_code == 200, answer.text
    return answer.json()


def transfer(central: RunningServer, transfer_id: int) -> dict:
    answer = central.get(f"/api/v1/transfers/{transfer_id}")
    assert answer.status_code == 200, answer.text
    return answer.json()


def models_tree(root: Path) -> Path:
    """A Forge `models/` folder with the role folders a copy lands in."""
    for folder in ("Lora", "Stable-diffusion"):
        (root / "models" / folder).mkdir(parents=True, exist_ok=True)
    return root / "models"


def roles(models: Path) -> tuple[str, str]:
    return f"lora={models / 'Lora'}", f"checkpoint={models / 'Stable-diffusion'}"


def online(central: RunningServer, node_id: str) -> bool:
    entry = server_entry(central, node_id)
    return bool(entry and entry.get("online"))


class Watch:
    """A transfer's states and bytes_done as the central server gives them, read every 0.1 s in a thread."""

    def __init__(self, central: RunningServer, transfer_id: int):
        self.central, self.transfer_id = central, transfer_id
        self.seen: list[tuple[float, str, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            with contextlib.suppress(Exception):  # the central server may be restarting
                asked = time.monotonic()  # the moment of the question: the answer shows the server then or later
                t = transfer(self.central, self.transfer_id)
                self.seen.append((asked, t["state"], t["bytes_done"]))

    def running_since(self, since: float) -> list[int]:
        return [done for at, state, done in self.seen if at >= since and state == "running"]

    @contextlib.contextmanager
    def watching(self) -> Iterator[Watch]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join(5)


def test_fulfil_copies_a_lora_and_a_checkpoint_to_the_node_that_lacks_them(tmp_path):
    a_models, b_models = models_tree(tmp_path / "a"), models_tree(tmp_path / "b")
    lora = model_factory.write_lora(a_models / "Lora" / "styles" / "ink.safetensors")
    checkpoint = model_factory.write_checkpoint(a_models / "Stable-diffusion" / "base.safetensors")
    extra = model_factory.write_lora(a_models / "Lora" / "extra.safetensors", base="sdxl")
    companions = {".json": b'{"description": "ink strokes", "activation text": "ink style"}',
                  ".civitai.info": b'{"id": 1, "modelId": 2, "name": "v1", "files": []}', ".preview.jpeg": b"\xff\xd8 a jpeg"}
    for suffix, data in companions.items():
        (a_models / "Lora" / "styles" / f"ink{suffix}").write_bytes(data)
    the_job = job("ink", "base.safetensors")
    with server_process(tmp_path / "central", offline_after_seconds=OFFLINE_AFTER) as central, \
            node_process(tmp_path, "gpu-a", central.base_url, *roles(a_models)) as a, \
            node_process(tmp_path, "gpu-b", central.base_url, *roles(b_models)) as b:
        wait_for(lambda: len(held_by(central, "gpu-a")) == 3 and online(central, "gpu-b"), timeout=30)
        without = check(central, "gpu-b", the_job, fulfil=False)
        assert (without["ok"], without["action"]) == (False, "route_elsewhere") and "transfers" not in without

        answer = check(central, "gpu-b", the_job)
        assert (answer["ok"], answer["action"]) == (False, "route_elsewhere")
        assert [n["server_id"] for n in answer["nodes"]] == ["gpu-a"]
        assert sorted(t["sha256"] for t in answer["transfers"]) == sorted([sha256_of(lora), sha256_of(checkpoint)])
        assert {t["server_id"] for t in answer["transfers"]} == {"gpu-b"}
        again = check(central, "gpu-b", the_job)
        assert sorted(t["id"] for t in again["transfers"]) == sorted(t["id"] for t in answer["transfers"])

        ok = wait_for(lambda: (c := check(central, "gpu-b", the_job))["ok"] and c, timeout=30)
        assert ok["action"] is None and "transfers" not in ok
        assert "<lora:ink:0.8>" in ok["payload"]["prompt"]
        assert ok["payload"]["override_settings"]["sd_model_checkpoint"].startswith("base")
        copied_lora = b_models / "Lora" / "styles" / "ink.safetensors"
        copied_checkpoint = b_models / "Stable-diffusion" / "base.safetensors"
        assert sha256_of(copied_lora) == sha256_of(lora) and sha256_of(checkpoint) == sha256_of(copied_checkpoint)
        for suffix, data in companions.items():  # the sidecars and the preview came along
            assert (b_models / "Lora" / "styles" / f"ink{suffix}").read_bytes() == data
        assert not list((b_models / "Stable-diffusion").glob("base.*json")) and not list((b_models / "Stable-diffusion").glob("*.preview.jpeg"))
        for t in answer["transfers"]:  # the node reports done just after its push made the check ok
            done = wait_for(lambda: (x := transfer(central, t["id"]))["state"] == "done" and x, timeout=30)
            assert (done["source"]["server_id"], done["bytes_done"]) == ("gpu-a", done["size"])
        assert {sha256_of(lora), sha256_of(checkpoint)} <= held_by(central, "gpu-b")
        assert not list(b_models.rglob("*.part*")) and not list(b_models.rglob(".modelsync*"))

        # an admin's copy: done in the list, which never shows a grant
        ordered = central.post("/api/v1/transfers", json={"server_id": "gpu-b", "sha256": sha256_of(extra)},
                               headers=central.admin_headers)
        assert ordered.status_code == 201, ordered.text
        wait_for(lambda: transfer(central, ordered.json()["id"])["state"] == "done", timeout=30)
        listed = central.get("/api/v1/transfers", params={"server_id": "gpu-b"})
        assert listed.status_code == 200
        states = {t["sha256"]: t["state"] for t in listed.json()["transfers"]}
        assert states == {sha256_of(x): "done" for x in (lora, checkpoint, extra)}
        assert "grant" not in listed.text and "v1." not in listed.text and a.token not in listed.text
        assert sha256_of(b_models / "Lora" / "extra.safetensors") == sha256_of(extra)
        assert "grant" not in central.get("/api/v1/transfers").text
        assert a.stop() == 0 and b.stop() == 0
        assert "Traceback" not in a.log() + b.log()


def test_the_source_killed_mid_transfer_waits_then_resumes_from_the_temp_file_when_it_is_back(tmp_path):
    a_models, b_models = models_tree(tmp_path / "a"), models_tree(tmp_path / "b")
    big = big_lora(a_models / "Lora" / "big.safetensors", 64)
    big_sha, size = sha256_of(big), big.stat().st_size
    a_data = tmp_path / "gpu-a-data"
    with server_process(tmp_path / "central", offline_after_seconds=OFFLINE_AFTER) as central, \
            contextlib.ExitStack() as stack:
        tap = CentralTap(central.base_url)
        tap_url = stack.enter_context(tap.serving())
        a = stack.enter_context(node_process(tmp_path, "gpu-a", central.base_url, *roles(a_models), data=a_data))
        b = stack.enter_context(node_process(tmp_path, "gpu-b", tap_url, *roles(b_models), extra=SLOW))
        wait_for(lambda: big_sha in held_by(central, "gpu-a") and online(central, "gpu-b"), timeout=60)
        with tap.gate.closed(from_bytes=size // 5 + 1):  # the transfer waits for the answer to that report meanwhile
            answer = check(central, "gpu-b", job("big"))
            assert (answer["ok"], answer["action"]) == (False, "route_elsewhere")
            (ordered,) = answer["transfers"]
            watch = stack.enter_context(Watch(central, ordered["id"]).watching())
            wait_for(lambda: tap.gate.holding(ordered["id"]), timeout=30)
            assert a.stop(signal.SIGKILL) == -signal.SIGKILL

        waiting = wait_for(lambda: (t := transfer(central, ordered["id"]))["state"] == "waiting_source" and t, timeout=30)
        assert waiting["reason"] in ("source_gone", "no_online_holder")
        kept = (b_models / "Lora" / part_name(big_sha)).stat().st_size
        assert 0 < kept < size
        reported = transfer(central, ordered["id"])["bytes_done"]
        assert reported > 8 * 1000**2  # more than a second's worth: a start from byte 0 would show less
        wait_for(lambda: not online(central, "gpu-a"), timeout=OFFLINE_AFTER + 10)
        later = check(central, "gpu-b", job("big"))
        assert (later["ok"], later["action"]) == (False, "retry_later")
        assert [(t["id"], t["state"]) for t in later["transfers"]] == [(ordered["id"], "waiting_source")]

        # the receiving node restarts while it waits for a source: its temp file is no orphan
        assert b.stop() == 0
        b = stack.enter_context(node_process(tmp_path, "gpu-b", tap_url, *roles(b_models), extra=SLOW))
        wait_for(lambda: b.log().count("orphaned temp files removed") == 2, timeout=30)  # the log spans both starts
        assert (b_models / "Lora" / part_name(big_sha)).stat().st_size == kept

        back = time.monotonic()
        stack.enter_context(node_process(tmp_path, "gpu-a", central.base_url, *roles(a_models), data=a_data))
        done = wait_for(lambda: (t := transfer(central, ordered["id"]))["state"] == "done" and t, timeout=60)
        assert done["source"]["server_id"] == "gpu-a" and sha256_of(b_models / "Lora" / "big.safetensors") == big_sha
        resumed = watch.running_since(back)
        assert resumed and min(resumed) >= reported  # resumed from the temp file, not from byte 0
        assert not (b_models / "Lora" / part_name(big_sha)).exists()
        ok = wait_for(lambda: (c := check(central, "gpu-b", job("big")))["ok"] and c, timeout=30)
        assert "<lora:big:0.8>" in ok["payload"]["prompt"]
        assert b.stop() == 0 and "Traceback" not in b.log()


@contextlib.contextmanager
def central_on(port: int, data: Path, admin_token: str | None = None) -> Iterator[RunningServer]:
    """The central server on a given port (the nodes keep its URL across a restart)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(support_server, "free_port", lambda: port)
        overrides = {"admin_token": admin_token} if admin_token else {}
        with server_process(data, offline_after_seconds=OFFLINE_AFTER, **overrides) as central:
            patch.undo()
            yield central


def test_a_central_server_restart_and_a_receiving_node_restart_mid_transfer_lose_nothing(tmp_path):
    a_models, b_models = models_tree(tmp_path / "a"), models_tree(tmp_path / "b")
    first = big_lora(a_models / "Lora" / "first.safetensors", 64)
    second = big_lora(a_models / "Lora" / "second.safetensors", 65)
    port, b_data = support_server.free_port(), tmp_path / "gpu-b-data"
    with contextlib.ExitStack() as stack:
        central = stack.enter_context(central_on(port, tmp_path / "central"))
        admin = central.admin_token
        tap = CentralTap(central.base_url)
        tap_url = stack.enter_context(tap.serving())
        a = stack.enter_context(node_process(tmp_path, "gpu-a", central.base_url, *roles(a_models)))
        b = stack.enter_context(node_process(tmp_path, "gpu-b", tap_url, *roles(b_models), extra=SLOW, data=b_data))
        wait_for(lambda: len(held_by(central, "gpu-a")) == 2 and online(central, "gpu-b"), timeout=60)

        # the central server restarts mid-transfer: the order and its progress are kept, the copy completes
        with tap.gate.closed(from_bytes=1024 * 1024):  # the first report goes on; a later one waits out the restart
            ordered = central.post("/api/v1/transfers", json={"server_id": "gpu-b", "sha256": sha256_of(first)},
                                   headers=central.admin_headers).json()
            wait_for(lambda: transfer(central, ordered["id"])["bytes_done"] > 0, timeout=30)
            wait_for(lambda: tap.gate.holding(ordered["id"]), timeout=30)
            central.process.send_signal(signal.SIGTERM)
            central.process.wait(30)
            down_at = (b_models / "Lora" / part_name(sha256_of(first))).stat().st_size
            time.sleep(2)
            central = stack.enter_context(central_on(port, tmp_path / "central", admin))
        assert transfer(central, ordered["id"])["state"] in ("running", "verifying", "done")
        done = wait_for(lambda: (t := transfer(central, ordered["id"]))["state"] == "done" and t, timeout=60)
        assert done["source"]["server_id"] == "gpu-a" and sha256_of(b_models / "Lora" / "first.safetensors") == sha256_of(first)
        assert down_at > 0 and sha256_of(first) in held_by(central, "gpu-b")
        listed = central.get("/api/v1/transfers", params={"server_id": "gpu-b"}).json()
        assert [t["id"] for t in listed["transfers"]] == [ordered["id"]]  # no second copy ordered meanwhile

        # the receiving node restarts mid-transfer: it resumes from its temp file
        with tap.gate.closed(from_bytes=second.stat().st_size // 5 + 1):  # the transfer waits meanwhile
            ordered = central.post("/api/v1/transfers", json={"server_id": "gpu-b", "sha256": sha256_of(second)},
                                   headers=central.admin_headers).json()
            watch = stack.enter_context(Watch(central, ordered["id"]).watching())
            wait_for(lambda: tap.gate.holding(ordered["id"]), timeout=30)
            stops = b.log().count(": stopping")
            b.process.send_signal(signal.SIGTERM)
            wait_for(lambda: b.log().count(": stopping") > stops, timeout=30)  # the stop cancels the transfer first
        assert b.stop() == 0  # the report goes on and is answered; the transfer sees its cancel
        temp = b_models / "Lora" / part_name(sha256_of(second))
        kept = temp.stat().st_size
        assert 0 < kept < second.stat().st_size
        reported = transfer(central, ordered["id"])["bytes_done"]
        assert 8 * 1000**2 < reported <= kept
        back = time.monotonic()
        stack.enter_context(node_process(tmp_path, "gpu-b", tap_url, *roles(b_models), extra=SLOW, data=b_data))
        wait_for(lambda: transfer(central, ordered["id"])["state"] == "done", timeout=60)
        assert sha256_of(b_models / "Lora" / "second.safetensors") == sha256_of(second) and not temp.exists()
        resumed = watch.running_since(back)
        assert resumed and min(resumed) >= reported
        assert "resumes from its temp file" in b.log()
        assert a.stop() == 0 and "Traceback" not in a.log() + b.log()
