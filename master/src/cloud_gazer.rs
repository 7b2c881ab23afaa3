//! CloudGazer, the PyPI follower: reads PyPI's changelog from the last serial applied and
//! applies each batch to the database through the oracles as soon as it arrives: its events
//! in runs, each run one transaction of set statements ([`ApplyFeed`]: new projects and
//! releases, a release built only once it has a source file, yanks and unyanks), a removal
//! between runs; then stores the serial, so a restart goes on where it stopped. The projects'
//! summaries are fetched afterwards, a few at a time between polls, and never hold back the
//! releases. PyPI errors of any kind make it back off (doubling from the poll interval up to
//! [`MAX_BACKOFF`]); it never stops over them.
//!
//! A removal goes through [`Remover`] (rows, queues, builds in flight, files and pages
//! together). PyPI logs a rename as the removal of the old project and the creation of the
//! new one, so a renamed project's releases are built afresh under its new name.
//!
//! Sockets: a [`DbClient`] to the oracles; a PUSH to the architect
//! ([`crate::wiring::ARCHITECT`]) to say the queue may have changed; REQs to the
//! index writer (page rewrites) and, through [`Remover`], to the slave driver.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use chrono::DateTime;
use piwheels_common::names::canonicalize;
use piwheels_common::transport::{Client, Sender};
use piwheels_common::task::{Context, PauseMode, Task};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::calls::db::{ApplyFeed, FeedEvent, FeedKind, PypiSerial, RewriteScope, SetDescriptions, SetPypiSerial};
use crate::calls::tasks::{ArchitectTrigger, WebReply, WebRequest};
use crate::db_client::DbClient;
use crate::removal::Remover;
use crate::pypi::description::DescriptionClient;
use crate::pypi::events::{Dedup, Event, EventKind};
use crate::pypi::xmlrpc::ChangelogClient;
use crate::wiring::{self, TaskName};

/// Longest wait between attempts while PyPI keeps failing.
pub const MAX_BACKOFF: Duration = Duration::from_secs(600);
/// Summaries fetched at once (PyPI is a shared service).
const DESCRIPTION_REQUESTS: usize = 8;
/// Summaries fetched per turn of the task, between its polls of the changelog.
const DESCRIBE_BATCH: usize = 32;
/// Most events applied in one transaction: a page of PyPI's 50,000 rows is applied in a few,
/// each well within the database's deadline.
const RUN_LIMIT: usize = 5_000;
/// A batch this long says PyPI has more: the next is read at once rather than after the
/// interval (a trickle of new rows waits for the interval).
const CATCHING_UP: usize = 1_000;
/// Most summaries waiting to be fetched (a follower replaying years of the changelog would
/// otherwise queue one per project).
pub const MAX_UNDESCRIBED: usize = 10_000;
/// Longest package name or version accepted (the schema's column size).
const MAX_NAME: usize = 200;
/// Skip reason of releases that have only binary files on PyPI.
pub const BINARY_ONLY: &str = "binary only";

/// Where and how to follow PyPI.
#[derive(Debug, Clone)]
pub struct FollowerConfig {
    /// PyPI's XML-RPC endpoint.
    pub xmlrpc_url: String,
    /// PyPI's JSON API root (`<url>/<project>/json`), for project summaries; None: none.
    pub json_url: Option<String>,
    /// How often to ask for new events.
    pub interval: Duration,
    /// How long one request to PyPI may take.
    pub timeout: Duration,
    /// Skip reason given to new packages (development farms build nothing by default).
    pub skip_new: String,
}

/// The follower's sockets.
#[derive(Debug)]
pub struct Sockets {
    db: DbClient,
    architect: Sender<ArchitectTrigger>,
    web: Client<WebRequest, WebReply>,
    remover: Remover,
}

impl Sockets {
    /// Connects to the oracles (each database request waits at most `db_timeout`), the
    /// architect, the index writer and the slave driver.
    pub fn open(ctx: &zmq::Context, db_timeout: Duration) -> anyhow::Result<Sockets> {
        Ok(Sockets {
            db: wiring::DB.caller(ctx, TaskName::CloudGazer, db_timeout)?,
            architect: wiring::ARCHITECT.push(ctx, TaskName::CloudGazer)?,
            web: wiring::WEB.client(ctx, TaskName::CloudGazer)?,
            remover: Remover::connect(ctx, TaskName::CloudGazer)?,
        })
    }

