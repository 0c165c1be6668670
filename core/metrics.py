"""Prometheus metrics of every component, and the one place that serves them.

Why one module: every metric is declared here once (name, help, labels), so the Grafana dashboard
(docs/grafana-dashboard.json) and the components agree on the names, and a component only calls
``EVENTS.labels(...).inc()`` where the work happens. The exposition is prometheus_client's own.

Each component runs in its own process (``pandaes run``) and serves its process's registry on
``[metrics] host:port`` (``serve``); the gateway serves ``/metrics`` on its own aiohttp app instead
(``services/gateway/app.py``). Components run as threads of one process (tests) share the registry.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.metrics_core import Metric

from core.config import Config
from core.ports import free_port

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------- ledger
EVENTS = Counter("pandaes_ledger_events", "Events written by the ledger", ["trigger", "to_state"])
REJECTIONS = Counter("pandaes_ledger_rejections", "Commands the ledger rejected", ["reason"])
LEDGER_BATCH = Histogram("pandaes_ledger_batch_commands", "Commands judged per ledger transaction",
                         buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000))
LEDGER_ROW_READS = Counter("pandaes_ledger_row_reads_total",
                           "Jobs the ledger looked up in the jobs projection (not held in memory: final long ago, "
                           "archived, or new)")
LEDGER_TXN = Histogram("pandaes_ledger_transaction_seconds",
                       "Time from begin to commit of one ledger transaction",
                       buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))

# ------------------------------------------------------------------------------------------- consumers
CONSUMER_POSITION = Gauge("pandaes_consumer_position", "Next offset a consumer group will read",
                          ["group", "topic", "partition"])
CONSUMER_LAG = Gauge("pandaes_consumer_lag", "Records between a consumer group's position and the log end",
                     ["group", "topic", "partition"])
CONSUMED = Counter("pandaes_consumer_records", "Records consumed", ["group"])
WATCHDOG_STUCK = Counter("pandaes_watchdog_stuck", "Loops found stuck by their watchdog (no progress while records "
                         "waited, or a step that never ended); the process then exits to be restarted", ["loop"])

# ----------------------------------------------------------------------------------------- projections
PROJECTION_POSITION = Gauge("pandaes_projection_position", "Next event offset a projection will apply",
                            ["projection", "partition"])
PROJECTION_BATCH = Histogram("pandaes_projection_batch_seconds", "One projector poll applied in one transaction",
                             buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))

# ------------------------------------------------------------------------------------------- services
SERVICE_COMMANDS = Counter("pandaes_service_commands", "Commands sent by a service", ["service"])
SERVICE_ACTIONS = Counter("pandaes_service_actions", "Side-effect actions run by a service", ["service"])

# -------------------------------------------------------------------------------------------- gateway
HTTP_LATENCY = Histogram("pandaes_http_request_seconds", "HTTP request latency", ["route", "method", "status"],
                         buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
GETJOB = Counter("pandaes_getjob", "getJob / acquire_jobs outcomes", ["outcome"])   # job | nojob | timeout
VERDICT_LATENCY = Histogram("pandaes_command_verdict_seconds",
                            "From sending a command to the ledger's verdict, seen by the gateway",
                            ["command"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20))
DB_POOL = Gauge("pandaes_db_pool_connections", "Database pool connections", ["pool", "kind"])
CLAIM_WAIT = Histogram("pandaes_getjob_claim_wait_seconds",
                       "How long a getJob waited for a connection to claim its jobs on: when the gateway or the "
                       "database falls behind, this queue is where getJob's latency grows first",
                       buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))

# --------------------------------------------------------------------------------------------- daemon
DAEMON_RUNS = Counter("pandaes_daemon_script_runs", "Daemon script runs by outcome, counted in the worker process "
                      "that ran them", ["script", "status"])   # ok | skipped | busy | locked | error


def event_labels(event) -> tuple[str, str]:
    """(trigger, destination state) of an event: the TRANSITIONS trigger, or "submit" for a submission."""
    return str(getattr(event, "action", "submit")), str(event.to_state)


_event_children: dict[tuple[str, str], Any] = {}
_rejection_children: dict[str, Any] = {}


def count_event(event) -> None:
    """EVENTS + 1 for the event's labels (children cached: the ledger counts every event it writes)."""
    key = event_labels(event)
    child = _event_children.get(key)
    if child is None:
        child = _event_children[key] = EVENTS.labels(*key)
    child.inc()


