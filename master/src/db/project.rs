//! Everything the index writer needs for one project's pages ([`Database::project_data`], or
//! [`Database::projects_data`] for a batch of projects): names, releases, files with their
//! dependencies, and the build state of each release on each ABI.
//!
//! A handful of queries fetch the packages' rows (one per table, never one per version or per
//! package) in one read-only snapshot; the per-ABI build state is then worked out here, where
//! the rules read plainly:
//!
//! * **Success** when some file of the release serves the ABI: its ABI tag is the ABI's, or
//!   `none` (pure Python), or `abi3` with a Python floor no higher than the ABI's Python. The
//!   build id is that file's build, preferring one made on the ABI itself.
//! * **Fail** when a build ran on the ABI but no file serves it (the build failed, or
//!   succeeded without files); the build id is the latest such build.
//! * **Skip** when the package, the release or the ABI is skipped.
//! * **Pending** otherwise: nothing has been tried yet.
//!
//! The ABIs shown are every ABI that is not skipped, plus every ABI some build of the release
//! ran on (so history on a retired ABI stays visible).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};
use piwheels_common::protocols::{BuildId, Dependencies, FailureClass};

use crate::calls::db::{AbiStatus, BuildAbi, BuildSummary, FailureCause, ProjectData, ProjectFile, ProjectsSnapshot, ReleaseData, Reproducibility, Verdict};
use sqlx::Connection;

use super::Database;
use super::requests::RequestError;

/// A version row: package, version, released, skip, yanked, yank reason.
type VersionRow = (String, String, DateTime<Utc>, String, bool, String);
/// A build row: package, id, version, builder ABI.
/// A build: its package, id, version, ABI, when it was recorded, its builder and how long it
/// ran (microseconds).
/// Then its failure's class, detail and Debian package, once triaged.
type BuildRow = (String, i64, String, String, DateTime<Utc>, String, i64, Option<String>, String, Option<String>);
/// A file row, with its build's package, version and ABI.
type FileRow = (
    String,
    String,
    String,
    i64,
    String,
    i64,
    String,
    Option<String>,
    String,
    String,
    Option<String>,
    DateTime<Utc>,
    Option<i32>,
);

/// What the ABI rules need to know about one file.
#[derive(Debug)]
struct Served {
    build_id: BuildId,
    builder_abi: String,
    abi_tag: String,
    python_floor: Option<i32>,
}

impl Served {
    /// Whether this file serves the ABI `abi` of Python `python` (major * 100 + minor).
    fn serves(&self, abi: &str, python: Option<i32>) -> bool {
        self.abi_tag == abi
            || self.abi_tag == "none"
            || self.python_floor.zip(python).is_some_and(|(floor, python)| floor <= python)
    }
}

/// One package's rows, gathered from the batch's queries.
#[derive(Default)]
struct PackageRows {
    aliases: Vec<String>,
    versions: Vec<(String, DateTime<Utc>, String, bool, String)>,
    builds: Vec<(i64, String, String, BuildSummary)>,
    files: Vec<FileRow>,
    checks: Vec<CheckRow>,
}

/// A cross-check of a build: the package, the build, whether it is done, its verdict and
/// differences, and its builder (the key, or the label without one).
type CheckRow = (String, i64, Option<String>, Vec<String>, Option<String>);

/// The build ABIs: tag, Python version, skip reason.
type AbiRow = (String, i32, String);

impl Database {
    /// Everything for a project's pages. Refused when the package does not exist.
    pub async fn project_data(&mut self, package: &str) -> Result<ProjectData, RequestError> {
        match self.projects_data(&[package.to_string()]).await?.data.pop() {
            Some(data) => Ok(data),
            None => Err(RequestError::Refused(format!("package {package} does not exist"))),
        }
    }

