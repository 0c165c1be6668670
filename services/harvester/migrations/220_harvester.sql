-- Harvester instances, their workers and the commands waiting for them (services/harvester/store.py owns
-- every table here). Workers are PanDA's Harvester_Workers: keyed by (harvester_id, worker_id) and written
-- by idempotent upserts, so a resent update_workers call changes nothing it had not already changed.

CREATE TABLE harvester_instances (
    harvester_id    text        PRIMARY KEY,
    owner           text,
    host            text,
    metadata        jsonb       NOT NULL DEFAULT '{}',
    last_heartbeat  timestamptz NOT NULL
);

CREATE TABLE harvester_workers (
    harvester_id    text        NOT NULL,
    worker_id       bigint      NOT NULL,
    computing_site  text,
    status          text,
    resource_type   text,
    job_type        text,
    n_jobs          int,
    spec            jsonb       NOT NULL,      -- every WorkSpec field as Harvester sent it
    last_update     timestamptz NOT NULL,
    PRIMARY KEY (harvester_id, worker_id)
);

-- which worker runs which job (WorkSpec.pandaid_list); a job may have had several workers
CREATE TABLE harvester_worker_jobs (
    harvester_id    text        NOT NULL,
    worker_id       bigint      NOT NULL,
    pandaid         bigint      NOT NULL,
    last_update     timestamptz NOT NULL,
    PRIMARY KEY (harvester_id, worker_id, pandaid)
);
CREATE INDEX harvester_worker_jobs_pandaid ON harvester_worker_jobs (pandaid);

CREATE TABLE harvester_worker_stats (
    harvester_id    text        NOT NULL,
    computing_site  text        NOT NULL,
    job_type        text        NOT NULL,
    resource_type   text        NOT NULL,
    status          text        NOT NULL,
    n_workers       int         NOT NULL,
    last_update     timestamptz NOT NULL,
    PRIMARY KEY (harvester_id, computing_site, job_type, resource_type, status)
);

CREATE TABLE harvester_service_metrics (
    harvester_id    text        NOT NULL,
    harvester_host  text        NOT NULL,
    creation_time   text        NOT NULL,
    metrics         jsonb       NOT NULL,
    PRIMARY KEY (harvester_id, harvester_host, creation_time)
);

CREATE TABLE harvester_dialogs (
    harvester_id    text        NOT NULL,
    diag_id         bigint      NOT NULL,
    module_name     text,
    identifier      text,
    creation_time   text,
    message_level   text,
    diag_message    text,
    PRIMARY KEY (harvester_id, diag_id)
);

-- commands for a Harvester instance (PanDA's HARVESTER_COMMANDS): new → retrieved → acknowledged.
-- dedup_key makes the command of one cause (the kill of a job's worker) one row however often it is decided.
CREATE TABLE harvester_commands (
    command_id      bigserial   PRIMARY KEY,
    harvester_id    text        NOT NULL,
    command         text        NOT NULL,
    params          jsonb,
    ack_requested   boolean     NOT NULL DEFAULT false,
    status          text        NOT NULL DEFAULT 'new',
    dedup_key       text        UNIQUE,
    creation_date   timestamptz NOT NULL,
    status_date     timestamptz NOT NULL
);
CREATE INDEX harvester_commands_new ON harvester_commands (harvester_id, creation_date) WHERE status = 'new';
