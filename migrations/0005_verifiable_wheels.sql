-- Every file name the index ever recorded keeps its bytes. When a file's record goes (its
-- build, version or package removed), its name and SHA-256 stay here, and a later file under
-- that name must have the same bytes: a build with other bytes is published under the next
-- build tag instead (the slave driver asks which name is free; the trigger below refuses
-- anything else).
CREATE TABLE retired_files (
    filename   VARCHAR(255) NOT NULL PRIMARY KEY,
    filehash   CHAR(64) NOT NULL,
    -- The canonical project name (PEP 503) of the file's distribution tag: the build is gone
    -- by the time its files are, so it is taken from the file itself.
    package    VARCHAR(200) NOT NULL,
    retired_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX retired_files_package ON retired_files (package);

CREATE FUNCTION files_retired() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO retired_files (filename, filehash, package)
    VALUES (OLD.filename, OLD.filehash, lower(regexp_replace(OLD.package_tag, '[-_.]+', '-', 'g')))
    ON CONFLICT (filename) DO NOTHING;
    RETURN NULL;
END
$$;
CREATE TRIGGER files_retired AFTER DELETE ON files FOR EACH ROW EXECUTE FUNCTION files_retired();

-- SQLSTATE PWCLS is the one log_build raises for a name recorded with other contents.
CREATE FUNCTION files_keep_retired_bytes() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    held CHAR(64);
BEGIN
    SELECT filehash INTO held FROM retired_files WHERE filename = NEW.filename;
    IF FOUND AND held <> NEW.filehash THEN
        RAISE EXCEPTION USING ERRCODE = 'PWCLS', MESSAGE = format(
            '%s was published before with other contents (SHA-256 %s, this build''s is %s)',
            NEW.filename, held, NEW.filehash);
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER files_keep_retired_bytes BEFORE INSERT ON files FOR EACH ROW EXECUTE FUNCTION files_keep_retired_bytes();

-- Releases an operator asked to build again on an ABI (piw-rebuild build) while their
-- published files stay. The build queue treats them as not built there; recording a build of
-- the release on the ABI clears the request.
CREATE TABLE rebuilds_wanted (
    package      VARCHAR(200) NOT NULL,
    version      VARCHAR(200) NOT NULL,
    abi_tag      VARCHAR(100) NOT NULL REFERENCES build_abis ON DELETE CASCADE,
    requested_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (package, version, abi_tag),
    FOREIGN KEY (package, version) REFERENCES versions ON DELETE CASCADE ON UPDATE CASCADE
);

-- What builders build with (OS, kernel, Python, pip, ..., as each reported it in its hello),
-- once per distinct environment: builds of one builder share a row.
CREATE TABLE environments (
    environment_id BIGSERIAL NOT NULL PRIMARY KEY,
    environment    JSONB NOT NULL,
    -- Unique by digest: an index row of the JSON itself may be larger than a btree takes.
    digest         TEXT NOT NULL GENERATED ALWAYS AS (md5(environment::text)) STORED UNIQUE
);

-- What a build's signed provenance says beyond its row: when the master handed it out (an
-- import: when it began), the key of the builder (or importer) as the master authorized it,
-- what the builder builds with, and the source it was handed (the version's pin then: an
-- operator may clear a pin later). NULL for builds recorded before this version, which have
-- no provenance (and for imports, the environment and the source).
ALTER TABLE builds
    ADD COLUMN started_at      TIMESTAMPTZ,
    ADD COLUMN builder_key     VARCHAR(40),
    ADD COLUMN environment_id  BIGINT REFERENCES environments,
    ADD COLUMN source_filename VARCHAR(255),
    ADD COLUMN source_url      VARCHAR(2000),
    ADD COLUMN source_sha256   CHAR(64);

GRANT SELECT, INSERT ON retired_files, environments TO piwheels_app;
GRANT USAGE ON SEQUENCE environments_environment_id_seq TO piwheels_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON rebuilds_wanted TO piwheels_app;
