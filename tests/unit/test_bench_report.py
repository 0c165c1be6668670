"""The bench's table: the bulk (Harvester-style) workload is reported beside the single-pilot lifecycle."""

from bench import report


def test_bulk_workload_has_its_rows_and_goal():
    rows = report.rows({
        "lifecycle": {"finished": 400, "jobs": 400, "pilots": 50, "jobs_per_s": 19.0, "steady_jobs_per_s": 19.7},
        "harvester": {"finished": 397, "jobs": 400, "batch": 50, "instances": 2, "jobs_per_s": 8.8,
                      "kill_to_command": {"n": 20, "p50_ms": 10, "p95_ms": 32, "p99_ms": 40}},
    })
    by_workload = {(wl, figure): (value, goal) for wl, figure, value, _, goal in rows}
    assert by_workload[("lifecycle", "400/400 jobs submit → finished, 50 pilots")] == (
        "19.0 jobs/s (steady 19.7)", "≥ 250 jobs/s")
    bulk = ("harvester", "397/400 jobs bulk (batches of 50, 2 instances)")
    assert by_workload[bulk] == ("8.8 jobs/s", "≥ 1,000 jobs/s")
    assert by_workload[("harvester", "kill → kill-worker command (p50/p95/p99)")][0] == "10/32/40 ms"


def test_cpu_tables_name_the_broker_or_say_it_is_not_measured():
    per_job = {"gateway": 9000.0, "postgres": 12000.0, "broker": 3000.0}
    rows = report.rows({"machine": {"nproc": 2},
                        "lifecycle": {"finished": 10, "jobs": 10, "pilots": 5, "jobs_per_s": 5.0,
                                      "cpu_us_per_job": per_job},
                        "harvester": {"finished": 10, "jobs": 10, "batch": 50, "instances": 2, "jobs_per_s": 5.0,
                                      "cpu_us_per_job": {"gateway": 2000.0, "postgres": 1000.0}}})
    cpu = {wl: value for wl, figure, value, _, _ in rows if figure.startswith("CPU µs per job")}
    assert "broker 3,000" in cpu["lifecycle"] and "not measured" not in cpu["lifecycle"]
    assert "broker not measured" in cpu["harvester"]


def test_idle_reading_lists_every_component_against_its_goal():
    rows = report.rows({"idle": {"seconds": 20.0, "total_pct": 1.5, "broker_measured": True,
                                 "cpu_pct_of_core": {"ledger": 0.5, "broker": 0.75, "postgres": 0.25}}})
    (idle,) = [r for r in rows if r[0] == "idle"]
    assert idle[1] == "CPU % of one core, whole system idle 20 s (total 1.50%)"
    assert idle[2] == "broker 0.75, ledger 0.50, postgres 0.25"
    assert idle[4] == "< 2%"


def _ceilings(**extra: object) -> dict:
    return {"produce": {"per_s": 1.0}, "consume": {"per_s": 1.0},
            "db_insert": {"copy": {"per_s": 1.0}, "executemany": {"per_s": 1.0}}, **extra}


def test_broker_fetch_growth_is_reported_against_a_flat_goal():
    growth = {"measured": True, "growth": 8.1,
              "steps": [{"batches": 1000, "broker_us_per_record": 2933.0},
                        {"batches": 10000, "broker_us_per_record": 23900.0}]}
    rows = report.rows({"ceilings": _ceilings(fetch_growth=growth)})
    (row,) = [r for r in rows if r[1].startswith("broker CPU per record fetched alone")]
    assert row[2] == "1,000: 2,933 µs, 10,000: 23,900 µs (×8.1)"
    assert row[4].startswith("flat")


def test_broker_fetch_growth_not_measured_on_an_outside_broker_shows_no_row():
    rows = report.rows({"ceilings": _ceilings(fetch_growth={"measured": False})})
    assert not [r for r in rows if "fetched alone" in r[1]]


def test_an_open_loop_level_shows_its_p99_from_first_to_last_fifth():
    level = {"offered_per_s": 500, "pilots": 80, "requests_per_s": 499.0,
             "latency": {"n": 10, "p50_ms": 20, "p95_ms": 80, "p99_ms": 110},
             "latency_by_window": [{"n": 5, "p99_ms": 21.0}, {"n": 0}, {"n": 5, "p99_ms": 129.4}]}
    rows = report.rows({"dispatch": {"levels": [level, {"pilots": 1, "requests_per_s": 60.0,
                                                         "latency": {"n": 3, "p50_ms": 12}}]}})
    by_figure = {figure: value for wl, figure, value, _, _ in rows if wl == "dispatch"}
    assert by_figure["getJob, 500 req/s offered: p99 by fifth of the level"] == "21 → 129 ms"
    assert not any("fifth" in f and "1 pilots" in f for f in by_figure)
