"""A block's counters follow its files without a recount: right after redeliveries, after a mix of ready and
failed files, and the closer closes a sub block exactly when its last file settles."""

from __future__ import annotations

from core import db
from services.reactors import closer, datasets
from services.reactors.datasets import Block, BlockFile

DEST, SUB, DIS = "user.t.out", "user.t.out_sub000007", "panda.dis.7.Q"


def _counters(conn, name: str) -> tuple[int, int, int]:
    return conn.execute("SELECT nfiles, nfiles_done, nfiles_failed FROM datasets WHERE name = %s", (name,)).fetchone()


def _truth(conn, name: str) -> tuple[int, int, int]:
    """What a full recount of the block's files says."""
    return conn.execute("SELECT count(*), count(*) FILTER (WHERE status = 'ready'),"
                        " count(*) FILTER (WHERE status = 'failed') FROM dataset_files WHERE dataset = %s",
                        (name,)).fetchone()


def _record_jobs(conn, pids: range) -> None:
    blocks = [Block(name=DEST, type="destination"), Block(name=SUB, type="sub", parent=DEST)]
    files = [BlockFile(dataset=block, pandaid=pid, lfn=f"f{pid}.{kind}", type=kind, status="unknown")
             for pid in pids for kind in ("output", "log") for block in (SUB, DEST)]
    datasets.record(conn, blocks, files, "test")


def _close_poll(view: closer.SqlCloserView, pids: set[int]) -> closer.Plan:
    """The closer's event path for a poll of jobs that reached a final state."""
    b = view.blocks_of_jobs(pids)
    b.final_jobs |= pids
    p = closer.plan(b)
    if p:
        view.apply(p)
    return p


def test_counters_survive_redelivery_and_a_mix_of_ready_and_failed(cfg):
    with db.connect(cfg, autocommit=True) as conn:
        _record_jobs(conn, range(1, 5))
        _record_jobs(conn, range(1, 5))                      # the setupper's poll redelivered
        _record_jobs(conn, range(3, 6))                      # overlapping: only job 5 is new
        assert _counters(conn, SUB) == _counters(conn, DEST) == (10, 0, 0)

        ready = [(block, pid, f"f{pid}.{kind}") for pid in (1, 2) for kind in ("output", "log")
                 for block in (SUB, DEST)]
        datasets.set_files_status_many(conn, ready, "ready")
        datasets.set_files_status_many(conn, ready, "ready")  # the adder's poll redelivered
        assert _counters(conn, SUB) == (10, 4, 0)

        datasets.set_files_status(conn, SUB, "failed", pandaids=[3])
        datasets.set_files_status(conn, SUB, "failed", pandaids=[3])
        assert _counters(conn, SUB) == (10, 4, 2)
        datasets.set_files_status(conn, SUB, "ready", pandaids=[3], lfns=["f3.log"])   # failed → ready moves both
        assert _counters(conn, SUB) == (10, 5, 1)
        datasets.set_files_status(conn, SUB, "failed", pandaids=[1], lfns=["f1.log"])   # ready → failed too
        assert _counters(conn, SUB) == (10, 4, 2)
        for name in (SUB, DEST):
            assert _counters(conn, name) == _truth(conn, name)


def test_dispatch_block_counts_its_arrived_inputs(cfg):
    with db.connect(cfg, autocommit=True) as conn:
        files = [BlockFile(dataset=DIS, pandaid=pid, lfn=f"in{pid}", type="input", status="pending") for pid in (1, 2)]
        datasets.record(conn, [Block(name=DIS, type="dispatch")], files, "test")
        assert _counters(conn, DIS) == (2, 0, 0)
        datasets.complete_dispatch(conn, [DIS])
        datasets.complete_dispatch(conn, [DIS])
        assert _counters(conn, DIS) == (2, 2, 0) == _truth(conn, DIS)
        assert datasets.get(conn, DIS)["status"] == "completed"


def test_the_sub_block_closes_exactly_when_its_last_file_settles(cfg):
    with db.connect(cfg, autocommit=True) as conn:
        _record_jobs(conn, range(1, 5))
        view = closer.SqlCloserView(cfg, conn)

        def register(pid: int) -> None:
            datasets.set_files_status_many(conn, [(b, pid, f"f{pid}.{k}") for b in (SUB, DEST)
                                                  for k in ("output", "log")], "ready")

        register(1)
        register(2)
        assert not _close_poll(view, {1, 2}).close_subs, "jobs 3 and 4 are still running"
        # job 3 ended without registering its files: the closer fails them, the sub stays open for job 4
        p = _close_poll(view, {3})
        assert {f.pandaid for f in p.fail} == {3} and not p.close_subs
        assert _counters(conn, SUB) == (8, 4, 2) and datasets.statuses(conn, [SUB]) == {SUB: "defined"}
        assert not _close_poll(view, {1, 2, 3}), "a redelivered poll changes nothing"
        register(4)
        p = _close_poll(view, {4})
        assert p.close_subs == (SUB,) and p.close_destinations == (DEST,)
        assert datasets.statuses(conn, [SUB, DEST]) == {SUB: "closed", DEST: "closed"}
        assert not _close_poll(view, {4}), "closed once"
        for name in (SUB, DEST):
            assert _counters(conn, name) == _truth(conn, name) == (8, 6, 2)


def test_a_destination_waits_for_every_unclosed_sub(cfg):
    other = f"{DEST}_sub000008"
    with db.connect(cfg, autocommit=True) as conn:
        _record_jobs(conn, range(1, 2))
        datasets.record(conn, [Block(name=other, type="sub", parent=DEST)],
                        [BlockFile(dataset=other, pandaid=9, lfn="g9", type="output", status="unknown")], "test")
        view = closer.SqlCloserView(cfg, conn)
        datasets.set_files_status_many(conn, [(b, 1, f"f1.{k}") for b in (SUB, DEST) for k in ("output", "log")],
                                       "ready")
        p = _close_poll(view, {1})
        assert p.close_subs == (SUB,) and not p.close_destinations, f"{other} is still open"
        datasets.set_files_status_many(conn, [(other, 9, "g9")], "ready")
        p = _close_poll(view, {9})
        assert p.close_subs == (other,) and p.close_destinations == (DEST,)


def test_a_file_of_a_job_that_ended_unseen_is_left_to_the_sweep(cfg):
    """The event path reads only the files of the jobs that ended: a file of another job that is over but
    whose end the closer has not seen (it ended before its files were recorded) keeps the sub open until the
    sweep, which reads every unsettled file of the open subs and the jobs' states, fails it and closes."""
    with db.connect(cfg, autocommit=True) as conn:
        _record_jobs(conn, range(1, 3))
        view = closer.SqlCloserView(cfg, conn)
        datasets.set_files_status_many(conn, [(b, 1, f"f1.{k}") for b in (SUB, DEST) for k in ("output", "log")],
                                       "ready")
        assert not _close_poll(view, {1}).close_subs, "job 2's files are open"
        b = view.open_blocks()
        b.final_jobs.add(2)        # what the jobs projection would say of job 2 (no jobs row in this test)
        p = closer.plan(b)
        assert {f.pandaid for f in p.fail} == {2} and p.close_subs == (SUB,) and p.close_destinations == (DEST,)
        view.apply(p)
        assert datasets.statuses(conn, [SUB, DEST]) == {SUB: "closed", DEST: "closed"}
        assert _counters(conn, SUB) == _truth(conn, SUB) == (4, 2, 2)
