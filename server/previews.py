"""Central preview images: one JPEG per SHA256 in CONFIG_DATA_PATH/previews, written atomically.

A preview's file and its `model_previews` row change together, inside one write transaction: the Civitai worker, the
nodes and an operator's rejection each decide on the row there, so one's check never meets another's write, and the
file is the one the row names (only a COMMIT that fails after the file was replaced leaves it under the row before)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import sqlite_utils
from modelsync.shared.atomic_write import write_atomic
from modelsync.shared.catalog import write_transaction
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

    def store(
        self,
        db: sqlite_utils.Database,
        sha256: str,
        data: bytes,
        write_row: Callable[[StoredPreview], bool],
        max_pixels: int = 64_000_000,
    ) -> StoredPreview | None:
        """Decode any still image Pillow reads (first frame of an animation) and shrink it to a JPEG; then, in one
        write transaction, `write_row(preview)` decides whether it is kept and writes its row, and only then does the
        file replace the model's current one. None when `write_row` declined (nothing written)."""
        try:
            encoded, (width, height) = shrink_to_jpeg(data, self.max_side, quality=88, max_pixels=max_pixels)
        except ImageError as exc:
            raise PreviewError(str(exc)) from None
        preview = StoredPreview(self.path(sha256), width, height, len(encoded))
        self.folder.mkdir(parents=True, exist_ok=True)
        with write_transaction(db):
            if not write_row(preview):
                return None
            write_atomic(preview.path, encoded)
        return preview

    def clear(self) -> None:
        if self.folder.is_dir():
            for entry in self.folder.glob("*.jpeg"):
                entry.unlink(missing_ok=True)
