"""`pandaes daemon` with real worker processes and PostgreSQL: bounded workers, one run at a time per host,
cluster-wide exclusivity, shared connections (its cache clean-up and lock keys: tests/unit/test_daemon.py)."""

from __future__ import annotations

import os
import threading
import urllib.request

from helpers import wait_until
from prometheus_client import start_http_server

from core import db, metrics
from core.ports import free_port
from services.clock.daemon import DaemonMaster, Script


def runs(cfg) -> list[tuple]:
    with db.connect(cfg) as conn:
        try:
            return conn.execute("SELECT tag, pid, started, ended FROM daemon_test_runs ORDER BY started").fetchall()
        except Exception:
            return []


def overlaps(rows) -> list:
    return [(a, b) for a, b in zip(rows, rows[1:], strict=False) if b[2] < a[3]]


def run_masters(masters, done, timeout: float = 90) -> None:
    """Run the masters until ``done()`` holds (checked on a condition, not after a fixed time), at most ``timeout``."""
    stop = threading.Event()
    threads = [threading.Thread(target=m.run, args=(stop,), daemon=True) for m in masters]
    for t in threads:
        t.start()
    try:
        wait_until(done, timeout, 0.2, "the daemon masters to run their scripts")
    finally:
        stop.set()
        for t in threads:
            t.join(30)


def test_sync_script_runs_on_one_host_at_a_time_across_the_cluster(cfg, tmp_path):
    scripts = {"slow": Script("daemon_scripts:slow", period=0.1, sync=True),
               "boom": Script("daemon_scripts:boom", period=0.5, sync=False)}
    # two "hosts": separate lock folders, so only the PostgreSQL advisory lock keeps them apart
    a = DaemonMaster(cfg.replace(state={"dir": str(tmp_path / "a")}), scripts, n_proc=2, lock_dir=tmp_path / "a")
    b = DaemonMaster(cfg.replace(state={"dir": str(tmp_path / "b")}), scripts, n_proc=2, lock_dir=tmp_path / "b")
    def enough() -> bool:
        slow = [r for r in a.history + b.history if r.name == "slow"]
        return (len(runs(cfg)) >= 4 and {"locked", "ok"} <= {r.status for r in slow}
                and any(r.name == "slow" for r in a.history) and any(r.name == "slow" for r in b.history)
                and any(r.name == "boom" for r in a.history) and len(a.history) > len({r.pid for r in a.history}))

    run_masters([a, b], enough)
    rows = runs(cfg)
    assert len(rows) >= 4, rows
    assert not overlaps(rows), overlaps(rows)
    # both hosts compete for the script (which one wins each period is not promised, as in PanDA)
    assert any(r.name == "slow" for r in a.history) and any(r.name == "slow" for r in b.history)
    statuses = {r.status for r in a.history + b.history if r.name == "slow"}
    assert "locked" in statuses and "ok" in statuses
    assert {r.status for r in a.history if r.name == "boom"} == {"error"}   # errors are reported, not fatal
    # at most n_proc worker processes per host, and a worker's connection is reused across runs
    pids = {r.pid for r in a.history}
    assert 1 <= len(pids) <= 2
    assert len(a.history) > len(pids), "workers should run several scripts each (one connection for all)"


def test_per_host_lock_without_cluster_lock(cfg, tmp_path):
    scripts = {"slow": Script("daemon_scripts:slow", period=0.1, sync=False)}
    same = tmp_path / "host"
    a = DaemonMaster(cfg, scripts, n_proc=2, lock_dir=same)
    b = DaemonMaster(cfg, scripts, n_proc=2, lock_dir=same)
    run_masters([a, b], lambda: len(runs(cfg)) >= 3 and "busy" in {r.status for r in a.history + b.history})
    rows = runs(cfg)
    assert len(rows) >= 3 and not overlaps(rows), rows
    assert "busy" in {r.status for r in a.history + b.history}


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()


def _value(text: str, sample: str) -> float:
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    return 0.0


def test_worker_process_counters_show_on_the_daemons_metrics_endpoint(cfg, tmp_path):
    # a folder left by a master that is gone is removed at start
    stale = tmp_path / "worker-metrics" / "999999999.1"
    stale.mkdir(parents=True)
    (stale / "counter_1.db").write_bytes(b"")
    master = DaemonMaster(cfg, {"count": Script("daemon_scripts:count", period=0.2, sync=False)}, n_proc=1,
                          lock_dir=tmp_path)
    assert not stale.exists() and list(master.worker_metrics.path.iterdir()) == []
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=metrics.EXPOSED)
    stop = threading.Event()
    runner = threading.Thread(target=master.run, args=(stop,), daemon=True)
    runner.start()
    try:
        url = f"http://127.0.0.1:{port}/metrics"
        moved = 'pandaes_service_commands_total{service="daemon-test"}'
        wait_until(lambda: _value(_scrape(url), moved) >= 6, 30, 0.2, "two runs' counts on the daemon's /metrics")
        text = _scrape(url)
        worker_pids = {r.pid for r in master.history if r.name == "count"}
        assert worker_pids and os.getpid() not in worker_pids     # counted in the worker, not in this process
        assert _value(text, 'pandaes_daemon_script_runs_total{script="count",status="ok"}') >= 2
        assert text.count("# TYPE pandaes_service_commands_total counter") <= 1   # one family, merged
    finally:
        stop.set()
        runner.join(30)
        server.shutdown()
        thread.join(5)
    assert not master.worker_metrics.path.exists()
    assert master.worker_metrics.collector not in metrics.EXPOSED.extra
