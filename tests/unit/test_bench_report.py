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
