//! The consistency check: the served tree and the database must tell the same story. Every
//! published wheel has the record of the build that made it and every record its wheel; every
//! simple page links only files that exist; staging holds no transfer older than the abandon
//! time.
//!
//! The master runs it at every start, before its tasks, when nothing can be in flight: then a
//! wheel no build records is one whose build was lost (the master stopped between publishing
//! and recording it, or the database refused the record) and is removed so that the rebuild
//! can publish its own. `piw-check` runs it on demand against a running farm, where a wheel
//! published a moment ago may not be recorded yet: it repairs only what is older than its
//! `--min-age`.
//!
//! Repairs are the safe ones: removing unrecorded wheels (and side files without their wheel),
//! removing stale staging entries, writing build logs the index writer could not write from
//! the copy the database keeps, writing missing provenance statements from the records they
//! are made of (signed again, they are the same bytes), asking for pages that link missing
//! files to be rewritten from the database. A record without its file is reported, never repaired: only an operator
//! can tell a lost file (`piw-remove --builds` has its release built again) from a wrong
//! `--output-path`. For the same reason removals are withheld when they would take more than
//! a tenth of the tree, and logs are not written again when more than a tenth are missing.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};


use ed25519_dalek::SigningKey;
use piwheels_common::provenance;

use crate::calls::db::{PendingRewrite, RewriteScope};
use crate::db::Database;
use crate::index::layout::{Layout, is_safe_name};
use crate::index::pages::url_encode;
use crate::index::writer::{self, IndexWriter, PageOptions};

/// Removals are withheld when they would take more than this many files (or logs written
/// again when more than this many are missing)...
const MASS_REMOVAL_FILES: usize = 100;
/// ...and more than this share of the files in the tree (of the logs the database keeps).
const MASS_REMOVAL_SHARE: f64 = 0.1;
/// Findings of each kind listed by name; the rest are counted.
const LISTED: usize = 20;
/// Missing files kept by name.
pub const KEPT: usize = 1000;

/// What to check and how boldly to repair.
#[derive(Debug, Clone)]
pub struct Check {
    /// The served tree.
    pub output_path: PathBuf,
    /// The file juggler's staging directory.
    pub staging_dir: PathBuf,
    /// The file juggler's abandon time: staging entries older than this are dead.
    pub abandon_after: Duration,
    /// Only what has not changed for this long is repaired (zero at the master's start).
    pub min_age: Duration,
    /// Whether to repair at all.
    pub repair: bool,
    /// Whether to remove files even when that would take a large share of the tree.
    pub force: bool,
    /// The master's signing key, to write missing provenance statements; None only reports them.
    pub signing_key: Option<SigningKey>,
}

/// What the check found, and what it repaired.
#[derive(Debug, Default)]
pub struct Findings {
    /// Wheels in the tree no build records, and side files without their wheel.
    pub unrecorded: Vec<PathBuf>,
    /// Files a build records that are not in the tree: the first [`KEPT`] found (all of them,
    /// when the output path is wrong, would take gigabytes at PyPI's size).
    pub missing: Vec<PathBuf>,
    /// How many recorded files are not in the tree.
    pub missing_count: usize,
    /// Links on simple pages to files that are not in the tree: (package, file name).
    pub dead_links: Vec<(String, String)>,
    /// Build logs the database keeps that are not in the tree.
    pub missing_logs: Vec<PathBuf>,
    /// Signed provenance statements of recorded files that are not in the tree.
    pub missing_provenance: Vec<PathBuf>,
    /// Staging entries older than the abandon time.
    pub stale_staging: Vec<PathBuf>,
    /// What was repaired, one line each.
    pub repaired: Vec<String>,
    /// Why repairs were withheld (removals from the tree, or every log written again), when they were.
    pub withheld: Option<String>,
    /// Files in the tree's package directories.
    pub files_seen: usize,
}

