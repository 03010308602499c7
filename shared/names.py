"""The names A1111/Forge give a model file, and their normalised (comparable) form.

A1111 (modules/sd_models.py CheckpointInfo): name = path relative to the root ('sub/x.safetensors'),
name_for_extra = stem, model_name = name without extension with '/' and '\\' replaced by '_',
title = 'name [autov2]'. LoRAs (extensions-builtin/Lora/networks.py) are named by stem, with the
`ss_output_name` metadata as alias. VAEs are listed by file name. Embeddings by stem.
"""
from __future__ import annotations

import functools
import posixpath

from .records import LORA_TYPES


@functools.lru_cache(maxsize=65536)  # a job check compares the same few names across every node
def normalise_name(name: str) -> str:
    """Case-folded, '/'-separated, without leading './' or '/': Windows and Linux names compare equal."""
    name = name.strip().replace("\\", "/")
    while name.startswith("./"):
        name = name[2:]
    return name.lstrip("/").casefold()


def strip_extension(name: str) -> str:
    root, ext = posixpath.splitext(name)
    return root if ext else name


def stem(rel_name: str) -> str:
    return strip_extension(posixpath.basename(rel_name.replace("\\", "/")))


def a1111_model_name(rel_name: str) -> str:
    return strip_extension(rel_name.replace("/", "_").replace("\\", "_"))


def kind_of(role: str | None, content_type: str | None) -> str:
    """The kind a job names this file as: the host's folder wins; the content decides when no role is known."""
    if role and role != "other":
        return role
    if content_type in LORA_TYPES:
        return "lora"
    if content_type in ("checkpoint", "unet"):
        return "checkpoint"
    return content_type or "other"


def local_name(rel_name: str, kind: str) -> str:
    """The name this node's A1111/Forge shows for the file (what a rewritten job payload must say)."""
    rel_name = rel_name.replace("\\", "/")
    if kind in ("lora", "embedding", "hypernetwork"):
        return stem(rel_name)
    if kind == "vae":
        return posixpath.basename(rel_name)
    return rel_name


def aliases(rel_name: str, kind: str, output_name: str | None = None) -> list[tuple[str, str]]:
    """(alias kind, normalised alias) pairs under which a job may name this file."""
    rel_name = rel_name.replace("\\", "/")
    found: dict[tuple[str, str], None] = {}

    def add(alias_kind: str, value: str | None) -> None:
        if value:
            found[(alias_kind, normalise_name(value))] = None

    add("rel_name", rel_name)
    add("rel_stem", strip_extension(rel_name))
    add("stem", stem(rel_name))
    add("file_name", posixpath.basename(rel_name))
    if kind == "checkpoint":
        add("model_name", a1111_model_name(rel_name))
    if kind == "lora":
        add("output_name", output_name)
    return list(found)
