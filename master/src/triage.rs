//! The triage task: reads why failed builds failed and finds the Debian package that would
//! cure each missing header, library or tool.
//!
//! Every round it asks an oracle to classify a batch of failed builds not triaged yet
//! ([`TriageFailures`]: the oracle reads each log's end, applies [`classify::classify`] and
//! stores the class and detail), newest first, so that a farm's history is triaged in the
//! background while new failures come first. Each new failure is announced to monitors
//! with its cause; the project page of each release whose latest build it is is rewritten to
//! show it.
//!
//! With `--debian-contents`, once the failures are read, the causes not yet looked up in the
//! Contents files as they are now ([`UnresolvedCauses`]) are looked up in one pass over the
//! files per batch ([`contents::ContentsIndex`]) and recorded ([`RecordLookups`]); the pages
//! of the projects they concern are rewritten, and monitors told which package ships what.
//! Files that cannot be read are not read again until they change or [`UNREADABLE_RETRY`]
//! has passed; once every cause is looked up, the database is not asked for more until a
//! failure brings a new one or the files change.
//!
//! Page rewrites wait in a set and go to the index writer [`REWRITES`] per round, so that a
//! lookup concerning thousands of projects does not hold the task (or the index writer).
//!
//! Sockets: a [`DbClient`] to the oracles; a client of the index writer
//! ([`crate::wiring::WEB`]) for the rewrites; a PUSH to the status socket for notices.

pub mod classify;
pub mod contents;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use piwheels_common::config::HumanDuration;
use piwheels_common::protocols::{NoticeLevel, StatusEvent};
use piwheels_common::task::{Context, PauseMode, Task};
use piwheels_common::transport::{Client, Sender};

use crate::calls::db::{RecordLookups, RewriteScope, TriageFailures, TriagedBuild, UnresolvedCauses};
use crate::calls::tasks::{WebReply, WebRequest};
use crate::db_client::DbClient;
use crate::metrics::{TriageLabels, metrics};
use crate::wiring::{self, TaskName};
use contents::ContentsIndex;

/// Failed builds classified per round; a full round is followed by another at once.
pub const BATCH: u32 = 50;
/// Causes looked up per pass over the Contents files.
pub const LOOKUPS: u32 = 500;
/// How often the task looks for failures to triage.
pub const INTERVAL: Duration = Duration::from_secs(2);
/// Page rewrites asked for per round.
pub const REWRITES: usize = 200;
/// How long Contents files that could not be read wait before they are read again, when
/// they have not changed meanwhile.
pub const UNREADABLE_RETRY: Duration = Duration::from_secs(600);
/// Most causes a lookup's notice names.
const NAMED: usize = 10;
/// A failure older than this when triaged is history: counted in the log, not announced.
const NEWS: chrono::Duration = chrono::Duration::hours(1);

/// What the triage needs.
#[derive(Debug, Clone, Default)]
pub struct TriageConfig {
    /// Debian Contents files to look packages up in (none: no lookups).
    pub contents: Vec<PathBuf>,
}

/// The triage's sockets.
#[derive(Debug)]
pub struct Sockets {
    db: DbClient,
    web: Client<WebRequest, WebReply>,
    status: Sender<StatusEvent>,
}

impl Sockets {
    /// Connects to the oracles (each request waits at most `db_timeout`), the index writer
    /// and the status socket.
    pub fn open(ctx: &zmq::Context, db_timeout: Duration, status_endpoint: &str) -> anyhow::Result<Sockets> {
        Ok(Sockets {
            db: wiring::DB.caller(ctx, TaskName::Triage, db_timeout)?,
            web: wiring::WEB.client(ctx, TaskName::Triage)?,
            status: Sender::push(ctx, status_endpoint)?,
        })
    }

    fn notice(&self, ctx: &Context<'_, Timer>, level: NoticeLevel, text: String) {
        if let Err(e) = self.status.send(&StatusEvent::Notice { at: ctx.utc(), level, text }, Duration::from_secs(1)) {
            tracing::debug!("notice not sent: {e}");
        }
    }
}

/// The triage's one timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    /// Time for a round.
    Round,
}

/// The triage task.
#[derive(Debug)]
pub struct Triage {
    contents: ContentsIndex,
    /// The Contents files' identity (or the error that kept it from being had) when they last
    /// could not be read, and when: not read again until it changes or [`UNREADABLE_RETRY`]
    /// has passed (a permission changed does not change the identity).
    unreadable: Option<(String, Instant)>,
    /// The Contents files' identity once every cause has been looked up in them: the
    /// database is not asked again until it changes or a new cause comes.
    settled: Option<String>,
    /// Projects whose pages are to be rewritten.
    rewrites: BTreeSet<String>,
}

impl Triage {
    /// A triage looking packages up in the files of `config`.
    pub fn new(config: &TriageConfig) -> Triage {
        if config.contents.is_empty() {
            tracing::info!("no --debian-contents given: failures are classified, but no Debian package is looked up");
        }
        Triage { contents: ContentsIndex::new(config.contents.clone()), unreadable: None, settled: None, rewrites: BTreeSet::new() }
    }

