//! TheScribe, the index writer: keeps the static output tree (the simple index for pip and uv,
//! project pages and JSON, the home page, the search index and build logs) in step with the
//! database. `docs/index.md` describes the tree and the flow.
//!
//! Sockets: binds [`wiring::WEB`] (ROUTER: tasks' [`WebRequest`] → [`WebReply`]); connects to
//! the oracles ([`DbClient`], twice).
//!
//! One task does both jobs the original split in two (a coalescing buffer and a writer):
//!
//! * **Rewrites are buffered.** A `Rewrite { package, scope }` is recorded in the database
//!   first (`AddRewrite`, so a crash loses nothing), answered, and folded with later requests
//!   for the same package for at most [`IndexConfig::window`]; then the package's pages are
//!   written from fresh project data. Due packages are written in batches
//!   ([`IndexConfig::batch`]) that share one query, by several threads when a batch is large
//!   ([`IndexConfig::threads`]). A recorded build's rewrite comes with its log (`Built`) and
//!   was recorded by the build's own transaction. Written entries are cleared from the
//!   database at most every [`IndexConfig::sync_every`], all at once, after one `syncfs` has
//!   made everything written before it durable: a crash between the two only means those
//!   pages are written again. Pending entries the database holds at start-up (left by a crash
//!   or a stop) are written first thing.
//! * **Everything else is done at once** and answered when done: the home page, the search
//!   index, build logs, and deletions (files and logs removed, then the package's pages
//!   rewritten, or removed with everything of the package when it is gone from the database).
//! * **A full rewrite** runs at start-up when the tree was not completely written by this
//!   build's templates (a fresh tree, an upgrade that changed a page, an interrupted full
//!   rewrite): every package in batches, interleaved with requests (each batch's data is
//!   fetched over a second database connection while the previous batch is written), and every
//!   page or file of a package the database no longer knows is removed. The tree records the
//!   templates' fingerprint when it is done.
//!
//! Pausing stops the buffered writes and the full rewrite (timers); requests are still
//! answered, and logs, deletions and the home page are still written, so no caller blocks.

pub mod buffer;
pub mod layout;
pub mod pages;
pub mod writer;

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use piwheels_common::protocols::{BuildId, Timestamp, WireError};
use piwheels_common::provenance;
use piwheels_common::task::{Context, PauseMode, Task};
use piwheels_common::transport::Server;

use crate::calls::db::{AddRewrite, AllPackages, BuildAbi, BuildProvenance, ClearRewrites, PendingRewrite, PendingRewrites, ProjectData, Projects, ProjectsSnapshot, RewriteScope, RewriteWritten};
use crate::calls::tasks::{WebReply, WebRequest};
use crate::calls::CallError;
use crate::db_client::DbClient;
use crate::wiring::{self, TaskName};
use buffer::{RewriteBuffer, Waiting};
use layout::{Layout, is_safe_name};
use pages::TEMPLATES_FINGERPRINT;
use writer::{IndexWriter, PageOptions};


/// How often the task looks for due work even when nothing was scheduled (retries after
/// failures, and the first look at the database after start-up).
const TICK: Duration = Duration::from_secs(1);
/// Build logs kept for another try when they could not be written (a full disk); past this
/// many the oldest is left to the consistency check, which writes it from the database.
const MAX_UNWRITTEN_LOGS: usize = 256;

