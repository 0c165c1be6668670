"""Brokerage: pick a queue for a job that came without one (or with only a cloud). Pure.

PanDA's rules, simplified to what a queue file can say: a queue is a candidate when its status lets
brokerage use it (``online``; ``test`` only for test jobs; never ``offline``/``brokeroff``), it is in
the job's cloud (if the job names one), and the job fits its limits — memory (``minRamCount`` ≤
``maxrss``), scratch disk (``maxDiskCount`` ≤ ``maxwdir``), cores (``coreCount`` ≤ ``corecount``),
walltime (``maxWalltime`` ≤ ``maxtime``); a limit of 0 means none. Among candidates the one holding
most of the job's input files wins (data locality, asked of the queue's data plugin), then the
higher ``weight``, then the name, so the choice is deterministic and replays identically.

The result carries a one-line ``reason`` naming the queue version it saw and why every other queue
lost; the setupper puts it on the event, so "why did job X go to Y" is answered from the log.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import msgspec

from services.sitedata.sites import TEST_LABELS, Queue

EC_NO_QUEUE = 100      # brokerageErrorCode when no queue fits (pandaes' own code; PanDA leaves it to JEDI)
_DIAG_MAX = 250        # brokerageErrorDiag column width (schemas.jobspec.LIMIT_LENGTH)


class Needs(msgspec.Struct, frozen=True, kw_only=True):
    """What a job asks of a queue, in the queue file's units (MB, seconds, cores)."""

    memory: int = 0
    disk: int = 0
    cores: int = 1
    walltime: int = 0
    cloud: str | None = None
    test: bool = False
    n_inputs: int = 0


class Choice(msgspec.Struct, frozen=True, kw_only=True):
    queue: Queue | None
    reason: str
    verdicts: dict[str, str] = {}     # queue → "ok: …" or why it was skipped


def _int(value: Any) -> int:
    if value in (None, "NULL", ""):
        return 0
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def needs_of(spec: Mapping[str, Any], n_inputs: int = 0) -> Needs:
    """The job's requirements from its JobSpec attributes (a dict of PanDA names)."""
    cores = max(_int(spec.get("coreCount")), 1)
    memory = _int(spec.get("minRamCount"))
    if str(spec.get("minRamUnit") or "").startswith("MBPerCore"):
        memory *= cores
    disk = _int(spec.get("maxDiskCount"))
    if str(spec.get("maxDiskUnit") or "").upper() == "GB":
        disk *= 1000
    cloud = spec.get("cloud")
    return Needs(memory=memory, disk=disk, cores=cores, walltime=_int(spec.get("maxWalltime")),
                 cloud=None if cloud in (None, "", "NULL") else str(cloud),
                 test=(spec.get("prodSourceLabel") or "") in TEST_LABELS, n_inputs=n_inputs)


def reject_reason(q: Queue, needs: Needs) -> str | None:
    """Why ``q`` cannot take the job, or None if it can."""
    if q.status in ("offline", "brokeroff"):
        return q.status
    if q.status == "test" and not needs.test:
        return "test queue (test jobs only)"
    if needs.cloud and q.cloud != needs.cloud:
        return f"cloud {q.cloud} != {needs.cloud}"
    if q.maxrss and needs.memory > q.maxrss:
        return f"memory {needs.memory} MB > maxrss {q.maxrss}"
    if q.maxwdir and needs.disk > q.maxwdir:
        return f"disk {needs.disk} MB > maxwdir {q.maxwdir}"
    if q.corecount and needs.cores > q.corecount:
        return f"cores {needs.cores} > corecount {q.corecount}"
    if q.maxtime and needs.walltime > q.maxtime:
        return f"walltime {needs.walltime} s > maxtime {q.maxtime}"
    return None


def choose(needs: Needs, queues: Iterable[Queue], local_inputs: Callable[[Queue], int]) -> Choice:
    """The best queue for ``needs``; ``local_inputs(q)`` = how many of the job's inputs ``q`` holds."""
    verdicts: dict[str, str] = {}
    fits: list[tuple[int, Queue]] = []
    for q in sorted(queues, key=lambda q: q.name):
        why = reject_reason(q, needs)
        if why:
            verdicts[q.name] = why
            continue
        n_local = local_inputs(q) if needs.n_inputs else 0
        fits.append((n_local, q))
        verdicts[q.name] = f"ok, {n_local}/{needs.n_inputs} inputs local" if needs.n_inputs else "ok"
    if not fits:
        detail = "; ".join(f"{n}: {v}" for n, v in verdicts.items()) or "no queues configured"
        return Choice(queue=None, reason=f"brokerage: no queue fits ({detail})", verdicts=verdicts)
    fits.sort(key=lambda item: (-item[0], -item[1].weight, item[1].name))
    n_local, best = fits[0]
    why = [f"{best.name} v{best.version}"]
    if needs.n_inputs:
        why.append(f"{n_local}/{needs.n_inputs} inputs local")
    others = [f"{n}: {v}" for n, v in verdicts.items() if n != best.name]
    if others:
        why.append("others " + "; ".join(others))
    return Choice(queue=best, reason="brokerage: " + ", ".join(why), verdicts=verdicts)


def failure_attrs(choice: Choice) -> dict[str, Any]:
    """JobSpec attributes for a job brokerage could not place."""
    return {"brokerageErrorCode": EC_NO_QUEUE, "brokerageErrorDiag": choice.reason[:_DIAG_MAX]}
