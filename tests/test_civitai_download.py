"""Civitai as a transfer source, against the stand-in (tests/support_civitai.py): the endpoint asked with the key and
its redirect resolved here, the storage fetched without it (the fixture fails any test where the storage saw the
key), resume with Range/If-Range, each terminal answer and each retry, and nothing partial or wrong left in the
model folder."""
import hashlib
import threading
from pathlib import Path

import pytest
import requests

from modelsync.shared.civitai.download import CivitaiSource, expected_file, size_limit
from modelsync.shared.transfer.backoff import Backoff
from modelsync.shared.transfer.failures import TERMINAL_DOWNLOAD_REASONS, TransferFailed
from modelsync.shared.transfer.partfiles import part_name
from modelsync.shared.transfer.receiver import ReceiveOptions, receive
from modelsync.shared.transfer.url_source import ResumableGet
from support_civitai import civitai_stub  # noqa: F401  (fixture)
from support_transfer import MIB, dest, model  # noqa: F401  (fixtures)

FIXTURE = "civitai_model_version_1387174_lora_flux_lora-manager.json"
KEY = "k3y-s3cret-0123456789"
FAST = ReceiveOptions(floor_bytes=0, retry_delay_seconds=0.05, progress_interval_seconds=0)
QUICK_BACKOFF = Backoff(first_seconds=0.05, longest_seconds=0.2, attempts=2)


@pytest.fixture
def stub(civitai_stub):
    civitai_stub.require_key = KEY
    return civitai_stub


def source_for(stub, version, *, key=KEY, backoff=Backoff(), backed_off=None) -> CivitaiSource:
    file = expected_file(version, None)
    return CivitaiSource(file["downloadUrl"], file["hashes"]["SHA256"].lower(), api_key=key, limit=size_limit(file),
                         http=ResumableGet(backoff=backoff), on_backoff=backed_off)


def only_the_model(dest: Path, name: str) -> None:
    assert sorted(p.name for p in dest.iterdir()) == [name]


def nothing_in(dest: Path) -> None:
    assert list(dest.iterdir()) == []


def test_the_stand_in_answers_by_hash_for_every_hash_a_file_lists(stub, model):
    version = stub.add_version(FIXTURE, data=model, autov3="0123456789ab")
    other = stub.add_file(version["id"], "other.safetensors", data=b"other bytes",
                          hashes={"SHA256": hashlib.sha256(b"other bytes").hexdigest().upper(), "AutoV1": "A1B2C3D4",
                                  "AutoV2": "FEDCBA9876"})
    listed = [*version["files"][0]["hashes"].values(), *other["hashes"].values()]
    for value in listed + [h.lower() for h in listed]:
        answer = requests.get(f"{stub.base_url}/api/v1/model-versions/by-hash/{value}", timeout=10)
        assert answer.status_code == 200 and answer.json()["id"] == version["id"], value
    posted = requests.post(f"{stub.base_url}/api/v1/model-versions/by-hash", json=["a1b2c3d4", "0" * 64], timeout=10)
    assert [v["id"] for v in posted.json()] == [version["id"]]
    assert requests.get(f"{stub.base_url}/api/v1/model-versions/by-hash/{'0' * 64}", timeout=10).status_code == 404


def test_the_file_arrives_verified_under_its_civitai_name(stub, model, dest):
    version = stub.add_version(FIXTURE, data=model, file_name="storybook.safetensors")
    received = receive(source_for(stub, version), str(dest), "storybook.safetensors", options=FAST)
    assert received.hashes.sha256 == hashlib.sha256(model).hexdigest() and received.size == len(model)
    assert (dest / "storybook.safetensors").read_bytes() == model
    only_the_model(dest, "storybook.safetensors")
    endpoint = [auth for _, path, auth in stub.requests if path.startswith("/api/download/")]
    assert endpoint == [f"Bearer {KEY}"]
    assert all("Authorization" not in headers for _, _, headers in stub.storage.requests)


def test_a_dropped_connection_resumes_with_range_and_if_range(stub, model, dest):
    version = stub.add_version(FIXTURE, data=model)
    stub.script("drop", after=MIB + 123)
    received = receive(source_for(stub, version), str(dest), "m.safetensors", options=FAST)
    assert received.hashes.sha256 == hashlib.sha256(model).hexdigest()
    first, second = stub.storage.requests
    assert "Range" not in first[2]
    assert second[2]["Range"].startswith("bytes=") and second[2]["Range"] != "bytes=0-"
    assert second[2]["If-Range"] == '"' + hashlib.md5(model).hexdigest() + '"'
    assert stub.count("/api/download/") == 1  # the signed URL was still good: Civitai was not asked again
    only_the_model(dest, "m.safetensors")


