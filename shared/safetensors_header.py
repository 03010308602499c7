"""Reading a .safetensors header (8-byte length + JSON) without touching any tensor, size-guarded."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

MAX_HEADER_BYTES = 100 * 1024 * 1024


class HeaderError(ValueError):
    """A model file whose header cannot be read; str() is the reason."""


@dataclass
class SafetensorsHeader:
    tensors: dict[str, list[int]]  # name -> shape
    metadata: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None  # a part that was ignored (e.g. a __metadata__ that is not an object)


def _decode_value(value: Any) -> Any:
    """A1111 decodes metadata strings that hold JSON objects; kohya writes nested values that way."""
    if isinstance(value, str) and value[:1] in ("{", "["):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def read_safetensors_header(path: str) -> SafetensorsHeader:
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise HeaderError(f"truncated: {size} bytes, no safetensors header")
        length = int.from_bytes(head, "little")
        if length + 8 > size:
            raise HeaderError(f"header length {length} exceeds file size {size}")
        if length > MAX_HEADER_BYTES:
            raise HeaderError(f"header length {length} is over the {MAX_HEADER_BYTES}-byte limit")
        raw = f.read(length)
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise HeaderError(f"header is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise HeaderError("header is not a JSON object")
    metadata = header.pop("__metadata__", None)
    problem = None
    if metadata is None:
        metadata = {}
    elif not isinstance(metadata, dict):
        problem = f"__metadata__ is a {type(metadata).__name__}, not an object; ignored"
        metadata = {}
    tensors = {}
    for name, info in header.items():
        shape = info.get("shape") if isinstance(info, dict) else None
        if not isinstance(shape, list):
            raise HeaderError(f"tensor {name!r} has no shape")
        tensors[name] = shape
    return SafetensorsHeader(tensors, {str(k): _decode_value(v) for k, v in metadata.items()}, problem)
