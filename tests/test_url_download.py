"""An operator's URL as a transfer source, against the storage stand-in (a signed URL whose query is a credential):
http(s) only, the same temp file, resume and SHA256 rules, and the query string never in a message, a repr or a log."""
import hashlib
import logging
import shutil
from pathlib import Path

import pytest
import requests

from modelsync.shared.transfer.backoff import Backoff
from modelsync.shared.transfer.failures import TERMINAL_DOWNLOAD_REASONS, TransferFailed
from modelsync.shared.transfer.receiver import ReceiveOptions, receive
from modelsync.shared.transfer.url_source import ResumableGet, UrlSource, redirect_target
from modelsync.shared.transfer.urls import shown
from support_civitai import civitai_stub  # noqa: F401  (fixture)
from support_transfer import MIB, dest, model, write_large_safetensors  # noqa: F401  (fixtures)

FAST = ReceiveOptions(floor_bytes=0, retry_delay_seconds=0.05, progress_interval_seconds=0)


@pytest.fixture
def url(civitai_stub, model) -> str:
    civitai_stub.storage.objects["operator/u.safetensors"] = model
    return civitai_stub.storage.signed_url("operator/u.safetensors", "u.safetensors")


def secret_of(url: str) -> str:
    return url.split("X-Amz-Signature=")[1].split("&")[0]


def test_a_url_arrives_verified_and_its_query_is_never_logged(civitai_stub, model, url, dest, caplog):
    caplog.set_level(logging.DEBUG)
    civitai_stub.script("drop", after=MIB + 5)
    civitai_stub.script("ignore_range")
    source = UrlSource(url, hashlib.sha256(model).hexdigest())
    received = receive(source, str(dest), "u.safetensors", options=FAST)
    assert (dest / "u.safetensors").read_bytes() == model and received.size == len(model)
    assert [p.name for p in dest.iterdir()] == ["u.safetensors"]
    assert secret_of(url) not in caplog.text and secret_of(url) not in repr(source)
    assert "ignored the Range" in caplog.text and shown(url) in caplog.text
    assert civitai_stub.storage.requests[-1][2]["Range"].startswith("bytes=")


def test_only_http_urls_are_fetched():
    for bad in ("file:///etc/passwd", "ftp://example.org/x.safetensors", "http:///nohost", "javascript:alert(1)"):
        with pytest.raises(TransferFailed) as failed:
            UrlSource(bad, "0" * 64)
        assert failed.value.reason == "url_refused" and failed.value.reason in TERMINAL_DOWNLOAD_REASONS


def test_a_redirect_is_followed_without_the_urls_credentials(civitai_stub, dest):
    version = civitai_stub.add_version("civitai_model_version_1387174_lora_flux_lora-manager.json", data=b"abc" * 1000)
    with_password = civitai_stub.download_url(version["id"]).replace("http://", "http://op:pa55word@")
    received = receive(UrlSource(with_password, hashlib.sha256(b"abc" * 1000).hexdigest()), str(dest), "abc.bin",
                       options=FAST)
    assert received.size == 3000
    assert civitai_stub.requests[-1][2] is not None  # the operator's URL got its credentials...
    assert "Authorization" not in civitai_stub.storage.requests[-1][2]  # ...the host it redirected to did not
    assert civitai_stub.storage.saw_api_key == []


def test_a_redirect_to_another_scheme_is_refused():
    response = requests.Response()
    response.status_code, response.headers["Location"] = 307, "file:///etc/shadow"
    with pytest.raises(TransferFailed) as failed:
        redirect_target(response, "https://example.org/model")
    assert failed.value.reason == "url_refused"


def test_a_bad_port_is_refused_and_shown_never_raises():
    for bad in ("http://h:abc/x.safetensors?token=s3cret", "http://h:99999/x", "https://[::1/x"):
        assert "s3cret" not in shown(bad)
        with pytest.raises(TransferFailed) as failed:
            UrlSource(bad, "0" * 64)
        assert failed.value.reason == "url_refused" and "s3cret" not in failed.value.message
    response = requests.Response()
    response.status_code, response.headers["Location"] = 302, "http://h:abc/model?sig=s3cret"
    with pytest.raises(TransferFailed) as failed:
        redirect_target(response, "https://example.org/model")
    assert failed.value.reason == "url_refused" and "http://h:(bad port)/model" in failed.value.message