    /// The build ABIs (in build order) and everything for the pages of several projects, in
    /// the order asked (each once), leaving out the packages that do not exist, with the
    /// snapshot they were read from (`pg_snapshot` as text). The same handful of queries, on
    /// one snapshot, serve the whole batch, so a batch of hundreds costs little more than one
    /// package.
    pub async fn projects_data(&mut self, packages: &[String]) -> Result<ProjectsSnapshot, RequestError> {
        // One snapshot for every query, so the parts agree with each other.
        let mut tx = self.conn.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY").await?;
        // The snapshot is taken by the first statement: this one.
        let snapshot: String = sqlx::query_scalar("SELECT pg_current_snapshot()::text").fetch_one(&mut *tx).await?;
        let abis: Vec<AbiRow> =
            sqlx::query_as("SELECT abi_tag, python_version, skip FROM build_abis ORDER BY python_version, abi_tag COLLATE \"C\"")
                .fetch_all(&mut *tx)
                .await?;
        let heads: Vec<(String, String, String, Option<String>)> = sqlx::query_as(
            "SELECT p.package, p.skip, p.description, \
                    (SELECT n.name FROM package_names n WHERE n.package = p.package \
                     ORDER BY n.seen DESC, n.name COLLATE \"C\" LIMIT 1) \
             FROM packages p WHERE p.package = ANY($1)",
        )
        .bind(packages)
        .fetch_all(&mut *tx)
        .await?;
        let build_abis = abis.iter().map(|(tag, position, skip)| BuildAbi { tag: tag.clone(), position: *position, skip: skip.clone() }).collect();
        if heads.is_empty() {
            tx.rollback().await?;
            return Ok(ProjectsSnapshot { abis: build_abis, data: Vec::new(), snapshot });
        }
        let aliases: Vec<(String, String)> = sqlx::query_as(
            "SELECT package, name FROM package_names WHERE package = ANY($1) AND name <> package \
             ORDER BY package, seen DESC, name COLLATE \"C\"",
        )
        .bind(packages)
        .fetch_all(&mut *tx)
        .await?;
        let versions: Vec<VersionRow> = sqlx::query_as(
            "SELECT package, version, released, skip, yanked, yank_reason FROM versions \
             WHERE package = ANY($1) ORDER BY released, version COLLATE \"C\"",
        )
        .bind(packages)
        .fetch_all(&mut *tx)
        .await?;
        let builds: Vec<BuildRow> = sqlx::query_as(
            "SELECT b.package, b.build_id, b.version, b.abi_tag, b.built_at, b.builder, \
                    (EXTRACT(EPOCH FROM b.duration) * 1000000)::bigint, \
                    b.failure_class, b.failure_detail, d.debian_package \
             FROM builds b \
             LEFT JOIN debian_lookups d ON d.failure_class = b.failure_class AND d.failure_detail = b.failure_detail \
             WHERE b.package = ANY($1)",
        )
        .bind(packages)
        .fetch_all(&mut *tx)
        .await?;
        // The end of the log of each release's latest build on each ABI, when it failed.
        let tails: Vec<(i64, String)> = sqlx::query_as(
            "SELECT o.build_id, right(o.output, $2) FROM output o \
             JOIN (SELECT DISTINCT ON (package, version, abi_tag) build_id, status FROM builds \
                   WHERE package = ANY($1) ORDER BY package, version, abi_tag, build_id DESC) latest \
               ON latest.build_id = o.build_id AND NOT latest.status",
        )
        .bind(packages)
        .bind(TAIL_CHARACTERS)
        .fetch_all(&mut *tx)
        .await?;
        let files: Vec<FileRow> = sqlx::query_as(
            "SELECT b.package, b.version, b.abi_tag, f.build_id, f.filename, f.filesize, f.filehash::text, \
                    f.metadata_hash::text, f.abi_tag, f.platform_tag, f.requires_python, f.uploaded, \
                    f.python_floor \
             FROM builds b JOIN files f ON f.build_id = b.build_id \
             WHERE b.package = ANY($1) ORDER BY f.filename COLLATE \"C\"",
        )
        .bind(packages)
        .fetch_all(&mut *tx)
        .await?;
        // Debian packages every image of the builder's ABI has are left out of install hints.
        let dependencies: Vec<(String, String, String)> = sqlx::query_as(
            "SELECT d.filename, d.tool, d.dependency \
             FROM builds b \
             JOIN files f ON f.build_id = b.build_id \
             JOIN dependencies d ON d.filename = f.filename \
             WHERE b.package = ANY($1) \
               AND NOT (d.tool = 'apt' AND EXISTS ( \
                   SELECT 1 FROM preinstalled_apt_packages pa \
                   WHERE pa.abi_tag = b.abi_tag AND pa.apt_package = d.dependency))",
        )
        .bind(packages)
        .fetch_all(&mut *tx)
        .await?;
        let checks: Vec<CheckRow> = sqlx::query_as(
            "SELECT b.package, c.build_id, c.verdict, c.differences, COALESCE(c.builder_key, c.builder) \
             FROM builds b JOIN cross_checks c ON c.build_id = b.build_id \
             WHERE b.package = ANY($1) ORDER BY c.check_id",
        )
        .bind(packages)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;

        let mut deps: HashMap<String, Dependencies> = HashMap::new();
        for (filename, tool, dependency) in dependencies {
            let entry = deps.entry(filename).or_default();
            match tool.as_str() {
                "apt" => entry.apt.push(dependency),
                "pip" => entry.pip.push(dependency),
                _ => entry.unresolved.push(dependency),
            }
        }
        for entry in deps.values_mut() {
            entry.apt.sort();
            entry.pip.sort();
            entry.unresolved.sort();
        }
        let mut rows: HashMap<String, PackageRows> = HashMap::new();
        for (package, alias) in aliases {
            rows.entry(package).or_default().aliases.push(alias);
        }
        for (package, version, released, skip, yanked, reason) in versions {
            rows.entry(package).or_default().versions.push((version, released, skip, yanked, reason));
        }
        let mut tails: HashMap<i64, String> = tails.into_iter().collect();
        for (package, build_id, version, abi, built_at, builder, duration_us, class, detail, debian_package) in builds {
            let cause = class.as_deref().and_then(FailureClass::from_name).map(|class| FailureCause { class, detail, debian_package });
            let summary = BuildSummary {
                built_at,
                builder,
                duration: Duration::from_micros(u64::try_from(duration_us).unwrap_or(0)),
                last_lines: tails.remove(&build_id).map(|tail| last_lines(&tail)).unwrap_or_default(),
                cause,
            };
            rows.entry(package).or_default().builds.push((build_id, version, abi, summary));
        }
        for row in files {
            rows.entry(row.0.clone()).or_default().files.push(row);
        }
        for row in checks {
            rows.entry(row.0.clone()).or_default().checks.push(row);
        }
        let mut heads: HashMap<String, (String, String, Option<String>)> =
            heads.into_iter().map(|(package, skip, description, display)| (package, (skip, description, display))).collect();
        let mut out = Vec::with_capacity(heads.len());
        for package in packages {
            if let Some((skip, description, display_name)) = heads.remove(package) {
                let rows = rows.remove(package).unwrap_or_default();
                out.push(assemble(package, skip, description, display_name, rows, &abis, &mut deps));
            }
        }
        Ok(ProjectsSnapshot { abis: build_abis, data: out, snapshot })
    }
}

