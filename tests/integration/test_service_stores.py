"""The services' own stores on the real PostgreSQL: the adder's pending reports and the retrier's retries."""

from __future__ import annotations

from core import db
from services.reactors import pending_reports, retries


def test_pending_reports_back_off_and_lease_to_one_adder(cfg):
    with db.connect(cfg, autocommit=True) as conn:
        assert pending_reports.defer(conn, 1, 6, "busy", now=1000.0, retry_delay=2, max_delay=5) == (1, 2)
        assert pending_reports.defer(conn, 1, 6, "busy", now=1000.0, retry_delay=2, max_delay=5) == (2, 4)
        assert pending_reports.defer(conn, 1, 6, "busy", now=1000.0, retry_delay=2, max_delay=5) == (3, 5)
        pending_reports.defer(conn, 2, 3, "busy", now=1000.0, retry_delay=1, max_delay=5)
        assert pending_reports.due(conn, 1002.0) == [(2, 3)]                 # 1 is due at 1005
        assert pending_reports.due(conn, 1005.0) == [(2, 3), (1, 6)]
        assert pending_reports.lease(conn, [(1, 6), (2, 3)], 1005.0, 60, "a") == [(1, 6), (2, 3)]
        assert pending_reports.lease(conn, [(1, 6), (2, 3)], 1006.0, 60, "b") == [], "leased to a"
        assert pending_reports.due(conn, 1006.0) == []
        assert pending_reports.lease(conn, [(1, 6)], 1066.0, 60, "b") == [(1, 6)], "a's lease ran out"
        pending_reports.defer(conn, 2, 4, "busy again", now=1066.0, retry_delay=1, max_delay=5)
        assert pending_reports.lease(conn, [(2, 3)], 2000.0, 60, "b") == [], "rescheduled for a later event"
        assert pending_reports.pandaids(conn) == [1, 2]
        pending_reports.done(conn, 1)
        assert pending_reports.forget(conn, [2, 3]) == 1 and pending_reports.rows(conn) == []


def test_a_retry_gets_one_pandaid_however_often_it_is_claimed(cfg):
    with db.connect(cfg, autocommit=True) as conn:
        first = retries.claim(conn, 77, 2, "retry of 77")
        assert retries.claim(conn, 77, 2, "retry of 77") == first >= 1000
        assert retries.claim(conn, 78, 2, "retry of 78") != first