    /// Asks for up to [`REWRITES`] of the waiting project pages to be rewritten; true when
    /// more wait and the index writer is taking them. One it does not take ends the round,
    /// the rest waiting for the next; that one costs only freshness (the next rewrite of its
    /// page shows the cause), so it is not asked for again.
    fn rewrite(&mut self, sockets: &Sockets) -> bool {
        for _ in 0..REWRITES {
            let Some(package) = self.rewrites.pop_first() else { return false };
            if let Err(e) = (WebRequest::Rewrite { package: package.clone(), scope: RewriteScope::Project }).send_to(&sockets.web) {
                tracing::warn!("the rewrite of {package} was not taken: {e}; {} more wait for the next round", self.rewrites.len());
                return false;
            }
        }
        !self.rewrites.is_empty()
    }

    /// Classifies a batch of failures; true when the batch was full (more are waiting).
    fn classify(&mut self, sockets: &Sockets, ctx: &Context<'_, Timer>) -> anyhow::Result<bool> {
        let triaged = sockets.db.call(TriageFailures { limit: BATCH })?;
        let mut history = 0;
        for build in &triaged {
            metrics().failures.get_or_create(&TriageLabels { abi: build.abi.clone(), class: build.class.name() }).inc();
            if ctx.utc() - build.built_at < NEWS {
                tracing::info!("build {}: {}", build.build_id, announce(build));
                sockets.notice(ctx, NoticeLevel::Info, announce(build));
            } else {
                history += 1;
            }
        }
        if history > 0 {
            tracing::info!("triaged {history} earlier failed build(s)");
        }
        if triaged.iter().any(|b| b.class.has_debian_package()) {
            self.settled = None;
        }
        self.rewrites.extend(triaged.iter().filter(|b| b.latest).map(|b| b.release.package.clone()));
        Ok(triaged.len() >= BATCH as usize)
    }

    /// Looks up the causes the Contents files have not been asked for; true when the batch
    /// was full.
    fn look_up(&mut self, sockets: &Sockets, ctx: &Context<'_, Timer>) -> anyhow::Result<bool> {
        if self.contents.is_empty() {
            return Ok(false);
        }
        let unreadable = |key: &str| self.unreadable.as_ref().is_some_and(|(k, at)| k == key && ctx.now() < *at + UNREADABLE_RETRY);
        let identity = match self.contents.identity() {
            Ok(identity) => identity,
            Err(e) => {
                let said = e.to_string();
                if !unreadable(&said) {
                    tracing::warn!("cannot read the Debian Contents index: {e}; no Debian package is looked up until it can be read");
                    self.unreadable = Some((said, ctx.now()));
                }
                return Ok(false);
            }
        };
        if unreadable(&identity) || self.settled.as_ref() == Some(&identity) {
            return Ok(false);
        }
        let causes = sockets.db.call(UnresolvedCauses { contents: identity.clone(), limit: LOOKUPS })?;
        if causes.is_empty() {
            self.settled = Some(identity);
            return Ok(false);
        }
        let packages = match self.contents.look_up(&causes) {
            Ok(packages) => packages,
            Err(e) => {
                tracing::warn!("cannot read the Debian Contents index: {e}; reading it again once it changes, or in {}", HumanDuration(UNREADABLE_RETRY));
                self.unreadable = Some((identity, ctx.now()));
                return Ok(false);
            }
        };
        self.unreadable = None;
        let found: Vec<_> = causes.iter().cloned().zip(packages).map(|((class, detail), package)| (class, detail, package)).collect();
        let mut named = Vec::new();
        for (class, detail, package) in &found {
            match package {
                Some(package) => {
                    tracing::info!("{} is in Debian package {package}", class.describe(detail));
                    named.push(format!("{detail} in {package}"));
                }
                None => tracing::info!("no Debian package in the Contents index ships what is missing: {}", class.describe(detail)),
            }
        }
        // One notice per batch: a farm's history would push the monitors' other notices out.
        if !named.is_empty() {
            let shown = named.iter().take(NAMED).cloned().collect::<Vec<_>>().join(", ");
            let more = named.len().saturating_sub(NAMED);
            let more = if more > 0 { format!(" and {more} more") } else { String::new() };
            sockets.notice(ctx, NoticeLevel::Info, format!("Debian packages found for {} missing file(s): {shown}{more}", named.len()));
        }
        let full = causes.len() >= LOOKUPS as usize;
        let projects = sockets.db.call(RecordLookups { contents: identity, found })?;
        self.rewrites.extend(projects);
        Ok(full)
    }
}

/// A new failure for the monitors: "foo 1.0 (cp311) failed: missing header zlib.h (Debian
/// package zlib1g-dev)".
fn announce(build: &TriagedBuild) -> String {
    let package = build.debian_package.as_ref().map(|p| format!(" (Debian package {p})")).unwrap_or_default();
    format!("{} {} ({}) failed: {}{package}", build.release.package, build.release.version, build.abi, build.class.describe(&build.detail))
}

impl Task for Triage {
    type Sockets = Sockets;
    type Event = Timer;
    const PAUSE: PauseMode = PauseMode::Timers;

    fn timers(&self) -> Vec<(Timer, Duration)> {
        vec![(Timer::Round, INTERVAL)]
    }

    fn handle(&mut self, _event: Timer, sockets: &mut Sockets, ctx: &mut Context<'_, Timer>) -> anyhow::Result<()> {
        let more_failures = self.classify(sockets, ctx)?;
        // The Contents files are read once the failures are, not once per batch of them.
        let more_causes = !more_failures && self.look_up(sockets, ctx)?;
        let more_rewrites = self.rewrite(sockets);
        if more_failures || more_causes || more_rewrites {
            // A backlog (a farm's history, a new Contents index, many pages): go on at once.
            ctx.schedule(Timer::Round, Duration::ZERO);
        }
        Ok(())
    }
}
