"""Shrinking an image to a JPEG (the server's stored previews, the Forge tab's thumbnails). Pillow is imported on
first use, so start-up does not pay for it."""
from __future__ import annotations

import io
from pathlib import Path


class ImageError(ValueError):
    """Not an image Pillow can read."""


def shrink_to_jpeg(source: bytes | str | Path, max_side: int, quality: int,
                   max_pixels: int = 64_000_000) -> tuple[bytes, tuple[int, int]]:
    """Any still image Pillow reads (the first frame of an animation), shrunk to fit max_side x max_side, as JPEG
    bytes, with its (width, height). An image of more than max_pixels is refused before it is decoded."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            if image.width * image.height > max_pixels:
                raise ImageError(f"{image.width}x{image.height} pixels is over the limit of {max_pixels}")
            image.draft("RGB", (max_side, max_side))  # JPEG: decode at a reduced scale when that is enough
            image.seek(0)
            image.load()
            image.thumbnail((max_side, max_side))
            rgb = image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageError(f"not a readable image: {exc}") from None
    buffer = io.BytesIO()
    rgb.save(buffer, "JPEG", quality=quality, optimize=True)
    return buffer.getvalue(), rgb.size
