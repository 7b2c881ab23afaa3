-- The build queue's second hint. `complete` marks versions that need nothing; `waiting_on`
-- names, for a version that needs something, the lowest ABI it waits on, as the queue last
-- worked it out (NULL: not worked out yet). The queue then works out only the versions that
-- are new or whose builds, ABIs or rebuild requests changed, and reads each ABI's newest
-- waiting releases from an index instead of probing every waiting version's builds on every
-- computation. Whatever clears `complete` clears `waiting_on` with it.
ALTER TABLE versions ADD COLUMN waiting_on VARCHAR(100);
CREATE INDEX versions_waiting ON versions (waiting_on, released DESC, package COLLATE "C", version COLLATE "C")
    WHERE NOT complete AND skip = '' AND waiting_on IS NOT NULL;
-- The versions to work out, newest first.
CREATE INDEX versions_unexamined ON versions (released DESC)
    WHERE NOT complete AND skip = '' AND waiting_on IS NULL;

CREATE OR REPLACE FUNCTION build_abis_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Waits for the writers of hints worked out from the old ABIs (a queue computation, a
    -- build being recorded) and holds off new ones until this change commits; the update
    -- then sees, and clears, what they wrote.
    LOCK TABLE versions IN SHARE ROW EXCLUSIVE MODE;
    UPDATE versions SET complete = false, waiting_on = NULL WHERE complete OR waiting_on IS NOT NULL;
    RETURN NULL;
END
$$;
