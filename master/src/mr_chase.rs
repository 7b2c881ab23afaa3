//! MrChase, the admin endpoint: serves the administrators' tools (`piw-import`, `piw-add`,
//! `piw-remove`, `piw-rebuild`). It registers packages and versions, imports wheels built
//! elsewhere, removes packages, versions or their builds, and asks for pages to be rewritten;
//! every action goes to the audit log with the actor the tool named in its hello.
//!
//! Sockets: binds the import socket (ROUTER, external, usually ipc: [`AdminRequest`] →
//! [`AdminReply`]); connects to the oracles, the file juggler ([`FS_ENDPOINT`]), the index
//! writer, the stats task, the architect's trigger, the status socket and, through
//! [`Remover`], the slave driver's deletion socket.
//!
//! Each connection is a session, keyed by its ZeroMQ identity, so several tools can work at
//! once: a session starts with `Hello` (refused on a version mismatch, naming both versions;
//! anything sent before it is refused too) and holds at most one import in progress. Sessions
//! quiet for [`SESSION_IDLE`] are forgotten, and an import they left unfinished is undone.
//!
//! An import is checked whole before any byte moves: the ABI is one the farm builds, the
//! release exists, every file is a wheel of that release, and the file juggler agrees to take
//! each one (it refuses bad names, sizes and clashes with published files). Then the files are
//! asked for one at a time (`Send`), each verified when the tool says `Sent`, and only when all
//! are published is the build recorded (unlike the original, which recorded it first and could
//! leave a build whose files never arrived). An import that fails after publishing some of its
//! files has those files removed again through the index writer, so nothing is left on disk
//! that the database does not know.
//!
//! Removals go through [`Remover`], the one way to remove anything: the files and builds are
//! looked up first, then the rows go, the slave driver forgets the release and the index writer
//! removes the files, logs and pages. A skip reason keeps the package's or version's rows (so
//! the skip is remembered and the release not built again) and removes its builds and files.
//!
//! While the master is paused, sessions may say hello and finish an import already under way,
//! but new work is refused with a sentence saying so.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use piwheels_common::names::{canonicalize, parse_version};
use piwheels_common::protocols::{
    AdminReply, AdminRequest, ArchitectTrigger, BuildRecord, BuildResult, DbReply, DbRequest, FsReply, FsRequest, ImportRequest,
    NoticeLevel, RebuildTarget, RewriteScope, StatsUpdate, StatusEvent, Timestamp, TransferId, WebReply, WebRequest, WheelFile,
};
use piwheels_common::task::{Context, PauseMode, Task};
use piwheels_common::transport::{Client, DEFAULT_MAX_MESSAGE, Peer, Sender, Server};
use piwheels_common::wheel::WheelName;

use crate::architect::ARCHITECT_ENDPOINT;
use crate::big_brother::STATS_ENDPOINT;
use crate::db_client::DbClient;
use crate::file_juggler::FS_ENDPOINT;
use crate::removal::Remover;
use crate::index::WEB_ENDPOINT;

/// Largest request the import socket accepts: an import carries each wheel's METADATA and the
/// build log.
pub const IMPORT_MAX_MESSAGE: usize = DEFAULT_MAX_MESSAGE;
/// A session nobody has used for this long is forgotten, and its unfinished import undone.
pub const SESSION_IDLE: Duration = Duration::from_secs(3600);
/// Most sessions kept at once; a new one beyond this pushes out the one quiet longest.
pub const MAX_SESSIONS: usize = 256;
/// Most files one import may hold.
pub const MAX_IMPORT_FILES: usize = 100;
/// Times a file that fails verification is asked for again before the import is given up.
const MAX_SEND_ATTEMPTS: u32 = 3;
/// How often quiet sessions are looked for.
const EXPIRY_CHECK: Duration = Duration::from_secs(60);
/// How long the file juggler may take to answer (a verification fsyncs a whole file).
const FS_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the index writer may take to take a request.
const WEB_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a message to a local queue may wait for room.
const LOCAL_SEND_TIMEOUT: Duration = Duration::from_millis(500);
/// Page rewrites of a rebuild of every package are handed to the index writer this many at
/// a time, between other requests, so that a rebuild does not stop the endpoint.
const REBUILD_BATCH: usize = 200;
/// How long to wait before trying again when the index writer did not take a rewrite.
const REBUILD_RETRY: Duration = Duration::from_secs(10);
/// Longest actor, package name, version or ABI accepted (the database's column sizes).
const MAX_NAME: usize = 200;
/// Longest skip reason (the database's column size).
const MAX_SKIP: usize = 100;
/// Longest description (the database's column size).
const MAX_DESCRIPTION: usize = 200;

/// The admin endpoint's settings.
#[derive(Debug, Clone)]
pub struct ChaseConfig {
    /// Where the tools connect, e.g. `ipc:///run/piwheels/import`.
    pub import_queue: String,
    /// How long the database may take to answer.
    pub db_timeout: Duration,
}

/// The admin endpoint's sockets.
#[derive(Debug)]
pub struct Sockets {
    admin: Server<AdminRequest, AdminReply>,
    db: DbClient,
    fs: Client<FsRequest, FsReply>,
    web: Client<WebRequest, WebReply>,
    stats: Sender<StatsUpdate>,
    trigger: Sender<ArchitectTrigger>,
    status: Sender<StatusEvent>,
    remover: Remover,
}