/// One project's data from its rows: files with their dependencies, and the build state of
/// each release on each ABI (the rules are in the module documentation).
fn assemble(
    package: &str,
    package_skip: String,
    description: String,
    display_name: Option<String>,
    rows: PackageRows,
    abis: &[AbiRow],
    deps: &mut HashMap<String, Dependencies>,
) -> ProjectData {
    let mut files_of: HashMap<String, Vec<ProjectFile>> = HashMap::new();
    let mut served_of: HashMap<String, Vec<Served>> = HashMap::new();
    for row in rows.files {
        let (
            _package,
            version,
            builder_abi,
            build_id,
            filename,
            size,
            sha256,
            metadata_sha256,
            abi_tag,
            platform_tag,
            requires_python,
            uploaded,
            python_floor,
        ) = row;
        served_of.entry(version.clone()).or_default().push(Served {
            build_id,
            builder_abi: builder_abi.clone(),
            abi_tag: abi_tag.clone(),
            python_floor,
        });
        files_of.entry(version).or_default().push(ProjectFile {
            dependencies: deps.remove(&filename).unwrap_or_default(),
            filename,
            size: u64::try_from(size).unwrap_or(0),
            sha256,
            metadata_sha256,
            builder_abi,
            abi_tag,
            platform_tag,
            requires_python,
            uploaded,
        });
    }
    // Per version, per builder ABI: the latest build.
    let mut latest_build: HashMap<String, HashMap<String, BuildId>> = HashMap::new();
    let mut summaries: HashMap<BuildId, BuildSummary> = HashMap::new();
    for (build_id, version, abi, summary) in rows.builds {
        let latest = latest_build.entry(version).or_default().entry(abi).or_insert(build_id);
        *latest = (*latest).max(build_id);
        summaries.insert(build_id, summary);
    }
    let reproducibility = reproducibility(rows.checks);
    let abi_python: HashMap<&str, i32> = abis.iter().map(|(tag, python, _)| (tag.as_str(), *python)).collect();
    let abi_skipped: HashMap<&str, bool> = abis.iter().map(|(tag, _, skip)| (tag.as_str(), !skip.is_empty())).collect();
    let active: Vec<&str> = abis.iter().filter(|(_, _, skip)| skip.is_empty()).map(|(tag, _, _)| tag.as_str()).collect();

    let no_builds = HashMap::new();
    let releases: Vec<ReleaseData> = rows
        .versions
        .into_iter()
        .map(|(version, released, version_skip, yanked, yank_reason)| {
            let built = latest_build.get(&version).unwrap_or(&no_builds);
            let served = served_of.get(&version).map(Vec::as_slice).unwrap_or_default();
            let skipped = !package_skip.is_empty() || !version_skip.is_empty();
            let shown: BTreeSet<&str> = active.iter().copied().chain(built.keys().map(String::as_str)).collect();
            let cells = shown
                .into_iter()
                .map(|abi| {
                    let python = abi_python.get(abi).copied().or_else(|| python_of_tag(abi));
                    let best = served
                        .iter()
                        .filter(|file| file.serves(abi, python))
                        .max_by_key(|file| (file.builder_abi == abi, file.build_id));
                    let cell = if let Some(file) = best {
                        (AbiStatus::Success, Some(file.build_id))
                    } else if let Some(build_id) = built.get(abi) {
                        (AbiStatus::Fail, Some(*build_id))
                    } else if skipped || abi_skipped.get(abi).copied().unwrap_or(false) {
                        (AbiStatus::Skip, None)
                    } else {
                        (AbiStatus::Pending, None)
                    };
                    (abi.to_string(), cell)
                })
                .collect::<BTreeMap<_, _>>();
            // Only a success is cross-checked, and only by the ABI that built it.
            let checked = cells
                .iter()
                .filter_map(|(abi, (status, build_id))| match (status, build_id) {
                    (AbiStatus::Success, Some(build_id)) if built.get(abi) == Some(build_id) => {
                        reproducibility.get(build_id).map(|found| (abi.clone(), found.clone()))
                    }
                    _ => None,
                })
                .collect();
            ReleaseData {
                reproducibility: checked,
                files: files_of.remove(&version).unwrap_or_default(),
                skip: if version_skip.is_empty() { package_skip.clone() } else { version_skip },
                yanked: yanked.then_some(yank_reason),
                released,
                abis: cells,
                version,
            }
        })
        .collect();
    ProjectData {
        display_name: display_name.unwrap_or_else(|| package.to_string()),
        package: package.to_string(),
        description,
        aliases: rows.aliases,
        // Only the builds the cells name: a project's page does not list its history.
        builds: releases
            .iter()
            .flat_map(|r: &ReleaseData| r.abis.values().filter_map(|(_, id)| *id))
            .filter_map(|id| summaries.remove(&id).map(|summary| (id, summary)))
            .collect(),
        releases,
    }
}

