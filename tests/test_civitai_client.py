import hashlib
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest

from modelsync.shared.civitai.client import CivitaiClient, ImageRejected, parse_retry_after
from modelsync.shared.scan.metadata_sources import from_civitai_version
from support_civitai import civitai_stub  # noqa: F401

FIXTURE = "civitai_model_version_1387174_lora_flux_lora-manager.json"
SHA = hashlib.sha256(b"a model").hexdigest()


def test_found_by_full_sha256_with_bearer_key(civitai_stub):
    version = civitai_stub.add_version(FIXTURE, SHA)
    result = CivitaiClient(base_url=civitai_stub.base_url, api_key="k3y").by_hash(SHA)
    assert result.status == "found" and result.data["id"] == version["id"]
    assert from_civitai_version(result.data, SHA)["civitai_version_id"] == version["id"]
    method, path, auth = civitai_stub.requests[-1]
    assert path.endswith(SHA.upper()) and auth == "Bearer k3y"


def test_base_url_from_environment(civitai_stub, monkeypatch):
    monkeypatch.setenv("CIVITAI_API_BASE", civitai_stub.base_url)
    monkeypatch.delenv("CIVITAI_API_KEY", raising=False)
    assert CivitaiClient().by_hash(SHA).status == "not_found"
    assert civitai_stub.requests[-1][2] is None


@pytest.mark.parametrize("status, expected", [(429, "rate_limited"), (500, "error"), (503, "error")])
def test_failures_carry_retry_after(civitai_stub, status, expected):
    civitai_stub.fail_next(status, retry_after=7)
    result = CivitaiClient(base_url=civitai_stub.base_url).by_hash(SHA)
    assert (result.status, result.retry_after) == (expected, 7.0)


def test_retry_after_as_http_date():
    when = datetime.now(timezone.utc) + timedelta(seconds=30)
    assert 25 <= parse_retry_after(format_datetime(when, usegmt=True)) <= 31
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_timeout_is_an_error_never_unknown(civitai_stub):
    civitai_stub.delay = 1.0
    result = CivitaiClient(base_url=civitai_stub.base_url, timeout=0.2).by_hash(SHA)
    assert result.status == "error" and "Timeout" in result.error


def test_bulk_lookup_maps_versions_back_to_hashes(civitai_stub):
    other = hashlib.sha256(b"unknown").hexdigest()
    civitai_stub.add_version(FIXTURE, SHA)
    result = CivitaiClient(base_url=civitai_stub.base_url).by_hashes([SHA, other])
    assert result.status == "ok" and list(result.found) == [SHA] and result.not_found == [other]
    civitai_stub.fail_next(429, retry_after=3)
    assert CivitaiClient(base_url=civitai_stub.base_url).by_hashes([SHA]).status == "rate_limited"


def test_images_only_from_allowed_hosts_and_of_image_type(civitai_stub):
    client = CivitaiClient(base_url=civitai_stub.base_url)
    url = f"{civitai_stub.base_url}/images/x.jpeg"
    data, content_type = client.download_image(url, {"127.0.0.1"})
    assert content_type == "image/jpeg" and data[:2] == b"\xff\xd8"
    with pytest.raises(ImageRejected, match="not an allowed image host"):
        client.download_image(url, {"image.civitai.com"})
    with pytest.raises(ImageRejected, match="larger than"):
        client.download_image(url, {"127.0.0.1"}, max_bytes=10)
    civitai_stub.image_content_type = "text/html"
    with pytest.raises(ImageRejected, match="not an image"):
        client.download_image(url, {"127.0.0.1"})
    with pytest.raises(ImageRejected, match="http"):
        client.download_image("file:///etc/passwd", {"127.0.0.1"})
