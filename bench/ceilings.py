"""What the infrastructure itself can do, measured in the same run as the workloads.

* broker: raw produce and consume rate of events-sized records with the project's own client settings
  (``core.bus.producer`` / ``core.bus.consumer``: idempotent acks=all producer, read_committed
  consumer) — the most any component built on ``core.bus`` could move;
* database: raw batched insert rate of jobs-shaped rows (bigint key, a few columns, a jsonb spec) by
  COPY and by executemany (psycopg 3 pipelines it), one transaction per batch like the projector.

* broker fetch growth: the broker CPU one record costs (its own batch, sent and then read by a waiting
  read_committed consumer: a ledger's command, a gateway's reply) when its partition already holds
  ``FETCH_GROWTH_STEPS`` batches. Apache Kafka finds a fetch's offset by index; the embedded Tansu's memory
  storage lists the partition's stored batches for every fetch that returns records, so this cost grows
  with the log (docs/performance.md, ninth session) — the figure shows whether a broker does;
* floors: the latency of one broker round trip (send with the project's producer, flush, seen by a
  read_committed consumer with the ledger's short fetch wait) and of one database commit (a one-row
  insert, committed: the WAL flush every projection batch and every service action pays).

Each workload figure is reported as a fraction of the matching ceiling (rates) or as a multiple of the
matching floor (latencies).
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import msgspec
from psycopg.types.json import Jsonb

from bench import procs, workload
from bench.stats import percentiles
from core import bus, db
from core.bus import TopicPartition
from core.config import Config
from core.states import JobStatus
from schemas.messages import encode, key_of


def payloads(n: int) -> list[tuple[bytes, bytes]]:
    """(key, value) of the first ``n`` workload events: the real size mix (~370 bytes mean)."""
    return [(key_of(ev.PandaID), encode(ev)) for ev in workload.events(n)]


def produce(cfg: Config, records: list[tuple[bytes, bytes]], topic: str | None = None, *,
            transaction_every: int = 0) -> dict[str, Any]:
    """Records/s from the first send to the end of flush (all acknowledged).

    ``transaction_every`` > 0 writes like the ledger does: a transaction per that many records. The
    log then ends in a commit marker, which matters on Tansu: it reports a partition's end offset as
    the base offset of its last batch + 1, short of the true end when that batch holds several records."""
    topic = topic or cfg.kafka.events_topic
    tid = f"{cfg.kafka.group_prefix}-bench-writer" if transaction_every else None
    prod = bus.producer(cfg, transactional_id=tid)
    try:
        prod.partitions(topic)   # metadata and connection outside the timing
        if tid:
            prod.init_transactions()
        t0 = time.perf_counter()
        for i in range(0, len(records), transaction_every or len(records) or 1):
            if tid:
                prod.begin_transaction()
            for key, value in records[i:i + (transaction_every or len(records))]:
                prod.send(topic, key=key, value=value)
            if tid:
                prod.commit_transaction()
        prod.flush()
        elapsed = time.perf_counter() - t0
    finally:
        prod.close()
    size = sum(len(k) + len(v) for k, v in records)
    return {"records": len(records), "seconds": elapsed, "per_s": len(records) / elapsed,
            "mb_per_s": size / elapsed / 1e6, "transactional": bool(tid)}


def consume(cfg: Config, expect: int, topic: str | None = None) -> dict[str, Any]:
    """Records/s reading a topic from the beginning with an assign()-style read_committed consumer."""
    topic = topic or cfg.kafka.events_topic
    c = bus.consumer(cfg, group_id=None)
    try:
        tps = [TopicPartition(topic, p) for p in c.partitions(topic)]
        c.assign(tps)
        for tp, start in c.beginning_offsets(tps).items():   # resolved before the clock starts
            c.seek(tp, start)
        n = 0
        t0 = time.perf_counter()
        deadline = t0 + 300
        while n < expect and time.perf_counter() < deadline:
            for msgs in c.poll(timeout_ms=500).values():
                n += len(msgs)
        elapsed = time.perf_counter() - t0
    finally:
        c.close()
    return {"records": n, "seconds": elapsed, "per_s": n / elapsed}


def round_trip(cfg: Config, n: int, topic: str | None = None) -> dict[str, Any]:
    """Latency of one record from ``send`` to a read_committed consumer's poll, ``n`` times in sequence."""
    topic = topic or cfg.kafka.rejected_topic
    prod = bus.producer(cfg)
    c = bus.consumer(cfg, group_id=None, fetch_max_wait_ms=cfg.kafka.urgent_fetch_max_wait_ms)
    samples: list[float] = []
    try:
        tps = [TopicPartition(topic, p) for p in c.partitions(topic)]
        c.assign(tps)
        c.seek_to_end(*tps)
        prod.send(topic, key=b"warm", value=b"up").result(30)
        deadline = time.perf_counter() + 30
        while not c.poll(timeout_ms=200) and time.perf_counter() < deadline:
            pass
        for i in range(n):
            mark = f"rtt{i}".encode()
            t0 = time.perf_counter()
            prod.send(topic, key=mark, value=mark)
            prod.flush()
            seen = False
            while not seen and time.perf_counter() - t0 < 10:
                seen = any(m.key == mark for msgs in c.poll(timeout_ms=100).values() for m in msgs)
            samples.append(time.perf_counter() - t0)
    finally:
        prod.close()
        c.close()
    return percentiles(samples)