impl Sockets {
    /// Binds the import socket and connects to the rest.
    pub fn open(ctx: &zmq::Context, config: &ChaseConfig, status_endpoint: &str) -> anyhow::Result<Sockets> {
        Ok(Sockets {
            admin: Server::bind(ctx, &config.import_queue, Some(IMPORT_MAX_MESSAGE))?,
            db: DbClient::connect(ctx, config.db_timeout)?,
            fs: Client::connect(ctx, FS_ENDPOINT, None)?,
            web: Client::connect(ctx, WEB_ENDPOINT, None)?,
            stats: Sender::push(ctx, STATS_ENDPOINT)?,
            trigger: Sender::push(ctx, ARCHITECT_ENDPOINT)?,
            status: Sender::push(ctx, status_endpoint)?,
            remover: Remover::connect(ctx)?,
        })
    }

    /// The address the import socket is bound to.
    pub fn endpoint(&self) -> String {
        self.admin.endpoint().to_string()
    }
}

/// What the admin endpoint reacts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A tool sent a request.
    Request,
    /// Time to forget quiet sessions.
    Expire,
    /// Time to hand the next page rewrites of a full rebuild to the index writer.
    Rebuild,
}

/// Where one file of an import stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileState {
    /// The file juggler expects it as this transfer.
    Pending(TransferId),
    /// The file juggler had it already, with these contents.
    Held,
    /// This import sent and published it.
    Published,
}

/// An import in progress.
#[derive(Debug)]
struct Import {
    request: ImportRequest,
    /// Per file of the request, in order.
    states: Vec<FileState>,
    /// The file asked for last.
    current: usize,
    /// Verification failures of the current file.
    attempts: u32,
}

/// A connection that said hello.
#[derive(Debug)]
struct Session {
    /// Who, for the audit log.
    actor: String,
    /// When it last sent something.
    seen: Instant,
    import: Option<Import>,
}

/// The outcome of a request that ends in `Done` or `Error`: a sentence either way.
type Outcome = Result<String, String>;

/// The admin endpoint.
#[derive(Debug)]
pub struct MrChase {
    config: ChaseConfig,
    sessions: HashMap<Vec<u8>, Session>,
    /// Packages whose pages a full rebuild still has to ask for.
    backlog: VecDeque<(String, RewriteScope)>,
    /// Requests that could not be decoded, since the start.
    bad_requests: u64,
}

impl MrChase {
    /// An endpoint with no sessions.
    pub fn new(config: ChaseConfig) -> MrChase {
        MrChase { config, sessions: HashMap::new(), backlog: VecDeque::new(), bad_requests: 0 }
    }

    /// The settings it runs with.
    pub fn config(&self) -> &ChaseConfig {
        &self.config
    }

    fn on_request(&mut self, sockets: &mut Sockets, ctx: &mut Context<'_, Event>) -> anyhow::Result<()> {
        let (peer, request) = match sockets.admin.recv() {
            Ok(incoming) => incoming,
            Err(e) => {
                self.bad_requests += 1;
                tracing::warn!("unanswerable message on the import socket ({} so far): {e}", self.bad_requests);
                return Ok(());
            }
        };
        let reply = match request {
            Ok(request) => self.answer(sockets, ctx, &peer, request),
            Err(e) => {
                self.bad_requests += 1;
                tracing::warn!("bad request from {peer} ({} so far): {e}", self.bad_requests);
                AdminReply::Error { message: format!("the master could not read that request: {e}") }
            }
        };
        if let Err(e) = sockets.admin.send(&peer, &reply) {
            // The tool went away; its session is forgotten when it expires.
            tracing::info!("cannot answer {peer}: {e}");
        }
        Ok(())
    }

    fn answer(&mut self, sockets: &Sockets, ctx: &mut Context<'_, Event>, peer: &Peer, request: AdminRequest) -> AdminReply {
        let identity = peer.identity().to_vec();
        let now = ctx.now();
        if let AdminRequest::Hello { versions, actor } = request {
            if let Err(mismatch) = versions.check() {
                tracing::warn!("refused {actor:?} from {peer}: {mismatch}");
                return AdminReply::Refused { reason: mismatch.to_string() };
            }
            if let Err(reason) = check_text("the actor", &actor, MAX_NAME, false) {
                tracing::warn!("refused a tool from {peer}: {reason}");
                return AdminReply::Refused { reason };
            }
            if let Some(old) = self.sessions.remove(&identity) {
                self.abandon(sockets, old, "the tool said hello again");
            }
            self.make_room(sockets);
            tracing::info!("{actor} attached from {peer}");
            self.sessions.insert(identity, Session { actor, seen: now, import: None });
            return AdminReply::Welcome;
        }
        let Some(session) = self.sessions.get_mut(&identity) else {
            tracing::warn!("{} from {peer} before hello", request_name(&request));
            return AdminReply::Refused { reason: "say Hello (with your versions) first".into() };
        };
        session.seen = now;
        let actor = session.actor.clone();
        if let AdminRequest::Sent { filename } = request {
            return self.sent(sockets, ctx, &identity, &filename);
        }
        if ctx.paused() {
            return AdminReply::Error { message: "the master is paused: try again once it is resumed".into() };
        }
        if let AdminRequest::Import(import) = request {
            return self.import(sockets, ctx, &identity, import);
        }
        let (action, outcome) = match request {
            AdminRequest::AddPackage { name, description, skip, unskip, aliases } => {
                ("add-package", self.add_package(sockets, ctx, &name, description, skip, unskip, &aliases))
            }
            AdminRequest::AddVersion { name, version, released, skip, unskip, yank, unyank } => {
                ("add-version", self.add_version(sockets, ctx, &name, &version, released, skip, unskip, yank, unyank))
            }
            AdminRequest::RemovePackage { name, builds_only, skip } => {
                ("remove-package", self.remove(sockets, &name, None, builds_only, skip, false))
            }
            AdminRequest::RemoveVersion { name, version, builds_only, skip, yank } => {
                ("remove-version", self.remove(sockets, &name, Some(&version), builds_only, skip, yank))
            }
            AdminRequest::Rebuild(target) => ("rebuild", self.rebuild(sockets, ctx, target)),
            AdminRequest::Hello { .. } | AdminRequest::Sent { .. } | AdminRequest::Import(_) => unreachable!("answered above"),
        };
        self.conclude(sockets, ctx, &actor, action, outcome)
    }