/// The characters of a failed build's log read for its last lines.
const TAIL_CHARACTERS: i32 = 2000;
/// Lines of a failed build's log a project page shows.
const LAST_LINES: usize = 5;
/// The longest of them, in characters.
const LAST_LINE_LENGTH: usize = 200;

/// The last non-empty lines of a log, each cut to [`LAST_LINE_LENGTH`] characters without
/// control characters.
fn last_lines(tail: &str) -> Vec<String> {
    let lines: Vec<String> = tail.lines().rev().map(str::trim_end).filter(|l| !l.trim().is_empty()).take(LAST_LINES).map(|l| crate::access_log::clean(l, LAST_LINE_LENGTH)).collect();
    lines.into_iter().rev().collect()
}

/// What the cross-checks of each build found (checks in the order they were asked): the
/// latest one done decides the verdict, and every builder that reproduced the build so far
/// counts, with the build's own.
fn reproducibility(checks: Vec<CheckRow>) -> HashMap<BuildId, Reproducibility> {
    let mut found: HashMap<BuildId, Reproducibility> = HashMap::new();
    let mut reproducers: HashMap<BuildId, BTreeSet<String>> = HashMap::new();
    for (_, build_id, verdict, differences, builder) in checks {
        let entry = found.entry(build_id).or_insert(Reproducibility { latest: None, builders: 1 });
        // A waiting check says nothing while an earlier one has a verdict.
        let Some(verdict) = verdict else { continue };
        entry.latest = Some(match verdict.as_str() {
            "reproduced" => {
                let builders = reproducers.entry(build_id).or_default();
                builders.insert(builder.unwrap_or_default());
                entry.builders = u32::try_from(builders.len() + 1).unwrap_or(u32::MAX);
                Verdict::Reproduced
            }
            "differs" => Verdict::Differs { differences },
            _ => Verdict::Failed { reason: differences.join("\n") },
        });
    }
    found
}

