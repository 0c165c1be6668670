"""Watcher, adder, closer, finisher and retrier against the real broker and database.

Each test runs the ledger and the projector in-process (threads), drives jobs with commands as the
gateway would, and runs the service under test as it runs in production (its ServiceLoop, or the
daemon script's ``run_once`` with a worker ``Context``).
"""

from __future__ import annotations

import json
import time
from collections import Counter

from helpers import wait_for_no_lag, wait_until

from core import db
from core.bus import CommandSender
from core.ledger import Ledger
from projections.queries import partition_snapshot
from projections.runner import ProjectionRunner
from schemas.jobspec import FileSpec, JobSpec
from schemas.messages import Kill, PilotUpdate, Submit, Transition
from services.clock import finisher, watcher
from services.clock.daemon import Context
from services.loop import ServiceLoop
from services.reactors import datasets
from services.reactors.adder import Adder, SqlAdderView
from services.reactors.closer import Closer, SqlCloserView
from services.reactors.retrier import Retrier, RetryRules, SqlRetrierView


def start_core(cfg, background) -> None:
    background.run(Ledger(cfg, instance="t", snapshot=partition_snapshot), "ledger")
    background.run(ProjectionRunner(cfg), "projector")


def start_loop(cfg, background, service, view, tick=None, name="svc") -> ServiceLoop:
    loop = ServiceLoop(cfg, service, view, tick_every=tick)

    def run(stop):
        try:
            loop.run(stop)
        finally:
            loop.close()

    background.start(run, name)
    return loop


def start_script(cfg, background, fn, period=0.3, name="script") -> None:
    """A daemon script run every ``period`` s in a thread (the daemon's guarantees are tested elsewhere)."""
    def run(stop):
        ctx = Context(cfg)
        try:
            while not stop.wait(period):
                fn(cfg, ctx)
        finally:
            ctx.close()

    background.start(run, name)


def send(cfg, cmds) -> None:
    s = CommandSender(cfg)
    s.send_many(cmds)
    s.flush()
    s.close()


def jobs(cfg, ids) -> dict[int, dict]:
    with db.connect(cfg) as conn:
        rows = db.fetch_all(conn, "SELECT pandaid, status, seq, spec, modification_time FROM jobs"
                                  " WHERE pandaid = ANY(%s)", (list(ids),))
    return {r["pandaid"]: r for r in rows}


def wait_states(cfg, want: dict[int, str], timeout=60) -> dict[int, dict]:
    def ok():
        got = jobs(cfg, want)
        return got if all(got.get(i, {}).get("status") == s for i, s in want.items()) else None
    try:
        return wait_until(ok, timeout, 0.2, f"states {want}")
    except AssertionError:
        got = {i: r["status"] for i, r in jobs(cfg, want).items()}
        raise AssertionError(f"wanted {want}, have {got}") from None


def events(cfg, ids) -> list[dict]:
    with db.connect(cfg) as conn:
        return db.fetch_all(conn, "SELECT pandaid, seq, action, actor, from_state, to_state, time, body"
                                  " FROM job_events WHERE pandaid = ANY(%s) ORDER BY pandaid, seq", (list(ids),))


def job_spec(pid, **kw) -> JobSpec:
    files = [FileSpec(lfn=f"out.{pid}", type="output", dataset="ds.out", destinationDBlock=f"ds.out_sub{pid % 2}",
                      scope="test"),
             FileSpec(lfn=f"log.{pid}", type="log", dataset="ds.log", destinationDBlock="ds.log_sub0", scope="test")]
    return JobSpec(computingSite="LOCAL", attemptNr=1, prodSourceLabel="managed", Files=files, **kw)


def to_running(pid, **kw) -> list:
    return [Submit(PandaID=pid, actor="test", job=job_spec(pid, **kw)),
            Transition(PandaID=pid, action="activate", actor="test"),
            Transition(PandaID=pid, action="dispatch", actor="test"),
            PilotUpdate(PandaID=pid, state="running", attempt_nr=1, actor="pilot:t")]


