"""The reactors host (services/host.py) on the real broker and database: several services over one consumer,
each event decided once per service, positions kept per service, a crash redelivering without duplicate effects."""

from __future__ import annotations

import json
from collections import Counter

import psycopg
import pytest
from conftest import BOTH_CLIENTS
from fakes import HostCrash, RecordingService
from helpers import all_events, wait_for_no_lag, wait_until

from cli.deadletters import parse_ids, retry
from cli.deadletters import rows as deadletters_rows
from core import bus, db
from core.bus import CommandSender, TopicPartition
from core.ledger import Ledger
from projections import queries
from projections.jobs import JobsProjection
from projections.queries import partition_snapshot
from projections.runner import ProjectionRunner
from schemas.jobspec import FileSpec, JobSpec
from schemas.messages import PilotUpdate, Submit, Transition
from services import host
from services.dead_letters import dead_letters
from services.loop import Member
from services.sitedata import configurator

QUEUES = """
[defaults]
vo = "local"
[queues.HOSTQ]
cloud = "X"
plugin = "dummy"
endpoints = ["HQ_DISK"]
"""
HOSTED = ["setupper", "activator", "adder", "closer", "retrier"]


def send(cfg, cmds) -> None:
    s = CommandSender(cfg)
    s.send_many(cmds)
    s.flush()
    s.close()


def submits(pids, **kw) -> list[Submit]:
    return [Submit(PandaID=pid, actor="test", job=JobSpec(prodSourceLabel="managed", **kw)) for pid in pids]


def hosting(cfg, background, services, name="host") -> host.ServiceHost:
    h = host.ServiceHost(cfg, [Member(s, None) for s in services])
    background.run(h, name)
    return h


def started_until_crash(cfg, background, members) -> None:
    """A host that dies of ``HostCrash`` in the middle of a batch: nothing after the crash runs (no flush, no
    commit); its consumer is closed as a dead process's connection would be."""
    h = host.ServiceHost(cfg, members)

    def run(stop):
        try:
            h.run(stop)
        except HostCrash:
            pass
        finally:
            h.consumer.close()
            h.sender.close()
            for m in members:
                if m.close is not None:
                    m.close()
    return background.start(run, "crashing host")


def test_each_service_decides_each_event_once_while_another_waits(cfg, background):
    background.run(Ledger(cfg, instance="h", snapshot=partition_snapshot), "ledger")
    steady = RecordingService("steady")
    flaky = RecordingService("flaky", fail_once=[3, 7])        # the jobs projection behind, say
    hosting(cfg, background, [flaky, steady])
    pids = list(range(1, 21))
    send(cfg, submits(pids))
    wait_until(lambda: len(steady.decided) >= 20 and len(flaky.decided) >= 20, 60, 0.1, "both decided everything")
    wait_for_no_lag(cfg, f"{cfg.kafka.group_prefix}-reactors", cfg.kafka.events_topic)
    # one decoded event, one decision per service: the service that was not held back decided nothing twice
    assert sorted(steady.decided) == [(pid, 1) for pid in pids]
    assert Counter(flaky.decided) == Counter((pid, 1) for pid in pids)


def test_a_crash_mid_batch_redelivers_what_a_service_had_not_done(cfg, background):
    background.run(Ledger(cfg, instance="h", snapshot=partition_snapshot), "ledger")
    first, late = RecordingService("first"), RecordingService("late", crash_when=lambda e: e.PandaID == 5)
    stopped = started_until_crash(cfg, background, [Member(first, None), Member(late, None)])
    send(cfg, submits(range(1, 11)))
    wait_until(lambda: (5, 1) in first.decided, 60, 0.1, "the first service decided job 5")
    background.stop(stopped)
    assert (5, 1) not in late.decided
    again_first, again_late = RecordingService("first"), RecordingService("late")
    hosting(cfg, background, [again_first, again_late], "restarted host")
    wait_until(lambda: {p for p, _ in late.decided + again_late.decided} >= set(range(1, 11)), 60, 0.1,
               "every job decided by the late service")
    wait_for_no_lag(cfg, f"{cfg.kafka.group_prefix}-reactors", cfg.kafka.events_topic)
    assert (5, 1) in again_late.decided          # the event the crash interrupted came again
    assert {p for p, _ in first.decided + again_first.decided} == set(range(1, 11))