FETCH_GROWTH_TOPIC = "pandaes.bench.fetch-growth"
FETCH_GROWTH_STEPS = (1_000, 10_000)   # batches already in the partition when the cost is read
FETCH_GROWTH_SAMPLES = 300             # records sent and read at each step


def fetch_growth(cfg: Config, broker_pid: int | None, steps: tuple[int, ...] = FETCH_GROWTH_STEPS,
                 samples: int = FETCH_GROWTH_SAMPLES) -> dict[str, Any]:
    """Broker CPU µs per record sent alone and read by a waiting consumer, at each partition length in ``steps``.

    Each record is flushed on its own, so each is one stored batch (as the gateway's commands are under light
    load); the partition is filled to each step the same way. Without the broker's process (an external
    broker) the figure cannot be read: ``{"measured": False}``."""
    if broker_pid is None:
        return {"measured": False}
    adm = bus.admin(cfg)
    adm.create_topics({FETCH_GROWTH_TOPIC: 1})
    prod = bus.producer(cfg, linger_ms=0)
    c = bus.consumer(cfg, group_id=None, fetch_max_wait_ms=cfg.kafka.urgent_fetch_max_wait_ms)
    out: dict[str, Any] = {"measured": True, "steps": []}
    try:
        tp = TopicPartition(FETCH_GROWTH_TOPIC, 0)
        c.assign([tp])
        c.seek_to_end(tp)
        stored = 0
        for step in steps:
            while stored < step:
                prod.send(FETCH_GROWTH_TOPIC, key=b"fill", value=b"x" * 300, partition=0)
                prod.flush()
                stored += 1
            while c.poll(timeout_ms=50):   # read up to the end: only the samples are fetched below
                pass
            cpu0, t0 = procs.cpu_seconds(broker_pid), time.perf_counter()
            for _ in range(samples):
                prod.send(FETCH_GROWTH_TOPIC, key=b"probe", value=b"x" * 300, partition=0)
                prod.flush()
                deadline = time.perf_counter() + 10
                while not c.poll(timeout_ms=100) and time.perf_counter() < deadline:
                    pass
            used = procs.cpu_seconds(broker_pid) - cpu0
            stored += samples
            out["steps"].append({"batches": step, "broker_us_per_record": 1e6 * used / samples,
                                 "ms_per_record": 1e3 * (time.perf_counter() - t0) / samples})
    finally:
        prod.close()
        c.close()
        try:
            adm.delete_topics([FETCH_GROWTH_TOPIC])
        finally:
            adm.close()
    first, last = out["steps"][0], out["steps"][-1]
    out["growth"] = last["broker_us_per_record"] / max(first["broker_us_per_record"], 1e-9)
    return out


