-- Costs that do not grow with history (services/reactors/datasets.py): a block's counters are moved by the
-- file rows each write changes instead of being recounted from all its files, and the closer's reads touch
-- only what is still open. Registering, failing or closing in a block of 100,000 files then costs what it
-- costs in a block of 10.
ALTER TABLE datasets ADD COLUMN nfiles_failed int NOT NULL DEFAULT 0;   -- files marked failed

-- The counters of existing blocks, once.
UPDATE datasets d SET nfiles = c.n, nfiles_done = c.done, nfiles_failed = c.failed
  FROM (SELECT dataset, count(*) AS n, count(*) FILTER (WHERE status = 'ready') AS done,
               count(*) FILTER (WHERE status = 'failed') AS failed
          FROM dataset_files GROUP BY dataset) c
 WHERE d.name = c.dataset;

-- The closer's reads: the files of a block not settled yet; the open sub blocks (its sweep, oldest first);
-- the sub blocks of a destination not closed yet.
CREATE INDEX dataset_files_unsettled ON dataset_files (dataset) WHERE status NOT IN ('ready', 'failed');
CREATE INDEX datasets_open_subs ON datasets (modification_time) WHERE type = 'sub' AND status NOT IN ('closed', 'failed');
CREATE INDEX datasets_unclosed_subs ON datasets (parent) WHERE type = 'sub' AND status <> 'closed';
