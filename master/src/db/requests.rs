//! Answers to each database request: [`Database::handle`] dispatches a [`DbRequest`] to the
//! method that carries it out, and every such method is public so that other master code can
//! call it directly with typed arguments and results.
//!
//! Failures come in two kinds. A database failure (a lost connection, a violated constraint
//! such as a foreign key to a version deleted meanwhile) is an `Err(sqlx::Error)`; the oracle
//! decides whether to reconnect. A refusal of the request itself (the PyPI serial going
//! backwards, a file name already recorded with other contents, renaming onto an existing
//! package) is a [`RequestError::Refused`], which [`Database::handle`] answers with
//! [`DbReply::Error`]. Operations of several statements run in one transaction.
//!
//! The project data ([`Database::project_data`]) lives in [`super::project`], the build queue
//! ([`Database::build_queue`]) in [`super::queue`].

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use piwheels_common::names::is_prerelease;
use piwheels_common::provenance::BuildFacts;
use piwheels_common::wheel::WheelName;
use piwheels_common::protocols::{AccessRecord, BuildId, ClientInfo, FailureKind, SourceFile, Timestamp, WheelFile, WireError};

use crate::calls::db::*;
use piwheels_common::inspect::sha256_hex;
use sqlx::postgres::types::PgInterval;
use sqlx::{Connection, PgConnection, Postgres, Transaction};

use super::Database;
use super::queue::refresh_queue_hints_sql;

/// Why a request was not carried out.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The database failed; the request may succeed on another try or connection.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// The request itself is refused; the message says why. Answered with [`DbReply::Error`].
    #[error("{0}")]
    Refused(String),
}

/// Column lengths of the schema (in characters), so that text is cut to fit instead of being
/// refused by PostgreSQL.
pub(crate) mod len {
    pub(in crate::db) const SKIP: usize = 100;
    pub(in crate::db) const DESCRIPTION: usize = 200;
    pub(super) const YANK_REASON: usize = 200;
    pub(super) const BUILDER: usize = 100;
    pub(super) const FILENAME: usize = 255;
    pub(super) const PACKAGE: usize = 200;
    pub(super) const PAGE: usize = 30;
    pub(super) const USER_AGENT: usize = 200;
    pub(super) const CLIENT_FIELD: usize = 100;
    pub(super) const INSTALLER_NAME: usize = 20;
    pub(super) const ACTOR: usize = 200;
    pub(super) const ACTION: usize = 50;
}

/// A request that may be refused: a refusal becomes the reply [`DbReply::Error`], a database
/// failure stays an error.
fn refusable<T>(result: Result<T, RequestError>, reply: impl FnOnce(T) -> DbReply) -> Result<DbReply, sqlx::Error> {
    match result {
        Ok(value) => Ok(reply(value)),
        Err(RequestError::Refused(message)) => Ok(DbReply::Error(WireError::refused(message))),
        Err(RequestError::Database(err)) => Err(err),
    }
}

impl Database {
    /// Carries out one request and gives its call's reply. Refusals become
    /// [`DbReply::Error`]; database failures are returned as `Err`.
    pub async fn handle(&mut self, request: DbRequest) -> Result<DbReply, sqlx::Error> {
        let reply = self.answer(request).await;
        if matches!(reply, Err(_) | Ok(DbReply::Error(_))) {
            // A request that failed or was refused dropped its transaction, which sqlx rolls
            // back only at the connection's next use: until then its row locks would stay
            // held by an idle oracle and hold up the others (the build queue, say).
            let _ = self.conn.ping().await;
        }
        reply
    }

    async fn answer(&mut self, request: DbRequest) -> Result<DbReply, sqlx::Error> {
        use DbRequest as Q;
        let reply = match request {
            Q::AllPackages(AllPackages {}) => self.all_packages().await.map(DbReply::AllPackages)?,
            Q::NewPackage(NewPackage { package, skip, description }) => {
                DbReply::NewPackage(self.new_package(&package, &skip, &description).await?)
            }
            Q::NewVersion(NewVersion { package, version, released, skip }) => {
                DbReply::NewVersion(self.new_version(&package, &version, released, &skip).await?)
            }
            Q::NewPackageName(NewPackageName { package, name, seen }) => {
                DbReply::NewPackageName(self.new_package_name(&package, &name, seen).await?)
            }
            Q::PackageAliases(PackageAliases { package }) => DbReply::PackageAliases(self.package_aliases(&package).await?),
            Q::SetDescription(SetDescription { package, description }) => {
                DbReply::SetDescription(self.set_description(&package, &description).await?)
            }
            Q::SkipPackage(SkipPackage { package, reason }) => DbReply::SkipPackage(self.skip_package(&package, &reason).await?),
            Q::SkipVersion(SkipVersion { package, version, reason }) => {
                DbReply::SkipVersion(self.skip_version(&package, &version, &reason).await?)
            }
            Q::YankVersion(YankVersion { package, version, reason }) => {
                DbReply::YankVersion(self.yank_version(&package, &version, reason.as_deref()).await?)
            }
            Q::DeletePackage(DeletePackage { package }) => DbReply::DeletePackage(self.delete_package(&package).await?),
            Q::DeleteVersion(DeleteVersion { package, version }) => {
                DbReply::DeleteVersion(self.delete_version(&package, &version).await?)
            }
            Q::RenamePackage(RenamePackage { from, to }) => refusable(self.rename_package(&from, &to).await, DbReply::RenamePackage)?,
            Q::PackageExists(PackageExists { package }) => DbReply::PackageExists(self.package_exists(&package).await?),
            Q::VersionExists(VersionExists { package, version }) => {
                DbReply::VersionExists(self.version_exists(&package, &version).await?)
            }
            Q::LogBuild(LogBuild { build, rewrite_at, cross_check }) => {
                refusable(self.log_build(&build, rewrite_at, cross_check).await, DbReply::LogBuild)?
            }
            Q::DeleteBuilds(DeleteBuilds { package, version }) => {
                DbReply::DeleteBuilds(self.delete_builds(&package, version.as_deref()).await?)
            }
            Q::PackageFiles(PackageFiles { package }) => DbReply::PackageFiles(self.package_files(&package).await?),
            Q::VersionFiles(VersionFiles { package, version }) => {
                DbReply::VersionFiles(self.version_files(&package, &version).await?)
            }
            Q::BuildProvenance(BuildProvenance { builds }) => DbReply::BuildProvenance(self.build_provenance(&builds).await?),
            Q::WantRebuild(WantRebuild { package, version, abi, at }) => {
                refusable(self.want_rebuild(&package, &version, abi.as_deref(), at).await, DbReply::WantRebuild)?
            }
            Q::WantCrossCheck(WantCrossCheck { package, version, abi }) => {
                refusable(self.want_cross_check(&package, &version, abi.as_deref()).await, DbReply::WantCrossCheck)?
            }
            Q::CheckQueue(CheckQueue { limit }) => DbReply::CheckQueue(self.check_queue(limit).await?),
            Q::LogCheck(LogCheck { check, rewrite_at }) => refusable(self.log_check(&check, rewrite_at).await, DbReply::LogCheck)?,
            Q::ForgetCheck(ForgetCheck { check_id }) => DbReply::ForgetCheck(self.forget_check(check_id).await?),
            Q::NameForFile(NameForFile { package, filename, sha256 }) => {
                refusable(self.name_for_file(&package, &filename, &sha256).await, DbReply::NameForFile)?
            }
            Q::FileWithHash(FileWithHash { sha256 }) => DbReply::FileWithHash(self.file_with_hash(&sha256).await?),
            Q::Project(Project { package }) => {
                refusable(self.project_data(&package).await.map(Box::new), DbReply::Project)?
            }
            Q::Projects(Projects { packages }) => refusable(self.projects_data(&packages).await, DbReply::Projects)?,
            Q::BuildIds(BuildIds { package, version }) => DbReply::BuildIds(self.build_ids(&package, version.as_deref()).await?),
            Q::BuildAbis(BuildAbis {}) => DbReply::BuildAbis(self.build_abis().await?),
            Q::BuildQueue(BuildQueue { limit }) => DbReply::BuildQueue(self.build_queue(limit).await?),
            Q::UnpinnedSources(UnpinnedSources { limit }) => DbReply::UnpinnedSources(self.unpinned_sources(limit).await?),
            Q::PinSource(PinSource { package, version, source, uploaded }) => {
                refusable(self.pin_source(&package, &version, &source, uploaded).await, DbReply::PinSource)?
            }
            Q::PinLater(PinLater { package, version, after }) => DbReply::PinLater(self.pin_later(&package, &version, after).await?),
            Q::PypiSerial(PypiSerial {}) => DbReply::PypiSerial(self.pypi_serial().await?),
            Q::SetPypiSerial(SetPypiSerial { serial }) => refusable(self.set_pypi_serial(serial).await, DbReply::SetPypiSerial)?,
            Q::Statistics(Statistics {}) => DbReply::Statistics(self.statistics().await?),
            Q::SearchIndex(SearchIndex {}) => DbReply::SearchIndex(self.search_index().await?),
            Q::LogAccess(LogAccess { records }) => DbReply::LogAccess(self.log_access(&records).await?),
            Q::AddRewrite(AddRewrite { rewrite }) => DbReply::AddRewrite(self.add_rewrite(&rewrite).await?),
            Q::PendingRewrites(PendingRewrites {}) => DbReply::PendingRewrites(self.pending_rewrites().await?),
            Q::PendingRewriteCount(PendingRewriteCount { until }) => DbReply::PendingRewriteCount(self.pending_rewrite_count(until).await?),
            Q::ClearRewrites(ClearRewrites { written }) => DbReply::ClearRewrites(self.clear_rewrites(&written).await?),
            Q::Audit(Audit { actor, action, detail }) => DbReply::Audit(self.audit(&actor, &action, &detail).await?),
            Q::ApplyFeed(ApplyFeed { events, skip_new }) => DbReply::ApplyFeed(self.apply_feed(&events, &skip_new).await?),
            Q::SetDescriptions(SetDescriptions { descriptions }) => DbReply::SetDescriptions(self.set_descriptions(&descriptions).await?),
            Q::TriageFailures(TriageFailures { limit }) => DbReply::TriageFailures(self.triage_failures(limit).await?),
            Q::UnresolvedCauses(UnresolvedCauses { contents, limit }) => {
                DbReply::UnresolvedCauses(self.unresolved_causes(&contents, limit).await?)
            }
            Q::RecordLookups(RecordLookups { contents, found }) => {
                refusable(self.record_lookups(&contents, &found).await, DbReply::RecordLookups)?
            }
            Q::Triage(Triage { abi }) => DbReply::Triage(self.triage(abi.as_deref()).await?),
            Q::Requeue(Requeue { request, at }) => refusable(self.requeue(&request, at).await, DbReply::Requeue)?,
        };
        Ok(reply)
    }

