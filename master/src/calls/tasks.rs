//! The other protocols between the master's tasks: operators' slave commands, the build
//! queue, the architect's trigger, release notices, stats figures and page rewrites.

use std::collections::BTreeMap;

use piwheels_common::protocols::{BuildId, MasterStats, PackageVersion, SlaveAction, SlaveId, SlaveTarget, WireError};
use serde::{Deserialize, Serialize};

#[cfg(test)]
use piwheels_common::arbitrary::{small_map, small_vec};
#[cfg(test)]
use proptest_derive::Arbitrary;

use super::db::{PendingRewrite, QueuedBuild, QueuedCheck, RewriteScope, SearchEntry};

/// An operator's command for slaves, forwarded by the master's main loop; answered by
/// [`SlaveCommandReply`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct SlaveCommand {
    /// Which slaves.
    pub target: SlaveTarget,
    /// What to do.
    pub action: SlaveAction,
}

/// The slave driver's answer to a [`SlaveCommand`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub enum SlaveCommandReply {
    /// The command now applies to these slaves (none when none are connected).
    Applied {
        /// Ids of the slaves affected.
        #[cfg_attr(test, proptest(strategy = "small_vec()"))]
        slaves: Vec<SlaveId>,
    },
    /// No slave has this id.
    UnknownSlave {
        /// The id asked for.
        slave_id: SlaveId,
    },
}

// ------------------------------------------------------------------------------------------
// Build queue, architect trigger, release notices, stats
// ------------------------------------------------------------------------------------------

/// The architect's new build queues, sent to the slave driver.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct BuildQueueUpdate {
    /// Per ABI, the releases to build with their sources, newest release first.
    #[cfg_attr(test, proptest(strategy = "small_map()"))]
    pub queues: BTreeMap<String, Vec<QueuedBuild>>,
    /// Per ABI, the cross-checks waiting for a builder, oldest first.
    #[cfg_attr(test, proptest(strategy = "small_map()"))]
    pub checks: BTreeMap<String, Vec<QueuedCheck>>,
}

/// Something changed that may change the build queue; the architect debounces these.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub enum ArchitectTrigger {
    /// Recompute the queues soon.
    Refresh {
        /// What happened, for the log.
        reason: String,
    },
}

/// What the slave driver must apply at once about a release, rather than wait for a queue
/// computed after it: a package or version deleted (it is dropped from the queues and builds
/// of it in flight are abandoned) or asked to be built again. Answered by [`ReleaseAck`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub enum ReleaseNotice {
    /// A whole package.
    Package {
        /// Canonical name.
        package: String,
    },
    /// One version.
    Version {
        /// Canonical name.
        package: String,
        /// Version.
        version: String,
    },
    /// Releases an operator asked to build again (`piw-rebuild build`, `piw-triage
    /// requeue`): the hold that keeps a build just recorded from being handed out again is
    /// lifted, unless a slave builds it.
    BuildAgain {
        /// The releases.
        releases: Vec<PackageVersion>,
    },
}

/// The slave driver has applied a [`ReleaseNotice`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub enum ReleaseAck {
    /// Applied.
    Done,
}

/// Figures other tasks send the stats task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub enum StatsUpdate {
    /// Queue lengths per ABI (from the slave driver).
    Queues {
        /// Builds waiting per ABI.
        #[cfg_attr(test, proptest(strategy = "small_map()"))]
        lengths: BTreeMap<String, u64>,
    },
    /// Downloads logged since the last update (from the log ingester).
    Downloads {
        /// How many.
        count: u64,
    },
    /// Rewrite the home page and search index now (from the admin endpoint).
    RefreshHome,
    /// The environment drifts among the connected builders, for the home page (from the slave
    /// driver, whenever they change; empty when the builders agree).
    Drifts {
        /// One sentence each, naming no builder.
        #[cfg_attr(test, proptest(strategy = "small_vec()"))]
        notices: Vec<String>,
    },
}

// ------------------------------------------------------------------------------------------
// Page rewrites (tasks → page buffer → index writer)
// ------------------------------------------------------------------------------------------

