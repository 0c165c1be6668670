"""The bulk rebuild of jobs (fold in memory, COPY, shared partitions) against apply()'s rows, event for event.

The log is the bench's legal lifecycle log plus what the fold must hand to ``JobsProjection.apply``: a
control character (a ``\\u`` escape), values of another type or range than their column, a repeated
JobSubmitted, an event for no job, bytes that are no event, and text
that COPY must escape. A tiny flush size makes most jobs straddle writes (their later events become
UPDATEs). Every row and position must equal those of the row-by-row rebuild. (An event replayed with an
old seq is left out: apply() folds a batch without comparing seqs, so its rows then depend on where the
batches fell; the bulk fold hands such an event to apply() alone, where the seq guard makes it a no-op.)
"""

from __future__ import annotations

import psycopg
import pytest

from bench.rebuild_rate import events
from cli import rebuild
from core import bus, db
from core.states import FINAL_STATES
from projections.jobs import JobsBulk, JobsProjection
from schemas.jobspec import JobSpec
from schemas.messages import Event, JobSubmitted, JobUpdated, encode, key_of

ODD_SITE = "a\tb\\c\nd"


def _log(n: int) -> list[bytes | Event]:
    legal = list(events(n))
    last: dict[int, Event] = {}
    for ev in legal:
        last[ev.PandaID] = ev
    pids = sorted(last)

    def upd(pid: int, step: int, attrs: dict) -> JobUpdated:
        ev = last[pid]
        return JobUpdated(PandaID=pid, actor="test", seq=ev.seq + step, from_state=ev.to_state,
                          to_state=ev.to_state, command_id=f"odd-{pid}-{step}", action="set", attrs=attrs)

    j = pids[:6]
    first = next(ev for ev in legal if ev.PandaID == j[3])
    odd: list[bytes | Event] = [
        upd(j[0], 1, {"pilotErrorDiag": "esc\x1b"}), upd(j[0], 2, {"commandToPilot": "tobekilled"}),
        upd(j[1], 1, {"currentPriority": "5"}),                           # a string for an int column
        upd(j[2], 1, {"currentPriority": 2**40}), upd(j[2], 2, {"commandToPilot": "x"}),   # refused, then one kept
        first,                                                            # JobSubmitted again
        upd(j[4], 1, {"maxWalltime": 3.5}),                               # a float for an int column
        upd(j[5], 1, {"computingSite": None, "maxWalltime": "NULL", "pilotErrorDiag": "x\\y\tz"}),
        JobUpdated(PandaID=1, actor="test", seq=5, from_state="running", to_state="running", command_id="none",
                   action="set"),                                         # no such job
        b"this is not an event",
        JobSubmitted(PandaID=7_000_000, actor="test", seq=1, from_state="new", to_state="defined",
                     command_id="escaped", job=JobSpec(computingSite=ODD_SITE, jobName="n\\1\t2")),
        JobUpdated(PandaID=7_000_000, actor="test", seq=2, from_state="defined", to_state="defined",
                   command_id="escaped-2", action="set", attrs={"pilotErrorDiag": "tab\there"}),
    ]
    return [*legal, *odd]


def _write(cfg, log: list[bytes | Event]) -> None:
    nparts = len(bus.partitions(cfg, cfg.kafka.events_topic))
    prod = bus.producer(cfg, transactional_id=f"{cfg.kafka.group_prefix}-bulk-log")
    try:
        prod.init_transactions()
        prod.begin_transaction()
        for item in log:
            if isinstance(item, bytes):
                prod.send(cfg.kafka.events_topic, item, key=b"1", partition=bus.partition_of(1, nparts))
            else:
                prod.send(cfg.kafka.events_topic, encode(item), key=key_of(item.PandaID),
                          partition=bus.partition_of(item.PandaID, nparts))
        prod.commit_transaction()
    finally:
        prod.close()


def _dump(cfg, schema: str) -> tuple[list, list]:
    with db.connect(cfg) as conn:
        rows = conn.execute(f"SELECT * FROM {schema}.jobs ORDER BY pandaid").fetchall()
        positions = conn.execute(f"SELECT * FROM {schema}.consumer_positions ORDER BY 1, 2, 3").fetchall()
    return rows, positions


@pytest.mark.parametrize("processes", [1, 2])
def test_bulk_rebuild_gives_apply_s_rows_and_positions(cfg, monkeypatch, processes):
    _write(cfg, _log(3000))
    monkeypatch.setattr(rebuild, "BULK_FLUSH_EVENTS", 7)
    monkeypatch.setattr(rebuild, "BULK_PROCESSES", processes)
    calls = []
    real = rebuild.apply_bulk
    monkeypatch.setattr(rebuild, "apply_bulk", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    bulk = rebuild.rebuild(cfg, "jobs", into="bulk", log=lambda *_: None, show_progress=False)
    assert calls, "the bulk path was taken"

    monkeypatch.delattr(JobsProjection, "bulk")
    rowwise = rebuild.rebuild(cfg, "jobs", into="rowwise", log=lambda *_: None, show_progress=False)

    assert bulk.events == rowwise.events > 3000
    rows, positions = _dump(cfg, "bulk")
    want_rows, want_positions = _dump(cfg, "rowwise")
    assert positions == want_positions
    assert [r for r in rows if r not in want_rows] == [r for r in want_rows if r not in rows]
    by_pid = {r[0]: r for r in rows}
    assert 7_000_000 in by_pid and ODD_SITE in by_pid[7_000_000]
    assert len(rows) > 400 and positions


def test_a_refused_bulk_write_starts_over_through_apply(cfg, monkeypatch):
    _write(cfg, _log(500))
    monkeypatch.setattr(rebuild, "BULK_PROCESSES", 1)
    real = JobsBulk.flush
    refused = []

    def flush(self, conn):
        if not refused:
            refused.append(1)
            raise psycopg.errors.NumericValueOutOfRange("refused, as PostgreSQL might")
        return real(self, conn)

    monkeypatch.setattr(JobsBulk, "flush", flush)
    restarted = rebuild.rebuild(cfg, "jobs", into="restarted", log=lambda *_: None, show_progress=False)
    monkeypatch.setattr(JobsBulk, "flush", real)
    bulk = rebuild.rebuild(cfg, "jobs", into="bulk", log=lambda *_: None, show_progress=False)
    assert refused and restarted.events == bulk.events
    assert _dump(cfg, "restarted") == _dump(cfg, "bulk")
    assert _dump(cfg, "public")[0] == [], "the live table was left alone"


def test_the_bulk_load_writes_old_final_jobs_into_the_archive_partition(cfg, monkeypatch):
    """Placed by the load itself, not moved by the sweep afterwards (each row written once)."""
    cfg = cfg.replace(projections={"archive_after": 0.0})   # every final job is old enough
    _write(cfg, list(events(800)))
    monkeypatch.setattr(rebuild.jobs_archive, "sweep", lambda *a, **kw: 0)
    rebuild.rebuild(cfg, "jobs", into="placed", log=lambda *_: None, show_progress=False)
    with db.connect(cfg) as conn:
        rows = conn.execute("SELECT status, archived FROM placed.jobs").fetchall()
        leaf = conn.execute("SELECT count(*) FROM placed.jobs_archived").fetchone()[0]
    assert len(rows) > 90
    assert all(archived == (status in FINAL_STATES) for status, archived in rows), rows
    assert leaf == sum(archived for _, archived in rows) > 0