    /// Writes an outcome to the audit log (and, when something was done, tells monitors) and
    /// makes it the reply.
    fn conclude(&self, sockets: &Sockets, ctx: &Context<'_, Event>, actor: &str, action: &str, outcome: Outcome) -> AdminReply {
        let detail = match &outcome {
            Ok(message) => message.clone(),
            Err(message) => format!("refused: {message}"),
        };
        if let Err(e) = sockets.db.done(DbRequest::Audit { actor: actor.into(), action: action.into(), detail: detail.clone() }) {
            tracing::error!("cannot write to the audit log ({actor}, {action}, {detail}): {e}");
        }
        match outcome {
            Ok(message) => {
                tracing::info!("{actor}: {message}");
                notice(sockets, ctx, NoticeLevel::Info, format!("{actor}: {message}"));
                AdminReply::Done { message }
            }
            Err(message) => {
                tracing::info!("{actor}, {action}: {message}");
                AdminReply::Error { message }
            }
        }
    }

    /// Keeps the sessions under [`MAX_SESSIONS`], forgetting the one quiet longest.
    fn make_room(&mut self, sockets: &Sockets) {
        while self.sessions.len() >= MAX_SESSIONS {
            let Some(oldest) = self.sessions.iter().min_by_key(|(_, s)| s.seen).map(|(id, _)| id.clone()) else { return };
            if let Some(session) = self.sessions.remove(&oldest) {
                self.abandon(sockets, session, "too many sessions: this one was quiet longest");
            }
        }
    }

    fn on_expire(&mut self, sockets: &Sockets, now: Instant) {
        let quiet: Vec<Vec<u8>> =
            self.sessions.iter().filter(|(_, s)| now.duration_since(s.seen) >= SESSION_IDLE).map(|(id, _)| id.clone()).collect();
        for identity in quiet {
            if let Some(session) = self.sessions.remove(&identity) {
                tracing::debug!("forgetting the quiet session of {}", session.actor);
                self.abandon(sockets, session, &format!("quiet for more than {SESSION_IDLE:?}"));
            }
        }
    }

    /// Undoes the unfinished import of a session that is going.
    fn abandon(&self, sockets: &Sockets, session: Session, why: &str) {
        if let Some(import) = session.import {
            let request = &import.request;
            tracing::warn!("abandoning {}'s import of {} {}: {why}", session.actor, request.package, request.version);
            undo(sockets, &import);
            let detail = format!("{} {}: abandoned unfinished ({why})", request.package, request.version);
            if let Err(e) = sockets.db.done(DbRequest::Audit { actor: session.actor.clone(), action: "import".into(), detail }) {
                tracing::error!("cannot write to the audit log: {e}");
            }
        }
    }

    // --------------------------------------------------------------------------------------
    // Imports
    // --------------------------------------------------------------------------------------

    fn import(&mut self, sockets: &Sockets, ctx: &Context<'_, Event>, identity: &[u8], request: ImportRequest) -> AdminReply {
        let Some(session) = self.sessions.get(identity) else { return AdminReply::Refused { reason: "say Hello first".into() } };
        let actor = session.actor.clone();
        if let Some(import) = &session.import {
            let message = format!(
                "an import of {} {} is already in progress on this connection",
                import.request.package, import.request.version
            );
            return AdminReply::Error { message };
        }
        let summary = format!("{} {} for {}", request.package, request.version, request.abi);
        let import = match check_import(sockets, request).and_then(|request| expect_all(sockets, request)) {
            Ok(import) => import,
            Err(message) => return self.conclude(sockets, ctx, &actor, "import", Err(format!("{summary}: {message}"))),
        };
        if let Some(session) = self.sessions.get_mut(identity) {
            session.import = Some(import);
        }
        self.next_file(sockets, ctx, identity)
    }

    /// Asks for the next file the file juggler still expects, or records the import when
    /// every file is in.
    fn next_file(&mut self, sockets: &Sockets, ctx: &Context<'_, Event>, identity: &[u8]) -> AdminReply {
        let Some(import) = self.sessions.get_mut(identity).and_then(|s| s.import.as_mut()) else {
            return AdminReply::Error { message: "no import is in progress on this connection".into() };
        };
        let pending = import.states.iter().enumerate().find_map(|(i, state)| match state {
            FileState::Pending(transfer) => Some((i, *transfer)),
            _ => None,
        });
        match pending {
            Some((index, transfer)) => {
                import.current = index;
                AdminReply::Send { filename: import.request.files[index].filename.clone(), transfer }
            }
            None => self.finish(sockets, ctx, identity),
        }
    }