def test_a_new_host_group_starts_where_its_services_groups_were(cfg, background):
    background.run(Ledger(cfg, instance="h", snapshot=partition_snapshot), "ledger")
    send(cfg, submits(range(1, 13)))
    wait_until(lambda: len(all_events(cfg)) >= 12, 60, 0.2, "12 events")
    events = all_events(cfg)
    # the services had run in groups of their own: "a" up to the 2nd event of each partition, "b" further
    firsts: dict[int, list[int]] = {}
    for p, offset, _ in events:
        firsts.setdefault(p, []).append(offset)
    a_at = {TopicPartition(cfg.kafka.events_topic, p): offs[min(1, len(offs) - 1)] for p, offs in firsts.items()}
    b_at = {tp: off + 1 for tp, off in a_at.items()}
    for group, offsets in ((f"{cfg.kafka.group_prefix}-a", a_at), (f"{cfg.kafka.group_prefix}-b", b_at)):
        c = bus.consumer(cfg, group_id=group)
        c.commit(offsets)
        c.close()
    a, b = RecordingService("a"), RecordingService("b")
    hosting(cfg, background, [a, b])
    want = {(e.PandaID, e.seq) for p, offset, e in events if offset >= a_at[TopicPartition(cfg.kafka.events_topic, p)]}
    wait_until(lambda: set(a.decided) >= want, 60, 0.1, "the events from the smallest service position on")
    wait_for_no_lag(cfg, f"{cfg.kafka.group_prefix}-reactors", cfg.kafka.events_topic)
    assert set(a.decided) == want and set(b.decided) == want


def test_an_event_that_does_not_decode_is_a_dead_letter_of_each_service_and_the_rest_flows(cfg, background):
    background.run(Ledger(cfg, instance="h", snapshot=partition_snapshot), "ledger")
    a, b = RecordingService("a"), RecordingService("b", fail_once=[4], error=ValueError)   # b cannot decide 4
    hosting(cfg, background, [a, b])
    producer = bus.producer(cfg)
    try:
        producer.send(cfg.kafka.events_topic, b"not an event", key=b"0", partition=0)
        producer.flush()
    finally:
        producer.close()
    send(cfg, submits(range(1, 9)))
    wait_until(lambda: len(a.decided) >= 8 and len(b.decided) >= 7, 60, 0.1, "both went on")
    wait_for_no_lag(cfg, f"{cfg.kafka.group_prefix}-reactors", cfg.kafka.events_topic)
    with db.connect(cfg) as conn:
        letters = dead_letters(conn)
    assert Counter(r["service"] for r in letters) == {"a": 1, "b": 2}
    assert [r["pandaid"] for r in letters if r["service"] == "b" and r["pandaid"] is not None] == [4]
    assert sorted(a.decided) == [(pid, 1) for pid in range(1, 9)] and (4, 1) not in b.decided


# ------------------------------------------------------------------------------- the real reactors
def job(pid: int, jobset: int) -> JobSpec:
    files = [FileSpec(lfn=f"out.{pid}", type="output", dataset="host.out", scope="test"),
             FileSpec(lfn=f"log.{pid}", type="log", dataset="host.log", scope="test")]
    return JobSpec(computingSite="HOSTQ", prodSourceLabel="managed", jobsetID=jobset, attemptNr=1, maxAttempt=3,
                   Files=files)


def report(pid: int) -> str:
    return json.dumps({f"out.{pid}": {"guid": f"g-{pid}", "fsize": 42, "adler32": "01020304"},
                       f"log.{pid}": {"guid": f"l-{pid}", "fsize": 7, "adler32": "0a"}})


def rows(cfg, sql, params=None) -> list[dict]:
    with db.connect(cfg) as conn:
        return db.fetch_all(conn, sql, params)


def statuses(cfg) -> dict[int, str]:
    return {r["pandaid"]: r["status"] for r in rows(cfg, "SELECT pandaid, status FROM jobs")}