def test_a_range_ignored_once_is_asked_again_directly(stub, model, dest):
    version = stub.add_version(FIXTURE, data=model)
    stub.script("drop", after=2 * MIB + 123)
    stub.script("ignore_range")
    received = receive(source_for(stub, version), str(dest), "m.safetensors", options=FAST)
    assert received.hashes.sha256 == hashlib.sha256(model).hexdigest()
    ranged = [headers.get("Range") for _, _, headers in stub.storage.requests]
    assert ranged[0] is None and ranged[1] == ranged[2] != None  # noqa: E711  asked again for the same range
    assert received.bytes_fetched <= len(model)  # resumed: a restart would fetch the first 2 MiB twice


def test_a_range_ignored_twice_restarts_from_zero(stub, model, dest):
    version = stub.add_version(FIXTURE, data=model)
    stub.script("drop", after=2 * MIB + 123)
    stub.script("ignore_range", times=2)
    received = receive(source_for(stub, version), str(dest), "m.safetensors", options=FAST)
    assert received.hashes.sha256 == hashlib.sha256(model).hexdigest()
    assert (dest / "m.safetensors").read_bytes() == model
    assert received.bytes_fetched >= len(model) + 2 * MIB  # the first 2 MiB twice


@pytest.mark.parametrize("fault, extra, reason", [
    ("wrong_bytes", {}, "hash_mismatch"),
    ("too_long", {"extra": 2 * MIB}, "too_long"),  # past sizeKB * 1024 + 1 MiB: the stream is cut
])
def test_wrong_bytes_or_a_longer_stream_fail_and_leave_nothing(stub, model, dest, fault, extra, reason):
    version = stub.add_version(FIXTURE, data=model)
    stub.script(fault, **extra)
    with pytest.raises(TransferFailed) as failed:
        receive(source_for(stub, version), str(dest), "m.safetensors", options=FAST)
    assert failed.value.reason == reason
    nothing_in(dest)


def test_an_exact_size_cuts_even_a_small_excess(stub, model, dest):
    version = stub.add_version(FIXTURE, data=model)
    stub.script("too_long", extra=10)
    file = expected_file(version, None)
    source = CivitaiSource(file["downloadUrl"], file["hashes"]["SHA256"].lower(), api_key=KEY, size=len(model))
    with pytest.raises(TransferFailed) as failed:
        receive(source, str(dest), "m.safetensors", options=FAST)
    assert failed.value.reason == "too_long"
    nothing_in(dest)


@pytest.mark.parametrize("kind, key, reason, said", [
    ("login", KEY, "auth_required", "CIVITAI_API_KEY"),
    ("unauthorized", KEY, "auth_required", "CIVITAI_API_KEY"),
    (None, None, "auth_required", "set CIVITAI_API_KEY"),  # no key at all: the login redirect
    ("early_access", KEY, "early_access", "until 2026-12-24"),
    ("early_access_redirect", KEY, "early_access", "early access"),
    ("not_found", KEY, "not_found", "HTTP 404"),
])
def test_terminal_answers_are_not_retried(stub, model, dest, kind, key, reason, said):
    version = stub.add_version(FIXTURE, data=model)
    if kind:
        stub.script(kind)
    with pytest.raises(TransferFailed) as failed:
        receive(source_for(stub, version, key=key), str(dest), "m.safetensors", options=FAST)
    assert failed.value.reason == reason and reason in TERMINAL_DOWNLOAD_REASONS
    assert said in failed.value.message and KEY not in failed.value.message
    assert not failed.value.retryable
    assert stub.count("/api/download/") == 1 and stub.storage.count() == 0
    nothing_in(dest)


def test_a_file_without_sha256_is_refused_before_any_request(stub, model):
    version = stub.add_version(FIXTURE, data=model)
    extra = stub.add_file(version["id"], "config.safetensors", data=b"x" * 100, hashes={"AutoV2": "ABCDEF0123"})
    with pytest.raises(TransferFailed) as failed:
        expected_file(version, extra["id"])
    assert failed.value.reason == "no_hash" and "config.safetensors" in failed.value.message
    assert stub.count("/api/download/") == 0


def test_the_chosen_file_not_the_primary_is_fetched(stub, model, dest):
    version = stub.add_version(FIXTURE, data=b"primary bytes")
    other = stub.add_file(version["id"], "other.safetensors", data=model)
    file = expected_file(version, other["id"])
    source = CivitaiSource(file["downloadUrl"], file["hashes"]["SHA256"].lower(), api_key=KEY, limit=size_limit(file))
    received = receive(source, str(dest), "other.safetensors", options=FAST)
    assert received.hashes.sha256 == hashlib.sha256(model).hexdigest()


