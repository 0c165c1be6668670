"""Projections against the real broker and database: content, redelivery no-op, rebuild equality."""

from __future__ import annotations

import pytest
from conftest import BOTH_CLIENTS
from helpers import wait_until

from core import db
from core.bus import CommandSender
from core.ledger import Ledger
from projections.queries import partition_snapshot
from projections.runner import ProjectionRunner
from schemas.jobspec import FileSpec, JobSpec
from schemas.messages import Kill, PilotUpdate, Submit, Transition

# every test here runs with kafka-python and with confluent-kafka behind core.bus
pytestmark = pytest.mark.parametrize("kafka_client", BOTH_CLIENTS, indirect=True)

TABLES = {
    "jobs": "SELECT * FROM jobs ORDER BY pandaid",
    "files": "SELECT * FROM files ORDER BY pandaid, type, lfn",
    "job_events": "SELECT * FROM job_events ORDER BY pandaid, seq",
}


def dump(cfg) -> dict[str, list]:
    with db.connect(cfg) as conn:
        return {name: conn.execute(sql).fetchall() for name, sql in TABLES.items()}


def flow_commands(n: int = 30) -> list:
    cmds = []
    for pid in range(500, 500 + n):
        files = [FileSpec(lfn=f"in.{pid}", type="input", dataset="ds.in", status="ready"),
                 FileSpec(lfn=f"out.{pid}", type="output", destinationDBlock="ds.out_sub01"),
                 FileSpec(lfn=f"log.{pid}", type="log", destinationDBlock="ds.log_sub01")]
        cmds.append(Submit(PandaID=pid, actor="user:test",
                           job=JobSpec(computingSite="LOCAL", attemptNr=1, currentPriority=pid, Files=files)))
        cmds.append(Transition(PandaID=pid, action="activate", actor="service:setupper"))
        cmds.append(Transition(PandaID=pid, action="dispatch", actor="service:dispatcher",
                               attrs={"modificationHost": "node1"}))
        cmds.append(PilotUpdate(PandaID=pid, state="running", attempt_nr=1, actor="pilot:p1"))
        if pid % 3 == 0:
            cmds.append(Kill(PandaID=pid, code=9, actor="user:test"))     # forced: cancelled now
        else:
            cmds.append(PilotUpdate(PandaID=pid, state="finished", attempt_nr=1, actor="pilot:p1",
                                    report="{}", attrs={"pilotErrorCode": 0}))
            cmds.append(Transition(PandaID=pid, action="finish", actor="service:adder",
                                   files=[FileSpec(lfn=f"out.{pid}", type="output", status="ready",
                                                   GUID=f"g-{pid}", fsize=10, checksum="ad:0000abcd")]))
    return cmds


def positions(cfg) -> dict:
    with db.connect(cfg) as conn:
        return {(proj, part): off for proj, part, off in
                conn.execute("SELECT projection, partition, next_offset FROM consumer_positions")}


def run_projector_until(cfg, background, done) -> None:
    runner = ProjectionRunner(cfg)
    stop = background.start(runner.run, "projector")
    wait_until(done, 90, 0.2, "projection to catch up")
    background.stop(stop)
    runner.close()


def test_projection_content_redelivery_and_rebuild(cfg, background):
    ledger = Ledger(cfg, instance="p", snapshot=partition_snapshot)
    background.start(ledger.run, "ledger")
    cmds = flow_commands()
    sender = CommandSender(cfg)
    sender.send_many(cmds)
    sender.flush()
    sender.close()
    wait_until(lambda: ledger.stats["events"] + ledger.stats["rejections"] >= len(cmds), 90, 0.2)
    n_events = ledger.stats["events"]
    assert ledger.stats["rejections"] == 0
    def all_archived():
        with db.connect(cfg) as conn:
            return conn.execute("SELECT count(*) FROM job_events").fetchone()[0] == n_events
    run_projector_until(cfg, background, all_archived)
    first = dump(cfg)
    reached = positions(cfg)
    assert {proj for proj, _ in reached} == {"jobs", "files", "archive"}

    # content
    jobs = {row[0]: row for row in first["jobs"]}
    with db.connect(cfg) as conn:
        states = dict(conn.execute("SELECT pandaid, status FROM jobs").fetchall())
        files = {(r[0], r[1]): r[2] for r in conn.execute("SELECT pandaid, lfn, status FROM files")}
    assert len(jobs) == 30
    assert states[500] == "finished" and states[501] == "cancelled"    # 501 % 3 == 0: killed
    assert files[(500, "out.500")] == "ready" and files[(500, "in.500")] == "ready"
    assert files[(501, "out.501")] == "failed" and files[(501, "log.501")] == "failed"
    assert len(first["job_events"]) == n_events

    # redelivery: positions back to 0, every event applied again → nothing changes
    with db.connect(cfg) as conn:
        conn.execute("UPDATE consumer_positions SET next_offset = 0")
    run_projector_until(cfg, background, lambda: positions(cfg) == reached)
    assert dump(cfg) == first

    # rebuild: drop the rows and positions, replay from offset 0 → identical content
    with db.connect(cfg) as conn:
        conn.execute("TRUNCATE jobs, files, job_events, consumer_positions")
    run_projector_until(cfg, background, lambda: positions(cfg) == reached)
    assert dump(cfg) == first
