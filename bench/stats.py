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


def by_window(samples_s: Sequence[float], due_s: Sequence[float], t0: float, seconds: float,
              windows: int = 5) -> list[dict[str, float]]:
    """Latency percentiles (``percentiles``) of each of ``windows`` equal stretches of an open-loop level, each
    sample placed by when it was due (``due_s``, paired with ``samples_s``; ``t0`` the level's start).

    Why: on the embedded broker a fetch walks every batch its partition holds, so a level's latency can grow
    from its first seconds to its last while the offered rate stays the same; one set of percentiles over the
    whole level hides that (docs/performance.md, thirteenth session)."""
    width = seconds / windows if seconds > 0 and windows > 0 else 0.0
    if width <= 0:
        return []
    buckets: list[list[float]] = [[] for _ in range(windows)]
    for sample, due in zip(samples_s, due_s, strict=True):
        buckets[min(windows - 1, max(0, int((due - t0) / width)))].append(sample)
    return [{"from_s": i * width, "to_s": (i + 1) * width, **percentiles(b)} for i, b in enumerate(buckets)]