    fn sent(&mut self, sockets: &Sockets, ctx: &Context<'_, Event>, identity: &[u8], filename: &str) -> AdminReply {
        let Some(session) = self.sessions.get_mut(identity) else { return AdminReply::Refused { reason: "say Hello first".into() } };
        let Some(import) = session.import.as_mut() else {
            return AdminReply::Error { message: format!("Sent {filename:?} without an import in progress on this connection") };
        };
        let index = import.current;
        let (expected, state) = (import.request.files[index].filename.clone(), import.states[index]);
        let FileState::Pending(transfer) = state else {
            return self.fail_import(sockets, ctx, identity, format!("Sent {filename:?}, but no file was asked for"));
        };
        if filename != expected {
            return self.fail_import(sockets, ctx, identity, format!("Sent {filename:?}, but {expected} was asked for"));
        }
        match sockets.fs.request(&FsRequest::Verify { transfer }, FS_TIMEOUT) {
            Ok(FsReply::Verified) => {
                import.states[index] = FileState::Published;
                import.attempts = 0;
                self.next_file(sockets, ctx, identity)
            }
            Ok(FsReply::Failed { reason } | FsReply::Error { message: reason }) => {
                import.attempts += 1;
                if import.attempts >= MAX_SEND_ATTEMPTS {
                    let reason = format!("{filename} failed verification {MAX_SEND_ATTEMPTS} times: {reason}");
                    return self.fail_import(sockets, ctx, identity, reason);
                }
                tracing::warn!("{filename} failed verification, asking for it again: {reason}");
                // The transfer was rolled back: the file juggler needs to expect it afresh.
                let file = import.request.files[index].clone();
                let request = FsRequest::Expect { package: import.request.package.clone(), file: Box::new(file) };
                match sockets.fs.request(&request, FS_TIMEOUT) {
                    Ok(FsReply::Expecting { transfer }) => {
                        import.states[index] = FileState::Pending(transfer);
                        AdminReply::Send { filename: expected, transfer }
                    }
                    Ok(FsReply::AlreadyHave) => {
                        import.states[index] = FileState::Held;
                        self.next_file(sockets, ctx, identity)
                    }
                    Ok(other) => self.fail_import(sockets, ctx, identity, format!("the master refused {expected}: {}", fs_reason(other))),
                    Err(e) => self.fail_import(sockets, ctx, identity, format!("the file juggler did not answer: {e}")),
                }
            }
            Ok(other) => self.fail_import(sockets, ctx, identity, format!("cannot verify {filename}: {}", fs_reason(other))),
            Err(e) => self.fail_import(sockets, ctx, identity, format!("the file juggler did not answer: {e}")),
        }
    }

    /// Ends a session's import with an error: undoes it and tells the tool why.
    fn fail_import(&mut self, sockets: &Sockets, ctx: &Context<'_, Event>, identity: &[u8], message: String) -> AdminReply {
        let Some(session) = self.sessions.get_mut(identity) else { return AdminReply::Error { message } };
        let actor = session.actor.clone();
        let Some(import) = session.import.take() else { return AdminReply::Error { message } };
        undo(sockets, &import);
        let request = &import.request;
        let removed = import.states.iter().zip(&request.files).filter(|(s, f)| **s == FileState::Published && !recorded(sockets, f)).count();
        let mut message = format!("{} {} for {}: {message}", request.package, request.version, request.abi);
        if removed > 0 {
            let _ = write!(message, " (the {removed} file(s) it had published were removed again)");
        }
        self.conclude(sockets, ctx, &actor, "import", Err(message))
    }

    /// Records an import whose files are all in, and asks for its log and pages.
    fn finish(&mut self, sockets: &Sockets, ctx: &Context<'_, Event>, identity: &[u8]) -> AdminReply {
        let Some(session) = self.sessions.get_mut(identity) else { return AdminReply::Error { message: "no session".into() } };
        let actor = session.actor.clone();
        let Some(import) = session.import.take() else {
            return AdminReply::Error { message: "no import is in progress on this connection".into() };
        };
        let request = &import.request;
        let record = BuildRecord {
            built_by: 0,
            builder: format!("import by {actor}").chars().take(MAX_NAME / 2).collect(),
            package: request.package.clone(),
            version: request.version.clone(),
            abi: request.abi.clone(),
            result: BuildResult {
                success: true,
                failure: None,
                exit_status: None,
                duration: request.duration,
                cpu_time: Duration::ZERO,
                peak_memory: 0,
                output: request.output.clone(),
                files: request.files.clone(),
            },
        };
        let build_id = match sockets.db.log_build(record) {
            Ok(id) => id,
            Err(e) => {
                undo(sockets, &import);
                let message = format!(
                    "{} {} for {}: cannot record the build: {e} (the files it had published were removed again)",
                    request.package, request.version, request.abi
                );
                return self.conclude(sockets, ctx, &actor, "import", Err(message));
            }
        };
        let mut notes = Vec::new();
        if let Err(e) = web(sockets, WebRequest::Log { build_id, output: request.output.clone() }) {
            notes.push(format!("its log could not be written: {e}"));
        }
        if let Err(e) = web(sockets, WebRequest::Rewrite { package: request.package.clone(), scope: RewriteScope::Both }) {
            notes.push(format!("its pages could not be queued for rewriting: {e}"));
        }
        trigger(sockets, format!("{} {} imported", request.package, request.version));
        let sent = import.states.iter().filter(|s| **s == FileState::Published).count();
        let held = import.states.len() - sent;
        let mut message = format!(
            "imported {} {} for {} as build {build_id}: {} file(s), {sent} sent, {held} already held",
            request.package,
            request.version,
            request.abi,
            import.states.len()
        );
        append_notes(&mut message, &notes);
        self.conclude(sockets, ctx, &actor, "import", Ok(message))
    }

    // --------------------------------------------------------------------------------------
    // Packages and versions
    // --------------------------------------------------------------------------------------