impl Findings {
    /// Whether nothing at all was found.
    pub fn is_clean(&self) -> bool {
        self.unrecorded.is_empty()
            && self.missing_count == 0
            && self.dead_links.is_empty()
            && self.missing_logs.is_empty()
            && self.missing_provenance.is_empty()
            && self.stale_staging.is_empty()
    }
}

impl fmt::Display for Findings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_clean() {
            return write!(f, "consistent: {} files in the tree, each recorded, every link and record good, staging clean", self.files_seen);
        }
        // The count, then the items given (the first LISTED).
        let counted = |f: &mut fmt::Formatter<'_>, what: &str, count: usize, items: Vec<String>| -> fmt::Result {
            if count == 0 {
                return Ok(());
            }
            writeln!(f, "{count} {what}:")?;
            for item in &items {
                writeln!(f, "  {item}")?;
            }
            if count > items.len() {
                writeln!(f, "  ... and {} more", count - items.len())?;
            }
            Ok(())
        };
        let shown = |paths: &[PathBuf]| paths.iter().take(LISTED).map(|p| p.display().to_string()).collect::<Vec<_>>();
        let paths = |f: &mut fmt::Formatter<'_>, what: &str, paths: &[PathBuf]| counted(f, what, paths.len(), shown(paths));
        paths(f, "files in the tree that no build records", &self.unrecorded)?;
        counted(
            f,
            "recorded files missing from the tree (piw-remove --builds has their release built again)",
            self.missing_count,
            shown(&self.missing),
        )?;
        let links = self.dead_links.iter().take(LISTED).map(|(p, file)| format!("{p}: {file}")).collect();
        counted(f, "links on simple pages to missing files", self.dead_links.len(), links)?;
        paths(f, "build logs missing from the tree (the database keeps them)", &self.missing_logs)?;
        paths(f, "provenance statements missing from the tree (made from the records)", &self.missing_provenance)?;
        paths(f, "staging entries older than the abandon time", &self.stale_staging)?;
        counted(f, "repairs", self.repaired.len(), self.repaired.iter().take(LISTED).cloned().collect())?;
        if let Some(why) = &self.withheld {
            writeln!(f, "repairs withheld: {why}")?;
        }
        Ok(())
    }
}

/// [`run`] on a connection of its own to the database at `dsn`, for callers without a runtime
/// (the master before its tasks start, piw-check).
pub fn run_blocking(dsn: &str, statement_timeout: Duration, check: &Check) -> anyhow::Result<Findings> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let mut db = Database::connect(dsn, statement_timeout).await?;
        run(&mut db, check).await
    })
}

