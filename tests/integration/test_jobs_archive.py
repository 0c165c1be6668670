"""Final jobs leave the hot jobs table, stay visible, and the ledger still judges their late commands.

The ledger holds only live jobs and a few recently final ones (``[ledger] final_jobs_kept``); a command for
any other job is judged on the jobs projection's row, hot or archived. The projector moves jobs final for
``[projections] archive_after`` seconds into the archive partition (projections/jobs_archive.py).
"""

from __future__ import annotations

import asyncio

import psycopg
import pytest
from helpers import all_events, wait_until

from cli.rebuild import rebuild
from cli.verify import verify
from core import db
from core.bus import CommandSender, OutcomeWaiter
from core.ledger import Ledger
from core.states import FINAL_STATES
from projections import jobs_archive, monitor_queries, queries
from projections.queries import partition_snapshot
from projections.runner import ProjectionRunner
from schemas.jobspec import JobSpec
from schemas.messages import Kill, PilotUpdate, Rejected, Submit, Transition


@pytest.fixture
def acfg(cfg):
    """Jobs are archived as soon as they are final; the ledger keeps 2 final jobs per partition."""
    return cfg.replace(projections={"archive_after": 0.0, "archive_every": 0.2, "archive_batch": 5},
                       ledger={"final_jobs_kept": 2})


def _submit(pid: int) -> Submit:
    return Submit(PandaID=pid, actor="test", job=JobSpec(computingSite="LOCAL", attemptNr=1, transformation="t"))


def _ask(cfg, cmds):
    """Send ``cmds`` and return their verdicts (event or rejection), in order."""
    waiter = OutcomeWaiter(cfg)
    sender = CommandSender(cfg)
    try:
        futs = [waiter.expect(c.id) for c in cmds]
        sender.send_many(cmds)
        sender.flush()
        return [f.result(90) for f in futs]
    finally:
        sender.close()
        waiter.close()


def _where(cfg, pids) -> dict[int, bool]:
    """PandaID → archived, for the rows of ``pids``."""
    with db.connect(cfg) as conn:
        return dict(conn.execute("SELECT pandaid, archived FROM jobs WHERE pandaid = ANY(%s)", (list(pids),)))


def _start(cfg, background, instance: str) -> Ledger:
    ledger = Ledger(cfg, instance=instance, snapshot=partition_snapshot)
    ledger.stop_event = background.run(ledger, f"ledger-{instance}")
    return ledger


def _held_final(ledger: Ledger) -> tuple[int, int]:
    """(final jobs among the live ones, the most recently final jobs held in one partition)."""
    live = sum(1 for jobs in list(ledger.jobs.values()) for j in list(jobs.values()) if j.state in FINAL_STATES)
    return live, max((len(r) for r in list(ledger.recent.values())), default=0)


def test_final_jobs_are_archived_and_stay_visible(acfg, background):
    _start(acfg, background, "a")
    runner = ProjectionRunner(acfg)
    background.start(runner.run, "projector")
    outs = _ask(acfg, [_submit(1), _submit(2), _submit(3),
                       Kill(PandaID=1, actor="test"),
                       Transition(PandaID=2, action="fail", actor="test"),
                       Transition(PandaID=3, action="activate", actor="test")])
    assert not any(isinstance(o, Rejected) for o in outs), outs
    wait_until(lambda: _where(acfg, [1, 2, 3]) == {1: True, 2: True, 3: False}, 60, 0.2, "the final jobs archived")

    with db.connect(acfg) as conn:
        assert jobs_archive.counts(conn) == {"hot": 1, "archived": 2}
        row = queries.job(conn, 1)                        # status reads both partitions
        assert row["status"] == "cancelled" and row["seq"] == 2
        assert [h["to_state"] for h in queries.history(conn, 2)] == ["defined", "failed"]
        assert queries.count_by_status(conn) == {"cancelled": 1, "failed": 1, "activated": 1}
    with db.connect(acfg) as conn:    # the ledger's snapshot (its own transaction) reads the live jobs only
        snap = {r.pandaid for p in range(acfg.kafka.partitions)
                for r in partition_snapshot(conn, acfg.kafka.events_topic, p).jobs}
        assert snap == {3}

    async def page():
        async with await psycopg.AsyncConnection.connect(acfg.db.url) as aconn:
            return await monitor_queries.jobs_page(aconn, monitor_queries.JobFilter())
    rows, _ = asyncio.run(page())
    assert {r["pandaid"]: r["status"] for r in rows} == {1: "cancelled", 2: "failed", 3: "activated"}


