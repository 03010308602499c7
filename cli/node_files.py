"""`modelsync node --listen`: the node's file server for peers, `GET /modelsync/v1/files/{sha256}`, a small Starlette
app run by uvicorn in a thread. Each request is decided by `shared.transfer.serving.ServingNode` (SHA256 only, a
grant the central server issued for this node, the file unchanged since its scan) on a catalog connection of its
own; Starlette's FileResponse serves Range and If-Range against the SHA256 ETag."""
from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from pathlib import Path

from modelsync.shared.catalog import open_catalog
from modelsync.shared.push_client import NodeCredentials
from modelsync.shared.transfer.grants import signing_key
from modelsync.shared.transfer.protocol import FILES_PATH, GRANT_HEADER, NODE_HEADER
from modelsync.shared.transfer.serving import Refusal, ServingNode
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

log = logging.getLogger("modelsync.node")

GRACEFUL_SECONDS = 3  # a stop cuts streams still going after this long (the receiver resumes elsewhere)


class ModelFileResponse(FileResponse):
    chunk_size = 1024 * 1024  # Starlette's 64 KiB makes one event-loop turn per 64 KiB: ~480 MiB/s on a core


def files_app(node_id: str, data_path: Path, token: str | None, on_changed: Callable[[tuple[str, ...]], None]) -> Starlette:
    """`token`: the node's token as given (None: the one stored at registration, read when first needed)."""
    serving: list[ServingNode] = []  # made on the event loop's thread at the first request with a token known

    def node() -> ServingNode | None:
        if not serving:
            key_token = NodeCredentials.load(data_path, node_id, token).token
            if key_token is None:
                return None
            serving.append(ServingNode(node_id, open_catalog(data_path / "catalog.db"), signing_key(key_token)))
        return serving[0]

    async def serve_file(request: Request) -> Response:
        serving_node = node()
        if serving_node is None:
            return JSONResponse({"reason": "not_registered", "error": "this node has no token yet"}, 503)
        decision = serving_node.decide(request.path_params["segment"], request.headers.get(GRANT_HEADER),
                                       request.headers.get(NODE_HEADER))
        if isinstance(decision, Refusal):
            if decision.changed_paths:
                on_changed(decision.changed_paths)
            return JSONResponse(decision.body, decision.status)
        return ModelFileResponse(decision.path, headers=decision.headers, media_type="application/octet-stream")

    async def serve_companion(request: Request) -> Response:
        serving_node = node()
        if serving_node is None:
            return JSONResponse({"reason": "not_registered", "error": "this node has no token yet"}, 503)
        decision = serving_node.decide_companion(request.path_params["segment"], request.path_params["kind"],
                                                 request.headers.get(GRANT_HEADER), request.headers.get(NODE_HEADER))
        if isinstance(decision, Refusal):
            return JSONResponse(decision.body, decision.status)
        return FileResponse(decision.path, headers=decision.headers, media_type="application/octet-stream")

    return Starlette(routes=[Route(FILES_PATH + "{segment}", serve_file, methods=["GET", "HEAD"]),
                             Route(FILES_PATH + "{segment}/{kind}", serve_companion, methods=["GET"])])


class FileServer:
    """uvicorn on a socket bound before it starts (a port in use is an error at once, not in a thread)."""

    def __init__(self, app: Starlette, host: str, port: int):
        import uvicorn

        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.socket.bind((host, port))
        except OSError:
            self.socket.close()
            raise
        self.port = self.socket.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                                   timeout_graceful_shutdown=GRACEFUL_SECONDS))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]},
                                       name="modelsync-files", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self, timeout: float = 10) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        self.socket.close()