    /// Asks the index writer to rewrite a package's pages; a failure costs only freshness.
    fn rewrite(&self, package: &str, scope: RewriteScope) {
        if let Err(e) = (WebRequest::Rewrite { package: package.into(), scope }).send_to(&self.web) {
            tracing::warn!("the rewrite of {package} was not taken: {e}");
        }
    }
}

/// CloudGazer's timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    /// Time to read the changelog.
    Poll,
    /// Summaries wait to be fetched.
    Describe,
}

/// What one batch of the changelog did, for the log.
#[derive(Debug, Default)]
struct Applied {
    packages: usize,
    versions: usize,
    buildable: usize,
    yanks: usize,
    removals: usize,
}

/// The PyPI follower.
#[derive(Debug)]
pub struct CloudGazer {
    config: FollowerConfig,
    runtime: tokio::runtime::Runtime,
    changelog: ChangelogClient,
    descriptions: Option<DescriptionClient>,
    serial: i64,
    dedup: Dedup,
    backoff: Option<Duration>,
    /// Projects whose summaries are to be fetched, oldest first, each once.
    undescribed: VecDeque<String>,
    waiting: HashSet<String>,
    /// Packages of runs whose transaction may have committed after the database's answer was
    /// given up on: read again, such a run changes nothing and says so, so their pages are
    /// rewritten once a batch is in.
    unsure: BTreeSet<String>,
    /// Whether the last batch was long enough that PyPI likely has more.
    catching_up: bool,
}

