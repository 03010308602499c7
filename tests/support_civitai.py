"""A local stand-in for the Civitai API serving the real response files (tests/fixtures/civitai/), its download
endpoint, and the object storage that endpoint redirects to (a second server on another port).

Look-ups:
    stub = CivitaiStub().start()
    stub.add_version("civitai_model_version_1387174_lora_flux_lora-manager.json", sha256=...)
It answers GET/POST by-hash like Civitai for every hash a file lists (SHA256, AutoV1, AutoV2, AutoV3, any case;
404 for unknown hashes; see `find_version`), `GET /api/v1/model-versions/{id}`,
`GET /api/v1/models/{id}` (the model with `modelVersions`, see `add_model`), can be scripted to fail
(`fail_next(429, retry_after=2, path="/api/download/")`) or to be slow (`delay`), records requests
(`requests`: method, path, Authorization) and serves a real JPEG at /images/.

Downloads:
    version = stub.add_version(FIXTURE, data=model_bytes)      # the primary file serves these bytes
    version = stub.add_version(FIXTURE, sha256=..., version_id=..., model_id=..., file_name=..., autov3=...,
                               published_at=..., base_model=..., availability=..., early_access_ends_at=...)
    file = stub.add_file(version["id"], "other.safetensors", data=b"...", primary=False)   # a second file
    file = stub.add_file(version["id"], "nohash.safetensors", data=b"...", hashes={})       # no SHA256 listed
    stub.add_file_bytes(version_id, file_id, data)             # serve (other) bytes for a listed file
Every file has `id, name, sizeKB, type, primary, hashes {SHA256, AutoV2[, AutoV3]}, downloadUrl`
(`{base}/api/download/models/{version_id}?fileId={file_id}`). That endpoint answers 307 to a signed URL on
`stub.storage` (its own port), which serves Range (206) and If-Range (ETag = quoted MD5, Last-Modified).
`stub.require_key = "k3y"` makes the endpoint demand `Authorization: Bearer k3y` (without it: the login redirect,
or 401 when the request says `Content-Type: application/json`, as Civitai does).
The storage records any Authorization header and any API key the endpoint was sent (`stub.storage.saw_api_key`,
a list of where it saw one); `stub.storage.assert_never_saw_key()` fails the test; the `civitai_stub` fixture
asserts it at teardown.

Scripted download faults, each used by the next request(s) it applies to (`times`, default 1):
    stub.script("login")                   endpoint: 307 to /login?returnUrl=...&reason=download-auth
    stub.script("unauthorized")            endpoint: 401 {"error": "Unauthorized"}
    stub.script("early_access", deadline="2026-12-24T00:00:00.000Z")   endpoint: 403 {"error": "Early Access", ...}
    stub.script("early_access_redirect")   endpoint: 307 to /pricing?...&reason=early-access
    stub.script("not_found")               endpoint: 404 {"error": "Model not found"}
    stub.script("drop", after=4096)        storage: the connection drops after that many body bytes
    stub.script("wrong_bytes")             storage: the body's bytes are flipped (same length)
    stub.script("too_long", extra=4096)    storage: that many more bytes than the file (Content-Length says so)
    stub.script("ignore_range")            storage: a Range request is answered 200 with the whole file
    stub.script("expired")                 storage: the signed URL has expired: 403 (and stays so); the next request
                                           to the endpoint hands out a fresh one
    stub.script("storage_status", status=503, retry_after=1)   storage: that status
    stub.script("chunked")                 storage: the body chunked (HTTP/1.1), no Content-Length: its length unsaid
429/5xx from the API endpoint: `fail_next(429, retry_after=1, path="/api/download/")`.
`stub.storage.requests`: (method, path, headers) of each storage request; `stub.storage.count()`.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import itertools
import json
import secrets
import socket
import threading
import time
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import pytest

FIXTURES = Path(__file__).parent / "fixtures" / "civitai"
API_FAULTS = frozenset({"login", "unauthorized", "early_access", "early_access_redirect", "not_found"})
STORAGE_FAULTS = frozenset({"drop", "wrong_bytes", "too_long", "ignore_range", "expired", "storage_status", "chunked"})
DEFAULT_DEADLINE = "2026-12-24T00:00:00.000Z"


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text())


def jpeg_bytes() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), (200, 80, 40)).save(buffer, "JPEG")
    return buffer.getvalue()


def _serve(handler: type[BaseHTTPRequestHandler]) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, content_type: str = "application/json", headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, str(v))
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # a client that gave up (a timeout test)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

    def _redirect(self, location: str) -> None:
        self._send(307, b"", "text/plain", {"Location": location})


class StorageStub:
    """The object storage behind Civitai's download endpoint: signed URLs, Range/If-Range, scripted faults."""

    def __init__(self, civitai: "CivitaiStub") -> None:
        self.civitai = civitai
        self.objects: dict[str, bytes] = {}  # object key -> bytes
        self.signatures: set[str] = set()  # valid ones
        self.faults: list[tuple[str, dict[str, Any]]] = []
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.saw_api_key: list[str] = []  # where a key showed up: never should
        self.last_modified = formatdate(time.time() - 3600, usegmt=True)
        self.server: ThreadingHTTPServer | None = None

    @property
    def base_url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def signed_url(self, key: str, file_name: str) -> str:
        signature = secrets.token_hex(16)
        self.signatures.add(signature)
        disposition = quote(f'attachment; filename="{file_name}"')
        return (f"{self.base_url}/objects/{quote(key)}?X-Amz-Expires=86400&X-Amz-Signature={signature}"
                f"&response-content-disposition={disposition}")

    def expire(self) -> None:
        """Every signed URL handed out so far has expired."""
        self.signatures.clear()

    def count(self) -> int:
        return len(self.requests)

    def assert_never_saw_key(self) -> None:
        assert not self.saw_api_key, f"the storage host saw the API key: {self.saw_api_key}"

    def _take_fault(self, applies) -> tuple[str, dict[str, Any]] | None:
        with self.civitai.lock:
            index = next((i for i, (kind, params) in enumerate(self.faults) if applies(kind)), None)
            return self.faults.pop(index) if index is not None else None

    def _check_for_keys(self, path: str, headers: dict[str, str]) -> None:
        if "authorization" in {k.lower() for k in headers}:
            self.saw_api_key.append(f"Authorization header on {path}")
        keys = {k for k in self.civitai.keys_seen | {self.civitai.require_key} if k}
        for key in keys:
            if key in path:
                self.saw_api_key.append(f"the key in the URL {path}")
            for name, value in headers.items():
                if key in value:
                    self.saw_api_key.append(f"the key in the header {name}")

    def start(self) -> "StorageStub":
        storage = self

        class Handler(_Handler):
            def do_HEAD(self) -> None:
                self.do_GET()

            def do_GET(self) -> None:
                headers = dict(self.headers.items())
                storage.requests.append((self.command, self.path, headers))
                storage._check_for_keys(self.path, headers)
                parts = urlsplit(self.path)
                signature = (parse_qs(parts.query).get("X-Amz-Signature") or [""])[0]
                key = parts.path.removeprefix("/objects/")
                data = storage.objects.get(key) if parts.path.startswith("/objects/") else None
                if data is None:
                    self._send(404, b"<Error><Code>NoSuchKey</Code></Error>", "application/xml")
                    return
                if signature not in storage.signatures:
                    self._forbidden()
                    return
                ranged = self.headers.get("Range")
                fault = storage._take_fault(lambda kind: kind != "ignore_range" or ranged is not None)
                kind, params = fault if fault else ("", {})
                if kind == "expired":
                    storage.signatures.discard(signature)
                    self._forbidden()
                    return
                if kind == "storage_status":
                    retry = params.get("retry_after")
                    self._send(params.get("status", 503), b"<Error><Code>SlowDown</Code></Error>", "application/xml",
                               {"Retry-After": retry} if retry is not None else None)
                    return
                self._content(data, ranged if kind != "ignore_range" else None, kind, params)

            def _forbidden(self) -> None:
                self._send(403, b"<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>",
                           "application/xml")

            def _content(self, data: bytes, ranged: str | None, kind: str, params: dict[str, Any]) -> None:
                etag = '"' + hashlib.md5(data).hexdigest() + '"'
                validators = {"ETag": etag, "Last-Modified": storage.last_modified, "Accept-Ranges": "bytes"}
                start, status = 0, 200
                if_range = self.headers.get("If-Range")
                if ranged and (if_range is None or if_range in (etag, storage.last_modified)):
                    first = ranged.removeprefix("bytes=").split("-")[0]
                    start = int(first) if first.isdigit() else 0
                    if start >= len(data):
                        self._send(416, b"", "application/xml", {"Content-Range": f"bytes */{len(data)}"})
                        return
                    status = 206
                    validators["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                body = data[start:]
                if kind == "wrong_bytes":
                    body = bytes(b ^ 0xFF for b in body)
                if kind == "too_long":
                    body += b"\0" * params.get("extra", 4096)
                if kind == "chunked":
                    self.protocol_version = "HTTP/1.1"  # chunked needs it; the connection still closes after
                    self.close_connection = True
                self.send_response(status)
                self.send_header("Content-Type", "application/octet-stream")
                if kind == "chunked":
                    self.send_header("Transfer-Encoding", "chunked")
                    self.send_header("Connection", "close")
                else:
                    self.send_header("Content-Length", str(len(body)))
                for k, v in validators.items():
                    self.send_header(k, v)
                self.end_headers()
                if self.command == "HEAD":
                    return
                if kind == "drop":
                    self.wfile.write(body[: params.get("after", 4096)])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                try:
                    for i in range(0, len(body), 256 * 1024):
                        block = body[i:i + 256 * 1024]
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(block), block) if kind == "chunked" else block)
                    if kind == "chunked":
                        self.wfile.write(b"0\r\n\r\n")
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = _serve(Handler)
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


