-- The monitor's jobs page filters by queue, owner, label and time, and sorts by modification time:
-- indexes so a filtered, sorted page reads a few index entries instead of every job.
CREATE INDEX IF NOT EXISTS jobs_site_status ON jobs (computing_site, status);
CREATE INDEX IF NOT EXISTS jobs_owner ON jobs ((spec->>'prodUserName'));
CREATE INDEX IF NOT EXISTS jobs_label ON jobs (prod_source_label);
CREATE INDEX IF NOT EXISTS jobs_mtime ON jobs (modification_time);