/// A request to write or delete pages; answered by [`WebReply`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub enum WebRequest {
    /// Rewrite a package's pages (coalesced by the page buffer); the index writer records the
    /// rewrite in `rewrites_pending` first.
    Rewrite {
        /// Canonical name.
        package: String,
        /// Which pages.
        scope: RewriteScope,
    },
    /// Rewrite a package's pages whose rewrite the sender recorded in `rewrites_pending` itself,
    /// in the transaction of the change that calls for it (a source's pin, a cross-check):
    /// [`Rewrite`](WebRequest::Rewrite) without a second record.
    Recorded {
        /// Canonical name.
        package: String,
        /// Which pages.
        scope: RewriteScope,
    },
    /// Write the home page with these figures.
    Home {
        /// The farm's figures.
        stats: Box<MasterStats>,
        /// The cross-checks done so far.
        checks: CheckCounts,
        /// Environment drifts among the builders, one sentence each.
        #[cfg_attr(test, proptest(strategy = "small_vec()"))]
        drifts: Vec<String>,
    },
    /// Write the search index.
    Search {
        /// Every package with its download counts.
        #[cfg_attr(test, proptest(strategy = "small_vec()"))]
        entries: Vec<SearchEntry>,
    },
    /// Write the log of a build just recorded, and buffer the rewrite of its package's pages
    /// that [`LogBuild`](crate::calls::db::LogBuild) recorded with it.
    Built {
        /// The build.
        build_id: BuildId,
        /// The log text.
        output: String,
        /// The rewrite recorded with the build.
        rewrite: PendingRewrite,
    },
    /// Remove a package's files and build logs, then its pages (or rewrite them, when the
    /// package is still in the database, e.g. after only its builds were deleted).
    DeletePackage {
        /// Canonical name.
        package: String,
        /// Its files (looked up before the database rows went).
        #[cfg_attr(test, proptest(strategy = "small_vec()"))]
        files: Vec<String>,
        /// Its builds, whose logs go too (`DbRequest::BuildIds`, looked up before the rows went).
        #[cfg_attr(test, proptest(strategy = "small_vec()"))]
        builds: Vec<BuildId>,
    },
    /// Remove a version's files and build logs and rewrite the package's pages.
    DeleteVersion {
        /// Canonical name.
        package: String,
        /// Version.
        version: String,
        /// Its files (looked up before the database rows went).
        #[cfg_attr(test, proptest(strategy = "small_vec()"))]
        files: Vec<String>,
        /// Its builds, whose logs go too (looked up before the rows went).
        #[cfg_attr(test, proptest(strategy = "small_vec()"))]
        builds: Vec<BuildId>,
    },
}

/// How many cross-checks reproduced their builds, and how many did not (the second build made
/// other wheels, or failed), for the home page.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct CheckCounts {
    /// Reproduced.
    pub reproduced: u64,
    /// Not reproduced.
    pub not_reproduced: u64,
}

/// The page buffer's or index writer's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub enum WebReply {
    /// Done (or queued, for `Rewrite`).
    Done,
    /// Failed: the index writer could not write or remove what was asked (`Unavailable`), or
    /// could not read the request (`Refused`).
    Error(WireError),
}

/// How long the index writer may take to take a request (it only queues most of them).
const WEB_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl WebRequest {
    /// Hands the request to the index writer over `web`, waiting at most 10 s; the error
    /// says why it was not taken, for the caller's log or answer.
    pub fn send_to(&self, web: &piwheels_common::transport::Client<WebRequest, WebReply>) -> Result<(), String> {
        match web.request(self, WEB_TIMEOUT) {
            Ok(WebReply::Done) => Ok(()),
            Ok(WebReply::Error(WireError { message, .. })) => Err(format!("the index writer refused: {message}")),
            Err(e) => Err(format!("the index writer did not answer: {e}")),
        }
    }
}

piwheels_common::messages!(
    SlaveCommand,
    SlaveCommandReply,
    BuildQueueUpdate,
    ArchitectTrigger,
    ReleaseNotice,
    ReleaseAck,
    StatsUpdate,
    WebRequest,
    WebReply,
);
