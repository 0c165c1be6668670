"""The monitor's job filters as SQL: every value a parameter, sort keys from a fixed list, pages bounded."""

from __future__ import annotations

import datetime as dt

import pytest

from projections import monitor_queries as mq


def test_no_filter_reads_the_newest_page_by_primary_key():
    sql, params = mq.jobs_page_sql(mq.JobFilter())
    assert "WHERE" not in sql and sql.endswith("ORDER BY pandaid DESC LIMIT %s OFFSET %s")
    assert params == [51, 0]   # one more than the page, to know whether a next page exists


def test_filters_are_parameters():
    since = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    f = mq.JobFilter(status="failed", queue="Q'; DROP TABLE jobs; --", owner="alice", task=7, label="user",
                     since=since, sort="modified", desc=False, page=3, size=20)
    sql, params = mq.jobs_page_sql(f)
    assert "DROP" not in sql
    assert "status = %s" in sql and "computing_site = %s" in sql and "(spec->>'prodUserName') = %s" in sql
    assert "ORDER BY modification_time ASC, pandaid ASC" in sql
    assert params == ["failed", "Q'; DROP TABLE jobs; --", "alice", 7, "user", since, 21, 40]


def test_counts_leave_the_state_filter_out():
    sql, params = mq.counts_sql(mq.JobFilter(status="failed", queue="Q"))
    assert "status = %s" not in sql and params == ["Q"] and sql.endswith("GROUP BY status")


def test_error_filter_any_field_or_one():
    sql, params = mq.jobs_page_sql(mq.JobFilter(error="1212"))
    assert sql.count("ErrorCode') = %s") == len(mq.ERROR_FIELDS) and params[:2] == ["1212", "1212"]
    sql, params = mq.jobs_page_sql(mq.JobFilter(error="pilot:1212"))
    assert "(spec->>'pilotErrorCode') = %s" in sql and params[0] == "1212" and sql.count("ErrorCode') = %s") == 1
    with pytest.raises(ValueError):
        mq.jobs_page_sql(mq.JobFilter(error="nope:1"))


def test_sort_keys_are_a_fixed_list_and_nullable_ones_go_last():
    with pytest.raises(ValueError):
        mq.jobs_page_sql(mq.JobFilter(sort="pandaid; DROP TABLE jobs"))
    sql, _ = mq.jobs_page_sql(mq.JobFilter(sort="queue"))
    assert "ORDER BY computing_site DESC NULLS LAST, pandaid DESC" in sql
    _, params = mq.jobs_page_sql(mq.JobFilter(size=10_000, page=0))
    assert params == [mq.MAX_PAGE + 1, 0]
