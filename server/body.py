"""Reading a JSON request body within limits, once the caller has been let in (server/auth.py decides from the
headers first). The raw size is capped; gzip is inflated while it arrives, into the one buffer the body is kept
in, and stops at the decompressed limit (a bomb never costs more than that limit, and the compressed bytes are
never kept); JSON too deep for the parser is a 400 like any other bad body."""
from __future__ import annotations

import asyncio
import json
import re
import zlib
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request

from .errors import ApiError

INFLATE_STEP = 1 << 20  # inflate at most this much at a time, letting other requests run in between
PARSE_ON_LOOP_BELOW = 65536  # smaller bodies are parsed on the event loop; larger ones in a thread
# What json turns into a surrogate code point: a \uD800-\uDFFF escape, or those code points UTF-8-encoded (json
# decodes bytes with "surrogatepass"). A valid pair is also found: the decoded strings are then looked at.
_SURROGATE_IN_RAW = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")


def _declared_length(request: Request, max_bytes: int) -> int | None:
    declared = request.headers.get("content-length")
    if declared is None:
        return None
    if not declared.isdigit():
        raise ApiError(400, f"Content-Length {declared[:40]!r} is not a number", "Content-Length")
    if int(declared) > max_bytes:
        raise ApiError(413, f"request body is {int(declared)} bytes; the limit is {max_bytes}", "body")
    return int(declared)


def _inflater(request: Request) -> Any:
    """A gzip inflater for a gzip body, None for a plain one (checked before any byte is read)."""
    encoding = request.headers.get("content-encoding", "").strip().lower()
    if encoding == "gzip":
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if encoding not in ("", "identity"):
        raise ApiError(415, f"Content-Encoding {encoding[:40]!r} is not supported; use gzip or none", "Content-Encoding")
    return None


async def _inflate(inflater: Any, data: bytes, out: bytearray, max_bytes: int) -> None:
    """Append what `data` inflates to to `out`, never letting `out` grow past max_bytes (+1 byte to tell)."""
    pending = data
    while not inflater.eof:
        room = min(INFLATE_STEP, max_bytes - len(out) + 1)
        try:
            piece = inflater.decompress(pending, room)
        except zlib.error as exc:
            raise ApiError(400, f"the gzip body is corrupt: {exc}", "body") from None
        out += piece
        if len(out) > max_bytes:
            raise ApiError(413, f"the gzip body decompresses to more than {max_bytes} bytes", "body")
        pending = inflater.unconsumed_tail
        if not pending and len(piece) < room:  # this input is used up and zlib holds no more output
            return
        await asyncio.sleep(0)


async def read_body(request: Request, max_bytes: int, max_decompressed: int) -> bytearray:
    """The body, decompressed, in one buffer: at most max_bytes received, at most max_decompressed kept."""
    declared = _declared_length(request, max_bytes)
    inflater = _inflater(request)
    body = bytearray()
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_bytes:
                raise ApiError(413, f"request body is over the limit of {max_bytes} bytes", "body")
            if inflater is None:
                body += chunk
            elif not inflater.eof:
                await _inflate(inflater, chunk, body, max_decompressed)
    except ClientDisconnect:
        raise ApiError(400, f"the upload ended after {received} bytes", "body") from None
    if declared is not None and received != declared:
        raise ApiError(400, f"the upload ended after {received} of {declared} bytes", "body")
    if inflater is not None and not inflater.eof:
        raise ApiError(400, "the gzip body is truncated", "body")
    return body


def _blank(raw: bytes | bytearray) -> bool:
    return not raw or raw.isspace()


def _lone_surrogate(value: Any) -> bool:
    """Whether a decoded string (a key or a value, at any depth) holds a lone surrogate: no UTF-8 writes it."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def parse_json(raw: bytes | bytearray) -> Any:
    """The decoded body; a 400 naming the body for anything that is not JSON in UTF-8, including a string with a
    lone surrogate (it would fail later, when written: a registry column, a log line, an answer)."""
    if _blank(raw):
        raise ApiError(400, "the request body is empty; a JSON object is expected", "body")
    try:
        decoded = json.loads(raw)
    except UnicodeDecodeError as exc:
        raise ApiError(400, f"the body is not UTF-8: {exc.reason} at byte {exc.start}", "body") from None
    except json.JSONDecodeError as exc:
        raise ApiError(400, f"the body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}", "body") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise ApiError(400, f"the body is not valid JSON: {exc}", "body") from None
    except RecursionError:
        raise ApiError(400, "the body nests arrays or objects too deeply", "body") from None
    if _SURROGATE_IN_RAW.search(raw) and _lone_surrogate(decoded):
        raise ApiError(400, "the body is not valid JSON: a string holds a lone UTF-16 surrogate (\\ud800-\\udfff)",
                       "body")
    return decoded


async def read_json(request: Request, max_bytes: int, max_decompressed: int, *, optional: bool = False) -> Any:
    """The decoded body; with optional=True an empty body reads as {}."""
    raw = await read_body(request, max_bytes, max_decompressed)
    if optional and _blank(raw):
        return {}
    if len(raw) < PARSE_ON_LOOP_BELOW:
        return parse_json(raw)
    return await run_in_threadpool(parse_json, raw)


def expect_object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object", "body")
    return body
