"""How many commands per second one ledger process validates and records, end to end on Kafka.

Pre-loads a command topic with a fixed, seeded lifecycle workload (submit, activate, dispatch,
starting, running, heartbeat, final report, finish: 8 commands per job, plus 2% illegal commands
that must be rejected), then starts one ledger and times it from first poll to last commit. Also
times ``core.machine.decide`` alone, to separate the state machine's cost from Kafka's.

    .venv/bin/python bench/ledger_rate.py [--jobs 5000]

Uses PANDAES_KAFKA / PANDAES_DB when set, else the embedded defaults.
"""

from __future__ import annotations

import argparse
import random
import threading
import time
import uuid

from core import bus, config
from core.ledger import Ledger
from core.machine import apply, decide
from core.states import PilotState
from core.topics import ensure_topics
from devenv import stack
from projections.queries import partition_snapshot
from schemas.jobspec import JobSpec
from schemas.messages import PilotUpdate, Rejected, Submit, Transition
from services import migrations


def workload(n_jobs: int, seed: int = 7) -> list:
    rng = random.Random(seed)
    cmds = []
    for pid in range(1, n_jobs + 1):
        cmds += [
            Submit(PandaID=pid, actor="bench", job=JobSpec(computingSite="LOCAL", attemptNr=1, currentPriority=1000)),
            Transition(PandaID=pid, action="activate", actor="bench"),
            Transition(PandaID=pid, action="dispatch", actor="bench"),
            PilotUpdate(PandaID=pid, state=PilotState.STARTING, attempt_nr=1, actor="bench"),
            PilotUpdate(PandaID=pid, state=PilotState.RUNNING, attempt_nr=1, actor="bench"),
            PilotUpdate(PandaID=pid, state=PilotState.RUNNING, attempt_nr=1, actor="bench", attrs={"nEvents": 10}),
            PilotUpdate(PandaID=pid, state=PilotState.FINISHED, attempt_nr=1, actor="bench", report="{}"),
            Transition(PandaID=pid, action="finish", actor="bench"),
        ]
        if rng.random() < 0.02:
            cmds.append(Transition(PandaID=pid, action="dispatch", actor="bench"))  # illegal: rejected
    return cmds


def time_decide(cmds) -> float:
    jobs: dict = {}
    t0 = time.perf_counter()
    for c in cmds:
        out = decide(jobs.get(c.PandaID), c)
        if not isinstance(out, Rejected):
            jobs[c.PandaID] = apply(jobs.get(c.PandaID), out)
    return len(cmds) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=5000)
    args = ap.parse_args()
    tag = f"bench{uuid.uuid4().hex[:6]}"
    cfg = config.load().replace(
        kafka={"commands_topic": f"{tag}.cmd", "events_topic": f"{tag}.evt", "rejected_topic": f"{tag}.rej",
               "group_prefix": tag, "session_timeout_ms": 6000})
    system = stack.Infra(cfg, log=lambda *_: None).start()
    try:
        cfg = system.config()
        ensure_topics(cfg)
        migrations.migrate(cfg)
        cmds = workload(args.jobs)
        print(f"decide()+apply() alone: {time_decide(cmds):,.0f} commands/s")
        sender = bus.CommandSender(cfg)
        sender.send_many(cmds)
        sender.flush()
        sender.close()
        ledger = Ledger(cfg, instance=tag, snapshot=partition_snapshot)
        stop = threading.Event()
        first: list[float] = []
        original = ledger.step

        def step(timeout_ms: int = 200) -> int:
            began = time.perf_counter()
            n = original(timeout_ms)
            if n and not first:
                first.append(began)  # includes the wait of that first poll: errs on the slow side
            return n

        ledger.step = step  # type: ignore[method-assign]
        t = threading.Thread(target=ledger.run, args=(stop,), daemon=True)
        t.start()
        while ledger.stats["commands"] < len(cmds):
            time.sleep(0.05)
        done = time.perf_counter()
        stop.set()
        t.join(10)
        ledger.close()
        s = ledger.stats
        elapsed = done - first[0]
        print(f"ledger: {s['commands']:,} commands ({s['events']:,} events, {s['rejections']:,} rejections) "
              f"in {elapsed:.2f}s over {s['batches']} transactions = {s['commands'] / elapsed:,.0f} commands/s")
    finally:
        system.stop()


if __name__ == "__main__":
    main()