def count_rejection(code: str) -> None:
    child = _rejection_children.get(code)
    if child is None:
        child = _rejection_children[code] = REJECTIONS.labels(code)
    child.inc()


def watch_pool(name: str, stats: Callable[[], Mapping[str, int]]) -> None:
    """Report a psycopg_pool's size/available/waiting, read when scraped (no thread of our own)."""
    # kind "queued": requests waiting for a connection (psycopg_pool's requests_waiting)
    for kind, key in (("size", "pool_size"), ("available", "pool_available"), ("queued", "requests_waiting"),
                      ("max", "pool_max")):
        DB_POOL.labels(pool=name, kind=kind).set_function(lambda key=key: float(stats().get(key, 0)))


class LagTracker:
    """Keeps a consumer's position and lag gauges up to date, at most every ``every`` seconds while records
    come and every ``quiet_every`` seconds while none do. The log ends are those the consumer's last fetches
    reported (``fetched_ends``: no request); only a partition not fetched yet is asked for (``end_offsets``,
    two requests per partition with librdkafka: under load they were 7 % of the embedded broker's requests)."""

    def __init__(self, consumer, group: str, every: float = 2.0, quiet_every: float = 30.0):
        self.consumer = consumer
        self.group = group
        self.every = every
        self.quiet_every = quiet_every
        self._last = float("-inf")
        self._got = True     # records since the last reading (the first reading comes at once)

    def observe(self, polled: Mapping | None = None, now: float | None = None) -> None:
        if polled:
            CONSUMED.labels(self.group).inc(sum(len(m) for m in polled.values()))
            self._got = True
        now = time.monotonic() if now is None else now
        if now < self._last + (self.every if self._got else self.quiet_every):
            return
        self._last, self._got = now, False
        try:
            assignment = list(self.consumer.assignment())
            if not assignment:
                return
            ends = self.consumer.fetched_ends(assignment)
            unknown = [tp for tp in assignment if tp not in ends]
            if unknown:
                ends.update(self.consumer.end_offsets(unknown))
            for tp in assignment:
                pos = self.consumer.position(tp)
                labels = (self.group, tp.topic, str(tp.partition))
                CONSUMER_POSITION.labels(*labels).set(pos)
                CONSUMER_LAG.labels(*labels).set(max(0, ends.get(tp, pos) - pos))
        except Exception as exc:  # metrics never stop the work
            log.debug("lag metrics of %s not updated: %s", self.group, exc)


class Exposed:
    """What a component's /metrics shows: this process's registry and the collectors added to it, with the
    families of one name merged into one (the daemon and its workers declare the same metrics, and a
    scrape must not see a family twice); a sample present in both is summed."""

    def __init__(self) -> None:
        self.extra: list[Any] = []

    def add(self, collector: Any) -> None:
        self.extra.append(collector)

    def remove(self, collector: Any) -> None:
        if collector in self.extra:
            self.extra.remove(collector)

    def collect(self) -> Iterable[Metric]:
        merged: dict[str, Metric] = {}
        for source in (REGISTRY, *list(self.extra)):
            for family in source.collect():
                into = merged.get(family.name)
                if into is None:
                    merged[family.name] = family
                    continue
                index = {(s.name, tuple(sorted(s.labels.items()))): i for i, s in enumerate(into.samples)}
                for sample in family.samples:
                    i = index.get((sample.name, tuple(sorted(sample.labels.items()))))
                    if i is None:
                        into.samples.append(sample)
                    else:
                        into.samples[i] = into.samples[i]._replace(value=into.samples[i].value + sample.value)
        return list(merged.values())

    def restricted_registry(self, names: Iterable[str]) -> Any:
        """For ``/metrics?name[]=…`` (prometheus_client's handler asks the registry for it)."""
        wanted = set(names)
        parent = self

        class Restricted:
            def collect(self) -> Iterable[Metric]:
                return [m for m in (f._restricted_metric(wanted) for f in parent.collect()) if m]
        return Restricted()


