"""Node tokens, the admin token, and who the client really is.

A node registers on first contact (its first sync or heartbeat): the server generates a token, returns it
once and keeps only its SHA256; from then on the node must send it as `Authorization: Bearer <token>`.
Who may register this way is `ServerConfig.registration`: loopback clients (default), anyone, or nobody;
the admin can always issue (reset) a node's token. The admin token also acts for any node.

Everything here is decided from the request's headers and its peer address, before its body is read
(`admit_node`, `admit_caller`); a first contact's registration is written later, with what its body changes
(`register_first_contact`). The client's address is `real_client`: the TCP peer, or the address a trusted
proxy (`ServerConfig.trusted_proxies`) forwards for; X-Forwarded-For from anyone else is ignored.
"""
from __future__ import annotations

import functools
import hashlib
import hmac
import ipaddress
import logging
import os
import secrets
from dataclasses import dataclass, field, replace
from pathlib import Path

import sqlite_utils
from starlette.requests import Request

from modelsync.shared.catalog import write_transaction

from .config import ConfigError, ServerConfig
from .errors import ApiError
from .registry import iso, utc_now

log = logging.getLogger(__name__)

MIN_TOKEN_LENGTH = 16


def new_token() -> str:
    """256 random bits, URL-safe, never starting with "-": an operator passes it after an option (`--token X`)."""
    while (token := secrets.token_urlsafe(32)).startswith("-"):
        continue
    return token


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


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def _is_admin_token(presented: str | None, admin_token: str) -> bool:
    return presented is not None and hmac.compare_digest(presented.encode(), admin_token.encode())


def is_queue_or_admin_token(presented: str, queue_token: str, admin_token: str) -> bool:
    """Both compared, whatever the first gives: the time taken does not tell which token was close."""
    matches = [hmac.compare_digest(presented.encode(), known.encode()) for known in (queue_token, admin_token)]
    return any(matches)


def is_node_token(db: sqlite_utils.Database, server_id: str, presented: str) -> bool:
    """`presented` is node `server_id`'s own token (compared by its hash, in constant time)."""
    row = db.conn.execute("SELECT token_hash FROM servers WHERE id = ?", [server_id]).fetchone()
    return row is not None and bool(row[0]) and hmac.compare_digest(token_hash(presented), row[0])


def require_admin(request: Request, admin_token: str) -> None:
    token = bearer_token(request)
    if token is None:
        raise ApiError(401, "this action needs the admin token as 'Authorization: Bearer <token>'", "Authorization")
    if not _is_admin_token(token, admin_token):
        raise ApiError(403, "the token is not the admin token", "Authorization")


@functools.lru_cache(maxsize=8)
def trusted_networks(trusted_proxies: tuple[str, ...]) -> tuple[IPNetwork, ...]:
    """MODELSYNC_TRUSTED_PROXIES parsed: addresses or CIDR networks (a bad entry stops the server at start-up)."""
    networks = []
    for entry in trusted_proxies:
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ConfigError(f"MODELSYNC_TRUSTED_PROXIES: {entry!r} is not an address or a network") from None
    return tuple(networks)


def _address(text: str) -> IPAddress | None:
    """An address as a peer or X-Forwarded-For gives it (`1.2.3.4`, `1.2.3.4:5678`, `[::1]:443`, `::1`)."""
    text = text.strip()
    if text.startswith("[") and "]" in text:
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1 is 127.0.0.1
    return mapped or address


def _trusted(text: str, networks: tuple[IPNetwork, ...]) -> bool:
    address = _address(text)
    return address is not None and any(address in network for network in networks)


def real_client(request: Request, config: ServerConfig) -> str | None:
    """The address every decision about the client uses: the TCP peer, unless the peer is a trusted proxy; then the
    nearest address in X-Forwarded-For that is not a trusted proxy (None when the proxy forwards none)."""
    peer = request.client.host if request.client else None
    networks = trusted_networks(config.trusted_proxies)
    if peer is None or not _trusted(peer, networks):
        return peer
    hops = [hop.strip() for value in request.headers.getlist("x-forwarded-for") for hop in value.split(",") if hop.strip()]
    for hop in reversed(hops):
        if not _trusted(hop, networks):
            return hop
    return hops[0] if hops else None


def is_loopback(address: str | None) -> bool:
    parsed = _address(address) if address is not None else None
    return parsed is not None and parsed.is_loopback