def report(pid, *, guid=True) -> str:
    entry = {"fsize": 42, "adler32": "01020304"}
    if guid:
        entry["guid"] = f"guid-{pid}"
    return json.dumps({f"out.{pid}": entry, f"log.{pid}": {"guid": f"lg-{pid}", "fsize": 7, "adler32": "0a"}})


# ----------------------------------------------------------------------------------------- watcher
# long enough that a job heartbeating every 0.3 s is never mistaken for lost while the projection lags
HEARTBEAT_TIMEOUT = 5
def test_watcher_applies_each_timeout_rule(cfg, background):
    cfg = cfg.replace(watcher={"heartbeat_timeout": HEARTBEAT_TIMEOUT, "sent_timeout": 1.5, "holding_timeout": 1.5,
                               "defined_timeout": 1.5, "pending_timeout": 1.5, "waiting_timeout": 1.5,
                               "activated_timeout": 1.5, "throttled_timeout": 1.5})
    start_core(cfg, background)
    cmds = [*to_running(1), *to_running(2),                                          # 1 dies, 2 heartbeats
            *to_running(3)[:3],                                                      # 3 sent
            *to_running(4), PilotUpdate(PandaID=4, state="transferring", attempt_nr=1, actor="pilot:t"),
            *to_running(5), PilotUpdate(PandaID=5, state="holding", attempt_nr=1, actor="pilot:t"),
            Submit(PandaID=6, actor="test", job=job_spec(6)),                        # defined
            Submit(PandaID=7, actor="test", job=job_spec(7), to="pending"),
            Submit(PandaID=8, actor="test", job=job_spec(8), to="waiting"),
            *to_running(9)[:2],                                                      # activated
            *to_running(10)[:2], Transition(PandaID=10, action="throttle", actor="test")]
    send(cfg, cmds)
    wait_states(cfg, {1: "running", 2: "running", 3: "sent", 4: "transferring", 5: "holding", 6: "defined",
                      7: "pending", 8: "waiting", 9: "activated", 10: "throttled"})
    # fresh heartbeats, then the watcher starts: job 1 must fail within timeout + one period
    def heartbeat(stop):
        sender = CommandSender(cfg)      # one producer: creating one per beat can take longer than the timeout
        try:
            while not stop.wait(0.3):
                sender.send(PilotUpdate(PandaID=2, state="running", attempt_nr=1, actor="pilot:t"))
                sender.flush()
        finally:
            sender.close()
    last_beat = PilotUpdate(PandaID=1, state="running", attempt_nr=1, actor="pilot:t")
    t0 = last_beat.time     # the heartbeat's own time is what the watcher measures from
    # job 2 ran since the commands above (seconds ago on a loaded machine): its first heartbeat must be in the
    # projection before the watcher's first pass, whenever the heartbeat thread gets going
    send(cfg, [last_beat, PilotUpdate(PandaID=2, state="running", attempt_nr=1, actor="pilot:t")])
    background.start(heartbeat, "heartbeat")
    wait_until(lambda: jobs(cfg, [2])[2]["seq"] >= 5, 30, 0.1, "job 2's first heartbeat in the projection")
    period = 0.5
    start_script(cfg, background, watcher.run_once, period, "watcher")
    final = wait_states(cfg, {1: "failed", 3: "failed", 4: "failed", 5: "failed", 6: "closed", 7: "closed",
                              8: "closed", 9: "closed", 10: "closed"}, timeout=30)
    codes = {pid: (final[pid]["spec"].get("jobDispatcherErrorCode"), final[pid]["spec"].get("taskBufferErrorCode"))
             for pid in final}
    assert codes[1][0] == 100 and final[1]["spec"]["jobDispatcherErrorDiag"].startswith("lost heartbeat")
    assert codes[3][0] == 102 and codes[4][0] == 104 and codes[5][0] == 103
    assert all(codes[p][1] == 102 for p in (6, 7, 8, 9, 10)), codes          # EC_Expire from kill codes 2 / 4
    kills = {e["pandaid"]: e["body"].get("kill_code") for e in events(cfg, range(6, 11)) if e["to_state"] == "closed"}
    assert kills == {6: 2, 7: 4, 8: 4, 9: 2, 10: 2}
    assert jobs(cfg, [2])[2]["status"] == "running", "a job that heartbeats must not be touched"
    failed_at = next(e["time"].timestamp() for e in events(cfg, [1]) if e["to_state"] == "failed")
    took = failed_at - t0
    print(f"lost heartbeat: failed {took:.2f}s after the last heartbeat (timeout {HEARTBEAT_TIMEOUT} s, "
          f"period {period} s)")
    # timeout + one period, plus slack for the projection's lag on a loaded 2-core machine
    assert HEARTBEAT_TIMEOUT <= took <= HEARTBEAT_TIMEOUT + period + 3, f"lost heartbeat detected after {took:.2f}s"
    actors = {e["actor"] for e in events(cfg, range(1, 11)) if e["to_state"] in ("failed", "closed")}
    assert actors == {"service:watcher"}


