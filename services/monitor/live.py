"""Live events for the monitor's server-sent events: one reader of panda.job-events per monitor process.

The same reader keeps the rejections (panda.job-commands.rejected, read from the beginning the broker
still holds) of the most recent jobs in memory, so a job page can show the commands refused for that job:
they are not events, so the archive does not have them.

A thread tails the events topic through ``core.bus`` (no consumer group: every monitor copy sees every
event, from the end of the log at start) and hands each event's summary to the asyncio loop, which
fans it out to the connected browsers' queues. A slow browser loses events rather than holding the
others back (its queue is bounded).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import threading
from collections import OrderedDict, deque
from typing import Any

from core import bus
from core.bus import TopicPartition
from core.config import Config
from schemas.messages import Event, JobSubmitted, decode_event, decode_rejected

log = logging.getLogger(__name__)


def summary(ev: Event) -> dict[str, Any]:
    """What the live page shows of an event (and filters on: queue and task where the event says)."""
    out: dict[str, Any] = {
        "PandaID": ev.PandaID, "seq": ev.seq, "actor": ev.actor, "type": ev.__struct_config__.tag,
        "action": getattr(ev, "action", "submit"), "from": ev.from_state, "to": ev.to_state,
        "time": dt.datetime.fromtimestamp(ev.time, dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3],
    }
    if isinstance(ev, JobSubmitted):
        out["queue"], out["task"] = ev.job.computingSite, ev.job.jediTaskID
    elif ev.attrs.get("computingSite"):
        out["queue"] = ev.attrs["computingSite"]
    return out


class EventFeed:
    """Tails the events topic on a thread; ``subscribe()`` gives an asyncio queue of event summaries."""

    def __init__(self, cfg: Config, loop: asyncio.AbstractEventLoop, max_queued: int = 1000,
                 max_jobs_rejected: int = 20_000, per_job: int = 50):
        self.cfg = cfg
        self.rejections: OrderedDict[int, deque[dict[str, Any]]] = OrderedDict()   # PandaID → recent rejections
        self.max_jobs_rejected = max_jobs_rejected
        self.per_job = per_job
        self.loop = loop
        self.max_queued = max_queued
        self.queues: set[asyncio.Queue] = set()
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, name="monitor-live", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)

    def subscribe(self) -> asyncio.Queue:
        q: asyncio.Queue = asyncio.Queue(self.max_queued)
        self.queues.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue) -> None:
        self.queues.discard(q)

    def _publish(self, item: dict[str, Any]) -> None:
        for q in list(self.queues):
            if not q.full():
                q.put_nowait(item)

    def rejected(self, pandaid: int) -> list[dict[str, Any]]:
        """The rejections of ``pandaid`` seen by this monitor (oldest first)."""
        return list(self.rejections.get(pandaid, ()))

    def _note_rejection(self, raw: bytes) -> None:
        r = decode_rejected(raw)
        item = {"time": dt.datetime.fromtimestamp(r.time, dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3],
                "actor": r.actor, "command": r.command_type, "code": r.code, "reason": r.reason, "state": r.state}
        kept = self.rejections.pop(r.PandaID, None) or deque(maxlen=self.per_job)
        kept.append(item)
        self.rejections[r.PandaID] = kept            # most recently rejected last
        while len(self.rejections) > self.max_jobs_rejected:
            self.rejections.popitem(last=False)

    def _run(self) -> None:
        topic, rejected = self.cfg.kafka.events_topic, self.cfg.kafka.rejected_topic
        while not self.stop.is_set():
            try:
                c = bus.consumer(self.cfg, group_id=None, fetch_max_wait_ms=100,
                                 idle_fetch_max_wait_ms=int(self.cfg.monitor.live_idle_fetch_max_wait_ms))
                try:
                    tps = [TopicPartition(topic, p) for p in c.partitions(topic)]
                    rtps = [TopicPartition(rejected, p) for p in c.partitions(rejected)]
                    c.assign(tps + rtps)
                    c.seek_to_end(*tps)
                    for tp, start in c.beginning_offsets(rtps).items():
                        c.seek(tp, start)
                    for tp in tps:
                        c.position(tp)      # resolve the end now, so events after "ready" are seen
                    self.ready.set()
                    while not self.stop.is_set():
                        polled = c.poll(timeout_ms=300)
                        if not polled:      # at rest: sleep until the next look (bus.Consumer.rest)
                            c.rest(self.stop, float("inf"))
                        for tp, recs in polled.items():
                            for r in recs:
                                if tp.topic == rejected:
                                    self._note_rejection(r.value)
                                    continue
                                item = summary(decode_event(r.value))
                                self.loop.call_soon_threadsafe(self._publish, item)
                finally:
                    c.close()
            except Exception:
                log.exception("live event feed failed; reconnecting")
                self.stop.wait(2.0)
