"""Latency statistics for the load benches: measured request times in seconds, an error counted as negative."""
from __future__ import annotations

import statistics


def summary(measured: list[float], seconds: float) -> dict:
    errors = sum(1 for t in measured if t < 0)
    latencies = sorted(abs(t) for t in measured)
    pick = lambda q: round(latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000, 2)  # noqa: E731
    return {"requests": len(latencies), "errors": errors, "seconds": seconds,
            "requests_per_s": round(len(latencies) / seconds), "p50_ms": pick(0.50), "p95_ms": pick(0.95),
            "p99_ms": pick(0.99), "max_ms": round(latencies[-1] * 1000, 2),
            "mean_ms": round(statistics.fmean(latencies) * 1000, 2)}