class CivitaiStub:
    def __init__(self) -> None:
        self.versions: dict[str, dict[str, Any]] = {}  # SHA256 upper -> version object
        self.by_id: dict[int, dict[str, Any]] = {}  # version id -> version object
        self.models: dict[int, dict[str, Any]] = {}  # model id -> model object (with modelVersions)
        self.failures: list[tuple[int, float | str | None, str]] = []  # status, Retry-After, path fragment
        self.download_faults: list[tuple[str, dict[str, Any]]] = []
        self.delay = 0.0
        self.requests: list[tuple[str, str, str | None]] = []  # method, path, Authorization
        self.require_key: str | None = None  # the key the download endpoint demands (None: none demanded)
        self.keys_seen: set[str] = set()  # Bearer keys the API was sent: the storage must never see one
        self.image_content_type = "image/jpeg"
        self.image = jpeg_bytes()
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None
        self.storage = StorageStub(self)
        self._ids = itertools.count(9_000_001)

    @property
    def base_url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def download_url(self, version_id: int, file_id: int | None = None) -> str:
        return f"{self.base_url}/api/download/models/{version_id}" + (f"?fileId={file_id}" if file_id is not None else "")

    def add_version(self, fixture_name: str, sha256: str | None = None, *, data: bytes | None = None,
                    version_id: int | None = None, model_id: int | None = None, name: str | None = None,
                    file_name: str | None = None, autov3: str | None = None, published_at: str | None = None,
                    base_model: str | None = None, availability: str | None = None,
                    early_access_ends_at: str | None = None) -> dict[str, Any]:
        """A copy of a real version object re-keyed to sha256 (or to `data`'s, which its primary file then serves),
        its images pointing at this stub, its files' downloadUrl at this stub's download endpoint."""
        if sha256 is None:
            assert data is not None, "add_version needs sha256 or data"
            sha256 = hashlib.sha256(data).hexdigest()
        version = copy.deepcopy(fixture(fixture_name))
        if version_id is not None:
            version["id"] = version_id
        elif version["id"] in self.by_id:
            version["id"] = next(self._ids)
        for key, value in (("modelId", model_id), ("name", name), ("publishedAt", published_at),
                           ("baseModel", base_model), ("availability", availability),
                           ("earlyAccessEndsAt", early_access_ends_at)):
            if value is not None:
                version[key] = value
        primary = version["files"][0]
        primary["hashes"] = {"SHA256": sha256.upper(), "AutoV2": sha256[:10].upper()}
        if autov3:
            primary["hashes"]["AutoV3"] = autov3.upper()
        if file_name:
            primary["name"] = file_name
        if self._file_id_taken(primary["id"]):
            primary["id"] = next(self._ids)
        version["files"] = [primary] + [f for f in version["files"][1:] if not self._file_id_taken(f["id"])]
        for f in version["files"]:
            f["downloadUrl"] = self.download_url(version["id"], f["id"])
        version["downloadUrl"] = self.download_url(version["id"])
        for i, image in enumerate(version.get("images") or []):
            if isinstance(image, dict):
                image["url"] = f"{self.base_url}/images/{sha256[:8]}-{i}.jpeg"
        self.versions[sha256.upper()] = version
        self.by_id[version["id"]] = version
        if data is not None:
            self.add_file_bytes(version["id"], primary["id"], data)
        return version

    def _file_id_taken(self, file_id: int) -> bool:
        return any(f["id"] == file_id for v in self.by_id.values() for f in v.get("files") or [])

    def add_file(self, version_id: int, name: str, *, data: bytes | None = None, sha256: str | None = None,
                 hashes: dict[str, str] | None = None, primary: bool = False, file_type: str = "Model") -> dict[str, Any]:
        """Another file of a version. `hashes` replaces the computed ones ({}: a file without SHA256)."""
        version = self.by_id[version_id]
        if sha256 is None and data is not None:
            sha256 = hashlib.sha256(data).hexdigest()
        if hashes is None:
            hashes = {"SHA256": sha256.upper(), "AutoV2": sha256[:10].upper()} if sha256 else {}
        file_id = next(self._ids)
        entry = {"id": file_id, "sizeKB": len(data or b"") / 1024, "name": name, "type": file_type,
                 "metadata": {"format": "SafeTensor", "size": None, "fp": None}, "hashes": hashes, "primary": primary,
                 "downloadUrl": self.download_url(version_id, file_id)}
        if primary:
            for f in version["files"]:
                f["primary"] = False
        version["files"].append(entry)
        if sha256:
            self.versions.setdefault(sha256.upper(), version)
        if data is not None:
            self.add_file_bytes(version_id, file_id, data)
        return entry

    def add_file_bytes(self, version_id: int, file_id: int, data: bytes) -> None:
        """The download endpoint serves `data` for this file (sizeKB follows the bytes)."""
        version = self.by_id[version_id]
        entry = next(f for f in version["files"] if f["id"] == file_id)
        entry["sizeKB"] = len(data) / 1024
        self.storage.objects[self._object_key(version_id, file_id)] = data

    def add_model(self, model_id: int, versions: list[dict[str, Any]], *, name: str | None = None,
                  model_type: str | None = None) -> dict[str, Any]:
        """`GET /api/v1/models/{model_id}` answers the real model fixture with these versions (newest first, as
        Civitai lists them) as its `modelVersions`; each version is also served by id."""
        model = copy.deepcopy(fixture("civitai_models_by_id_1231067_lora-manager.json"))
        model["id"] = model_id
        if name is not None:
            model["name"] = name
        if model_type is not None:
            model["type"] = model_type
        model["modelVersions"] = []
        for index, version in enumerate(versions):
            version["modelId"] = model_id
            version.setdefault("model", {}).update({"name": model["name"], "type": model["type"]})
            self.by_id[version["id"]] = version
            listed = {k: copy.deepcopy(version.get(k)) for k in
                      ("id", "name", "baseModel", "baseModelType", "createdAt", "publishedAt", "status",
                       "trainedWords", "files", "images", "downloadUrl")}
            listed.update(index=index, availability=version.get("availability") or "Public",
                          earlyAccessEndsAt=version.get("earlyAccessEndsAt"))
            model["modelVersions"].append(listed)
        self.models[model_id] = model
        return model

    def script(self, kind: str, times: int = 1, **params: Any) -> None:
        """A download fault for the next `times` requests it applies to (see the module docstring)."""
        if kind not in API_FAULTS | STORAGE_FAULTS:
            raise ValueError(f"unknown fault {kind!r}")
        with self.lock:
            (self.download_faults if kind in API_FAULTS else self.storage.faults).extend([(kind, params)] * times)

    def fail_next(self, status: int = 429, retry_after: float | str | None = None, times: int = 1, path: str = "") -> None:
        """The next `times` requests whose path contains `path` answer `status`."""
        with self.lock:
            self.failures.extend([(status, retry_after, path)] * times)

    def count(self, path_fragment: str = "") -> int:
        return sum(1 for _, path, _ in self.requests if path_fragment in path)

    def find_version(self, file_hash: str) -> dict[str, Any] | None:
        """The version by-hash answers: one registered in `versions` under that hash, else the version a file of
        which lists that hash of any kind (SHA256, AutoV1, AutoV2, AutoV3, ...), case-insensitive, as Civitai does."""
        wanted = file_hash.upper()
        if wanted in self.versions:
            return self.versions[wanted]
        return next((version for version in list(self.by_id.values()) for f in version.get("files") or []
                     if wanted in {str(h).upper() for h in (f.get("hashes") or {}).values()}), None)

    @staticmethod
    def _object_key(version_id: int, file_id: int) -> str:
        return f"model/{version_id}/{file_id}"

    def start(self) -> "CivitaiStub":
        stub = self
        self.storage.start()

        class Handler(_Handler):
            def _begin(self) -> bool:
                authorization = self.headers.get("Authorization")
                stub.requests.append((self.command, self.path, authorization))
                if authorization and authorization.startswith("Bearer "):
                    stub.keys_seen.add(authorization.removeprefix("Bearer "))
                if stub.delay:
                    time.sleep(stub.delay)
                with stub.lock:
                    index = next((i for i, f in enumerate(stub.failures) if f[2] in self.path), None)
                    failure = stub.failures.pop(index) if index is not None else None
                if failure:
                    status, retry_after, _ = failure
                    headers = {"Retry-After": retry_after} if retry_after is not None else {}
                    self._send(status, json.dumps({"error": "scripted failure"}).encode(), headers=headers)
                    return False
                return True

            def do_GET(self) -> None:
                if not self._begin():
                    return
                path = urlsplit(self.path).path
                if path.startswith("/images/"):
                    self._send(200, stub.image, stub.image_content_type)
                    return
                if path.startswith("/api/download/models/"):
                    self._download()
                    return
                self._json(self._lookup(path))

            def _lookup(self, path: str) -> Any:
                by_hash = "/api/v1/model-versions/by-hash/"
                if path.startswith(by_hash):
                    return stub.find_version(path[len(by_hash):])
                for prefix, table in (("/api/v1/model-versions/", stub.by_id), ("/api/v1/models/", stub.models)):
                    if path.startswith(prefix) and path[len(prefix):].isdigit():
                        return table.get(int(path[len(prefix):]))
                return None

            def _json(self, found: Any) -> None:
                if found is None:
                    self._send(404, b'{"error":"Model not found"}')
                else:
                    self._send(200, json.dumps(found).encode())

            def _download(self) -> None:
                parts = urlsplit(self.path)
                version_id = parts.path.removeprefix("/api/download/models/")
                file_id = (parse_qs(parts.query).get("fileId") or [""])[0]
                with stub.lock:
                    fault = stub.download_faults.pop(0) if stub.download_faults else None
                kind, params = fault if fault else ("", {})
                login = f"{stub.base_url}/login?returnUrl={quote(parts.path)}&reason=download-auth"
                if kind == "login":
                    return self._redirect(login)
                if kind == "unauthorized":
                    return self._send(401, b'{"error":"Unauthorized"}')
                if kind == "early_access":
                    body = {"error": "Early Access", "deadline": params.get("deadline", DEFAULT_DEADLINE)}
                    return self._send(403, json.dumps(body).encode())
                if kind == "early_access_redirect":
                    return self._redirect(f"{stub.base_url}/pricing?returnUrl={quote(parts.path)}&reason=early-access")
                if stub.require_key and self.headers.get("Authorization") != f"Bearer {stub.require_key}":
                    if self.headers.get("Content-Type", "").startswith("application/json"):
                        return self._send(401, b'{"error":"Unauthorized"}')
                    return self._redirect(login)
                version = stub.by_id.get(int(version_id)) if version_id.isdigit() else None
                files = (version or {}).get("files") or []
                entry = next((f for f in files if str(f["id"]) == file_id), None) if file_id else \
                    next((f for f in files if f.get("primary")), files[0] if files else None)
                key = stub._object_key(version["id"], entry["id"]) if version and entry else None
                if kind == "not_found" or key not in stub.storage.objects:
                    return self._send(404, b'{"error":"Model not found"}')
                self._redirect(stub.storage.signed_url(key, entry["name"]))

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if not self._begin():
                    return
                if self.path != "/api/v1/model-versions/by-hash":
                    self._send(404, b'{"error":"Not found"}')
                    return
                found = [v for v in map(stub.find_version, json.loads(body)) if v is not None]
                self._send(200, json.dumps(found).encode())

        self.server = _serve(Handler)
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
        self.storage.stop()


@pytest.fixture
def civitai_stub():
    stub = CivitaiStub().start()
    yield stub
    stub.stop()
    stub.storage.assert_never_saw_key()
