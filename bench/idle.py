"""Idle cost: the whole system started (every component ``pandaes run`` starts) and left alone for a while;
CPU % of one core per component, the broker and PostgreSQL included.

A system nobody uses should cost next to nothing: components that wait for work must sleep until there is
some, not wake every few milliseconds to ask. The reading starts after the consumer groups have settled,
so startup work (migrations, group joins, the ledger's rebuild) is not counted; a periodic script of the
daemon that falls in the window is (it is part of what an idle system does).

PostgreSQL is read twice: the backends connected to this system's database (``postgres``, in the table)
and the whole server (``postgres server, all databases`` in the JSON), which on a shared server includes
everyone else's work and its own background writers.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bench import stack
from bench.procs import Components, CpuMeter, database_backends, infra_groups
from core.config import Config
from core.ports import free_port

SETTLE_SECONDS = 10   # the consumer groups join (one rebalance timeout), then [kafka] idle_after_ms more: consumers
                      # doze only after that long without records (core/bus.py Consumer.poll)


def missing() -> str:
    try:
        from cli.components import COMPONENTS  # noqa: F401
    except ImportError as exc:
        return f"needs cli.components ({exc})"
    return ""


def run(cfg: Config, *, size: dict[str, Any], log_dir: Path, log=print) -> dict[str, Any]:
    from cli.components import default_components

    cfg = stack.configure(cfg)
    url = f"http://{cfg.http.host}:{cfg.http.port}"
    seconds = float(size.get("idle_seconds", 30))
    names = default_components(cfg)   # what `pandaes run` starts
    extra = {"PANDAES_MONITOR_PORT": str(free_port())}
    dbname = cfg.db.url.rsplit("/", 1)[1].split("?")[0]
    with Components(cfg, names, log_dir / "idle", extra_env=extra) as comps:
        stack.wait_http(url)
        time.sleep(SETTLE_SECONDS + int(cfg.kafka.idle_after_ms) / 1000)
        comps.check()
        infra = infra_groups()
        server = infra.pop("postgres")
        meter = CpuMeter({**comps.pids(), **infra, "postgres": database_backends(dbname)})
        whole = CpuMeter({"postgres server, all databases": server})
        meter.start()
        whole.start()
        t0 = time.monotonic()
        time.sleep(seconds)
        used = meter.stop()
        server_used = whole.stop()
        elapsed = time.monotonic() - t0
        comps.check()
    pct = {k: 100 * v / elapsed for k, v in used.items()}
    total = sum(pct.values())
    log(f"  idle: {total:.2f}% of one core over {elapsed:.0f}s: " + ", ".join(
        f"{k} {v:.2f}%" for k, v in sorted(pct.items(), key=lambda kv: -kv[1])))
    return {"seconds": elapsed, "components": names, "cpu_s": used, "cpu_pct_of_core": pct, "total_pct": total,
            "broker_measured": "broker" in used,
            "postgres_server_pct_of_core": {k: 100 * v / elapsed for k, v in server_used.items()}}
