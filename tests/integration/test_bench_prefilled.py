"""Smoke test of the bench's ``prefilled`` workload: both pre-filled blocks close after their last job, with
their counters right, and the table reports it. Timings are not asserted."""

from __future__ import annotations

from bench import report, run


def test_prefilled_workload_closes_both_blocks_with_counters_right(tmp_path):
    results = run.run("smoke", ["prefilled"], log=lambda *_: None, log_dir=tmp_path / "logs")
    assert not results["skipped"], results["skipped"]
    pf = results["prefilled"]
    for case in ("small", "large"):
        assert pf[case]["sub_closed_after_jobs"] == pf["jobs"], case
        assert pf[case]["sub_status"] == pf[case]["destination_status"] == "closed", case
        assert pf[case]["sub_counters_right"], case
    assert "prefilled" in report.table(results)
