"""`GET /modelsync/v1/files/{sha256}` on the host's own FastAPI app (registered in on_app_started): the peers' file
server, as `modelsync node --listen` runs it (cli/node_files.py). Forge's `--api-auth` does not cover an
extension's routes, so every request is decided by `shared.transfer.serving.ServingNode` (SHA256 only, a grant the
central server issued for this node and the requester, the file unchanged since its scan) on a catalog connection
of its own. Forge's Starlette (0.27) has no Range in its FileResponse, so the range is served here
(`shared.transfer.ranges`), alike on every Starlette."""
from __future__ import annotations

import ipaddress
import threading
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from ..shared.catalog import open_catalog
from ..shared.node.config import NodeConfig
from ..shared.push_client import NodeCredentials
from ..shared.transfer.grants import signing_key
from ..shared.transfer.protocol import FILES_PATH, GRANT_HEADER, NODE_HEADER
from ..shared.transfer.ranges import (
    ByteRange,
    RangeNotSatisfiable,
    read_range,
    requested_range,
)
from ..shared.transfer.serving import Refusal, ServingNode

ROUTE = FILES_PATH + "{segment}"


class HostFileServer:
    """The decisions for the host's route; the ServingNode is made again when the node id or token changes."""

    def __init__(self, data_path: Path, config: Callable[[], NodeConfig], allowed: Callable[[], bool],
                 on_changed: Callable[[tuple[str, ...]], None]):
        self._data_path = data_path
        self._config = config
        self._allowed = allowed  # the setting "allow serving to peers", read at each request
        self._on_changed = on_changed
        self._lock = threading.Lock()
        self._serving: tuple[tuple[str, str], ServingNode] | None = None

    def _node(self) -> ServingNode | None:
        config = self._config()
        token = NodeCredentials.load(self._data_path, config.node_id, config.token).token
        if token is None:
            return None
        key = (config.node_id, signing_key(token))
        with self._lock:
            if self._serving is None or self._serving[0] != key:
                if self._serving is not None:
                    self._serving[1].catalog.close()
                self._serving = (key, ServingNode(config.node_id, open_catalog(self._data_path / "catalog.db"), key[1]))
            return self._serving[1]

    def companion(self, request: Request) -> Response:
        """A model's sidecar or preview (small: sent whole)."""
        if not self._allowed():
            return JSONResponse({"reason": "not_serving", "error": "this node does not serve files to peers"}, 403)
        node = self._node()
        if node is None:
            return JSONResponse({"reason": "not_registered", "error": "this node has no token yet"}, 503)
        decision = node.decide_companion(request.path_params["segment"], request.path_params["kind"],
                                         request.headers.get(GRANT_HEADER), request.headers.get(NODE_HEADER))
        if isinstance(decision, Refusal):
            return JSONResponse(decision.body, decision.status)
        with open(decision.path, "rb") as f:
            return Response(f.read(), headers=decision.headers, media_type="application/octet-stream")

    def answer(self, request: Request) -> Response:
        if not self._allowed():
            return JSONResponse({"reason": "not_serving", "error": "this node does not serve files to peers (Settings > "
                                 "Model Sync)"}, 403)
        node = self._node()
        if node is None:
            return JSONResponse({"reason": "not_registered", "error": "this node has no token yet"}, 503)
        decision = node.decide(request.path_params["segment"], request.headers.get(GRANT_HEADER),
                               request.headers.get(NODE_HEADER))
        if isinstance(decision, Refusal):
            if decision.changed_paths:
                self._on_changed(decision.changed_paths)
            return JSONResponse(decision.body, decision.status)
        headers = {**decision.headers, "Accept-Ranges": "bytes"}
        try:
            wanted = requested_range(request.headers.get("range"), request.headers.get("if-range"), headers["ETag"],
                                     decision.size)
        except RangeNotSatisfiable:
            return Response(status_code=416, headers={**headers, "Content-Range": f"bytes */{decision.size}"})
        status = 206 if wanted is not None else 200
        byte_range = wanted or ByteRange(0, decision.size)
        headers["Content-Length"] = str(byte_range.length)
        if wanted is not None:
            headers["Content-Range"] = wanted.content_range(decision.size)
        if request.method == "HEAD":
            return Response(status_code=status, headers=headers, media_type="application/octet-stream")
        return StreamingResponse(read_range(decision.path, byte_range), status_code=status, headers=headers,
                                 media_type="application/octet-stream")


def register_route(app, files: HostFileServer) -> None:
    """On the host's FastAPI app (a plain `app.api_route`: no `--api-auth`, our grant instead); hidden from its
    OpenAPI page."""

    async def modelsync_file(request: Request) -> Response:
        return files.answer(request)

    async def modelsync_companion(request: Request) -> Response:
        return files.companion(request)

    app.add_api_route(ROUTE, modelsync_file, methods=["GET", "HEAD"], include_in_schema=False)
    app.add_api_route(ROUTE + "/{kind}", modelsync_companion, methods=["GET"], include_in_schema=False)


def loopback_only(files_url: str, host_listens_everywhere: bool) -> str | None:
    """Why peers cannot reach `files_url` from another machine (None: they may): the URL names a loopback address,
    or the host listens on loopback only (Forge/A1111 without --listen)."""
    host = urlsplit(files_url).hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if loopback:
        return f"the files URL {files_url} is loopback-only: peers on other machines cannot fetch from it"
    if not host_listens_everywhere:
        return (f"this WebUI listens on 127.0.0.1 only (started without --listen): peers cannot fetch from "
                f"{files_url}")
    return None
