"""Is there a newer version of a Civitai model than the one the fleet holds? The rule, on Civitai's own answer
(`GET /api/v1/models/{id}`, whose `modelVersions[]` carry `publishedAt`, `baseModel`, `status`, `availability` and,
for versions in early access, `earlyAccessEndsAt` or `earlyAccessDeadline`).

A version counts as newer when it is published (status Published, or no status, with a publishedAt not in the
future), not in early access (availability is not EarlyAccess and no early-access end lies in the future), of the
same base model as the held version, and published after it. The newest such version is the update.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Mapping

PUBLISHED = "Published"
HIDDEN_AVAILABILITY = frozenset({"EarlyAccess", "Private"})
EARLY_ACCESS_ENDS = ("earlyAccessEndsAt", "earlyAccessDeadline")


@dataclass(frozen=True)
class HeldVersion:
    """What the fleet holds: its version id, and, when Civitai's answer no longer lists it, what the registry recorded
    of it (its publication time and base model)."""

    version_id: int
    published_at: str | None = None
    base_model: str | None = None


def parse_time(value: Any) -> datetime | None:
    """Civitai's ISO-8601 times (`2025-02-08T11:29:04.487Z`) as aware datetimes; None for anything else."""
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


def versions_of(model: Mapping[str, Any]) -> list[dict[str, Any]]:
    versions = model.get("modelVersions")
    return [v for v in versions if isinstance(v, dict) and isinstance(v.get("id"), int)] if isinstance(versions, list) else []


def in_early_access(version: Mapping[str, Any], now: datetime) -> bool:
    if version.get("availability") == "EarlyAccess":
        return True
    ends = [parse_time(version.get(key)) for key in EARLY_ACCESS_ENDS]
    return any(end is not None and end > now for end in ends)


def is_released(version: Mapping[str, Any], now: datetime) -> bool:
    """Published, public and out of early access: anyone with a key can download it now."""
    status = version.get("status")
    if status is not None and status != PUBLISHED:
        return False
    if version.get("availability") in HIDDEN_AVAILABILITY:
        return False
    published = parse_time(version.get("publishedAt"))
    return published is not None and published <= now and not in_early_access(version, now)


def newer_version(model: Mapping[str, Any], held: HeldVersion, now: datetime) -> dict[str, Any] | None:
    """The newest released version of `model` of the held version's base model, published after it; None when the
    held version's publication time or base model is unknown (nothing to compare with) or no version is newer."""
    versions = versions_of(model)
    own = next((v for v in versions if v["id"] == held.version_id), None)
    held_at = parse_time(own.get("publishedAt")) if own else None
    held_at = held_at or parse_time(held.published_at)
    base = (own.get("baseModel") if own else None) or held.base_model
    if held_at is None or not base:
        return None
    newer = [
        v for v in versions
        if v["id"] != held.version_id and v.get("baseModel") == base and is_released(v, now)
        and parse_time(v.get("publishedAt")) > held_at  # type: ignore[operator]  (is_released checked it is a time)
    ]
    return max(newer, key=lambda v: (parse_time(v.get("publishedAt")), v["id"]), default=None)


def as_version(model: Mapping[str, Any], version: Mapping[str, Any]) -> dict[str, Any]:
    """A `modelVersions[]` entry in the shape `GET /api/v1/model-versions/{id}` answers: with `modelId` and `model`
    (`{name, type, nsfw, poi}`), which the model-level answer leaves out of its entries."""
    return {
        **version,
        "modelId": model.get("id"),
        "model": {key: model.get(key) for key in ("name", "type", "nsfw", "poi")},
    }
