//! The source pinner: finds, for each release waiting to be built, its source distribution on
//! the simple index the slaves build from (`--pypi-simple`) and pins the file's name, URL and
//! SHA-256 in the database ([`PinSource`]). Only pinned releases are queued, and a slave
//! builds from exactly the pinned bytes, so what the index publishes when the master first
//! looks is what every build uses, whoever serves the file later.
//!
//! Releases come from the database, not from the follower's events: releases added by
//! piw-add or by a follower that was down are pinned the same way, and a pin lost to a
//! database failure is tried again at the next round. A release the index has no usable
//! source for (yet) is looked for again after [`RECHECK_AFTER`]; one whose project's page
//! failed while others did not, after [`RETRY_FAILED`]: neither holds up the others. An index
//! that fails for every project is down: the releases keep their place, and it is asked less
//! often, doubling from the interval up to [`MAX_BACKOFF`].
//!
//! A pin also dates its release by the source's upload time, when the index gives it (PEP
//! 700): a release added by piw-add is then shown with the day it was published, not the day
//! it was added.
//!
//! Sockets: a [`DbClient`] to the oracles; a PUSH to the architect
//! ([`crate::wiring::ARCHITECT`]) once new pins may have grown the queue; a client of the
//! index writer ([`crate::wiring::WEB`]) for the project pages of releases it dated.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use piwheels_common::protocols::{ErrorKind, PackageVersion};
use piwheels_common::task::{Context, PauseMode, Task};
use piwheels_common::transport::{Client, Sender};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::calls::db::{PinLater, PinSource, RewriteScope, UnpinnedSources};
use crate::calls::tasks::{ArchitectTrigger, WebReply, WebRequest};
use crate::db_client::DbClient;
use crate::pypi::simple::{ListedSource, SimpleClient, SimpleError, source_of};
use crate::wiring::{self, TaskName};

/// Releases looked at per round; a full round is followed by another at once.
pub const BATCH: u32 = 200;
/// Projects' pages fetched at once (the index is a shared service).
const PAGE_REQUESTS: usize = 8;
/// How long a release the index had no usable source for waits before it is looked for again.
pub const RECHECK_AFTER: Duration = Duration::from_secs(15 * 60);
/// How long a release whose project's page failed (while others did not) waits before it is
/// looked for again.
pub const RETRY_FAILED: Duration = Duration::from_secs(60);
/// Longest wait between rounds while the index keeps failing.
pub const MAX_BACKOFF: Duration = Duration::from_secs(600);

/// Where to find sources.
#[derive(Debug, Clone)]
pub struct PinnerConfig {
    /// The simple index (`<url>/<project>/`), read in its PEP 691 JSON form.
    pub index_url: String,
    /// How often to look for releases to pin.
    pub interval: Duration,
    /// How long one request to the index may take.
    pub timeout: Duration,
}

/// The pinner's sockets.
#[derive(Debug)]
pub struct Sockets {
    db: DbClient,
    architect: Sender<ArchitectTrigger>,
    web: Client<WebRequest, WebReply>,
}

impl Sockets {
    /// Connects to the oracles (each request waits at most `db_timeout`), the architect and
    /// the index writer.
    pub fn open(ctx: &zmq::Context, db_timeout: Duration) -> anyhow::Result<Sockets> {
        Ok(Sockets {
            db: wiring::DB.caller(ctx, TaskName::SourcePinner, db_timeout)?,
            architect: wiring::ARCHITECT.push(ctx, TaskName::SourcePinner)?,
            web: wiring::WEB.client(ctx, TaskName::SourcePinner)?,
        })
    }

    /// Asks the index writer to rewrite a project's page (a release's date changed; the pin
    /// recorded the rewrite); a failure costs only freshness.
    fn rewrite(&self, package: &str) {
        if let Err(e) = (WebRequest::Recorded { package: package.into(), scope: RewriteScope::Project }).send_to(&self.web) {
            tracing::warn!("the rewrite of {package} was not taken (it is recorded, and done at the next start): {e}");
        }
    }
}

/// The pinner's one timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    /// Time for a round.
    Round,
}

/// What one round did.
#[derive(Debug, Default, PartialEq, Eq)]
struct Round {
    /// Releases looked at.
    asked: usize,
    /// Releases pinned.
    pinned: usize,
    /// Releases the index has no source for.
    missing: usize,
    /// Projects whose pages could not be had, when the index gave none (it is down).
    failed: usize,
}

/// The source pinner.
#[derive(Debug)]
pub struct SourcePinner {
    config: PinnerConfig,
    runtime: tokio::runtime::Runtime,
    index: SimpleClient,
    /// While the index keeps failing: the wait before the next round, and when that ends.
    backoff: Option<(Duration, Instant)>,
}