def commit_latency(cfg: Config, n: int) -> dict[str, Any]:
    """Latency of a one-row INSERT + COMMIT (a durable commit: the floor of any database write)."""
    samples: list[float] = []
    with db.connect(cfg) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS bench_commit (i int)")
        conn.commit()
        for i in range(n):
            t0 = time.perf_counter()
            conn.execute("INSERT INTO bench_commit VALUES (%s)", (i,))
            conn.commit()
            samples.append(time.perf_counter() - t0)
        conn.execute("DROP TABLE bench_commit")
        conn.commit()
    return percentiles(samples)


_TABLE = """CREATE TABLE IF NOT EXISTS bench_rows (
    pandaid bigint PRIMARY KEY, partition int NOT NULL, seq int NOT NULL, status text NOT NULL,
    computing_site text, current_priority int NOT NULL, modification_time timestamptz NOT NULL,
    spec jsonb NOT NULL)"""


def database(cfg: Config, n_rows: int, batch: int = 2000) -> dict[str, Any]:
    """Rows/s inserted into a jobs-shaped table, by COPY and by executemany, ``batch`` rows per commit."""
    specs = [ev.job for ev in workload.events(n_rows * 8) if hasattr(ev, "job")][:n_rows]
    now = dt.datetime.now(dt.UTC)
    rows = [(s.PandaID, s.PandaID % 8, 1, JobStatus.DEFINED, s.computingSite, s.currentPriority, now,
             msgspec.to_builtins(s)) for s in specs]
    out: dict[str, Any] = {}
    with db.connect(cfg) as conn:
        conn.execute(_TABLE)
        conn.commit()
        for method in ("copy", "executemany"):
            conn.execute("TRUNCATE bench_rows")
            conn.commit()
            t0 = time.perf_counter()
            for i in range(0, len(rows), batch):
                chunk = rows[i:i + batch]
                with conn.transaction(), conn.cursor() as cur:
                    if method == "copy":
                        with cur.copy("COPY bench_rows FROM STDIN") as cp:
                            for r in chunk:
                                cp.write_row((*r[:-1], Jsonb(r[-1])))
                    else:
                        cur.executemany("INSERT INTO bench_rows VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                                        [(*r[:-1], Jsonb(r[-1])) for r in chunk])
            elapsed = time.perf_counter() - t0
            out[method] = {"rows": len(rows), "seconds": elapsed, "per_s": len(rows) / elapsed}
        conn.execute("DROP TABLE bench_rows")
        conn.commit()
    out["per_s"] = max(out["copy"]["per_s"], out["executemany"]["per_s"])
    return out


def run(cfg: Config, *, n_records: int, n_rows: int, n_rtt: int = 100,
        growth_steps: tuple[int, ...] = FETCH_GROWTH_STEPS, growth_samples: int = FETCH_GROWTH_SAMPLES,
        log=print) -> dict[str, Any]:
    records = payloads(n_records)
    log(f"  ceilings: producing {len(records):,} records …")
    prod = produce(cfg, records)
    log(f"  ceilings: produce {prod['per_s']:,.0f}/s; consuming …")
    cons = consume(cfg, len(records))
    log(f"  ceilings: consume {cons['per_s']:,.0f}/s; database inserts ({n_rows:,} rows) …")
    dbres = database(cfg, n_rows)
    log(f"  ceilings: COPY {dbres['copy']['per_s']:,.0f} rows/s, executemany {dbres['executemany']['per_s']:,.0f}")
    rtt = round_trip(cfg, n_rtt)
    growth = fetch_growth(cfg, procs.BROKER_PID, growth_steps, growth_samples)
    if growth["measured"]:
        log("  ceilings: broker CPU per record sent and fetched alone, by batches already in its partition: "
            + ", ".join(f"{s['batches']:,}: {s['broker_us_per_record']:,.0f} µs" for s in growth["steps"])
            + f" (×{growth['growth']:.1f})")
    commit = commit_latency(cfg, n_rtt)
    log(f"  ceilings: broker round trip p50 {rtt.get('p50_ms', 0):.1f} ms p99 {rtt.get('p99_ms', 0):.1f} ms; "
        f"database commit p50 {commit.get('p50_ms', 0):.1f} ms p99 {commit.get('p99_ms', 0):.1f} ms")
    return {"produce": prod, "consume": cons, "db_insert": dbres, "broker_rtt": rtt, "db_commit": commit,
            "fetch_growth": growth}
