-- Schema version 1: packages, versions, ABIs, builds, files, dependencies, the PyPI serial,
-- pending page rewrites, access logs, admin state and the audit log.
--
-- All times are TIMESTAMPTZ. Names are PEP 503 canonical names. piw-initdb runs this as the
-- database owner inside one transaction, then records the version in `configuration`.

-- The master's privileges belong to this group role; piw-initdb grants it to the login role
-- the master connects as. Roles are cluster-wide, so it may exist already.
DO $$
BEGIN
    CREATE ROLE piwheels_app NOLOGIN;
EXCEPTION WHEN duplicate_object THEN NULL;
END
$$;

REVOKE ALL ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO piwheels_app;

CREATE TABLE configuration (
    id             INTEGER NOT NULL DEFAULT 1 PRIMARY KEY CHECK (id = 1),
    schema_version INTEGER NOT NULL,
    pypi_serial    BIGINT NOT NULL DEFAULT 0
);
INSERT INTO configuration (schema_version) VALUES (1);

CREATE TABLE packages (
    package     VARCHAR(200) NOT NULL PRIMARY KEY,
    -- Non-empty: why the package is not built (deleted, binary only, a manual reason).
    skip        VARCHAR(100) NOT NULL DEFAULT '',
    description VARCHAR(200) NOT NULL DEFAULT ''
);

-- Every spelling a package's name has been seen with; the most recent is its display name.
CREATE TABLE package_names (
    name    VARCHAR(200) NOT NULL PRIMARY KEY,
    package VARCHAR(200) NOT NULL REFERENCES packages ON DELETE CASCADE ON UPDATE CASCADE,
    seen    TIMESTAMPTZ NOT NULL DEFAULT '1970-01-01 00:00:00+00'
);
CREATE INDEX package_names_package ON package_names (package, seen DESC);

CREATE TABLE versions (
    package     VARCHAR(200) NOT NULL REFERENCES packages ON DELETE CASCADE ON UPDATE CASCADE,
    version     VARCHAR(200) NOT NULL,
    released    TIMESTAMPTZ NOT NULL DEFAULT '1970-01-01 00:00:00+00',
    skip        VARCHAR(100) NOT NULL DEFAULT '',
    prerelease  BOOLEAN NOT NULL DEFAULT false,
    yanked      BOOLEAN NOT NULL DEFAULT false,
    yank_reason VARCHAR(200) NOT NULL DEFAULT '',
    -- True once every active ABI is served or was attempted: a hint that lets the build queue
    -- look only at versions that may still need building. The master sets it when it records
    -- a build, clears it when it deletes builds, and every version's is cleared when the ABIs
    -- change (trigger below).
    complete    BOOLEAN NOT NULL DEFAULT false,
    PRIMARY KEY (package, version)
);
CREATE INDEX versions_incomplete ON versions (package, version) WHERE NOT complete AND skip = '';

-- The ABIs the farm builds for. `python_version` (major * 100 + minor, so cp39 is 309 and
-- cp311 is 311) orders them and decides which ABIs an abi3 wheel serves.
CREATE TABLE build_abis (
    abi_tag        VARCHAR(100) NOT NULL PRIMARY KEY CHECK (abi_tag NOT IN ('none', 'abi3')),
    python_version INTEGER NOT NULL CHECK (python_version > 0),
    skip           VARCHAR(100) NOT NULL DEFAULT ''
);

CREATE FUNCTION build_abis_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE versions SET complete = false WHERE complete;
    RETURN NULL;
END
$$;
CREATE TRIGGER build_abis_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON build_abis
    FOR EACH STATEMENT EXECUTE FUNCTION build_abis_changed();

CREATE TABLE builds (
    build_id    BIGSERIAL NOT NULL PRIMARY KEY,
    package     VARCHAR(200) NOT NULL,
    version     VARCHAR(200) NOT NULL,
    built_by    INTEGER NOT NULL CHECK (built_by >= 0),   -- slave id, 0 for imports
    builder     VARCHAR(100) NOT NULL DEFAULT '',         -- the slave's label
    built_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    abi_tag     VARCHAR(100) NOT NULL,                    -- the builder's ABI
    status      BOOLEAN NOT NULL,
    duration    INTERVAL NOT NULL,
    cpu_time    INTERVAL NOT NULL DEFAULT '0',
    peak_memory BIGINT NOT NULL DEFAULT 0 CHECK (peak_memory >= 0),
    exit_status INTEGER,
    failure     VARCHAR(20) CHECK (failure IN ('build', 'timeout', 'out-of-memory', 'no-space', 'builder')),
    log_path    VARCHAR(100),                             -- relative to the output directory
    FOREIGN KEY (package, version) REFERENCES versions ON DELETE CASCADE ON UPDATE CASCADE
);
CREATE INDEX builds_pkgver ON builds (package, version, abi_tag);
CREATE INDEX builds_built_at ON builds (built_at DESC);

