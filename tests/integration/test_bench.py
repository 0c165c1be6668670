"""Smoke test of `pandaes bench`: a tiny run produces its table, JSON and plot. Timings are not asserted
(benchmarks measure; tests check behaviour)."""

from __future__ import annotations

import json
import os

import psycopg

from bench import report, run
from core import config


def test_tiny_bench_writes_table_json_and_plot(tmp_path):
    results = run.run("smoke", ["ceilings", "rebuild", "kill"], log=lambda *_: None, log_dir=tmp_path / "logs")
    assert not results["skipped"], results["skipped"]
    assert results["rebuild"]["events"] >= 4000
    assert results["kill"]["answers"]["event"] == 40
    assert results["ceilings"]["produce"]["per_s"] > 0
    assert results["ceilings"]["broker_rtt"]["n"] == run.SIZES["smoke"]["rtt"]
    growth = results["ceilings"]["fetch_growth"]
    if growth["measured"]:   # the embedded broker's process is known: one reading per partition length
        assert [s["batches"] for s in growth["steps"]] == list(run.SIZES["smoke"]["fetch_growth"])
        assert all(s["broker_us_per_record"] >= 0 for s in growth["steps"])
    assert "load_avg" in results["kill"]
    text = report.table(results)
    assert "rebuild" in text and "kill" in text
    path, png = report.save(results, "smoke", tmp_path)
    assert json.loads(path.read_text())["mode"] == "smoke"
    assert png is None or png.stat().st_size > 0
    # every database the run made is gone (on a shared server, hundreds were left behind before)
    tag = results["infra"]["run_tag"]
    try:   # the server the run used, when it outlives the run (an embedded one stops with it)
        conn = psycopg.connect(config.load().db.url or "postgresql://postgres@127.0.0.1:5432/postgres",
                               autocommit=True, connect_timeout=5)
    except psycopg.OperationalError:
        return
    with conn:
        left = {r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE starts_with(datname, %s)",
                                           (f"pandaes_{tag}",))}
    assert not left, left


def test_bulk_workload_runs_every_job_through_the_harvester_agents(tmp_path):
    """The Harvester-shaped workload: every job fetched, reported running and then finished (two bulk items per
    job, by the concurrent propagators) and its worker reported; the clock stops on what the gateway reports."""
    results = run.run("smoke", ["harvester"], log=lambda *_: None, log_dir=tmp_path / "logs")
    assert not results["skipped"], results["skipped"]
    hv = results["harvester"]
    assert hv["finished"] == hv["jobs"] == hv["reported_finished"] == hv["acquired"] == run.SIZES["smoke"]["jobs"]
    assert hv["bulk_items"] == 2 * hv["jobs"]
    assert {"pilot/acquire_jobs", "pilot/update_jobs_bulk", "harvester/update_workers"} <= set(hv["call_latency"])
    assert hv["kill_to_command"]["n"] > 0


def test_idle_reading_covers_every_component_the_broker_and_postgres(tmp_path):
    from cli.components import default_components
    from core import config

    results = run.run("smoke", ["idle"], log=lambda *_: None, log_dir=tmp_path / "logs")
    assert not results["skipped"], results["skipped"]
    idle = results["idle"]
    embedded = not os.environ.get("PANDAES_KAFKA")             # the fixtures' broker is ours unless one is given
    started = default_components(config.load())               # what `pandaes run` starts
    assert set(idle["cpu_pct_of_core"]) == {*started, "postgres", *(["broker"] if embedded else [])}
    assert all(idle[r][k] > 0 for r in ("cpu_probe_ms", "wakeup_us") for k in ("before", "after"))   # the speed
    assert idle["total_pct"] == sum(idle["cpu_pct_of_core"].values())
    assert any(row[0] == "idle" for row in report.rows(results))


def test_dispatch_offers_getjob_open_loop_and_hands_out_each_job_once(tmp_path):
    """The open-loop level sends its fixed number of requests whatever the answers, and every job it hands
    out is a distinct one (with the closed-loop levels after it)."""
    size = run.SIZES["smoke"]
    results = run.run("smoke", ["dispatch"], log=lambda *_: None, log_dir=tmp_path / "logs")
    assert not results["skipped"], results["skipped"]
    open_level, *closed = results["dispatch"]["levels"]
    assert open_level["offered_per_s"] == size["dispatch_open_rate"]
    assert open_level["requests"] == int(size["dispatch_open_rate"] * size["dispatch_seconds"])
    assert open_level["errors"] == 0 and open_level["jobs"] == open_level["unique_jobs"] > 0
    assert [level["pilots"] for level in closed] == list(size["dispatch_levels"])
    assert all("offered_per_s" not in level for level in closed)
    windows = open_level["latency_by_window"]   # every request counted once, in the fifth it was due in
    assert len(windows) == 5 and sum(w["n"] for w in windows) == open_level["requests"]
    assert "offered (open loop" in report.table(results)


def test_a_released_workload_leaves_no_topic_or_database_behind_and_spares_the_next():
    """bench/env.py: each workload's topics and database go as soon as it ends, so the next workload meets a broker
    holding only its own topics (the embedded broker rewrites every topic's description on each transactional
    write)."""
    from bench.env import BenchEnv
    from core import bus

    env = BenchEnv(log=lambda *_: None).start()
    try:
        first, second = env.fresh("one"), env.fresh("two")
        names = lambda c: [c.kafka.commands_topic, c.kafka.events_topic, c.kafka.rejected_topic,  # noqa: E731
                           c.kafka.replies_topic]
        env.release(first)
        admin = bus.admin(env.base)
        try:
            counts = admin.partition_counts(names(first) + names(second))
        finally:
            admin.close()
        assert not set(names(first)) & set(counts), counts
        assert set(names(second)) <= set(counts), counts
        dbname = lambda c: c.db.url.rsplit("/", 1)[-1]  # noqa: E731
        with psycopg.connect(env.base.db.url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
            have = {r[0] for r in conn.execute("SELECT datname FROM pg_database")}
        assert dbname(first) not in have and dbname(second) in have
        env.release(first)   # twice: nothing left to drop, no error
    finally:
        env.close()