    #[allow(clippy::too_many_arguments)]
    fn add_package(
        &self,
        sockets: &Sockets,
        ctx: &Context<'_, Event>,
        name: &str,
        description: Option<String>,
        skip: Option<String>,
        unskip: bool,
        aliases: &[String],
    ) -> Outcome {
        let package = check_package(name)?;
        if skip.is_some() && unskip {
            return Err("cannot both skip and unskip a package".into());
        }
        if let Some(skip) = &skip {
            check_text("the skip reason", skip, MAX_SKIP, false)?;
        }
        if let Some(description) = &description {
            check_text("the description", description, MAX_DESCRIPTION, true)?;
        }
        for alias in aliases {
            check_name(alias)?;
            if canonicalize(alias) != package {
                return Err(format!("alias {alias:?} does not match the package: its canonical name is {}, not {package}", canonicalize(alias)));
            }
        }
        let db = &sockets.db;
        let added = db
            .new_package(&package, skip.as_deref().unwrap_or(""), description.as_deref().unwrap_or(""))
            .map_err(|e| e.to_string())?;
        let mut changes = Vec::new();
        let scope = if added {
            RewriteScope::Both
        } else {
            if skip.is_some() {
                return Err(format!("package {package} exists: skip it with piw-remove --skip, which also removes its files"));
            }
            if unskip {
                db.done(DbRequest::SkipPackage { package: package.clone(), reason: String::new() }).map_err(|e| e.to_string())?;
                changes.push("unskipped".to_string());
            }
            if let Some(description) = description.as_ref().filter(|d| !d.is_empty()) {
                db.done(DbRequest::SetDescription { package: package.clone(), description: description.clone() })
                    .map_err(|e| e.to_string())?;
                changes.push("description set".to_string());
            }
            RewriteScope::Project
        };
        // Every spelling, the canonical one first and the name as typed last: the most
        // recently seen spelling is the display name.
        let mut names: Vec<&str> = vec![package.as_str()];
        for alias in aliases.iter().map(String::as_str).chain([name]) {
            names.retain(|n| *n != alias);
            names.push(alias);
        }
        record_names(db, &package, &names, ctx.utc())?;
        if !aliases.is_empty() {
            changes.push(format!("aliases {}", aliases.join(", ")));
        }
        let mut message = if added {
            match &skip {
                Some(reason) => format!("added package {package}, skipped: {reason}"),
                None => format!("added package {package}"),
            }
        } else if changes.is_empty() {
            format!("package {package} exists already; nothing changed")
        } else {
            format!("updated package {package}: {}", changes.join(", "))
        };
        let mut notes = Vec::new();
        if let Err(e) = web(sockets, WebRequest::Rewrite { package: package.clone(), scope }) {
            notes.push(format!("its pages could not be queued for rewriting: {e}"));
        }
        if unskip {
            trigger(sockets, format!("{package} unskipped"));
        }
        append_notes(&mut message, &notes);
        Ok(message)
    }

    #[allow(clippy::too_many_arguments)]
    fn add_version(
        &self,
        sockets: &Sockets,
        ctx: &Context<'_, Event>,
        name: &str,
        version: &str,
        released: Option<Timestamp>,
        skip: Option<String>,
        unskip: bool,
        yank: bool,
        unyank: bool,
    ) -> Outcome {
        let package = check_package(name)?;
        check_version(version)?;
        if skip.is_some() && unskip {
            return Err("cannot both skip and unskip a version".into());
        }
        if yank && unyank {
            return Err("cannot both yank and unyank a version".into());
        }
        if let Some(skip) = &skip {
            check_text("the skip reason", skip, MAX_SKIP, false)?;
        }
        let db = &sockets.db;
        if !db.package_exists(&package).map_err(|e| e.to_string())? {
            return Err(format!("unknown package {package}: add it with piw-add {name} first"));
        }
        let added = db.new_version(&package, version, released, skip.as_deref().unwrap_or("")).map_err(|e| e.to_string())?;
        let mut changes = Vec::new();
        if added {
            if yank {
                yank_version(db, &package, version, true)?;
                changes.push("yanked".to_string());
            }
            if let Some(reason) = &skip {
                changes.push(format!("skipped: {reason}"));
            }
        } else {
            if skip.is_some() {
                return Err(format!("version {package} {version} exists: skip it with piw-remove --skip, which also removes its files"));
            }
            if yank {
                return Err(format!("version {package} {version} exists: yank it with piw-remove --yank"));
            }
            if unskip {
                let request = DbRequest::SkipVersion { package: package.clone(), version: version.into(), reason: String::new() };
                db.done(request).map_err(|e| e.to_string())?;
                changes.push("unskipped".to_string());
            }
            if unyank {
                yank_version(db, &package, version, false)?;
                changes.push("unyanked".to_string());
            }
        }
        record_names(db, &package, &[name], ctx.utc())?;
        let mut message = match (added, changes.is_empty()) {
            (true, true) => format!("added version {package} {version}"),
            (true, false) => format!("added version {package} {version}, {}", changes.join(", ")),
            (false, true) => format!("version {package} {version} exists already; nothing changed"),
            (false, false) => format!("updated version {package} {version}: {}", changes.join(", ")),
        };
        // Yanking shows in the simple index; a new version alone only on the project page.
        let scope = if yank || unyank || !added { RewriteScope::Both } else { RewriteScope::Project };
        let mut notes = Vec::new();
        if let Err(e) = web(sockets, WebRequest::Rewrite { package: package.clone(), scope }) {
            notes.push(format!("its pages could not be queued for rewriting: {e}"));
        }
        if added || unskip {
            trigger(sockets, format!("{package} {version} added or unskipped"));
        }
        append_notes(&mut message, &notes);
        Ok(message)
    }