# ------------------------------------------------------------------------------ adder and closer
def test_adder_outcomes_two_copies_and_closer(cfg, background):
    cfg = cfg.replace(plugins={"default": "fakes:FlakyPlugin"}, adder={"retry_delay": 0.5, "tick": 0.3})
    start_core(cfg, background)
    ok_ids = list(range(100, 120))
    bad, killed, flaky = 200, 201, 202
    all_ids = [*ok_ids, bad, killed, flaky]
    # the blocks the setupper would have recorded: two sub blocks of ds.out, one of ds.log
    with db.connect(cfg, autocommit=True) as conn:
        blocks = [datasets.Block(name="ds.out", type="destination"), datasets.Block(name="ds.log", type="destination"),
                  datasets.Block(name="ds.out_sub0", type="sub", parent="ds.out"),
                  datasets.Block(name="ds.out_sub1", type="sub", parent="ds.out"),
                  datasets.Block(name="ds.log_sub0", type="sub", parent="ds.log")]
        files = [datasets.BlockFile(dataset=f"ds.out_sub{pid % 2}", pandaid=pid, lfn=f"out.{pid}", type="output",
                                    status="unknown") for pid in all_ids]
        files += [datasets.BlockFile(dataset="ds.log_sub0", pandaid=pid, lfn=f"log.{pid}", type="log",
                                     status="unknown") for pid in all_ids]
        datasets.record(conn, blocks, files, actor="test")
    views = [SqlAdderView(cfg), SqlAdderView(cfg)]
    loops = [start_loop(cfg, background, Adder(), v, tick=0.3, name=f"adder-{i}") for i, v in enumerate(views)]
    closer_view = SqlCloserView(cfg)
    start_loop(cfg, background, Closer(), closer_view, tick=1.0, name="closer")
    wait_until(lambda: all(lp.consumer.assignment() for lp in loops), 60, 0.2, "both adders own partitions")

    cmds = []
    for pid in all_ids:
        cmds += to_running(pid)
    cmds += [Kill(PandaID=killed, actor="user:test")]                    # running: only tobekilled
    send(cfg, cmds)
    wait_states(cfg, {pid: "running" for pid in all_ids})
    wait_until(lambda: jobs(cfg, [killed])[killed]["spec"].get("commandToPilot") == "tobekilled", 30, 0.2)
    finals = [PilotUpdate(PandaID=pid, state="finished", attempt_nr=1, actor="pilot:t", report=report(pid))
              for pid in ok_ids]
    finals += [PilotUpdate(PandaID=bad, state="finished", attempt_nr=1, actor="pilot:t",
                           report=report(bad, guid=False)),
               PilotUpdate(PandaID=killed, state="failed", attempt_nr=1, actor="pilot:t", report="{}",
                           attrs={"pilotErrorCode": 1144}),
               PilotUpdate(PandaID=flaky, state="finished", attempt_nr=1, actor="pilot:t",
                           report=json.dumps({f"out.{flaky}": {"guid": "g", "fsize": 1, "adler32": "1"},
                                              f"log.{flaky}": {"guid": "l", "fsize": 1, "adler32": "1"}}))]
    send(cfg, finals)
    want = {pid: "finished" for pid in ok_ids} | {bad: "failed", killed: "cancelled", flaky: "finished"}
    got = wait_states(cfg, want, timeout=60)

    assert got[bad]["spec"]["ddmErrorCode"] == 200
    assert "Could not get GUID/LFN/MD5/FSIZE/SURL from pilot JSON" in got[bad]["spec"]["ddmErrorDiag"]
    with db.connect(cfg) as conn:
        f = db.fetch_all(conn, "SELECT status, guid, fsize, checksum FROM files"
                               " WHERE pandaid = 100 AND type = 'output'")
        assert f == [{"status": "ready", "guid": "guid-100", "fsize": 42, "checksum": "ad:01020304"}]
        assert conn.execute("SELECT count(*) FROM adder_pending").fetchone()[0] == 0
    # exactly one adder decision per job although two adders ran; both took a share
    adder_events = [e for e in events(cfg, all_ids) if e["actor"] == "service:adder"]
    assert Counter(e["pandaid"] for e in adder_events) == Counter(all_ids)
    assert all(lp.stats["actions"] > 0 for lp in loops), [lp.stats for lp in loops]
    # the flaky job was deferred once (temporary plugin error) and finished on the retry
    assert f"out.{flaky}" in fake_registered()
    # closer: every sub block's files are settled → subs closed → destinations closed
    def closed():
        with db.connect(cfg) as conn:
            return dict(conn.execute("SELECT name, status FROM datasets").fetchall())
    states = wait_until(lambda: (s := closed()) and all(v == "closed" for v in s.values()) and s, 30, 0.3,
                        "all blocks closed")
    assert set(states) == {"ds.out", "ds.log", "ds.out_sub0", "ds.out_sub1", "ds.log_sub0"}
    with db.connect(cfg) as conn:
        counts = dict(conn.execute("SELECT status, count(*) FROM dataset_files GROUP BY status").fetchall())
    # bad (2 files) and killed (2 files) never registered their outputs: failed; the rest ready
    assert counts == {"ready": 2 * (len(ok_ids) + 1), "failed": 4}, counts


