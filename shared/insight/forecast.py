"""Demand arithmetic over hourly counts, framework-free (docs/insight.md gives the formulas).

A window is the `hours` hourly UTC buckets ending with the last complete hour (the running hour is left out: a
partial hour would read as a drop in demand, in the trend and the forecast alike); the previous window is the
`hours` buckets before it."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

SMOOTHING_ALPHA = 0.3
WINDOWS: dict[str, int] = {"24h": 24, "7d": 7 * 24, "30d": 30 * 24}  # window name -> hours
HOUR_FORMAT = "%Y-%m-%dT%H:00:00Z"  # a bucket's start; sorts as text with the catalog's TIME_FORMAT


def hour_start(moment: datetime) -> datetime:
    return moment.astimezone(timezone.utc).replace(minute=0, second=0, microsecond=0)


def hour_key(moment: datetime) -> str:
    return hour_start(moment).strftime(HOUR_FORMAT)


def window_hours(now: datetime, hours: int, back: int = 0) -> list[str]:
    """The bucket keys of a window, oldest first: `back` = 0 the window ending with the hour before now's, 1 the one
    before that."""
    last = hour_start(now) - timedelta(hours=1 + hours * back)
    return [(last - timedelta(hours=hours - 1 - i)).strftime(HOUR_FORMAT) for i in range(hours)]


def trend(this_window: int, previous_window: int) -> float | None:
    """(this - previous) / previous; None when the previous window had no requests (no ratio to give)."""
    if previous_window == 0:
        return None
    return (this_window - previous_window) / previous_window


def smoothed_level(counts: list[int], alpha: float = SMOOTHING_ALPHA) -> float:
    """Simple exponential smoothing, oldest first: s_0 = x_0, s_t = alpha * x_t + (1 - alpha) * s_(t-1); the last s."""
    if not counts:
        return 0.0
    level = float(counts[0])
    for count in counts[1:]:
        level = alpha * count + (1 - alpha) * level
    return level


def forecast(counts: list[int], alpha: float = SMOOTHING_ALPHA) -> float:
    """Requests expected in the next window of len(counts) hours: the smoothed hourly level times the hours."""
    return smoothed_level(counts, alpha) * len(counts)