/// Runs the check, repairing as `check` allows. The database is read a slice of packages (and
/// of build logs) at a time, so that the check's memory does not grow with the farm.
pub async fn run(db: &mut Database, check: &Check) -> anyhow::Result<Findings> {
    let layout = Layout::new(&check.output_path);
    let now = SystemTime::now();
    let mut scan = Scan {
        layout: &layout,
        min_age: check.min_age,
        now,
        findings: Findings::default(),
        unrecorded_here: Vec::new(),
        removable: Vec::new(),
        rewrites: Vec::new(),
        unsigned: Vec::new(),
    };
    // The package directories in the tree; those the database does not know are left over.
    // (Each slice is read on its own: on a live farm a package renamed meanwhile may be
    // compared twice or not at all. Only the report can be wrong: a file is removed only when
    // no package records it at the end of its slice.)
    let mut directories: HashSet<String> = dir_names(&layout.simple_dir())?.into_iter().collect();
    let mut after = String::new();
    loop {
        let packages = db.packages_after(&after, SLICE).await?;
        let Some(last) = packages.last().cloned() else { break };
        let mut recorded: HashMap<String, Vec<(String, Option<i64>)>> = HashMap::new();
        for (package, filename, build) in db.recorded_files(&packages).await? {
            recorded.entry(package).or_default().push((filename, build));
        }
        for package in &packages {
            directories.remove(package);
            scan.package(package, recorded.get(package).map_or(&[], Vec::as_slice))?;
        }
        scan.settle_strays(db).await?;
        after = last;
    }
    let directories: Vec<String> = directories.into_iter().collect();
    for slice in directories.chunks(SLICE as usize) {
        for package in slice {
            scan.package(package, &[])?;
        }
        scan.settle_strays(db).await?;
    }
    let Scan { mut findings, mut removable, rewrites, unsigned, .. } = scan;
    let mut stale = Vec::new();
    let (mut lost_logs, mut logged, mut after) = (Vec::new(), 0, i64::MIN);
    loop {
        let builds = db.logged_builds_after(after, SLICE).await?;
        let Some(&(last, _)) = builds.last() else { break };
        logged += builds.len();
        for (build_id, package) in builds {
            let path = layout.log(build_id);
            if !path.exists() {
                findings.missing_logs.push(path);
                lost_logs.push((build_id, package));
            }
        }
        after = last;
    }
    // A transfer (`<id>.expect`, `<id>.part`) is as old as its newest file: its record is
    // written once, its bytes as they come.
    let mut transfers: HashMap<String, Vec<PathBuf>> = HashMap::new();
    for name in dir_names(&check.staging_dir)? {
        let id = name.split('.').next().unwrap_or(&name).to_string();
        transfers.entry(id).or_default().push(check.staging_dir.join(name));
    }
    for paths in transfers.into_values() {
        let age = paths.iter().filter_map(|path| age_of(path, now)).min();
        if age.is_some_and(|age| age >= check.abandon_after) {
            if age.is_some_and(|age| age >= check.abandon_after.saturating_add(check.min_age)) {
                stale.extend(paths.iter().cloned());
            }
            findings.stale_staging.extend(paths);
        }
    }
    findings.unrecorded.sort();
    findings.missing.sort();
    findings.dead_links.sort();
    findings.missing_logs.sort();
    findings.missing_provenance.sort();
    findings.stale_staging.sort();
    if !check.repair {
        return Ok(findings);
    }

    // Measured, like `files_seen`, in wheels and their METADATA: statements go with them.
    let removable_files = removable.iter().filter(|path| !path.to_string_lossy().ends_with(provenance::SUFFIX)).count();
    let massive = !check.force
        && removable_files > MASS_REMOVAL_FILES && removable_files as f64 > MASS_REMOVAL_SHARE * findings.files_seen as f64;
    if massive {
        findings.withheld = Some(format!(
            "{removable_files} of the {} files in the tree would go, which looks like the wrong database or output path rather than lost records; \
             check --dsn and --output-path, then run piw-check --repair --force",
            findings.files_seen
        ));
        removable.clear();
    }
    for path in removable.into_iter().chain(stale) {
        match fs::remove_file(&path) {
            Ok(()) => findings.repaired.push(format!("removed {}", path.display())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => findings.repaired.push(format!("could not remove {}: {e}", path.display())),
        }
    }
    // Every log missing usually means the wrong output path: nothing is written then.
    if !check.force && lost_logs.len() > MASS_REMOVAL_FILES && lost_logs.len() as f64 > MASS_REMOVAL_SHARE * logged as f64 {
        findings.withheld.get_or_insert_with(|| {
            format!(
                "{} of the {logged} build logs are missing, which looks like the wrong output path rather than lost logs; \
                 check --output-path, then run piw-check --repair --force",
                lost_logs.len()
            )
        });
        lost_logs.clear();
    }
    let signing_key = check.signing_key.as_ref().filter(|_| !unsigned.is_empty());
    // Logs and statements are written again as the index writer writes them.
    let writer = match lost_logs.is_empty() && signing_key.is_none() {
        true => None,
        false => Some(IndexWriter::open(layout.clone(), PageOptions::default())?),
    };
    if let Some(writer) = writer.as_ref().filter(|_| !lost_logs.is_empty()) {
        let mut packages = HashSet::new();
        for (build_id, package) in lost_logs {
            let Some(output) = db.build_output(build_id).await? else { continue };
            match writer.write_log(build_id, &output) {
                Ok(()) => findings.repaired.push(format!("wrote the log of build {build_id} again from the database")),
                Err(e) => findings.repaired.push(format!("could not write the log of build {build_id}: {e}")),
            }
            packages.insert(package);
        }
        // Project pages link only the logs that exist.
        for package in packages {
            let rewrite = PendingRewrite { package, added_at: chrono::Utc::now(), scope: RewriteScope::Project };
            db.add_rewrite(&rewrite).await?;
        }
    }
    if let (Some(key), Some(writer)) = (signing_key, writer.as_ref()) {
        let builds: Vec<i64> = unsigned.iter().map(|(_, _, build)| *build).collect::<HashSet<_>>().into_iter().collect();
        let missing: HashSet<&str> = unsigned.iter().map(|(_, filename, _)| filename.as_str()).collect();
        let mut written = 0;
        for file in db.build_provenance(&builds).await?.into_iter().filter(|file| missing.contains(file.filename.as_str())) {
            match writer.write_provenance(&file.package, &file.filename, &provenance::sign(&file.statement(), key)) {
                Ok(()) => written += 1,
                Err(e) => findings.repaired.push(format!("could not write the provenance of {}: {e}", file.filename)),
            }
        }
        findings.repaired.push(format!("wrote {written} provenance statements again from the database"));
        // Project pages link only the statements that exist.
        for package in unsigned.iter().map(|(package, _, _)| package.clone()).collect::<HashSet<_>>() {
            let rewrite = PendingRewrite { package, added_at: chrono::Utc::now(), scope: RewriteScope::Project };
            db.add_rewrite(&rewrite).await?;
        }
    }
    for package in rewrites {
        let rewrite = PendingRewrite { package: package.clone(), added_at: chrono::Utc::now(), scope: RewriteScope::Both };
        db.add_rewrite(&rewrite).await?;
        findings.repaired.push(format!("asked for the pages of {package} to be written again"));
    }
    Ok(findings)
}

/// Packages (and build logs) read from the database at a time.
const SLICE: i64 = 1000;

/// What the walk of the tree gathers, a package at a time.
struct Scan<'a> {
    layout: &'a Layout,
    min_age: Duration,
    now: SystemTime,
    findings: Findings,
    /// Files in a package's directory that no build of that package records, with the wheel
    /// they are or go with: strays unless another package records the wheel.
    unrecorded_here: Vec<(PathBuf, String)>,
    /// Strays old enough to remove.
    removable: Vec<PathBuf>,
    /// Packages whose simple page links missing files.
    rewrites: Vec<String>,
    /// Files with signed provenance whose statement is missing and may be written again:
    /// (package, file name, build).
    unsigned: Vec<(String, String, i64)>,
}

