//! Failure triage in the database: failed builds classified once each
//! ([`Database::triage_failures`], the rules are [`crate::triage::classify`]), the Debian
//! package of each cause looked up once ([`Database::unresolved_causes`],
//! [`Database::record_lookups`]), the report by cause ([`Database::triage`]) and the re-queue
//! of one cause's releases ([`Database::requeue`]).
//!
//! A release counts as failed on an ABI when its latest build there failed and nothing has
//! asked for another since (`rebuilds_wanted`); skipped packages, versions and ABIs do not
//! count. The partial index `builds_failed` keeps these queries to the failed builds.

use piwheels_common::protocols::{FailureClass, PackageVersion, RequeueRequest, Timestamp, TriageReport};
use sqlx::Connection;

use super::Database;
use super::requests::RequestError;
use crate::calls::db::TriagedBuild;
use crate::triage::classify;

/// How many characters of the end of each log the triage reads: the error that stopped a
/// build is near its end (pip adds a few lines after it), and a batch of whole logs of some
/// megabytes each would weigh on the oracle.
pub const LOG_TAIL: i32 = 64 * 1024;

/// The releases that failed on an ABI, as `f (package, version, abi_tag, failure_class,
/// failure_detail)`, narrowed by `$1` (an ABI or NULL); the query using it adds the rest.
macro_rules! latest_failures {
    () => {
        "WITH f AS (
            SELECT b.package, b.version, b.abi_tag, b.failure_class, b.failure_detail
            FROM builds b
            JOIN build_abis a ON a.abi_tag = b.abi_tag AND a.skip = ''
            JOIN versions v ON v.package = b.package AND v.version = b.version AND v.skip = ''
            JOIN packages p ON p.package = b.package AND p.skip = ''
            WHERE NOT b.status AND b.failure_class IS NOT NULL
              AND ($1::text IS NULL OR b.abi_tag = $1)
              AND NOT EXISTS (
                  SELECT 1 FROM builds later
                  WHERE later.package = b.package AND later.version = b.version
                    AND later.abi_tag = b.abi_tag AND later.build_id > b.build_id)
              AND NOT EXISTS (
                  SELECT 1 FROM rebuilds_wanted w
                  WHERE w.package = b.package AND w.version = b.version AND w.abi_tag = b.abi_tag))
         "
    };
}

/// A failed build waiting for triage: id, package, version, ABI, recorded, whether it is its
/// release's latest build on the ABI, failure, exit status, the end of its log.
type UntriagedRow = (i64, String, String, String, Timestamp, bool, Option<String>, Option<i32>, String);

/// A row of the report: its grouping, class, detail, Debian package and releases.
type ReportRow = (i32, Option<String>, Option<String>, Option<String>, i64);

impl Database {
    /// Classifies up to `limit` failed builds not triaged yet, newest first (new failures
    /// come first even during the triage of a farm's history), and stores each one's class
    /// and detail; returns them with the Debian package of their cause when it is known.
    pub async fn triage_failures(&mut self, limit: u32) -> Result<Vec<TriagedBuild>, sqlx::Error> {
        let rows: Vec<UntriagedRow> = sqlx::query_as(
            "SELECT b.build_id, b.package, b.version, b.abi_tag, b.built_at,
                    NOT EXISTS (SELECT 1 FROM builds later
                                WHERE later.package = b.package AND later.version = b.version
                                  AND later.abi_tag = b.abi_tag AND later.build_id > b.build_id),
                    b.failure, b.exit_status, COALESCE(right(o.output, $2), '')
             FROM builds b LEFT JOIN output o ON o.build_id = b.build_id
             WHERE NOT b.status AND b.failure_class IS NULL
             ORDER BY b.build_id DESC
             LIMIT $1",
        )
        .bind(i64::from(limit))
        .bind(LOG_TAIL)
        .fetch_all(&mut self.conn)
        .await?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let mut triaged = Vec::with_capacity(rows.len());
        for (build_id, package, version, abi, built_at, latest, failure, exit_status, log) in rows {
            let found = classify::classify(failure.as_deref(), exit_status, &log);
            triaged.push(TriagedBuild {
                build_id,
                release: PackageVersion { package, version },
                abi,
                built_at,
                latest,
                class: found.class,
                detail: found.detail,
                debian_package: None,
            });
        }
        let ids: Vec<i64> = triaged.iter().map(|t| t.build_id).collect();
        let classes: Vec<&str> = triaged.iter().map(|t| t.class.name()).collect();
        let details: Vec<&str> = triaged.iter().map(|t| t.detail.as_str()).collect();
        let known: Vec<(i64, Option<String>)> = sqlx::query_as(
            "UPDATE builds b SET failure_class = t.class, failure_detail = t.detail
             FROM unnest($1::bigint[], $2::text[], $3::text[]) AS t(id, class, detail)
             WHERE b.build_id = t.id AND b.failure_class IS NULL
             RETURNING b.build_id,
                 (SELECT d.debian_package FROM debian_lookups d
                  WHERE d.failure_class = t.class AND d.failure_detail = t.detail)",
        )
        .bind(&ids)
        .bind(&classes)
        .bind(&details)
        .fetch_all(&mut self.conn)
        .await?;
        let known: std::collections::HashMap<i64, Option<String>> = known.into_iter().collect();
        // A build deleted meanwhile, or triaged by an earlier call that outlived its caller's
        // patience, was not updated: it is left out, so that nothing is announced twice.
        triaged.retain_mut(|t| match known.get(&t.build_id) {
            Some(package) => {
                t.debian_package = package.clone();
                true
            }
            None => false,
        });
        Ok(triaged)
    }

