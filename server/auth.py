"""Node tokens and the admin token.

A node registers on first contact (its first sync or heartbeat): the server generates a token, returns it
once and keeps only its SHA256; from then on the node must send it as `Authorization: Bearer <token>`.
Who may register this way is `ServerConfig.registration`: loopback clients (default), anyone, or nobody;
the admin can always issue (reset) a node's token. The admin token also acts for any node.
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import sqlite_utils
from starlette.requests import Request

from modelsync.shared.catalog import write_transaction

from .config import ServerConfig
from .errors import ApiError
from .registry import iso, utc_now

log = logging.getLogger(__name__)

MIN_TOKEN_LENGTH = 16


def new_token() -> str:
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    # tokens are 256-bit random strings: a plain digest is enough (no password stretching needed)
    return hashlib.sha256(token.encode()).hexdigest()


def load_admin_token(config: ServerConfig) -> str:
    """MODELSYNC_ADMIN_TOKEN, else the one stored in CONFIG_DATA_PATH/admin_token (generated on first start, 0600)."""
    if config.admin_token:
        return config.admin_token
    path: Path = config.admin_token_path
    if path.exists():
        token = path.read_text().strip()
        if len(token) >= MIN_TOKEN_LENGTH:
            return token
    path.parent.mkdir(parents=True, exist_ok=True)
    token = new_token()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    os.chmod(path, 0o600)
    log.warning("generated an admin token; it is in %s", path)
    return token


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def is_admin(request: Request, admin_token: str) -> bool:
    token = bearer_token(request)
    return token is not None and hmac.compare_digest(token.encode(), admin_token.encode())


def require_admin(request: Request, admin_token: str) -> None:
    token = bearer_token(request)
    if token is None:
        raise ApiError(401, "this action needs the admin token as 'Authorization: Bearer <token>'", "Authorization")
    if not hmac.compare_digest(token.encode(), admin_token.encode()):
        raise ApiError(403, "the token is not the admin token", "Authorization")


def _is_loopback(host: str | None) -> bool:
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class NodeAuth:
    server_id: str
    registered: bool = False  # this request registered the node
    token: str | None = None  # set only when the server generated the token in this request
    as_admin: bool = False


def authenticate_node(
    db: sqlite_utils.Database, request: Request, server_id: str, config: ServerConfig, admin_token: str
) -> NodeAuth:
    """Check the caller may act for `server_id`; registers an unknown node when registration allows it."""
    presented = bearer_token(request)
    if presented is not None and hmac.compare_digest(presented.encode(), admin_token.encode()):
        return NodeAuth(server_id, as_admin=True)
    row = _server_row(db, server_id)
    if row is not None and row["token_hash"]:
        if presented is None:
            raise ApiError(401, f"node {server_id!r} is registered; send its token as 'Authorization: Bearer <token>'", "Authorization")
        if not hmac.compare_digest(token_hash(presented), row["token_hash"]):
            raise ApiError(403, f"the token is not node {server_id!r}'s token", "Authorization")
        return NodeAuth(server_id)
    client = request.client.host if request.client else None
    if config.registration == "closed" or (config.registration == "loopback" and not _is_loopback(client)):
        raise ApiError(
            403,
            f"node {server_id!r} is not registered and this server does not register new nodes from {client}; "
            f"ask the admin for a token (POST /api/v1/servers/{server_id}/token)",
            "Authorization",
        )
    if presented is not None and len(presented) < MIN_TOKEN_LENGTH:
        raise ApiError(400, f"a node token must have at least {MIN_TOKEN_LENGTH} characters", "Authorization")
    token = presented or new_token()
    with write_transaction(db):
        row = _server_row(db, server_id)
        if row is not None and row["token_hash"]:  # registered by a concurrent request meanwhile
            if not hmac.compare_digest(token_hash(token), row["token_hash"]):
                raise ApiError(403, f"node {server_id!r} was registered meanwhile with another token", "Authorization")
            return NodeAuth(server_id)
        _store_token(db, server_id, row, token)
    log.info("registered node %s from %s", server_id, client)
    return NodeAuth(server_id, registered=True, token=None if presented else token)


def issue_token(db: sqlite_utils.Database, server_id: str) -> str:
    """A new token for a node (created if unknown); the old token stops working at once."""
    token = new_token()
    with write_transaction(db):
        _store_token(db, server_id, _server_row(db, server_id), token)
    log.info("issued a new token for node %s", server_id)
    return token


def _server_row(db: sqlite_utils.Database, server_id: str) -> dict | None:
    return next(db.query("SELECT id, token_hash FROM servers WHERE id = ?", [server_id]), None)


def _store_token(db: sqlite_utils.Database, server_id: str, row: dict | None, token: str) -> None:
    if row is None:
        db["servers"].insert({"id": server_id, "token_hash": token_hash(token), "created_at": iso(utc_now())})
    else:
        db.execute("UPDATE servers SET token_hash = ? WHERE id = ?", [token_hash(token), server_id])
