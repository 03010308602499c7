"""A node's file server: only by SHA256, only files of its own catalog whose size and mtime still match, only to
the holder of a valid grant; served over real HTTP by Starlette's FileResponse with Range and If-Range."""
import os
import shutil

import pytest
import requests

from modelsync.shared.records import Root
from modelsync.shared.scan.scanner import scan
from modelsync.shared.transfer.grants import issue_grant, signing_key
from modelsync.shared.transfer.protocol import GRANT_HEADER, NODE_HEADER, etag, file_url
from modelsync.shared.transfer.ranges import ByteRange, RangeNotSatisfiable, read_range, requested_range
from modelsync.shared.transfer.serving import FileToServe, Refusal
from support_transfer import DEST_ID, MIB, SOURCE_ID, make_source_node, run_peer

LORA = "Lora/style.safetensors"
OTHER = "Lora/other.safetensors"


@pytest.fixture
def node(tmp_path):
    return make_source_node(tmp_path, {LORA: 3, OTHER: 1})


@pytest.fixture
def peer(node):
    with run_peer(node) as running:
        yield running


def fetch(peer, segment, grant=None, node_id=DEST_ID, **headers):
    if grant is not None:
        headers[GRANT_HEADER] = grant
    if node_id is not None:
        headers[NODE_HEADER] = node_id
    return requests.get(file_url(peer.base_url, segment), headers=headers, timeout=30)


def assert_refused(response, status, reason, peer):
    assert response.status_code == status
    assert response.json()["reason"] == reason
    assert len(response.content) < 300  # a short JSON refusal, never file bytes
    assert all(record.status == status for record in peer.served)


def test_a_granted_request_gets_the_whole_file_with_the_sha256_as_etag(node, peer):
    response = fetch(peer, node.sha256[LORA], node.grant(LORA))
    assert response.status_code == 200
    assert response.content == node.files[LORA].read_bytes()
    assert response.headers["ETag"] == etag(node.sha256[LORA])
    assert response.headers["Accept-Ranges"] == "bytes"


def test_a_range_with_a_matching_if_range_gets_the_rest(node, peer):
    sha = node.sha256[LORA]
    response = fetch(peer, sha, node.grant(LORA), Range="bytes=1048576-", **{"If-Range": etag(sha)})
    assert response.status_code == 206
    assert response.content == node.files[LORA].read_bytes()[MIB:]
    assert response.headers["Content-Range"] == f"bytes {MIB}-{node.size(LORA) - 1}/{node.size(LORA)}"


def test_an_if_range_for_other_content_gets_the_whole_file(node, peer):
    response = fetch(peer, node.sha256[LORA], node.grant(LORA), Range="bytes=100-", **{"If-Range": etag("0" * 64)})
    assert response.status_code == 200
    assert len(response.content) == node.size(LORA)


def test_no_grant_is_refused_and_nothing_served(node, peer):
    assert_refused(fetch(peer, node.sha256[LORA]), 401, "no_grant", peer)


def test_no_requesting_node_is_refused(node, peer):
    assert_refused(fetch(peer, node.sha256[LORA], node.grant(LORA), node_id=None), 401, "no_node", peer)


def test_a_tampered_grant_is_refused(node, peer):
    grant = node.grant(LORA)
    middle = len(grant) - 20  # inside the signature
    tampered = grant[:middle] + ("A" if grant[middle] != "A" else "B") + grant[middle + 1:]
    assert_refused(fetch(peer, node.sha256[LORA], tampered), 403, "bad_signature", peer)


def test_a_grant_signed_for_another_source_node_is_refused(node, peer):
    other_key = signing_key("the token of node-c")
    grant = issue_grant(other_key, sha256=node.sha256[LORA], source=SOURCE_ID, destination=DEST_ID).value
    assert_refused(fetch(peer, node.sha256[LORA], grant), 403, "bad_signature", peer)


def test_a_grant_for_another_destination_is_refused(node, peer):
    grant = node.grant(LORA, destination="node-c")
    assert_refused(fetch(peer, node.sha256[LORA], grant, node_id=DEST_ID), 403, "wrong_destination", peer)


def test_a_grant_for_another_sha256_is_refused(node, peer):
    assert_refused(fetch(peer, node.sha256[OTHER], node.grant(LORA)), 403, "wrong_sha256", peer)


def test_an_expired_grant_is_refused(node, peer):
    assert_refused(fetch(peer, node.sha256[LORA], node.grant(LORA, ttl_seconds=-120)), 403, "expired", peer)


@pytest.mark.parametrize("segment", ["..%2F..%2Fetc%2Fpasswd", "Lora/style.safetensors", "%2Fetc%2Fpasswd",
                                     "UPPER", "ab" * 31 + "zz"])
