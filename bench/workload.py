"""The fixed, seeded workload: jobs shaped like examples/job.json and the commands that move them.

Everything is derived from a ``random.Random(seed)``, so two runs submit byte-identical jobs (apart
from the message ids and times that each command gets when it is built).
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import msgspec

from core.machine import JobState, apply, decide
from core.states import JobStatus, PilotState
from schemas.jobspec import FileSpec, JobSpec
from schemas.messages import Command, Event, JobSubmitted, Kill, PilotUpdate, Rejected, Submit, Transition

SEED = 20240501
SITES = ("LOCAL",)
FIRST_ID = 10_000_000


def job(pid: int, rng: random.Random, site: str = "LOCAL") -> JobSpec:
    """One production job with an output and a log file (what PanDA jobs look like to the server)."""
    task = 1000 + pid % 97
    return JobSpec(
        PandaID=pid, jobName=f"bench.{task}.{pid}", transformation="payload.sh",
        jobParameters=f"hello {rng.randint(1, 9)} 0 out.{pid}.txt", prodSourceLabel="managed",
        computingSite=site, currentPriority=rng.choice((900, 1000, 1100)), attemptNr=1, maxAttempt=3,
        coreCount=1, jediTaskID=task, destinationDBlock=f"bench.{task}.out",
        Files=[
            FileSpec(lfn=f"out.{pid}.txt", type="output", dataset=f"bench.{task}.out",
                     destinationDBlock=f"bench.{task}.out_sub01", scope="bench"),
            FileSpec(lfn=f"log.{pid}.tgz", type="log", dataset=f"bench.{task}.log",
                     destinationDBlock=f"bench.{task}.log_sub01", scope="bench"),
        ],
    )


def lifecycle_commands(pid: int, rng: random.Random, actor: str = "bench", site: str = "LOCAL") -> list[Command]:
    """The eight commands of one job that runs to success: submit … finish (as ledger_rate uses)."""
    return [
        Submit(PandaID=pid, actor=actor, job=job(pid, rng, site)),
        Transition(PandaID=pid, action="activate", actor=actor),
        Transition(PandaID=pid, action="dispatch", actor=actor, attrs={"modificationHost": f"wn{pid % 50}"}),
        PilotUpdate(PandaID=pid, state=PilotState.STARTING, attempt_nr=1, actor=actor),
        PilotUpdate(PandaID=pid, state=PilotState.RUNNING, attempt_nr=1, actor=actor),
        PilotUpdate(PandaID=pid, state=PilotState.RUNNING, attempt_nr=1, actor=actor, attrs={"nEvents": 10}),
        PilotUpdate(PandaID=pid, state=PilotState.FINISHED, attempt_nr=1, actor=actor, report="{}"),
        Transition(PandaID=pid, action="finish", actor=actor),
    ]


def to_state_commands(pid: int, rng: random.Random, state: JobStatus | str, actor: str = "bench",
                      site: str = "LOCAL") -> list[Command]:
    """Commands that take a new job to ``activated`` or ``running`` (backlogs for dispatch and kill)."""
    cmds = lifecycle_commands(pid, rng, actor, site)
    return cmds[:2] if state == JobStatus.ACTIVATED else cmds[:5]


def kill(pid: int, actor: str = "bench") -> Kill:
    return Kill(PandaID=pid, actor=actor, reason="bench")


def _judged(pid: int, rng: random.Random) -> list[Event]:
    state: JobState | None = None
    out: list[Event] = []
    for cmd in lifecycle_commands(pid, rng):
        ev = decide(state, cmd, [0, 0])
        if isinstance(ev, Rejected):  # pragma: no cover - the workload is legal by construction
            raise RuntimeError(f"workload command rejected: {ev.reason}")
        state = apply(state, ev)
        out.append(ev)
    return out


def events(n_events: int, seed: int = SEED, t0: float = 1.7e9) -> Iterator[Event]:
    """At least ``n_events`` events as the ledger would write them for the lifecycle workload.

    The ledger's own ``decide`` judges the first job; later jobs reuse its events with their own
    PandaID, spec, ids and times — judging a million commands would take longer than the rebuild
    it prepares (the state machine library is the slow part)."""
    rng = random.Random(seed)
    template = _judged(FIRST_ID, random.Random(seed))
    replace = msgspec.structs.replace
    made = 0
    pid = FIRST_ID
    while made < n_events:
        spec = job(pid, rng)
        when = t0 + made / 1000
        for i, ev in enumerate(template):
            fields: dict = {"PandaID": pid, "command_id": f"{pid:x}.{i}", "id": f"{pid:x}e{i}", "time": when + i,
                            "src": [pid % 8, made]}
            if isinstance(ev, JobSubmitted):
                fields["job"] = replace(spec, jobStatus=ev.to_state)
            made += 1
            yield replace(ev, **fields)
        pid += 1
