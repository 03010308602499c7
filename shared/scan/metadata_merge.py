"""Merging metadata from several sources: by priority, filling only fields that are still null."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..records import (
    CIVITAI_SOURCES,
    MANUAL_SOURCE,
    METADATA_FIELDS,
    SOURCE_PRIORITY,
    UNKNOWN_MARK,
    MetadataContribution,
)

_RANK = {MANUAL_SOURCE: -1, **{source: i for i, source in enumerate(SOURCE_PRIORITY)}}


@dataclass
class MergeResult:
    fields: dict[str, Any]
    field_sources: dict[str, str]
    metadata_source: str | None
    changed: set[str] = field(default_factory=set)


def _rank(source: str) -> int:
    return _RANK.get(source, len(SOURCE_PRIORITY))


def given_by_civitai(name: str, source: str | None) -> bool:
    """Whether a Civitai match gave this field (what rejecting the match takes back)."""
    return name.startswith("civitai_") or source in CIVITAI_SOURCES


def metadata_source(sources: dict[str, str], fields: dict[str, Any]) -> str | None:
    """The highest-priority source that gave a real value ("none" marks of an unknown-to-Civitai model do not
    count)."""
    real = {source for name, source in sources.items() if fields.get(name) not in (None, UNKNOWN_MARK)}
    return min(real, key=_rank, default=None)


def merge(
    contributions: list[MetadataContribution],
    existing: dict[str, Any] | None = None,
    existing_sources: dict[str, str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> MergeResult:
    """Existing values stay; null fields take the highest-priority source offering them; overrides always win."""
    fields = {k: v for k, v in (existing or {}).items() if k in METADATA_FIELDS and v is not None}
    sources = {k: v for k, v in (existing_sources or {}).items() if k in fields}
    for name, value in (overrides or {}).items():
        if name in METADATA_FIELDS:
            fields[name] = value
            sources[name] = MANUAL_SOURCE
    for contribution in sorted(contributions, key=lambda c: _rank(c.source)):
        for name, value in contribution.fields.items():
            if name in METADATA_FIELDS and value is not None and fields.get(name) is None:
                fields[name] = value
                sources[name] = contribution.source
    before = existing or {}
    changed = {name for name in METADATA_FIELDS if fields.get(name) != before.get(name)}
    return MergeResult(fields, sources, metadata_source(sources, fields), changed)


def contributions_from_flat(metadata: dict[str, Any], field_sources: dict[str, str]) -> list[MetadataContribution]:
    """A flat metadata dict (as a node sends it) grouped back by the source of each field."""
    grouped: dict[str, dict[str, Any]] = {}
    for name, value in metadata.items():
        source = field_sources.get(name)
        source = source if source in _RANK and source != MANUAL_SOURCE else "embedded"
        grouped.setdefault(source, {})[name] = value
    return [MetadataContribution(source, values) for source, values in grouped.items()]
