"""verify and rebuild where the broker's log starts after offset 0 (events deleted by retention).

The embedded Tansu cannot delete records (it drops the connection on DeleteRecords), so the log start
is moved by what ``log_bounds`` reports: the replay tools then read the log only from there, and
everything before must come from the PostgreSQL archive for the counts and rows to match. The merge
itself is tested in tests/unit/test_archive_merge.py; the broker's beginning offsets in
test_bus_contract.py.
"""

from __future__ import annotations

from helpers import wait_until
from test_replay import archived, drive, dump, mixed_flow, run_system

from cli import logread, rebuild, verify
from core import db
from projections.base import save_position


def late_start(monkeypatch):
    """Make the replay tools see a log that starts halfway through each partition."""
    real = logread.log_bounds

    def bounds(cfg, topic=None):
        _, end = real(cfg, topic)
        return {p: off // 2 for p, off in end.items()}, end

    monkeypatch.setattr(verify, "log_bounds", bounds)
    monkeypatch.setattr(rebuild, "log_bounds", bounds)
    return bounds


def test_verify_and_rebuild_read_the_archive_before_the_log_start(cfg, background, monkeypatch):
    ledger, _, stops = run_system(cfg, background)
    drive(cfg, mixed_flow(range(4000, 4030)), ledger)
    n_events = ledger.stats["events"]
    wait_until(lambda: archived(cfg) == n_events, 60, 0.2, "the projector to catch up")
    for stop in stops:
        background.stop(stop)
    begin, _ = late_start(monkeypatch)(cfg)
    assert any(begin.values()), "the simulated log start must be past 0 somewhere"

    report = verify.verify(cfg, show_progress=False)
    assert report.ok, report.lines()
    assert report.events == n_events and report.jobs == 30, "every event: the archive's, then the log's"
    assert any("read from the archive" in n for n in report.notes)

    live = dump(cfg)
    rebuild.rebuild(cfg, "jobs", into="from_archive", log=lambda _: None, show_progress=False)
    assert dump(cfg, "from_archive", ("jobs",)) == {"jobs": live["jobs"]}

    # an archive that stops short of the log start: those events exist nowhere, and both tools say so
    with db.connect(cfg) as conn:
        p = next(p for p, off in begin.items() if off > 0)
        save_position(conn, "archive", cfg.kafka.events_topic, p, 0)
        conn.commit()
    gap = verify.verify(cfg, show_progress=False)
    assert not gap.ok and any("exist nowhere" in line for line in gap.problems)
