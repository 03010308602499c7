"""What a model file's own header says: format, embedded metadata, type and base. Pickles are never opened."""
from __future__ import annotations

import os

from .classification import classify
from .gguf_header import read_gguf_header
from .records import PICKLE_EXTENSIONS, SAFETENSORS_EXTENSIONS, HeaderInfo
from .safetensors_header import HeaderError, read_safetensors_header

__all__ = ["HeaderError", "read_header"]


def read_header(path: str) -> HeaderInfo:
    ext = os.path.splitext(path)[1].lower()
    if ext in PICKLE_EXTENSIONS:
        os.stat(path)  # a vanished file is still reported as such
        return HeaderInfo(format="pickle")
    if ext in SAFETENSORS_EXTENSIONS:
        header, fmt = read_safetensors_header(path), "safetensors"
    elif ext == ".gguf":
        header, fmt = read_gguf_header(path), "gguf"
    else:
        raise HeaderError(f"unknown model format {ext!r}")
    model_type, base = classify(header.tensors, header.metadata)
    return HeaderInfo(format=fmt, embedded=header.metadata, type=model_type, base=base, tensor_count=len(header.tensors), problem=header.problem)
