-- Event ranges of event-service jobs (services/eventservice/store.py owns both tables).
-- event_ranges is the current state; event_range_changes is every change in order (one row per change,
-- written in the same transaction as the state), so the state is a fold of the changes and can be replayed.
CREATE TABLE event_ranges (
    pandaid      bigint  NOT NULL,
    range_id     text    NOT NULL,      -- PanDA's eventRangeID: <taskID>-<PandaID>-<fileID>-<processID>-<attemptNr>
    process_id   int     NOT NULL,      -- order within the job
    lfn          text    NOT NULL,
    guid         text,
    scope        text,
    start_event  int     NOT NULL,
    last_event   int     NOT NULL,
    status       text    NOT NULL,      -- ready → sent → running → finished | failed | fatal | cancelled …
    seq          int     NOT NULL,      -- number of changes so far
    PRIMARY KEY (pandaid, range_id)
);
CREATE UNIQUE INDEX event_ranges_range_id ON event_ranges (range_id);
CREATE INDEX event_ranges_ready ON event_ranges (pandaid, process_id) WHERE status = 'ready';

CREATE TABLE event_range_changes (
    range_id     text        NOT NULL,
    seq          int         NOT NULL,
    pandaid      bigint      NOT NULL,
    from_status  text,
    to_status    text        NOT NULL,
    actor        text        NOT NULL,
    time         timestamptz NOT NULL DEFAULT now(),
    detail       jsonb,
    PRIMARY KEY (range_id, seq)
);
