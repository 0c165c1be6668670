-- Whether the pilot got its answer: the gateway marks a lease `delivered` once it has written the HTTP
-- response that carries the job. A lease still `claimed` or `sent` after `deliver_by` belongs to a request
-- that never answered its pilot (the gateway died, the pilot hung up): the dispatch sweep
-- (services/gateway/undelivered.py) takes its dispatch back with an `undispatch` and marks the lease `undone`.
-- state: claimed | sent | delivered | undone
ALTER TABLE dispatch_leases ADD COLUMN deliver_by timestamptz;
CREATE INDEX dispatch_leases_undelivered ON dispatch_leases (deliver_by) WHERE state IN ('claimed', 'sent');