    fn remove(&self, sockets: &Sockets, name: &str, version: Option<&str>, builds_only: bool, skip: Option<String>, yank: bool) -> Outcome {
        let package = check_package(name)?;
        if let Some(version) = version {
            check_version(version)?;
        }
        if let Some(skip) = &skip {
            check_text("the skip reason", skip, MAX_SKIP, false)?;
            if skip.is_empty() {
                return Err("the skip reason must not be empty".into());
            }
        }
        let db = &sockets.db;
        let what = match version {
            Some(version) => {
                if !db.boolean(DbRequest::VersionExists { package: package.clone(), version: version.into() }).map_err(|e| e.to_string())? {
                    return Err(format!("unknown version {package} {version}"));
                }
                format!("version {package} {version}")
            }
            None => {
                if !db.package_exists(&package).map_err(|e| e.to_string())? {
                    return Err(format!("unknown package {package}"));
                }
                format!("package {package}")
            }
        };
        if yank {
            let Some(version) = version else { return Err("only a version can be yanked".into()) };
            if builds_only || skip.is_some() {
                return Err("yanking keeps the version and its files: it cannot be combined with removing builds or skipping".into());
            }
            yank_version(db, &package, version, true)?;
            let mut message = format!("yanked {what}");
            if let Err(e) = web(sockets, WebRequest::Rewrite { package: package.clone(), scope: RewriteScope::Both }) {
                append_notes(&mut message, &[format!("its pages could not be queued for rewriting: {e}")]);
            }
            return Ok(message);
        }
        // A skip reason is only remembered while the rows exist: skipping keeps them and
        // removes the builds and files.
        let keep_rows = builds_only || skip.is_some();
        let outcome = sockets.remover.remove(db, &package, version, skip.as_deref().unwrap_or(""), keep_rows);
        let message = match (&skip, keep_rows) {
            (Some(reason), _) => format!("removed the builds and files of {what} and skipped it: {reason}"),
            (None, true) => format!("removed the builds and files of {what}; it will be built again"),
            (None, false) => format!("removed {what} with its builds and files"),
        };
        match outcome {
            Ok(()) => {
                if builds_only && skip.is_none() {
                    trigger(sockets, format!("builds of {what} removed"));
                }
                Ok(message)
            }
            Err(e) => Err(format!("{e:#} (while removing {what}; run the removal again to finish it)")),
        }
    }

    // --------------------------------------------------------------------------------------
    // Rebuilds
    // --------------------------------------------------------------------------------------

    fn rebuild(&mut self, sockets: &Sockets, ctx: &mut Context<'_, Event>, target: RebuildTarget) -> Outcome {
        let (one, scope) = match target {
            RebuildTarget::Home => {
                sockets.stats.send(&StatsUpdate::RefreshHome, LOCAL_SEND_TIMEOUT).map_err(|e| format!("the stats task did not take the request: {e}"))?;
                return Ok("the home page will be rewritten with fresh figures".into());
            }
            RebuildTarget::Search => {
                let entries = match sockets.db.request(DbRequest::SearchIndex).map_err(|e| e.to_string())? {
                    DbReply::Search(entries) => entries,
                    other => return Err(format!("unexpected answer to the search index request: {other:?}")),
                };
                let count = entries.len();
                web(sockets, WebRequest::Search { entries })?;
                return Ok(format!("rewrote the search index: {count} package(s) with files"));
            }
            RebuildTarget::Project(one) => (one, RewriteScope::Project),
            RebuildTarget::Both(one) => (one, RewriteScope::Both),
        };
        let pages = match scope {
            RewriteScope::Project => "project pages",
            RewriteScope::Both => "project and index pages",
        };
        match one {
            Some(name) => {
                let package = check_package(&name)?;
                if !sockets.db.package_exists(&package).map_err(|e| e.to_string())? {
                    return Err(format!("unknown package {package}"));
                }
                web(sockets, WebRequest::Rewrite { package: package.clone(), scope })?;
                Ok(format!("queued the {pages} of {package} for rewriting"))
            }
            None => {
                let packages = sockets.db.all_packages().map_err(|e| e.to_string())?;
                let count = packages.len();
                // A newer full rebuild replaces what is left of an older one, widening scopes.
                let mut queued: HashMap<String, RewriteScope> = self.backlog.drain(..).collect();
                for package in packages {
                    let entry = queued.entry(package).or_insert(scope);
                    if scope == RewriteScope::Both {
                        *entry = RewriteScope::Both;
                    }
                }
                let mut backlog: Vec<(String, RewriteScope)> = queued.into_iter().collect();
                backlog.sort_by(|a, b| a.0.cmp(&b.0));
                self.backlog = backlog.into();
                ctx.schedule(Event::Rebuild, Duration::ZERO);
                Ok(format!("queued the {pages} of all {count} packages for rewriting"))
            }
        }
    }

    /// Hands the next batch of a full rebuild to the index writer.
    fn on_rebuild(&mut self, sockets: &Sockets, ctx: &mut Context<'_, Event>) {
        for _ in 0..REBUILD_BATCH {
            let Some((package, scope)) = self.backlog.pop_front() else { return };
            if let Err(e) = web(sockets, WebRequest::Rewrite { package: package.clone(), scope }) {
                tracing::warn!("rebuild: {e}; trying again in {REBUILD_RETRY:?} ({} packages to go)", self.backlog.len() + 1);
                self.backlog.push_front((package, scope));
                ctx.schedule(Event::Rebuild, REBUILD_RETRY);
                return;
            }
        }
        if self.backlog.is_empty() {
            tracing::info!("rebuild: every package's pages are queued");
        } else {
            ctx.schedule(Event::Rebuild, Duration::ZERO);
        }
    }

    /// Sessions held now.
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }
}

impl Task for MrChase {
    type Sockets = Sockets;
    type Event = Event;
    // Requests are still answered while paused: new work is refused with a reason, imports
    // under way finish.
    const PAUSE: PauseMode = PauseMode::Timers;

