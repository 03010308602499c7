"""Transfers whose source is not a node: a file of a Civitai model version, or an operator's URL.

A Civitai order names a version and one of its files (the primary one unless told); the file's SHA256 is Civitai's
(`files[].hashes.SHA256`): a file without one is refused (`no_hash`: nothing could verify it). The model is
registered from the version when the registry lacks it, so the node's sync later meets a known model. The node is
handed Civitai's download endpoint (never a storage URL), the version JSON (for the sidecar and the preview) and,
only when MODELSYNC_SHARE_CIVITAI_KEY=true, the server's key. A URL order needs the expected SHA256; its URL is
stored as given and shown only as scheme://host/path.
"""
from __future__ import annotations

import json
import posixpath
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import unquote, urlsplit

import sqlite_utils
from modelsync.shared.catalog import write_transaction
from modelsync.shared.civitai.download import expected_file
from modelsync.shared.records import LORA_TYPES, ROLES
from modelsync.shared.scan.metadata_sources import CIVITAI_TYPES
from modelsync.shared.transfer.destination import safe_relative_name
from modelsync.shared.transfer.failures import TransferFailed

from ..errors import ApiError
from ..registry import MAX_ROW_ID, parse_iso
from ..url_param import http_url
from . import store
from .params import node_id, sha256_hex
from .records import REQUESTERS, CivitaiOrderSource, Transfer, UrlOrderSource

_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
MAX_NAME_CHARS = 255
RETRY_FIRST_SECONDS = 30.0  # a download that failed (and may go on) waits this before it is handed out again,
RETRY_LONGEST_SECONDS = 900.0  # doubling with each attempt, at most this


@dataclass(frozen=True)
class DownloadSettings:
    """What a download order needs from the server: Civitai's base URL, the key when shared, the fleet's back-off."""

    civitai_base: str
    civitai_paused: bool = False
    api_key: str | None = field(default=None, repr=False)  # set only when MODELSYNC_SHARE_CIVITAI_KEY=true


def role_for(version: dict[str, Any]) -> str:
    """The folder role for the version's Civitai model type (LORA/LoCon/DoRA -> lora, TextualInversion ->
    embedding, ...); a type without a folder of its own -> other."""
    model = version.get("model") if isinstance(version.get("model"), dict) else {}
    kind = CIVITAI_TYPES.get(str(model.get("type") or "").lower().replace(" ", ""))
    if kind in LORA_TYPES:
        return "lora"
    return kind if kind in ROLES else "other"


def _files(version: dict[str, Any]) -> list[dict[str, Any]]:
    files = version.get("files")
    return [f for f in files if isinstance(f, dict) and isinstance(f.get("id"), int)] if isinstance(files, list) else []


def primary_file_id(version: dict[str, Any]) -> int:
    """The version's primary file (else its first model file, else its first file)."""
    files = _files(version)
    chosen = (next((f for f in files if f.get("primary") is True), None)
              or next((f for f in files if f.get("type") == "Model"), None) or (files[0] if files else None))
    if chosen is None:
        raise ApiError(409, f"Civitai version {version.get('id')} lists no file", "civitai_version_id")
    return chosen["id"]


def chosen_file(version: dict[str, Any], file_id: int | None) -> tuple[dict[str, Any], str]:
    """(the file, its SHA256) the node will fetch and verify: the one asked for, else the primary one. The check is
    the node's own (shared/civitai/download.py): a file without a SHA256 is refused (422, no_hash)."""
    field_name = "file_id" if file_id is not None else "civitai_version_id"
    try:
        file = expected_file(version, file_id if file_id is not None else primary_file_id(version))
    except TransferFailed as refused:
        if refused.reason == "no_hash":
            raise ApiError(422, f"no_hash: {refused.message}", field_name) from None
        raise ApiError(404, f"Civitai version {version.get('id')} has no file {file_id}", field_name) from None
    sha256 = file["hashes"]["SHA256"]
    if not _SHA256.fullmatch(sha256):
        raise ApiError(422, f"no_hash: Civitai's SHA256 of file {file.get('id')} is not 64 hex digits", field_name)
    return file, sha256.lower()


def file_sha256(file: dict[str, Any]) -> str | None:
    hashes = file.get("hashes") if isinstance(file.get("hashes"), dict) else {}
    value = hashes.get("SHA256")
    return value.lower() if isinstance(value, str) and _SHA256.fullmatch(value) else None