impl CloudGazer {
    /// Loads the last applied serial.
    pub fn start(sockets: &mut Sockets, config: &FollowerConfig) -> anyhow::Result<CloudGazer> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let changelog = ChangelogClient::new(&config.xmlrpc_url, config.timeout)?;
        let descriptions = config.json_url.as_deref().map(|url| DescriptionClient::new(url, config.timeout)).transpose()?;
        let serial = sockets.db.call(PypiSerial {})?;
        tracing::info!("following {} from serial {serial}", config.xmlrpc_url);
        Ok(CloudGazer {
            config: config.clone(),
            runtime,
            changelog,
            descriptions,
            serial,
            dedup: Dedup::new(1000),
            backoff: None,
            undescribed: VecDeque::new(),
            waiting: HashSet::new(),
            unsure: BTreeSet::new(),
            catching_up: false,
        })
    }

    /// Reads one batch of events and applies it, runs of them in one transaction each (a
    /// removal between runs); the serial is stored only after the whole batch is in. The
    /// projects' summaries are fetched afterwards ([`Timer::Describe`]), so that they never
    /// hold back the releases.
    fn poll(&mut self, sockets: &Sockets, ctx: &mut Context<'_, Timer>) -> anyhow::Result<()> {
        let db = &sockets.db;
        let raw = match self.runtime.block_on(self.changelog.since_serial(self.serial)) {
            Ok(raw) => raw,
            Err(e) => {
                let wait = self.backoff.map_or(self.config.interval, |b| (b * 2).min(MAX_BACKOFF));
                self.backoff = Some(wait);
                tracing::warn!("cannot read PyPI's changelog ({e}); trying again in {wait:?}");
                return Ok(());
            }
        };
        self.backoff = None;
        let Some(last) = raw.iter().map(|r| r.serial).max() else { return Ok(()) };
        // The releases seen are remembered only once the batch is in: a batch read again after
        // a failure must not find its own uploads already seen.
        let mut dedup = self.dedup.clone();
        let events: Vec<Event> = raw.iter().filter_map(|r| dedup.event(r)).collect();
        let mut applied = Applied::default();
        let mut run: Vec<FeedEvent> = Vec::new();
        let mut described: Vec<String> = Vec::new();
        for event in &events {
            let package = canonicalize(&event.name);
            // The spelling is kept too (`package_names`), and may be longer than its canonical
            // form: a run holding one too long for its column would fail at every reading.
            if package.len() > MAX_NAME || event.name.len() > MAX_NAME || event.version.as_ref().is_some_and(|v| v.len() > MAX_NAME) {
                tracing::warn!("ignoring serial {}: name or version longer than {MAX_NAME}", event.serial);
                continue;
            }
            let seen = DateTime::from_timestamp(event.timestamp, 0).unwrap_or_default();
            let kind = match event.kind {
                EventKind::Remove => {
                    // Nothing is stored on failure: the batch is read again at the next poll,
                    // and applying an event twice changes nothing.
                    self.apply(sockets, std::mem::take(&mut run), &mut applied)?;
                    sockets
                        .remover
                        .remove(db, &package, event.version.as_deref(), "", false)
                        .map_err(|e| anyhow::anyhow!("cannot apply serial {} (removal of {}): {e:#}", event.serial, event.name))?;
                    tracing::info!("removed {package} {}", event.version.as_deref().unwrap_or("(every version)"));
                    applied.removals += 1;
                    continue;
                }
                EventKind::Create => FeedKind::Create,
                EventKind::Source => FeedKind::Source,
                EventKind::Binary => FeedKind::Binary,
                EventKind::Yank => FeedKind::Yank,
                EventKind::Unyank => FeedKind::Unyank,
            };
            if matches!(kind, FeedKind::Create | FeedKind::Source | FeedKind::Binary) {
                described.push(package.clone());
            }
            run.push(FeedEvent { package, name: event.name.clone(), version: event.version.clone(), kind, seen });
            if run.len() >= RUN_LIMIT {
                self.apply(sockets, std::mem::take(&mut run), &mut applied)?;
            }
        }
        self.apply(sockets, run, &mut applied)?;
        db.call(SetPypiSerial { serial: last })?;
        for package in std::mem::take(&mut self.unsure) {
            sockets.rewrite(&package, RewriteScope::Both);
        }
        self.catching_up = raw.len() >= CATCHING_UP;
        tracing::info!(
            "applied serials {} to {last}: {} changelog rows, {} events ({} new packages, {} new releases, {} made buildable, {} yanks changed, {} removals; the other rows repeated what was known)",
            self.serial + 1,
            raw.len(),
            events.len(),
            applied.packages,
            applied.versions,
            applied.buildable,
            applied.yanks,
            applied.removals,
        );
        self.serial = last;
        self.dedup = dedup;
        self.want_descriptions(described);
        if !self.undescribed.is_empty() {
            ctx.schedule(Timer::Describe, Duration::ZERO);
        }
        Ok(())
    }

    /// Applies a run of events in one transaction and asks for the pages they change.
    fn apply(&mut self, sockets: &Sockets, run: Vec<FeedEvent>, applied: &mut Applied) -> anyhow::Result<()> {
        if run.is_empty() {
            return Ok(());
        }
        let (first, count) = (run[0].name.clone(), run.len());
        let packages: BTreeSet<String> = run.iter().map(|e| e.package.clone()).collect();
        let done = match sockets.db.call(ApplyFeed { events: run, skip_new: self.config.skip_new.clone() }) {
            Ok(done) => done,
            Err(e) => {
                self.unsure.extend(packages);
                anyhow::bail!("cannot apply a run of {count} events (from {first}): {e}");
            }
        };
        for package in &done.new_packages {
            tracing::debug!("added package {package}");
        }
        let mut pages: BTreeMap<&str, RewriteScope> = BTreeMap::new();
        for release in done.new_versions.iter().chain(&done.buildable) {
            tracing::debug!("added version {} {}", release.package, release.version);
            pages.entry(&release.package).or_insert(RewriteScope::Project);
        }
        for release in &done.yanks {
            pages.insert(&release.package, RewriteScope::Both);
        }
        for (package, scope) in pages {
            sockets.rewrite(package, scope);
        }
        applied.packages += done.new_packages.len();
        applied.versions += done.new_versions.len();
        applied.buildable += done.buildable.len();
        applied.yanks += done.yanks.len();
        Ok(())
    }

    /// Queues the summaries of `packages` (each once) to be fetched, up to
    /// [`MAX_UNDESCRIBED`]; beyond, a project's summary waits for its next upload.
    fn want_descriptions(&mut self, packages: Vec<String>) {
        if self.descriptions.is_none() {
            return;
        }
        let mut dropped = 0;
        for package in packages {
            if self.waiting.contains(&package) {
                continue;
            }
            if self.undescribed.len() >= MAX_UNDESCRIBED {
                dropped += 1;
                continue;
            }
            self.waiting.insert(package.clone());
            self.undescribed.push_back(package);
        }
        if dropped > 0 {
            tracing::warn!("{dropped} project summaries not fetched: {MAX_UNDESCRIBED} wait already (each is fetched at the project's next upload)");
        }
    }

    /// Fetches up to [`DESCRIBE_BATCH`] waiting summaries, [`DESCRIPTION_REQUESTS`] at a time,
    /// stores those PyPI gave and has the pages whose summary changed rewritten; says when to
    /// go on: at once while more wait, after the poll interval when PyPI gave none (it may be
    /// failing), or not at all. Names the database did not take wait again.
    fn describe(&mut self, sockets: &Sockets) -> (anyhow::Result<()>, Option<Duration>) {
        let Some(client) = &self.descriptions else { return (Ok(()), None) };
        let count = self.undescribed.len().min(DESCRIBE_BATCH);
        let names: Vec<String> = self.undescribed.iter().take(count).cloned().collect();
        let summaries = self.runtime.block_on(async {
            let limit = Arc::new(Semaphore::new(DESCRIPTION_REQUESTS));
            let mut requests = JoinSet::new();
            for (i, name) in names.iter().enumerate() {
                let (client, name, limit) = (client.clone(), name.clone(), Arc::clone(&limit));
                requests.spawn(async move {
                    let _permit = limit.acquire_owned().await;
                    (i, client.summary(&name).await)
                });
            }
            let mut summaries = vec![None; names.len()];
            while let Some(done) = requests.join_next().await {
                if let Ok((i, summary)) = done {
                    summaries[i] = summary;
                }
            }
            summaries
        });
        let descriptions: Vec<(String, String)> =
            names.iter().cloned().zip(summaries).filter_map(|(name, summary)| Some((name, summary?))).collect();
        let none = descriptions.is_empty();
        if !none {
            match sockets.db.call(SetDescriptions { descriptions }) {
                Ok(changed) => {
                    for package in changed {
                        sockets.rewrite(&package, RewriteScope::Project);
                    }
                }
                Err(e) => return (Err(e.into()), Some(self.config.interval)),
            }
        }
        for name in self.undescribed.drain(..count) {
            self.waiting.remove(&name);
        }
        match (self.undescribed.is_empty(), none) {
            (true, _) => (Ok(()), None),
            (false, false) => (Ok(()), Some(Duration::ZERO)),
            (false, true) => (Ok(()), Some(self.config.interval)),
        }
    }
}