    // --------------------------------------------------------------------------------------
    // Packages and versions
    // --------------------------------------------------------------------------------------

    /// Every package's canonical name, sorted (byte order).
    pub async fn all_packages(&mut self) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar("SELECT package FROM packages ORDER BY package COLLATE \"C\"")
            .fetch_all(&mut self.conn)
            .await
    }

    /// Adds a package; false when it existed already (it is then left as it was). The skip
    /// reason and description are cut to their column lengths.
    pub async fn new_package(&mut self, package: &str, skip: &str, description: &str) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(
            "INSERT INTO packages (package, skip, description) VALUES ($1, $2, $3) ON CONFLICT (package) DO NOTHING",
        )
        .bind(package)
        .bind(truncate(skip, len::SKIP))
        .bind(truncate(description, len::DESCRIPTION))
        .execute(&mut self.conn)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Adds a version of an existing package (a missing package is a foreign-key error);
    /// false when it existed already. `released` None means now; whether it is a pre-release
    /// follows from the version string.
    pub async fn new_version(
        &mut self,
        package: &str,
        version: &str,
        released: Option<Timestamp>,
        skip: &str,
    ) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(
            "INSERT INTO versions (package, version, released, skip, prerelease) \
             VALUES ($1, $2, COALESCE($3, now()), $4, $5) \
             ON CONFLICT (package, version) DO NOTHING",
        )
        .bind(package)
        .bind(version)
        .bind(released)
        .bind(truncate(skip, len::SKIP))
        .bind(is_prerelease(version))
        .execute(&mut self.conn)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records that `name` was seen as a spelling of `package` at `seen`. The name belongs to
    /// `package` afterwards (a name maps to one package); its time never moves backwards, so
    /// replaying old events cannot change a display name.
    pub async fn new_package_name(&mut self, package: &str, name: &str, seen: Timestamp) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO package_names (name, package, seen) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE \
             SET package = EXCLUDED.package, seen = GREATEST(package_names.seen, EXCLUDED.seen)",
        )
        .bind(name)
        .bind(package)
        .bind(seen)
        .execute(&mut self.conn)
        .await?;
        Ok(())
    }

    /// The spellings of a package's name other than the canonical one, most recently seen
    /// first.
    pub async fn package_aliases(&mut self, package: &str) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT name FROM package_names WHERE package = $1 AND name <> $1 \
             ORDER BY seen DESC, name COLLATE \"C\"",
        )
        .bind(package)
        .fetch_all(&mut self.conn)
        .await
    }

    /// Sets a package's summary (cut to 200 characters). A missing package is not an error.
    pub async fn set_description(&mut self, package: &str, description: &str) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE packages SET description = $2 WHERE package = $1")
            .bind(package)
            .bind(truncate(description, len::DESCRIPTION))
            .execute(&mut self.conn)
            .await?;
        Ok(())
    }

    /// Sets (or with an empty reason clears) a package's skip reason, cut to 100 characters.
    pub async fn skip_package(&mut self, package: &str, reason: &str) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE packages SET skip = $2 WHERE package = $1")
            .bind(package)
            .bind(truncate(reason, len::SKIP))
            .execute(&mut self.conn)
            .await?;
        Ok(())
    }

    /// Sets (or with an empty reason clears) a version's skip reason, cut to 100 characters.
    pub async fn skip_version(&mut self, package: &str, version: &str, reason: &str) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE versions SET skip = $3 WHERE package = $1 AND version = $2")
            .bind(package)
            .bind(version)
            .bind(truncate(reason, len::SKIP))
            .execute(&mut self.conn)
            .await?;
        Ok(())
    }

    /// Asks for a new build of a release on the ABI `abi`, or on every ABI it has a build on,
    /// keeping its builds and files; returns those ABIs. `at` is the master's time of the
    /// request: only builds the master hands out after it answer it. Refused for an unknown or skipped
    /// release, an ABI the farm does not build, and a release with no build to repeat.
    pub async fn want_rebuild(&mut self, package: &str, version: &str, abi: Option<&str>, at: Timestamp) -> Result<Vec<String>, RequestError> {
        let mut tx = self.conn.begin().await?;
        check_buildable(&mut tx, package, version).await?;
        if let Some(abi) = abi {
            let built: Option<String> = sqlx::query_scalar("SELECT skip FROM build_abis WHERE abi_tag = $1").bind(abi).fetch_optional(&mut *tx).await?;
            match built {
                None => return Err(RequestError::Refused(format!("the farm does not build ABI {abi}"))),
                Some(reason) if !reason.is_empty() => return Err(RequestError::Refused(format!("ABI {abi} is skipped ({reason})"))),
                Some(_) => {}
            }
        }
        let abis: Vec<String> = sqlx::query_scalar(
            "INSERT INTO rebuilds_wanted (package, version, abi_tag, requested_at) \
             SELECT $1, $2, a.abi_tag, $4 FROM build_abis a \
             WHERE a.skip = '' AND (a.abi_tag = $3 OR $3 IS NULL AND EXISTS ( \
                 SELECT 1 FROM builds b WHERE b.package = $1 AND b.version = $2 AND b.abi_tag = a.abi_tag)) \
             ON CONFLICT (package, version, abi_tag) DO UPDATE SET requested_at = EXCLUDED.requested_at \
             RETURNING abi_tag",
        )
        .bind(package)
        .bind(version)
        .bind(abi)
        .bind(at)
        .fetch_all(&mut *tx)
        .await?;
        if abis.is_empty() {
            return Err(RequestError::Refused(format!(
                "{package} {version} has no build on an ABI the farm builds: it is built when its turn comes; name an ABI to build it there now"
            )));
        }
        sqlx::query("UPDATE versions SET complete = false, waiting_on = NULL WHERE package = $1 AND version = $2")
            .bind(package)
            .bind(version)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        let mut abis = abis;
        abis.sort();
        Ok(abis)
    }

    /// Asks for a cross-check of the latest successful build of a release on one ABI, or on
    /// every ABI it has one on; gives those ABIs. Refused for an unknown release, one with no
    /// successful build there, and builds without a recorded source (imports, and builds
    /// recorded before sources were pinned): a cross-check builds from the same source.
    pub async fn want_cross_check(&mut self, package: &str, version: &str, abi: Option<&str>) -> Result<Vec<String>, RequestError> {
        let mut tx = self.conn.begin().await?;
        check_buildable(&mut tx, package, version).await?;
        // The latest successful build per ABI that still records files (a later build with the
        // same bytes takes their records), and whether it has the source to build again. An ABI
        // the farm skips is not built on, and so not checked.
        let latest: Vec<(i64, String, bool, Vec<String>)> = sqlx::query_as(
            "SELECT DISTINCT ON (b.abi_tag) b.build_id, b.abi_tag, b.source_sha256 IS NOT NULL, \
                    ARRAY(SELECT f.filename::text FROM files f WHERE f.build_id = b.build_id ORDER BY f.filename) \
             FROM builds b JOIN build_abis a ON a.abi_tag = b.abi_tag AND a.skip = '' \
             WHERE b.package = $1 AND b.version = $2 AND b.status AND ($3::text IS NULL OR b.abi_tag = $3) \
               AND EXISTS (SELECT 1 FROM files f WHERE f.build_id = b.build_id) \
             ORDER BY b.abi_tag, b.build_id DESC",
        )
        .bind(package)
        .bind(version)
        .bind(abi)
        .fetch_all(&mut *tx)
        .await?;
        let on = abi.map_or(String::new(), |abi| format!(" on {abi}"));
        if latest.is_empty() {
            return Err(RequestError::Refused(format!("{package} {version} has no successful build{on} to cross-check")));
        }
        let checkable: Vec<&(i64, String, bool, Vec<String>)> = latest.iter().filter(|(_, _, source, _)| *source).collect();
        if checkable.is_empty() {
            return Err(RequestError::Refused(format!(
                "the builds of {package} {version}{on} record no source (imported, or built before sources were pinned): \
                 build it again with piw-rebuild build first"
            )));
        }
        // The files as that statement saw them: a build recorded since may have taken them over.
        for (build_id, _, _, files) in &checkable {
            sqlx::query(
                "INSERT INTO cross_checks (build_id, requested_by, files) VALUES ($1, 'operator', $2) \
                 ON CONFLICT (build_id) WHERE checked_at IS NULL DO NOTHING",
            )
            .bind(build_id)
            .bind(files)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(checkable.into_iter().map(|(_, abi, _, _)| abi.clone()).collect())
    }

    /// Forgets a waiting cross-check that no builder could finish; false when it was not
    /// waiting.
    pub async fn forget_check(&mut self, check_id: i64) -> Result<bool, sqlx::Error> {
        let done = sqlx::query("DELETE FROM cross_checks WHERE check_id = $1 AND checked_at IS NULL").bind(check_id).execute(&mut self.conn).await?;
        Ok(done.rows_affected() > 0)
    }

    /// Records a finished cross-check and a rewrite of its package's project page; refused
    /// when the check is not waiting (done already, or its build was removed).
    pub async fn log_check(&mut self, check: &CheckRecord, rewrite_at: Timestamp) -> Result<(), RequestError> {
        let (verdict, differences) = match &check.verdict {
            Verdict::Reproduced => ("reproduced", Vec::new()),
            Verdict::Differs { differences } => ("differs", differences.iter().map(|d| d.replace('\0', "\u{fffd}")).collect()),
            Verdict::Failed { reason } => ("failed", vec![reason.replace('\0', "\u{fffd}")]),
        };
        let environment = (!check.environment.is_empty()).then(|| serde_json::to_string(&check.environment).expect("a map of strings serializes"));
        let mut tx = self.conn.begin().await?;
        let environment_id = match environment {
            Some(environment) => Some(environment_id(&mut tx, &environment).await?),
            None => None,
        };
        let package: Option<String> = sqlx::query_scalar(
            "UPDATE cross_checks c SET checked_at = now(), builder = $2, builder_key = $3, environment_id = $4, \
                    started_at = $5, duration = $6, verdict = $7, differences = $8 \
             FROM builds b \
             WHERE c.check_id = $1 AND c.checked_at IS NULL AND b.build_id = c.build_id \
             RETURNING b.package",
        )
        .bind(check.check_id)
        .bind(stored_label(&check.builder))
        .bind(&check.builder_key)
        .bind(environment_id)
        .bind(check.started_at)
        .bind(interval(check.duration))
        .bind(verdict)
        .bind(&differences)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(package) = package else {
            return Err(RequestError::Refused(format!("cross-check {} is not waiting (done already, or its build was removed)", check.check_id)));
        };
        add_rewrite(&mut tx, &PendingRewrite { package, added_at: rewrite_at, scope: RewriteScope::Project }).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Yanks a version with a reason (cut to 200 characters, may be empty), or unyanks it
    /// when `reason` is None.
    pub async fn yank_version(
        &mut self,
        package: &str,
        version: &str,
        reason: Option<&str>,
    ) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE versions SET yanked = $3, yank_reason = $4 WHERE package = $1 AND version = $2")
            .bind(package)
            .bind(version)
            .bind(reason.is_some())
            .bind(truncate(reason.unwrap_or(""), len::YANK_REASON))
            .execute(&mut self.conn)
            .await?;
        Ok(())
    }

    /// Deletes a package with its names, versions, builds, files and dependencies.
    pub async fn delete_package(&mut self, package: &str) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM packages WHERE package = $1").bind(package).execute(&mut self.conn).await?;
        Ok(())
    }

    /// Deletes a version with its builds, files and dependencies.
    pub async fn delete_version(&mut self, package: &str, version: &str) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM versions WHERE package = $1 AND version = $2")
            .bind(package)
            .bind(version)
            .execute(&mut self.conn)
            .await?;
        Ok(())
    }

    /// Renames a package (a PyPI rename): its versions, builds (and so their files) and names
    /// move to `to` by the schema's cascades, and `from` becomes an alias of `to`. Refused when
    /// `to` exists already or `from` does not.
    pub async fn rename_package(&mut self, from: &str, to: &str) -> Result<(), RequestError> {
        let mut tx = self.conn.begin().await?;
        // Should another writer add `to` between this check and the update, the update fails
        // on the primary key and nothing changes.
        let target: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM packages WHERE package = $1)")
            .bind(to)
            .fetch_one(&mut *tx)
            .await?;
        if target {
            tx.rollback().await?;
            return Err(RequestError::Refused(format!("cannot rename {from} to {to}: package {to} exists already")));
        }
        let source: Option<String> = sqlx::query_scalar("SELECT package FROM packages WHERE package = $1 FOR UPDATE")
            .bind(from)
            .fetch_optional(&mut *tx)
            .await?;
        if source.is_none() {
            tx.rollback().await?;
            return Err(RequestError::Refused(format!("cannot rename {from} to {to}: package {from} does not exist")));
        }
        sqlx::query("UPDATE packages SET package = $2 WHERE package = $1")
            .bind(from)
            .bind(to)
            .execute(&mut *tx)
            .await?;
        // The old name usually is a recorded spelling already (and moved with the package);
        // otherwise it is recorded as never seen, so that it does not become the display name.
        sqlx::query(
            "INSERT INTO package_names (name, package) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET package = EXCLUDED.package",
        )
        .bind(from)
        .bind(to)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Whether the package exists (skipped or not).
    pub async fn package_exists(&mut self, package: &str) -> Result<bool, sqlx::Error> {
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM packages WHERE package = $1)")
            .bind(package)
            .fetch_one(&mut self.conn)
            .await
    }

    /// Whether the version exists (skipped or not).
    pub async fn version_exists(&mut self, package: &str, version: &str) -> Result<bool, sqlx::Error> {
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM versions WHERE package = $1 AND version = $2)")
            .bind(package)
            .bind(version)
            .fetch_one(&mut self.conn)
            .await
    }

    // --------------------------------------------------------------------------------------
    // Builds and files
    // --------------------------------------------------------------------------------------

    /// Records a build with its files and their dependencies, in one transaction, and returns
    /// the build's id.
    ///
    /// A file name recorded already with the same SHA-256 (a rebuild producing an identical
    /// wheel) moves to the new build, with the new build's dependencies; one recorded with a
    /// different SHA-256 refuses the whole build, since the published file cannot change
    /// under its users. A version deleted meanwhile is a foreign-key error.
    ///
    /// One round trip: the work is the session's `pg_temp.log_build` function (see
    /// [`LOG_BUILD_FUNCTION`]), a single statement and so a transaction of its own.
    /// When `cross_check` and the build succeeded, a cross-check of it waits for another
    /// builder from then on.
    pub async fn log_build(&mut self, record: &BuildRecord, rewrite_at: Timestamp, cross_check: bool) -> Result<BuildId, RequestError> {
        let built_by = i32::try_from(record.built_by)
            .map_err(|_| RequestError::Refused(format!("slave id {} is out of range", record.built_by)))?;
        let result = &record.result;
        let files = FileColumns::of(&result.files)?;
        let rewrite = record.pending_rewrite(rewrite_at);
        let dependencies = DependencyRows::of(&result.files);
        // PostgreSQL's text cannot hold NUL.
        let output = result.output.replace('\0', "\u{fffd}");
        let call = || sqlx::query_scalar(LOG_BUILD_CALL)
            .bind(&record.package)
            .bind(&record.version)
            .bind(built_by)
            .bind(stored_label(&record.builder))
            .bind(&record.abi)
            .bind(result.success)
            .bind(interval(result.duration))
            .bind(interval(result.cpu_time))
            .bind(i64::try_from(result.peak_memory).unwrap_or(i64::MAX))
            .bind(result.exit_status)
            .bind(result.failure.map(failure_name))
            .bind(&files.filename)
            .bind(&files.size)
            .bind(&files.sha256)
            .bind(&files.metadata_hash)
            .bind(&files.package_tag)
            .bind(&files.version_tag)
            .bind(&files.build_tag)
            .bind(&files.py_tag)
            .bind(&files.abi_tag)
            .bind(&files.platform_tag)
            .bind(&files.python_floor)
            .bind(&files.requires_python)
            .bind(rewrite.added_at)
            .bind(scope_name(rewrite.scope))
            .bind(&dependencies.filename)
            .bind(&dependencies.tool)
            .bind(&dependencies.dependency)
            .bind(&output)
            .bind(record.started_at)
            .bind(&record.builder_key)
            .bind((!record.environment.is_empty()).then(|| serde_json::to_string(&record.environment).expect("a map of strings serializes")))
            .bind(record.source.as_ref().map(|s| s.filename.as_str()))
            .bind(record.source.as_ref().map(|s| s.url.as_str()))
            .bind(record.source.as_ref().map(|s| s.sha256.as_str()))
            .bind(cross_check && result.success);
        let mut logged = call().fetch_one(&mut self.conn).await;
        if matches!(&logged, Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some(UNDEFINED_FUNCTION)) {
            // The session lost its temporary objects (`DISCARD ALL` by a pooler, say): made again.
            make_session_functions(&mut self.conn).await?;
            logged = call().fetch_one(&mut self.conn).await;
        }
        match logged {
            Ok(build_id) => Ok(build_id),
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some(FILE_CLASH) => {
                Err(RequestError::Refused(e.message().to_string()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes the builds (with their files) of one version, or of every version of the
    /// package when `version` is None.
    pub async fn delete_builds(&mut self, package: &str, version: Option<&str>) -> Result<(), sqlx::Error> {
        // One transaction: a queue computation sees the versions' cleared hints only with the
        // builds gone, so it cannot work them out from the builds about to go.
        let mut tx = self.conn.begin().await?;
        sqlx::query("DELETE FROM builds WHERE package = $1 AND ($2::text IS NULL OR version = $2)")
            .bind(package)
            .bind(version)
            .execute(&mut *tx)
            .await?;
        // The versions may need building again.
        sqlx::query("UPDATE versions SET complete = false, waiting_on = NULL WHERE package = $1 AND ($2::text IS NULL OR version = $2)")
            .bind(package)
            .bind(version)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Every file of every build of the package, sorted by file name.
    pub async fn package_files(&mut self, package: &str) -> Result<Vec<FileHash>, sqlx::Error> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT f.filename, f.filehash::text FROM builds b JOIN files f ON f.build_id = b.build_id \
             WHERE b.package = $1 ORDER BY f.filename COLLATE \"C\"",
        )
        .bind(package)
        .fetch_all(&mut self.conn)
        .await?;
        Ok(rows.into_iter().map(|(filename, sha256)| FileHash { filename, sha256 }).collect())
    }

    /// Every file of every build of the version, sorted by file name.
    pub async fn version_files(&mut self, package: &str, version: &str) -> Result<Vec<FileHash>, sqlx::Error> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT f.filename, f.filehash::text FROM builds b JOIN files f ON f.build_id = b.build_id \
             WHERE b.package = $1 AND b.version = $2 ORDER BY f.filename COLLATE \"C\"",
        )
        .bind(package)
        .bind(version)
        .fetch_all(&mut self.conn)
        .await?;
        Ok(rows.into_iter().map(|(filename, sha256)| FileHash { filename, sha256 }).collect())
    }

    /// The ids of every build of the package, or of one version of it, ascending.
    pub async fn build_ids(&mut self, package: &str, version: Option<&str>) -> Result<Vec<BuildId>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT build_id FROM builds WHERE package = $1 AND ($2::text IS NULL OR version = $2) ORDER BY build_id",
        )
        .bind(package)
        .bind(version)
        .fetch_all(&mut self.conn)
        .await
    }

    /// What the provenance of the files of `builds` says; builds recorded before provenance
    /// was kept (no `started_at`) have none. Sorted by file name.
    pub async fn build_provenance(&mut self, builds: &[BuildId]) -> Result<Vec<BuildFacts>, sqlx::Error> {
        type Row = (String, String, String, String, String, bool, Option<String>, Option<String>, Option<String>, Option<String>, String, Option<String>, i64, Timestamp, Timestamp);
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT f.filename, f.filehash::text, b.package, b.version, b.abi_tag, b.built_by = 0, \
                    b.source_filename, b.source_url, b.source_sha256::text, b.builder_key, b.builder, e.environment::text, \
                    b.build_id, b.started_at, b.built_at \
             FROM builds b JOIN files f ON f.build_id = b.build_id \
             LEFT JOIN environments e ON e.environment_id = b.environment_id \
             WHERE b.build_id = ANY($1) AND b.started_at IS NOT NULL \
             ORDER BY f.filename COLLATE \"C\"",
        )
        .bind(builds)
        .fetch_all(&mut self.conn)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(filename, sha256, package, version, abi, imported, source_filename, source_url, source_sha256, builder_key, builder, environment, build_id, started_at, built_at)| {
                let source = match (imported, source_filename, source_url, source_sha256) {
                    (false, Some(filename), Some(url), Some(sha256)) => Some(SourceFile { filename, url, sha256 }),
                    _ => None,
                };
                // Written by log_build from a map of strings; anything else reads as none.
                let environment = environment.and_then(|json| serde_json::from_str(&json).ok()).unwrap_or_default();
                BuildFacts {
                    filename,
                    sha256,
                    package,
                    version,
                    abi,
                    imported,
                    source,
                    key: builder_key,
                    label: builder,
                    environment,
                    build_id,
                    started: started_at,
                    finished: built_at,
                }
            })
            .collect())
    }

    /// Under which name a build's file of `package` with these bytes is published. Every
    /// file the index recorded, now or before (`retired_files`), keeps its name and bytes, and
    /// installers take the same wheel's highest build tag, so that:
    ///
    /// - when the wheel's newest file (by build tag, the name and version spelled however)
    ///   holds these bytes and is spelled as this file is, it is that file's name: nothing new
    ///   is published;
    /// - when no file of the wheel with other bytes ranks as high as the file's own name, it
    ///   is its own name;
    /// - otherwise it is its name with a build tag above every tag the wheel has had.
    ///
    /// A name that is not a wheel's is refused.
    pub async fn name_for_file(&mut self, package: &str, filename: &str, sha256: &str) -> Result<String, RequestError> {
        let wheel = WheelName::parse(filename).map_err(|e| RequestError::Refused(e.to_string()))?;
        // The package's files, recorded or retired, with the same tags: the wheel's siblings
        // are among them.
        let tags = format!("-{}-{}-{}.whl", wheel.python, wheel.abi, wheel.platform);
        let pattern = format!("%{}", tags.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_"));
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT f.filename, f.filehash::text FROM files f JOIN builds b ON b.build_id = f.build_id \
             WHERE b.package = $1 AND f.filename LIKE $2 \
             UNION ALL SELECT filename, filehash::text FROM retired_files WHERE package = $1 AND filename LIKE $2",
        )
        .bind(package)
        .bind(&pattern)
        .fetch_all(&mut self.conn)
        .await?;
        let siblings: Vec<(WheelName, &str)> = rows
            .iter()
            .filter_map(|(name, hash)| WheelName::parse(name).ok().map(|parsed| (parsed, hash.as_str())))
            .filter(|(parsed, _)| wheel.differs_only_in_build_tag(parsed))
            .collect();
        let newest = siblings.iter().map(|(parsed, _)| parsed.build_tag_rank()).max().flatten();
        // Spelled as this file is (a release's files stay its own: 1.0.0 is not 1.0's).
        let spelled_alike = |parsed: &WheelName| WheelName { build: None, ..parsed.clone() } == WheelName { build: None, ..wheel.clone() };
        if let Some((same, _)) =
            siblings.iter().find(|(parsed, hash)| *hash == sha256 && spelled_alike(parsed) && parsed.build_tag_rank() == newest)
        {
            return Ok(same.to_string());
        }
        let own = wheel.build_tag_rank();
        if !siblings.iter().any(|(parsed, hash)| *hash != sha256 && parsed.build_tag_rank() >= own) {
            return Ok(filename.to_string());
        }
        let taken: Vec<WheelName> = siblings.into_iter().map(|(parsed, _)| parsed).collect();
        Ok(wheel.with_next_build_tag(&taken).to_string())
    }

    /// The first file name (in byte order) recorded with this SHA-256, if any.
    pub async fn file_with_hash(&mut self, sha256: &str) -> Result<Option<String>, sqlx::Error> {
        // The cast keeps the comparison on CHAR(64), so that files_hash serves it.
        sqlx::query_scalar(
            "SELECT filename FROM files WHERE filehash = $1::bpchar ORDER BY filename COLLATE \"C\" LIMIT 1",
        )
        .bind(sha256)
        .fetch_optional(&mut self.conn)
        .await
    }

    /// The ABIs, in build order (by Python version); `position` is the Python version
    /// (major * 100 + minor).
    pub async fn build_abis(&mut self) -> Result<Vec<BuildAbi>, sqlx::Error> {
        let rows: Vec<(String, i32, String)> = sqlx::query_as(
            "SELECT abi_tag, python_version, skip FROM build_abis ORDER BY python_version, abi_tag COLLATE \"C\"",
        )
        .fetch_all(&mut self.conn)
        .await?;
        Ok(rows.into_iter().map(|(tag, position, skip)| BuildAbi { tag, position, skip }).collect())
    }

    // --------------------------------------------------------------------------------------
    // PyPI serial, statistics, search index
    // --------------------------------------------------------------------------------------

    /// The last PyPI serial applied.
    pub async fn pypi_serial(&mut self) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("SELECT pypi_serial FROM configuration").fetch_one(&mut self.conn).await
    }

    /// Stores the last PyPI serial applied. Refused when it is smaller than the stored one
    /// (the serial never goes backwards); storing the same one again is fine.
    pub async fn set_pypi_serial(&mut self, serial: i64) -> Result<(), RequestError> {
        // One statement: the check and the update cannot be split by another writer.
        let stored: Option<i64> = sqlx::query_scalar(
            "WITH updated AS (UPDATE configuration SET pypi_serial = $1 WHERE pypi_serial <= $1 RETURNING 1) \
             SELECT pypi_serial FROM configuration WHERE NOT EXISTS (SELECT 1 FROM updated)",
        )
        .bind(serial)
        .fetch_optional(&mut self.conn)
        .await?;
        match stored {
            None => Ok(()),
            Some(stored) => Err(RequestError::Refused(format!(
                "the PyPI serial cannot go backwards: stored {stored}, given {serial}"
            ))),
        }
    }

    /// Figures for the home page and monitors, from one snapshot.
    pub async fn statistics(&mut self) -> Result<DbStats, sqlx::Error> {
        let mut tx = self.conn.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY").await?;
        // The totals are kept by the triggers of migration 0009: one row per package.
        let (packages_built, builds_time_us, builds_size, files_count, downloads_all): (i64, i64, i64, i64, i64) =
            sqlx::query_as(
                "SELECT count(*) FILTER (WHERE files > 0), \
                        COALESCE((EXTRACT(EPOCH FROM sum(build_time)) * 1000000)::bigint, 0), \
                        COALESCE(sum(files_size), 0)::bigint, \
                        COALESCE(sum(files), 0)::bigint, \
                        COALESCE(sum(downloads), 0)::bigint \
                 FROM package_totals",
            )
            .fetch_one(&mut *tx)
            .await?;
        let (new_last_hour, downloads_last_hour, downloads_last_month): (i64, i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM versions WHERE released > now() - interval '1 hour'), \
                    (SELECT count(*) FROM downloads d WHERE d.accessed_at > now() - interval '1 hour' \
                      AND EXISTS (SELECT 1 FROM files f WHERE f.filename = d.filename)), \
                    (SELECT COALESCE(sum(downloads), 0)::bigint FROM package_downloads_recent \
                      WHERE day >= recent_downloads_since())",
        )
        .fetch_one(&mut *tx)
        .await?;
        let (reproduced, not_reproduced): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE verdict = 'reproduced'), count(*) FILTER (WHERE verdict <> 'reproduced') \
             FROM cross_checks",
        )
        .fetch_one(&mut *tx)
        .await?;
        let per_abi: Vec<(String, i64)> = sqlx::query_as(
            "SELECT a.abi_tag, count(b.build_id) FROM build_abis a \
             LEFT JOIN builds b ON b.abi_tag = a.abi_tag AND b.built_at > now() - interval '1 hour' \
             WHERE a.skip = '' GROUP BY a.abi_tag",
        )
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(DbStats {
            packages_built: count(packages_built),
            builds_last_hour: per_abi.into_iter().map(|(abi, n)| (abi, count(n))).collect::<BTreeMap<_, _>>(),
            builds_time: Duration::from_micros(count(builds_time_us)),
            builds_size: count(builds_size),
            files_count: count(files_count),
            new_last_hour: count(new_last_hour),
            downloads_last_hour: count(downloads_last_hour),
            downloads_last_month: count(downloads_last_month),
            downloads_all: count(downloads_all),
            reproduced: count(reproduced),
            not_reproduced: count(not_reproduced),
        })
    }

    /// Every package with at least one file, with its downloads in the last 30 days and
    /// ever (0 when none), sorted by name.
    pub async fn search_index(&mut self) -> Result<Vec<SearchEntry>, sqlx::Error> {
        let rows: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT t.package, COALESCE(r.downloads, 0)::bigint, t.downloads \
             FROM package_totals t \
             LEFT JOIN (SELECT package, sum(downloads) AS downloads FROM package_downloads_recent \
                        WHERE day >= recent_downloads_since() GROUP BY package) r ON r.package = t.package \
             WHERE t.files > 0 \
             ORDER BY t.package COLLATE \"C\"",
        )
        .fetch_all(&mut self.conn)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(package, recent, total)| SearchEntry {
                package,
                downloads_recent: count(recent),
                downloads_all: count(total),
            })
            .collect())
    }

    // --------------------------------------------------------------------------------------
    // Access logs
    // --------------------------------------------------------------------------------------

    /// Stores access-log records in one transaction and returns how many were stored. A
    /// record whose host is not an IP address is dropped (not an error). Text is cut to its
    /// column's length and control characters other than tab, line feed and carriage return
    /// become U+FFFD.
    pub async fn log_access(&mut self, records: &[AccessRecord]) -> Result<u64, sqlx::Error> {
        let mut stored = 0;
        let mut downloads = DownloadColumns::default();
        let mut tx = self.conn.begin().await?;
        for record in records {
            let Some(address) = host_address(record) else { continue };
            stored += 1;
            insert_access(&mut tx, record, address, &mut downloads).await?;
        }
        downloads.insert(&mut tx).await?;
        tx.commit().await?;
        Ok(stored)
    }

    // --------------------------------------------------------------------------------------
    // Page rewrites and the audit log
    // --------------------------------------------------------------------------------------

    /// Adds a pending page rewrite, or widens the one pending for the package: the latest
    /// time is kept, the scope becomes `Both` if either is, and the entry now names this
    /// transaction (it is done only when pages are written from a snapshot that sees it).
    pub async fn add_rewrite(&mut self, rewrite: &PendingRewrite) -> Result<(), sqlx::Error> {
        add_rewrite(&mut self.conn, rewrite).await
    }

    /// How many packages have a page rewrite recorded at or before `until` and not yet
    /// written.
    pub async fn pending_rewrite_count(&mut self, until: Timestamp) -> Result<u64, sqlx::Error> {
        let pending: i64 =
            sqlx::query_scalar("SELECT count(*) FROM rewrites_pending WHERE added_at <= $1").bind(until).fetch_one(&mut self.conn).await?;
        Ok(count(pending))
    }

    /// The pending page rewrites, oldest first.
    pub async fn pending_rewrites(&mut self) -> Result<Vec<PendingRewrite>, sqlx::Error> {
        let rows: Vec<(String, DateTime<Utc>, String)> = sqlx::query_as(
            "SELECT package, added_at, scope FROM rewrites_pending ORDER BY added_at, package COLLATE \"C\"",
        )
        .fetch_all(&mut self.conn)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(package, added_at, scope)| PendingRewrite {
                package,
                added_at,
                scope: if scope == "both" { RewriteScope::Both } else { RewriteScope::Project },
            })
            .collect())
    }

    /// Removes each package's pending rewrite if the snapshot its pages were made from saw the
    /// transaction that last asked for it.
    pub async fn clear_rewrites(&mut self, written: &[RewriteWritten]) -> Result<(), sqlx::Error> {
        let packages: Vec<&str> = written.iter().map(|w| w.package.as_str()).collect();
        let snapshots: Vec<&str> = written.iter().map(|w| w.snapshot.as_str()).collect();
        sqlx::query(
            "DELETE FROM rewrites_pending r USING UNNEST($1::text[], $2::text[]) AS w (package, snapshot) \
             WHERE r.package = w.package AND pg_visible_in_snapshot(r.requested_by, w.snapshot::pg_snapshot)",
        )
        .bind(packages)
        .bind(snapshots)
        .execute(&mut self.conn)
        .await?;
        Ok(())
    }

    /// Appends to the audit log (actor cut to 200 characters, action to 50).
    pub async fn audit(&mut self, actor: &str, action: &str, detail: &str) -> Result<(), sqlx::Error> {
        sqlx::query("INSERT INTO audit_log (actor, action, detail) VALUES ($1, $2, $3)")
            .bind(truncate(actor, len::ACTOR))
            .bind(truncate(action, len::ACTION))
            .bind(detail)
            .execute(&mut self.conn)
            .await?;
        Ok(())
    }
}

