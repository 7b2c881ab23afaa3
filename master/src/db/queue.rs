//! The build queue ([`Database::build_queue`]): per ABI, the releases waiting to be built,
//! and the `versions.complete` hint that keeps it fast.
//!
//! The rules: a release of a package, version and ABI that are not skipped is wanted on that
//! ABI until a build of it ran there (successful or not: a failure is not queued again
//! automatically), or one of its files serves the ABI (a pure wheel serves every ABI, an abi3
//! wheel every ABI from its Python floor up, a wheel tagged with an ABI serves that ABI
//! whichever build made it). Each release waits on its LOWEST pending ABI only: once that
//! build is done, a pure or abi3 wheel it made serves the higher ABIs and saves building
//! them. A release an operator asked to build again on an ABI (`rebuilds_wanted`, see
//! [`Database::want_rebuild`]) is wanted there whatever it has. Within an ABI the newest release comes first, so that new releases reach users within
//! minutes even while a backfill of old versions (a new ABI, a rebuild) runs. A release is
//! queued only once its source is pinned ([`super::sources`]): it is built from those bytes.
//!
//! Speed: a farm holds millions of versions, nearly all of them done, and hundreds of thousands
//! waiting. Two hints on `versions` keep the queue from probing them all each time:
//! `complete` marks a version that needs nothing more, and `waiting_on` names the lowest ABI a
//! version waits on. Both are worked out once per version ([`EXAMINE_SQL`], over the partial
//! index `versions_unexamined`, probing `builds_pkgver`), and each ABI's queue is then read
//! newest first from the partial index `versions_waiting`. Recording a build works its
//! version's hints out again in its own transaction ([`refresh_queue_hints_sql`]); deleting
//! builds and asking for a rebuild clear them; changing the ABIs clears every version's (a
//! trigger), after which the queue works every version out again, a minute per computation.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use piwheels_common::protocols::{PackageVersion, SourceFile};
use sqlx::{Connection, Executor};

use super::Database;
use crate::calls::db::{BuildQueues, QueuedBuild, QueuedCheck};

/// A row of the queue: the ABI, then the release and its source (NULLs for an empty queue).
type QueueRow = (String, Option<String>, Option<String>, Option<String>, Option<String>, Option<String>);

/// The ABIs (`a`, from `build_abis`) on which the version `v` is still wanted, lowest first.
macro_rules! pending_abis {
    () => {
        "SELECT a.abi_tag FROM build_abis a
         WHERE a.skip = ''
           AND (EXISTS (
                   SELECT 1 FROM rebuilds_wanted w
                   WHERE w.package = v.package AND w.version = v.version AND w.abi_tag = a.abi_tag)
                OR NOT EXISTS (
                   SELECT 1 FROM builds b
                   WHERE b.package = v.package AND b.version = v.version AND b.abi_tag = a.abi_tag)
                AND NOT EXISTS (
                   -- Only a file tagged other than its builder's ABI can serve another ABI.
                   SELECT 1 FROM builds b JOIN files f ON f.build_id = b.build_id
                   WHERE b.package = v.package AND b.version = v.version
                     AND f.abi_tag <> b.abi_tag
                     AND (f.abi_tag = 'none' OR f.abi_tag = a.abi_tag OR f.python_floor <= a.python_version)))
         ORDER BY a.python_version, a.abi_tag"
    };
}

/// Works out what the `$1` newest versions not looked at yet wait on (see the module
/// documentation): their lowest pending ABI, or that they need nothing; gives how many it read.
/// A version changed meanwhile by another writer (a build recorded, a rebuild asked for, its
/// source pinned) is left alone: its row is no longer the one read (`xmin` differs), and the
/// next statement reads it again.
const EXAMINE_SQL: &str = concat!(
    "WITH examined AS MATERIALIZED (
        SELECT v.package, v.version, v.xmin AS seen, first.abi_tag
        FROM versions v
        -- (Versions of skipped packages too: the queue leaves them out when it reads.)
        LEFT JOIN LATERAL (",
    pending_abis!(),
    " LIMIT 1) first ON true
        WHERE NOT v.complete AND v.skip = '' AND v.waiting_on IS NULL
        ORDER BY v.released DESC
        LIMIT $1
     ), worked_out AS (
        UPDATE versions v SET complete = e.abi_tag IS NULL, waiting_on = e.abi_tag
        FROM examined e
        WHERE v.package = e.package AND v.version = e.version AND v.xmin = e.seen
     )
     SELECT count(*) FROM examined"
);

/// Each ABI's newest pinned releases waiting on it, at most `$1`, from `versions_waiting`.
/// Every ABI being built appears, with NULLs when its queue is empty.
const BUILD_QUEUE_SQL: &str = "
    SELECT a.abi_tag, q.package, q.version, q.source_filename, q.source_url, q.source_sha256
    FROM build_abis a
    LEFT JOIN LATERAL (
        SELECT v.package, v.version, v.released, v.source_filename, v.source_url, v.source_sha256
        FROM versions v
        JOIN packages p ON p.package = v.package AND p.skip = ''
        WHERE v.waiting_on = a.abi_tag AND NOT v.complete AND v.skip = '' AND v.source_sha256 IS NOT NULL
        ORDER BY v.released DESC, v.package COLLATE \"C\", v.version COLLATE \"C\"
        LIMIT $1
    ) q ON true
    WHERE a.skip = ''
    ORDER BY a.python_version, a.abi_tag, q.released DESC, q.package COLLATE \"C\", q.version COLLATE \"C\"";

