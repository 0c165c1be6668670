-- PanDA queues (schedconfig), loaded from the queue configuration file by the configurator
-- (services/sitedata/configurator.py; read through services/sitedata/sites.py). Not derived from job
-- events: the file is the source, `site_versions` the history.

CREATE TABLE sites (
    name        text        PRIMARY KEY,       -- the PanDA queue (panda_resource / nickname)
    status      text        NOT NULL,          -- online | offline | test | brokeroff
    site        text        NOT NULL,          -- atlas_site: the site the queue belongs to
    cloud       text,
    vo          text,
    type        text        NOT NULL DEFAULT 'production',
    plugin      text,                          -- data plugin spec (plugins.load); NULL: by VO / default
    maxrss      int         NOT NULL DEFAULT 0, -- MB per job, 0 = no limit (checked against minRamCount)
    maxwdir     int         NOT NULL DEFAULT 0, -- MB of scratch disk, 0 = no limit (maxDiskCount)
    maxtime     int         NOT NULL DEFAULT 0, -- seconds of walltime, 0 = no limit (maxWalltime)
    corecount   int         NOT NULL DEFAULT 1, -- cores per job slot (coreCount)
    endpoints   jsonb       NOT NULL,          -- storage endpoints (DDM endpoints), first = default
    config      jsonb       NOT NULL,          -- the whole resolved queue entry (queuedata comes from it)
    version     int         NOT NULL,
    updated_at  timestamptz NOT NULL,
    updated_by  text        NOT NULL
);

-- Every change of a queue: who, when, what (field → [old, new]); config is the entry after the change
-- (NULL when the queue was removed). Brokerage reasons name the version they saw.
CREATE TABLE site_versions (
    name        text        NOT NULL,
    version     int         NOT NULL,
    changed_at  timestamptz NOT NULL,
    changed_by  text        NOT NULL,
    change      jsonb       NOT NULL,
    config      jsonb,
    PRIMARY KEY (name, version)
);
CREATE INDEX site_versions_time ON site_versions (changed_at);
