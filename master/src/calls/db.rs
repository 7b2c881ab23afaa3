//! The database protocol: every task's calls to the oracles, through the load balancer.
//! Each call's reply type is the answer on success; any call can instead get an error, whose
//! kind says whether the request was refused or the database failed.

use std::collections::BTreeMap;
use std::time::Duration;

use piwheels_common::config::{HumanDuration, human_size};
use piwheels_common::provenance::BuildFacts;
use piwheels_common::protocols::{
    AccessRecord, BuildId, BuildResult, Dependencies, FailureClass, FailureKind, PackageVersion, RequeueRequest, SlaveId, SourceFile, Timestamp,
    TriageReport, WireError,
};
use serde::{Deserialize, Serialize};

#[cfg(test)]
use piwheels_common::arbitrary::{arb_timestamp, small_map, small_vec};
#[cfg(test)]
use proptest_derive::Arbitrary;

use super::calls;

/// A build ABI the farm builds for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct BuildAbi {
    /// The tag, e.g. `cp311`.
    pub tag: String,
    /// Position in the build order (lower first).
    pub position: i32,
    /// Non-empty when the ABI is not built, with the reason.
    pub skip: String,
}

/// A build to record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct BuildRecord {
    /// Slave id (0 for imports).
    pub built_by: SlaveId,
    /// The slave's label, kept for the history.
    pub builder: String,
    /// The release built.
    pub package: String,
    /// Its version.
    pub version: String,
    /// The builder's ABI.
    pub abi: String,
    /// When the build was handed out (an import: when it began), for its provenance.
    #[cfg_attr(test, proptest(strategy = "arb_timestamp()"))]
    pub started_at: Timestamp,
    /// The builder's (or importer's) key as the master authorized it (Z85); None without
    /// authentication.
    pub builder_key: Option<String>,
    /// What the builder builds with, as its hello said (empty for an import).
    #[cfg_attr(test, proptest(strategy = "small_map()"))]
    pub environment: BTreeMap<String, String>,
    /// The source the build was handed with (None for an import).
    pub source: Option<SourceFile>,
    /// What happened.
    pub result: BuildResult,
}

impl BuildRecord {
    /// The lines a build's log starts with: what was built, where, when, how it ended and
    /// what it took, from the master's record (the slave's log follows, its command first).
    pub fn log_header(&self) -> String {
        let result = &self.result;
        let limit = result.failure.and_then(FailureKind::limit_reason);
        let outcome = match (result.success, limit, result.exit_status) {
            (true, _, _) => format!("built {} wheel(s)", result.files.len()),
            (false, Some(why), _) => format!("failed: {why}"),
            (false, _, Some(code)) => format!("failed: its command exited with status {code}"),
            (false, _, None) => "failed: its command was killed".to_string(),
        };
        format!(
            "== piwheels build of {} {} for {} ==\n\
             builder      {} (slave {})\n\
             started      {}\n\
             outcome      {outcome}\n\
             wall time    {}\n\
             CPU time     {}\n\
             peak memory  {}\n\
             ==\n",
            self.package,
            self.version,
            self.abi,
            self.builder,
            self.built_by,
            self.started_at.format("%Y-%m-%d %H:%M:%S UTC"),
            HumanDuration(Duration::from_secs(result.duration.as_secs())),
            HumanDuration(Duration::from_secs(result.cpu_time.as_secs())),
            human_size(result.peak_memory),
        )
    }

    /// The rewrite of the package's pages this build calls for, added at `added_at`: both
    /// scopes after a success (new files), the project page only after a failure.
    pub fn pending_rewrite(&self, added_at: Timestamp) -> PendingRewrite {
        let scope = if self.result.success { RewriteScope::Both } else { RewriteScope::Project };
        PendingRewrite { package: self.package.clone(), added_at, scope }
    }
}

/// A release waiting in the build queue, with the source it is to be built from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct QueuedBuild {
    /// The release.
    pub release: PackageVersion,
    /// Its pinned source.
    pub source: SourceFile,
}