def fake_registered() -> set[str]:
    from fakes import FlakyPlugin

    return {lfn for _, lfn, _ in FlakyPlugin.registered}


# --------------------------------------------------------------------------------------- finisher
def test_finisher_finishes_arrived_outputs_and_fails_after_transfer_timeout(cfg, background):
    cfg = cfg.replace(plugins={"default": "fakes:FlakyPlugin"},
                      finisher={"transfer_timeout_hi": 2, "transfer_timeout_lo": 2})
    start_core(cfg, background)
    arrived, stuck = 300, 301
    cmds = []
    for pid in (arrived, stuck):
        lfn = f"out.{pid}" if pid == arrived else f"stuck.{pid}"
        spec = JobSpec(computingSite="LOCAL", attemptNr=1, currentPriority=900, prodSourceLabel="managed",
                       Files=[FileSpec(lfn=lfn, type="output", dataset="ds", destinationDBlock="ds_sub",
                                       destinationSE="REMOTE_DISK")])
        cmds += [Submit(PandaID=pid, actor="test", job=spec), *to_running(pid)[1:],
                 PilotUpdate(PandaID=pid, state="finished", attempt_nr=1, actor="pilot:t",
                             report=json.dumps({lfn: {"guid": "g", "fsize": 1, "adler32": "1"}}))]
    send(cfg, cmds)
    start_loop(cfg, background, Adder(), SqlAdderView(cfg), name="adder")
    wait_states(cfg, {arrived: "transferring", stuck: "transferring"})
    t0 = time.time()
    start_script(cfg, background, finisher.run_once, 0.3, "finisher")
    got = wait_states(cfg, {arrived: "finished", stuck: "failed"}, timeout=30)
    assert time.time() - t0 < 10
    assert got[stuck]["spec"]["taskBufferErrorCode"] == 101
    assert "transfer timeout" in got[stuck]["spec"]["taskBufferErrorDiag"]
    with db.connect(cfg) as conn:
        assert conn.execute("SELECT status FROM files WHERE pandaid = %s", (arrived,)).fetchone()[0] == "ready"
    assert {e["actor"] for e in events(cfg, [arrived, stuck]) if e["from_state"] == "transferring"} == \
        {"service:finisher"}