/// The index writer's settings; [`IndexConfig::new`] gives the defaults.
#[derive(Debug, Clone)]
pub struct IndexConfig {
    /// The output tree (the web server's root).
    pub output_path: PathBuf,
    /// How long a package's rewrite waits for more requests about it to fold in (default
    /// 1 s). Its pages are on disk at most this long after the first request, plus the
    /// writing time.
    /// A batch written because one package is due takes along those due within half a
    /// window, so that a steady stream of builds shares its database queries.
    pub window: Duration,
    /// How long to wait before trying a failed write again (default 10 s).
    pub retry: Duration,
    /// Packages written per batch, sharing one set of database queries (default 250); also
    /// the unit of the full rewrite between two looks at the request socket.
    pub batch: usize,
    /// Whether to make written pages durable (`syncfs`) before their pending entries are
    /// cleared from the database (default true). Without it a power cut can leave a page
    /// empty that the database says is written.
    pub durable: bool,
    /// How often written entries are made durable and cleared from the database (default
    /// 5 s): one `syncfs` and one query for all the pages written meanwhile.
    pub sync_every: Duration,
    /// Least time between two writes of the simple index's root when projects gain or lose
    /// their first file (default 10 s). Installers never read the root; on a large index it
    /// is tens of megabytes. A stop writes it if it is behind; deletions write it at once.
    pub root_every: Duration,
    /// Threads writing pages at once within a batch (default 4).
    pub threads: usize,
    /// What the pages link to.
    pub pages: PageOptions,
    /// The master's key, which signs each recorded file's provenance.
    pub signing_key: SigningKey,
}

impl IndexConfig {
    /// The defaults, writing to `output_path` and signing with `signing_key`.
    pub fn new(output_path: impl Into<PathBuf>, signing_key: SigningKey) -> IndexConfig {
        IndexConfig {
            output_path: output_path.into(),
            window: Duration::from_secs(1),
            retry: Duration::from_secs(10),
            batch: 250,
            durable: true,
            sync_every: Duration::from_secs(5),
            root_every: Duration::from_secs(10),
            threads: 4,
            pages: PageOptions::default(),
            signing_key,
        }
    }
}

/// The index writer's sockets.
#[derive(Debug)]
pub struct Sockets {
    web: Server<WebRequest, WebReply>,
    db: DbClient,
    /// A second connection, fetching a full rewrite's next batch while the last is written.
    prefetch: DbClient,
}

impl Sockets {
    /// Binds the request socket and connects to the oracles, whose answers wait at most
    /// `db_timeout`.
    pub fn open(ctx: &zmq::Context, db_timeout: Duration) -> anyhow::Result<Sockets> {
        Ok(Sockets {
            web: wiring::WEB.serve(ctx, TaskName::Scribe)?,
            db: wiring::DB.caller(ctx, TaskName::Scribe, db_timeout)?,
            prefetch: wiring::DB.caller(ctx, TaskName::Scribe, db_timeout)?,
        })
    }
}

/// What the index writer reacts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A request arrived.
    Request,
    /// Time to write due rewrites (and, the first time, to read the database's pending ones).
    Flush,
    /// Time for the next batch of a full rewrite.
    Sweep,
    /// Time to make written pages durable and clear their pending entries.
    Sync,
}

/// A full rewrite in progress.
#[derive(Debug)]
struct Sweep {
    /// Packages still to fetch.
    queue: VecDeque<String>,
    /// The next batch, fetched while the last one was written.
    next: Option<(Vec<String>, Fetched)>,
    total: usize,
    failed: usize,
    started: Instant,
}

/// Puts packages back at the front of a full rewrite's queue.
fn requeue(sweep: &mut Sweep, names: Vec<String>) {
    for name in names.into_iter().rev() {
        sweep.queue.push_front(name);
    }
}

/// What the pages of a batch of packages are made from.
#[derive(Debug)]
struct Fetched {
    abis: Vec<BuildAbi>,
    data: Vec<ProjectData>,
    /// The database snapshot they were read from.
    snapshot: String,
}

/// Fetches the ABIs and the data of `packages` (those that exist).
fn fetch(db: &DbClient, packages: Vec<String>) -> Result<Fetched, CallError> {
    let ProjectsSnapshot { abis, data, snapshot } = db.call(Projects { packages })?;
    Ok(Fetched { abis, data, snapshot })
}

