"""Reading a .safetensors header (8-byte length + JSON) without touching any tensor, size-guarded."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

MAX_HEADER_BYTES = 100 * 1024 * 1024
# bits per element of each dtype the format defines (sub-byte ones are packed)
DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32, "I64": 64, "U64": 64, "F64": 64,
    "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}


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
    _check_data_layout(header, size - 8 - length)
    return SafetensorsHeader(tensors, {str(k): _decode_value(v) for k, v in metadata.items()}, problem)


def _check_data_layout(tensors: dict[str, Any], data_bytes: int) -> None:
    """The tensors' data_offsets must tile the data after the header exactly, as the format requires (and as the
    loaders check): no tensor past the end of the file (an interrupted download), no overlap, no gap, each
    tensor's byte size agreeing with its dtype and shape."""
    spans: list[tuple[int, int, str]] = []
    for name, info in tensors.items():
        offsets = info.get("data_offsets")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int and o >= 0 for o in offsets)
                and offsets[0] <= offsets[1]):
            raise HeaderError(f"tensor {name!r} has no valid data_offsets")
        begin, end = offsets
        bits = DTYPE_BITS.get(info.get("dtype"))
        shape = info["shape"]
        if bits is not None and all(type(d) is int and d >= 0 for d in shape):
            elements = 1
            for d in shape:
                elements *= d
            expected = (elements * bits + 7) // 8
            if end - begin != expected:
                raise HeaderError(f"tensor {name!r} holds {end - begin} bytes; its dtype and shape need {expected}")
        spans.append((begin, end, name))
    spans.sort()
    position = 0
    for begin, end, name in spans:
        if end > data_bytes:
            raise HeaderError(f"truncated: tensor {name!r} ends at byte {end} of the data, the file holds {data_bytes}")
        if begin != position:
            what = "overlaps the one before it" if begin < position else f"leaves a gap of {begin - position} bytes"
            raise HeaderError(f"tensor {name!r} {what}")
        position = end
    if position != data_bytes:
        raise HeaderError(f"{data_bytes - position} bytes after the last tensor's data: not a whole safetensors file")
