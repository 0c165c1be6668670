-- Dispatcher leases: a getJob claims a job here before it asks the ledger to dispatch it.
-- The ledger is the arbiter (it accepts one `dispatch` per activation), the lease keeps other pilots from
-- wasting a round trip on a job that is already being handed out while the jobs projection still shows it
-- activated. A lease counts only while the jobs row still has the `seq` seen at claim time and it has not
-- expired; a re-activated job (higher seq) is free again whatever old leases say.
CREATE TABLE dispatch_leases (
    pandaid     bigint      PRIMARY KEY,
    seq         int         NOT NULL,        -- jobs.seq when claimed
    site        text        NOT NULL,
    node        text,
    actor       text        NOT NULL,
    command_id  text        NOT NULL,        -- the dispatch command sent for this claim
    state       text        NOT NULL DEFAULT 'claimed',   -- claimed | sent
    claimed_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);
CREATE INDEX dispatch_leases_expires ON dispatch_leases (expires_at);