impl SourcePinner {
    /// A pinner of sources from the index in `config`.
    pub fn new(config: &PinnerConfig) -> anyhow::Result<SourcePinner> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let index = SimpleClient::new(&config.index_url, config.timeout)?;
        tracing::info!("pinning sources from {}", config.index_url);
        Ok(SourcePinner { config: config.clone(), runtime, index, backoff: None })
    }

    /// Pins what it can of one batch of unpinned releases.
    fn round(&mut self, sockets: &Sockets) -> anyhow::Result<Round> {
        let releases = sockets.db.call(UnpinnedSources { limit: BATCH })?;
        let mut round = Round { asked: releases.len(), ..Round::default() };
        let mut by_project: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for PackageVersion { package, version } in releases {
            by_project.entry(package).or_default().push(version);
        }
        let projects: Vec<String> = by_project.keys().cloned().collect();
        let pages = self.fetch(&projects);
        // Releases whose page the index failed to give: looked for in vain if the index gave
        // others (the next round then asks for other releases first), left as they were if
        // it gave none (it is down: their order is kept for when it is back).
        let mut unavailable = Vec::new();
        for ((project, versions), page) in by_project.into_iter().zip(pages) {
            let sources = match page {
                Ok(sources) => sources,
                Err(SimpleError::NotFound(_)) => Vec::new(),
                Err(e) => {
                    tracing::warn!("cannot pin the sources of {project}: {e}");
                    round.failed += 1;
                    match e {
                        SimpleError::Unavailable(_) => unavailable.push((project, versions)),
                        // A page that is not what the pinner can read stays so for a while.
                        _ => later(sockets, &project, versions, RECHECK_AFTER)?,
                    }
                    continue;
                }
            };
            let mut dated = false;
            for version in versions {
                let source = source_of(&sources, &project, &version).cloned();
                match source {
                    Some(source) => {
                        if self.pin(sockets, &project, &version, &source)? {
                            tracing::info!("pinned {project} {version} to {} (sha256 {})", source.file.filename, source.file.sha256);
                            round.pinned += 1;
                            dated |= source.uploaded.is_some();
                        }
                    }
                    None => {
                        tracing::debug!("no source of {project} {version} on the index yet");
                        later(sockets, &project, vec![version], RECHECK_AFTER)?;
                        round.missing += 1;
                    }
                }
            }
            if dated {
                sockets.rewrite(&project);
            }
        }
        if round.pinned + round.missing > 0 {
            for (project, versions) in unavailable {
                later(sockets, &project, versions, RETRY_FAILED)?;
            }
            round.failed = 0;
        }
        Ok(round)
    }

    /// Pins `source`; true when this call pinned it. A pin the database refuses is looked for
    /// again after [`RECHECK_AFTER`], so that it does not come first again at the next round.
    fn pin(&self, sockets: &Sockets, project: &str, version: &str, source: &ListedSource) -> anyhow::Result<bool> {
        let call = PinSource { package: project.to_string(), version: version.to_string(), source: source.file.clone(), uploaded: source.uploaded };
        match sockets.db.call(call) {
            Ok(pinned) => Ok(pinned),
            Err(e) if e.answered().is_some_and(|error| error.kind == ErrorKind::Refused) => {
                tracing::warn!("cannot pin {project} {version} to {}: {e}", source.file.url);
                later(sockets, project, vec![version.to_string()], RECHECK_AFTER)?;
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The source files of each project, fetched a few at a time, in the order asked.
    fn fetch(&self, projects: &[String]) -> Vec<Result<Vec<ListedSource>, SimpleError>> {
        self.runtime.block_on(async {
            let limit = Arc::new(Semaphore::new(PAGE_REQUESTS));
            let mut requests = JoinSet::new();
            for (i, project) in projects.iter().enumerate() {
                let (index, project, limit) = (self.index.clone(), project.clone(), Arc::clone(&limit));
                requests.spawn(async move {
                    let _permit = limit.acquire_owned().await;
                    (i, index.sources(&project).await)
                });
            }
            let mut pages: Vec<Result<_, SimpleError>> =
                projects.iter().map(|p| Err(SimpleError::Unavailable(format!("{p}: the request was lost")))).collect();
            while let Some(done) = requests.join_next().await {
                if let Ok((i, page)) = done {
                    pages[i] = page;
                }
            }
            pages
        })
    }
}

impl Task for SourcePinner {
    type Sockets = Sockets;
    type Event = Timer;
    const PAUSE: PauseMode = PauseMode::Timers;

    fn timers(&self) -> Vec<(Timer, Duration)> {
        vec![(Timer::Round, self.config.interval)]
    }

    fn handle(&mut self, _event: Timer, sockets: &mut Sockets, ctx: &mut Context<'_, Timer>) -> anyhow::Result<()> {
        let now = ctx.now();
        if self.backoff.is_some_and(|(_, until)| now < until) {
            return Ok(());
        }
        let round = self.round(sockets)?;
        if round.pinned > 0 {
            let reason = format!("{} sources pinned", round.pinned);
            sockets.architect.send(&ArchitectTrigger::Refresh { reason }, Duration::from_secs(1))?;
        }
        if round.failed > 0 {
            // Nothing was had from the index: ask it less often until it answers.
            let wait = self.backoff.map_or(self.config.interval, |(wait, _)| (wait * 2).min(MAX_BACKOFF));
            tracing::warn!("the index failed for every project asked; trying again in {wait:?}");
            self.backoff = Some((wait, now + wait));
        } else {
            self.backoff = None;
            if round.asked >= BATCH as usize {
                // A backlog (a new farm, an upgrade, a large piw-add): go on at once. Every
                // release of this round was pinned or noted as looked for.
                ctx.schedule(Timer::Round, Duration::ZERO);
            }
        }
        Ok(())
    }
}

/// Has the pinner look for the sources of `versions` of `project` again `after` from now.
fn later(sockets: &Sockets, project: &str, versions: Vec<String>, after: Duration) -> anyhow::Result<()> {
    for version in versions {
        sockets.db.call(PinLater { package: project.to_string(), version, after })?;
    }
    Ok(())
}
