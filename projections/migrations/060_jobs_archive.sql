-- The jobs table in two partitions: the hot one (every live job and the final ones younger than
-- [projections] archive_after) and the archive (final jobs older than that, as PanDA's jobsArchived4).
-- One table to its readers: status, history and the monitor read `jobs` and see both; the readers that
-- must stay fast with millions of archived jobs (the ledger's snapshot, getJob's candidates, the watcher)
-- say `NOT archived` and PostgreSQL reads the hot partition only. The projector moves rows
-- (projections/jobs_archive.py); an update of an archived job (a retried job's mark) finds it there.
-- `archived` is where a row lives, not what the log says: verify leaves it out of its comparison.
ALTER TABLE jobs RENAME TO jobs_before_060;
ALTER INDEX jobs_pkey RENAME TO jobs_before_060_pkey;
DROP INDEX jobs_dispatch, jobs_status_mtime, jobs_partition, jobs_task;
DROP INDEX IF EXISTS jobs_site_status, jobs_owner, jobs_label, jobs_mtime;
-- 201 may not have run yet (a new database applies 060 first): then 201 creates its index on the new table
CREATE TEMPORARY TABLE migration_060_share ON COMMIT DROP AS
    SELECT to_regclass('jobs_dispatch_share') IS NOT NULL AS existed;
DROP INDEX IF EXISTS jobs_dispatch_share;

CREATE TABLE jobs (LIKE jobs_before_060 INCLUDING DEFAULTS INCLUDING STORAGE,
                   archived boolean NOT NULL DEFAULT false,
                   PRIMARY KEY (pandaid, archived))
    PARTITION BY LIST (archived);
CREATE TABLE jobs_hot PARTITION OF jobs FOR VALUES IN (false);
CREATE TABLE jobs_archived PARTITION OF jobs FOR VALUES IN (true);
INSERT INTO jobs SELECT *, false FROM jobs_before_060;
DROP TABLE jobs_before_060;

-- 001_core.sql
CREATE INDEX jobs_dispatch ON jobs (computing_site, current_priority DESC, pandaid) WHERE status = 'activated';
CREATE INDEX jobs_status_mtime ON jobs (status, modification_time);
CREATE INDEX jobs_partition ON jobs (partition);
CREATE INDEX jobs_task ON jobs (jedi_task_id) WHERE jedi_task_id IS NOT NULL;
-- 050_monitor_indexes.sql
CREATE INDEX jobs_site_status ON jobs (computing_site, status);
CREATE INDEX jobs_owner ON jobs ((spec->>'prodUserName'));
CREATE INDEX jobs_label ON jobs (prod_source_label);
CREATE INDEX jobs_mtime ON jobs (modification_time);
-- 201_dispatch_share_index.sql, if it had run
DO $$
BEGIN
    IF (SELECT existed FROM migration_060_share) THEN
        CREATE INDEX jobs_dispatch_share ON jobs (computing_site, gshare, current_priority DESC, pandaid)
            WHERE status = 'activated';
    END IF;
END $$;
-- the ledger's snapshot: the live jobs of one partition, however many final ones the hot table holds
CREATE INDEX jobs_live_partition ON jobs (partition)
    WHERE status NOT IN ('finished', 'failed', 'cancelled', 'closed');
