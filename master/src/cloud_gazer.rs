//! CloudGazer, the PyPI follower: reads PyPI's changelog from the last serial applied and
//! applies each event to the database through the oracles — new projects and releases (a
//! release is built only once it has a source file), yanks and unyanks, removals — fetching
//! new projects' summaries concurrently, and stores the serial after each applied batch, so
//! a restart goes on where it stopped. PyPI errors of any kind make it back off (doubling from
//! the poll interval up to [`MAX_BACKOFF`]); it never stops over them.
//!
//! A removal goes through [`Remover`] (rows, queues, builds in flight, files and pages
//! together). PyPI logs a rename as the removal of the old project and the creation of the
//! new one, so a renamed project's releases are built afresh under its new name.
//!
//! Sockets: a [`DbClient`] to the oracles; a PUSH to the architect
//! ([`crate::wiring::ARCHITECT`]) to say the queue may have changed; REQs to the
//! index writer (page rewrites) and, through [`Remover`], to the slave driver.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::DateTime;
use piwheels_common::names::canonicalize;
use piwheels_common::transport::{Client, Sender};
use piwheels_common::task::{Context, PauseMode, Task};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::calls::db::{AllPackages, NewPackage, NewPackageName, NewVersion, PypiSerial, SetPypiSerial, RewriteScope, SetDescription, SkipVersion, VersionSkip, YankVersion};
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

/// CloudGazer's one timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    /// Time to read the changelog.
    Poll,
}

/// The PyPI follower.
#[derive(Debug)]
pub struct CloudGazer {
    config: FollowerConfig,
    runtime: tokio::runtime::Runtime,
    changelog: ChangelogClient,
    descriptions: Option<DescriptionClient>,
    packages: HashSet<String>,
    serial: i64,
    dedup: Dedup,
    backoff: Option<Duration>,
}

impl CloudGazer {
    /// Loads the known packages and the last applied serial.
    pub fn start(sockets: &mut Sockets, config: &FollowerConfig) -> anyhow::Result<CloudGazer> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let changelog = ChangelogClient::new(&config.xmlrpc_url, config.timeout)?;
        let descriptions = config.json_url.as_deref().map(|url| DescriptionClient::new(url, config.timeout)).transpose()?;
        let packages = sockets.db.call(AllPackages {})?.into_iter().collect();
        let serial = sockets.db.call(PypiSerial {})?;
        tracing::info!("following {} from serial {serial}", config.xmlrpc_url);
        Ok(CloudGazer { config: config.clone(), runtime, changelog, descriptions, packages, serial, dedup: Dedup::new(1000), backoff: None })
    }

    /// Reads one batch of events and applies it; the serial is stored only after the whole
    /// batch is in.
    fn poll(&mut self, sockets: &Sockets) -> anyhow::Result<()> {
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
        let descriptions = self.fetch_descriptions(&events);
        for event in &events {
            let description = descriptions.iter().find(|(name, _)| *name == event.name).and_then(|(_, d)| d.clone());
            if let Err(e) = self.apply(sockets, event, description) {
                // Nothing is stored: the batch is read again at the next poll, and applying an
                // event twice changes nothing.
                anyhow::bail!("cannot apply serial {} ({:?} {}): {e:#}", event.serial, event.kind, event.name);
            }
        }
        db.call(SetPypiSerial { serial: last })?;
        tracing::info!(
            "applied {} events up to serial {last} ({} changelog rows; the others repeated what was known)",
            events.len(),
            raw.len()
        );
        self.serial = last;
        self.dedup = dedup;
        Ok(())
    }

    /// Summaries of the projects these events create or first upload to, fetched a few at a
    /// time.
    fn fetch_descriptions(&self, events: &[Event]) -> Vec<(String, Option<String>)> {
        let Some(descriptions) = &self.descriptions else { return Vec::new() };
        let mut names: Vec<String> = events
            .iter()
            .filter(|e| matches!(e.kind, EventKind::Create | EventKind::Source | EventKind::Binary))
            .map(|e| e.name.clone())
            .collect();
        names.sort();
        names.dedup();
        let summaries = self.runtime.block_on(async {
            let limit = Arc::new(Semaphore::new(DESCRIPTION_REQUESTS));
            let mut requests = JoinSet::new();
            for (i, name) in names.iter().enumerate() {
                let (client, name, limit) = (descriptions.clone(), name.clone(), Arc::clone(&limit));
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
        names.into_iter().zip(summaries).collect()
    }

    fn apply(&mut self, sockets: &Sockets, event: &Event, description: Option<String>) -> anyhow::Result<()> {
        let db = &sockets.db;
        let package = canonicalize(&event.name);
        if package.len() > MAX_NAME || event.version.as_ref().is_some_and(|v| v.len() > MAX_NAME) {
            tracing::warn!("ignoring serial {}: name or version longer than {MAX_NAME}", event.serial);
            return Ok(());
        }
        let seen = DateTime::from_timestamp(event.timestamp, 0).unwrap_or_default();
        if event.kind == EventKind::Remove {
            // The rows go, so there is nothing to mark skipped: a release uploaded again later
            // is a new release.
            sockets.remover.remove(db, &package, event.version.as_deref(), "", false)?;
            if event.version.is_none() {
                self.packages.remove(&package);
            }
            tracing::info!("removed {package} {}", event.version.as_deref().unwrap_or("(every version)"));
            return Ok(());
        }
        if !self.packages.contains(&package) {
            let added = db.call(NewPackage {
                package: package.clone(),
                skip: self.config.skip_new.clone(),
                description: description.clone().unwrap_or_default(),
            })?;
            if added {
                tracing::info!("added package {package}");
            } else if let Some(description) = &description {
                db.call(SetDescription { package: package.clone(), description: description.clone() })?;
            }
            self.packages.insert(package.clone());
        }
        db.call(NewPackageName { package: package.clone(), name: event.name.clone(), seen })?;
        let Some(version) = &event.version else { return Ok(()) };
        match event.kind {
            EventKind::Yank => {
                db.call(YankVersion { package: package.clone(), version: version.clone(), reason: Some(String::new()) })?;
                sockets.rewrite(&package, RewriteScope::Both);
            }
            EventKind::Unyank => {
                db.call(YankVersion { package: package.clone(), version: version.clone(), reason: None })?;
                sockets.rewrite(&package, RewriteScope::Both);
            }
            _ => {
                let skip = if event.kind == EventKind::Source { "" } else { BINARY_ONLY };
                if db.call(NewVersion { package: package.clone(), version: version.clone(), released: Some(seen), skip: skip.into() })? {
                    tracing::info!("added version {package} {version}");
                    sockets.rewrite(&package, RewriteScope::Project);
                } else if event.kind == EventKind::Source {
                    // A source file arrived for a release known as binary only: build it now.
                    let current = db.call(VersionSkip { package: package.clone(), version: version.clone() })?;
                    if current.as_deref() == Some(BINARY_ONLY) {
                        db.call(SkipVersion { package, version: version.clone(), reason: String::new() })?;
                    }
                }
            }
        }
        Ok(())
    }
}

impl Task for CloudGazer {
    type Sockets = Sockets;
    type Event = Timer;
    const PAUSE: PauseMode = PauseMode::Timers;

    fn timers(&self) -> Vec<(Timer, Duration)> {
        vec![(Timer::Poll, self.config.interval)]
    }

    fn handle(&mut self, _event: Timer, sockets: &mut Sockets, ctx: &mut Context<'_, Timer>) -> anyhow::Result<()> {
        let before = self.serial;
        let result = self.poll(sockets);
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
