-- A pending page rewrite is done only when the pages were written from a snapshot that sees
-- the transaction that last asked for it. The master's clock cannot tell that for a build,
-- whose rewrite is recorded by the build's own transaction: the time is taken before it
-- commits, and a write that read the database in between would have missed the build.
ALTER TABLE rewrites_pending ADD COLUMN requested_by xid8 NOT NULL DEFAULT pg_current_xact_id();