    fn poll_sockets<'s>(&self, sockets: &'s Sockets) -> Vec<(Event, &'s zmq::Socket)> {
        vec![(Event::Request, sockets.admin.socket())]
    }

    fn timers(&self) -> Vec<(Event, Duration)> {
        vec![(Event::Expire, EXPIRY_CHECK)]
    }

    fn handle(&mut self, event: Event, sockets: &mut Sockets, ctx: &mut Context<'_, Event>) -> anyhow::Result<()> {
        match event {
            Event::Request => self.on_request(sockets, ctx)?,
            Event::Expire => self.on_expire(sockets, ctx.now()),
            Event::Rebuild => self.on_rebuild(sockets, ctx),
        }
        Ok(())
    }

    fn on_quit(&mut self, sockets: &mut Sockets) {
        // The index writer stops after this task, so unfinished imports can still be undone.
        for (_, session) in std::mem::take(&mut self.sessions) {
            self.abandon(sockets, session, "the master is stopping");
        }
        if !self.backlog.is_empty() {
            tracing::warn!("stopping with {} packages of a rebuild not yet queued; run piw-rebuild again", self.backlog.len());
        }
    }
}

// ------------------------------------------------------------------------------------------
// Helpers
// ------------------------------------------------------------------------------------------

/// Checks an import against the database and the wheels' names; returns it with the package
/// name in canonical form.
fn check_import(sockets: &Sockets, mut request: ImportRequest) -> Result<ImportRequest, String> {
    request.package = check_package(&request.package)?;
    check_version(&request.version)?;
    check_text("the ABI", &request.abi, MAX_NAME, false)?;
    if request.files.is_empty() {
        return Err("no files listed for import".into());
    }
    if request.files.len() > MAX_IMPORT_FILES {
        return Err(format!("{} files listed; an import holds at most {MAX_IMPORT_FILES}", request.files.len()));
    }
    let mut seen = HashSet::new();
    for file in &request.files {
        let name = WheelName::parse(&file.filename).map_err(|e| e.to_string())?;
        if !name.is_for(&request.package) {
            return Err(format!("{} is not a wheel of {}", file.filename, request.package));
        }
        if !same_version(&name.version, &request.version) {
            return Err(format!("{} is not a wheel of version {}", file.filename, request.version));
        }
        if !seen.insert(file.filename.as_str()) {
            return Err(format!("{} is listed twice", file.filename));
        }
    }
    let db = &sockets.db;
    let abis = db.build_abis().map_err(|e| e.to_string())?;
    if !abis.iter().any(|a| a.tag == request.abi) {
        let known: Vec<&str> = abis.iter().map(|a| a.tag.as_str()).collect();
        return Err(format!("unknown ABI {}: the farm builds for {}", request.abi, if known.is_empty() { "none yet".into() } else { known.join(", ") }));
    }
    let version_exists = DbRequest::VersionExists { package: request.package.clone(), version: request.version.clone() };
    if !db.boolean(version_exists).map_err(|e| e.to_string())? {
        return Err(if db.package_exists(&request.package).map_err(|e| e.to_string())? {
            format!("unknown version {} {}: add it with piw-add (or piw-import --register)", request.package, request.version)
        } else {
            format!("unknown package {}: add it with piw-add (or piw-import --register)", request.package)
        });
    }
    Ok(request)
}

/// Has the file juggler expect every file of an import, so that a refusal comes before any
/// byte is sent; on a refusal, the transfers already made are abandoned.
fn expect_all(sockets: &Sockets, request: ImportRequest) -> Result<Import, String> {
    let mut states = Vec::with_capacity(request.files.len());
    for file in &request.files {
        let expect = FsRequest::Expect { package: request.package.clone(), file: Box::new(file.clone()) };
        let state = match sockets.fs.request(&expect, FS_TIMEOUT) {
            Ok(FsReply::Expecting { transfer }) => Ok(FileState::Pending(transfer)),
            Ok(FsReply::AlreadyHave) => Ok(FileState::Held),
            Ok(other) => Err(format!("the master refused {}: {}", file.filename, fs_reason(other))),
            Err(e) => Err(format!("the file juggler did not answer: {e}")),
        };
        match state {
            Ok(state) => states.push(state),
            Err(message) => {
                abandon_transfers(sockets, &states);
                return Err(message);
            }
        }
    }
    Ok(Import { request, states, current: 0, attempts: 0 })
}

/// Undoes an import: abandons its transfers and has the files it published removed, except
/// those a build has recorded in the meantime (another import or a slave's build of the same
/// release found them published and took them as they were).
fn undo(sockets: &Sockets, import: &Import) {
    abandon_transfers(sockets, &import.states);
    let published: Vec<String> = import
        .states
        .iter()
        .zip(&import.request.files)
        .filter(|(state, file)| **state == FileState::Published && !recorded(sockets, file))
        .map(|(_, file)| file.filename.clone())
        .collect();
    if published.is_empty() {
        return;
    }
    let request = &import.request;
    let delete = WebRequest::DeleteVersion {
        package: request.package.clone(),
        version: request.version.clone(),
        files: published.clone(),
        builds: Vec::new(),
    };
    if let Err(e) = web(sockets, delete) {
        tracing::error!("cannot remove the files of an unfinished import ({}): {e}; they are orphans now", published.join(", "));
    }
}

/// Whether the database holds a file with this one's contents; when it cannot tell, the file
/// counts as recorded (an orphan left on disk is better than a recorded file deleted).
fn recorded(sockets: &Sockets, file: &WheelFile) -> bool {
    match sockets.db.text(DbRequest::FileWithHash { sha256: file.sha256.clone() }) {
        Ok(None) => false,
        Ok(Some(_)) => true,
        Err(e) => {
            tracing::error!("cannot tell whether {} is recorded, so it stays: {e}", file.filename);
            true
        }
    }
}

