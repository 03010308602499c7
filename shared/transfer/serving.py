"""What a node's file server decides for `GET /modelsync/v1/files/{sha256}`, framework-free.

Cheap refusals first (not a SHA256, no valid grant), then only a file of this node's own catalog, and only while
its size and mtime still match the catalog: otherwise `changed` (the face answers 409 and re-scans). The face serves
the returned path with its framework's file response (Range, If-Range), headers included.
"""
from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field

import sqlite_utils

from .grants import GrantRefused, verify_grant
from .protocol import COMPANIONS, MAX_COMPANION_BYTES, etag

_SHA256_SEGMENT = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class FileToServe:
    path: str
    size: int
    sha256: str
    companion: bool = False  # a sidecar or preview beside the model, not the model itself

    @property
    def headers(self) -> dict[str, str]:
        return {"Cache-Control": "no-store"} if self.companion else {"ETag": etag(self.sha256), "Cache-Control": "no-store"}


@dataclass(frozen=True)
class Refusal:
    status: int
    reason: str
    message: str
    changed_paths: tuple[str, ...] = ()  # on `changed`: the catalog's files to re-scan

    @property
    def body(self) -> dict[str, str]:
        return {"reason": self.reason, "error": self.message}


@dataclass(frozen=True)
class ServingNode:
    """This node as a file server: its id, its catalog, and its grant key (`grants.signing_key(token)`)."""

    node_id: str
    catalog: sqlite_utils.Database = field(repr=False)
    key: str = field(repr=False)

    def decide(self, segment: str, grant: str | None, requester: str | None, now: float | None = None) -> FileToServe | Refusal:
        """`segment`: the URL's last path segment; `grant`, `requester`: the grant and node headers as sent."""
        if not _SHA256_SEGMENT.fullmatch(segment):
            return Refusal(400, "not_sha256", "files are served by their SHA256 (64 lowercase hex digits), never by path")
        if not requester:
            return Refusal(401, "no_node", "the requesting node's id is missing")
        try:
            verify_grant(grant, self.key, sha256=segment, source=self.node_id, destination=requester, now=now)
        except GrantRefused as refused:
            return Refusal(401 if refused.reason == "no_grant" else 403, refused.reason, str(refused))
        return self._catalog_file(segment)

    def decide_companion(self, segment: str, kind: str, grant: str | None, requester: str | None,
                         now: float | None = None) -> FileToServe | Refusal:
        """The model's sidecar or preview of that kind (protocol.COMPANIONS), beside the file the grant is for."""
        if kind not in COMPANIONS:
            return Refusal(404, "not_found", f"no companion kind {kind[:40]!r}; known: {', '.join(COMPANIONS)}")
        model = self.decide(segment, grant, requester, now)
        if isinstance(model, Refusal):
            return model
        path = os.path.splitext(model.path)[0] + COMPANIONS[kind]
        try:
            found = os.stat(path)
        except OSError:
            return Refusal(404, "no_companion", f"the model has no {COMPANIONS[kind]} here")
        if not stat.S_ISREG(found.st_mode) or found.st_size > MAX_COMPANION_BYTES:
            return Refusal(404, "no_companion", f"the model's {COMPANIONS[kind]} is not a file of at most "
                                                f"{MAX_COMPANION_BYTES} bytes")
        return FileToServe(path, found.st_size, model.sha256, companion=True)

    def _catalog_file(self, sha256: str) -> FileToServe | Refusal:
        rows = self.catalog.execute(
            """SELECT a.path, a.size, a.mtime_ns FROM model_server_availability a JOIN models m ON m.id = a.model_id
               WHERE a.server_id = ? AND m.hash_sha256 = ? ORDER BY a.path""", [self.node_id, sha256]).fetchall()
        if not rows:
            return Refusal(404, "not_found", "this node's catalog holds no file with this SHA256")
        for path, size, mtime_ns in rows:
            try:
                now = os.stat(path)
            except OSError:
                continue
            if stat.S_ISREG(now.st_mode) and (now.st_size, now.st_mtime_ns) == (size, mtime_ns):
                return FileToServe(path, size, sha256)
        return Refusal(409, "changed", "the file changed or vanished since the last scan; re-scanning",
                       tuple(row[0] for row in rows))
