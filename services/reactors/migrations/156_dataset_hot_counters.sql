-- A block's counters change with every poll that records, registers or fails one of its files
-- (services/reactors/datasets.py), and each change was a new row version in all five indexes of the table:
-- datasets_open_subs (155) indexed modification_time, which every counter change moves. It now indexes the
-- name (which never changes), so the closer's sweep still reads only the open subs (and orders those few by
-- modification_time itself), and with room left on each page for the next version of its row a counter
-- change is a HOT update, touching no index: about a quarter of the buffers for a poll's blocks.
DROP INDEX IF EXISTS datasets_open_subs;
CREATE INDEX datasets_open_subs ON datasets (name) WHERE type = 'sub' AND status NOT IN ('closed', 'failed');
-- pages written from now on keep half their space for new versions of their rows
ALTER TABLE datasets SET (fillfactor = 50);