/// How a pending rewrite meets the one already pending for its package; see
/// [`Database::add_rewrite`].
macro_rules! rewrite_conflict {
    () => {
        " ON CONFLICT (package) DO UPDATE SET \
             added_at = GREATEST(rewrites_pending.added_at, EXCLUDED.added_at), \
             requested_by = pg_current_xact_id(), \
             scope = CASE WHEN rewrites_pending.scope = 'both' OR EXCLUDED.scope = 'both' \
                          THEN 'both' ELSE 'project' END"
    };
}

/// Refuses a release that is unknown or skipped (its own reason, or its package's), which an
/// operator cannot ask to build; locks its row until the transaction ends.
async fn check_buildable(tx: &mut Transaction<'_, Postgres>, package: &str, version: &str) -> Result<(), RequestError> {
    let skip: Option<(String, String)> = sqlx::query_as(
        "SELECT p.skip, v.skip FROM versions v JOIN packages p ON p.package = v.package \
         WHERE v.package = $1 AND v.version = $2 FOR UPDATE OF v",
    )
    .bind(package)
    .bind(version)
    .fetch_optional(&mut **tx)
    .await?;
    match skip {
        None => Err(RequestError::Refused(format!("unknown version {package} {version}"))),
        Some((reason, _)) if !reason.is_empty() => {
            Err(RequestError::Refused(format!("package {package} is skipped ({reason}): piw-add --unskip it first")))
        }
        Some((_, reason)) if !reason.is_empty() => {
            Err(RequestError::Refused(format!("{package} {version} is skipped ({reason}): piw-add --unskip it first")))
        }
        Some(_) => Ok(()),
    }
}

