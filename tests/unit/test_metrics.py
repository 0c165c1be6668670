"""core.metrics helpers without a broker: labels of events, the lag tracker, the ports `pandaes run` hands out."""

from __future__ import annotations

from prometheus_client import REGISTRY

from core import config, metrics
from core.bus import TopicPartition
from schemas.messages import decode_event


class FakeConsumer:
    def __init__(self, positions: dict[TopicPartition, int], ends: dict[TopicPartition, int]):
        self.positions, self.ends = positions, ends
        self.fetched: dict[TopicPartition, int] = {}   # what the last fetches reported
        self.asked: list[TopicPartition] = []          # partitions whose end was asked of the broker

    def assignment(self):
        return set(self.positions)

    def end_offsets(self, tps):
        self.asked.extend(tps)
        return {tp: self.ends[tp] for tp in tps}

    def fetched_ends(self, tps):
        return {tp: self.fetched[tp] for tp in tps if tp in self.fetched}

    def position(self, tp):
        return self.positions[tp]


def test_lag_tracker_sets_position_and_lag_and_counts_records():
    tp = TopicPartition("t-unit", 3)
    tracker = metrics.LagTracker(FakeConsumer({tp: 10}, {tp: 25}), "g-unit", every=60)
    tracker.observe({tp: [object(), object()]}, now=100.0)
    labels = {"group": "g-unit", "topic": "t-unit", "partition": "3"}
    assert REGISTRY.get_sample_value("pandaes_consumer_lag", labels) == 15
    assert REGISTRY.get_sample_value("pandaes_consumer_position", labels) == 10
    assert REGISTRY.get_sample_value("pandaes_consumer_records_total", {"group": "g-unit"}) == 2
    tracker.consumer.positions[tp] = 25
    tracker.observe(None, now=110.0)          # within `every`: the broker is not asked again
    assert REGISTRY.get_sample_value("pandaes_consumer_lag", labels) == 15
    tracker.observe(None, now=200.0)
    assert REGISTRY.get_sample_value("pandaes_consumer_lag", labels) == 0


def test_lag_tracker_asks_the_broker_rarely_while_no_records_come():
    tp = TopicPartition("t-quiet", 1)
    labels = {"group": "g-quiet", "topic": "t-quiet", "partition": "1"}
    tracker = metrics.LagTracker(FakeConsumer({tp: 10}, {tp: 10}), "g-quiet", every=2, quiet_every=30)
    tracker.observe({tp: [object()]}, now=100.0)
    assert REGISTRY.get_sample_value("pandaes_consumer_lag", labels) == 0
    tracker.consumer.ends[tp] = 14
    tracker.observe(None, now=103.0)          # no records since the last reading: not before 130
    assert REGISTRY.get_sample_value("pandaes_consumer_lag", labels) == 0
    tracker.observe(None, now=131.0)
    assert REGISTRY.get_sample_value("pandaes_consumer_lag", labels) == 4
    tracker.consumer.ends[tp] = 20
    tracker.observe({tp: [object()]}, now=132.0)   # records again: every 2 s
    tracker.observe(None, now=133.5)
    assert REGISTRY.get_sample_value("pandaes_consumer_lag", labels) == 10


def test_lag_tracker_asks_the_broker_only_for_partitions_not_fetched_yet():
    fetched, new = TopicPartition("t-fetched", 0), TopicPartition("t-fetched", 1)
    consumer = FakeConsumer({fetched: 10, new: 0}, {fetched: 99, new: 7})
    consumer.fetched[fetched] = 12
    metrics.LagTracker(consumer, "g-fetched", every=2).observe({fetched: [object()]}, now=100.0)
    assert consumer.asked == [new]
    lag = {"group": "g-fetched", "topic": "t-fetched"}
    assert REGISTRY.get_sample_value("pandaes_consumer_lag", {**lag, "partition": "0"}) == 2
    assert REGISTRY.get_sample_value("pandaes_consumer_lag", {**lag, "partition": "1"}) == 7


def test_event_labels_are_trigger_and_destination():
    from schemas.messages import JobTransitioned, encode
    ev = JobTransitioned(PandaID=1, seq=2, from_state="defined", to_state="assigned", command_id="c",
                         action="assign")
    assert metrics.event_labels(decode_event(encode(ev))) == ("assign", "assigned")


def test_metrics_ports_fixed_base_and_free():
    cfg = config.load()
    names = ["ledger", "gateway", "projector"]
    fixed = metrics.metrics_ports(cfg.replace(metrics={"port": 9100}), names)
    assert fixed == {"ledger": 9100, "projector": 9101}
    free = metrics.metrics_ports(cfg, names)
    assert set(free) == {"ledger", "projector"} and all(p > 0 for p in free.values())
    urls = metrics.urls(cfg, free, names)
    assert urls["gateway"].endswith(f":{cfg.http.port}/metrics")
    assert urls["ledger"] == f"http://127.0.0.1:{free['ledger']}/metrics"


def test_a_component_whose_metrics_port_is_taken_serves_them_on_another():
    import socket
    import urllib.request

    with socket.socket() as holder:   # another process took the port `pandaes run` chose for the component
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        cfg = config.load().replace(metrics={"port": taken})
        port = metrics.serve(cfg, "unit-component")
        assert port is not None and port != taken
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        assert "pandaes_" in body


def test_pool_gauges_read_when_scraped():
    stats = {"pool_size": 4, "pool_available": 1, "requests_waiting": 2, "pool_max": 16}
    metrics.watch_pool("unit", lambda: stats)
    assert REGISTRY.get_sample_value("pandaes_db_pool_connections", {"pool": "unit", "kind": "available"}) == 1
    stats["pool_available"] = 3
    assert REGISTRY.get_sample_value("pandaes_db_pool_connections", {"pool": "unit", "kind": "available"}) == 3