# ---------------------------------------------------------------------------------------- retrier
def test_failed_job_is_retried_once_as_a_new_pandaid(cfg, background):
    cfg = cfg.replace(retry={"memory_errors": ["pilot:1212"]})
    start_core(cfg, background)
    pid, last, nomore, jedi = 400, 401, 402, 403
    send(cfg, [*to_running(pid, maxAttempt=3, minRamCount=2000, jobsetID=55),
               *to_running(last, maxAttempt=1), *to_running(nomore, maxAttempt=3),
               *to_running(jedi, maxAttempt=3, jediTaskID=77)])   # JEDI retries its own jobs
    wait_states(cfg, {pid: "running", last: "running", nomore: "running", jedi: "running"})
    rules = RetryRules.from_config(cfg)
    start_loop(cfg, background, Retrier(rules), SqlRetrierView(cfg), name="retrier")
    send(cfg, [Transition(PandaID=pid, action="fail", actor="test", attrs={"pilotErrorCode": 1212}),
               Transition(PandaID=last, action="fail", actor="test", attrs={"pilotErrorCode": 1212}),
               Transition(PandaID=nomore, action="fail", actor="test", attrs={"pilotErrorCode": 1244}),
               Transition(PandaID=jedi, action="fail", actor="test", attrs={"pilotErrorCode": 1212})])

    def retried():
        with db.connect(cfg) as conn:
            return conn.execute("SELECT old_pandaid, new_pandaid FROM retries").fetchall()
    [(old, new)] = wait_until(retried, 60, 0.2, "a retry row")
    assert old == pid and new >= 1000                         # from pandaid_seq
    got = wait_states(cfg, {new: "defined"})
    spec = got[new]["spec"]
    assert spec["attemptNr"] == 2 and spec["parentID"] == pid and spec["jobsetID"] == 55
    assert spec["minRamCount"] == 3000 and spec["prodSourceLabel"] == "managed"
    wait_until(lambda: jobs(cfg, [pid])[pid]["spec"].get("taskBufferErrorCode") == 106, 30, 0.2, "old job marked")
    assert jobs(cfg, [pid])[pid]["status"] == "failed"
    with db.connect(cfg) as conn:
        lfns = {r[0] for r in conn.execute("SELECT lfn FROM files WHERE pandaid = %s", (new,))}
    assert lfns == {f"out.{pid}.2", f"log.{pid}.2"}

    # a redelivered failed event (a second retrier reading the log from the start) changes nothing
    n_jobs = len(jobs(cfg, range(0, 10**6)))
    start_loop(cfg.replace(kafka={"group_prefix": cfg.kafka.group_prefix + "b"}), background,
               Retrier(rules), SqlRetrierView(cfg), name="retrier-2")
    # it has read the whole log, the ledger judged whatever it sent, and the projection shows the outcome
    wait_for_no_lag(cfg, f"{cfg.kafka.group_prefix}b-{Retrier.name}", cfg.kafka.events_topic)
    wait_for_no_lag(cfg, f"{cfg.kafka.group_prefix}-ledger", cfg.kafka.commands_topic)
    wait_for_no_lag(cfg, f"{cfg.kafka.group_prefix}-projector", cfg.kafka.events_topic)
    assert retried() == [(pid, new)]
    assert len(jobs(cfg, range(0, 10**6))) == n_jobs
    marks = [e for e in events(cfg, [pid]) if e["action"] == "mark_retried"]
    assert len(marks) == 1
    assert jobs(cfg, [jedi])[jedi]["status"] == "failed"          # left to JEDI: no retry, no mark
    assert not [e for e in events(cfg, [jedi]) if e["action"] == "mark_retried"]