/// The id of an environment (JSON), added when it is new.
async fn environment_id(tx: &mut Transaction<'_, Postgres>, environment: &str) -> Result<i64, sqlx::Error> {
    let find = "SELECT environment_id FROM environments WHERE digest = md5($1::jsonb::text)";
    if let Some(id) = sqlx::query_scalar(find).bind(environment).fetch_optional(&mut **tx).await? {
        return Ok(id);
    }
    let add = "INSERT INTO environments (environment) VALUES ($1::jsonb) ON CONFLICT DO NOTHING RETURNING environment_id";
    match sqlx::query_scalar(add).bind(environment).fetch_optional(&mut **tx).await? {
        Some(id) => Ok(id),
        // Added by another session meanwhile: its row is committed, and this statement sees it.
        None => sqlx::query_scalar(find).bind(environment).fetch_one(&mut **tx).await,
    }
}

/// Records a pending rewrite on `conn` (in the caller's transaction, when it has one).
pub(super) async fn add_rewrite(conn: &mut PgConnection, rewrite: &PendingRewrite) -> Result<(), sqlx::Error> {
    sqlx::query(concat!("INSERT INTO rewrites_pending (package, added_at, scope) VALUES ($1, $2, $3)", rewrite_conflict!()))
        .bind(&rewrite.package)
        .bind(rewrite.added_at)
        .bind(scope_name(rewrite.scope))
        .execute(conn)
        .await?;
    Ok(())
}