def floor_leaving(dest: Path, room: int) -> int:
    """A free-disk floor that leaves `room` bytes for the download."""
    return shutil.disk_usage(dest).free - room


def test_a_declared_length_past_the_floor_fails_before_any_byte_is_written(civitai_stub, tmp_path, dest):
    big = write_large_safetensors(tmp_path / "made" / "big.safetensors", 16).read_bytes()
    civitai_stub.storage.objects["operator/big.safetensors"] = big
    url = civitai_stub.storage.signed_url("operator/big.safetensors", "big.safetensors")
    options = ReceiveOptions(floor_bytes=floor_leaving(dest, 8 * MIB), progress_interval_seconds=0)
    with pytest.raises(TransferFailed) as failed:
        receive(UrlSource(url, hashlib.sha256(big).hexdigest()), str(dest), "big.safetensors", options=options)
    assert failed.value.reason == "disk_full" and f"needs {len(big)} more" in failed.value.message
    assert civitai_stub.storage.count() == 1 and list(dest.iterdir()) == []


def test_a_stream_of_unsaid_length_is_stopped_at_the_floor_and_its_temp_file_dropped(civitai_stub, tmp_path, dest):
    big = write_large_safetensors(tmp_path / "made" / "big.safetensors", 16).read_bytes()
    civitai_stub.storage.objects["operator/big.safetensors"] = big
    url = civitai_stub.storage.signed_url("operator/big.safetensors", "big.safetensors")
    civitai_stub.script("chunked")
    seen: list[tuple[int, int | None]] = []
    options = ReceiveOptions(floor_bytes=floor_leaving(dest, 8 * MIB), progress_interval_seconds=0,
                             space_check_bytes=MIB)
    with pytest.raises(TransferFailed) as failed:
        receive(UrlSource(url, hashlib.sha256(big).hexdigest()), str(dest), "big.safetensors", options=options,
                progress=lambda p: seen.append((p.bytes_done, p.size)))
    assert failed.value.reason == "disk_full" and "the floor is" in failed.value.message
    assert seen and all(size is None for _, size in seen)  # the length was never said...
    assert 0 < seen[-1][0] < len(big)  # ...and the stream was stopped part-way
    assert civitai_stub.storage.count() == 1 and list(dest.iterdir()) == []  # the temp file is gone


def test_wrong_bytes_and_404_leave_nothing_and_never_show_the_query(civitai_stub, model, url, dest, caplog):
    caplog.set_level(logging.DEBUG)
    civitai_stub.script("wrong_bytes")
    with pytest.raises(TransferFailed) as failed:
        receive(UrlSource(url, hashlib.sha256(model).hexdigest()), str(dest), "u.safetensors", options=FAST)
    assert failed.value.reason == "hash_mismatch" and list(dest.iterdir()) == []
    missing = url.replace("operator/u.safetensors", "operator/gone.safetensors")
    with pytest.raises(TransferFailed) as failed:
        receive(UrlSource(missing, "0" * 64), str(dest), "gone.safetensors", options=FAST)
    assert failed.value.reason == "not_found" and secret_of(url) not in failed.value.message
    assert list(dest.iterdir()) == [] and secret_of(url) not in caplog.text


def test_an_expired_url_is_not_allowed_and_5xx_is_rate_limited(civitai_stub, model, url, dest):
    civitai_stub.script("storage_status", status=503, times=3)
    source = UrlSource(url, hashlib.sha256(model).hexdigest(),
                       http=ResumableGet(backoff=Backoff(first_seconds=0.05, attempts=2)))
    with pytest.raises(TransferFailed) as failed:
        receive(source, str(dest), "u.safetensors", options=FAST)
    assert failed.value.reason == "rate_limited" and civitai_stub.storage.count() == 3
    civitai_stub.storage.expire()
    with pytest.raises(TransferFailed) as failed:
        receive(UrlSource(url, hashlib.sha256(model).hexdigest()), str(dest), "u.safetensors", options=FAST)
    assert failed.value.reason == "not_allowed" and list(dest.iterdir()) == []
