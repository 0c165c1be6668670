-- Dead letters can be applied again once their cause is fixed (`pandaes dead-letters retry`): an id to name
-- one by, the request (taken by the projector that owns the partition), the outcome, and the row's history
-- (every earlier error, every attempt); a resolved row is kept.
ALTER TABLE projection_dead_letters ADD COLUMN id bigserial UNIQUE;
ALTER TABLE projection_dead_letters ADD COLUMN retry_requested_at timestamptz;
ALTER TABLE projection_dead_letters ADD COLUMN attempts int NOT NULL DEFAULT 0;
ALTER TABLE projection_dead_letters ADD COLUMN resolved_at timestamptz;
ALTER TABLE projection_dead_letters ADD COLUMN history jsonb NOT NULL DEFAULT '[]';
CREATE INDEX projection_dead_letters_requested ON projection_dead_letters (partition)
    WHERE retry_requested_at IS NOT NULL AND resolved_at IS NULL;