/// The SQLSTATE with which `log_build` refuses a build holding a file name recorded with other
/// contents; the error's message says which.
macro_rules! file_clash {
    () => {
        "PWCLS"
    };
}
const FILE_CLASH: &str = file_clash!();
/// PostgreSQL's SQLSTATE for a call of a function that does not exist.
const UNDEFINED_FUNCTION: &str = "42883";

/// Makes the session's functions ([`LOG_BUILD_FUNCTION`]) on a new connection, or again on one
/// that lost them.
pub(super) async fn make_session_functions(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(LOG_BUILD_FUNCTION).execute(conn).await?;
    Ok(())
}

/// The call of [`LOG_BUILD_FUNCTION`]; the arguments are listed there.
const LOG_BUILD_CALL: &str = "SELECT pg_temp.log_build($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, \
                              $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26, $27, $28, $29, $30, $31, $32::jsonb, $33, $34, $35, $36)";

/// Records a build, made once per session (by [`Database::connect`](super::Database::connect))
/// so that a build costs one round trip while its SQL stays here, beside the statements it
/// shares with other requests. Arguments: the build ($1 to $11); its files ($12 to $23, an
/// array per column, an element per file); its page rewrite ($24 time, $25 scope); its files'
/// dependencies ($26 to $28, an array per column); its log ($29); when it was handed out, its
/// builder's key, what the builder builds with and the source it was handed, for its
/// provenance ($30 to $35); whether to cross-check it ($36). In order:
///
/// 0. the builder's environment, found or added (NULL when there is none);
///
/// 1. the build, its log and its files. A file whose name is recorded already moves to this build only
///    when its contents are the same; otherwise the whole call fails with [`FILE_CLASH`], as it
///    does (from a trigger of migration 5) for a name retired with other contents;
/// 2. the rewrite of its pages, the removal of the dependency rows its files had under an
///    earlier build, which this build's analysis replaces, and of an operator's request to
///    build the release again on the ABI, which this build answers;
/// 3. the version's queue hints (`complete`, `waiting_on`), which see the new build ($1 package, $2 version);
/// 4. the dependencies;
/// 5. the build's cross-check, when it was sampled for one.
const LOG_BUILD_FUNCTION: &str = concat!(
    "CREATE FUNCTION pg_temp.log_build(
        text, text, integer, text, text, boolean, interval, interval, bigint, integer, text,
        text[], bigint[], text[], text[], text[], text[], text[], text[], text[], text[], integer[], text[],
        timestamptz, text, text[], text[], text[], text, timestamptz, text, jsonb, text, text, text, boolean
    ) RETURNS bigint LANGUAGE plpgsql AS $body$
    DECLARE
        logged_build bigint;
        env_id bigint;
        clash_name text;
        clash_held text;
        clash_new text;
    BEGIN
        IF $32 IS NOT NULL THEN
            SELECT environment_id INTO env_id FROM environments WHERE digest = md5($32::text);
            IF NOT FOUND THEN
                INSERT INTO environments (environment) VALUES ($32) ON CONFLICT DO NOTHING
                RETURNING environment_id INTO env_id;
                -- Added by another session meanwhile.
                IF env_id IS NULL THEN
                    SELECT environment_id INTO env_id FROM environments WHERE digest = md5($32::text);
                END IF;
            END IF;
        END IF;
        WITH build AS (
            INSERT INTO builds (package, version, built_by, builder, abi_tag, status, duration, cpu_time,
                                peak_memory, exit_status, failure, started_at, builder_key, environment_id,
                                source_filename, source_url, source_sha256)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $30, $31, env_id, $33, $34, $35)
            RETURNING build_id
        ), file AS (
            INSERT INTO files (filename, build_id, filesize, filehash, metadata_hash, package_tag,
                               package_version_tag, build_tag, py_version_tag, abi_tag, platform_tag,
                               python_floor, requires_python)
            SELECT f.filename, build.build_id, f.filesize, f.filehash, f.metadata_hash, f.package_tag,
                   f.package_version_tag, f.build_tag, f.py_version_tag, f.abi_tag, f.platform_tag,
                   f.python_floor, f.requires_python
            FROM build, unnest($12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23)
                 AS f (filename, filesize, filehash, metadata_hash, package_tag, package_version_tag, build_tag,
                       py_version_tag, abi_tag, platform_tag, python_floor, requires_python)
            ON CONFLICT (filename) DO UPDATE SET
                build_id = EXCLUDED.build_id, metadata_hash = EXCLUDED.metadata_hash,
                build_tag = EXCLUDED.build_tag, python_floor = EXCLUDED.python_floor,
                requires_python = EXCLUDED.requires_python
            WHERE files.filehash = EXCLUDED.filehash
        )
        SELECT build_id INTO logged_build FROM build;
        INSERT INTO output (build_id, output) VALUES (logged_build, $29);
        -- A listed file that is not this build's now is recorded with other contents.
        SELECT n.filename, held.filehash::text, n.filehash INTO clash_name, clash_held, clash_new
        FROM unnest($12, $14) WITH ORDINALITY AS n (filename, filehash, position)
        JOIN files held ON held.filename = n.filename
        WHERE held.build_id <> logged_build
        ORDER BY n.position
        LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION USING ERRCODE = '", file_clash!(), "', MESSAGE = format(
                '%s is already recorded with other contents (SHA-256 %s, this build''s is %s)',
                clash_name, clash_held, clash_new);
        END IF;
        INSERT INTO rewrites_pending (package, added_at, scope) VALUES ($1, $24, $25)",
    rewrite_conflict!(),
    ";
        DELETE FROM dependencies WHERE filename = ANY($12);
        -- Only a build handed out after the request answers it.
        DELETE FROM rebuilds_wanted WHERE package = $1 AND version = $2 AND abi_tag = $5 AND requested_at <= $30;
        ",
    refresh_queue_hints_sql!(),
    ";
        INSERT INTO dependencies (filename, tool, dependency)
        SELECT * FROM unnest($26, $27, $28) ON CONFLICT DO NOTHING;
        IF $36 AND cardinality($12) > 0 THEN
            INSERT INTO cross_checks (build_id, requested_by, requested_at, files) VALUES (logged_build, 'sample', $30, $12);
        END IF;
        RETURN logged_build;
    END
    $body$"
);

