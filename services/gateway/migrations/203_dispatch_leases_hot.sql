-- Lease updates without index upkeep: the lease table keeps only its primary key, and room on each page.
--
-- Why: a dispatched job's lease is written four times (claimed, sent, delivered, deleted by the sweep), and every
-- update changed an indexed column (expires_at of dispatch_leases_expires; state and deliver_by of the partial
-- dispatch_leases_undelivered), so each was a new row version with an entry in all three indexes, and the
-- claim's probe of a candidate's lease (primary key) met every old version. Without those two indexes an update
-- touches no indexed column (the key, pandaid, never changes) and is HOT while the page has room (fillfactor).
--
-- What reads them instead: the lease sweep (every 30 s, services/gateway/dispatcher.py) and the dispatch sweep
-- (every [dispatcher] sweep_period) read the whole table, which holds the leases of the jobs dispatched since the
-- last lease sweep (thousands of rows, a few hundred pages at most), instead of an index range.
DROP INDEX IF EXISTS dispatch_leases_expires;
DROP INDEX IF EXISTS dispatch_leases_undelivered;
ALTER TABLE dispatch_leases SET (fillfactor = 50);
