//! Pinned sources: the source file each release is built from, as the package index
//! publishes it, recorded once and never replaced ([`Database::pin_source`]). The source
//! pinner (`crate::source_pinner`) asks for the releases still waiting for one
//! ([`Database::unpinned_sources`]); the build queue holds only pinned releases.

use std::time::Duration;

use piwheels_common::protocols::{PackageVersion, SourceFile, Timestamp};

use super::Database;
use super::requests::{RequestError, interval};

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

    /// Pins `source` to the release, unless it has a pin already (a pin is never replaced),
    /// and dates the release by the source's upload time when the index gave one. True when
    /// this call pinned it. A malformed pin is refused ([`SourceFile::check`]).
    pub async fn pin_source(
        &mut self,
        package: &str,
        version: &str,
        source: &SourceFile,
        uploaded: Option<Timestamp>,
    ) -> Result<bool, RequestError> {
        source.check().map_err(RequestError::Refused)?;
        let pinned = sqlx::query(
            "UPDATE versions SET source_filename = $3, source_url = $4, source_sha256 = $5, source_retry_at = NULL,
                                 released = COALESCE($6, released)
             WHERE package = $1 AND version = $2 AND source_sha256 IS NULL",
        )
        .bind(package)
        .bind(version)
        .bind(&source.filename)
        .bind(&source.url)
        .bind(&source.sha256)
        .bind(uploaded)
        .execute(&mut self.conn)
        .await?
        .rows_affected();
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
