"""Percentiles and rate timelines: the two shapes every workload reports in."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentiles(samples_s: Sequence[float], points: Sequence[float] = (50, 95, 99)) -> dict[str, float]:
    """Latency percentiles in milliseconds (nearest-rank), plus count, mean and max."""
    if not samples_s:
        return {"n": 0}
    xs = sorted(samples_s)
    out: dict[str, float] = {"n": len(xs), "mean_ms": 1000 * sum(xs) / len(xs), "max_ms": 1000 * xs[-1]}
    for p in points:
        rank = max(1, math.ceil(p / 100 * len(xs)))
        out[f"p{p:g}_ms"] = 1000 * xs[rank - 1]
    return out


def timeline(stamps: Sequence[float], t0: float, bucket: float = 1.0) -> list[tuple[float, float]]:
    """(seconds since t0, events/s) per bucket, from the completion times of events."""
    if not stamps:
        return []
    n = int((max(stamps) - t0) // bucket) + 1
    counts = [0] * n
    for s in stamps:
        i = int((s - t0) // bucket)
        if 0 <= i < n:
            counts[i] += 1
    return [(round(i * bucket, 3), c / bucket) for i, c in enumerate(counts)]


def steady_rate(series: Sequence[tuple[float, float]], trim: float = 0.1) -> float:
    """Mean rate of a timeline without its ramp-up and drain tails (``trim`` of the buckets each side)."""
    rates = [r for _, r in series]
    if len(rates) < 5:
        return sum(rates) / len(rates) if rates else 0.0
    k = int(len(rates) * trim)
    middle = rates[k:len(rates) - k] or rates
    return sum(middle) / len(middle)