/// The index writer.
#[derive(Debug)]
pub struct Scribe {
    config: IndexConfig,
    writer: IndexWriter,
    buffer: RewriteBuffer,
    /// Whether the database's pending rewrites were read (and a full rewrite decided on).
    started: bool,
    sweep: Option<Sweep>,
    /// Packages whose pages were written since the last [`Event::Sync`].
    unsynced: Vec<RewriteWritten>,
    /// When the root was last written by [`Scribe::flush`].
    root_written: Option<Instant>,
    /// Build logs that could not be written, tried again at each flush: (build, package, log).
    unwritten_logs: VecDeque<(BuildId, String, String)>,
    /// Builds whose files' provenance could not be written, tried again together once
    /// `unsigned_retry` has passed; past [`MAX_UNWRITTEN_LOGS`] the oldest is left to the
    /// consistency check.
    unsigned: VecDeque<(BuildId, String)>,
    /// When to try `unsigned` again.
    unsigned_retry: Instant,
}

/// How one package's write went.
type Outcome = Result<(), std::io::Error>;

impl Scribe {
    /// The writer's state: opens the output tree. The database is first asked on the first
    /// tick, so a database that is not up yet delays the work rather than failing the task.
    pub fn start(config: &IndexConfig) -> anyhow::Result<Scribe> {
        let mut writer = IndexWriter::open(Layout::new(&config.output_path), config.pages.clone())?;
        writer.set_public_key(provenance::public_key_pem(&config.signing_key.verifying_key()));
        Ok(Scribe {
            config: config.clone(),
            writer,
            buffer: RewriteBuffer::new(),
            started: false,
            sweep: None,
            unsynced: Vec::new(),
            root_written: None,
            unwritten_logs: VecDeque::new(),
            unsigned: VecDeque::new(),
            unsigned_retry: Instant::now(),
        })
    }

    /// Reads the pending rewrites the database holds and decides on a full rewrite.
    fn load(&mut self, sockets: &Sockets, ctx: &mut Context<'_, Event>) -> anyhow::Result<()> {
        let pending = sockets.db.call(PendingRewrites {})?;
        let now = ctx.now();
        if !pending.is_empty() {
            tracing::info!("{} page rewrites were pending", pending.len());
        }
        for p in pending {
            if is_safe_name(&p.package) {
                self.buffer.add(&p.package, p.scope, p.added_at, now, Duration::ZERO);
            }
        }
        if !self.writer.stamp_matches(&TEMPLATES_FINGERPRINT) {
            let known = sockets.db.call(AllPackages {})?;
            let known_set: HashSet<String> = known.iter().cloned().collect();
            let strays = self.writer.strays(&known_set)?;
            tracing::info!(
                "rewriting the whole index: {} packages, and removing {} that are gone",
                known.len(),
                strays.len()
            );
            let queue: VecDeque<String> = known.into_iter().filter(|n| is_safe_name(n)).chain(strays).collect();
            self.sweep = Some(Sweep { total: queue.len(), queue, next: None, failed: 0, started: now });
            ctx.schedule(Event::Sweep, Duration::ZERO);
        }
        self.started = true;
        Ok(())
    }

    /// Fetches the data of `packages` and writes (or removes) their pages. Fails as a whole
    /// only when the database does; each package's own outcome is in the result, in order,
    /// with the snapshot the data was read from.
    fn write_packages(
        &mut self,
        packages: &[(String, RewriteScope)],
        sockets: &Sockets,
        now: &Timestamp,
    ) -> Result<(Vec<Outcome>, String), CallError> {
        let names: Vec<String> = packages.iter().map(|(name, _)| name.clone()).collect();
        let fetched = fetch(&sockets.db, names)?;
        Ok((self.write_fetched(packages, &fetched, now), fetched.snapshot))
    }

