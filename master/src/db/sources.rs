//! Pinned sources: the source file each release is built from, as the package index
//! publishes it, recorded once and never replaced ([`Database::pin_source`]). The source
//! pinner (`crate::source_pinner`) asks for the releases still waiting for one
//! ([`Database::unpinned_sources`]); the build queue holds only pinned releases.

use std::time::Duration;

use piwheels_common::protocols::{PackageVersion, SourceFile, Timestamp};

use sqlx::Connection;

use super::Database;
use super::requests::{RequestError, add_rewrite, interval};
use crate::calls::db::{PendingRewrite, RewriteScope};

impl Database {
    /// Up to `limit` releases that could be built but have no pinned source: those never
    /// looked for (newest first), then those whose retry is due (soonest first).
    pub async fn unpinned_sources(&mut self, limit: u32) -> Result<Vec<PackageVersion>, sqlx::Error> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT v.package, v.version FROM versions v
             JOIN packages p ON p.package = v.package AND p.skip = ''
             WHERE v.source_sha256 IS NULL AND NOT v.complete AND v.skip = ''
               AND (v.source_retry_at IS NULL OR v.source_retry_at <= now())
             ORDER BY v.source_retry_at NULLS FIRST, v.released DESC
             LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&mut self.conn)
        .await?;
        Ok(rows.into_iter().map(|(package, version)| PackageVersion { package, version }).collect())
    }

    /// Pins `source` to the release, unless it has a pin already (a pin is never replaced).
    /// When the index gave the source's upload time, it becomes the release's date if it is
    /// earlier (a date can only move earlier, so the index cannot move a release up the build
    /// queue, newest first), and the project page's rewrite is recorded with the pin. True
    /// when this call pinned it. A malformed pin is refused ([`SourceFile::check`]).
    pub async fn pin_source(
        &mut self,
        package: &str,
        version: &str,
        source: &SourceFile,
        uploaded: Option<Timestamp>,
    ) -> Result<bool, RequestError> {
        source.check().map_err(RequestError::Refused)?;
        let mut tx = self.conn.begin().await?;
        let pinned = sqlx::query(
            "UPDATE versions SET source_filename = $3, source_url = $4, source_sha256 = $5, source_retry_at = NULL,
                                 released = LEAST(released, COALESCE($6, released))
             WHERE package = $1 AND version = $2 AND source_sha256 IS NULL",
        )
        .bind(package)
        .bind(version)
        .bind(&source.filename)
        .bind(&source.url)
        .bind(&source.sha256)
        .bind(uploaded)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if pinned == 1 && uploaded.is_some() {
            let rewrite = PendingRewrite { package: package.to_string(), added_at: chrono::Utc::now(), scope: RewriteScope::Project };
            add_rewrite(&mut tx, &rewrite).await?;
        }
        tx.commit().await?;
        Ok(pinned == 1)
    }

    /// Has the pinner look for the release's source again `after` from now (and not before),
    /// unless it is pinned.
    pub async fn pin_later(&mut self, package: &str, version: &str, after: Duration) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE versions SET source_retry_at = now() + $3 WHERE package = $1 AND version = $2 AND source_sha256 IS NULL")
            .bind(package)
            .bind(version)
            .bind(interval(after))
            .execute(&mut self.conn)
            .await?;
        Ok(())
    }
}