def test_the_reactors_run_the_flow_and_a_crash_of_the_host_duplicates_no_effect(cfg, background, tmp_path):
    qfile = tmp_path / "queues.toml"
    qfile.write_text(QUEUES)
    cfg = cfg.replace(sites={"file": str(qfile), "cache_ttl": 0.5}, plugins={"default": "dummy"},
                      activator={"period": 0.5}, closer={"tick": 1.0}, adder={"tick": 1.0},
                      setupper={"configure_at_start": False})
    configurator.configure(cfg)
    background.run(Ledger(cfg, instance="h", snapshot=partition_snapshot), "ledger")
    background.run(ProjectionRunner(cfg), "projector")

    # the first host dies in the middle of the batch holding the first final event, after every real service
    # acted on that batch (the crashing service is hosted last) and before anything of it was committed
    crasher = RecordingService("crasher", crash_when=lambda e: e.to_state in ("finished", "failed"))
    members = [host.member(cfg, n) for n in HOSTED] + [Member(crasher, None)]
    stopped = started_until_crash(cfg, background, members)
    ok, bad = [11, 12, 13, 14], [21, 22]
    send(cfg, [Submit(PandaID=pid, actor="test", job=job(pid, 7 if pid in ok else 8)) for pid in ok + bad])
    wait_until(lambda: all(statuses(cfg).get(p) == "activated" for p in ok + bad), 60, 0.2, "activated by the setupper")
    cmds: list = []
    for pid in ok + bad:
        cmds += [Transition(PandaID=pid, action="dispatch", actor="test"),
                 PilotUpdate(PandaID=pid, state="running", attempt_nr=1, actor="pilot:t")]
    cmds += [PilotUpdate(PandaID=pid, state="finished", attempt_nr=1, actor="pilot:t", report=report(pid))
             for pid in ok]
    cmds += [PilotUpdate(PandaID=pid, state="failed", attempt_nr=1, actor="pilot:t", report="{}",
                         attrs={"pilotErrorCode": 1305}) for pid in bad]
    send(cfg, cmds)
    wait_until(lambda: crasher.crash_when is None, 60, 0.1, "the host crashed")
    background.stop(stopped)
    restarted = host.ServiceHost(cfg, [host.member(cfg, n) for n in HOSTED])
    background.run(restarted, "restarted host")

    def settled():
        st = statuses(cfg)
        retries = rows(cfg, "SELECT old_pandaid, new_pandaid FROM retries ORDER BY old_pandaid")
        return (all(st.get(p) == "finished" for p in ok) and all(st.get(p) == "failed" for p in bad)
                and len(retries) == 2 and all(st.get(r["new_pandaid"]) == "activated" for r in retries)
                and retries)
    retries = wait_until(settled, 90, 0.3, "finished, failed and retried")
    wait_for_no_lag(cfg, f"{cfg.kafka.group_prefix}-reactors", cfg.kafka.events_topic)

    # each effect once: one retry per failed job (one new PandaID, one Submit event), one event per transition
    assert [r["old_pandaid"] for r in retries] == bad
    new_ids = [r["new_pandaid"] for r in retries]
    parents = {r["pandaid"]: r["spec"].get("parentID")
               for r in rows(cfg, "SELECT pandaid, spec FROM jobs WHERE pandaid = ANY(%s)", (new_ids,))}
    assert parents == dict(zip(new_ids, bad, strict=True))
    events = rows(cfg, "SELECT pandaid, action, to_state FROM job_events")
    per_job = Counter((e["pandaid"], e["action"]) for e in events)
    assert [k for k, n in per_job.items() if n > 1] == []
    assert sum(1 for e in events if e["action"] == "submit") == len(ok + bad) + len(bad)
    assert {e["pandaid"] for e in events if e["action"] == "finish"} == set(ok)
    # the closer's effects of the final events of the interrupted batch are there (the finished jobs' sub blocks;
    # the failed jobs' blocks wait for their retries)
    subs = {r["name"]: r["status"] for r in rows(cfg, "SELECT name, status FROM datasets WHERE type = 'sub'")}
    assert subs.keys() >= {"host.out_sub000007", "host.log_sub000007"}
    wait_until(lambda: all(r["status"] == "closed" for r in rows(
        cfg, "SELECT status FROM datasets WHERE name LIKE '%_sub000007'")), 60, 0.3, "the finished jobs' blocks closed")
    assert restarted.stats["events"] > 0 and {h.name for h in restarted.hosted} == set(HOSTED)