    /// Writes (or removes) the pages of `packages` from their fetched data.
    fn write_fetched(&mut self, packages: &[(String, RewriteScope)], fetched: &Fetched, now: &Timestamp) -> Vec<Outcome> {
        let by_name: HashMap<&str, &ProjectData> = fetched.data.iter().map(|d| (d.package.as_str(), d)).collect();
        // Several threads write at once: most of the time goes into the file system's creates
        // and renames, which overlap well.
        let writer = &self.writer;
        let written = parallel_map(packages, self.config.threads, |(package, scope)| {
            by_name.get(package.as_str()).map(|data| writer.write_project_shared(data, &fetched.abis, *scope, now))
        });
        packages
            .iter()
            .zip(written)
            .map(|((package, _), written)| match written {
                Some(Ok(written)) => {
                    self.writer.note(package, written);
                    Ok(())
                }
                Some(Err(e)) => Err(e),
                None => self.writer.remove_project(package),
            })
            .collect()
    }

    /// Writes one batch of due rewrites; false when there was none.
    fn flush_batch(&mut self, sockets: &Sockets, ctx: &mut Context<'_, Event>) -> anyhow::Result<bool> {
        let now = ctx.now();
        let due = self.buffer.take_due(now, self.config.window / 2, self.config.batch.max(1));
        if due.is_empty() {
            return Ok(false);
        }
        let utc = ctx.utc();
        let packages: Vec<(String, RewriteScope)> = due.iter().map(|w| (w.package.clone(), w.scope)).collect();
        let (outcomes, snapshot) = match self.write_packages(&packages, sockets, &utc) {
            Ok(written) => written,
            Err(e) => {
                for entry in due {
                    self.buffer.retry(entry, now + self.config.retry);
                }
                return Err(e.into());
            }
        };
        let (mut written, mut failed): (Vec<Waiting>, Vec<Waiting>) = (Vec::new(), Vec::new());
        for (entry, outcome) in due.into_iter().zip(outcomes) {
            match outcome {
                Ok(()) => written.push(entry),
                Err(e) => {
                    tracing::error!("cannot write the pages of {}: {e}", entry.package);
                    failed.push(entry);
                }
            }
        }
        tracing::debug!("wrote the pages of {} packages", written.len());
        for entry in written {
            self.written(entry.package, snapshot.clone(), ctx);
        }
        for entry in failed {
            self.buffer.retry(entry, now + self.config.retry);
        }
        Ok(true)
    }

    fn flush(&mut self, sockets: &Sockets, ctx: &mut Context<'_, Event>) -> anyhow::Result<()> {
        if !self.started {
            self.load(sockets, ctx)?;
        }
        self.retry_logs(ctx);
        self.retry_unsigned(sockets, ctx);
        let wrote = self.flush_batch(sockets, ctx)?;
        let now = ctx.now();
        if self.sweep.is_none() && self.writer.root_dirty() {
            let due = self.root_written.map_or(now, |at| at + self.config.root_every);
            if due <= now {
                self.writer.write_root()?;
                self.root_written = Some(now);
            } else {
                ctx.schedule(Event::Flush, due - now);
            }
        }
        if wrote && self.buffer.next_due().is_some_and(|due| due <= now) {
            // More is due: another batch after a look at the sockets.
            ctx.schedule(Event::Flush, Duration::ZERO);
        } else if let Some(due) = self.buffer.next_due() {
            ctx.schedule(Event::Flush, due.saturating_duration_since(now));
        }
        Ok(())
    }