fn abandon_transfers(sockets: &Sockets, states: &[FileState]) {
    for state in states {
        if let FileState::Pending(transfer) = state
            && let Err(e) = sockets.fs.request(&FsRequest::Abandon { transfer: *transfer }, FS_TIMEOUT)
        {
            tracing::warn!("cannot abandon transfer {transfer}: {e} (the file juggler's reaper will)");
        }
    }
}

fn fs_reason(reply: FsReply) -> String {
    match reply {
        FsReply::Failed { reason } | FsReply::Error { message: reason } => reason,
        other => format!("unexpected answer {other:?}"),
    }
}

fn yank_version(db: &DbClient, package: &str, version: &str, yank: bool) -> Result<(), String> {
    let reason = yank.then(String::new);
    db.done(DbRequest::YankVersion { package: package.into(), version: version.into(), reason }).map_err(|e| e.to_string())
}

/// Records spellings of a package's name in order, each seen a microsecond after the one
/// before, so that the last is the most recent (the display name).
fn record_names(db: &DbClient, package: &str, names: &[&str], now: Timestamp) -> Result<(), String> {
    for (n, name) in names.iter().enumerate() {
        let seen = now + chrono::Duration::microseconds(n as i64);
        db.done(DbRequest::NewPackageName { package: package.into(), name: (*name).into(), seen }).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// A project name as typed: letters, digits, `.`, `_` and `-`, starting and ending with a
/// letter or digit.
fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok { Ok(()) } else { Err(format!("{name:?} is not a valid project name")) }
}

/// Checks a project name and gives its canonical form.
fn check_package(name: &str) -> Result<String, String> {
    check_name(name)?;
    Ok(canonicalize(name))
}

/// A version string: what PyPI publishes, without separators or control characters.
fn check_version(version: &str) -> Result<(), String> {
    let ok = !version.is_empty()
        && version.len() <= MAX_NAME
        && version.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+' | '!'));
    if ok { Ok(()) } else { Err(format!("{version:?} is not a valid version")) }
}

/// A free text: no control characters, at most `max` characters, and not empty unless
/// `empty_ok`.
fn check_text(what: &str, text: &str, max: usize, empty_ok: bool) -> Result<(), String> {
    if text.is_empty() && !empty_ok {
        return Err(format!("{what} must not be empty"));
    }
    if text.chars().count() > max {
        return Err(format!("{what} is longer than {max} characters"));
    }
    if text.chars().any(char::is_control) {
        return Err(format!("{what} holds control characters"));
    }
    Ok(())
}

/// Whether a wheel's version tag names `version`: the same text, the same PEP 440 version, or
/// the same text once the file name's escaping (`-` written `_`) is undone.
fn same_version(tag: &str, version: &str) -> bool {
    tag == version
        || tag == version.replace('-', "_")
        || parse_version(tag).is_some_and(|t| parse_version(version).is_some_and(|v| t == v))
}

fn append_notes(message: &mut String, notes: &[String]) {
    if !notes.is_empty() {
        let _ = write!(message, " (but {})", notes.join("; "));
    }
}

fn request_name(request: &AdminRequest) -> &'static str {
    match request {
        AdminRequest::Hello { .. } => "Hello",
        AdminRequest::AddPackage { .. } => "AddPackage",
        AdminRequest::AddVersion { .. } => "AddVersion",
        AdminRequest::Import(_) => "Import",
        AdminRequest::Sent { .. } => "Sent",
        AdminRequest::RemovePackage { .. } => "RemovePackage",
        AdminRequest::RemoveVersion { .. } => "RemoveVersion",
        AdminRequest::Rebuild(_) => "Rebuild",
    }
}

/// Hands a request to the index writer; the error says why it was not taken.
fn web(sockets: &Sockets, request: WebRequest) -> Result<(), String> {
    match sockets.web.request(&request, WEB_TIMEOUT) {
        Ok(WebReply::Done) => Ok(()),
        Ok(WebReply::Error { message }) => Err(format!("the index writer refused: {message}")),
        Err(e) => Err(format!("the index writer did not answer: {e}")),
    }
}

fn trigger(sockets: &Sockets, reason: String) {
    if let Err(e) = sockets.trigger.send(&ArchitectTrigger::Refresh { reason }, LOCAL_SEND_TIMEOUT) {
        tracing::warn!("cannot ask the architect for a new queue: {e}");
    }
}

fn notice(sockets: &Sockets, ctx: &Context<'_, Event>, level: NoticeLevel, text: String) {
    if let Err(e) = sockets.status.send(&StatusEvent::Notice { at: ctx.utc(), level, text }, LOCAL_SEND_TIMEOUT) {
        tracing::debug!("notice not sent: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_versions_and_texts_are_checked() {
        assert_eq!(check_package("RPi.GPIO"), Ok("rpi-gpio".to_string()));
        for bad in ["", "-x", "x-", "a/b", "a b", "../x", "x\n"] {
            assert!(check_package(bad).is_err(), "{bad:?}");
        }
        assert!(check_version("1.0.post1+local").is_ok());
        for bad in ["", "1 0", "1/0", "1\0"] {
            assert!(check_version(bad).is_err(), "{bad:?}");
        }
        assert!(check_text("x", "", 10, true).is_ok());
        assert!(check_text("x", "", 10, false).is_err());
        assert!(check_text("x", "a\u{7}", 10, false).is_err());
        assert!(check_text("x", &"é".repeat(10), 10, false).is_ok());
        assert!(check_text("x", &"é".repeat(11), 10, false).is_err());
    }

    #[test]
    fn wheel_version_tags_match_their_release() {
        assert!(same_version("1.0", "1.0"));
        assert!(same_version("1.0", "1.0.0"));
        assert!(same_version("1.0_beta", "1.0-beta"));
        assert!(!same_version("1.1", "1.0"));
    }
}
