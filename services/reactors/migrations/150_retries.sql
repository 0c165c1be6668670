-- Retries (services/reactors/retrier.py, store services/reactors/retries.py): one row per retried job, written BEFORE the new job's Submit is sent,
-- so a redelivered `failed` event finds its retry here and cannot create a second new PandaID.
CREATE TABLE retries (
    old_pandaid   bigint      PRIMARY KEY,
    new_pandaid   bigint      NOT NULL UNIQUE,
    attempt_nr    int         NOT NULL,            -- attemptNr of the new job
    reason        text        NOT NULL,            -- why it was retried (and with what change)
    created       timestamptz NOT NULL DEFAULT now()
);