CREATE TABLE files (
    filename            VARCHAR(255) NOT NULL PRIMARY KEY,
    build_id            BIGINT NOT NULL REFERENCES builds ON DELETE CASCADE,
    filesize            BIGINT NOT NULL CHECK (filesize >= 0),
    filehash            CHAR(64) NOT NULL,
    metadata_hash       CHAR(64),                           -- SHA-256 of the .metadata side file
    package_tag         VARCHAR(200) NOT NULL,
    package_version_tag VARCHAR(200) NOT NULL,
    build_tag           VARCHAR(100),
    py_version_tag      VARCHAR(100) NOT NULL,
    abi_tag             VARCHAR(100) NOT NULL,
    platform_tag        VARCHAR(100) NOT NULL,
    -- For abi3 files, the lowest Python (major * 100 + minor) the file's Python tag allows.
    python_floor        INTEGER,
    requires_python     VARCHAR(200),
    uploaded            TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX files_build ON files (build_id);
CREATE INDEX files_hash ON files (filehash);
CREATE INDEX files_package_tag ON files (package_tag);

CREATE TABLE dependencies (
    filename   VARCHAR(255) NOT NULL REFERENCES files ON DELETE CASCADE ON UPDATE CASCADE,
    tool       VARCHAR(10) NOT NULL CHECK (tool IN ('apt', 'pip', '')),
    dependency VARCHAR(255) NOT NULL,
    PRIMARY KEY (filename, tool, dependency)
);

-- Debian packages every image of an ABI has; project pages leave them out of install hints.
CREATE TABLE preinstalled_apt_packages (
    abi_tag     VARCHAR(100) NOT NULL REFERENCES build_abis ON DELETE CASCADE,
    apt_package VARCHAR(255) NOT NULL,
    PRIMARY KEY (abi_tag, apt_package)
);

-- The page buffer: packages whose pages must be rewritten, kept here so a crash loses none.
CREATE TABLE rewrites_pending (
    package  VARCHAR(200) NOT NULL PRIMARY KEY,
    added_at TIMESTAMPTZ NOT NULL,
    scope    VARCHAR(8) NOT NULL CHECK (scope IN ('project', 'both'))
);
CREATE INDEX rewrites_pending_added ON rewrites_pending (added_at);

-- Access logs. Field lengths are bounded; the log ingester truncates to them.
CREATE TABLE downloads (
    filename           VARCHAR(255) NOT NULL,
    accessed_by        INET NOT NULL,
    accessed_at        TIMESTAMPTZ NOT NULL,
    arch               VARCHAR(100),
    distro_name        VARCHAR(100),
    distro_version     VARCHAR(100),
    os_name            VARCHAR(100),
    os_version         VARCHAR(100),
    py_name            VARCHAR(100),
    py_version         VARCHAR(100),
    installer_name     VARCHAR(20),
    installer_version  VARCHAR(100),
    setuptools_version VARCHAR(100)
);
CREATE INDEX downloads_filename ON downloads (filename);
CREATE INDEX downloads_accessed_at ON downloads (accessed_at DESC);

CREATE TABLE searches (
    package            VARCHAR(200) NOT NULL,
    accessed_by        INET NOT NULL,
    accessed_at        TIMESTAMPTZ NOT NULL,
    arch               VARCHAR(100),
    distro_name        VARCHAR(100),
    distro_version     VARCHAR(100),
    os_name            VARCHAR(100),
    os_version         VARCHAR(100),
    py_name            VARCHAR(100),
    py_version         VARCHAR(100),
    installer_name     VARCHAR(20),
    installer_version  VARCHAR(100),
    setuptools_version VARCHAR(100)
);
CREATE INDEX searches_package ON searches (package);
CREATE INDEX searches_accessed_at ON searches (accessed_at DESC);

CREATE TABLE project_page_hits (
    package     VARCHAR(200) NOT NULL,
    accessed_by INET NOT NULL,
    accessed_at TIMESTAMPTZ NOT NULL,
    user_agent  VARCHAR(200)
);
CREATE INDEX project_page_hits_package ON project_page_hits (package);
CREATE INDEX project_page_hits_accessed_at ON project_page_hits (accessed_at DESC);

CREATE TABLE project_json_downloads (
    package     VARCHAR(200) NOT NULL,
    accessed_by INET NOT NULL,
    accessed_at TIMESTAMPTZ NOT NULL,
    user_agent  VARCHAR(200)
);
CREATE INDEX project_json_downloads_package ON project_json_downloads (package);
CREATE INDEX project_json_downloads_accessed_at ON project_json_downloads (accessed_at DESC);

CREATE TABLE web_page_hits (
    page        VARCHAR(30) NOT NULL,
    accessed_by INET NOT NULL,
    accessed_at TIMESTAMPTZ NOT NULL,
    user_agent  VARCHAR(200)
);
CREATE INDEX web_page_hits_page ON web_page_hits (page);
CREATE INDEX web_page_hits_accessed_at ON web_page_hits (accessed_at DESC);

-- Operator state that survives restarts (e.g. a pause), and who changed it.
CREATE TABLE admin_state (
    key        VARCHAR(50) NOT NULL PRIMARY KEY,
    value      TEXT NOT NULL,
    changed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    changed_by VARCHAR(200) NOT NULL
);

-- Who paused, drained, removed or imported what, and when. Append-only for the master.
CREATE TABLE audit_log (
    audit_id BIGSERIAL NOT NULL PRIMARY KEY,
    at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    actor    VARCHAR(200) NOT NULL,
    action   VARCHAR(50) NOT NULL,
    detail   TEXT NOT NULL
);
CREATE INDEX audit_log_at ON audit_log (at DESC);

-- What the master may do, and no more: no DDL, no changes to the ABIs or the schema version,
-- no rewriting or deleting history in the logs and the audit log.
GRANT SELECT ON build_abis, preinstalled_apt_packages TO piwheels_app;
GRANT SELECT, UPDATE (pypi_serial) ON configuration TO piwheels_app;
GRANT SELECT, INSERT, UPDATE, DELETE
    ON packages, package_names, versions, builds, files, dependencies, rewrites_pending, admin_state
    TO piwheels_app;
GRANT SELECT, INSERT
    ON downloads, searches, project_page_hits, project_json_downloads, web_page_hits, audit_log
    TO piwheels_app;
GRANT USAGE ON SEQUENCE builds_build_id_seq, audit_log_audit_id_seq TO piwheels_app;