def file_matching(version: dict[str, Any], hash_value: str) -> dict[str, Any] | None:
    """The version's file one of whose hashes (SHA256, AutoV2, AutoV3, AutoV1) is `hash_value`."""
    wanted = hash_value.lower()
    for file in _files(version):
        hashes = file.get("hashes") if isinstance(file.get("hashes"), dict) else {}
        if any(isinstance(v, str) and v.lower() == wanted for k, v in hashes.items()
               if k in ("SHA256", "AutoV2", "AutoV3", "AutoV1")):
            return file
    return None


def _version_id(version: dict[str, Any]) -> int:
    value = version.get("id")
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_ROW_ID:
        raise ApiError(502, "Civitai's answer names no model version id", "civitai_version_id")
    return value


def _register(db: sqlite_utils.Database, sha256: str, version: dict[str, Any], file: dict[str, Any], stamped: str,
              origin: str) -> int:
    """The model's id, registering it from the Civitai version when the registry lacks it."""
    from .. import (
        civitai_state,  # here: it imports server.sync, which imports this package
    )

    row = db.conn.execute("SELECT id FROM models WHERE hash_sha256 = ?", [sha256]).fetchone()
    if row is not None:
        return row[0]
    cursor = db.conn.execute(
        "INSERT INTO models (hash_sha256, hash_autov2, filename, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
        [sha256, sha256[:10], _file_name(file), stamped, stamped])
    civitai_state.record_found(db, sha256, version, origin)
    return cursor.lastrowid


def _file_name(file: dict[str, Any]) -> str:
    name = file.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ApiError(409, f"Civitai's file {file.get('id')} has no name", "file_id")
    return posixpath.basename(name.replace("\\", "/"))[:MAX_NAME_CHARS]


def _text(value: Any) -> str | None:
    return value[:MAX_NAME_CHARS] if isinstance(value, str) else None


