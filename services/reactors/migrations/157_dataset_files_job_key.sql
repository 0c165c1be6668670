-- Two of the three indexes of dataset_files led to the same rows: the primary key (dataset, pandaid, lfn) and
-- dataset_files_job (pandaid). Every file row is inserted once (the setupper) and rewritten at least once
-- (the adder's registration, or the closer's failure), and since its status is in the predicate of
-- dataset_files_unsettled no such rewrite is a HOT update: each one adds an entry to every index again.
-- With the key led by the PandaID the key serves the closer's read of the files of some jobs
-- (services/reactors/datasets.py::sub_files_of_jobs, `pandaid = ANY(...)`) as well as every lookup by the
-- whole key (registration, ON CONFLICT of the setupper's insert, which names the columns, not their order),
-- and the second index goes: one index descent fewer per row inserted and per row registered. No query reads
-- the files of a block by the block's name alone except through dataset_files_unsettled (the closer's sweep,
-- the activator), whose rows are the unsettled ones only.
ALTER TABLE dataset_files DROP CONSTRAINT dataset_files_pkey, ADD PRIMARY KEY (pandaid, dataset, lfn);
DROP INDEX IF EXISTS dataset_files_job;
