-- The core read models derived from panda.job-events.

-- Where each projection has got to in each partition; written in the same transaction as its rows.
CREATE TABLE consumer_positions (
    projection  text    NOT NULL,
    topic       text    NOT NULL,
    partition   int     NOT NULL,
    next_offset bigint  NOT NULL,
    PRIMARY KEY (projection, topic, partition)
);

-- Current state of every job, active and archived (PanDA's jobsDefined4/jobsActive4/jobsArchived4 in one).
-- Columns are what queries filter or sort on; `spec` holds the whole JobSpec (every attribute round-trips).
CREATE TABLE jobs (
    pandaid             bigint      PRIMARY KEY,
    partition           int         NOT NULL,
    seq                 int         NOT NULL,
    status              text        NOT NULL,
    attempt_nr          int         NOT NULL DEFAULT 0,
    computing_site      text,
    prod_source_label   text,
    current_priority    int         NOT NULL DEFAULT 0,
    gshare              text,
    resource_type       text,
    core_count          int,
    min_ram_count       int         NOT NULL DEFAULT 0,
    max_disk_count      int         NOT NULL DEFAULT 0,
    max_walltime        int,
    jedi_task_id        bigint,
    command_to_pilot    text,
    special_handling    text,
    creation_time       timestamptz NOT NULL,
    modification_time   timestamptz NOT NULL,
    state_change_time   timestamptz NOT NULL,
    last_command_id     text        NOT NULL,
    spec                jsonb       NOT NULL
);
CREATE INDEX jobs_dispatch ON jobs (computing_site, current_priority DESC, pandaid) WHERE status = 'activated';
CREATE INDEX jobs_status_mtime ON jobs (status, modification_time);
CREATE INDEX jobs_partition ON jobs (partition);
CREATE INDEX jobs_task ON jobs (jedi_task_id) WHERE jedi_task_id IS NOT NULL;

-- FileSpec rows; a job's files are keyed by (type, lfn).
CREATE TABLE files (
    pandaid             bigint  NOT NULL,
    type                text    NOT NULL,
    lfn                 text    NOT NULL,
    status              text,
    dataset             text,
    dispatch_dblock     text,
    destination_dblock  text,
    guid                text,
    fsize               bigint,
    checksum            text,
    scope               text,
    spec                jsonb   NOT NULL,
    PRIMARY KEY (pandaid, type, lfn)
);
CREATE INDEX files_destination ON files (destination_dblock, status);
CREATE INDEX files_dispatch ON files (dispatch_dblock, status);

-- Every event ever, append-only: history, monitoring, and restoring a broker that lost its log.
CREATE TABLE job_events (
    pandaid      bigint      NOT NULL,
    seq          int         NOT NULL,
    type         text        NOT NULL,
    action       text,
    from_state   text        NOT NULL,
    to_state     text        NOT NULL,
    time         timestamptz NOT NULL,
    actor        text        NOT NULL,
    command_id   text        NOT NULL,
    partition    int         NOT NULL,
    kafka_offset bigint      NOT NULL,
    body         jsonb       NOT NULL,
    PRIMARY KEY (pandaid, seq)
);
CREATE INDEX job_events_time ON job_events (time);
CREATE INDEX job_events_position ON job_events (partition, kafka_offset);

-- PandaIDs are handed out by the database, as PanDA's JOBSDEFINED4_PANDAID_SEQ.
CREATE SEQUENCE pandaid_seq START 1000 CACHE 100;