/// The build queue: per ABI, the releases waiting, newest first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct BuildQueues {
    /// Per ABI being built (every one, even with nothing waiting).
    #[cfg_attr(test, proptest(strategy = "small_map()"))]
    pub queues: BTreeMap<String, Vec<QueuedBuild>>,
    /// Releases remain whose state the queue has not worked out yet (the computation's time
    /// ran out): they are not in `queues`, and the queue should be computed again soon.
    pub unexamined: bool,
}

/// A cross-check waiting for a builder: a successful build to be built again by another
/// builder of its ABI, from the same source, and compared.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct QueuedCheck {
    /// The cross-check's id.
    pub check_id: i64,
    /// The release.
    pub release: PackageVersion,
    /// The source the build was made from.
    pub source: SourceFile,
    /// The label of the builder that made the build.
    pub builder: String,
    /// That builder's key, when the farm authenticates: another connection of it is the same
    /// builder.
    pub builder_key: Option<String>,
    /// The build's files: each file of the second build is compared with the one of the same
    /// wheel (its name without the build tag).
    #[cfg_attr(test, proptest(strategy = "small_vec()"))]
    pub files: Vec<String>,
}

/// What a cross-check found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub enum Verdict {
    /// The second build made the same wheels, member for member.
    Reproduced,
    /// The wheels differ: one line per differing file or member.
    Differs {
        /// What differs.
        #[cfg_attr(test, proptest(strategy = "small_vec()"))]
        differences: Vec<String>,
    },
    /// The second build failed for the package's own reasons.
    Failed {
        /// Why, with the last lines of its log.
        reason: String,
    },
}

/// A finished cross-check to record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct CheckRecord {
    /// The cross-check.
    pub check_id: i64,
    /// The second builder's label.
    pub builder: String,
    /// Its key, when the farm authenticates.
    pub builder_key: Option<String>,
    /// What it builds with.
    #[cfg_attr(test, proptest(strategy = "small_map()"))]
    pub environment: BTreeMap<String, String>,
    /// When the master handed it out.
    #[cfg_attr(test, proptest(strategy = "arb_timestamp()"))]
    pub started_at: Timestamp,
    /// How long the second build took.
    pub duration: Duration,
    /// What it found.
    pub verdict: Verdict,
}

/// What the cross-checks of one build found, for its project page.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct Reproducibility {
    /// The latest check's verdict; None while the first check waits for a builder.
    pub latest: Option<Verdict>,
    /// Builders that made the same wheels so far, the build's own included.
    pub builders: u32,
}

/// A file and its hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct FileHash {
    /// File name.
    pub filename: String,
    /// Lower-case hex SHA-256.
    pub sha256: String,
}

/// Which pages of a package to rewrite.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub enum RewriteScope {
    /// The project page and project JSON.
    Project,
    /// Those plus the package's simple index pages.
    Both,
}

/// A page rewrite waiting in the page buffer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct PendingRewrite {
    /// The package.
    pub package: String,
    /// When the latest request for it arrived.
    #[cfg_attr(test, proptest(strategy = "arb_timestamp()"))]
    pub added_at: Timestamp,
    /// What to rewrite.
    pub scope: RewriteScope,
}

/// A package whose pages were written from the database as `snapshot` saw it: its pending
/// rewrite is done if the snapshot saw the last request for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct RewriteWritten {
    /// The package.
    pub package: String,
    /// The snapshot the pages were made from, as [`DbReply::Projects`] gave it.
    pub snapshot: String,
}

/// Figures the database computes for the home page and monitors.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct DbStats {
    /// Distinct packages with at least one file.
    pub packages_built: u64,
    /// Builds in the last hour, per active ABI.
    #[cfg_attr(test, proptest(strategy = "small_map()"))]
    pub builds_last_hour: BTreeMap<String, u64>,
    /// Total duration of builds shorter than a week.
    pub builds_time: Duration,
    /// Total size of files, bytes.
    pub builds_size: u64,
    /// Files in the index.
    pub files_count: u64,
    /// Versions released in the last hour.
    pub new_last_hour: u64,
    /// Downloads of the farm's files in the last hour.
    pub downloads_last_hour: u64,
    /// Downloads of the farm's files in the last 30 days (today, UTC, and the 29 days before).
    pub downloads_last_month: u64,
    /// Downloads of the farm's files ever.
    pub downloads_all: u64,
    /// Cross-checks done whose builds made the same wheels.
    pub reproduced: u64,
    /// Cross-checks done whose builds made other wheels, or failed.
    pub not_reproduced: u64,
}

