//! PyPI's changelog applied a run at a time ([`Database::apply_feed`]): one transaction of a
//! handful of set statements per run, whatever its length, so that a follower catching up on
//! thousands of events costs a few round trips per batch instead of several per event.

use std::collections::HashMap;

use piwheels_common::names::is_prerelease;
use piwheels_common::protocols::{PackageVersion, Timestamp};
use sqlx::Connection;

use super::Database;
use super::requests::{len, truncate};
use crate::calls::db::{FeedApplied, FeedEvent, FeedKind};
use crate::cloud_gazer::BINARY_ONLY;

/// Rows of (package, version) as PostgreSQL returns them.
fn releases(rows: Vec<(String, String)>) -> Vec<PackageVersion> {
    rows.into_iter().map(|(package, version)| PackageVersion { package, version }).collect()
}

impl Database {
    /// Applies a run of changelog events (see [`crate::calls::db::ApplyFeed`]); new packages
    /// get the skip reason `skip_new`.
    pub async fn apply_feed(&mut self, events: &[FeedEvent], skip_new: &str) -> Result<FeedApplied, sqlx::Error> {
        if events.is_empty() {
            return Ok(FeedApplied::default());
        }
        let packages: Vec<&str> = events.iter().map(|e| e.package.as_str()).collect();
        let names: Vec<&str> = events.iter().map(|e| e.name.as_str()).collect();
        let seen: Vec<Timestamp> = events.iter().map(|e| e.seen).collect();
        let uploads: Vec<&FeedEvent> = events.iter().filter(|e| matches!(e.kind, FeedKind::Source | FeedKind::Binary) && e.version.is_some()).collect();
        let column = |rows: &[&FeedEvent], f: fn(&FeedEvent) -> String| rows.iter().map(|e| f(e)).collect::<Vec<String>>();
        let version = |e: &FeedEvent| e.version.clone().unwrap_or_default();
        // The last yank or unyank of each release decides.
        let mut yanks: HashMap<(&str, &str), bool> = HashMap::new();
        for event in events {
            if let (FeedKind::Yank | FeedKind::Unyank, Some(version)) = (event.kind, &event.version) {
                yanks.insert((event.package.as_str(), version.as_str()), event.kind == FeedKind::Yank);
            }
        }
        let (mut yank_packages, mut yank_versions, mut yank_states) = (Vec::new(), Vec::new(), Vec::new());
        for ((package, version), yanked) in yanks {
            yank_packages.push(package);
            yank_versions.push(version);
            yank_states.push(yanked);
        }

        let mut tx = self.conn.begin().await?;
        let new_packages: Vec<String> = sqlx::query_scalar(
            "INSERT INTO packages (package, skip, description)
             SELECT DISTINCT p, $2, '' FROM unnest($1::text[]) AS p
             ON CONFLICT (package) DO NOTHING
             RETURNING package",
        )
        .bind(&packages)
        .bind(truncate(skip_new, len::SKIP))
        .fetch_all(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO package_names (name, package, seen)
             SELECT name, package, max(seen) FROM unnest($1::text[], $2::text[], $3::timestamptz[]) AS t(name, package, seen)
             GROUP BY name, package
             ON CONFLICT (name) DO UPDATE
             SET package = EXCLUDED.package, seen = GREATEST(package_names.seen, EXCLUDED.seen)",
        )
        .bind(&names)
        .bind(&packages)
        .bind(&seen)
        .execute(&mut *tx)
        .await?;
        let upload_packages = column(&uploads, |e| e.package.clone());
        let upload_versions = column(&uploads, version);
        let upload_seen: Vec<Timestamp> = uploads.iter().map(|e| e.seen).collect();
        let upload_source: Vec<bool> = uploads.iter().map(|e| e.kind == FeedKind::Source).collect();
        let upload_pre: Vec<bool> = uploads.iter().map(|e| is_prerelease(e.version.as_deref().unwrap_or_default())).collect();
        // A release is dated by its first upload; one source file among its uploads makes it
        // buildable.
        let new_versions: Vec<(String, String)> = sqlx::query_as(
            "INSERT INTO versions (package, version, released, skip, prerelease)
             SELECT package, version, min(seen), CASE WHEN bool_or(source) THEN '' ELSE $6 END, bool_or(pre)
             FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::bool[], $5::bool[]) AS t(package, version, seen, source, pre)
             GROUP BY package, version
             ON CONFLICT (package, version) DO NOTHING
             RETURNING package, version",
        )
        .bind(&upload_packages)
        .bind(&upload_versions)
        .bind(&upload_seen)
        .bind(&upload_source)
        .bind(&upload_pre)
        .bind(BINARY_ONLY)
        .fetch_all(&mut *tx)
        .await?;
        let buildable: Vec<(String, String)> = sqlx::query_as(
            "UPDATE versions v SET skip = ''
             FROM (SELECT DISTINCT package, version FROM unnest($1::text[], $2::text[], $3::bool[]) AS t(package, version, source)
                   WHERE source) t
             WHERE v.package = t.package AND v.version = t.version AND v.skip = $4
             RETURNING v.package, v.version",
        )
        .bind(&upload_packages)
        .bind(&upload_versions)
        .bind(&upload_source)
        .bind(BINARY_ONLY)
        .fetch_all(&mut *tx)
        .await?;
        let yanked: Vec<(String, String)> = sqlx::query_as(
            "UPDATE versions v SET yanked = t.yanked, yank_reason = ''
             FROM unnest($1::text[], $2::text[], $3::bool[]) AS t(package, version, yanked)
             WHERE v.package = t.package AND v.version = t.version AND v.yanked <> t.yanked
             RETURNING v.package, v.version",
        )
        .bind(&yank_packages)
        .bind(&yank_versions)
        .bind(&yank_states)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(FeedApplied { new_packages, new_versions: releases(new_versions), buildable: releases(buildable), yanks: releases(yanked) })
    }

    /// Sets packages' summaries, each cut to its column, in one statement; returns the
    /// packages whose summary changed, sorted.
    pub async fn set_descriptions(&mut self, descriptions: &[(String, String)]) -> Result<Vec<String>, sqlx::Error> {
        let packages: Vec<&str> = descriptions.iter().map(|(p, _)| p.as_str()).collect();
        let texts: Vec<&str> = descriptions.iter().map(|(_, d)| truncate(d, len::DESCRIPTION)).collect();
        let mut changed: Vec<String> = sqlx::query_scalar(
            "UPDATE packages p SET description = t.description
             FROM (SELECT DISTINCT ON (package) package, description
                   FROM unnest($1::text[], $2::text[]) AS t(package, description)) t
             WHERE p.package = t.package AND p.description IS DISTINCT FROM t.description
             RETURNING p.package",
        )
        .bind(&packages)
        .bind(&texts)
        .fetch_all(&mut self.conn)
        .await?;
        changed.sort();
        Ok(changed)
    }
}