impl Scan<'_> {
    /// Whether `path` has not changed for the check's minimum age: only then is it repaired.
    fn old_enough(&self, path: &Path) -> bool {
        age_of(path, self.now).is_some_and(|age| age >= self.min_age)
    }

    /// Settles the files gathered in `unrecorded_here`: a file name is recorded once in the
    /// whole farm, so a file recorded under another package (a rename half done) is not a
    /// stray to remove.
    async fn settle_strays(&mut self, db: &mut Database) -> anyhow::Result<()> {
        let wheels: Vec<String> = self.unrecorded_here.iter().map(|(_, wheel)| wheel.clone()).collect::<HashSet<_>>().into_iter().collect();
        let mut recorded_elsewhere = HashSet::new();
        for names in wheels.chunks(SLICE as usize) {
            recorded_elsewhere.extend(db.recorded_among(names).await?);
        }
        for (path, wheel) in std::mem::take(&mut self.unrecorded_here) {
            if !recorded_elsewhere.contains(&wheel) {
                if self.old_enough(&path) {
                    self.removable.push(path.clone());
                }
                self.findings.unrecorded.push(path);
            }
        }
        Ok(())
    }

    /// Compares a package's directory in the tree with its recorded files: (file name, its
    /// build when it has signed provenance).
    fn package(&mut self, package: &str, recorded: &[(String, Option<i64>)]) -> anyhow::Result<()> {
        let dir = self.layout.simple_package(package);
        let listed = is_safe_name(package) && dir.is_dir();
        let names: HashSet<String> = if listed { dir_names(&dir)?.into_iter().collect() } else { HashSet::new() };
        let here: HashSet<&str> = recorded.iter().map(|(filename, _)| filename.as_str()).collect();
        for name in &names {
            let statement_of = name.strip_suffix(provenance::SUFFIX);
            let side_file_of = name.strip_suffix(".metadata").or(statement_of);
            let wheel = match side_file_of {
                Some(wheel) if wheel.ends_with(".whl") => wheel,
                _ if name.ends_with(".whl") => name.as_str(),
                _ => continue,
            };
            // Wheels and their METADATA, as before statements: the share a mass removal is
            // measured against.
            if statement_of.is_none() {
                self.findings.files_seen += 1;
            }
            if !here.contains(wheel) {
                self.unrecorded_here.push((dir.join(name), wheel.to_string()));
            }
        }
        if listed {
            // Links are percent-encoded names.
            let linkable: HashSet<String> = names.iter().map(|name| url_encode(name)).collect();
            let links = simple_page_links(&dir.join("index.html"))?;
            let dead: Vec<String> = links.into_iter().filter(|link| !linkable.contains(link)).collect();
            if !dead.is_empty() {
                self.rewrites.push(package.to_string());
                self.findings.dead_links.extend(dead.into_iter().map(|file| (package.to_string(), file)));
            }
        }
        for (filename, build) in recorded {
            if !names.contains(filename) {
                self.findings.missing_count += 1;
                if self.findings.missing.len() < KEPT {
                    self.findings.missing.push(dir.join(filename));
                }
                continue;
            }
            // Statements are written after their build is recorded: on a running farm one may
            // be a moment behind, which the writer's own retries cover.
            let statement = format!("{filename}{}", provenance::SUFFIX);
            if let (Some(build), false) = (build, names.contains(&statement)) {
                if self.old_enough(&dir.join(filename)) {
                    self.unsigned.push((package.to_string(), filename.clone(), *build));
                }
                self.findings.missing_provenance.push(dir.join(statement));
            }
        }
        Ok(())
    }
}

