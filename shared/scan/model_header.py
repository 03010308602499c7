"""What a model file's own header says: format, embedded metadata, type and base. Pickles are never opened."""
from __future__ import annotations

import os
import zipfile

from ..records import PICKLE_EXTENSIONS, SAFETENSORS_EXTENSIONS, HeaderInfo
from .classification import classify
from .gguf_header import read_gguf_header
from .safetensors_header import HeaderError, read_safetensors_header

__all__ = ["HeaderError", "read_header"]


def read_header(path: str) -> HeaderInfo:
    ext = os.path.splitext(path)[1].lower()
    if ext in PICKLE_EXTENSIONS:
        _check_pickle_container(path)
        return HeaderInfo(format="pickle")
    if ext in SAFETENSORS_EXTENSIONS:
        header, fmt = read_safetensors_header(path), "safetensors"
    elif ext == ".gguf":
        header, fmt = read_gguf_header(path), "gguf"
    else:
        raise HeaderError(f"unknown model format {ext!r}")
    model_type, base = classify(header.tensors, header.metadata)
    return HeaderInfo(format=fmt, embedded=header.metadata, type=model_type, base=base, tensor_count=len(header.tensors), problem=header.problem)


def _check_pickle_container(path: str) -> None:
    """A PyTorch file is a zip archive (torch.save since 1.6) or a bare pickle (older). The zip's central directory
    sits at its end, so a truncated archive is found by opening it; no member is read, nothing is unpickled."""
    with open(path, "rb") as f:
        magic = f.read(4)
    if not magic:
        raise HeaderError("empty file (0 bytes)")
    if magic.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as archive:
                end = max((info.header_offset + info.compress_size for info in archive.infolist()), default=0)
        except zipfile.BadZipFile as exc:
            raise HeaderError(f"truncated or damaged PyTorch archive: {exc}") from None
        if end > os.path.getsize(path):
            raise HeaderError("truncated PyTorch archive: a member ends past the end of the file")
    elif magic[0] != 0x80:
        raise HeaderError("not a PyTorch file: neither a zip archive nor a pickle")
