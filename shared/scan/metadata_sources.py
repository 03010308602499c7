"""Each metadata source mapped to modelsync's fields (records.METADATA_FIELDS): plain dicts, non-null only."""
from __future__ import annotations

import re
from typing import Any

from .classification import base_from_hints

A1111_SD_VERSION = {"sd1": "sd1", "sd2": "sd2", "sdxl": "sdxl", "flux": "flux1"}

CIVITAI_TYPES = {
    "checkpoint": "checkpoint",
    "lora": "lora",
    "locon": "locon",
    "dora": "dora",
    "textualinversion": "embedding",
    "hypernetwork": "hypernetwork",
    "controlnet": "controlnet",
    "upscaler": "upscaler",
    "vae": "vae",
}

# Civitai `baseModel` strings (see the enums list) → base architecture; first matching prefix wins.
CIVITAI_BASE_PREFIXES: list[tuple[str, str]] = [
    ("sd 1", "sd1"),
    ("sd 2", "sd2"),
    ("sdxl", "sdxl"),
    ("pony v7", "auraflow"),
    ("pony", "sdxl"),
    ("illustrious", "sdxl"),
    ("noobai", "sdxl"),
    ("sd 3", "sd3"),
    ("flux.1", "flux1"),
    ("aura", "auraflow"),
    ("pixart", "pixart"),
    ("hunyuan 1", "hunyuan_dit"),
    ("kolors", "kolors"),
    ("stable cascade", "stable_cascade"),
    ("svd", "svd"),
    ("chroma", "chroma"),
    ("lumina", "lumina2"),
]


def _text(value: Any) -> str | None:
    return value.strip() or None if isinstance(value, str) else None


def _words(text: str | None) -> list[str] | None:
    if not text:
        return None
    parts = text.split(" || ") if " || " in text else text.split(",")
    words = [p.strip() for p in parts if p.strip()]
    return words or None


def _clean(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None and v != [] and v != ""}


def from_a1111(data: dict[str, Any]) -> dict[str, Any]:
    weight = data.get("preferred weight")
    version = _text(data.get("sd version")) or (_text(data.get("sd_version_str")) or "").removeprefix("SdVersion.")
    vae = _text(data.get("vae"))
    activation = _text(data.get("activation text"))
    return _clean(
        {
            "description": _text(data.get("description")),
            "notes": _text(data.get("notes")),
            "activation_text": activation,
            "trained_words": _words(activation),
            "preferred_weight": float(weight) if isinstance(weight, (int, float)) and not isinstance(weight, bool) and weight else None,
            "negative_text": _text(data.get("negative text")),
            "preferred_vae": vae if vae not in (None, "Automatic", "None") else None,
            "base": A1111_SD_VERSION.get((version or "").lower()),
        }
    )


def civitai_base(base_model: Any) -> str | None:
    if not isinstance(base_model, str):
        return None
    lower = base_model.lower()
    return next((base for prefix, base in CIVITAI_BASE_PREFIXES if lower.startswith(prefix)), None)


def _matching_file(files: list[Any], sha256: str | None) -> dict[str, Any] | None:
    files = [f for f in files if isinstance(f, dict)]
    if sha256:
        for f in files:
            hashes = f.get("hashes") if isinstance(f.get("hashes"), dict) else {}
            if str(hashes.get("SHA256", "")).lower() == sha256.lower():
                return f
    return next((f for f in files if f.get("primary")), files[0] if files else None)


def _first_image(images: list[Any]) -> str | None:
    for image in images:
        if isinstance(image, dict) and image.get("type", "image") == "image" and isinstance(image.get("url"), str):
            return image["url"]
    return None


def from_civitai_version(data: dict[str, Any], sha256: str | None, model: dict[str, Any] | None = None) -> dict[str, Any]:
    """A model-version object (by-hash answer, `.civitai.info`); `model` is the parent for versions nested in a model object."""
    model = model if model is not None else (data.get("model") if isinstance(data.get("model"), dict) else {})
    file = _matching_file(data.get("files") or [], sha256) or {}
    words = [w.strip() for w in data.get("trainedWords") or [] if isinstance(w, str) and w.strip()]
    model_type = _text(model.get("type"))
    size_kb = file.get("sizeKB")
    return _clean(
        {
            "name": _text(model.get("name")),
            "type": CIVITAI_TYPES.get((model_type or "").lower(), "other" if model_type else None),
            "base": civitai_base(data.get("baseModel")),
            "trained_words": words or None,
            "civitai_id": data.get("modelId") if isinstance(data.get("modelId"), int) else model.get("id"),
            "civitai_version_id": data.get("id") if isinstance(data.get("id"), int) else None,
            "civitai_model_name": _text(model.get("name")),
            "civitai_model_base": _text(data.get("baseModel")),
            "civitai_model_type": model_type,
            "civitai_model_version_name": _text(data.get("name")),
            "civitai_model_version_desc": _text(data.get("description")),
            "civitai_model_version_date": _text(data.get("publishedAt")) or _text(data.get("createdAt")),
            "civitai_download_url": _text(file.get("downloadUrl")) or _text(data.get("downloadUrl")),
            "civitai_trained_words": words or None,
            "civitai_file_size_kb": float(size_kb) if isinstance(size_kb, (int, float)) else None,
            "civitai_image_url": _first_image(data.get("images") or []),
        }
    )


def from_civitai_model(data: dict[str, Any], sha256: str | None) -> dict[str, Any]:
    """A model object: the version whose file has this SHA256, or nothing."""
    if not sha256:
        return {}
    for version in data.get("modelVersions") or []:
        if not isinstance(version, dict):
            continue
        for f in version.get("files") or []:
            hashes = f.get("hashes") if isinstance(f, dict) and isinstance(f.get("hashes"), dict) else {}
            if str(hashes.get("SHA256", "")).lower() == sha256.lower():
                return from_civitai_version({**version, "modelId": data.get("id")}, sha256, model=data)
    return {}


def _resolution(value: Any) -> str | None:
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return f"{value[0]}x{value[1]}"
    return None


def from_embedded(embedded: dict[str, Any], content_type: str | None, content_base: str | None) -> dict[str, Any]:
    """The file's own header: classification plus kohya `ss_*` and `modelspec.*` keys."""
    trigger = embedded.get("modelspec.trigger_phrase")
    return _clean(
        {
            "type": content_type,
            "base": content_base or base_from_hints(embedded),
            "name": _text(embedded.get("modelspec.title")) or _text(embedded.get("ss_output_name")),
            "output_name": _text(embedded.get("ss_output_name")),
            "description": _text(embedded.get("modelspec.description")),
            "author": _text(embedded.get("modelspec.author")),
            "license": _text(embedded.get("modelspec.license")),
            "resolution": _resolution(embedded.get("modelspec.resolution")) or _resolution(embedded.get("ss_resolution")),
            "trained_words": [w.strip() for w in re.split(r",", trigger) if w.strip()] or None if isinstance(trigger, str) else None,
        }
    )
