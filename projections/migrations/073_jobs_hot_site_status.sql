-- One index fewer on the hot partition of jobs: jobs_site_status (computing_site, status) moves to the archive.
--
-- Why: every event of a job is a new row version in jobs_hot with an entry in each of its indexes (status and
-- modification_time are indexed, so no update is HOT; 070_jobs_hot_indexes.sql). jobs_site_status is one of the
-- six entries an update of a live job writes, and it serves only the monitor: its error summaries of one queue
-- and state (projections/monitor_queries.py: status = … AND computing_site = …). On the hot partition those
-- read the state's jobs through jobs_status_mtime and keep the queue's; the counts by queue and state of every
-- monitor page read the whole partition either way. No query of the system's own path (getJob, the ledger's
-- snapshot, the reactors, the watchers) names a queue without a state the dispatch or state indexes serve.
-- On the archive partition, where history piles up, the index stays.
DROP INDEX IF EXISTS jobs_site_status;
CREATE INDEX jobs_archived_site_status ON jobs_archived (computing_site, status);
