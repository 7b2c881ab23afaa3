-- Reproducibility cross-checks: a successful build built again by another builder of its ABI
-- from the same source, and the two wheels compared by what they hold (each member's
-- SHA-256, not the zip's timestamps). A row without `checked_at` is waiting for a builder
-- other than the build's own; the slave driver hands those out before the build queue. The
-- second builder's wheels are compared, never published.
CREATE TABLE cross_checks (
    check_id       BIGSERIAL NOT NULL PRIMARY KEY,
    build_id       BIGINT NOT NULL REFERENCES builds ON DELETE CASCADE,
    -- 'sample' (the master's share of builds) or 'operator' (piw-rebuild cross-check).
    requested_by   VARCHAR(20) NOT NULL CHECK (requested_by IN ('sample', 'operator')),
    requested_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- The build's files when the check was asked for, which the second build's are compared
    -- with: a later build with the same bytes takes their records over, and the files stay.
    files          TEXT[] NOT NULL CHECK (cardinality(files) > 0),
    -- The rest is the second build, NULL while it is waiting.
    checked_at     TIMESTAMPTZ,
    builder        VARCHAR(100),
    builder_key    VARCHAR(40),
    environment_id BIGINT REFERENCES environments,
    started_at     TIMESTAMPTZ,
    duration       INTERVAL,
    verdict        VARCHAR(20) CHECK (verdict IN ('reproduced', 'differs', 'failed')),
    -- What differs ('differs': one line per file or member), or why the build failed.
    differences    TEXT[] NOT NULL DEFAULT '{}',
    CHECK ((checked_at IS NULL) = (verdict IS NULL))
);
-- One waiting check per build: asking again while one waits changes nothing.
CREATE UNIQUE INDEX cross_checks_waiting ON cross_checks (build_id) WHERE checked_at IS NULL;
CREATE INDEX cross_checks_build ON cross_checks (build_id);

GRANT SELECT, INSERT, UPDATE, DELETE ON cross_checks TO piwheels_app;
GRANT USAGE ON SEQUENCE cross_checks_check_id_seq TO piwheels_app;