impl Task for CloudGazer {
    type Sockets = Sockets;
    type Event = Timer;
    const PAUSE: PauseMode = PauseMode::Timers;

    fn timers(&self) -> Vec<(Timer, Duration)> {
        vec![(Timer::Poll, self.config.interval)]
    }

    fn handle(&mut self, event: Timer, sockets: &mut Sockets, ctx: &mut Context<'_, Timer>) -> anyhow::Result<()> {
        if event == Timer::Describe {
            let (result, next) = self.describe(sockets);
            if let Some(after) = next {
                ctx.schedule(Timer::Describe, after);
            }
            return result;
        }
        let before = self.serial;
        let result = self.poll(sockets, ctx);
        if self.serial != before && self.catching_up {
            // Catching up: the next page at once.
            ctx.schedule(Timer::Poll, Duration::ZERO);
        }
        if self.serial != before {
            let reason = format!("PyPI events up to serial {}", self.serial);
            if let Err(e) = sockets.architect.send(&ArchitectTrigger::Refresh { reason }, Duration::from_millis(100)) {
                tracing::warn!("cannot tell the architect about new events: {e}");
            }
        }
        if let Some(wait) = self.backoff
            && wait > self.config.interval
        {
            ctx.schedule(Timer::Poll, wait);
        }
        result
    }
}