def test_the_ledger_judges_archived_and_unknown_jobs_from_the_projection(acfg, background):
    first = _start(acfg, background, "b")
    runner = ProjectionRunner(acfg)
    background.start(runner.run, "projector")
    pids = list(range(100, 140))
    outs = _ask(acfg, [_submit(p) for p in pids] + [Kill(PandaID=p, actor="test") for p in pids[:10]]
                + [Transition(PandaID=p, action="fail", actor="test") for p in pids[10:]])
    assert not any(isinstance(o, Rejected) for o in outs), outs
    wait_until(lambda: all(_where(acfg, pids).values()), 60, 0.2, "every job archived")
    # the ledger lets go of the final jobs the projection has applied, beyond 2 per partition
    wait_until(lambda: _held_final(first)[1] <= 2, 30, 0.2, "final jobs let go")
    assert _held_final(first)[0] == 0

    def late_commands():
        return _ask(acfg, [
            Kill(PandaID=100, actor="test"),                       # cancelled and archived
            _submit(101),                                          # a second submission of an archived job
            PilotUpdate(PandaID=102, actor="pilot", state="running", attempt_nr=1),
            Kill(PandaID=110, actor="service:retrier", code=7),    # failed: the retry mark is an event
            Kill(PandaID=110, actor="service:retrier", code=7),    # once more: the next seq, not the same
            Transition(PandaID=888_888, action="activate", actor="test"),   # never existed
        ])

    def check(outs, mark_seqs):
        kill, dup, pilot, mark1, mark2, unknown = outs
        assert isinstance(kill, Rejected) and kill.code == "already_final" and kill.state == "cancelled"
        assert isinstance(dup, Rejected) and dup.code == "duplicate_job"
        assert isinstance(pilot, Rejected) and pilot.reply == "tobekilled"
        assert (mark1.action, mark1.seq, mark2.seq) == ("mark_retried", *mark_seqs)
        assert isinstance(unknown, Rejected) and unknown.code == "unknown_job"

    check(late_commands(), (3, 4))
    # a ledger rebuilt from the projection holds no final job and judges the same way
    background.stop(first.stop_event)
    second = _start(acfg, background, "c")
    check(late_commands(), (5, 6))
    assert _held_final(second)[0] == 0
    seqs = [e.seq for _, _, e in all_events(acfg) if e.PandaID == 110]
    assert sorted(seqs) == list(range(1, 7)), "one event per seq, exactly once"

    # the projections equal the fold of the log, archived rows included (verify leaves out where a row lives)
    wait_until(lambda: _where(acfg, [110]) == {110: True} and _seq(acfg, 110) == 6, 60, 0.2, "projected")
    background.stop(second.stop_event)
    report = verify(acfg, show_progress=False)
    assert report.ok, report.lines()


def _seq(cfg, pid: int) -> int | None:
    with db.connect(cfg) as conn:
        row = queries.job(conn, pid)
    return row["seq"] if row else None


def test_a_rebuilt_jobs_table_is_partitioned_and_archives_what_is_old(acfg, background):
    _start(acfg, background, "d")
    runner = ProjectionRunner(acfg.replace(projections={"archive_every": 0.0}))   # no sweep: the rebuild's
    background.start(runner.run, "projector")
    _ask(acfg, [_submit(7), _submit(8), Kill(PandaID=7, actor="test")])
    wait_until(lambda: _seq(acfg, 7) == 2 and _seq(acfg, 8) == 1, 60, 0.2, "projected")
    assert _where(acfg, [7, 8]) == {7: False, 8: False}
    rebuild(acfg, "jobs", log=lambda *_: None, show_progress=False)
    assert _where(acfg, [7, 8]) == {7: True, 8: False}
    with db.connect(acfg) as conn:
        parts = conn.execute("SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                             " WHERE i.inhparent = 'jobs'::regclass ORDER BY 1").fetchall()
        assert [p[0] for p in parts] == ["jobs_archived", "jobs_hot"]


def test_a_batch_whose_jobs_cannot_be_looked_up_waits_and_is_judged_once(acfg, background):
    """The database lost while the ledger looks up jobs it does not hold: nothing is judged, the batch is
    fetched again and judged once the look-up works (each command one verdict, each job's seqs 1..n)."""
    from fakes import FlakyLedgerReads

    # Reconnecting tries twice per call: 3 failures = two calls fail, the third succeeds
    reads = FlakyLedgerReads(partition_snapshot, failures=3)
    ledger = Ledger(acfg, instance="f", snapshot=reads)
    background.run(ledger, "ledger-f")
    outs = _ask(acfg, [_submit(50), _submit(51), Transition(PandaID=50, action="activate", actor="test")])
    assert [o.seq for o in outs] == [1, 1, 2] and reads.calls >= 3
    events = [(e.PandaID, e.seq) for _, _, e in all_events(acfg)]
    assert sorted(events) == [(50, 1), (50, 2), (51, 1)]