/// One package in the search index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct SearchEntry {
    /// Canonical name.
    pub package: String,
    /// Downloads of its files in the last 30 days (today, UTC, and the 29 days before).
    pub downloads_recent: u64,
    /// Downloads of its files ever.
    pub downloads_all: u64,
}

/// Build state of one release for one ABI, for project pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub enum AbiStatus {
    /// Built, with a file that serves this ABI.
    Success,
    /// The build failed.
    Fail,
    /// Not built on purpose (package, version or ABI skipped).
    Skip,
    /// Not built yet.
    Pending,
}

/// A file of a release, for project pages and the simple index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct ProjectFile {
    /// File name.
    pub filename: String,
    /// Size, bytes.
    pub size: u64,
    /// Lower-case hex SHA-256.
    pub sha256: String,
    /// Lower-case hex SHA-256 of the `.metadata` side file.
    pub metadata_sha256: Option<String>,
    /// ABI of the build that made it.
    pub builder_abi: String,
    /// The file's own ABI tag.
    pub abi_tag: String,
    /// The file's platform tag.
    pub platform_tag: String,
    /// `Requires-Python`.
    pub requires_python: Option<String>,
    /// When the file was published.
    #[cfg_attr(test, proptest(strategy = "arb_timestamp()"))]
    pub uploaded: Timestamp,
    /// Run-time needs.
    pub dependencies: Dependencies,
}

/// One release of a project.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct ReleaseData {
    /// Version string.
    pub version: String,
    /// When PyPI released it.
    #[cfg_attr(test, proptest(strategy = "arb_timestamp()"))]
    pub released: Timestamp,
    /// Yank reason, when yanked (may be empty).
    pub yanked: Option<String>,
    /// Why it is not built (the version's or the package's reason), empty when it is.
    pub skip: String,
    /// Its files.
    #[cfg_attr(test, proptest(strategy = "small_vec()"))]
    pub files: Vec<ProjectFile>,
    /// Build state per ABI, with the build's id where there is one.
    #[cfg_attr(test, proptest(strategy = "small_map()"))]
    pub abis: BTreeMap<String, (AbiStatus, Option<BuildId>)>,
    /// What the cross-checks of each ABI's build found, for the ABIs whose build has any.
    #[cfg_attr(test, proptest(strategy = "small_map()"))]
    pub reproducibility: BTreeMap<String, Reproducibility>,
}

/// Everything the index writer needs for one project.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct ProjectData {
    /// Canonical name.
    pub package: String,
    /// Display name (the most recently seen spelling).
    pub display_name: String,
    /// Summary from PyPI.
    pub description: String,
    /// Other spellings of the name.
    #[cfg_attr(test, proptest(strategy = "small_vec()"))]
    pub aliases: Vec<String>,
    /// Releases, in no particular order.
    #[cfg_attr(test, proptest(strategy = "small_vec()"))]
    pub releases: Vec<ReleaseData>,
    /// The builds the releases' cells name, by id.
    #[cfg_attr(test, proptest(strategy = "small_map()"))]
    pub builds: BTreeMap<BuildId, BuildSummary>,
}

/// What a project page says of a build.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct BuildSummary {
    /// When it was recorded.
    #[cfg_attr(test, proptest(strategy = "arb_timestamp()"))]
    pub built_at: Timestamp,
    /// Its builder's label.
    pub builder: String,
    /// How long it ran.
    pub duration: Duration,
    /// The last lines of its log, for a failed build (the error, usually); empty otherwise.
    #[cfg_attr(test, proptest(strategy = "small_vec()"))]
    pub last_lines: Vec<String>,
    /// Why it failed, once the triage has read it.
    pub cause: Option<FailureCause>,
}

/// Why a failed build failed, as the triage read it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct FailureCause {
    /// Its class.
    pub class: FailureClass,
    /// What was missing (empty when the class names nothing).
    pub detail: String,
    /// The Debian package that ships it, when the Contents index knows one.
    pub debian_package: Option<String>,
}

