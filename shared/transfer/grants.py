"""Short-lived grants for peer fetches: the central server signs (SHA256, source node, destination node, expiry)
with HMAC-SHA256; the source node checks the grant itself, without asking the server.

The key is the source node's token hash, `sha256(token).hexdigest()`: what the server stores per node and what the
node computes from its own token. No new secret is distributed, and a token reset revokes the node's outstanding
grants. The string form is `v1.<base64url JSON claims>.<base64url signature>`; it is a bearer credential, so it
never appears in a repr, a log, an answer or a page.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from dataclasses import dataclass, field

VERSION_TAG = "v1"
DEFAULT_TTL_SECONDS = 600  # a resume after this asks the server for a fresh grant
CLOCK_SKEW_SECONDS = 30  # how far the source's clock may run ahead of the server's
MAX_GRANT_CHARS = 1024  # ids are at most 64 characters: a real grant is about 300
_CONTEXT = b"modelsync-grant:"  # domain separation: this key signs nothing else
_SHA256 = re.compile(r"[0-9a-f]{64}")
_B64URL = re.compile(r"[A-Za-z0-9_-]+")

# reason -> meaning (the file server answers 401 for no_grant, 403 for the others)
REFUSALS = {
    "no_grant": "no grant was presented",
    "malformed": "the grant is not a grant of this format",
    "unknown_version": "the grant has a version this node does not know",
    "bad_signature": "the grant's signature does not verify (tampered, or signed for another node or an old token)",
    "wrong_sha256": "the grant is for another file",
    "wrong_source": "the grant is for another source node",
    "wrong_destination": "the grant is for another destination node",
    "expired": "the grant has expired",
}


class GrantRefused(Exception):
    def __init__(self, reason: str):
        super().__init__(REFUSALS[reason])
        self.reason = reason


@dataclass(frozen=True)
class GrantClaims:
    sha256: str
    source: str  # the node that serves the file (whose token hash signs)
    destination: str  # the node that may fetch it
    expires_at: int  # Unix seconds


@dataclass(frozen=True)
class Grant:
    claims: GrantClaims
    value: str = field(repr=False)  # the bearer string; repr shows the claims only


def signing_key(token: str) -> str:
    """The key a node's grants are signed with: its token hash (as server/auth.py `token_hash` stores it)."""
    return hashlib.sha256(token.encode()).hexdigest()


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)) if _B64URL.fullmatch(text) else None
    if data is None or _b64encode(data) != text:  # one spelling per value: no variant of a grant verifies
        raise GrantRefused("malformed")
    return data


def _signature(key: str, signed: str) -> bytes:
    return hmac.new(key.encode("ascii"), _CONTEXT + signed.encode("ascii"), hashlib.sha256).digest()


def issue_grant(
    key: str, *, sha256: str, source: str, destination: str, ttl_seconds: int = DEFAULT_TTL_SECONDS,
    now: float | None = None,
) -> Grant:
    """`key`: the source node's token hash (the registry's `servers.token_hash`)."""
    sha256 = sha256.lower()
    if not _SHA256.fullmatch(sha256):
        raise ValueError("sha256 must be 64 hex digits")
    claims = GrantClaims(sha256, source, destination, int(time.time() if now is None else now) + ttl_seconds)
    payload = {"sha256": claims.sha256, "src": claims.source, "dst": claims.destination, "exp": claims.expires_at}
    signed = f"{VERSION_TAG}.{_b64encode(json.dumps(payload, separators=(',', ':')).encode())}"
    return Grant(claims, f"{signed}.{_b64encode(_signature(key, signed))}")


def _claims(payload: bytes) -> GrantClaims:
    try:
        data = json.loads(payload)
    except ValueError:
        raise GrantRefused("malformed") from None
    fields = (data.get("sha256"), data.get("src"), data.get("dst"), data.get("exp")) if isinstance(data, dict) else ()
    if not (len(fields) == 4 and all(isinstance(v, str) for v in fields[:3])
            and isinstance(fields[3], int) and not isinstance(fields[3], bool)):
        raise GrantRefused("malformed")
    return GrantClaims(*fields)


def verify_grant(
    value: str | None, key: str, *, sha256: str, source: str, destination: str, now: float | None = None,
) -> GrantClaims:
    """The grant's claims when it lets `destination` fetch `sha256` from `source`; else GrantRefused(reason).
    `key`: this (source) node's `signing_key(token)`."""
    if not value:
        raise GrantRefused("no_grant")
    if len(value) > MAX_GRANT_CHARS or value.count(".") != 2:
        raise GrantRefused("malformed")
    version, payload, signature = value.split(".")
    if version != VERSION_TAG:
        raise GrantRefused("unknown_version")
    payload_bytes, signature_bytes = _b64decode(payload), _b64decode(signature)
    if not hmac.compare_digest(signature_bytes, _signature(key, f"{version}.{payload}")):
        raise GrantRefused("bad_signature")
    claims = _claims(payload_bytes)
    if claims.sha256 != sha256:
        raise GrantRefused("wrong_sha256")
    if claims.source != source:
        raise GrantRefused("wrong_source")
    if claims.destination != destination:
        raise GrantRefused("wrong_destination")
    if (time.time() if now is None else now) > claims.expires_at + CLOCK_SKEW_SECONDS:
        raise GrantRefused("expired")
    return claims