# ------------------------------------------------------------------------------- the projections hosted too
# (on both Kafka clients: the host seeks, reads committed offsets and handles assignments through the port)
both_clients = pytest.mark.parametrize("kafka_client", BOTH_CLIENTS, indirect=True)

class ProjectedCheck(RecordingService):
    """Remembers, for each event decided, whether the jobs projection already showed it (its row at that seq)."""

    def __init__(self, name: str, cfg):
        super().__init__(name)
        self.cfg = cfg
        self.unprojected: list[tuple[int, int]] = []

    def decide(self, event, view) -> list:
        with db.connect(self.cfg) as conn:
            row = conn.execute("SELECT seq FROM jobs WHERE pandaid = %s", (event.PandaID,)).fetchone()
        if row is None or row[0] < event.seq:
            self.unprojected.append((event.PandaID, event.seq))
        return super().decide(event, view)


class FailingOnce:
    """The jobs projection, whose first ``apply`` finds the database gone (a transient error, as a restart gives)."""

    def __init__(self):
        self.inner = JobsProjection()
        self.name, self.tables = self.inner.name, self.inner.tables
        self.failed = 0

    def apply(self, conn, records) -> None:
        if not self.failed:
            self.failed += 1
            raise psycopg.OperationalError("the database went away (test)")
        self.inner.apply(conn, records)


def projecting(cfg, background, services, name="host", projections=None) -> host.ServiceHost:
    runner = ProjectionRunner(cfg, projections, consume=False)
    h = host.ServiceHost(cfg, [Member(s, None) for s in services], projector=runner)
    background.run(h, name)
    return h


def jobs_seq(cfg) -> dict[int, int]:
    return {r["pandaid"]: r["seq"] for r in rows(cfg, "SELECT pandaid, seq FROM jobs")}


@both_clients
def test_the_host_applies_the_projections_before_its_services_decide_over_one_consumer(cfg, background):
    background.run(Ledger(cfg, instance="h", snapshot=partition_snapshot), "ledger")
    seer = ProjectedCheck("seer", cfg)
    h = projecting(cfg, background, [seer])
    pids = list(range(1, 21))
    send(cfg, submits(pids))
    wait_until(lambda: len(seer.decided) >= 20, 60, 0.1, "every event decided")
    wait_for_no_lag(cfg, f"{cfg.kafka.group_prefix}-reactors", cfg.kafka.events_topic)
    assert sorted(seer.decided) == [(pid, 1) for pid in pids]
    assert seer.unprojected == []                    # each event was in the projection when the service saw it
    assert jobs_seq(cfg) == {pid: 1 for pid in pids}
    with db.connect(cfg) as conn:                     # the positions stored with the rows reached the log's end
        stored = {p: off for proj, p, off in queries.positions(conn, cfg.kafka.events_topic) if proj == "jobs"}
    ends = {p: off + 1 for p, off, _ in all_events(cfg)}
    assert all(stored.get(p, 0) >= end for p, end in ends.items())
    admin = bus.admin(cfg)
    try:                                              # no reader of the events topic but the host's group
        assert admin.committed_offsets(f"{cfg.kafka.group_prefix}-projector") == {}
    finally:
        admin.close()
    assert "projections" in h.cpu_report()


