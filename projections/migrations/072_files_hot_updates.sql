-- The files projection's updates (projections/files.py): every file row is written two or three times after
-- its insert (the setupper's blocks and GUID, the adder's registration, a failed job's outputs), and each
-- update of a column in an index is a new row version in every index of the table.
-- files_destination and files_dispatch (001) serve no query: every reader of files asks by PandaID (the
-- primary key). Without them, and with room left on each page for the next version of its rows, an update
-- touches no index at all (a HOT update): in the lifecycle bench an update of a file row touches a half to a
-- quarter of the buffers it did.
DROP INDEX IF EXISTS files_destination;
DROP INDEX IF EXISTS files_dispatch;
-- pages written from now on keep 30% free for the updates of their rows (existing pages are left as they are)
ALTER TABLE files SET (fillfactor = 70);
