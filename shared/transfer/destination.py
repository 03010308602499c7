"""Where a received file goes: a relative name made safe, and a rename into place that never replaces a file."""
from __future__ import annotations

import errno
import os
import re

from .failures import TransferFailed

_DRIVE = re.compile(r"[A-Za-z]:")
_UNSAFE_CHARS = re.compile(r"[\x00-\x1f\x7f:]")  # control characters; ':' (drive letters, NTFS streams)
MAX_SUFFIX = 999


def safe_relative_name(name: str) -> str:
    """The source's relative name, made safe to use under a root: `\\` becomes `/`; a drive letter, leading `/`,
    `.`/`..` and empty parts are dropped; leading dots go (a hidden name would never be scanned), trailing dots
    and spaces too (Windows drops them); control characters and `:` become `_`."""
    text = name.replace("\\", "/")
    if _DRIVE.match(text):
        text = text[2:]
    parts = [_UNSAFE_CHARS.sub("_", part).lstrip(".").rstrip(" .") for part in text.split("/")]
    safe = "/".join(part for part in parts if part)
    if not safe:
        raise TransferFailed("bad_name", f"the file name {name!r} is empty once made safe")
    return safe


def suffixed(rel_name: str, number: int) -> str:
    """`Lora/style.safetensors` -> `Lora/style_2.safetensors`."""
    stem, ext = os.path.splitext(rel_name)
    return f"{stem}_{number}{ext}"


def fsync_folder(folder: str) -> None:
    """Make a rename in `folder` durable (POSIX; Windows cannot open a folder for fsync, NTFS journals renames)."""
    if os.name == "nt":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _link_without_replacing(source: str, target: str) -> bool:
    """Hard-link source to target unless target exists; False when it exists. Falls back to a check and rename
    on filesystems without hard links (FAT, some shares)."""
    try:
        os.link(source, target)
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
            raise
        if os.path.lexists(target):
            return False
        os.rename(source, target)
        return True
    os.unlink(source)
    return True


def place(temp_path: str, root: str, rel_name: str) -> str:
    """Move the finished temp file to root/rel_name, or to the first free `_N` suffixed name beside it when that
    name is taken; returns the relative name used. The folder is fsynced."""
    for number in range(1, MAX_SUFFIX + 1):
        candidate = rel_name if number == 1 else suffixed(rel_name, number)
        if _link_without_replacing(temp_path, os.path.join(root, candidate)):
            fsync_folder(os.path.dirname(os.path.join(root, candidate)))
            return candidate
    raise FileExistsError(errno.EEXIST, f"{MAX_SUFFIX} files named like it exist already", os.path.join(root, rel_name))