    /// Up to `limit` causes of failed builds that a Debian package may cure and that the
    /// Contents index as it is now (`contents`) has not been asked for: never asked, or
    /// asked in vain of other files.
    pub async fn unresolved_causes(&mut self, contents: &str, limit: u32) -> Result<Vec<(FailureClass, String)>, sqlx::Error> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT DISTINCT b.failure_class, b.failure_detail FROM builds b
             WHERE NOT b.status AND b.failure_class IN ('missing-header', 'missing-library', 'missing-tool')
               AND b.failure_detail <> ''
               AND NOT EXISTS (
                   SELECT 1 FROM debian_lookups d
                   WHERE d.failure_class = b.failure_class AND d.failure_detail = b.failure_detail
                     AND (d.debian_package IS NOT NULL OR d.looked_up_in = $1))
             ORDER BY 1, 2
             LIMIT $2",
        )
        .bind(contents)
        .bind(i64::from(limit))
        .fetch_all(&mut self.conn)
        .await?;
        Ok(rows.into_iter().filter_map(|(class, detail)| Some((FailureClass::from_name(&class)?, detail))).collect())
    }

    /// Records what the Contents index (`contents`) said of each cause; returns the projects
    /// whose pages show one of them (a release's latest build failed for it), sorted.
    pub async fn record_lookups(&mut self, contents: &str, found: &[(FailureClass, String, Option<String>)]) -> Result<Vec<String>, RequestError> {
        if found.iter().any(|(class, _, _)| !class.has_debian_package()) {
            return Err(RequestError::Refused("only missing headers, libraries and tools have Debian packages".into()));
        }
        let classes: Vec<&str> = found.iter().map(|(class, _, _)| class.name()).collect();
        let details: Vec<&str> = found.iter().map(|(_, detail, _)| detail.as_str()).collect();
        let packages: Vec<Option<&str>> = found.iter().map(|(_, _, package)| package.as_deref()).collect();
        let mut tx = self.conn.begin().await?;
        sqlx::query(
            "INSERT INTO debian_lookups (failure_class, failure_detail, debian_package, looked_up_in)
             SELECT class, detail, package, $4 FROM unnest($1::text[], $2::text[], $3::text[]) AS t(class, detail, package)
             ON CONFLICT (failure_class, failure_detail) DO UPDATE
                 SET debian_package = EXCLUDED.debian_package, looked_up_in = EXCLUDED.looked_up_in, looked_up_at = now()",
        )
        .bind(&classes)
        .bind(&details)
        .bind(&packages)
        .bind(contents)
        .execute(&mut *tx)
        .await?;
        let projects: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT b.package FROM builds b
             JOIN unnest($1::text[], $2::text[], $3::text[]) AS t(class, detail, package)
               ON b.failure_class = t.class AND b.failure_detail = t.detail AND t.package IS NOT NULL
             WHERE NOT b.status
               AND NOT EXISTS (
                   SELECT 1 FROM builds later
                   WHERE later.package = b.package AND later.version = b.version
                     AND later.abi_tag = b.abi_tag AND later.build_id > b.build_id)
             ORDER BY 1",
        )
        .bind(&classes)
        .bind(&details)
        .bind(&packages)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(projects)
    }

    /// The failed releases by class, by Debian package and by cause, on `abi` or on all: one
    /// pass over the failed builds, grouped three ways.
    pub async fn triage(&mut self, abi: Option<&str>) -> Result<TriageReport, sqlx::Error> {
        let mut tx = self.conn.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY").await?;
        // GROUPING's bits say which columns a row is not grouped by: 3 (detail and package)
        // for a class's row, 6 (class and detail) for a package's, 0 for a cause's.
        let rows: Vec<ReportRow> = sqlx::query_as(concat!(
            latest_failures!(),
            "SELECT GROUPING(f.failure_class, f.failure_detail, d.debian_package)::int,
                    f.failure_class, f.failure_detail, d.debian_package, count(DISTINCT (f.package, f.version))
             FROM f
             LEFT JOIN debian_lookups d ON d.failure_class = f.failure_class AND d.failure_detail = f.failure_detail
             GROUP BY GROUPING SETS ((f.failure_class), (d.debian_package), (f.failure_class, f.failure_detail, d.debian_package))"
        ))
        .bind(abi)
        .fetch_all(&mut *tx)
        .await?;
        let untriaged: i64 = sqlx::query_scalar("SELECT count(*) FROM builds WHERE NOT status AND failure_class IS NULL")
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        let count = |n: i64| u64::try_from(n).unwrap_or(0);
        let mut report = TriageReport { untriaged: count(untriaged), ..TriageReport::default() };
        for (grouping, class, detail, package, n) in rows {
            let class = class.as_deref().and_then(FailureClass::from_name);
            match (grouping, class, package) {
                (3, Some(class), _) => report.classes.push((class, count(n))),
                (6, _, Some(package)) => report.debian_packages.push((package, count(n))),
                (0, Some(class), package) => report.causes.push((class, detail.unwrap_or_default(), package, count(n))),
                _ => {}
            }
        }
        // Most releases first, then by name, each list cut.
        report.classes.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        report.debian_packages.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        report.causes.sort_by(|a, b| b.3.cmp(&a.3).then(a.0.cmp(&b.0)).then_with(|| a.1.cmp(&b.1)));
        report.debian_packages.truncate(TriageReport::MAX_ROWS);
        report.causes.truncate(TriageReport::MAX_ROWS);
        Ok(report)
    }

    /// Queues again (as `piw-rebuild build` does) every release whose latest build on an ABI
    /// failed for the cause `request` names, or only counts them for a dry run; returns them
    /// with their ABIs, sorted. Refused for an ABI the farm does not build, and
    /// without a class or a Debian package.
    pub async fn requeue(&mut self, request: &RequeueRequest, at: Timestamp) -> Result<Vec<(PackageVersion, String)>, RequestError> {
        if request.class.is_none() && request.debian_package.is_none() {
            return Err(RequestError::Refused("name a failure class or a Debian package: every failed release at once is not re-queued".into()));
        }
        if request.detail.is_some() && request.class.is_none() {
            return Err(RequestError::Refused("a detail needs its failure class".into()));
        }
        let mut tx = self.conn.begin().await?;
        if let Some(abi) = &request.abi {
            let built: Option<String> = sqlx::query_scalar("SELECT skip FROM build_abis WHERE abi_tag = $1").bind(abi).fetch_optional(&mut *tx).await?;
            match built {
                None => return Err(RequestError::Refused(format!("the farm does not build ABI {abi}"))),
                Some(reason) if !reason.is_empty() => return Err(RequestError::Refused(format!("ABI {abi} is skipped ({reason})"))),
                Some(_) => {}
            }
        }
        let chosen = concat!(
            latest_failures!(),
            ", chosen AS (
                SELECT f.package, f.version, f.abi_tag FROM f
                WHERE ($2::text IS NULL OR f.failure_class = $2) AND ($3::text IS NULL OR f.failure_detail = $3)
                  AND ($4::text IS NULL OR EXISTS (
                      SELECT 1 FROM debian_lookups d
                      WHERE d.failure_class = f.failure_class AND d.failure_detail = f.failure_detail
                        AND d.debian_package = $4)))"
        );
        let query = if request.dry_run {
            format!("{chosen} SELECT package, version, abi_tag FROM chosen ORDER BY 1, 2, 3")
        } else {
            format!(
                "{chosen},
                 wanted AS (
                     INSERT INTO rebuilds_wanted (package, version, abi_tag, requested_at)
                     SELECT package, version, abi_tag, $5 FROM chosen
                     ON CONFLICT (package, version, abi_tag) DO UPDATE SET requested_at = EXCLUDED.requested_at
                     RETURNING package, version, abi_tag),
                 marked AS (
                     UPDATE versions v SET complete = false, waiting_on = NULL FROM wanted w
                     WHERE v.package = w.package AND v.version = w.version)
                 SELECT package, version, abi_tag FROM wanted ORDER BY 1, 2, 3"
            )
        };
        let rows: Vec<(String, String, String)> = sqlx::query_as(sqlx::AssertSqlSafe(query))
            .bind(&request.abi)
            .bind(request.class.map(FailureClass::name))
            .bind(&request.detail)
            .bind(&request.debian_package)
            .bind(at)
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(rows.into_iter().map(|(package, version, abi)| (PackageVersion { package, version }, abi)).collect())
    }
}