/// The pages' data of several projects, read from one database snapshot.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct ProjectsSnapshot {
    /// The ABIs builds are made for (every project page's columns).
    #[cfg_attr(test, proptest(strategy = "small_vec()"))]
    pub abis: Vec<BuildAbi>,
    /// The projects.
    #[cfg_attr(test, proptest(strategy = "small_vec()"))]
    pub data: Vec<ProjectData>,
    /// The snapshot they were read from (PostgreSQL's `pg_snapshot` as text), for
    /// [`ClearRewrites`].
    pub snapshot: String,
}

calls! {
    /// A call to the database, answered by an oracle with one [`DbReply`].
    requests DbRequest;
    /// An oracle's answer to a [`DbRequest`].
    replies DbReply;

    /// Every package name.
    AllPackages {} -> #[cfg_attr(test, proptest(strategy = "small_vec()"))] Vec<String>;
    /// Add a package.
    NewPackage {
        /// Canonical name.
        package: String,
        /// Skip reason, empty to build.
        skip: String,
        /// Summary.
        description: String,
    } -> bool;
    /// Add a version.
    NewVersion {
        /// Canonical name.
        package: String,
        /// Version.
        version: String,
        /// Release time; None means now.
        #[cfg_attr(test, proptest(strategy = "proptest::option::of(arb_timestamp())"))]
        released: Option<Timestamp>,
        /// Skip reason, empty to build.
        skip: String,
    } -> bool;
    /// Record a spelling of a package's name seen at a time.
    NewPackageName {
        /// Canonical name.
        package: String,
        /// The spelling.
        name: String,
        /// When it was seen; a later sighting never moves the time backwards.
        #[cfg_attr(test, proptest(strategy = "arb_timestamp()"))]
        seen: Timestamp,
    } -> ();
    /// Other spellings of a package's name.
    PackageAliases {
        /// Canonical name.
        package: String,
    } -> #[cfg_attr(test, proptest(strategy = "small_vec()"))] Vec<String>;
    /// Set a package's summary.
    SetDescription {
        /// Canonical name.
        package: String,
        /// Summary.
        description: String,
    } -> ();
    /// Set or clear a package's skip reason.
    SkipPackage {
        /// Canonical name.
        package: String,
        /// Reason, empty to build again.
        reason: String,
    } -> ();
    /// Set or clear a version's skip reason.
    SkipVersion {
        /// Canonical name.
        package: String,
        /// Version.
        version: String,
        /// Reason, empty to build again.
        reason: String,
    } -> ();
    /// Yank or unyank a version.
    YankVersion {
        /// Canonical name.
        package: String,
        /// Version.
        version: String,
        /// Some(reason) to yank, None to unyank.
        reason: Option<String>,
    } -> ();
    /// Delete a package with its versions, builds and files.
    DeletePackage {
        /// Canonical name.
        package: String,
    } -> ();
    /// Delete a version with its builds and files.
    DeleteVersion {
        /// Canonical name.
        package: String,
        /// Version.
        version: String,
    } -> ();
    /// Rename a package (PyPI rename event).
    RenamePackage {
        /// Old canonical name.
        from: String,
        /// New canonical name.
        to: String,
    } -> ();
    /// Does the package exist.
    PackageExists {
        /// Canonical name.
        package: String,
    } -> bool;
    /// Does the version exist.
    VersionExists {
        /// Canonical name.
        package: String,
        /// Version.
        version: String,
    } -> bool;
    /// Record a build and its files, and in the same transaction a pending rewrite of its
    /// package's pages added at `rewrite_at` (both scopes after a success, the project page
    /// after a failure), so that the index writer need not record it again. Gives the build's
    /// id.
    LogBuild {
        /// The build.
        build: Box<BuildRecord>,
        /// The pending rewrite's time, by the index writer's clock (the master's).
        #[cfg_attr(test, proptest(strategy = "arb_timestamp()"))]
        rewrite_at: Timestamp,
        /// Whether the build, when it succeeded, is to be cross-checked (the master's sample).
        cross_check: bool,
    } -> BuildId;
    /// Delete the builds (and files) of a version, or of every version when None.
    DeleteBuilds {
        /// Canonical name.
        package: String,
        /// Version, or None for all.
        version: Option<String>,
    } -> ();
    /// Files of a package.
    PackageFiles {
        /// Canonical name.
        package: String,
    } -> #[cfg_attr(test, proptest(strategy = "small_vec()"))] Vec<FileHash>;
    /// Files of a version.
    VersionFiles {
        /// Canonical name.
        package: String,
        /// Version.
        version: String,
    } -> #[cfg_attr(test, proptest(strategy = "small_vec()"))] Vec<FileHash>;
    /// Build a release again on one ABI, or on every ABI it has a build on, keeping its
    /// builds and files (`piw-rebuild build`); the answer is those ABIs.
    WantRebuild {
        /// Canonical name.
        package: String,
        /// Version.
        version: String,
        /// The ABI, or None for every ABI the release has a build on.
        abi: Option<String>,
        /// When it was asked, by the master's clock (which stamps builds' hand-out times too).
        #[cfg_attr(test, proptest(strategy = "arb_timestamp()"))]
        at: Timestamp,
    } -> #[cfg_attr(test, proptest(strategy = "small_vec()"))] Vec<String>;
    /// Cross-check the latest successful build of a release on one ABI, or on every ABI it
    /// has one on (`piw-rebuild cross-check`); the answer is those ABIs.
    WantCrossCheck {
        /// Canonical name.
        package: String,
        /// Version.
        version: String,
        /// The ABI, or None for every ABI.
        abi: Option<String>,
    } -> #[cfg_attr(test, proptest(strategy = "small_vec()"))] Vec<String>;
    /// The cross-checks waiting for a builder, per ABI, oldest first, at most `limit` per ABI.
    CheckQueue {
        /// Maximum entries per ABI.
        limit: u32,
    } -> #[cfg_attr(test, proptest(strategy = "small_map()"))] BTreeMap<String, Vec<QueuedCheck>>;
    /// Record what a cross-check found, with a rewrite of its package's project page added at
    /// `rewrite_at`. Refused when the cross-check is not waiting (done already, or its build
    /// removed).
    LogCheck {
        /// What the second build found.
        check: Box<CheckRecord>,
        /// The pending rewrite's time, by the index writer's clock (the master's).
        #[cfg_attr(test, proptest(strategy = "arb_timestamp()"))]
        rewrite_at: Timestamp,
    } -> ();
    /// Forget a waiting cross-check that no builder could finish (each attempt ended without
    /// a verdict); false when it was not waiting.
    ForgetCheck {
        /// The check.
        check_id: i64,
    } -> bool;
    /// What the provenance of the files of these builds says (builds recorded before
    /// provenance was kept have none), by file name.
    BuildProvenance {
        /// The builds.
        #[cfg_attr(test, proptest(strategy = "small_vec()"))]
        builds: Vec<BuildId>,
    } -> #[cfg_attr(test, proptest(strategy = "small_vec()"))] Vec<BuildFacts>;
    /// Under which name a build's file is published (see [`Database::name_for_file`](crate::db::Database::name_for_file)):
    /// its own, or the same wheel's name with the next build tag.
    NameForFile {
        /// Canonical name of the build's package.
        package: String,
        /// The file's name as its builder made it.
        filename: String,
        /// Lower-case hex SHA-256 of its bytes.
        sha256: String,
    } -> String;
    /// The name of a file the index already holds with this hash, if there is one.
    FileWithHash {
        /// Lower-case hex SHA-256.
        sha256: String,
    } -> Option<String>;
    /// Everything for a project's pages.
    Project {
        /// Canonical name.
        package: String,
    } -> Box<ProjectData>;
    /// Everything for the pages of several projects at once (the index writer's batches):
    /// the build ABIs and the projects' data in the order asked, leaving out packages that do
    /// not exist, all read from one snapshot, which comes with them.
    Projects {
        /// Canonical names.
        #[cfg_attr(test, proptest(strategy = "small_vec()"))]
        packages: Vec<String>,
    } -> ProjectsSnapshot;
    /// The ids of every build of a package, or of one version of it.
    /// Asked before deleting the rows, so that the index writer can remove their logs.
    BuildIds {
        /// Canonical name.
        package: String,
        /// Version, or None for all.
        version: Option<String>,
    } -> #[cfg_attr(test, proptest(strategy = "small_vec()"))] Vec<BuildId>;
    /// The ABIs.
    BuildAbis {} -> #[cfg_attr(test, proptest(strategy = "small_vec()"))] Vec<BuildAbi>;
    /// The build queue, per ABI, at most `limit` per ABI: only releases whose source is pinned.
    BuildQueue {
        /// Maximum entries per ABI.
        limit: u32,
    } -> BuildQueues;
    /// Releases that could be built but whose source is not pinned yet: those never looked
    /// for (newest first), then those whose retry is due.
    UnpinnedSources {
        /// Maximum releases.
        limit: u32,
    } -> #[cfg_attr(test, proptest(strategy = "small_vec()"))] Vec<PackageVersion>;
    /// Pin a release's source. A pin is never replaced: the answer says whether this call
    /// pinned it.
    PinSource {
        /// Canonical name.
        package: String,
        /// Version.
        version: String,
        /// The source file the index publishes.
        source: SourceFile,
        /// When the index says it was uploaded: the release's date from now on.
        #[cfg_attr(test, proptest(strategy = "proptest::option::of(arb_timestamp())"))]
        uploaded: Option<Timestamp>,
    } -> bool;
    /// Look for a release's source again `after` from now, not before (the index had none,
    /// or failed).
    PinLater {
        /// Canonical name.
        package: String,
        /// Version.
        version: String,
        /// How long to wait.
        after: Duration,
    } -> ();
    /// The last applied PyPI serial.
    PypiSerial {} -> i64;
    /// Store the last applied PyPI serial (never backwards).
    SetPypiSerial {
        /// The serial.
        serial: i64,
    } -> ();
    /// Home page figures.
    Statistics {} -> DbStats;
    /// Download counts of every package.
    SearchIndex {} -> #[cfg_attr(test, proptest(strategy = "small_vec()"))] Vec<SearchEntry>;
    /// Store access-log records.
    LogAccess {
        /// The records.
        #[cfg_attr(test, proptest(strategy = "small_vec()"))]
        records: Vec<AccessRecord>,
    } -> u64;
    /// Add or widen a pending page rewrite.
    AddRewrite {
        /// The rewrite.
        rewrite: PendingRewrite,
    } -> ();
    /// The pending page rewrites, oldest first.
    PendingRewrites {} -> #[cfg_attr(test, proptest(strategy = "small_vec()"))] Vec<PendingRewrite>;
    /// How many packages' page rewrites recorded at or before a time are not yet written.
    PendingRewriteCount {
        /// The time, by the master's clock (which the index writer stamps rewrites with).
        #[cfg_attr(test, proptest(strategy = "arb_timestamp()"))]
        until: Timestamp,
    } -> u64;
    /// Remove the pending rewrites whose pages were written and made durable, each if the
    /// snapshot its pages were made from saw the last request for it.
    ClearRewrites {
        /// Each package with the snapshot its pages were made from.
        #[cfg_attr(test, proptest(strategy = "small_vec()"))]
        written: Vec<RewriteWritten>,
    } -> ();
    /// Append to the audit log.
    Audit {
        /// Who (user and tool).
        actor: String,
        /// What was done.
        action: String,
        /// To what, with parameters.
        detail: String,
    } -> ();
    /// Apply a run of PyPI's changelog events (no removals, which go through `Remover`) in
    /// one transaction, set by set: the packages, their spellings, the releases (a source file
    /// makes one buildable; binary-only ones are skipped as such until a source comes), the
    /// yanks. Applying a run twice changes nothing. The answer says what changed.
    ApplyFeed {
        /// The events, in the changelog's order.
        #[cfg_attr(test, proptest(strategy = "small_vec()"))]
        events: Vec<FeedEvent>,
        /// The skip reason of new packages (empty: built).
        skip_new: String,
    } -> FeedApplied;
    /// Set the summaries of packages (those that no longer exist are left out); the answer
    /// names those whose summary changed, for their pages.
    SetDescriptions {
        /// Canonical name and summary.
        #[cfg_attr(test, proptest(strategy = "small_vec()"))]
        descriptions: Vec<(String, String)>,
    } -> #[cfg_attr(test, proptest(strategy = "small_vec()"))] Vec<String>;
    /// Classify up to `limit` failed builds not triaged yet, newest first (see
    /// [`crate::triage`]), storing each one's class and detail; the answer says what they were.
    TriageFailures {
        /// Most builds.
        limit: u32,
    } -> #[cfg_attr(test, proptest(strategy = "small_vec()"))] Vec<TriagedBuild>;
    /// Causes of failures that a Debian package may cure and that have not been looked up in
    /// the Contents index as it is now (`contents`, its identity), at most `limit`.
    UnresolvedCauses {
        /// The identity of the Contents files.
        contents: String,
        /// Most causes.
        limit: u32,
    } -> #[cfg_attr(test, proptest(strategy = "small_vec()"))] Vec<(FailureClass, String)>;
    /// Record what the Contents index (`contents`, its identity) says of each cause: the
    /// package that ships it, or None. The answer: the projects whose pages show one of them
    /// (a latest build failed for it), for their rewrites.
    RecordLookups {
        /// The identity of the Contents files.
        contents: String,
        /// Each cause with its package.
        #[cfg_attr(test, proptest(strategy = "small_vec()"))]
        found: Vec<(FailureClass, String, Option<String>)>,
    } -> #[cfg_attr(test, proptest(strategy = "small_vec()"))] Vec<String>;
    /// The failed releases by cause (`piw-triage report`).
    Triage {
        /// Only this ABI.
        abi: Option<String>,
    } -> TriageReport;
    /// Queue again the releases whose latest build failed for a cause (`piw-triage requeue`),
    /// at `at` by the master's clock; the answer names them, each with its ABI, all of them,
    /// sorted.
    Requeue {
        /// Which.
        request: RequeueRequest,
        /// When it was asked, by the master's clock.
        #[cfg_attr(test, proptest(strategy = "arb_timestamp()"))]
        at: Timestamp,
    } -> #[cfg_attr(test, proptest(strategy = "small_vec()"))] Vec<(PackageVersion, String)>;
}

