-- Running totals for the home page's figures and the search index. Counting them from builds,
-- files and downloads took seconds every minute and minutes every ten at PyPI's size; the
-- triggers below keep them as those tables change, and the queries read a row per package.
--
-- (TRUNCATE runs no row triggers: the farm never truncates these tables.)
--
-- package_totals: per package, its files, their bytes, its builds' time (durations of a week
-- or more are garbage and left out) and the downloads of its files. A download counts when it
-- is logged for a file the farm has at that moment.
CREATE TABLE package_totals (
    package    VARCHAR(200) NOT NULL PRIMARY KEY REFERENCES packages ON DELETE CASCADE ON UPDATE CASCADE,
    files      BIGINT NOT NULL DEFAULT 0 CHECK (files >= 0),
    files_size BIGINT NOT NULL DEFAULT 0 CHECK (files_size >= 0),
    build_time INTERVAL NOT NULL DEFAULT '0',
    downloads  BIGINT NOT NULL DEFAULT 0 CHECK (downloads >= 0)
);
-- Downloads per package and UTC day, for "the last 30 days" (today and the 29 days before).
-- Older days are dropped as new downloads arrive.
CREATE TABLE package_downloads_recent (
    package   VARCHAR(200) NOT NULL REFERENCES packages ON DELETE CASCADE ON UPDATE CASCADE,
    day       DATE NOT NULL,
    downloads BIGINT NOT NULL CHECK (downloads > 0),
    PRIMARY KEY (package, day)
);
CREATE INDEX package_downloads_recent_day ON package_downloads_recent (day);
-- The master's writes to builds, files and downloads run the triggers that keep them.
GRANT SELECT, INSERT, UPDATE, DELETE ON package_totals, package_downloads_recent TO piwheels_app;

-- "Releases in the last hour" without reading every release.
CREATE INDEX versions_released ON versions (released DESC);

-- The first day of the recent window.
CREATE FUNCTION recent_downloads_since() RETURNS date LANGUAGE sql STABLE AS $$
    SELECT (now() AT TIME ZONE 'UTC')::date - 29
$$;

-- Counts the given packages' files, bytes and build time again from their builds. Deletions
-- and updates use it: a cascade may have removed the builds by the time a trigger on files
-- runs, so the totals are counted, not adjusted.
CREATE FUNCTION recount_package_totals(names VARCHAR(200)[]) RETURNS void LANGUAGE sql AS $$
    UPDATE package_totals t SET
        files = c.files, files_size = c.files_size, build_time = c.build_time
    FROM (
        SELECT n.package,
               (SELECT count(*) FROM builds b JOIN files f ON f.build_id = b.build_id WHERE b.package = n.package) AS files,
               (SELECT COALESCE(sum(f.filesize), 0) FROM builds b JOIN files f ON f.build_id = b.build_id
                 WHERE b.package = n.package) AS files_size,
               (SELECT COALESCE(sum(b.duration), '0') FROM builds b
                 WHERE b.package = n.package AND b.duration < interval '1 week') AS build_time
        FROM unnest(names) AS n(package)
    ) c
    WHERE t.package = c.package
$$;

CREATE FUNCTION builds_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Sorted so that two writers lock the rows in the same order.
    INSERT INTO package_totals (package, build_time)
    SELECT package, COALESCE(sum(duration) FILTER (WHERE duration < interval '1 week'), '0')
    FROM new_builds GROUP BY package ORDER BY package
    ON CONFLICT (package) DO UPDATE SET build_time = package_totals.build_time + excluded.build_time;
    RETURN NULL;
END
$$;
CREATE TRIGGER builds_inserted AFTER INSERT ON builds
    REFERENCING NEW TABLE AS new_builds FOR EACH STATEMENT EXECUTE FUNCTION builds_inserted();

CREATE FUNCTION builds_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- A statement trigger runs after the cascade that deleted the builds' files.
    PERFORM recount_package_totals(ARRAY(SELECT DISTINCT package FROM old_builds ORDER BY package));
    RETURN NULL;
END
$$;
CREATE TRIGGER builds_deleted AFTER DELETE ON builds
    REFERENCING OLD TABLE AS old_builds FOR EACH STATEMENT EXECUTE FUNCTION builds_deleted();

CREATE FUNCTION builds_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- A rename moves the totals by their foreign key; only a changed duration needs a recount.
    PERFORM recount_package_totals(ARRAY(
        SELECT DISTINCT n.package FROM new_builds n JOIN old_builds o ON o.build_id = n.build_id
        WHERE n.duration IS DISTINCT FROM o.duration ORDER BY n.package));
    RETURN NULL;
END
$$;
CREATE TRIGGER builds_updated AFTER UPDATE ON builds
    REFERENCING OLD TABLE AS old_builds NEW TABLE AS new_builds FOR EACH STATEMENT EXECUTE FUNCTION builds_updated();