def test_a_path_instead_of_a_sha256_is_refused(node, peer, segment):
    if segment == "UPPER":
        segment = node.sha256[LORA].upper()
    assert_refused(fetch(peer, segment, node.grant(LORA)), 400, "not_sha256", peer)


def test_a_sha256_outside_the_catalog_is_not_found(node, peer):
    absent = "0" * 64
    grant = issue_grant(node.key, sha256=absent, source=SOURCE_ID, destination=DEST_ID).value
    assert_refused(fetch(peer, absent, grant), 404, "not_found", peer)


def test_a_changed_file_is_refused_with_409_and_named_for_a_rescan(node, peer):
    path = node.files[LORA]
    with open(path, "ab") as f:
        f.write(b"appended")
    assert_refused(fetch(peer, node.sha256[LORA], node.grant(LORA)), 409, "changed", peer)
    assert peer.rescans == [(str(path),)]


def test_a_touched_or_vanished_file_is_changed(node, peer):
    path = node.files[LORA]
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert_refused(fetch(peer, node.sha256[LORA], node.grant(LORA)), 409, "changed", peer)
    path.unlink()
    assert fetch(peer, node.sha256[LORA], node.grant(LORA)).json()["reason"] == "changed"


def test_a_duplicate_that_still_matches_is_served_when_the_other_changed(node):
    copy = node.root / "Lora" / "copy.safetensors"
    shutil.copy2(node.files[LORA], copy)
    scan([Root(str(node.root), "lora")], node.serving.catalog, SOURCE_ID, calculate_hashes=True)
    with open(node.files[LORA], "ab") as f:
        f.write(b"x")
    decision = node.serving.decide(node.sha256[LORA], node.grant(LORA), DEST_ID)
    assert decision == FileToServe(str(copy), copy.stat().st_size, node.sha256[LORA])


def test_another_nodes_rows_in_the_catalog_are_never_served(node):
    node.serving.catalog.execute("UPDATE model_server_availability SET server_id = 'node-z'")
    decision = node.serving.decide(node.sha256[LORA], node.grant(LORA), DEST_ID)
    assert isinstance(decision, Refusal) and (decision.status, decision.reason) == (404, "not_found")


def test_the_grant_key_never_shows_in_a_repr(node):
    assert node.key not in repr(node.serving)


@pytest.mark.parametrize("header,if_range,expected", [
    (None, None, None),
    ("bytes=0-", None, ByteRange(0, 1000)),
    ("bytes=100-", '"sha"', ByteRange(100, 1000)),
    ("bytes=100-", '"other"', None),
    ("bytes=100-199", None, ByteRange(100, 200)),
    ("bytes=900-5000", None, ByteRange(900, 1000)),
    ("bytes=-100", None, ByteRange(900, 1000)),
    ("bytes=-5000", None, ByteRange(0, 1000)),
    ("bytes=0-1,5-6", None, None),
    ("bytes=5-2", None, None),
    ("items=0-1", None, None),
    ("bytes=-", None, None),
])
def test_requested_range(header, if_range, expected):
    assert requested_range(header, if_range, '"sha"', 1000) == expected


@pytest.mark.parametrize("header", ["bytes=1000-", "bytes=2000-3000", "bytes=-0"])
def test_a_range_past_the_end_is_not_satisfiable(header):
    with pytest.raises(RangeNotSatisfiable):
        requested_range(header, None, '"sha"', 1000)


def test_read_range_yields_exactly_the_range(node):
    data = node.files[OTHER].read_bytes()
    byte_range = ByteRange(10, 300_000)
    assert b"".join(read_range(str(node.files[OTHER]), byte_range, chunk_size=4096)) == data[10:300_000]
    assert byte_range.content_range(len(data)) == f"bytes 10-299999/{len(data)}"


def test_a_models_companions_are_decided_with_the_models_grant(node):
    serving, sha = node.serving, node.sha256[LORA]
    stem = os.path.splitext(str(node.files[LORA]))[0]
    with open(stem + ".civitai.info", "w") as f:
        f.write('{"id": 1}')
    decided = serving.decide_companion(sha, "civitai-info", node.grant(LORA), DEST_ID)
    assert isinstance(decided, FileToServe) and decided.path == stem + ".civitai.info" and decided.companion
    assert "ETag" not in decided.headers  # the model's ETag is not the sidecar's
    assert serving.decide_companion(sha, "json", node.grant(LORA), DEST_ID).reason == "no_companion"
    assert serving.decide_companion(sha, "../../etc/passwd", node.grant(LORA), DEST_ID).status == 404
    assert serving.decide_companion(sha, "civitai-info", None, DEST_ID).reason == "no_grant"
    assert serving.decide_companion(sha, "civitai-info", node.grant(OTHER), DEST_ID).reason == "wrong_sha256"
