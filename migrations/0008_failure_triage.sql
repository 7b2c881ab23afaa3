-- Why failed builds failed. The master's triage reads each failed build's log and exit once
-- and stores its class and, where there is one, the detail: the header, library or tool that
-- was missing. NULL class on a failed build: not read yet.
ALTER TABLE builds
    ADD COLUMN failure_class  VARCHAR(20) CHECK (failure_class IN (
        'missing-header', 'missing-library', 'missing-tool', 'unsupported-python',
        'source-unavailable', 'network', 'timeout', 'memory', 'killed', 'other')),
    ADD COLUMN failure_detail VARCHAR(200) NOT NULL DEFAULT '';
-- The failed builds the triage has still to read, and the failures reports count by cause.
CREATE INDEX builds_untriaged ON builds (build_id) WHERE NOT status AND failure_class IS NULL;
CREATE INDEX builds_failed ON builds (failure_class, failure_detail) WHERE NOT status;

-- The Debian package that ships what a failure was missing, as the configured Contents index
-- (Debian's Contents-ARCH, or apt-file's data) says: once per cause, not per build. NULL
-- package: the index has no such file; looked up again once the index is another
-- (`looked_up_in` names the files as they were: path, size and modification time).
CREATE TABLE debian_lookups (
    failure_class  VARCHAR(20) NOT NULL,
    failure_detail VARCHAR(200) NOT NULL,
    debian_package VARCHAR(255),
    looked_up_in   TEXT NOT NULL,
    looked_up_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (failure_class, failure_detail)
);
GRANT SELECT, INSERT, UPDATE, DELETE ON debian_lookups TO piwheels_app;