    /// The next batch of a full rewrite. The data of the batch after it is fetched (by the
    /// second database connection) while this one is written, so the database's time and the
    /// file system's overlap.
    fn sweep(&mut self, sockets: &mut Sockets, ctx: &mut Context<'_, Event>) -> anyhow::Result<()> {
        let Some(sweep) = self.sweep.as_mut() else { return Ok(()) };
        let batch_size = self.config.batch.max(1);
        let current = match sweep.next.take() {
            Some(fetched) => fetched,
            None => {
                let take = batch_size.min(sweep.queue.len());
                let names: Vec<String> = sweep.queue.drain(..take).collect();
                match fetch(&sockets.db, names.clone()) {
                    Ok(data) => (names, data),
                    Err(e) => {
                        requeue(sweep, names);
                        ctx.schedule(Event::Sweep, self.config.retry);
                        return Err(e.into());
                    }
                }
            }
        };
        let take = batch_size.min(sweep.queue.len());
        let following: Vec<String> = sweep.queue.drain(..take).collect();
        let (names, fetched) = current;
        let batch: Vec<(String, RewriteScope)> = names.into_iter().map(|n| (n, RewriteScope::Both)).collect();
        let utc = ctx.utc();
        let prefetch = &mut sockets.prefetch;
        let (outcomes, next) = std::thread::scope(|scope| {
            let next = (!following.is_empty()).then(|| {
                let names = following.clone();
                scope.spawn(move || fetch(prefetch, names))
            });
            let outcomes = self.write_fetched(&batch, &fetched, &utc);
            (outcomes, next.map(|handle| handle.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))))
        });
        let sweep = self.sweep.as_mut().expect("the sweep is running");
        for ((package, _), outcome) in batch.iter().zip(outcomes) {
            if let Err(e) = outcome {
                tracing::error!("cannot write the pages of {package}: {e}");
                sweep.failed += 1;
            }
        }
        match next {
            Some(Ok(fetched)) => sweep.next = Some((following, fetched)),
            Some(Err(e)) => {
                requeue(sweep, following);
                tracing::warn!("{e}");
            }
            None => {}
        }
        if sweep.next.is_some() || !sweep.queue.is_empty() {
            ctx.schedule(Event::Sweep, Duration::ZERO);
            return Ok(());
        }
        self.writer.write_root()?;
        self.writer.sync()?;
        let elapsed = ctx.now().saturating_duration_since(sweep.started).as_secs_f64();
        if sweep.failed == 0 {
            self.writer.write_stamp(&TEMPLATES_FINGERPRINT)?;
            tracing::info!(
                "rewrote the whole index: {} packages in {elapsed:.1} s ({:.0} per second)",
                sweep.total,
                sweep.total as f64 / elapsed.max(1e-6)
            );
        } else {
            tracing::error!(
                "rewrote the whole index but for {} packages that failed; it will be tried again at the next start",
                sweep.failed
            );
        }
        self.sweep = None;
        Ok(())
    }

    /// Carries out one request.
    fn serve(&mut self, request: WebRequest, sockets: &Sockets, ctx: &mut Context<'_, Event>) -> anyhow::Result<()> {
        match request {
            WebRequest::Rewrite { package, scope } => {
                let rewrite = PendingRewrite { package, added_at: ctx.utc(), scope };
                anyhow::ensure!(is_safe_name(&rewrite.package), "{:?} is not a canonical package name", rewrite.package);
                let recorded = sockets.db.call(AddRewrite { rewrite: rewrite.clone() });
                self.enqueue(&rewrite, ctx);
                recorded.map_err(|e| anyhow::anyhow!("queued, but not recorded (a crash would lose it): {e}"))
            }
            WebRequest::Recorded { package, scope } => {
                anyhow::ensure!(is_safe_name(&package), "{package:?} is not a canonical package name");
                self.enqueue(&PendingRewrite { package, added_at: ctx.utc(), scope }, ctx);
                Ok(())
            }
            WebRequest::Home { stats, checks, drifts } => Ok(self.writer.write_home(&stats, checks, &drifts)?),
            WebRequest::Search { entries } => Ok(self.writer.write_search(&entries)?),
            WebRequest::Built { build_id, output, rewrite } => {
                anyhow::ensure!(is_safe_name(&rewrite.package), "{:?} is not a canonical package name", rewrite.package);
                if let Err(e) = self.writer.write_log(build_id, &output) {
                    tracing::warn!("cannot write the log of build {build_id} ({e}); it will be tried again");
                    self.keep_log(build_id, rewrite.package.clone(), output, ctx);
                }
                // Before the pages, which link the statements that are there.
                let unwritten = match self.sign(&[build_id], sockets) {
                    Ok(failed) => !failed.is_empty(),
                    Err(e) => {
                        tracing::warn!("cannot write the provenance of build {build_id} ({e:#})");
                        true
                    }
                };
                if unwritten {
                    self.keep_unsigned(build_id, rewrite.package.clone(), ctx);
                }
                self.enqueue(&rewrite, ctx);
                Ok(())
            }
            WebRequest::DeletePackage { package, files, builds } => self.delete(&package, &files, &builds, sockets, ctx),
            WebRequest::DeleteVersion { package, version, files, builds } => {
                tracing::debug!("removing version {version} of {package}");
                self.delete(&package, &files, &builds, sockets, ctx)
            }
        }
    }

    /// Removes files and logs of a package, then rewrites its pages at once (removing them
    /// all when the package is gone).
    fn delete(
        &mut self,
        package: &str,
        files: &[String],
        builds: &[i64],
        sockets: &Sockets,
        ctx: &mut Context<'_, Event>,
    ) -> anyhow::Result<()> {
        anyhow::ensure!(is_safe_name(package), "{package:?} is not a canonical package name");
        // A log or statement still waiting to be written belongs to a build that is gone now.
        self.unwritten_logs.retain(|(build_id, _, _)| !builds.contains(build_id));
        self.unsigned.retain(|(build_id, _)| !builds.contains(build_id));
        let waiting = self.buffer.remove(package);
        self.writer.remove_files(package, files, builds)?;
        let utc = ctx.utc();
        let (outcome, snapshot) = match self.write_packages(&[(package.to_string(), RewriteScope::Both)], sockets, &utc) {
            Ok((mut outcomes, snapshot)) => (outcomes.pop().unwrap_or(Ok(())), snapshot),
            Err(e) => {
                // Written later, from the buffer.
                let entry = Waiting {
                    package: package.to_string(),
                    scope: RewriteScope::Both,
                    added_at: utc,
                    due: ctx.now() + self.config.retry,
                };
                self.buffer.retry(entry, ctx.now() + self.config.retry);
                let _ = sockets.db.call(AddRewrite { rewrite: PendingRewrite {
                    package: package.to_string(),
                    added_at: utc,
                    scope: RewriteScope::Both,
                } });
                return Err(e.into());
            }
        };
        if let Err(e) = outcome {
            if let Some(entry) = waiting {
                self.buffer.retry(entry, ctx.now() + self.config.retry);
            }
            return Err(e.into());
        }
        self.written(package.to_string(), snapshot, ctx);
        if self.sweep.is_none() && self.writer.root_dirty() {
            self.writer.write_root()?;
        }
        Ok(())
    }
}

