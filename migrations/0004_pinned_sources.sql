-- Each release's source distribution as the package index publishes it. A release is built
-- only from these bytes: the slave is handed the URL and the SHA-256 and checks the file
-- before building. NULL until the source pinner has found the file on the index.
ALTER TABLE versions
    ADD COLUMN source_filename VARCHAR(255),
    ADD COLUMN source_url      VARCHAR(2000),
    ADD COLUMN source_sha256   CHAR(64) CHECK (source_sha256 ~ '^[0-9a-f]{64}$'),
    -- When the pinner looks for the source again, after it found none or the index failed
    -- (NULL: as soon as it can).
    ADD COLUMN source_retry_at TIMESTAMPTZ,
    ADD CONSTRAINT versions_source_whole CHECK (
        (source_filename IS NULL) = (source_url IS NULL) AND (source_url IS NULL) = (source_sha256 IS NULL));

-- The releases that wait for a pin, in the pinner's order: never looked for first (newest
-- first), then those whose retry is due, soonest first. On an upgraded farm every incomplete
-- release starts here; the index keeps each round's query to the rows it returns.
CREATE INDEX versions_unpinned ON versions (source_retry_at NULLS FIRST, released DESC)
    WHERE source_sha256 IS NULL AND NOT complete AND skip = '';