/// How long ago `path` last changed (its inode: a link into place counts), if it can be told.
fn age_of(path: &Path, now: SystemTime) -> Option<Duration> {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::symlink_metadata(path).ok()?;
    let changed = SystemTime::UNIX_EPOCH + Duration::new(u64::try_from(meta.ctime()).ok()?, u32::try_from(meta.ctime_nsec()).ok()?);
    let modified = meta.modified().ok()?;
    now.duration_since(changed.max(modified)).ok().or(Some(Duration::ZERO))
}

/// The names in `dir` (none when it does not exist), but for hidden ones: the index writer's
/// temporary pages.
fn dir_names(dir: &Path) -> io::Result<Vec<String>> {
    Ok(writer::dir_names(dir)?.into_iter().filter(|name| !name.starts_with('.')).collect())
}

/// The wheel files a project's simple page links, as its links name them (relative,
/// percent-encoded).
fn simple_page_links(page: &Path) -> anyhow::Result<Vec<String>> {
    let html = match fs::read_to_string(page) {
        Ok(html) => html,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => anyhow::bail!("cannot read {}: {e}", page.display()),
    };
    Ok(html
        .split("href=\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .map(|href| href.split('#').next().unwrap_or(href))
        .filter_map(|href| href.rsplit('/').next())
        .filter(|file| file.ends_with(".whl"))
        .map(str::to_string)
        .collect())
}