def order_civitai_transfer(db: sqlite_utils.Database, *, server_id: str, version: dict[str, Any], file_id: int | None,
                           requested_by: str, now: datetime | None = None,
                           origin: str = "civitai model-versions") -> tuple[Transfer, bool]:
    """Order the download of one file of a Civitai model version (the primary one when `file_id` is None) to node
    `server_id`; (the transfer, True) when created, (the standing one, False) when one stands already. A file
    without a SHA256 is refused (422, no_hash)."""
    if requested_by not in REQUESTERS:
        raise ValueError(f"requested_by must be one of {', '.join(REQUESTERS)}")
    server_id = node_id(server_id, "server_id")
    version_id = _version_id(version)
    file, sha256 = chosen_file(version, file_id)
    name = _file_name(file)
    model = version.get("model") if isinstance(version.get("model"), dict) else {}
    model_id = version.get("modelId") if isinstance(version.get("modelId"), int) else None
    stamped = store.stamp(now)
    with write_transaction(db):
        if not store.server_exists(db, server_id):
            raise ApiError(404, f"no node {server_id!r}", "server_id")
        registered = _register(db, sha256, version, file, stamped, origin)
        existing = store.standing(db, server_id, sha256)
        if existing is not None:
            return existing, False
        if store.holds(db, server_id, registered):
            raise ApiError(409, f"node {server_id} already holds this model", "civitai_version_id")
        db.conn.execute(
            """INSERT INTO civitai_versions (version_id, data, fetched_at) VALUES (?, ?, ?)
               ON CONFLICT (version_id) DO UPDATE SET data = excluded.data, fetched_at = excluded.fetched_at""",
            [version_id, json.dumps(version, ensure_ascii=False), stamped])
        cursor = db.conn.execute(
            """INSERT INTO transfers (server_id, sha256, model_id, state, source_kind, source_ref, size, rel_name, role,
                                      requested_by, created_at, updated_at, civitai_model_id, civitai_model_name,
                                      civitai_version_id, civitai_version_name, civitai_file_id, civitai_file_name)
               VALUES (?, ?, ?, 'queued', 'civitai', ?, NULL, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            [server_id, sha256, registered, str(version_id), name, role_for(version), requested_by, stamped, stamped,
             model_id, _text(model.get("name")), version_id, _text(version.get("name")), file["id"], name])
        return store.fetch(db, cursor.lastrowid), True


def checked_url(url: Any) -> str:
    """An operator's URL: http(s), a host, no credentials (the query may hold a token: it is kept, never shown)."""
    http_url(url, "url", query_allowed=True)
    try:
        safe_relative_name(url_file_name(url))
    except TransferFailed:
        raise ApiError(400, "url must end in a file name (its last path segment names the file)", "url") from None
    return url


def url_file_name(url: str) -> str:
    """The name a URL's file gets: its last path segment, decoded."""
    return posixpath.basename(unquote(urlsplit(url).path).replace("\\", "/"))[:MAX_NAME_CHARS]


def checked_role(role: Any) -> str | None:
    if role is not None and role not in ROLES:
        raise ApiError(400, f"role must be one of {', '.join(ROLES)}", "role")
    return role


def checked_sha256(sha256: Any) -> str:
    if sha256 is None:
        raise ApiError(400, "a url order needs the file's sha256 (nothing else could verify the download)", "sha256")
    return sha256_hex(sha256, "sha256")


def order_url_transfer(db: sqlite_utils.Database, *, server_id: str, url: Any, sha256: Any, role: Any = None,
                       requested_by: str, now: datetime | None = None) -> tuple[Transfer, bool]:
    """Order the download of `url` to node `server_id`, verified against `sha256` (required). The file is named by
    the URL's last path segment, in the folder of `role`: the registry's type of the model when it knows it, else
    `role` is required (400)."""
    if requested_by not in REQUESTERS:
        raise ValueError(f"requested_by must be one of {', '.join(REQUESTERS)}")
    server_id = node_id(server_id, "server_id")
    url = checked_url(url)
    sha256 = checked_sha256(sha256)
    role = checked_role(role)
    name = url_file_name(url)
    stamped = store.stamp(now)
    with write_transaction(db):
        if not store.server_exists(db, server_id):
            raise ApiError(404, f"no node {server_id!r}", "server_id")
        row = db.conn.execute("SELECT id, type FROM models WHERE hash_sha256 = ?", [sha256]).fetchone()
        model_id, model_type = (row[0], row[1]) if row else (None, None)
        existing = store.standing(db, server_id, sha256)
        if existing is not None:
            return existing, False
        if model_id is not None and store.holds(db, server_id, model_id):
            raise ApiError(409, f"node {server_id} already holds this model", "sha256")
        if role is None:
            role = "lora" if model_type in LORA_TYPES else model_type if model_type in ROLES else None
        if role is None:
            raise ApiError(400, "the registry does not know this model's type: name the folder it goes to (role: "
                                f"{', '.join(ROLES)})", "role")
        cursor = db.conn.execute(
            """INSERT INTO transfers (server_id, sha256, model_id, state, source_kind, source_ref, size, rel_name, role,
                                      requested_by, created_at, updated_at)
               VALUES (?, ?, ?, 'queued', 'url', ?, NULL, ?, ?, ?, ?, ?)""",
            [server_id, sha256, model_id, url, name, role, requested_by, stamped, stamped])
        return store.fetch(db, cursor.lastrowid), True


def retry_delay(attempts: int) -> timedelta:
    """How long a download that failed after `attempts` attempts waits before it is handed out again."""
    return timedelta(seconds=min(RETRY_LONGEST_SECONDS, RETRY_FIRST_SECONDS * 2 ** max(0, min(attempts, 30) - 1)))


def backing_off(transfer: Transfer, now: datetime) -> bool:
    """A queued download whose last attempt failed (its reason stays until bytes flow again) waits its back-off."""
    failed_at = parse_iso(transfer.reason_at) if transfer.state == "queued" and transfer.reason else None
    return failed_at is not None and now < failed_at + retry_delay(transfer.attempts)


def download_source(db: sqlite_utils.Database, transfer: Transfer, settings: DownloadSettings,
                    now: datetime) -> CivitaiOrderSource | UrlOrderSource | None:
    """The source a download order hands the node now; None while its own back-off lasts after a failure, while
    the fleet backs off from Civitai (the order waits) or when the version's JSON is gone."""
    if backing_off(transfer, now):
        return None
    if transfer.source_kind == "url":
        return UrlOrderSource(transfer.source_ref or "")
    if settings.civitai_paused or transfer.civitai_version_id is None or transfer.civitai_file_id is None:
        return None
    row = db.conn.execute("SELECT data FROM civitai_versions WHERE version_id = ?", [transfer.civitai_version_id]).fetchone()
    if row is None:
        return None
    url = f"{settings.civitai_base}/api/download/models/{transfer.civitai_version_id}?fileId={transfer.civitai_file_id}"
    return CivitaiOrderSource(transfer.civitai_version_id, transfer.civitai_file_id, url, json.loads(row[0]),
                              settings.api_key)
