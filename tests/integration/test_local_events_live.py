"""The ledger's committed events handed to a reader on its host (core/local_events.py), against the real broker:
whatever comes by hand and whatever from the topic, the reader hands out exactly the log, in order, once."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from conftest import BOTH_CLIENTS
from helpers import wait_until
from test_ledger import start_ledger, submits, verdicts

from core import bus, local_events
from core.bus import CommandSender, OutcomeWaiter
from schemas.messages import Transition

pytestmark = pytest.mark.parametrize("kafka_client", BOTH_CLIENTS, indirect=True)


class Reader:
    """A FedConsumer of the events topic read on its own thread from offset 0, collecting (offset, value)."""

    def __init__(self, cfg, group: str):
        self.cfg = cfg
        self.consumer = local_events.fed(bus.consumer(cfg, group_id=group), cfg, group)
        assert isinstance(self.consumer, local_events.FedConsumer) and self.consumer.bound
        self.got: dict[int, list[tuple[int, bytes]]] = {}
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self.consumer.subscribe([cfg.kafka.events_topic],
                                on_assign=lambda tps: [self.consumer.seek(tp, 0) for tp in tps])
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                for tp, recs in self.consumer.poll(100).items():
                    self.got.setdefault(tp.partition, []).extend((r.offset, r.value) for r in recs)
        except BaseException as exc:   # noqa: BLE001 - reported by the test
            self.errors.append(exc)

    def count(self) -> int:
        return sum(map(len, self.got.values()))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        self.consumer.close()


def the_log(cfg) -> dict[int, list[tuple[int, bytes]]]:
    topic = cfg.kafka.events_topic
    return {p: [(r.offset, r.value) for r in bus.read_partition(cfg, topic, p, 0)] for p in bus.partitions(cfg, topic)}


def run_waves(cfg, ledger, reader: Reader, waves: int = 6, per_wave: int = 30,
              before_wave: Callable[[int], None] | None = None) -> dict[int, list[tuple[int, bytes]]]:
    """Submit and activate jobs in waves (each wave's verdicts awaited), then wait until the reader has the log.
    With ``before_wave``: called with each wave's number, and every wave read by the reader before the next."""
    waiter = OutcomeWaiter(cfg)
    sender = CommandSender(cfg)
    try:
        wait_until(lambda: len(reader.consumer._parts) == cfg.kafka.partitions and not ledger.to_rebuild
                   and len(ledger.resume_at) == cfg.kafka.partitions, 60, 0.1,
                   "reader and ledger holding every partition")
        for w in range(waves):
            if before_wave is not None:
                before_wave(w)
            ids = list(range(7000 + w * per_wave, 7000 + (w + 1) * per_wave))
            verdicts(waiter, sender, submits(ids))
            verdicts(waiter, sender, [Transition(PandaID=i, action="activate", actor="test") for i in ids])
            if before_wave is not None:
                wait_until(lambda w=w: reader.count() >= 2 * per_wave * (w + 1) or reader.errors, 60, 0.05,
                           f"the reader reading wave {w}")
    finally:
        sender.close()
        waiter.close()
    log = the_log(cfg)
    total = sum(map(len, log.values()))
    assert total == 2 * waves * per_wave
    wait_until(lambda: reader.count() >= total or reader.errors, 60, 0.1, "the reader reading every event")
    return log


def read_waves(cfg, ledger, group: str, before_wave: Callable[[int], None] | None = None) -> Reader:
    """A reader of ``group`` through ``run_waves``, checked to have handed out exactly the log (closed)."""
    reader = Reader(cfg, group)
    try:
        log = run_waves(cfg, ledger, reader, before_wave=before_wave)
    finally:
        reader.close()
    assert not reader.errors, reader.errors
    assert {p: recs for p, recs in reader.got.items() if recs} == {p: recs for p, recs in log.items() if recs}
    return reader


def test_a_reader_on_the_ledgers_host_hands_out_exactly_the_log(cfg, background):
    ledger = start_ledger(cfg, background)
    reader = read_waves(cfg, ledger, "test-fed-reader")
    assert reader.consumer.stats["fed"] > 0            # some came by hand …
    assert ledger.teller.stats["runs"] > ledger.teller.stats["unchained"]


def test_runs_lost_on_the_way_are_read_from_the_topic(cfg, background):
    """In every other wave the first batch of datagrams the ledger would send is dropped: the reader meets a gap
    (or goes without runs long enough to look) and fetches the topic there; in the waves between, every run is
    told and the reader, caught up, goes back to taking them. It hands out exactly the log throughout."""
    ledger = start_ledger(cfg, background)
    send = ledger.teller._send
    lose = {"next": False, "lost": 0}

    def lossy(path, datagrams):
        if lose["next"]:
            lose["next"] = False
            lose["lost"] += 1
            return
        send(path, datagrams)

    def before_wave(w: int) -> None:
        lose["next"] = w % 2 == 1

    ledger.teller._send = lossy
    reader = read_waves(cfg, ledger, "test-fed-lossy", before_wave)
    assert lose["lost"] == 3
    assert reader.consumer.stats["fed"] > 0           # the waves told in full: taken by hand …
    assert reader.consumer.stats["fetched"] > 0       # … the lost batches: only the topic has them
