"""`pandaes tail`: the last events, and with --follow the ones that happen from now on.

Reads every partition with a group-less consumer (nobody's offsets move). ``--site`` needs the job's
site, which only the submission (or an attrs change) carries: it is remembered from events seen and
otherwise looked up once per job in the jobs projection.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Sequence
from typing import Any

from core import bus, db
from core.bus import TopicPartition
from core.config import Config
from projections import queries
from schemas.messages import Event, JobSubmitted, decode_event


def describe(ev: Event) -> str:
    """One line per event, as `pandaes history` shows them."""
    when = dt.datetime.fromtimestamp(ev.time, dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    action = getattr(ev, "action", "submit")
    extra = []
    if isinstance(ev, JobSubmitted):
        extra.append(f"site={ev.job.computingSite} task={ev.job.jediTaskID} files={len(ev.job.Files)}")
    else:
        if ev.attrs:
            extra.append(" ".join(f"{k}={v}" for k, v in list(ev.attrs.items())[:6]))
        if ev.files:
            extra.append(f"{len(ev.files)} file(s)")
        for k in ("kill_code", "pilot_state", "reason"):
            if getattr(ev, k, None) not in (None, ""):
                extra.append(f"{k}={getattr(ev, k)}")
    return (f"{when} {ev.PandaID:>10} {ev.seq:>4} {ev.actor[:24]:<24} {action:<18} "
            f"{ev.from_state + ' -> ' + ev.to_state:<26} {'; '.join(extra)}")


class _Sites:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.known: dict[int, str | None] = {}

    def note(self, ev: Event) -> None:
        if isinstance(ev, JobSubmitted):
            self.known[ev.PandaID] = ev.job.computingSite
        elif "computingSite" in ev.attrs:
            self.known[ev.PandaID] = ev.attrs["computingSite"]

    def of(self, pid: int) -> str | None:
        if pid not in self.known:
            try:
                with db.connect(self.cfg) as conn:
                    row = queries.jobs(conn, [pid], ("computing_site",)).get(pid)
                self.known[pid] = row["computing_site"] if row else None
            except Exception:  # noqa: BLE001 - no database: the filter just does not match
                self.known[pid] = None
        return self.known[pid]


def tail(cfg: Config, *, last: int = 10, follow: bool = False, types: Sequence[str] = (),
         sites: Sequence[str] = (), as_json: bool = False, out: Callable[[str], Any] = print,
         stop: threading.Event | None = None) -> int:
    """Print matching events among the last ``last`` of each partition (by time), then follow."""
    topic = cfg.kafka.events_topic
    site_of = _Sites(cfg)
    stop = stop or threading.Event()
    c = bus.consumer(cfg, group_id=None, fetch_max_wait_ms=100)
    shown = 0

    def matches(ev: Event) -> bool:
        if types and not {ev.__struct_config__.tag, getattr(ev, "action", "submit"), ev.to_state} & set(types):
            return False
        return not sites or site_of.of(ev.PandaID) in sites

    def show(raw: bytes, ev: Event) -> None:
        nonlocal shown
        shown += 1
        out(raw.decode() if as_json else describe(ev))

    try:
        tps = [TopicPartition(topic, p) for p in c.partitions(topic)]
        c.assign(tps)
        ends = c.end_offsets(tps)
        begins = c.beginning_offsets(tps)
        recent: list[tuple[float, bytes, Event]] = []
        for tp in tps:
            c.seek(tp, max(begins[tp], ends[tp] - max(0, last)))
        pending = {tp for tp in tps if c.position(tp) < ends[tp]}
        while pending:
            for tp, recs in c.poll(timeout_ms=500).items():
                for r in recs:
                    if r.offset < ends[tp]:
                        ev = decode_event(r.value)
                        site_of.note(ev)
                        recent.append((ev.time, r.value, ev))
            pending = {tp for tp in pending if c.position(tp) < ends[tp]}
        picked = [x for x in sorted(recent, key=lambda x: x[0]) if matches(x[2])]
        for _, raw, ev in picked[-last:] if last > 0 else []:
            show(raw, ev)
        while follow and not stop.is_set():
            for recs in c.poll(timeout_ms=300).values():
                for r in recs:
                    ev = decode_event(r.value)
                    site_of.note(ev)
                    if matches(ev):
                        show(r.value, ev)
    except KeyboardInterrupt:
        pass
    finally:
        c.close()
    return shown

