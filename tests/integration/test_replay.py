"""Replay tools against a real broker and database, after a mixed run driven through the ledger:
verify, rebuild (side by side and in place), state-at, tail, the example JEDI consumer, and a broker
that loses its log and comes back empty (restore at start-up, nothing lost)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from helpers import wait_until

from cli import main as cli_main
from cli.rebuild import rebuild
from cli.restore import RestoreError, check_at_start, divergence, restore
from cli.stateat import state_at
from cli.tail import tail
from cli.verify import verify
from core import bus, db
from core.bus import CommandSender
from core.ledger import Ledger
from devenv.stack import Infra
from projections.queries import partition_snapshot
from projections.runner import ProjectionRunner
from schemas.jobspec import FileSpec, JobSpec
from schemas.messages import Kill, PilotUpdate, Submit, Transition

ROOT = Path(__file__).resolve().parents[2]
TABLES = {
    "jobs": "SELECT * FROM jobs ORDER BY pandaid",
    "files": "SELECT * FROM files ORDER BY pandaid, type, lfn",
    "job_events": "SELECT pandaid, seq, type, action, from_state, to_state, time, actor, command_id, partition,"
                  " body - 'src' FROM job_events ORDER BY pandaid, seq",
}


def mixed_flow(ids) -> list:
    """Finished, failed, killed, retried and still-running jobs of three JEDI tasks."""
    cmds = []
    for pid in ids:
        files = [FileSpec(lfn=f"in.{pid}", type="input", dataset="ds.in", status="ready"),
                 FileSpec(lfn=f"out.{pid}", type="output", destinationDBlock="ds.out_sub01")]
        cmds += [Submit(PandaID=pid, actor="user:test", job=JobSpec(
                     computingSite=f"SITE{pid % 2}", jediTaskID=10 + pid % 3, attemptNr=1, Files=files)),
                 Transition(PandaID=pid, action="activate", actor="service:activator"),
                 Transition(PandaID=pid, action="dispatch", actor="service:dispatcher"),
                 PilotUpdate(PandaID=pid, state="running", attempt_nr=1, actor="pilot:p"),
                 PilotUpdate(PandaID=pid, state="running", attempt_nr=1, actor="pilot:p",
                             attrs={"cpuConsumptionTime": 5})]                       # heartbeat: updated
        kind = pid % 5
        if kind == 0:
            cmds += [PilotUpdate(PandaID=pid, state="finished", attempt_nr=1, actor="pilot:p", report="{}"),
                     Transition(PandaID=pid, action="finish", actor="service:adder",
                                files=[FileSpec(lfn=f"out.{pid}", type="output", status="ready", GUID="g")])]
        elif kind == 1:
            cmds += [PilotUpdate(PandaID=pid, state="failed", attempt_nr=1, actor="pilot:p",
                                 attrs={"pilotErrorCode": 1305}),
                     Transition(PandaID=pid, action="fail", actor="service:adder")]
        elif kind == 2:
            cmds += [Kill(PandaID=pid, code=9, actor="user:test")]                    # forced: cancelled
        elif kind == 3:
            cmds += [Transition(PandaID=pid, action="fail", actor="service:watcher"),
                     Kill(PandaID=pid, code=7, actor="jedi")]                          # retried mark
        # kind 4: left running
    return cmds


def drive(cfg, cmds, ledger: Ledger) -> None:
    before = ledger.stats["events"] + ledger.stats["rejections"]
    sender = CommandSender(cfg)
    sender.send_many(cmds)
    sender.flush()
    sender.close()
    wait_until(lambda: ledger.stats["events"] + ledger.stats["rejections"] >= before + len(cmds), 90, 0.1,
               "the ledger to judge every command")
    assert ledger.stats["rejections"] == 0


def archived(cfg) -> int:
    with db.connect(cfg) as conn:
        return conn.execute("SELECT count(*) FROM job_events").fetchone()[0]


def dump(cfg, schema: str = "public", tables=tuple(TABLES)) -> dict[str, list]:
    with db.connect(cfg) as conn:
        conn.execute(f"SET search_path TO {schema}")
        return {name: conn.execute(TABLES[name]).fetchall() for name in tables}


def run_system(cfg, background):
    """Ledger and projector in threads; returns (ledger, runner, stop events)."""
    ledger = Ledger(cfg, instance="r", snapshot=partition_snapshot)
    runner = ProjectionRunner(cfg)
    # closed when stopped: a consumer left open would reconnect to a restarted broker and auto-create topics
    stops = [background.run(ledger, "ledger"), background.run(runner, "projector")]
    return ledger, runner, stops


def archive_flow(cfg, background, ids) -> int:
    """Ledger and projector run ``mixed_flow(ids)`` until the archive holds every event, then stop; the events."""
    ledger, _, stops = run_system(cfg, background)
    drive(cfg, mixed_flow(ids), ledger)
    n = ledger.stats["events"]
    wait_until(lambda: archived(cfg) == n, 60, 0.2, "the projector to catch up")
    for stop in stops:
        background.stop(stop)
    return n


def cli(cfg, monkeypatch, *argv) -> int:
    monkeypatch.setenv("PANDAES_KAFKA", cfg.kafka.bootstrap)
    monkeypatch.setenv("PANDAES_DB", cfg.db.url)
    for key, value in cfg.kafka.as_dict().items():
        if key.endswith("topic") or key == "group_prefix":
            monkeypatch.setenv(f"PANDAES_KAFKA_{key.upper()}", str(value))
    return cli_main.main(list(argv))


def jobs_by_task(cfg) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = defaultdict(dict)
    with db.connect(cfg) as conn:
        for task, status, n in conn.execute("SELECT jedi_task_id, status, count(*) FROM jobs GROUP BY 1, 2"):
            out[str(task)][status] = n
    return dict(out)


def test_verify_rebuild_state_at_tail_and_jedi_consumer(cfg, background, monkeypatch, capsys):
    n_events = archive_flow(cfg, background, range(2000, 2030))

    # verify: the log is legal and every projection is what it implies
    report = verify(cfg)
    assert report.ok, report.lines()
    assert report.events == n_events and report.jobs == 30
    assert cli(cfg, monkeypatch, "verify", "--no-progress") == 0
    assert "verify: OK" in capsys.readouterr().out

    # ... and it notices a projection that drifted, with the job and the column
    first = dump(cfg)
    with db.connect(cfg) as conn:
        conn.execute("UPDATE jobs SET status = 'running', current_priority = 7 WHERE pandaid = 2000")
        conn.execute("DELETE FROM files WHERE pandaid = 2001")
    bad = verify(cfg)
    assert not bad.ok
    text = "\n".join(bad.lines())
    assert "pandaid=2000" in text and "current_priority" in text and "files [pandaid=2001" in text
    assert cli(cfg, monkeypatch, "verify", "--no-progress") == 1

    # rebuild in place repairs it: identical rows to the first projection run; side by side too
    assert cli(cfg, monkeypatch, "rebuild", "jobs", "--no-progress") == 0
    assert "events/s" in capsys.readouterr().out
    rebuild(cfg, "files", log=lambda _: None)
    assert dump(cfg) == first
    result = rebuild(cfg, "archive", into="side", log=lambda _: None)
    assert result.events == n_events and result.rate > 0
    assert dump(cfg, "side", ["job_events"])["job_events"] == first["job_events"]
    with db.connect(cfg) as conn:
        conn.execute("TRUNCATE jobs")
    rebuild(cfg, "jobs", log=lambda _: None)
    assert dump(cfg) == first
    assert verify(cfg).ok

    # state-at: intermediate states, from the log
    at3 = state_at(cfg, 2000, seq=3)
    assert at3["core"]["state"] == "sent" and at3["job"]["jobStatus"] == "sent" and at3["job"]["jediTaskID"] == 12
    by_offset = state_at(cfg, 2000, offset=at3["offset"])
    assert by_offset["seq"] == 3
    at5 = state_at(cfg, 2000, seq=5)
    assert at5["core"]["state"] == "running" and at5["job"]["cpuConsumptionTime"] == 5
    assert state_at(cfg, 2000, time=at5["time"])["seq"] >= 5
    assert state_at(cfg, 2000, time=0) is None
    final = state_at(cfg, 2000, seq=99)
    assert final["core"]["state"] == "finished"
    assert {f["lfn"]: f.get("status") for f in final["files"]}["out.2000"] == "ready"
    assert cli(cfg, monkeypatch, "state-at", "2003", "--seq", "7", "--no-progress") == 0
    out = capsys.readouterr().out
    assert "core state: state=failed seq=7" in out and "taskBufferErrorCode" in out

    # tail: the last events, filtered
    lines: list[str] = []
    assert tail(cfg, last=5, out=lines.append) == 5
    lines.clear()
    tail(cfg, last=1000, types=["cancelled"], out=lines.append)
    assert len(lines) == 6 and all("-> cancelled" in line for line in lines)
    lines.clear()
    tail(cfg, last=1000, types=["submitted"], sites=["SITE1"], as_json=True, out=lines.append)
    assert sorted(json.loads(x)["PandaID"] for x in lines) == list(range(2001, 2030, 2))

    # the example JEDI consumer: nothing of pandaes but its Kafka port, counts equal to the jobs projection
    tree = ast.parse((ROOT / "examples" / "jedi_consumer.py").read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {f"{n.module}.{a.name}" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
    assert {m for m in imported if m.split(".")[0] not in sys.stdlib_module_names} == {
        "core.bus", "core.config", "core.bus.TopicPartition"}
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "jedi_consumer.py"), "--bootstrap",
                           cfg.kafka.bootstrap, "--topic", cfg.kafka.events_topic, "--until-end"],
                          capture_output=True, text=True, timeout=120, cwd="/")
    assert done.returncode == 0, done.stderr
    counts = json.loads(done.stdout)
    assert counts == jobs_by_task(cfg)
    assert counts["10"]["failed"] >= 1 and counts["12"]["finished"] >= 1


def test_broker_loss_then_start_restores_everything(cfg, background, tmp_path, monkeypatch):
    """Own embedded broker: run, kill it, start again empty, start-up check restores, carry on."""
    system = Infra(cfg.replace(kafka={"bootstrap": ""}, state={"dir": str(tmp_path)}),
                         log=lambda *_: None).start()
    try:
        c = system.config()
        first_ids = range(3000, 3020)
        n_first = archive_flow(c, background, first_ids)
        histories = dump(c)["job_events"]

        system.restart_broker(kill=True)            # the log is gone; topics exist again, empty
        assert divergence(c)[1], "an empty log under full projections must be noticed"
        with pytest.raises(SystemExit, match="pandaes restore"):
            check_at_start(c, embedded=False)        # external broker: stop and say what to do
        check_at_start(c, embedded=True, log=lambda *_: None)   # `make run` with the embedded broker
        assert not divergence(c)[1]
        # services' groups start at the restored end: history is not news to them
        admin = bus.admin(c)
        try:
            committed = admin.committed_offsets(f"{c.kafka.group_prefix}-adder")
        finally:
            admin.close()
        assert {tp.topic for tp in committed} == {c.kafka.events_topic}
        assert sum(committed.values()) >= n_first
        with pytest.raises(RestoreError, match="not empty"):
            restore(c, log=lambda *_: None)
        assert restore(c, force=True, log=lambda *_: None).published == 0   # idempotent

        report = verify(c)
        assert report.ok, report.lines()
        assert report.events == n_first

        # the system carries on: old jobs move on (state rebuilt), new ones start, from command offset 0
        ledger, _, stops = run_system(c, background)
        more = [Transition(PandaID=pid, action="fail", actor="service:watcher") for pid in first_ids if pid % 5 == 4]
        more += mixed_flow(range(3020, 3025))
        drive(c, more, ledger)
        total = n_first + ledger.stats["events"]
        wait_until(lambda: archived(c) == total, 60, 0.2, "the projector to catch up after restore")
        for stop in stops:
            background.stop(stop)
        after = {(r[0], r[1]): r for r in dump(c)["job_events"]}
        assert all(after[(r[0], r[1])] == r for r in histories)    # nothing lost, nothing changed
        with db.connect(c) as conn:
            gaps = conn.execute("SELECT count(*) FROM (SELECT pandaid, max(seq) m, count(*) n FROM job_events"
                                " GROUP BY pandaid) x WHERE m <> n").fetchone()[0]
            states = dict(conn.execute("SELECT pandaid, status FROM jobs WHERE pandaid % 5 = 4").fetchall())
        assert gaps == 0
        assert all(states[pid] == "failed" for pid in first_ids if pid % 5 == 4)
        report = verify(c)
        assert report.ok, report.lines()
        assert report.events == total
    finally:
        system.stop()


def test_a_restore_into_topics_of_another_partition_count_names_the_archives(cfg, background):
    """The default partition count changed (8 → 4): restoring an archive written with eight into new four-partition
    topics is refused before anything is published, and the refusal names the count to start with."""
    from core.topics import ensure_topics

    k = cfg.kafka
    eight = cfg.replace(kafka={"partitions": 8, "commands_topic": k.commands_topic + "-p8",
                               "events_topic": k.events_topic + "-p8", "rejected_topic": k.rejected_topic + "-p8",
                               "replies_topic": k.replies_topic + "-p8", "group_prefix": k.group_prefix + "-p8"})
    ensure_topics(eight)
    assert archive_flow(eight, background, range(5000, 5040)) > 0
    assert int(cfg.kafka.partitions) != 8
    with pytest.raises(RestoreError, match="PANDAES_PARTITIONS=8"):
        restore(cfg, log=lambda *_: None)
    assert sum(bus.end_offsets(cfg, cfg.kafka.events_topic).values()) == 0, "nothing published"
