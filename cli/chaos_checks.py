"""The invariants `pandaes chaos` checks once the work is done, each a PASS/FAIL line with its counts.

1. every job final (none left in ``sent``, ``defined`` or any other live state), and every job the
   submitter sent exists;
2. each job's events are seq 1..n exactly (no gap, no repeat), and its jobs row stands at n;
3. no double dispatch: no PandaID handed to two pilots (the pilots' own record of what they got);
4. no duplicate command: no command id answered by two events;
5. the projections equal the fold of the log (``pandaes verify``'s code, cli/verify.py).

The judging functions are pure (``judge_*``: numbers in, a ``Check`` out) so their edges are unit-tested;
``run_checks`` gathers the numbers from the database, the pilots and the log.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from core import db
from core.config import Config
from core.states import FINAL_STATES
from projections import invariant_queries as iq
from projections import queries
from services.clock.watcher import ACTOR as WATCHER
from services.clock.watcher import EC_HOLDING, EC_SEND_ERROR, EC_TRANSFERRING, EC_WATCHER

# the watcher's jobDispatcherErrorCodes: which timeout failed the job
TIMEOUT_NAMES = {str(EC_WATCHER): "lost heartbeat", str(EC_SEND_ERROR): "sent timeout",
                 str(EC_HOLDING): "holding timeout", str(EC_TRANSFERRING): "transferring timeout"}


@dataclasses.dataclass
class Check:
    name: str
    ok: bool
    detail: str
    examples: list[str] = dataclasses.field(default_factory=list)

    def lines(self) -> list[str]:
        head = f"{'PASS' if self.ok else 'FAIL'}  {self.name}: {self.detail}"
        return [head] + [f"        {e}" for e in self.examples]


def judge_final(by_status: Mapping[str, int], missing: Sequence[int], sent: int) -> Check:
    total = sum(by_status.values())
    live = {s: n for s, n in by_status.items() if s not in FINAL_STATES}
    counts = ", ".join(f"{s} {n}" for s, n in sorted(by_status.items()))
    ok = not live and not missing and total > 0
    detail = f"{total} jobs ({counts or 'none'}); {sent} submitted by the run, {len(missing)} of them missing"
    if live:
        detail += f"; NOT FINAL: {', '.join(f'{s} {n}' for s, n in sorted(live.items()))}"
    return Check("every job final", ok, detail, [f"missing PandaID {p}" for p in missing[:10]])


def judge_seqs(events: int, jobs: int, anomalies: Sequence[tuple]) -> Check:
    ok = not anomalies and events > 0
    examples = [f"PandaID {a[0]}: {a[1]} events, {a[2]} distinct seqs, seq {a[3]}..{a[4]}, jobs row at seq {a[5]}"
                for a in anomalies[:10]]
    return Check("per-job seqs exactly 1..n", ok,
                 f"{events} events of {jobs} jobs, {len(anomalies)} job(s) off", examples)


def judge_dispatch(received: Mapping[int, Sequence[int]], dispatches: int, undispatches: int) -> Check:
    twice = {pid: pilots for pid, pilots in received.items() if len(pilots) > 1}
    handed = sum(len(p) for p in received.values())
    detail = (f"{len(received)} jobs handed to pilots ({handed} handings), {len(twice)} to more than one; "
              f"log: {dispatches} dispatches, {undispatches} undone")
    return Check("no double dispatch", not twice, detail,
                 [f"PandaID {pid} handed to pilots {pilots}" for pid, pilots in sorted(twice.items())[:10]])


def judge_commands(distinct: int, duplicates: Sequence[tuple[str, int, list[str]]]) -> Check:
    return Check("no duplicate command applied", not duplicates,
                 f"{distinct} commands applied, {len(duplicates)} applied more than once",
                 [f"command {cid} → {n} events {events}" for cid, n, events in duplicates[:10]])


def judge_verify(report) -> Check:
    detail = f"{report.events} events of {report.jobs} jobs folded, {report.counted} problem(s)"
    return Check("projections equal the fold of the log", report.ok, detail,
                 (report.problems + report.differences)[:10])


def timeouts_note(by_code: Mapping[str, int]) -> str:
    if not by_code:
        return "jobs failed by the watcher's timeouts: none"
    return "jobs failed by the watcher's timeouts: " + ", ".join(
        f"{n} {TIMEOUT_NAMES.get(code, 'code ' + code)}" for code, n in sorted(by_code.items()))


def run_checks(cfg: Config, sent: Sequence[int],
               received: Mapping[int, Sequence[int]]) -> tuple[list[Check], list[str]]:
    """Every invariant, and notes (what the faults left to the clock) that are not failures."""
    from cli.verify import verify

    with db.connect(cfg) as conn:
        by_status = queries.count_by_status(conn)
        missing = iq.missing(conn, sent)
        events, jobs = iq.event_totals(conn)
        anomalies = iq.seq_anomalies(conn)
        actions = iq.action_counts(conn, ("dispatch", "undispatch"))
        distinct, dups = iq.distinct_commands(conn), iq.duplicate_commands(conn)
        notes = [timeouts_note(iq.timed_out(conn, WATCHER))]
    checks = [judge_final(by_status, missing, len(sent)), judge_seqs(events, jobs, anomalies),
              judge_dispatch(received, actions.get("dispatch", 0), actions.get("undispatch", 0)),
              judge_commands(distinct, dups), judge_verify(verify(cfg, show_progress=False))]
    return checks, notes
