-- Room on the pages of the worker tables, so that a worker's updates are HOT.
--
-- Why: Harvester reports each worker several times (submitted, running, finished: update_workers and the job
-- bindings of update_jobs_bulk), and every report rewrites the worker's row. Neither table indexes a column those
-- updates change (harvester_workers has only its key; harvester_worker_jobs its key and pandaid, neither
-- changed), so each update could stay on its page without new index entries, but rows are inserted packed
-- (fillfactor 100) and the new version went to another page with a new entry in every index: 0 HOT of 400 worker
-- updates in `pandaes bench --only harvester --quick`. The space left free on each page takes the next versions.
ALTER TABLE harvester_workers SET (fillfactor = 70);
ALTER TABLE harvester_worker_jobs SET (fillfactor = 70);
