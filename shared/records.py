"""The records every part of modelsync passes around: vocabularies, hashes, files, metadata, scan results."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MODEL_EXTENSIONS = frozenset({".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".gguf"})
SAFETENSORS_EXTENSIONS = frozenset({".safetensors", ".sft"})
PICKLE_EXTENSIONS = frozenset({".ckpt", ".pt", ".pth"})
DEFAULT_MAX_HASH_SIZE = 15 * 10**9  # a scan hashes no larger file unless told

# The folder a root is loaded from by Forge/A1111 (what the host will use the file as).
ROLES = (
    "checkpoint",
    "lora",
    "vae",
    "embedding",
    "controlnet",
    "upscaler",
    "text_encoder",
    "hypernetwork",
    "other",
)

# What the content says a file is. None = unknown.
MODEL_TYPES = (
    "checkpoint",  # full pipeline (unet + vae + text encoders)
    "unet",  # diffusion model only (Flux/SD3 transformer, SDXL unet alone)
    "lora",
    "locon",
    "loha",
    "lokr",
    "dora",
    "vae",
    "embedding",
    "hypernetwork",
    "controlnet",
    "upscaler",
    "text_encoder",
    "clip_vision",
    "other",
)
LORA_TYPES = frozenset({"lora", "locon", "loha", "lokr", "dora"})

# Base architecture. None = unknown.
BASES = (
    "sd1",
    "sd2",
    "sdxl",
    "sdxl_refiner",
    "sd3",
    "flux1",
    "auraflow",
    "pixart",
    "hunyuan_dit",
    "kolors",
    "stable_cascade",
    "svd",
    "chroma",
    "lumina2",
    "other",
)

# Where a metadata field's value came from, highest priority first.
SOURCE_PRIORITY = ("a1111", "civitai_json", "embedded", "civitai_api")
CIVITAI_SOURCES = frozenset({"civitai_json", "civitai_api"})  # the sources a Civitai match gives
UNKNOWN_MARK = "none"  # a Civitai field of a model Civitai does not know (asked, answered 404)
MANUAL_SOURCE = "manual"  # operator overrides (server dashboard) beat every source


@dataclass(frozen=True)
class FileHashes:
    """All hashes of one file, lowercase hex. autov3 is the full 64-hex addnet hash (safetensors only)."""

    sha256: str
    autov1: str | None = None
    autov3: str | None = None

    @property
    def autov2(self) -> str:
        return self.sha256[:10]

    @property
    def sha256_12(self) -> str:
        return self.sha256[:12]

    def as_dict(self) -> dict[str, str | None]:
        return {
            "sha256": self.sha256,
            "autov1": self.autov1,
            "autov2": self.autov2,
            "autov3": self.autov3,
        }


@dataclass(frozen=True)
class Root:
    path: str
    role: str | None = None


@dataclass
class DiscoveredModel:
    """A model file found under a root. rel_name is relative to its root, '/'-separated (A1111's name)."""

    path: str
    root: Root
    rel_name: str
    size: int
    mtime_ns: int
    preview: str | None = None


@dataclass
class ScanProblem:
    path: str
    reason: str


# A listed file's state: usable, or kept in the catalog but never matched by a job check.
FILE_STATES = (
    "ok",
    "broken",  # its bytes are not a whole model (truncated, garbage header): a problem of the node
    "unreachable",  # under a folder that cannot be read now (missing, unmounted, no permission): kept with its hashes
)


@dataclass
class Discovery:
    models: list[DiscoveredModel] = field(default_factory=list)
    # every candidate sidecar (*.json, *.civitai.info) keyed by the directory that holds it
    sidecars_by_dir: dict[str, list[str]] = field(default_factory=dict)
    problems: list[ScanProblem] = field(default_factory=list)
    skipped: int = 0  # hidden files, partial downloads
    # folders whose content cannot be seen now, with the reason: what the catalog held under them is kept
    unavailable: dict[str, str] = field(default_factory=dict)
    # folders that may hold a mounted share (roots, symlinked or mount-point folders): empty while the catalog
    # holds files under them, they are taken as unavailable, not as emptied
    attachments: set[str] = field(default_factory=set)


@dataclass
class HeaderInfo:
    """What a model file's own bytes say, without loading any tensor."""

    format: str  # "safetensors" | "gguf" | "pickle"
    embedded: dict[str, Any] = field(default_factory=dict)  # decoded __metadata__ / GGUF kv (scalars only)
    type: str | None = None
    base: str | None = None
    tensor_count: int | None = None
    problem: str | None = None  # a part of the header that was ignored (reported, the rest is used)


# The metadata fields a model carries (besides hashes, size, type and base which come from the content).
METADATA_FIELDS = (
    "name",
    "type",
    "base",
    "description",
    "notes",
    "activation_text",
    "preferred_weight",
    "negative_text",
    "preferred_vae",
    "trained_words",
    "output_name",
    "author",
    "license",
    "resolution",
    "civitai_id",
    "civitai_version_id",
    "civitai_model_name",
    "civitai_model_base",
    "civitai_model_type",
    "civitai_model_version_name",
    "civitai_model_version_desc",
    "civitai_model_version_date",
    "civitai_download_url",
    "civitai_trained_words",
    "civitai_file_size_kb",
    "civitai_image_url",
)


@dataclass
class MetadataContribution:
    """Fields one source offers for a model (only non-null values), and the file it came from."""

    source: str  # one of SOURCE_PRIORITY
    fields: dict[str, Any]
    origin: str | None = None  # sidecar path, "header", or the API URL


@dataclass
class ScanStats:
    total: int = 0
    added: int = 0
    updated: int = 0
    removed: int = 0
    hashesCalculated: int = 0
    hashesSkipped: int = 0  # left unhashed this run: hashing not asked for, or over the size limit
    hashesCached: int = 0  # reused from the catalog (same path, size and mtime_ns)
    duplicates: int = 0  # models present at more than one path
    errors: int = 0
    broken: int = 0  # files whose bytes are not a whole model
    unreachable: int = 0  # files kept from the catalog under folders that cannot be read now

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)