/// A build's files as one array per column of `files`.
#[derive(Default)]
struct FileColumns {
    filename: Vec<String>,
    size: Vec<i64>,
    sha256: Vec<String>,
    metadata_hash: Vec<Option<String>>,
    package_tag: Vec<String>,
    version_tag: Vec<String>,
    build_tag: Vec<Option<String>>,
    py_tag: Vec<String>,
    abi_tag: Vec<String>,
    platform_tag: Vec<String>,
    python_floor: Vec<Option<i32>>,
    requires_python: Vec<Option<String>>,
}

impl FileColumns {
    fn of(files: &[WheelFile]) -> Result<FileColumns, RequestError> {
        let mut columns = FileColumns::default();
        for file in files {
            if columns.filename.contains(&file.filename) {
                return Err(RequestError::Refused(format!("{} is listed twice", file.filename)));
            }
            let size = i64::try_from(file.size)
                .map_err(|_| RequestError::Refused(format!("{}: size {} is out of range", file.filename, file.size)))?;
            columns.filename.push(file.filename.clone());
            columns.size.push(size);
            columns.sha256.push(file.sha256.clone());
            columns.metadata_hash.push((!file.metadata.is_empty()).then(|| sha256_hex(&file.metadata)));
            columns.package_tag.push(file.package_tag.clone());
            columns.version_tag.push(file.version_tag.clone());
            columns.build_tag.push(file.build_tag.clone());
            columns.py_tag.push(file.py_tag.clone());
            columns.abi_tag.push(file.abi_tag.clone());
            columns.platform_tag.push(file.platform_tag.clone());
            columns.python_floor.push(piwheels_common::wheel::abi3_floor(&file.py_tag, &file.abi_tag));
            columns.requires_python.push(file.requires_python.clone());
        }
        Ok(columns)
    }
}

