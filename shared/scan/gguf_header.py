"""GGUF key/value metadata and tensor shapes through the maintained `gguf` reader (llama.cpp)."""
from __future__ import annotations

import os
from typing import Any

from .safetensors_header import HeaderError, SafetensorsHeader

MAX_ARRAY_ITEMS = 64  # tokenizer vocabularies and the like are left out


def _field_value(field: Any) -> Any:
    from gguf import GGUFValueType

    types = field.types
    if not types:
        return None
    if types[0] == GGUFValueType.ARRAY:
        if len(field.data) > MAX_ARRAY_ITEMS:
            return None
        return [_scalar(field.parts[i], types[-1]) for i in field.data]
    return _scalar(field.parts[field.data[0]], types[0])


def _scalar(part: Any, value_type: Any) -> Any:
    from gguf import GGUFValueType

    if value_type == GGUFValueType.STRING:
        return bytes(part).decode("utf-8", "replace")
    value = part.tolist()
    return value[0] if isinstance(value, list) and len(value) == 1 else value


def read_gguf_header(path: str) -> SafetensorsHeader:
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path, "r")
    except (ValueError, IndexError, KeyError, OSError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise HeaderError(f"not a readable GGUF file: {exc}") from None
    size = os.path.getsize(path)
    for tensor in reader.tensors:
        end = int(tensor.data_offset) + int(tensor.n_bytes)
        if end > size:
            raise HeaderError(f"truncated: tensor {tensor.name!r} ends at byte {end}, the file has {size}")
    metadata: dict[str, Any] = {}
    for name, field in reader.fields.items():
        if name.startswith("GGUF."):
            continue
        try:
            value = _field_value(field)
        except (ValueError, IndexError):
            continue
        if value is not None:
            metadata[name] = value
    # GGUF stores dimensions innermost first; reverse to the PyTorch order the classifier expects
    tensors = {t.name: [int(d) for d in reversed(t.shape.tolist())] for t in reader.tensors}
    return SafetensorsHeader(tensors, metadata)