/// The Python version of a CPython ABI tag that is not in `build_abis` (a build on a retired
/// or imported ABI): `cp39` is 309, `cp311` and `cp311d` are 311. None for anything else.
fn python_of_tag(tag: &str) -> Option<i32> {
    let digits: String = tag.strip_prefix("cp")?.chars().take_while(char::is_ascii_digit).collect();
    if digits.len() < 2 {
        return None;
    }
    let (major, minor) = digits.split_at(1);
    Some(major.parse::<i32>().ok()? * 100 + minor.parse::<i32>().ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(build_id: BuildId, verdict: Option<&str>, differences: &[&str], builder: &str) -> CheckRow {
        ("foo".into(), build_id, verdict.map(str::to_string), differences.iter().map(|d| d.to_string()).collect(), Some(builder.into()))
    }

    #[test]
    fn the_latest_verdict_decides_and_every_builder_that_reproduced_the_build_counts() {
        let found = reproducibility(vec![
            // Build 1: reproduced twice by pi-2, once by pi-3, then a check waits.
            check(1, Some("reproduced"), &[], "pi-2"),
            check(1, Some("reproduced"), &[], "pi-2"),
            check(1, Some("reproduced"), &[], "pi-3"),
            check(1, None, &[], ""),
            // Build 2: reproduced, then not.
            check(2, Some("reproduced"), &[], "pi-2"),
            check(2, Some("differs"), &["a.py: contents differ"], "pi-3"),
            // Build 3: failed on the second builder. Build 4: waiting.
            check(3, Some("failed"), &["the second build failed: boom"], "pi-2"),
            check(4, None, &[], ""),
        ]);
        assert_eq!(found[&1], Reproducibility { latest: Some(Verdict::Reproduced), builders: 3 });
        assert_eq!(found[&2], Reproducibility { latest: Some(Verdict::Differs { differences: vec!["a.py: contents differ".into()] }), builders: 2 });
        assert_eq!(found[&3], Reproducibility { latest: Some(Verdict::Failed { reason: "the second build failed: boom".into() }), builders: 1 });
        assert_eq!(found[&4], Reproducibility { latest: None, builders: 1 });
    }
}
