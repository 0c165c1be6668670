"""`pandaes state-at`: a job as it was at a past moment, folded from the log (never the projections).

Only the job's own partition (``core.bus.partition_of``) is read, and only records with the job's key
are decoded. "As it was" means the longest prefix of the job's events (in log order) that satisfies
the bound: ``--offset O`` takes events at partition offsets ≤ O, ``--seq N`` events up to seq N,
``--time T`` events up to the first one stamped after T.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from cli.fold import JobView
from cli.logread import log_bounds, read_log
from cli.progress import Progress
from core.bus import partition_of
from core.config import Config
from schemas.jobspec import JOB_ATTRIBUTES
from schemas.messages import decode_event, key_of


def parse_time(text: str) -> float:
    """Seconds since the epoch, or ISO 8601 (naive means UTC)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--time {text!r}: expected epoch seconds or ISO 8601, e.g. 2025-01-31T12:00:00") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def state_at(cfg: Config, panda_id: int, *, time: float | None = None, offset: int | None = None,
             seq: int | None = None, show_progress: bool | None = None) -> dict[str, Any] | None:
    """The job's fold at the bound (None: no event of the job within it)."""
    _, end = log_bounds(cfg)
    p = partition_of(panda_id, len(end))
    stop = end.get(p, 0) if offset is None else min(end.get(p, 0), offset + 1)
    key = key_of(panda_id)
    view = JobView()
    with Progress(f"state-at {panda_id}", total=stop, enabled=show_progress) as bar:
        for _, recs in read_log(cfg, partitions=[p], end={p: stop}):
            bar.update(len(recs))
            for rec in recs:
                if rec.key != key:
                    continue
                ev = decode_event(rec.value)
                if (time is not None and ev.time > time) or (seq is not None and ev.seq > seq):
                    return view.as_dict() if view.last else None
                view.feed(p, rec.offset, ev)
    return view.as_dict() if view.last else None


def render(found: dict[str, Any]) -> list[str]:
    when = dt.datetime.fromtimestamp(found["time"], dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    last = found["last_event"]
    core = found["core"]
    lines = [f"PandaID {found['PandaID']} as of seq {found['seq']} (partition {found['partition']} offset "
             f"{found['offset']}, {when} UTC)",
             f"last event: {last['type']} {last['action'] or ''} by {last['actor']}: {last['from']} -> {last['to']}",
             "core state: " + " ".join(f"{k}={v}" for k, v in core.items() if k != "PandaID"),
             "JobSpec:"]
    spec = found["job"]
    for attr in JOB_ATTRIBUTES:
        if spec.get(attr) not in (None, "NULL"):
            lines.append(f"  {attr:<24} {spec[attr]}")
    if found["files"]:
        lines.append("files:")
        for f in found["files"]:
            lines.append(f"  {f.get('type', '?'):<7} {f.get('lfn', '?'):<40} {f.get('status', '-')}")
    return lines
