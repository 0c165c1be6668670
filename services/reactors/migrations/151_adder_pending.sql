-- Reports the adder could not finish because a plugin call failed temporarily (PanDA keeps them in
-- job_output_report). The report itself stays in the event log; the row points at the event
-- (PandaID, seq) and carries the retry schedule and a lease so two adders never process one report.
-- Owner: services/reactors/pending_reports.py (the adder's store).
CREATE TABLE adder_pending (
    pandaid       bigint      PRIMARY KEY,
    seq           int         NOT NULL,            -- the pilot_holding event holding the report
    attempts      int         NOT NULL DEFAULT 1,
    next_try      timestamptz NOT NULL,
    locked_until  timestamptz,
    locked_by     text,
    last_error    text,
    created       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX adder_pending_due ON adder_pending (next_try);

