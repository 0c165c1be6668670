"""Projection apply rate without Kafka: the bench log, decoded and fed straight to ``Projection.apply``.

    .venv/bin/python -m bench.rebuild_apply [--events 100000] [--batch 1250] [--projection jobs ...]

Isolates the projections' own cost (decode + fold + SQL) from the broker client's: the same legal log as
``bench.rebuild_rate`` (``events()``), partitioned as the ledger does (8 partitions), applied in per-partition
batches of ``--batch`` records (read_log hands out ~1,000–10,000), committing every 20,000 events, into a
scratch schema cloned from the live tables (keys only, like a rebuild before its index build). A
``--projection`` given several times, or ``a,b``, runs them together on the same batches, as the live
projector does. Uses PANDAES_DB or the configured database (migrated).
"""

from __future__ import annotations

import argparse
import os
import time

from bench.rebuild_rate import events
from cli.rebuild import clone_tables, set_search_path
from core import bus, config, db
from projections.base import POSITIONS_TABLE, Record, save_position
from projections.runner import ALL
from schemas.messages import decode_event, encode
from services import migrations


def log(n: int, partitions: int = 8) -> dict[int, list[bytes]]:
    parts: dict[int, list[bytes]] = {}
    for ev in events(n):
        parts.setdefault(bus.partition_of(ev.PandaID, partitions), []).append(encode(ev))
    return parts


def measure(cfg: config.Config, parts: dict[int, list[bytes]], names: list[str],
            batch: int) -> tuple[int, float, float]:
    projs = [ALL[n] for n in names]
    schema = f"bench_apply_{os.getpid()}"
    with db.connect(cfg) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        conn.execute(f"CREATE SCHEMA {schema}")
        for p in projs:
            clone_tables(conn, p.tables, "public", schema, indexes=False)
        conn.execute(f"CREATE TABLE {schema}.{POSITIONS_TABLE} (LIKE public.{POSITIONS_TABLE} INCLUDING ALL)")
        conn.commit()
        set_search_path(conn, schema)
        n = since = 0
        t0, c0 = time.perf_counter(), time.process_time()
        offsets = dict.fromkeys(parts, 0)
        while offsets:
            for p in list(offsets):
                first = offsets[p]
                chunk = parts[p][first:first + batch]
                records = [Record(p, first + i, raw, decode_event(raw)) for i, raw in enumerate(chunk)]
                for proj in projs:
                    proj.apply(conn, records)
                    save_position(conn, proj.name, "bench", p, records[-1].offset + 1)
                n += len(records)
                since += len(records)
                offsets[p] = first + len(chunk)
                if offsets[p] >= len(parts[p]):
                    del offsets[p]
                if since >= 20_000:
                    conn.commit()
                    since = 0
        conn.commit()
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
        set_search_path(conn, "public")
        conn.execute(f"DROP SCHEMA {schema} CASCADE")
        conn.commit()
    return n, elapsed, cpu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=1250)
    ap.add_argument("--projection", action="append", help="default: jobs, files, archive and all three together")
    args = ap.parse_args()
    cfg = config.load()
    migrations.migrate(cfg)
    parts = log(args.events)
    runs = [r.split(",") for r in (args.projection or ["jobs", "files", "archive", "jobs,files,archive"])]
    for names in runs:
        n, elapsed, cpu = measure(cfg, parts, names, args.batch)
        print(f"apply {'+'.join(names)}: {n:,} events in {elapsed:.2f}s = {n / elapsed:,.0f} events/s;"
              f" {1e6 * cpu / n:.1f} µs CPU/event in Python (decode included)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
