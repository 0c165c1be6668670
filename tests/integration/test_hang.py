"""The hang the chaos runs found (docs/reliability.md), reproduced on the real broker and database.

* A group member that leaves in the middle of a join (a component restarted during a database outage
  exits seconds after it subscribed) left the embedded broker's group without an assignment for good: every
  later member waited in the join and nothing was consumed. The consumer now lets the join finish first.
* A service whose database connection is killed in the middle of a batch rode nothing out: the loop
  exited. It now seeks back, backs off and decides the batch again, so the work completes.
"""

from __future__ import annotations

import functools
import threading

import psycopg
from helpers import wait_until

from core import bus, db
from core.bus import CommandSender
from core.ledger import Ledger
from projections.queries import partition_snapshot
from projections.runner import ProjectionRunner
from schemas.jobspec import JobSpec
from schemas.messages import Submit
from services.loop import Action, ServiceLoop


def test_a_member_leaving_mid_join_does_not_wedge_the_group(cfg):
    cfg = cfg.replace(kafka={"client": "confluent"})
    group = f"{cfg.kafka.group_prefix}-midjoin"
    producer = bus.producer(cfg)
    try:
        for i in range(4):
            producer.send(cfg.kafka.events_topic, b"x", key=str(i).encode())
        producer.flush()
    finally:
        producer.close()
    first = bus.consumer(cfg, cfg.kafka.events_topic, group_id=group)
    first.poll(timeout_ms=100)
    assert not first.assignment()        # still joining
    first.close()                        # leaves: before the fix, in the middle of the join
    second = bus.consumer(cfg, cfg.kafka.events_topic, group_id=group)
    try:
        got = wait_until(lambda: second.poll(timeout_ms=500), 90, 0, "records for the next member of the group")
        assert sum(len(m) for m in got.values()) > 0
    finally:
        second.close()


class Recorder:
    """Writes one row per submitted job through its own connection, as the adder's view does."""

    name = "recorder"

    def __init__(self, cfg, kill_at: int):
        self.db = db.Reconnecting(cfg)
        self.admin = cfg.db.url
        self.kill_at = kill_at
        self.seen = 0
        self.killed = threading.Event()
        self.db.run(lambda c: c.execute("CREATE TABLE IF NOT EXISTS hang_recorded (pandaid bigint PRIMARY KEY)"))

    def wants(self, event) -> bool:
        return getattr(event, "to_state", None) == "defined"

    def decide(self, event, view):
        return [Action(label=f"record {event.PandaID}", steps=(functools.partial(self.record, event.PandaID),))]

    def record(self, pandaid: int) -> None:
        self.seen += 1
        if self.seen >= self.kill_at and not self.killed.is_set():
            self.killed.set()             # the server drops this connection in the middle of the batch
            with psycopg.connect(self.admin, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (self.db.conn.info.backend_pid,))
        self.db.conn.execute("INSERT INTO hang_recorded VALUES (%s) ON CONFLICT DO NOTHING", (pandaid,))


def test_a_database_connection_killed_mid_batch_does_not_stop_the_work(cfg, background):
    background.run(Ledger(cfg, instance="t", snapshot=partition_snapshot), "ledger")
    background.run(ProjectionRunner(cfg), "projector")
    recorder = Recorder(cfg, kill_at=5)
    loop = ServiceLoop(cfg, recorder, None)
    background.run(loop, "recorder")
    ids = list(range(7001, 7021))
    sender = CommandSender(cfg)
    sender.send_many([Submit(PandaID=i, actor="test", job=JobSpec(computingSite="LOCAL")) for i in ids])
    sender.flush()
    sender.close()

    def recorded() -> bool:
        with db.connect(cfg) as conn:
            return conn.execute("SELECT count(*) FROM hang_recorded").fetchone()[0] == len(ids)

    wait_until(recorded, 90, 0.2, "every job recorded")
    assert recorder.killed.is_set()
    recorder.db.close()