def test_429_with_retry_after_is_waited_out_and_reported(stub, model, dest):
    version = stub.add_version(FIXTURE, data=model)
    stub.fail_next(429, retry_after=1, path="/api/download/")
    asked: list[float] = []
    received = receive(source_for(stub, version, backed_off=asked.append), str(dest), "m.safetensors", options=FAST)
    assert received.hashes.sha256 == hashlib.sha256(model).hexdigest()
    assert asked == [1.0] and stub.count("/api/download/") == 2


def test_5xx_backs_off_reports_each_wait_then_gives_up_as_rate_limited(stub, model, dest):
    version = stub.add_version(FIXTURE, data=model)
    stub.fail_next(503, times=3, path="/api/download/")
    asked: list[float] = []
    with pytest.raises(TransferFailed) as failed:
        receive(source_for(stub, version, backoff=QUICK_BACKOFF, backed_off=asked.append), str(dest),
                "m.safetensors", options=FAST)
    assert failed.value.reason == "rate_limited" and failed.value.reason not in TERMINAL_DOWNLOAD_REASONS
    assert stub.count("/api/download/") == 3
    assert asked == [0.05, 0.1, 0.2]  # each wait, and the longest when giving up: the fleet backs off for 5xx too
    nothing_in(dest)


def test_429_exhausted_reports_each_retry_after(stub, model, dest):
    version = stub.add_version(FIXTURE, data=model)
    stub.fail_next(429, retry_after="0", times=3, path="/api/download/")
    asked: list[float] = []
    with pytest.raises(TransferFailed) as failed:
        receive(source_for(stub, version, backoff=QUICK_BACKOFF, backed_off=asked.append), str(dest),
                "m.safetensors", options=FAST)
    assert failed.value.reason == "rate_limited" and len(asked) == 3


def test_storage_5xx_is_backed_off_too(stub, model, dest):
    version = stub.add_version(FIXTURE, data=model)
    stub.script("storage_status", status=503, retry_after=0)
    received = receive(source_for(stub, version, backoff=QUICK_BACKOFF), str(dest), "m.safetensors", options=FAST)
    assert received.hashes.sha256 == hashlib.sha256(model).hexdigest() and stub.storage.count() == 2


def test_an_expired_signed_url_gets_a_fresh_one(stub, model, dest):
    version = stub.add_version(FIXTURE, data=model)
    stub.script("drop", after=MIB)
    stub.script("expired")
    received = receive(source_for(stub, version), str(dest), "m.safetensors", options=FAST)
    assert received.hashes.sha256 == hashlib.sha256(model).hexdigest()
    assert stub.count("/api/download/") == 2  # a fresh signed URL
    assert received.bytes_fetched <= len(model)  # and the resume went on from the temp file
    only_the_model(dest, "m.safetensors")


def test_a_storage_that_keeps_refusing_is_the_source_gone(stub, model, dest):
    version = stub.add_version(FIXTURE, data=model)
    stub.script("expired", times=5)
    with pytest.raises(TransferFailed) as failed:
        receive(source_for(stub, version), str(dest), "m.safetensors", options=FAST)
    assert failed.value.reason == "source_gone" and stub.count("/api/download/") == 3
    nothing_in(dest)


def test_a_cancel_stops_the_back_off(stub, model, dest):
    version = stub.add_version(FIXTURE, data=model)
    stub.fail_next(429, retry_after=60, path="/api/download/")
    cancel = threading.Event()
    source = source_for(stub, version, backed_off=lambda seconds: cancel.set())
    source.http.cancel = cancel
    with pytest.raises(TransferFailed) as failed:
        receive(source, str(dest), "m.safetensors", options=FAST, cancel=cancel)
    assert failed.value.reason == "cancelled"


def test_the_key_is_in_no_repr_or_message(stub, model, dest):
    version = stub.add_version(FIXTURE, data=model)
    source = source_for(stub, version)
    assert KEY not in repr(source)
    receive(source, str(dest), "m.safetensors", options=FAST)
    assert "X-Amz-Signature" not in repr(source)


def test_a_terminal_answer_on_resume_removes_the_temp_file(stub, model, dest):
    version = stub.add_version(FIXTURE, data=model)
    sha256 = hashlib.sha256(model).hexdigest()
    (dest / part_name(sha256)).write_bytes(model[:MIB])  # an earlier attempt's
    stub.script("not_found")
    with pytest.raises(TransferFailed) as failed:
        receive(source_for(stub, version), str(dest), "m.safetensors", options=FAST)
    assert failed.value.reason == "not_found"
    nothing_in(dest)
