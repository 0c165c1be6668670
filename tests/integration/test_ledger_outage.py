"""The ledger through a database interruption, on the real broker and database: it keeps running (no
exit, no restart), judges nothing it cannot judge meanwhile, and afterwards judges every command exactly
once (each job's seqs 1..n, one verdict per command, none lost)."""

from __future__ import annotations

from collections import Counter

import psycopg
from fakes import FlakyLedgerReads
from helpers import all_events, wait_until

from core import bus
from core.bus import CommandSender, OutcomeWaiter
from core.ledger import Ledger
from projections.queries import partition_snapshot
from schemas.jobspec import JobSpec
from schemas.messages import JobSubmitted, Rejected, Submit, Transition, encode, key_of


def _submit(pid: int) -> Submit:
    return Submit(PandaID=pid, actor="test", job=JobSpec(computingSite="LOCAL", attemptNr=1, transformation="t"))


def _ask(cfg, cmds, send=None):
    """Send ``cmds`` (with ``send`` if given) and return their verdicts (event or rejection), in order."""
    waiter = OutcomeWaiter(cfg)
    try:
        futs = [waiter.expect(c.id) for c in cmds]
        if send is None:
            sender = CommandSender(cfg)
            try:
                sender.send_many(cmds)
                sender.flush()
            finally:
                sender.close()
        else:
            send(cmds)
        return [f.result(120) for f in futs]
    finally:
        waiter.close()


def _exactly_once(cfg, cmds) -> list:
    events = [e for _, _, e in all_events(cfg)]
    per_command = Counter(e.command_id for e in events)
    assert max(per_command.values(), default=1) == 1, "a command produced two events"
    seqs: dict[int, list[int]] = {}
    for e in events:
        seqs.setdefault(e.PandaID, []).append(e.seq)
    for pid, got in seqs.items():
        assert sorted(got) == list(range(1, len(got) + 1)), f"PandaID {pid}: seqs {got}"
    return events


def test_a_database_away_at_assignment_is_waited_out(cfg, background):
    """The partition snapshots fail (the database away when the partitions are assigned): nothing is judged
    until they can be read, then every command once."""
    reads = FlakyLedgerReads(partition_snapshot, snapshot_failures=6)
    ledger = Ledger(cfg, instance="o", snapshot=reads)
    stop = background.run(ledger, "ledger-o")
    ids = [41, 42, 43]
    cmds = [*map(_submit, ids), *(Transition(PandaID=i, action="activate", actor="test") for i in ids)]
    outs = _ask(cfg, cmds)
    assert [o.seq for o in outs] == [1, 1, 1, 2, 2, 2]
    assert reads.snapshot_calls > 6 and reads.snapshot_failures == 0
    _exactly_once(cfg, cmds)

    # the server drops the ledger's connection: its next look-up reconnects
    with psycopg.connect(cfg.db.url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (ledger.db.conn.info.backend_pid,))
    late = [Transition(PandaID=999, action="activate", actor="test"), _submit(44)]
    unknown, submitted = _ask(cfg, late)
    assert isinstance(unknown, Rejected) and unknown.code == "unknown_job"
    assert isinstance(submitted, JobSubmitted) and submitted.seq == 1
    assert not stop.is_set() and not background.errors
    events = _exactly_once(cfg, cmds + late)
    assert len(events) == len(cmds) + 1


def test_a_look_up_failing_inside_a_batch_aborts_it_and_each_command_is_judged_once(cfg, background):
    """A command whose key is not its PandaID is looked up inside the batch's transaction; that look-up fails
    (connection lost): the transaction is aborted, the partition rebuilt, and the batch judged again, so the
    commands before it in the batch get one event each, not two."""
    reads = FlakyLedgerReads(partition_snapshot, fail_for={82: 2})   # Reconnecting tries twice: one call fails
    ledger = Ledger(cfg, instance="a", snapshot=reads)
    stop = background.run(ledger, "ledger-a")

    def send_to_partition_zero(cmds) -> None:   # one partition: one batch, and the jobs' state is held there
        producer = bus.producer(cfg)
        try:
            for c in cmds:
                key = b"not-a-pandaid" if c.PandaID == 82 else key_of(c.PandaID)
                producer.send(cfg.kafka.commands_topic, key=key, value=encode(c), partition=0)
            producer.flush()
        finally:
            producer.close()

    first = [_submit(80), _submit(81)]
    assert [o.seq for o in _ask(cfg, first, send=send_to_partition_zero)] == [1, 1]
    batch = [Transition(PandaID=80, action="activate", actor="test"),
             Transition(PandaID=81, action="activate", actor="test"), _submit(82)]
    outs = _ask(cfg, batch, send=send_to_partition_zero)
    assert [getattr(o, "seq", o) for o in outs] == [2, 2, 1]
    assert ledger.stats["aborted"] >= 1 and reads.fail_for[82] == 0
    wait_until(lambda: len(all_events(cfg)) >= 5, 60, 0.2, "every event")
    events = _exactly_once(cfg, first + batch)
    assert sorted((e.PandaID, e.seq) for e in events) == [(80, 1), (80, 2), (81, 1), (81, 2), (82, 1)]
    assert not stop.is_set() and not background.errors


def test_a_ledger_step_that_never_returns_meets_its_watchdog(cfg, background):
    """A database call that hangs in the ledger's loop: the watchdog's guard reports it (the metric) and ends
    the process (here: the exit it was given records the code) so that the supervisor restarts it."""
    from fakes import HangingLedgerReads

    from core import metrics, watchdog

    # long enough that a group join on a loaded machine is not taken for the hang (it fired before the ledger's
    # assignment once at load average 20 with 3 s), short enough to keep the test quick
    cfg = cfg.replace(kafka={"stuck_after_s": 10.0})
    reads = HangingLedgerReads(partition_snapshot)
    ledger = Ledger(cfg, instance="h", snapshot=reads)
    exits: list[int] = []
    ledger.watchdog._exit = exits.append      # not os._exit: the test process goes on
    before = metrics.WATCHDOG_STUCK.labels(ledger.group_id)._value.get()
    background.run(ledger, "ledger-h")
    try:
        sender = CommandSender(cfg)
        sender.send_many([_submit(90)])
        sender.flush()
        sender.close()
        wait_until(reads.entered.is_set, 90, 0.2, "the ledger's snapshot read")
        wait_until(lambda: exits, 60, 0.2, "the watchdog ending the hung ledger")
    finally:
        ledger.watchdog.bound = 0.0   # a real process has ended by now: this one's thread just stops
        reads.release.set()
    assert exits == [watchdog.EXIT_CODE]
    assert metrics.WATCHDOG_STUCK.labels(ledger.group_id)._value.get() == before + 1
