"""Central preview images: one JPEG per SHA256 in CONFIG_DATA_PATH/previews, written once, atomically."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from modelsync.shared.atomic_write import write_atomic
from modelsync.shared.images import ImageError, shrink_to_jpeg


class PreviewError(ValueError):
    pass


@dataclass
class StoredPreview:
    path: Path
    width: int
    height: int
    bytes: int


class PreviewStore:
    def __init__(self, folder: Path, max_side: int = 1024):
        self.folder = Path(folder)
        self.max_side = max_side

    def path(self, sha256: str) -> Path:
        return self.folder / f"{sha256}.jpeg"

    def store(self, sha256: str, data: bytes, max_pixels: int = 64_000_000) -> StoredPreview:
        """Decode any still image Pillow reads (first frame of an animation), shrink it, keep it as JPEG."""
        try:
            encoded, (width, height) = shrink_to_jpeg(data, self.max_side, quality=88, max_pixels=max_pixels)
        except ImageError as exc:
            raise PreviewError(str(exc)) from None
        self.folder.mkdir(parents=True, exist_ok=True)
        target = self.path(sha256)
        write_atomic(target, encoded)
        return StoredPreview(target, width, height, len(encoded))

    def clear(self) -> None:
        if self.folder.is_dir():
            for entry in self.folder.glob("*.jpeg"):
                entry.unlink(missing_ok=True)
