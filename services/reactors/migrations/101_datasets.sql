-- Data blocks (PanDA's `datasets` table): dispatch blocks that bring inputs to a queue, destination
-- blocks (the final output datasets) and their sub blocks (`<destination>_subNNN`, one per job set).
-- Written by services (setupper creates, activator completes dispatch blocks, adder/closer fill and
-- close sub and destination blocks), always with idempotent statements, so a repeated action is harmless.
--
-- status: dispatch     defined → completed (inputs arrived)            | failed
--         destination  defined → closed (all its subs closed)          | tobeclosed
--         sub          defined → tobeclosed / closed (file count met)  | failed
CREATE TABLE datasets (
    name              text        PRIMARY KEY,
    type              text        NOT NULL CHECK (type IN ('dispatch', 'destination', 'sub')),
    status            text        NOT NULL DEFAULT 'defined',
    site              text,                   -- the queue it was made for
    endpoint          text,                   -- the storage endpoint that holds (or receives) its files
    parent            text,                   -- sub: its destination block
    plugin            text,                   -- the plugin spec that manages it
    vo                text,
    nfiles            int         NOT NULL DEFAULT 0,   -- expected: rows in dataset_files
    nfiles_done       int         NOT NULL DEFAULT 0,   -- arrived (dispatch) / registered (sub, destination)
    created_by        text        NOT NULL,
    creation_time     timestamptz NOT NULL DEFAULT now(),
    modification_time timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX datasets_type_status ON datasets (type, status);
CREATE INDEX datasets_parent ON datasets (parent) WHERE parent IS NOT NULL;

-- The files each block is expected to hold, per job. status: pending | ready | failed (inputs);
-- unknown | ready | failed (outputs and logs, set by the adder on registration).
CREATE TABLE dataset_files (
    dataset     text    NOT NULL,
    pandaid     bigint  NOT NULL,
    lfn         text    NOT NULL,
    type        text    NOT NULL,            -- input | output | log
    status      text    NOT NULL,
    PRIMARY KEY (dataset, pandaid, lfn)
);
CREATE INDEX dataset_files_job ON dataset_files (pandaid);