impl Scribe {
    /// Keeps a log that could not be written for the next flush after the retry interval.
    fn keep_log(&mut self, build_id: BuildId, package: String, output: String, ctx: &mut Context<'_, Event>) {
        if self.unwritten_logs.len() >= MAX_UNWRITTEN_LOGS
            && let Some((oldest, _, _)) = self.unwritten_logs.pop_front()
        {
            tracing::error!("gave up writing the log of build {oldest}: piw-check --repair writes it from the database");
        }
        self.unwritten_logs.push_back((build_id, package, output));
        ctx.schedule(Event::Flush, self.config.retry);
    }

    /// Writes the logs that could not be written before; each one written has its project
    /// page written again, since pages link only the logs that exist.
    fn retry_logs(&mut self, ctx: &mut Context<'_, Event>) {
        if self.unwritten_logs.is_empty() {
            return;
        }
        for (build_id, package, output) in std::mem::take(&mut self.unwritten_logs) {
            match self.writer.write_log(build_id, &output) {
                Ok(()) => {
                    tracing::info!("wrote the log of build {build_id}, which could not be written before");
                    let rewrite = PendingRewrite { package, added_at: ctx.utc(), scope: RewriteScope::Project };
                    self.enqueue(&rewrite, ctx);
                }
                Err(_) => self.unwritten_logs.push_back((build_id, package, output)),
            }
        }
        if !self.unwritten_logs.is_empty() {
            ctx.schedule(Event::Flush, self.config.retry);
        }
    }

