"""Central preview images: one JPEG per SHA256 in CONFIG_DATA_PATH/previews, written once, atomically."""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

from modelsync.shared.atomic_write import write_atomic


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

    def store(self, sha256: str, data: bytes) -> StoredPreview:
        """Decode any still image Pillow reads (first frame of an animation), shrink it, keep it as JPEG."""
        from PIL import Image, UnidentifiedImageError  # loaded on first preview, not at start-up

        try:
            with Image.open(io.BytesIO(data)) as image:
                image.seek(0)
                image.load()
                image.thumbnail((self.max_side, self.max_side))
                rgb = image.convert("RGB")
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
            raise PreviewError(f"not a readable image: {exc}") from None
        buffer = io.BytesIO()
        rgb.save(buffer, "JPEG", quality=88, optimize=True)
        encoded = buffer.getvalue()
        self.folder.mkdir(parents=True, exist_ok=True)
        target = self.path(sha256)
        write_atomic(target, encoded)
        return StoredPreview(target, rgb.width, rgb.height, len(encoded))

    def clear(self) -> None:
        if self.folder.is_dir():
            for entry in self.folder.glob("*.jpeg"):
                entry.unlink(missing_ok=True)