/// The `dependencies` rows of a build's files, an array per column.
#[derive(Default)]
struct DependencyRows {
    filename: Vec<String>,
    tool: Vec<&'static str>,
    dependency: Vec<String>,
}

impl DependencyRows {
    fn of(files: &[WheelFile]) -> DependencyRows {
        let mut rows = DependencyRows::default();
        for file in files {
            let deps = &file.dependencies;
            for (tool, list) in [("apt", &deps.apt), ("pip", &deps.pip), ("", &deps.unresolved)] {
                for dependency in list {
                    rows.filename.push(file.filename.clone());
                    rows.tool.push(tool);
                    rows.dependency.push(dependency.clone());
                }
            }
        }
        rows
    }
}

/// The record's host as an address, None when it is not one (the record is dropped).
fn host_address(record: &AccessRecord) -> Option<String> {
    let host = match record {
        AccessRecord::Download { host, .. }
        | AccessRecord::Search { host, .. }
        | AccessRecord::ProjectPage { host, .. }
        | AccessRecord::ProjectJson { host, .. }
        | AccessRecord::Page { host, .. } => host,
    };
    host.trim().parse::<IpAddr>().ok().map(|address| address.to_string())
}

/// A batch's downloads as one array per column, inserted by one statement: the running totals'
/// trigger (migration 0009) then runs once per batch, and takes its locks in one order.
#[derive(Default)]
struct DownloadColumns {
    filename: Vec<String>,
    address: Vec<String>,
    at: Vec<Timestamp>,
    client: [Vec<Option<String>>; 10],
}

