"""The monitor's HTML is a pure function of what was read: escaping, the time-travel view, the plot."""

from __future__ import annotations

import datetime as dt

from services.monitor import pages


def _event(seq: int, to: str, frm: str, **body) -> dict:
    return {"seq": seq, "time": dt.datetime(2026, 1, 1, 12, 0, seq, tzinfo=dt.UTC), "actor": "<script>x</script>",
            "type": "transitioned", "action": "activate", "from_state": frm, "to_state": to,
            "body": {"type": "transitioned", **body}}


def test_values_are_escaped_and_the_current_event_marked():
    history = [_event(1, "defined", "new"), _event(2, "activated", "defined", attrs={"x": "<b>"})]
    html = pages.job_page(7, {"status": "activated", "spec": {"jobName": "<img src=x>"}}, history, 1,
                          {"job": {"jobStatus": "defined", "jobName": "<img src=x>"}, "files": []})
    assert "<script>x</script>" not in html and "&lt;script&gt;" in html
    assert "<img src=x>" not in html and "&lt;img src=x&gt;" in html
    assert '<tr class="current" data-seq="1">' in html and '<tr class="future" data-seq="2">' in html
    assert 'id="job-state"><span class="state s-defined">' in html and 'value="1"' in html


def test_jobs_page_links_keep_the_filters():
    rows = [{"pandaid": 5, "status": "failed", "computing_site": "Q", "owner": "me", "jedi_task_id": 9,
             "prod_source_label": "user", "current_priority": 1, "attempt_nr": 1, "pilotErrorCode": "1212",
             "exeErrorCode": "0", "creation_time": None, "modification_time": None}]
    html = pages.jobs_page({"queue": "Q", "page": "2"}, rows, {"failed": 1}, True, 1.0)
    assert 'href="/jobs?queue=Q&amp;page=3"' in html and 'href="/jobs?queue=Q&amp;page=1"' in html
    assert "pilot:1212" in html and "exe:0" not in html
    assert 'href="/jobs?queue=Q&amp;status=failed"' in html


def test_plot_has_a_bar_per_nonempty_bucket():
    svg = pages.bars_svg({"finished": {600: 3, 1200: 1}, "failed": {1200: 2}}, 0, 1800, 600)
    assert svg.count('class="bar-finished"') == 2 and svg.count('class="bar-failed"') == 1
    assert svg.startswith("<svg") and "<script" not in svg
