"""Reading a JSON request body within limits: raw size, gzip (decompressed size capped, truncation caught)."""
from __future__ import annotations

import json
import zlib
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request

from .errors import ApiError


async def read_raw(request: Request, max_bytes: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ApiError(400, f"Content-Length {declared!r} is not a number", "Content-Length")
        if int(declared) > max_bytes:
            raise ApiError(413, f"request body is {int(declared)} bytes; the limit is {max_bytes}", "body")
    chunks: list[bytes] = []
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_bytes:
                raise ApiError(413, f"request body is over the limit of {max_bytes} bytes", "body")
            chunks.append(chunk)
    except ClientDisconnect:
        raise ApiError(400, f"the upload ended after {received} bytes", "body") from None
    if declared is not None and received != int(declared):
        raise ApiError(400, f"the upload ended after {received} of {declared} bytes", "body")
    return b"".join(chunks)


def gunzip(data: bytes, max_bytes: int) -> bytes:
    """Decompress a gzip body, never producing more than max_bytes (a zip bomb stops there)."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    out: list[bytes] = []
    produced = 0
    pending = data
    try:
        while pending and not inflater.eof:
            piece = inflater.decompress(pending, max_bytes - produced + 1)
            produced += len(piece)
            if produced > max_bytes:
                raise ApiError(413, f"the gzip body decompresses to more than {max_bytes} bytes", "body")
            out.append(piece)
            pending = inflater.unconsumed_tail
    except zlib.error as exc:
        raise ApiError(400, f"the gzip body is corrupt: {exc}", "body") from None
    if not inflater.eof:
        raise ApiError(400, "the gzip body is truncated", "body")
    return b"".join(out)


def decompress(raw: bytes, encoding: str, max_decompressed: int) -> bytes:
    if encoding == "gzip":
        return gunzip(raw, max_decompressed)
    if encoding not in ("", "identity"):
        raise ApiError(415, f"Content-Encoding {encoding!r} is not supported; use gzip or none", "Content-Encoding")
    return raw


def parse_json(raw: bytes) -> Any:
    if not raw.strip():
        raise ApiError(400, "the request body is empty; a JSON object is expected", "body")
    try:
        return json.loads(raw)
    except UnicodeDecodeError as exc:
        raise ApiError(400, f"the body is not UTF-8: {exc.reason} at byte {exc.start}", "body") from None
    except json.JSONDecodeError as exc:
        raise ApiError(400, f"the body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}", "body") from None


async def read_body(request: Request, max_bytes: int, max_decompressed: int) -> bytes:
    """The body, decompressed (large ones off the event loop)."""
    raw = await read_raw(request, max_bytes)
    encoding = request.headers.get("content-encoding", "").strip().lower()
    if len(raw) < 65536 and encoding != "gzip":
        return decompress(raw, encoding, max_decompressed)
    return await run_in_threadpool(decompress, raw, encoding, max_decompressed)


async def read_json(request: Request, max_bytes: int, max_decompressed: int, *, optional: bool = False) -> Any:
    """The decoded body; with optional=True an empty body reads as {}."""
    raw = await read_body(request, max_bytes, max_decompressed)
    if optional and not raw.strip():
        return {}
    if len(raw) < 65536:
        return parse_json(raw)
    return await run_in_threadpool(parse_json, raw)


def expect_object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object", "body")
    return body