@both_clients
def test_a_restarted_host_projects_from_its_stored_positions_and_decides_from_its_commit(cfg, background):
    background.run(Ledger(cfg, instance="h", snapshot=partition_snapshot), "ledger")
    first = RecordingService("rec")
    h1 = host.ServiceHost(cfg, [Member(first, None)], projector=ProjectionRunner(cfg, consume=False))
    stop_first = background.run(h1, "first host")
    send(cfg, submits(range(1, 11)))
    wait_until(lambda: len(first.decided) >= 10, 60, 0.1, "the first host decided the first jobs")
    wait_for_no_lag(cfg, f"{cfg.kafka.group_prefix}-reactors", cfg.kafka.events_topic)
    background.stop(stop_first)
    # the projections lost what they had applied (their commits are asynchronous: a database crash loses the last
    # ones, rows and positions together); the group's commit stands
    with db.connect(cfg) as conn:
        conn.execute("TRUNCATE jobs")
        conn.execute("DELETE FROM consumer_positions WHERE projection = 'jobs'")
        conn.commit()
    send(cfg, submits(range(11, 16)))
    second = RecordingService("rec")
    projecting(cfg, background, [second], "second host", projections=[JobsProjection()])
    wait_until(lambda: len(jobs_seq(cfg)) >= 15 and len(second.decided) >= 5, 60, 0.1,
               "the projection refilled and the new jobs decided")
    wait_for_no_lag(cfg, f"{cfg.kafka.group_prefix}-reactors", cfg.kafka.events_topic)
    assert jobs_seq(cfg) == {pid: 1 for pid in range(1, 16)}       # re-applied from its own position, 0
    assert sorted(second.decided) == [(pid, 1) for pid in range(11, 16)]   # nothing decided twice


@both_clients
def test_a_poll_the_projections_cannot_apply_is_decided_by_no_service_until_they_have(cfg, background):
    background.run(Ledger(cfg, instance="h", snapshot=partition_snapshot), "ledger")
    seer = ProjectedCheck("seer", cfg)
    failing = FailingOnce()
    h = projecting(cfg, background, [seer], projections=[failing])
    pids = list(range(1, 13))
    send(cfg, submits(pids))
    wait_until(lambda: len(seer.decided) >= 12, 60, 0.1, "every event decided")
    wait_for_no_lag(cfg, f"{cfg.kafka.group_prefix}-reactors", cfg.kafka.events_topic)
    assert failing.failed == 1 and h.stats["blocked"] >= 1
    assert sorted(seer.decided) == [(pid, 1) for pid in pids] and seer.unprojected == []
    assert jobs_seq(cfg) == {pid: 1 for pid in pids}


def test_an_event_the_hosted_projections_refuse_is_their_dead_letter_and_is_applied_again_once_fixed(cfg,
                                                                                                       background):
    background.run(Ledger(cfg, instance="h", snapshot=partition_snapshot), "ledger")
    seer = RecordingService("seer")
    projecting(cfg, background, [seer])
    send(cfg, submits([1, 2]))
    wait_until(lambda: len(seer.decided) >= 2, 60, 0.1, "the jobs submitted")
    with db.connect(cfg) as conn:         # a bad migration: the jobs table refuses a value the contract allows
        conn.execute("ALTER TABLE jobs ADD CONSTRAINT no_boom CHECK (command_to_pilot IS DISTINCT FROM 'boom')")
        conn.commit()
    send(cfg, [Transition(PandaID=1, action="set", actor="test", attrs={"commandToPilot": "boom"}),
               Transition(PandaID=2, action="set", actor="test", attrs={"currentPriority": 7})])
    wait_until(lambda: len(seer.decided) >= 4, 60, 0.1, "both events decided by the service")
    wait_for_no_lag(cfg, f"{cfg.kafka.group_prefix}-reactors", cfg.kafka.events_topic)
    with db.connect(cfg) as conn:
        letters = deadletters_rows(conn, resolved=True)
    refused = [r for r in letters if r["owner"] == "projection:jobs"]
    assert [r["pandaid"] for r in refused] == [1]                  # set aside; the poll's other event applied
    assert jobs_seq(cfg) == {1: 1, 2: 2} and sorted(seer.decided) == [(1, 1), (1, 2), (2, 1), (2, 2)]
    with db.connect(cfg) as conn:
        conn.execute("ALTER TABLE jobs DROP CONSTRAINT no_boom")
        conn.commit()
    got, waiting = retry(cfg, parse_ids([refused[0]["key"]]), wait=60)   # the host applies it at its next look
    assert waiting == [] and got[0]["resolved_at"] is not None
    assert rows(cfg, "SELECT seq, command_to_pilot FROM jobs WHERE pandaid = 1") == [
        {"seq": 2, "command_to_pilot": "boom"}]