    /// Writes the signed provenance of every file of `builds` beside it, in one database
    /// call; the builds some statement of which could not be written (logged), or an error
    /// when the database did not answer.
    fn sign(&self, builds: &[BuildId], sockets: &Sockets) -> anyhow::Result<HashSet<BuildId>> {
        let mut failed = HashSet::new();
        for file in sockets.db.call(BuildProvenance { builds: builds.to_vec() })? {
            let envelope = provenance::sign(&file.statement(), &self.config.signing_key);
            if let Err(e) = self.writer.write_provenance(&file.package, &file.filename, &envelope) {
                tracing::warn!("cannot write the provenance of {}: {e}", file.filename);
                failed.insert(file.build_id);
            }
        }
        Ok(failed)
    }

    /// Keeps a build whose provenance could not be written for the next flush after the retry
    /// interval.
    fn keep_unsigned(&mut self, build_id: BuildId, package: String, ctx: &mut Context<'_, Event>) {
        if self.unsigned.len() >= MAX_UNWRITTEN_LOGS
            && let Some((oldest, _)) = self.unsigned.pop_front()
        {
            tracing::error!("gave up writing the provenance of build {oldest}: piw-check --repair writes it from the database");
        }
        tracing::warn!("the provenance of build {build_id} will be tried again in {:?}", self.config.retry);
        self.unsigned.push_back((build_id, package));
        self.unsigned_retry = ctx.now() + self.config.retry;
        ctx.schedule(Event::Flush, self.config.retry);
    }

    /// Writes the provenance that could not be written before, all in one go once the retry
    /// interval has passed; the builds' project pages are written again, since pages link
    /// only the statements that exist.
    fn retry_unsigned(&mut self, sockets: &Sockets, ctx: &mut Context<'_, Event>) {
        if self.unsigned.is_empty() || ctx.now() < self.unsigned_retry {
            return;
        }
        let builds: Vec<BuildId> = self.unsigned.iter().map(|(build_id, _)| *build_id).collect();
        match self.sign(&builds, sockets) {
            Ok(failed) => {
                // One build's trouble (say, an unwritable directory) holds no other back.
                for (build_id, package) in std::mem::take(&mut self.unsigned) {
                    if failed.contains(&build_id) {
                        self.unsigned.push_back((build_id, package));
                    } else {
                        tracing::info!("wrote the provenance of build {build_id}, which could not be written before");
                        let rewrite = PendingRewrite { package, added_at: ctx.utc(), scope: RewriteScope::Project };
                        self.enqueue(&rewrite, ctx);
                    }
                }
            }
            Err(e) => tracing::warn!("still cannot write the provenance of {} builds ({e:#}); trying again later", builds.len()),
        }
        if !self.unsigned.is_empty() {
            self.unsigned_retry = ctx.now() + self.config.retry;
            ctx.schedule(Event::Flush, self.config.retry);
        }
    }

    /// Buffers a recorded rewrite for the window and makes sure a flush comes when it is due.
    fn enqueue(&mut self, rewrite: &PendingRewrite, ctx: &mut Context<'_, Event>) {
        let now = ctx.now();
        self.buffer.add(&rewrite.package, rewrite.scope, rewrite.added_at, now, self.config.window);
        if let Some(due) = self.buffer.next_due() {
            ctx.schedule(Event::Flush, due.saturating_duration_since(now));
        }
    }

    /// Notes a package whose pages were written from the database as `snapshot` saw it; its
    /// pending entry is cleared at the next [`Event::Sync`] if the snapshot saw the last
    /// request for it.
    fn written(&mut self, package: String, snapshot: String, ctx: &mut Context<'_, Event>) {
        if self.unsynced.is_empty() {
            ctx.schedule(Event::Sync, self.config.sync_every);
        }
        self.unsynced.push(RewriteWritten { package, snapshot });
    }