EXPOSED = Exposed()


class SharedAcrossProcesses:
    """What ``/metrics`` of one of several processes serving the same port shows (the gateway's
    ``[gateway] processes``): every family the processes write to the multiprocess folder ``path``, summed
    over them by prometheus_client's ``MultiProcessCollector`` (dead processes' counters included), and the
    ``local`` families (read when scraped, e.g. a pool's gauges) of the answering process only."""

    def __init__(self, path: str, local: Iterable[str] = ("pandaes_db_pool_connections",)):
        from prometheus_client import multiprocess

        self.shared = multiprocess.MultiProcessCollector(None, path=path)
        self.local = frozenset(local)

    def collect(self) -> Iterable[Metric]:
        own = [f for f in REGISTRY.collect() if f.name in self.local]
        return [f for f in self.shared.collect() if f.name not in self.local] + own


def mark_process_dead(pid: int | None, path: str) -> None:
    """A process writing to multiprocess folder ``path`` is gone: its live gauges go, its counters stay."""
    if pid:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, path)


def metrics_ports(cfg: Config, names: Sequence[str]) -> dict[str, int]:
    """The metrics port of each component `pandaes run` starts: ``[metrics] port`` + index, or a free port
    each when it is 0. The gateway is absent: it serves /metrics on its own HTTP port."""
    base = int(cfg.metrics.port)
    out: dict[str, int] = {}
    for i, name in enumerate(n for n in names if n != "gateway"):
        out[name] = base + i if base else free_port(cfg.metrics.host)
    return out


def urls(cfg: Config, ports: Mapping[str, int], names: Iterable[str]) -> dict[str, str]:
    """Where each component's /metrics is (the gateway's on its HTTP port)."""
    out = {}
    for name in names:
        if name == "gateway":
            out[name] = f"http://{cfg.http.host}:{cfg.http.port}/metrics"
        elif name in ports:
            out[name] = f"http://{cfg.metrics.host}:{ports[name]}/metrics"
    return out


def serve(cfg: Config, component: str) -> int | None:
    """Serve this process's metrics for ``component`` on ``[metrics] host:port`` (0: a free port); the port,
    or None when metrics are off or the component serves them itself (the gateway)."""
    if not cfg.metrics.enabled or component == "gateway":
        return None
    port = int(cfg.metrics.port) or free_port(cfg.metrics.host)
    try:
        start_http_server(port, addr=cfg.metrics.host, registry=EXPOSED)
    except OSError as exc:
        # the port was free when `pandaes run` chose it, but another process may hold it by the time this
        # component (re)starts: a component must not crash-loop over its metrics, so it serves them elsewhere
        taken = port
        port = free_port(cfg.metrics.host)
        start_http_server(port, addr=cfg.metrics.host, registry=EXPOSED)
        log.error("%s metrics: port %d is not available (%s); serving them on http://%s:%d/metrics instead",
                  component, taken, exc, cfg.metrics.host, port)
        return port
    log.info("%s metrics on http://%s:%d/metrics", component, cfg.metrics.host, port)
    return port


#: the environment variable prometheus_client's multiprocess mode reads (the daemon's workers, the gateway's processes)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` still runs: a multiprocess metrics file of a dead one is cleaned up."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
