"""bench/stats.py: an open-loop level's latency by stretch of the level (placed by when each request was due)."""

from __future__ import annotations

from bench.stats import by_window


def test_samples_go_to_the_stretch_they_were_due_in_and_each_gets_its_percentiles():
    t0 = 100.0
    dues = [t0 + 0.5, t0 + 1.5, t0 + 2.5, t0 + 9.9, t0 + 10.0]   # the last is due at the very end: last stretch
    lat = [0.010, 0.012, 0.020, 0.130, 0.140]
    windows = by_window(lat, dues, t0, seconds=10.0, windows=5)
    assert [w["n"] if w["n"] else 0 for w in windows] == [2, 1, 0, 0, 2]
    assert windows[0]["from_s"] == 0.0 and windows[-1]["to_s"] == 10.0
    assert round(windows[0]["p99_ms"]) == 12 and round(windows[-1]["p99_ms"]) == 140
    assert windows[2] == {"from_s": 4.0, "to_s": 6.0, "n": 0}


def test_no_level_no_windows():
    assert by_window([], [], 0.0, seconds=0.0) == []