/// A changelog event as the PyPI follower applies it ([`ApplyFeed`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct FeedEvent {
    /// The canonical name.
    pub package: String,
    /// The name as PyPI spells it.
    pub name: String,
    /// The release (None for a new project).
    pub version: Option<String>,
    /// What happened.
    pub kind: FeedKind,
    /// When (a release's date, a spelling's sighting).
    #[cfg_attr(test, proptest(strategy = "arb_timestamp()"))]
    pub seen: Timestamp,
}

/// What a [`FeedEvent`] says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub enum FeedKind {
    /// A new project.
    Create,
    /// A source file was uploaded.
    Source,
    /// Only a binary file was uploaded.
    Binary,
    /// The release was yanked.
    Yank,
    /// The release was unyanked.
    Unyank,
}

/// What a run of changelog events changed ([`ApplyFeed`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct FeedApplied {
    /// Packages added.
    #[cfg_attr(test, proptest(strategy = "small_vec()"))]
    pub new_packages: Vec<String>,
    /// Releases added.
    #[cfg_attr(test, proptest(strategy = "small_vec()"))]
    pub new_versions: Vec<PackageVersion>,
    /// Releases known as binary only that a source file made buildable.
    #[cfg_attr(test, proptest(strategy = "small_vec()"))]
    pub buildable: Vec<PackageVersion>,
    /// Releases whose yank changed.
    #[cfg_attr(test, proptest(strategy = "small_vec()"))]
    pub yanks: Vec<PackageVersion>,
}

/// A failed build as the triage classified it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct TriagedBuild {
    /// The build.
    pub build_id: BuildId,
    /// Its release.
    pub release: PackageVersion,
    /// Its builder's ABI.
    pub abi: String,
    /// When it was recorded.
    #[cfg_attr(test, proptest(strategy = "arb_timestamp()"))]
    pub built_at: Timestamp,
    /// Whether it is its release's latest build on the ABI (the one its project page shows).
    pub latest: bool,
    /// Its class.
    pub class: FailureClass,
    /// What was missing (empty when the class names nothing).
    pub detail: String,
    /// The Debian package that ships it, when the Contents index was asked already.
    pub debian_package: Option<String>,
}