impl DownloadColumns {
    fn push(&mut self, filename: &str, address: String, at: Timestamp, client: &ClientInfo) {
        self.filename.push(sanitize(filename, len::FILENAME));
        self.address.push(address);
        self.at.push(at);
        for (column, value) in self.client.iter_mut().zip(client_fields(client)) {
            column.push(value);
        }
    }

    async fn insert(self, tx: &mut Transaction<'_, Postgres>) -> Result<(), sqlx::Error> {
        if self.filename.is_empty() {
            return Ok(());
        }
        let mut query = sqlx::query(
            "INSERT INTO downloads (filename, accessed_by, accessed_at, arch, distro_name, distro_version, \
                 os_name, os_version, py_name, py_version, installer_name, installer_version, setuptools_version) \
             SELECT filename, address::inet, at, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10 \
             FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::text[], $6::text[], $7::text[], \
                         $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[]) \
                  AS u (filename, address, at, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10)",
        )
        .bind(self.filename)
        .bind(self.address)
        .bind(self.at);
        for column in self.client {
            query = query.bind(column);
        }
        query.execute(&mut **tx).await?;
        Ok(())
    }
}

/// A client's fields in the column order of `downloads` and `searches`, each cut to its
/// column's length.
fn client_fields(client: &ClientInfo) -> [Option<String>; 10] {
    let field = |value: &Option<String>, max: usize| value.as_deref().map(|v| sanitize(v, max));
    [
        field(&client.arch, len::CLIENT_FIELD),
        field(&client.distro_name, len::CLIENT_FIELD),
        field(&client.distro_version, len::CLIENT_FIELD),
        field(&client.os_name, len::CLIENT_FIELD),
        field(&client.os_version, len::CLIENT_FIELD),
        field(&client.py_name, len::CLIENT_FIELD),
        field(&client.py_version, len::CLIENT_FIELD),
        field(&client.installer_name, len::INSTALLER_NAME),
        field(&client.installer_version, len::CLIENT_FIELD),
        field(&client.setuptools_version, len::CLIENT_FIELD),
    ]
}

/// Inserts one access record from `address` (its host, checked); a download joins the batch's
/// `downloads`, inserted afterwards.
async fn insert_access(
    tx: &mut Transaction<'_, Postgres>,
    record: &AccessRecord,
    address: String,
    downloads: &mut DownloadColumns,
) -> Result<(), sqlx::Error> {
    match record {
        AccessRecord::Download { filename, at, client, .. } => downloads.push(filename, address, *at, client),
        AccessRecord::Search { package, at, client, .. } => {
            insert_client_hit(
                tx,
                "INSERT INTO searches (package, accessed_by, accessed_at, arch, distro_name, distro_version, \
                     os_name, os_version, py_name, py_version, installer_name, installer_version, setuptools_version) \
                 VALUES ($1, $2::inet, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
                sanitize(package, len::PACKAGE),
                &address,
                *at,
                client,
            )
            .await?;
        }
        AccessRecord::ProjectPage { package, at, user_agent, .. } => {
            insert_page_hit(
                tx,
                "INSERT INTO project_page_hits (package, accessed_by, accessed_at, user_agent) \
                 VALUES ($1, $2::inet, $3, $4)",
                sanitize(package, len::PACKAGE),
                &address,
                *at,
                user_agent,
            )
            .await?;
        }
        AccessRecord::ProjectJson { package, at, user_agent, .. } => {
            insert_page_hit(
                tx,
                "INSERT INTO project_json_downloads (package, accessed_by, accessed_at, user_agent) \
                 VALUES ($1, $2::inet, $3, $4)",
                sanitize(package, len::PACKAGE),
                &address,
                *at,
                user_agent,
            )
            .await?;
        }
        AccessRecord::Page { page, at, user_agent, .. } => {
            insert_page_hit(
                tx,
                "INSERT INTO web_page_hits (page, accessed_by, accessed_at, user_agent) VALUES ($1, $2::inet, $3, $4)",
                sanitize(page, len::PAGE),
                &address,
                *at,
                user_agent,
            )
            .await?;
        }
    }
    Ok(())
}

/// A download or search: the subject, the client, and what the installer said about itself.
async fn insert_client_hit(
    tx: &mut Transaction<'_, Postgres>,
    sql: &'static str,
    subject: String,
    address: &str,
    at: Timestamp,
    client: &ClientInfo,
) -> Result<(), sqlx::Error> {
    let mut query = sqlx::query(sql).bind(subject).bind(address).bind(at);
    for value in client_fields(client) {
        query = query.bind(value);
    }
    query
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// A page view: the page or package, the client, and its User-Agent.
async fn insert_page_hit(
    tx: &mut Transaction<'_, Postgres>,
    sql: &'static str,
    subject: String,
    address: &str,
    at: Timestamp,
    user_agent: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(sql)
        .bind(subject)
        .bind(address)
        .bind(at)
        .bind(sanitize(user_agent, len::USER_AGENT))
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The schema's name of a failure class.
pub(crate) fn failure_name(kind: FailureKind) -> &'static str {
    match kind {
        FailureKind::Build => "build",
        FailureKind::Timeout => "timeout",
        FailureKind::OutOfMemory => "out-of-memory",
        FailureKind::NoSpace => "no-space",
        FailureKind::Builder => "builder",
        FailureKind::Source => "source",
    }
}

/// The schema's name of a rewrite scope.
fn scope_name(scope: RewriteScope) -> &'static str {
    match scope {
        RewriteScope::Project => "project",
        RewriteScope::Both => "both",
    }
}

/// A duration as an INTERVAL (microseconds; saturating far beyond any real build).
pub(super) fn interval(duration: Duration) -> PgInterval {
    PgInterval { months: 0, days: 0, microseconds: i64::try_from(duration.as_micros()).unwrap_or(i64::MAX) }
}

/// A count from the database as u64 (counts are never negative).
fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}


/// A builder's label as builds and cross-checks keep it (cut to the column's length).
pub fn stored_label(label: &str) -> &str {
    truncate(label, len::BUILDER)
}

/// The first `max` characters of `text`.
pub fn truncate(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

/// Log text made safe to store: control characters other than tab, line feed and carriage
/// return replaced by U+FFFD, then cut to `max` characters.
pub fn sanitize(text: &str, max: usize) -> String {
    text.chars()
        .take(max)
        .map(|c| {
            if matches!(c, '\u{0}'..='\u{8}' | '\u{b}' | '\u{c}' | '\u{e}'..='\u{1f}' | '\u{7f}') {
                '\u{fffd}'
            } else {
                c
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_respects_character_boundaries() {
        assert_eq!(truncate("héllo", 2), "hé");
        assert_eq!(truncate("abc", 5), "abc");
        assert_eq!(sanitize("ééé", 2), "éé");
    }

    #[test]
    fn sanitizing_replaces_control_characters_but_keeps_tab_and_line_ends() {
        assert_eq!(sanitize("a\u{0}b\u{1b}c\u{7f}d\u{c}e\u{b}", 100), "a\u{fffd}b\u{fffd}c\u{fffd}d\u{fffd}e\u{fffd}");
        assert_eq!(sanitize("a\tb\nc\rd", 100), "a\tb\nc\rd");
    }

    #[test]
    fn metadata_hashes_are_lower_case_hex() {
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
