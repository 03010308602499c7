"""Sidecar JSON files, recognised by their content, and matched to the model file they describe.

Kinds: "a1111" (A1111/Forge user metadata), "civitai_version" (a Civitai model-version object, as in
`.civitai.info`), "civitai_model" (a Civitai model object with `modelVersions`), "civitai_unknown"
(Civitai Helper's answer for a file Civitai does not know: a skeleton with `id: ""`, or `{}` in a
`.civitai.info` — an empty object carries no content, so there alone the name tells what wrote it).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

MAX_SIDECAR_BYTES = 5 * 1024 * 1024
A1111_KEYS = frozenset(
    {"description", "sd version", "activation text", "preferred weight", "negative text", "notes", "vae", "vae_te", "sd_version_str"}
)
SIDECAR_SUFFIXES = (".civitai.info", ".json")


class SidecarError(ValueError):
    """A sidecar that cannot be read; str() is the reason."""


@dataclass
class Sidecar:
    path: str
    kind: str
    data: dict[str, Any]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def classify_sidecar(data: dict[str, Any], path: str) -> str | None:
    helper = (data.get("extensions") or {}).get("sd_civitai_helper") if isinstance(data.get("extensions"), dict) else None
    if data.get("id") == "" or (isinstance(helper, dict) and helper.get("skeleton_file") is True and "modelId" in data):
        return "civitai_unknown"
    if not data:
        return "civitai_unknown" if path.lower().endswith(".civitai.info") else None
    if _is_int(data.get("id")) and isinstance(data.get("modelVersions"), list):
        return "civitai_model"
    if _is_int(data.get("id")) and _is_int(data.get("modelId")) and isinstance(data.get("files"), list):
        return "civitai_version"
    if A1111_KEYS & set(data):
        return "a1111"
    return None


def read_sidecar(path: str, max_bytes: int = MAX_SIDECAR_BYTES) -> Sidecar | None:
    """The sidecar at path, None when its content is no kind we read; SidecarError when it is broken."""
    try:
        size = os.path.getsize(path)
        if size > max_bytes:
            raise SidecarError(f"sidecar is {size} bytes, over the {max_bytes}-byte limit")
        with open(path, "rb") as f:
            raw = f.read(max_bytes + 1)
    except OSError as exc:
        raise SidecarError(f"cannot read sidecar: {exc.strerror or exc}") from None
    try:
        data = json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise SidecarError("sidecar is not UTF-8 text") from None
    except ValueError as exc:
        raise SidecarError(f"sidecar is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        return None
    kind = classify_sidecar(data, path)
    return Sidecar(path, kind, data) if kind else None


def sidecar_stem(path: str) -> str:
    """`x.civitai.info` → `x`, `x.json` → `x`, `x.metadata.json` → `x.metadata`."""
    name = os.path.basename(path)
    for suffix in SIDECAR_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _civitai_files(data: dict[str, Any]) -> list[dict[str, Any]]:
    files = list(data.get("files") or [])
    for version in data.get("modelVersions") or []:
        if isinstance(version, dict):
            files.extend(version.get("files") or [])
    return [f for f in files if isinstance(f, dict)]


class SidecarIndex:
    """The recognised sidecars of one folder, looked up per model by stem, hash or file name inside.

    A sidecar named `<stem>.json`, `<stem>.civitai.info` or `<stem>.<word>.json` belongs to the model of that
    stem; when several model stems could claim it (`x` and `x.v2` for `x.v2.json`), the longest wins.
    """

    def __init__(self, sidecars: list[Sidecar], model_stems: set[str]):
        self.by_owner: dict[str, list[Sidecar]] = {}
        self.by_hash: dict[str, list[Sidecar]] = {}
        self.by_file_name: dict[str, list[Sidecar]] = {}
        for sidecar in sidecars:
            owner = _owner_stem(sidecar_stem(sidecar.path), model_stems)
            if owner is not None:
                self.by_owner.setdefault(owner, []).append(sidecar)
            if sidecar.kind in ("civitai_version", "civitai_model"):
                for f in _civitai_files(sidecar.data):
                    hashes = f.get("hashes") if isinstance(f.get("hashes"), dict) else {}
                    if isinstance(hashes.get("SHA256"), str):
                        self.by_hash.setdefault(hashes["SHA256"].lower(), []).append(sidecar)
                    if isinstance(f.get("name"), str):
                        self.by_file_name.setdefault(f["name"], []).append(sidecar)

    def for_model(self, model_path: str, sha256: str | None) -> list[Sidecar]:
        name = os.path.basename(model_path)
        found: dict[str, Sidecar] = {s.path: s for s in self.by_owner.get(os.path.splitext(name)[0], [])}
        inside = self.by_file_name.get(name, []) + (self.by_hash.get(sha256.lower(), []) if sha256 else [])
        for sidecar in inside:
            found.setdefault(sidecar.path, sidecar)
        return sorted(found.values(), key=lambda s: s.path)


def _owner_stem(stem: str, model_stems: set[str]) -> str | None:
    if stem in model_stems:
        return stem
    head, dot, word = stem.rpartition(".")
    return head if dot and head in model_stems else None
