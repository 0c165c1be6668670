"""The daemon's real scripts (watcher, finisher, closer and dispatch sweeps, cache cleanup) run under its locks
and report ok."""

from __future__ import annotations

from services.clock import daemon


def test_the_periodic_scripts_run_once_each(cfg, tmp_path):
    cfg = cfg.replace(state={"dir": str(tmp_path)})
    names = ["watcher", "finisher", "closer", "cache_cleanup", "dispatch_sweep"]
    got = {name: (status, detail) for name, status, detail in daemon.run_scripts_once(cfg, names)}
    assert got == {name: ("ok", "0") for name in names}, got
