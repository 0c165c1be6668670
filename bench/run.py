"""Runs the workloads of one `pandaes bench` in order and collects their figures.

Sizes per mode are fixed here so that two runs of one mode are comparable; quick mode keeps the same
shapes at a fraction of the size (under two minutes), full mode the sizes the issue asks for (≥1M
events rebuilt, ≥100k activated jobs behind getJob) within fifteen minutes. The getJob levels and the
lifecycle are time-boxed (``dispatch_seconds`` per level, ``lifecycle_seconds``), so a mode's duration
does not grow when the machine is slow or loaded; what they report is what got done in that time.

``scale`` (bench/scale.py: the ledger's rebuild and getJob with 10 thousand and with 10 million archived
jobs; 1 million in quick mode) runs only when named: ``pandaes bench --only scale``. ``prefilled``
(bench/prefilled.py: the data path's cost per file with 10 and with 100,000 files already in the output
dataset) takes seconds and runs by default.

The load average is recorded before and after every workload: on a shared machine it says how much of
the CPU the figures actually had; so is a CPU speed probe (``bench.speed``), which shows what the load
average cannot: other tenants of the same host slowing this machine down.
"""

from __future__ import annotations

import importlib
import os
import time
import traceback
from pathlib import Path
from typing import Any

from bench import ceilings, kill, rebuild, speed
from bench.env import BenchEnv
from bench.report import RESULTS, machine

SIZES: dict[str, dict[str, Any]] = {
    "smoke": {"records": 2_000, "rows": 1_000, "rtt": 20, "fetch_growth": (50, 200), "fetch_growth_samples": 20,
              "rebuild_events": 4_000, "kills": 40, "kill_rate": 50,
              "backlog": 300, "dispatch_levels": (1, 5), "dispatch_seconds": 2,
              "dispatch_open_rate": 20, "jobs": 40, "pilots": 10,
              "lifecycle_seconds": 60, "idle_seconds": 5,
              "scale_live": 200, "scale_small": 1_000, "scale_large": 20_000,
              "prefill_small": 10, "prefill_large": 2_000, "prefill_jobs": 20, "prefill_poll": 10},
    "quick": {"records": 20_000, "rows": 10_000, "rtt": 100, "fetch_growth": (1_000, 5_000),
              "fetch_growth_samples": 100, "rebuild_events": 100_000, "kills": 1_000,
              "kill_rate": 1_000, "backlog": 4_000, "dispatch_levels": (1, 50, 500), "dispatch_seconds": 5,
              "dispatch_open_rate": 500,
              "jobs": 400, "pilots": 50, "lifecycle_seconds": 45, "idle_seconds": 20,
              "scale_live": 2_000, "scale_small": 10_000, "scale_large": 1_000_000,
              "prefill_small": 10, "prefill_large": 100_000, "prefill_jobs": 400, "prefill_poll": 40},
    "full": {"records": 200_000, "rows": 100_000, "rtt": 500, "fetch_growth": (1_000, 10_000),
             "fetch_growth_samples": 300, "rebuild_events": 1_000_000, "kills": 5_000,
             "kill_rate": 1_000, "backlog": 100_000, "dispatch_levels": (1, 50, 500), "dispatch_seconds": 30,
             "dispatch_open_rate": 500,
             "jobs": 4_000, "pilots": 200, "lifecycle_seconds": 200, "idle_seconds": 60,
             "scale_live": 10_000, "scale_small": 10_000, "scale_large": 10_000_000,
             "prefill_small": 10, "prefill_large": 100_000, "prefill_jobs": 1_000, "prefill_poll": 100},
}
WORKLOADS = ("ceilings", "rebuild", "kill", "dispatch", "lifecycle", "harvester", "idle", "prefilled")
# run only when named (`--only scale`): loading 10 million archived jobs takes longer than the rest together
ON_REQUEST = ("scale",)


def _optional(module: str):
    """A workload whose services may not exist yet: its module, or None with the reason logged."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        return exc


def run(mode: str = "quick", only: list[str] | None = None, log=print,
        log_dir: Path = RESULTS / "logs") -> dict[str, Any]:
    size = SIZES[mode]
    wanted = only or list(WORKLOADS)
    from core import config

    results: dict[str, Any] = {"mode": mode, "started": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine(),
                               "kafka_client": config.load().kafka.get("client", "confluent"),
                               "sizes": size, "skipped": {}}
    env = BenchEnv(log=log).start()
    results["infra"] = {"kafka": env.kafka, "embedded_broker": env.embedded_broker_pid is not None,
                        "run_tag": env.run_tag}
    t_all = time.perf_counter()
    try:
        for name in wanted:
            t0 = time.perf_counter()
            load0 = os.getloadavg()
            speed0, wake0 = speed.probe_ms(), speed.wakeup_us()
            log(f"[{name}]  (load average {load0[0]:.1f}, CPU probe {speed0:.0f} ms, wake-up {wake0:.0f} µs)")
            cfg = None
            try:
                cfg = env.fresh(name[:4])
                if name == "ceilings":
                    results[name] = ceilings.run(cfg, n_records=size["records"], n_rows=size["rows"],
                                                 n_rtt=size["rtt"], growth_steps=size["fetch_growth"],
                                                 growth_samples=size["fetch_growth_samples"], log=log)
                elif name == "rebuild":
                    results[name] = rebuild.run(cfg, n_events=size["rebuild_events"], log=log)
                elif name == "kill":
                    results[name] = kill.run(cfg, n_kills=size["kills"], rate=size["kill_rate"], log_dir=log_dir,
                                             log=log)
                else:
                    mod = _optional(f"bench.{name}")
                    if isinstance(mod, Exception):
                        results["skipped"][name] = str(mod)
                        log(f"  skipped: {mod}")
                        continue
                    missing = mod.missing()
                    if missing:
                        results["skipped"][name] = missing
                        log(f"  skipped: {missing}")
                        continue
                    results[name] = mod.run(cfg, size=size, log_dir=log_dir, log=log)
            except Exception as exc:
                results["skipped"][name] = f"failed: {exc!r}"
                log(f"  FAILED: {exc!r}\n{traceback.format_exc()}")
            finally:
                if cfg is not None:
                    try:   # the next workload meets a broker holding only its own topics (bench/env.py)
                        env.release(cfg)
                    except Exception as exc:  # noqa: BLE001 - a leftover topic must not stop the run
                        log(f"  (could not drop {name}'s topics and database: {exc!r})")
            speed1, wake1 = speed.probe_ms(), speed.wakeup_us()
            if isinstance(results.get(name), dict):
                results[name]["load_avg"] = {"before": load0, "after": os.getloadavg()}
                results[name]["cpu_probe_ms"] = {"before": speed0, "after": speed1}
                results[name]["wakeup_us"] = {"before": wake0, "after": wake1}
            log(f"  ({time.perf_counter() - t0:.0f}s, load average now {os.getloadavg()[0]:.1f}, "
                f"CPU probe {speed1:.0f} ms, wake-up {wake1:.0f} µs)")
    finally:
        env.close()
    results["seconds"] = time.perf_counter() - t_all
    results["load_avg_at_end"] = os.getloadavg()
    return results