def require_admin_unless_loopback(request: Request, config: ServerConfig, admin_token: str) -> None:
    """Actions that make the server work hard (scanning, hashing its own files): loopback clients, or the admin."""
    if not is_loopback(real_client(request, config)):
        require_admin(request, admin_token)


def _may_register(client: str | None, config: ServerConfig) -> bool:
    return config.registration == "open" or (config.registration == "loopback" and is_loopback(client))


@dataclass
class NodeAuth:
    server_id: str
    as_admin: bool = False
    # not registered yet, and this client may register it: `register_first_contact` stores its token
    first_contact: bool = False
    client: str | None = None
    brought_token: str | None = field(default=None, repr=False)  # the token a first contact chose itself
    registered: bool = False  # this request registered the node
    token: str | None = field(default=None, repr=False)  # set only when the server generated the token in this request


def admit_node(
    db: sqlite_utils.Database, request: Request, server_id: str, config: ServerConfig, admin_token: str
) -> NodeAuth:
    """May the caller act for `server_id`: from its headers and address alone (one indexed read), so a refused
    request never has its body read. A first contact that may register comes back with `first_contact`."""
    presented = bearer_token(request)
    if _is_admin_token(presented, admin_token):
        return NodeAuth(server_id, as_admin=True)
    row = _server_row(db, server_id)
    if row is not None and row["token_hash"]:
        if presented is None:
            raise ApiError(401, f"node {server_id!r} is registered; send its token as 'Authorization: Bearer <token>'", "Authorization")
        if not hmac.compare_digest(token_hash(presented), row["token_hash"]):
            raise ApiError(403, f"the token is not the one node {server_id} was given (was it reset?)", "Authorization")
        return NodeAuth(server_id)
    client = real_client(request, config)
    if not _may_register(client, config):
        raise ApiError(
            403,
            f"node {server_id!r} is not registered and this server does not register new nodes from "
            f"{client or 'a client its proxy does not name'}; the admin issues this node a token with "
            f"`modelsync token issue {server_id}` on the server (or POST /api/v1/servers/{server_id}/token), and the node "
            "gives it once with --token",
            "Authorization",
        )
    if presented is not None and len(presented) < MIN_TOKEN_LENGTH:
        raise ApiError(400, f"a node token must have at least {MIN_TOKEN_LENGTH} characters", "Authorization")
    return NodeAuth(server_id, first_contact=True, client=client, brought_token=presented)


def register_first_contact(db: sqlite_utils.Database, auth: NodeAuth) -> NodeAuth:
    """Store an admitted first contact's token (joining the caller's write transaction, if any, so the
    registration and what the request changes commit together); anything else is returned as it is."""
    if not auth.first_contact:
        return auth
    token = auth.brought_token or new_token()
    with write_transaction(db):
        row = _server_row(db, auth.server_id)
        if row is not None and row["token_hash"]:  # registered by a concurrent request meanwhile
            if not hmac.compare_digest(token_hash(token), row["token_hash"]):
                raise ApiError(403, f"node {auth.server_id!r} was registered meanwhile with another token", "Authorization")
            return replace(auth, first_contact=False, brought_token=None)
        _store_token(db, auth.server_id, row, token)
    log.info("registered node %s from %s", auth.server_id, auth.client)
    return replace(auth, first_contact=False, brought_token=None, registered=True,
                   token=None if auth.brought_token else token)


def authenticate_node(
    db: sqlite_utils.Database, request: Request, server_id: str, config: ServerConfig, admin_token: str
) -> NodeAuth:
    """Check the caller may act for `server_id`; registers an unknown node when registration allows it."""
    return register_first_contact(db, admit_node(db, request, server_id, config, admin_token))


def admit_caller(db: sqlite_utils.Database, request: Request, config: ServerConfig, admin_token: str) -> None:
    """For a node action whose node is named in the body: before the body is read, the caller must be the admin,
    some registered node (its token), or a client that may register a node. Which node it may act for is checked
    once the body names it (`authenticate_node`)."""
    presented = bearer_token(request)
    if _is_admin_token(presented, admin_token):
        return
    if presented is not None:
        known = db.conn.execute("SELECT 1 FROM servers WHERE token_hash = ?", [token_hash(presented)]).fetchone()
        if known is not None:
            return
    if _may_register(real_client(request, config), config):
        return
    if presented is None:
        raise ApiError(401, "send the node's token (or the admin token) as 'Authorization: Bearer <token>'", "Authorization")
    raise ApiError(403, "the token is neither a node's token nor the admin token", "Authorization")


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