    fn sync(&mut self, sockets: &Sockets, ctx: &mut Context<'_, Event>) -> anyhow::Result<()> {
        let result = self.sync_now(sockets);
        if result.is_err() {
            // What was written since the last sync may not be on disk, and a later syncfs
            // would not say so (it reports an error once): write those pages again.
            let (now, utc) = (ctx.now(), ctx.utc());
            let due = now + self.config.retry;
            for w in std::mem::take(&mut self.unsynced) {
                self.buffer.retry(Waiting { package: w.package, scope: RewriteScope::Both, added_at: utc, due }, due);
            }
            ctx.schedule(Event::Flush, self.config.retry);
        }
        result
    }

    /// Makes the pages written so far durable and clears their pending entries. On failure
    /// nothing is cleared: the entries stay pending in the database.
    fn sync_now(&mut self, sockets: &Sockets) -> anyhow::Result<()> {
        if self.unsynced.is_empty() {
            return Ok(());
        }
        if self.config.durable {
            self.writer.sync().map_err(|e| anyhow::anyhow!("cannot make the pages durable: {e}"))?;
        }
        let written = std::mem::take(&mut self.unsynced);
        let count = written.len();
        if let Err(e) = sockets.db.call(ClearRewrites { written }) {
            // The entries stay in the database: the pages are only written once more, at the
            // next start.
            tracing::warn!("cannot clear {count} pending rewrites: {e}");
        }
        Ok(())
    }
}

/// Fewest items worth a thread of their own: starting a thread costs about as much as
/// writing a package's pages.
const ITEMS_PER_THREAD: usize = 16;

/// `f` of every item, in order, computed by up to `threads` threads (fewer for few items).
fn parallel_map<T: Sync, R: Send>(items: &[T], threads: usize, f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = threads.clamp(1, items.len().div_ceil(ITEMS_PER_THREAD).max(1));
    if threads == 1 {
        return items.iter().map(f).collect();
    }
    let chunk = items.len().div_ceil(threads);
    let f = &f;
    std::thread::scope(|scope| {
        let handles: Vec<_> =
            items.chunks(chunk).map(|part| scope.spawn(move || part.iter().map(f).collect::<Vec<R>>())).collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))).collect()
    })
}

impl Task for Scribe {
    type Sockets = Sockets;
    type Event = Event;
    const PAUSE: PauseMode = PauseMode::Timers;

    fn poll_sockets<'s>(&self, sockets: &'s Sockets) -> Vec<(Event, &'s zmq::Socket)> {
        vec![(Event::Request, sockets.web.socket())]
    }

    fn timers(&self) -> Vec<(Event, Duration)> {
        vec![(Event::Flush, TICK)]
    }

    fn handle(&mut self, event: Event, sockets: &mut Sockets, ctx: &mut Context<'_, Event>) -> anyhow::Result<()> {
        match event {
            Event::Request => {
                let (peer, request) = sockets.web.recv()?;
                let reply = match request {
                    Ok(request) => match self.serve(request, sockets, ctx) {
                        Ok(()) => WebReply::Done,
                        Err(e) => {
                            tracing::error!("{e:#}");
                            WebReply::Error(WireError::unavailable(format!("{e:#}")))
                        }
                    },
                    Err(e) => {
                        tracing::error!("bad request from {peer}: {e}");
                        WebReply::Error(WireError::refused(e.to_string()))
                    }
                };
                sockets.web.send(&peer, &reply)?;
                Ok(())
            }
            Event::Flush => self.flush(sockets, ctx),
            Event::Sweep => self.sweep(sockets, ctx),
            Event::Sync => self.sync(sockets, ctx),
        }
    }

    fn on_quit(&mut self, sockets: &mut Sockets) {
        if self.sweep.is_none()
            && self.writer.root_dirty()
            && let Err(e) = self.writer.write_root()
        {
            tracing::warn!("cannot write the simple index's root: {e}");
        }
        if let Err(e) = self.sync_now(sockets) {
            tracing::warn!("{e:#}");
        }
    }
}
