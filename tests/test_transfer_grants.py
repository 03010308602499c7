"""Grants for peer fetches: signed by the central server with the source node's token hash, checked by the source
node alone; every refusal has its reason word; the bearer string never shows in a repr."""
import base64
import json
import secrets
import time

import pytest
from support_transfer import tampered

from modelsync.server.auth import token_hash
from modelsync.shared.transfer import grants
from modelsync.shared.transfer.grants import (CLOCK_SKEW_SECONDS, MAX_GRANT_CHARS, GrantRefused, issue_grant,
                                              signing_key, verify_grant)

SHA = "ab" * 32
OTHER_SHA = "cd" * 32
TOKEN = secrets.token_urlsafe(32)
KEY = signing_key(TOKEN)


def refusal(value, key=KEY, sha256=SHA, source="node-a", destination="node-b", now=None) -> str:
    with pytest.raises(GrantRefused) as refused:
        verify_grant(value, key, sha256=sha256, source=source, destination=destination, now=now)
    return refused.value.reason


def test_the_key_is_the_token_hash_the_server_stores():
    assert signing_key(TOKEN) == token_hash(TOKEN)


def test_a_grant_verifies_for_its_file_source_and_destination():
    now = time.time()
    grant = issue_grant(KEY, sha256=SHA.upper(), source="node-a", destination="node-b", ttl_seconds=60, now=now)
    claims = verify_grant(grant.value, KEY, sha256=SHA, source="node-a", destination="node-b")
    assert claims == grant.claims
    assert (claims.sha256, claims.source, claims.destination, claims.expires_at) == (SHA, "node-a", "node-b", int(now) + 60)
    assert grant.value.startswith("v1.") and grant.value.count(".") == 2


def test_the_bearer_string_never_shows_in_a_repr():
    grant = issue_grant(KEY, sha256=SHA, source="node-a", destination="node-b")
    assert grant.value not in repr(grant) and grant.value not in str(grant)
    assert "node-b" in repr(grant)  # the claims are shown


def test_no_grant_is_refused():
    assert refusal(None) == "no_grant"
    assert refusal("") == "no_grant"


def test_a_tampered_signature_or_payload_is_refused():
    value = issue_grant(KEY, sha256=SHA, source="node-a", destination="node-c").value
    version, payload, signature = value.split(".")
    assert refusal(f"{version}.{payload}.{tampered(signature)}", destination="node-c") == "bad_signature"
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["dst"] = "node-b"  # the holder rewrites the destination to itself
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    assert refusal(f"{version}.{forged}.{signature}") == "bad_signature"


def test_a_grant_signed_with_another_nodes_key_or_an_old_token_is_refused():
    other_node = issue_grant(signing_key("another node's token"), sha256=SHA, source="node-a", destination="node-b")
    assert refusal(other_node.value) == "bad_signature"
    before_reset = issue_grant(KEY, sha256=SHA, source="node-a", destination="node-b")
    assert refusal(before_reset.value, key=signing_key(secrets.token_urlsafe(32))) == "bad_signature"


def test_a_grant_for_another_file_source_or_destination_is_refused():
    value = issue_grant(KEY, sha256=SHA, source="node-a", destination="node-b").value
    assert refusal(value, sha256=OTHER_SHA) == "wrong_sha256"
    assert refusal(value, source="node-x") == "wrong_source"
    assert refusal(value, destination="node-c") == "wrong_destination"


def test_expiry_allows_the_stated_clock_skew_and_no_more():
    now = 1_900_000_000
    value = issue_grant(KEY, sha256=SHA, source="node-a", destination="node-b", ttl_seconds=60, now=now).value
    verify_grant(value, KEY, sha256=SHA, source="node-a", destination="node-b", now=now + 60 + CLOCK_SKEW_SECONDS)
    assert refusal(value, now=now + 61 + CLOCK_SKEW_SECONDS) == "expired"


def test_another_spelling_of_the_same_signature_is_refused():
    version, payload, signature = issue_grant(KEY, sha256=SHA, source="node-a", destination="node-b").value.split(".")
    # 32 bytes take 43 base64 characters: the last one carries 2 unused bits, so 4 spellings decode alike
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    variant = signature[:-1] + alphabet[alphabet.index(signature[-1]) ^ 1]
    assert refusal(f"{version}.{payload}.{variant}") == "malformed"


@pytest.mark.parametrize("value", [
    "garbage", "v1.only-two", "v1.a.b.c", "v1.???.abc", "v1.abc.d=f", "v1.é.abc", "x" * (MAX_GRANT_CHARS + 1),
])
def test_a_malformed_grant_is_refused(value):
    assert refusal(value) == "malformed"


def test_an_unknown_version_is_refused():
    version, payload, signature = issue_grant(KEY, sha256=SHA, source="node-a", destination="node-b").value.split(".")
    assert refusal(f"v2.{payload}.{signature}") == "unknown_version"


@pytest.mark.parametrize("claims", [b"not json", b"[1, 2]", b'{"sha256": "x", "src": "node-a", "dst": "node-b"}',
                                    b'{"sha256": "x", "src": "node-a", "dst": "node-b", "exp": true}'])
def test_a_signed_payload_that_is_not_claims_is_refused(claims):
    payload = base64.urlsafe_b64encode(claims).rstrip(b"=").decode()
    signature = base64.urlsafe_b64encode(grants._signature(KEY, f"v1.{payload}")).rstrip(b"=").decode()
    assert refusal(f"v1.{payload}.{signature}") == "malformed"


def test_only_a_sha256_can_be_granted():
    with pytest.raises(ValueError):
        issue_grant(KEY, sha256="../../etc/passwd", source="node-a", destination="node-b")