CREATE FUNCTION files_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO package_totals (package, files, files_size)
    SELECT b.package, count(*), sum(n.filesize)
    FROM new_files n JOIN builds b ON b.build_id = n.build_id
    GROUP BY b.package ORDER BY b.package
    ON CONFLICT (package) DO UPDATE SET
        files = package_totals.files + excluded.files,
        files_size = package_totals.files_size + excluded.files_size;
    RETURN NULL;
END
$$;
CREATE TRIGGER files_inserted AFTER INSERT ON files
    REFERENCING NEW TABLE AS new_files FOR EACH STATEMENT EXECUTE FUNCTION files_inserted();

CREATE FUNCTION files_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Files whose build is gone were deleted with it, and the builds' trigger recounts those.
    PERFORM recount_package_totals(ARRAY(
        SELECT DISTINCT b.package FROM old_files o JOIN builds b ON b.build_id = o.build_id ORDER BY b.package));
    RETURN NULL;
END
$$;
CREATE TRIGGER files_deleted AFTER DELETE ON files
    REFERENCING OLD TABLE AS old_files FOR EACH STATEMENT EXECUTE FUNCTION files_deleted();

CREATE FUNCTION files_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- LogBuild moves an identical file to its new build (INSERT ... ON CONFLICT DO UPDATE, whose
    -- inserted rows the insert trigger counts). The old rows leave their build's package and
    -- the new ones join theirs: both builds exist during an update, so these are deltas, not a
    -- recount, which would count the statement's inserted rows a second time.
    INSERT INTO package_totals (package)
    SELECT DISTINCT b.package FROM new_files n JOIN builds b ON b.build_id = n.build_id ORDER BY 1
    ON CONFLICT (package) DO NOTHING;
    UPDATE package_totals t SET files = t.files + d.files, files_size = t.files_size + d.files_size
    FROM (
        SELECT package, sum(files) AS files, sum(files_size) AS files_size
        FROM (
            SELECT b.package, -count(*) AS files, -sum(o.filesize) AS files_size
            FROM old_files o JOIN builds b ON b.build_id = o.build_id GROUP BY b.package
            UNION ALL
            SELECT b.package, count(*), sum(n.filesize)
            FROM new_files n JOIN builds b ON b.build_id = n.build_id GROUP BY b.package
        ) changes
        GROUP BY package
    ) d
    WHERE t.package = d.package AND (d.files <> 0 OR d.files_size <> 0);
    RETURN NULL;
END
$$;
CREATE TRIGGER files_updated AFTER UPDATE ON files
    REFERENCING OLD TABLE AS old_files NEW TABLE AS new_files FOR EACH STATEMENT EXECUTE FUNCTION files_updated();

CREATE FUNCTION downloads_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    WITH counted AS (
        SELECT b.package, (n.accessed_at AT TIME ZONE 'UTC')::date AS day, count(*) AS downloads
        FROM new_downloads n JOIN files f ON f.filename = n.filename JOIN builds b ON b.build_id = f.build_id
        GROUP BY 1, 2
    ), totals AS (
        INSERT INTO package_totals (package, downloads)
        SELECT package, sum(downloads) FROM counted GROUP BY package ORDER BY package
        ON CONFLICT (package) DO UPDATE SET downloads = package_totals.downloads + excluded.downloads
    )
    INSERT INTO package_downloads_recent (package, day, downloads)
    SELECT package, day, downloads FROM counted WHERE day >= recent_downloads_since() ORDER BY package, day
    ON CONFLICT (package, day) DO UPDATE SET downloads = package_downloads_recent.downloads + excluded.downloads;
    DELETE FROM package_downloads_recent WHERE day < recent_downloads_since();
    RETURN NULL;
END
$$;
CREATE TRIGGER downloads_inserted AFTER INSERT ON downloads
    REFERENCING NEW TABLE AS new_downloads FOR EACH STATEMENT EXECUTE FUNCTION downloads_inserted();

-- The totals of the farm as it is now.
INSERT INTO package_totals (package, build_time)
SELECT package, COALESCE(sum(duration) FILTER (WHERE duration < interval '1 week'), '0') FROM builds GROUP BY package;
UPDATE package_totals t SET files = c.files, files_size = c.files_size
FROM (SELECT b.package, count(*) AS files, sum(f.filesize) AS files_size
      FROM builds b JOIN files f ON f.build_id = b.build_id GROUP BY b.package) c
WHERE t.package = c.package;
UPDATE package_totals t SET downloads = c.downloads
FROM (SELECT b.package, count(*) AS downloads
      FROM downloads d JOIN files f ON f.filename = d.filename JOIN builds b ON b.build_id = f.build_id
      GROUP BY b.package) c
WHERE t.package = c.package;
INSERT INTO package_downloads_recent (package, day, downloads)
SELECT b.package, (d.accessed_at AT TIME ZONE 'UTC')::date, count(*)
FROM downloads d JOIN files f ON f.filename = d.filename JOIN builds b ON b.build_id = f.build_id
WHERE d.accessed_at >= recent_downloads_since()::timestamp AT TIME ZONE 'UTC'
GROUP BY 1, 2;
