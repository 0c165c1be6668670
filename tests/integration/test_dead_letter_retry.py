"""Dead letters are applied again once their cause is fixed (`pandaes dead-letters retry`).

On the real broker and database: a projection's dead letter whose cause was fixed (a column widened) is
applied by the running projector — the job's row folded again from all its events, as a rebuild would
make it — and marked resolved; one whose cause remains stays a dead letter with the new error and its
history; a service's dead letter is decided again by the running loop once the service can decide it."""

from __future__ import annotations

from gateway_support import start_system
from helpers import wait_until

from cli.deadletters import line, parse_ids, retry, rows
from cli.main import main
from core import bus, db
from schemas.messages import JobUpdated, encode, key_of
from services.loop import ServiceLoop

NUL = "\x00"


class _Choosy:
    """A service that cannot decide on some jobs' events until it is fixed (``refuse`` emptied)."""

    name = "choosy"

    def __init__(self, refuse: set[int]):
        self.refuse = refuse
        self.decided: list[tuple[int, int]] = []

    def wants(self, event) -> bool:
        return True

    def decide(self, event, view):
        if event.PandaID in self.refuse:
            raise ValueError(f"cannot handle {event.PandaID} yet")
        self.decided.append((event.PandaID, event.seq))
        return []


def _job(cfg, pid: int) -> dict:
    with db.connect(cfg) as conn:
        return db.fetch_all(conn, "SELECT seq, partition, current_priority, command_to_pilot,"
                            " spec->>'commandToPilot' AS spec_command"
                            " FROM jobs WHERE pandaid = %s", (pid,))[0]


def test_dead_letters_are_applied_again_once_fixed_and_keep_their_history(cfg, background, monkeypatch, capsys):
    system = start_system(cfg, background)
    fixable, hopeless, refused = system.activated_jobs(3)
    choosy = _Choosy({refused})
    background.run(ServiceLoop(cfg, choosy, view=None), "choosy")

    # a bad migration: the jobs table refuses a value the contract allows
    with db.connect(cfg) as conn:
        conn.execute("ALTER TABLE jobs ADD CONSTRAINT no_boom CHECK (command_to_pilot IS DISTINCT FROM 'boom')")
        conn.commit()
    # the next event of two jobs: one the bad constraint refuses, one no database can store (a NUL)
    rows_now = {pid: _job(cfg, pid) for pid in (fixable, hopeless)}
    before = rows_now[fixable]
    producer = bus.producer(cfg)
    try:
        # (the fixable job's following event is applied: its row moves past the refused one)
        for pid, n, attrs in ((fixable, 1, {"commandToPilot": "boom"}), (fixable, 2, {"currentPriority": 7}),
                              (hopeless, 1, {"pilotErrorDiag": f"x{NUL}y"})):
            row = rows_now[pid]
            producer.send(cfg.kafka.events_topic, encode(JobUpdated(
                PandaID=pid, actor="old-writer", seq=row["seq"] + n, from_state="activated", to_state="activated",
                command_id=f"old-{pid}-{n}", action="set", attrs=attrs)), key=key_of(pid), partition=row["partition"])
        producer.flush()
    finally:
        producer.close()
    wait_until(lambda: _job(cfg, fixable)["current_priority"] == 7, 60, 0.1, "the event after the refused one")

    def dead() -> dict[tuple[str, int], dict]:
        with db.connect(cfg) as conn:
            return {(r["owner"], r["pandaid"]): r for r in rows(conn, resolved=True)}

    wait_until(lambda: {("projection:jobs", fixable), ("projection:jobs", hopeless), ("projection:archive", hopeless),
                        ("service:choosy", refused)} <= set(dead()), 60, 0.2, "the dead letters")
    assert ("projection:archive", fixable) not in dead()            # the archive has no such constraint

    # the command line lists them (p<N>, s<N>)
    monkeypatch.setenv("PANDAES_DB", cfg.db.url)
    monkeypatch.setenv("PANDAES_KAFKA", cfg.kafka.bootstrap)
    assert main(["dead-letters", "list"]) == 0
    listed = capsys.readouterr().out
    key = dead()[("projection:jobs", fixable)]["key"]
    assert f"{key}  dead" in listed and "service:choosy" in listed and "projection:archive" in listed, listed

    # nothing is fixed yet: a retry fails again, keeps the row and records the attempt (exit code 1)
    assert main(["dead-letters", "retry", "--id", key, "--wait", "60"]) == 1
    assert "no_boom" in capsys.readouterr().out
    got, waiting = retry(cfg, parse_ids([key]), wait=60)
    assert waiting == [] and [(r["key"], r["resolved_at"], r["attempts"]) for r in got] == [(key, None, 2)]
    assert len(got[0]["history"]) == 2 and "no_boom" in got[0]["history"][0]["error"]

    # the causes are fixed for two of them: a migration drops the constraint, the service is fixed
    with db.connect(cfg) as conn:
        conn.execute("ALTER TABLE jobs DROP CONSTRAINT no_boom")
        conn.commit()
    choosy.refuse.clear()
    first_errors = {owner: dead()[(owner, hopeless)]["error"] for owner in ("projection:jobs", "projection:archive")}
    got, waiting = retry(cfg, None, wait=60)
    assert waiting == [], waiting
    outcome = {(r["owner"], r["pandaid"]): r for r in got}
    assert outcome[("projection:jobs", fixable)]["resolved_at"] is not None
    assert outcome[("service:choosy", refused)]["resolved_at"] is not None
    for owner in ("projection:jobs", "projection:archive"):
        still = outcome[(owner, hopeless)]
        assert still["resolved_at"] is None and still["attempts"] == 1 and still["error"], line(still)
        assert [h["error"] for h in still["history"]] == [first_errors[owner]]

    # the fixed job's row is what a rebuild would make: the late event folded in with the others
    after = _job(cfg, fixable)
    assert after["seq"] == before["seq"] + 2 and after["command_to_pilot"] == "boom"
    assert after["spec_command"] == "boom" and after["current_priority"] == 7
    # the service decided the refused job's events at last
    assert any(pid == refused for pid, _ in choosy.decided)
    # resolved rows are kept, with their history, and no longer listed as unresolved
    with db.connect(cfg) as conn:
        open_keys = {r["key"] for r in rows(conn)}
    assert key not in open_keys and dead()[("projection:jobs", fixable)]["history"][-1]["resolved"] is True
    assert len(dead()[("projection:jobs", fixable)]["history"]) == 3