/// Works out again what the version `$1`, `$2` waits on (`complete` and `waiting_on`); a
/// build records it in its own transaction.
macro_rules! refresh_queue_hints_sql {
    () => {
        concat!(
            "UPDATE versions v SET (waiting_on, complete) = (SELECT w.abi_tag, w.abi_tag IS NULL FROM (SELECT (",
            $crate::db::queue::pending_abis!(),
            " LIMIT 1) AS abi_tag) w) WHERE v.package = $1 AND v.version = $2"
        )
    };
}
pub(crate) use {pending_abis, refresh_queue_hints_sql};

/// How long the queue computation may take.
pub const BUILD_QUEUE_TIMEOUT: Duration = Duration::from_secs(600);

/// Versions worked out per statement, each in its own transaction, so that the work done is
/// kept however the computation ends. About 3 s of a 2-core server's time.
const EXAMINE_BATCH: i64 = 50_000;

/// How long one computation goes on working versions out before it answers with the queue of
/// those it knows. After the ABIs change every version is looked at again, which at PyPI's
/// size takes minutes: the builders get the newest releases' builds meanwhile.
const EXAMINE_BUDGET: Duration = Duration::from_secs(60);

impl Database {
    /// The build queue: for every ABI that is not skipped (even when its queue is empty), at
    /// most `limit` releases, newest release first. First works out what the versions not
    /// looked at yet wait on, newest first, for up to [`EXAMINE_BUDGET`].
    pub async fn build_queue(&mut self, limit: u32) -> Result<BuildQueues, sqlx::Error> {
        self.build_queue_within(limit, EXAMINE_BUDGET).await
    }

    /// [`Database::build_queue`], working versions out for up to `budget` (at least one
    /// statement's worth).
    pub async fn build_queue_within(&mut self, limit: u32, budget: Duration) -> Result<BuildQueues, sqlx::Error> {
        let started = Instant::now();
        let unexamined = loop {
            let mut tx = self.conn.begin().await?;
            tx.execute(sqlx::AssertSqlSafe(format!("SET LOCAL statement_timeout = {}", BUILD_QUEUE_TIMEOUT.as_millis())))
                .await?;
            let read: i64 = sqlx::query_scalar(EXAMINE_SQL).bind(EXAMINE_BATCH).fetch_one(&mut *tx).await?;
            tx.commit().await?;
            if read == 0 {
                break false;
            }
            if started.elapsed() >= budget {
                break true;
            }
        };
        let rows: Vec<QueueRow> = sqlx::query_as(BUILD_QUEUE_SQL).bind(i64::from(limit)).fetch_all(&mut self.conn).await?;
        let mut queues: BTreeMap<String, Vec<QueuedBuild>> = BTreeMap::new();
        for (abi, package, version, filename, url, sha256) in rows {
            let queue = queues.entry(abi).or_default();
            if let (Some(package), Some(version), Some(filename), Some(url), Some(sha256)) = (package, version, filename, url, sha256) {
                queue.push(QueuedBuild { release: PackageVersion { package, version }, source: SourceFile { filename, url, sha256 } });
            }
        }
        Ok(BuildQueues { queues, unexamined })
    }

    /// The cross-checks waiting for a builder, per ABI (the build's), oldest request first, at
    /// most `limit` per ABI, with the build's source and builder, and its files when the check
    /// was asked for. A build whose package, version or ABI is skipped now waits.
    pub async fn check_queue(&mut self, limit: u32) -> Result<BTreeMap<String, Vec<QueuedCheck>>, sqlx::Error> {
        let rows: Vec<CheckRow> = sqlx::query_as(
            "WITH waiting AS ( \
                 SELECT c.check_id, b.build_id, b.abi_tag, b.package, b.version, b.source_filename, b.source_url, \
                        b.source_sha256::text AS source_sha256, b.builder, b.builder_key, c.files, \
                        row_number() OVER (PARTITION BY b.abi_tag ORDER BY c.requested_at, c.check_id) AS n \
                 FROM cross_checks c \
                 JOIN builds b ON b.build_id = c.build_id \
                 JOIN build_abis a ON a.abi_tag = b.abi_tag AND a.skip = '' \
                 JOIN versions v ON v.package = b.package AND v.version = b.version AND v.skip = '' \
                 JOIN packages p ON p.package = b.package AND p.skip = '' \
                 WHERE c.checked_at IS NULL AND b.source_sha256 IS NOT NULL) \
             SELECT w.abi_tag, w.check_id, w.package, w.version, w.source_filename, w.source_url, w.source_sha256, \
                    w.builder, w.builder_key, w.files \
             FROM waiting w WHERE w.n <= $1 ORDER BY w.abi_tag, w.n",
        )
        .bind(i64::from(limit))
        .fetch_all(&mut self.conn)
        .await?;
        let mut queues: BTreeMap<String, Vec<QueuedCheck>> = BTreeMap::new();
        for (abi, check_id, package, version, filename, url, sha256, builder, builder_key, files) in rows {
            queues.entry(abi).or_default().push(QueuedCheck {
                check_id,
                release: PackageVersion { package, version },
                source: SourceFile { filename, url, sha256 },
                builder,
                builder_key,
                files,
            });
        }
        Ok(queues)
    }
}

/// A row of the cross-check queue: the ABI, the check, its release and source, the builder
/// of the build and its key, the build's files.
type CheckRow = (String, i64, String, String, String, String, String, String, Option<String>, Vec<String>);
