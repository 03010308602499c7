"""What a node reports of itself with its heartbeats (issue #13): what its host is doing (the checkpoint loaded and
the one selected, the additional modules, busy or idle), the free disk of each model root with the floor transfers
leave free, and the GPU's memory. The faces fill in what they know: the extension all of it, `modelsync node` the
disks only (its activity is unknown, its GPU is never looked at: torch is read only when the process has imported it
already). The same format is validated here for the central server (`parse_report`)."""
from __future__ import annotations

import logging
import os
import re
import shutil
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..records import Root
from ..transfer.receiver import DEFAULT_FLOOR_BYTES

log = logging.getLogger(__name__)

MAX_TITLE_CHARS = 512
MAX_MODULES = 32
MAX_DISKS = 64
MAX_PATH_CHARS = 4096
MAX_ROLE_CHARS = 32
MAX_BYTES = 2**62  # no disk or GPU has more
MAX_DEVICE = 2**64 - 1  # st_dev is an unsigned 64-bit number
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")


@dataclass(frozen=True)
class Checkpoint:
    title: str  # as the host names it: "sdxl/model.safetensors [0123456789]"
    sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"title": self.title, "sha256": self.sha256}


@dataclass(frozen=True)
class HostActivity:
    """What the host is doing; a change here is reported at once (within the heartbeat throttle)."""

    loaded: Checkpoint | None = None  # resident in memory
    selected: Checkpoint | None = None  # the setting; Forge loads it at the next generation
    modules: tuple[str, ...] = ()  # Forge's additional modules (VAE / text encoders), file names
    busy: bool | None = None  # None: not known


@dataclass(frozen=True)
class DiskSpace:
    root: str
    role: str | None
    free_bytes: int
    total_bytes: int
    device: int | None = None  # the filesystem's id (st_dev): roots with the same one share their free space

    def to_dict(self) -> dict[str, Any]:
        return {"root": self.root, "role": self.role, "free_bytes": self.free_bytes, "total_bytes": self.total_bytes,
                "device": self.device}


@dataclass(frozen=True)
class GpuMemory:
    total_bytes: int
    free_bytes: int


@dataclass(frozen=True)
class StateReport:
    activity: HostActivity = HostActivity()
    disks: tuple[DiskSpace, ...] = ()
    gpu: GpuMemory | None = None
    floor_bytes: int = DEFAULT_FLOOR_BYTES

    def to_dict(self) -> dict[str, Any]:
        a = self.activity
        return {
            "loaded": a.loaded.to_dict() if a.loaded else None,
            "selected": a.selected.to_dict() if a.selected else None,
            "modules": list(a.modules),
            "busy": a.busy,
            "gpu": {"total_bytes": self.gpu.total_bytes, "free_bytes": self.gpu.free_bytes} if self.gpu else None,
            "disks": [d.to_dict() for d in self.disks],
            "floor_bytes": self.floor_bytes,
        }


def disk_spaces(roots: Iterable[Root]) -> tuple[DiskSpace, ...]:
    """The free and total space of the disk under each root; a root that cannot be read is left out (its folder is
    reported unavailable by the scan)."""
    found = []
    for root in list(roots)[:MAX_DISKS]:
        try:
            usage = shutil.disk_usage(root.path)
            device = os.stat(root.path).st_dev
        except OSError:
            continue
        found.append(DiskSpace(root.path, root.role, usage.free, usage.total, device))
    return tuple(found)


def gpu_memory() -> GpuMemory | None:
    """The current CUDA device's memory, when this process has imported torch and it has a GPU; never imports torch."""
    torch = sys.modules.get("torch")
    cuda = getattr(torch, "cuda", None)
    try:
        if cuda is None or not cuda.is_available():
            return None
        free, total = cuda.mem_get_info()
    except Exception as exc:  # a driver error says nothing about the node's models
        log.debug("modelsync: no GPU memory reading: %s", exc)
        return None
    return GpuMemory(int(total), int(free))


def sha256_or_none(value: Any) -> str | None:
    """A full SHA256 in lower case; anything else (a short hash, None) is not one."""
    return value.lower() if isinstance(value, str) and _SHA256.fullmatch(value) else None


# --- the central server's side: the report as a heartbeat carries it ---------------------------------------------
class StateError(ValueError):
    def __init__(self, field: str, message: str):
        super().__init__(f"state.{field} {message}")
        self.field = f"state.{field}"


def _text(value: Any, field: str, limit: int, optional: bool = True) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value or len(value) > limit:
        raise StateError(field, f"must be a string of 1-{limit} characters")
    return value


def _count(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_BYTES:
        raise StateError(field, f"must be a whole number of bytes, 0-{MAX_BYTES}")
    return value


def _device(value: Any, field: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_DEVICE:
        raise StateError(field, f"must be a device id, 0-{MAX_DEVICE}, or null")
    return value


def _checkpoint(value: Any, field: str) -> Checkpoint | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise StateError(field, 'must be {"title": ..., "sha256": ...} or null')
    sha256 = value.get("sha256")
    if sha256 is not None and sha256_or_none(sha256) is None:
        raise StateError(f"{field}.sha256", "must be 64 hex digits or null")
    return Checkpoint(_text(value.get("title"), f"{field}.title", MAX_TITLE_CHARS, optional=False), sha256_or_none(sha256))


def _list(value: Any, field: str, limit: int) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > limit:
        raise StateError(field, f"must be a list of at most {limit} items")
    return value


def parse_report(data: Any) -> StateReport:
    """A heartbeat's `state`, validated (StateError names the field)."""
    if not isinstance(data, dict):
        raise StateError("", "must be an object")
    busy = data.get("busy")
    if busy is not None and not isinstance(busy, bool):
        raise StateError("busy", "must be true, false or null")
    modules = tuple(_text(m, f"modules[{i}]", MAX_TITLE_CHARS, optional=False) or ""
                    for i, m in enumerate(_list(data.get("modules"), "modules", MAX_MODULES)))
    disks = []
    for i, disk in enumerate(_list(data.get("disks"), "disks", MAX_DISKS)):
        if not isinstance(disk, dict):
            raise StateError(f"disks[{i}]", 'must be {"root", "role", "free_bytes", "total_bytes", "device"?}')
        disks.append(DiskSpace(_text(disk.get("root"), f"disks[{i}].root", MAX_PATH_CHARS, optional=False) or "",
                               _text(disk.get("role"), f"disks[{i}].role", MAX_ROLE_CHARS),
                               _count(disk.get("free_bytes"), f"disks[{i}].free_bytes"),
                               _count(disk.get("total_bytes"), f"disks[{i}].total_bytes"),
                               _device(disk.get("device"), f"disks[{i}].device")))
    gpu_data = data.get("gpu")
    if gpu_data is not None and not isinstance(gpu_data, dict):
        raise StateError("gpu", 'must be {"total_bytes", "free_bytes"} or null')
    gpu = None if gpu_data is None else GpuMemory(_count(gpu_data.get("total_bytes"), "gpu.total_bytes"),
                                                  _count(gpu_data.get("free_bytes"), "gpu.free_bytes"))
    floor = data.get("floor_bytes")
    activity = HostActivity(_checkpoint(data.get("loaded"), "loaded"), _checkpoint(data.get("selected"), "selected"),
                            modules, busy)
    return StateReport(activity, tuple(disks), gpu, DEFAULT_FLOOR_BYTES if floor is None else _count(floor, "floor_bytes"))
