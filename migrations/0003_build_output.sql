-- Each build's log, kept with its record so that a log file the index writer could not write
-- (a full disk, a crash) is written again from here by the consistency check.
CREATE TABLE output (
    build_id BIGINT NOT NULL PRIMARY KEY REFERENCES builds ON DELETE CASCADE,
    output   TEXT NOT NULL
);
GRANT SELECT, INSERT ON output TO piwheels_app;
