//! MrChase, the admin endpoint: serves the administrators' tools (`piw-import`, `piw-add`,
//! `piw-remove`, `piw-rebuild`). It registers packages and versions, imports wheels built
//! elsewhere, removes packages, versions or their builds, and asks for pages to be rewritten;
//! every action goes to the audit log with the actor the tool named in its hello.
//!
//! Sockets: binds the import socket (ROUTER, external, usually ipc: [`AdminRequest`] →
//! [`AdminReply`]); connects to the oracles, the file juggler ([`wiring::FS`]), the index
//! writer, the stats task, the architect's trigger, the status socket and, through
//! [`Remover`], the slave driver's deletion socket.
//!
//! Each connection is a session, keyed by its ZeroMQ identity, so several tools can work at
//! once: a session starts with `Hello` (refused on a version mismatch, naming both versions;
//! anything sent before it is refused too; welcomed with the ABIs the farm builds for) and
//! holds at most one import in progress. Sessions quiet for [`SESSION_IDLE`] are forgotten,
//! and an import they left unfinished is undone.
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

mod checks;
mod imports;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use piwheels_common::keys::Endpoint;
use piwheels_common::names::canonicalize;
use piwheels_common::protocols::{AdminReply, AdminRequest, ErrorKind, NoticeLevel, PackageVersion, RebuildTarget, RequeueRequest, StatusEvent, Timestamp, TriageReport, WireError};
use piwheels_common::task::{Context, PauseMode, Task};
use piwheels_common::transport::{Client, DEFAULT_MAX_MESSAGE, Peer, Sender, Server};

use crate::calls::db::{AllPackages, Audit, BuildAbis, PendingRewriteCount, NewPackage, NewPackageName, NewVersion, PackageExists, RewriteScope, SearchIndex, SetDescription, SkipPackage, SkipVersion, VersionExists, WantCrossCheck, WantRebuild, Requeue, Triage as TriageCall, YankVersion};
use crate::calls::files::{FsReply, FsRequest};
use crate::calls::tasks::{ArchitectTrigger, StatsUpdate, WebReply, WebRequest};
use crate::db_client::DbClient;
use crate::gatekeeper::{Auth, Caller, Gate};
use crate::removal::Remover;
use crate::wiring::{self, TaskName};
use checks::{check_name, check_package, check_text, check_version};
use imports::{Import, undo};

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
/// Longest yank reason, in characters (the database's column).
const MAX_YANK_REASON: usize = 200;
/// Longest description (the database's column size).
const MAX_DESCRIPTION: usize = 200;

/// The admin endpoint's settings.
#[derive(Debug, Clone)]
pub struct ChaseConfig {
    /// Where the tools connect, e.g. `ipc:///run/piwheels/import`.
    pub import_queue: String,
    /// How long the database may take to answer.
    pub db_timeout: Duration,
    /// Who may connect to the import socket.
    pub auth: Auth,
    /// Whether the triage looks Debian packages up (`--debian-contents`), for its report.
    pub debian_contents: bool,
}

/// The admin endpoint's sockets.
#[derive(Debug)]
pub struct Sockets {
    admin: Server<AdminRequest, AdminReply>,
    db: DbClient,
    fs: crate::calls::Caller<FsRequest, FsReply>,
    web: Client<WebRequest, WebReply>,
    stats: Sender<StatsUpdate>,
    trigger: Sender<ArchitectTrigger>,
    status: Sender<StatusEvent>,
    remover: Remover,
    gate: Gate,
}

impl Sockets {
    /// Binds the import socket and connects to the rest.
    pub fn open(ctx: &zmq::Context, config: &ChaseConfig, status_endpoint: &str) -> anyhow::Result<Sockets> {
        Ok(Sockets {
            admin: Server::bind_external(
                ctx,
                &config.import_queue,
                IMPORT_MAX_MESSAGE,
                Some(piwheels_common::transport::REQUESTS_PER_PEER),
                &config.auth.security(Endpoint::Admin, &config.import_queue),
            )?,
            db: wiring::DB.caller(ctx, TaskName::MrChase, config.db_timeout)?,
            fs: wiring::FS.caller(ctx, TaskName::MrChase, FS_TIMEOUT)?,
            web: wiring::WEB.client(ctx, TaskName::MrChase)?,
            stats: wiring::STATS.push(ctx, TaskName::MrChase)?,
            trigger: wiring::ARCHITECT.push(ctx, TaskName::MrChase)?,
            status: Sender::push(ctx, status_endpoint)?,
            remover: Remover::connect(ctx, TaskName::MrChase)?,
            gate: config.auth.gate(Endpoint::Admin, &config.import_queue),
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

/// A connection that said hello.
#[derive(Debug)]
struct Session {
    /// Who, for the audit log.
    actor: String,
    /// Its key (Z85), when the admin socket authenticates: only that key may send its files.
    key: Option<String>,
    /// When it last sent something.
    seen: Instant,
    import: Option<Import>,
}

/// The outcome of a request that ends in `Done` or `Error`: a sentence either way.
type Outcome = Result<String, WireError>;

/// The admin endpoint.
#[derive(Debug)]
pub struct MrChase {
    config: ChaseConfig,
    sessions: HashMap<Vec<u8>, Session>,
    /// Packages whose pages a full rebuild still has to ask for.
    backlog: VecDeque<(String, RewriteScope)>,
    /// When the index writer was last asked for a rebuild's pages (none since the start): the
    /// rewrites it recorded until then are the ones piw-rebuild waits for.
    rebuild_asked: Option<Timestamp>,
    /// Requests that could not be decoded, since the start.
    bad_requests: u64,
}

impl MrChase {
    /// An endpoint with no sessions.
    pub fn new(config: ChaseConfig) -> MrChase {
        MrChase { config, sessions: HashMap::new(), backlog: VecDeque::new(), rebuild_asked: None, bad_requests: 0 }
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
        let caller = match sockets.gate.admit(&peer) {
            Ok(caller) => caller,
            Err(refusal) => {
                // A key revoked since its connection was made (the gate logged it).
                if let Some(old) = self.sessions.remove(peer.identity()) {
                    self.abandon(sockets, old, "its key was refused");
                }
                let _ = sockets.admin.send(&peer, &AdminReply::Error(WireError::refused(refusal.to_string())));
                return Ok(());
            }
        };
        let reply = match request {
            Ok(request) => self.answer(sockets, ctx, &peer, &caller, request),
            Err(e) => {
                self.bad_requests += 1;
                tracing::warn!("bad request from {peer} ({} so far): {e}", self.bad_requests);
                AdminReply::Error(WireError::refused(format!("the master could not read that request: {e}")))
            }
        };
        if let Err(e) = sockets.admin.send(&peer, &reply) {
            // The tool went away; its session is forgotten when it expires.
            tracing::info!("cannot answer {peer}: {e}");
        }
        Ok(())
    }

    fn answer(&mut self, sockets: &Sockets, ctx: &mut Context<'_, Event>, peer: &Peer, caller: &Caller, request: AdminRequest) -> AdminReply {
        let identity = peer.identity().to_vec();
        let now = ctx.now();
        if let AdminRequest::Hello { versions, actor } = request {
            if let Err(mismatch) = versions.check() {
                tracing::warn!("refused {actor:?} from {peer}: {mismatch}");
                return AdminReply::Error(WireError::refused(mismatch.to_string()));
            }
            if let Err(reason) = check_text("the actor", &actor, MAX_NAME, false) {
                tracing::warn!("refused a tool from {peer}: {reason}");
                return AdminReply::Error(reason);
            }
            if let Some(old) = self.sessions.remove(&identity) {
                self.abandon(sockets, old, "the tool said hello again");
            }
            let abis = match farm_abis(sockets) {
                Ok(abis) => abis,
                Err(e) => return AdminReply::Error(e),
            };
            self.make_room(sockets);
            let actor = audit_actor(caller, &actor);
            tracing::info!("{actor} attached from {peer}");
            self.sessions.insert(identity, Session { actor, key: peer.user().map(str::to_string), seen: now, import: None });
            return AdminReply::Welcome { abis };
        }
        let Some(session) = self.sessions.get_mut(&identity) else {
            tracing::warn!("{} from {peer} before hello", request_name(&request));
            return AdminReply::Error(WireError::refused("say Hello (with your versions) first"));
        };
        session.seen = now;
        let actor = session.actor.clone();
        if let AdminRequest::Sent { filename } = request {
            return self.sent(sockets, ctx, &identity, &filename);
        }
        // A question, not an action: nothing to audit, answered while paused too. A rewrite
        // recorded after the last rebuild request is left out: on a busy farm some are always
        // waiting.
        if let AdminRequest::RewritesPending = request {
            let recorded = match self.rebuild_asked {
                Some(until) => sockets.db.call(PendingRewriteCount { until }),
                None => Ok(0),
            };
            return match recorded {
                Ok(recorded) => AdminReply::Pending { packages: recorded.saturating_add(self.backlog.len() as u64) },
                Err(e) => AdminReply::Error(e.into()),
            };
        }
        // Questions too: the report, and what a re-queue would queue.
        if let AdminRequest::Triage { abi } = request {
            return match sockets.db.call(TriageCall { abi }) {
                Ok(report) => AdminReply::Triage(TriageReport { contents: self.config.debian_contents, ..report }),
                Err(e) => AdminReply::Error(e.into()),
            };
        }
        if let AdminRequest::Requeue(wanted) = &request
            && wanted.dry_run
        {
            return match requeue(sockets, wanted.clone(), ctx.utc()) {
                Ok(message) => AdminReply::Done { message },
                Err(error) => AdminReply::Error(error),
            };
        }
        if ctx.paused() {
            return AdminReply::Error(WireError::unavailable("the master is paused: try again once it is resumed"));
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
                ("remove-package", self.remove(sockets, &name, None, builds_only, skip, None))
            }
            AdminRequest::RemoveVersion { name, version, builds_only, skip, yank } => {
                ("remove-version", self.remove(sockets, &name, Some(&version), builds_only, skip, yank))
            }
            AdminRequest::Rebuild(target) => ("rebuild", self.rebuild(sockets, ctx, target)),
            AdminRequest::Requeue(wanted) => ("requeue", requeue(sockets, wanted, ctx.utc())),
            AdminRequest::Hello { .. }
            | AdminRequest::Sent { .. }
            | AdminRequest::Import(_)
            | AdminRequest::RewritesPending
            | AdminRequest::Triage { .. } => {
                unreachable!("answered above")
            }
        };
        self.conclude(sockets, ctx, &actor, action, outcome)
    }

    /// Writes an outcome to the audit log (and, when something was done, tells monitors) and
    /// makes it the reply.
    fn conclude(&self, sockets: &Sockets, ctx: &Context<'_, Event>, actor: &str, action: &str, outcome: Outcome) -> AdminReply {
        let detail = match &outcome {
            Ok(message) => message.clone(),
            Err(error) if error.kind == ErrorKind::Refused => format!("refused: {}", error.message),
            Err(error) => format!("failed: {}", error.message),
        };
        if let Err(e) = sockets.db.call(Audit { actor: actor.into(), action: action.into(), detail: detail.clone() }) {
            tracing::error!("cannot write to the audit log ({actor}, {action}, {detail}): {e}");
        }
        match outcome {
            Ok(message) => {
                tracing::info!("{actor}: {message}");
                notice(sockets, ctx, NoticeLevel::Info, format!("{actor}: {message}"));
                AdminReply::Done { message }
            }
            Err(error) => {
                tracing::info!("{actor}, {action}: {}", error.message);
                AdminReply::Error(error)
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
            if let Err(e) = sockets.db.call(Audit { actor: session.actor.clone(), action: "import".into(), detail }) {
                tracing::error!("cannot write to the audit log: {e}");
            }
        }
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
            return Err(WireError::refused("cannot both skip and unskip a package"));
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
                return Err(WireError::refused(format!("alias {alias:?} does not match the package: its canonical name is {}, not {package}", canonicalize(alias))));
            }
        }
        let db = &sockets.db;
        let added = db
            .call(NewPackage { package: package.clone(), skip: skip.clone().unwrap_or_default(), description: description.clone().unwrap_or_default() })
            ?;
        let mut changes = Vec::new();
        let scope = if added {
            RewriteScope::Both
        } else {
            if skip.is_some() {
                return Err(WireError::refused(format!("package {package} exists: skip it with piw-remove --skip, which also removes its files")));
            }
            if unskip {
                db.call(SkipPackage { package: package.clone(), reason: String::new() })?;
                changes.push("unskipped".to_string());
            }
            if let Some(description) = description.as_ref().filter(|d| !d.is_empty()) {
                db.call(SetDescription { package: package.clone(), description: description.clone() })
                    ?;
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
            return Err(WireError::refused("cannot both skip and unskip a version"));
        }
        if yank && unyank {
            return Err(WireError::refused("cannot both yank and unyank a version"));
        }
        if let Some(skip) = &skip {
            check_text("the skip reason", skip, MAX_SKIP, false)?;
        }
        let db = &sockets.db;
        if !db.call(PackageExists { package: package.clone() })? {
            return Err(WireError::refused(format!("unknown package {package}: add it with piw-add {name} first")));
        }
        let new = NewVersion { package: package.clone(), version: version.into(), released, skip: skip.clone().unwrap_or_default() };
        let added = db.call(new)?;
        let mut changes = Vec::new();
        if added {
            if yank {
                yank_version(db, &package, version, Some(String::new()))?;
                changes.push("yanked".to_string());
            }
            if let Some(reason) = &skip {
                changes.push(format!("skipped: {reason}"));
            }
        } else {
            if skip.is_some() {
                return Err(WireError::refused(format!("version {package} {version} exists: skip it with piw-remove --skip, which also removes its files")));
            }
            if yank {
                return Err(WireError::refused(format!("version {package} {version} exists: yank it with piw-remove --yank")));
            }
            if unskip {
                let request = SkipVersion { package: package.clone(), version: version.into(), reason: String::new() };
                db.call(request)?;
                changes.push("unskipped".to_string());
            }
            if unyank {
                yank_version(db, &package, version, None)?;
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

    fn remove(&self, sockets: &Sockets, name: &str, version: Option<&str>, builds_only: bool, skip: Option<String>, yank: Option<String>) -> Outcome {
        let package = check_package(name)?;
        if let Some(version) = version {
            check_version(version)?;
        }
        if let Some(skip) = &skip {
            check_text("the skip reason", skip, MAX_SKIP, false)?;
            if skip.is_empty() {
                return Err(WireError::refused("the skip reason must not be empty"));
            }
        }
        let db = &sockets.db;
        let what = match version {
            Some(version) => {
                if !db.call(VersionExists { package: package.clone(), version: version.into() })? {
                    return Err(WireError::refused(format!("unknown version {package} {version}")));
                }
                format!("version {package} {version}")
            }
            None => {
                if !db.call(PackageExists { package: package.clone() })? {
                    return Err(WireError::refused(format!("unknown package {package}")));
                }
                format!("package {package}")
            }
        };
        if let Some(reason) = yank {
            let Some(version) = version else { return Err(WireError::refused("only a version can be yanked")) };
            if builds_only || skip.is_some() {
                return Err(WireError::refused("yanking keeps the version and its files: it cannot be combined with removing builds or skipping"));
            }
            check_text("the yank reason", &reason, MAX_YANK_REASON, true)?;
            yank_version(db, &package, version, Some(reason.clone()))?;
            let mut message = match reason.is_empty() {
                true => format!("yanked {what}"),
                false => format!("yanked {what}: {reason}"),
            };
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
            Err(e) => Err(WireError::unavailable(format!("{e:#} (while removing {what}; run the removal again to finish it)"))),
        }
    }

    // --------------------------------------------------------------------------------------
    // Rebuilds
    // --------------------------------------------------------------------------------------

    fn rebuild(&mut self, sockets: &Sockets, ctx: &mut Context<'_, Event>, target: RebuildTarget) -> Outcome {
        let (one, scope) = match target {
            RebuildTarget::Home => {
                sockets.stats.send(&StatsUpdate::RefreshHome, LOCAL_SEND_TIMEOUT).map_err(|e| WireError::unavailable(format!("the stats task did not take the request: {e}")))?;
                return Ok("the home page will be rewritten with fresh figures".into());
            }
            RebuildTarget::Search => {
                let entries = sockets.db.call(SearchIndex {})?;
                let count = entries.len();
                web(sockets, WebRequest::Search { entries })?;
                return Ok(format!("rewrote the search index: {count} package(s) with files"));
            }
            RebuildTarget::Project(one) => (one, RewriteScope::Project),
            RebuildTarget::Both(one) => (one, RewriteScope::Both),
            RebuildTarget::Release { package, version, abi } => return build_again(sockets, &package, &version, abi, ctx.utc()),
            RebuildTarget::CrossCheck { package, version, abi } => return cross_check(sockets, &package, &version, abi),
        };
        let pages = match scope {
            RewriteScope::Project => "project pages",
            RewriteScope::Both => "project and index pages",
        };
        match one {
            Some(name) => {
                let package = check_package(&name)?;
                if !sockets.db.call(PackageExists { package: package.clone() })? {
                    return Err(WireError::refused(format!("unknown package {package}")));
                }
                web(sockets, WebRequest::Rewrite { package: package.clone(), scope })?;
                self.rebuild_asked = Some(ctx.utc());
                Ok(format!("queued the {pages} of {package} for rewriting"))
            }
            None => {
                let packages = sockets.db.call(AllPackages {})?;
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
            self.rebuild_asked = Some(ctx.utc());
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

/// Yanks a version with `reason` ("" for none), or unyanks it with None.
/// The ABIs the farm builds for (those `build_abis` does not skip), by Python version, for a
/// tool's welcome; at most [`AdminReply::MAX_ABIS`].
fn farm_abis(sockets: &Sockets) -> Result<Vec<String>, WireError> {
    let abis: Vec<String> = sockets.db.call(BuildAbis {})?.into_iter().filter(|abi| abi.skip.is_empty()).map(|abi| abi.tag).collect();
    if abis.len() > AdminReply::MAX_ABIS {
        tracing::warn!("the farm builds for {} ABIs: a tool's welcome names the first {}", abis.len(), AdminReply::MAX_ABIS);
    }
    Ok(abis.into_iter().take(AdminReply::MAX_ABIS).collect())
}

fn yank_version(db: &DbClient, package: &str, version: &str, reason: Option<String>) -> Result<(), WireError> {
    Ok(db.call(YankVersion { package: package.into(), version: version.into(), reason })?)
}

/// Records spellings of a package's name in order, each seen a microsecond after the one
/// before, so that the last is the most recent (the display name).
fn record_names(db: &DbClient, package: &str, names: &[&str], now: Timestamp) -> Result<(), WireError> {
    for (n, name) in names.iter().enumerate() {
        let seen = now + chrono::Duration::microseconds(n as i64);
        db.call(NewPackageName { package: package.into(), name: (*name).into(), seen })?;
    }
    Ok(())
}

fn append_notes(message: &mut String, notes: &[String]) {
    if !notes.is_empty() {
        let _ = write!(message, " (but {})", notes.join("; "));
    }
}

/// Who the audit log says acted: the key (which the master vouches for) before what the tool
/// says of its user, within the column's size.
fn audit_actor(caller: &Caller, tool_actor: &str) -> String {
    match caller {
        Caller::Key { label, fingerprint, .. } => {
            let mut actor = format!("key {label} ({fingerprint}): ");
            for c in tool_actor.chars() {
                if actor.len() + c.len_utf8() > MAX_NAME {
                    break;
                }
                actor.push(c);
            }
            actor
        }
        Caller::Local => tool_actor.to_string(),
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
        AdminRequest::RewritesPending => "RewritesPending",
        AdminRequest::Triage { .. } => "Triage",
        AdminRequest::Requeue(_) => "Requeue",
    }
}

/// Most releases a re-queue's answer names.
const REQUEUE_SHOWN: usize = 20;

/// Queues again the releases whose latest build failed for the cause `wanted` names
/// (`piw-triage requeue`), or says which it would for a dry run.
fn requeue(sockets: &Sockets, wanted: RequeueRequest, at: Timestamp) -> Outcome {
    let too_long = |what: &str, value: &Option<String>, max: usize| match value {
        Some(value) if value.len() > max => Err(WireError::refused(format!("the {what} is longer than {max} bytes"))),
        _ => Ok(()),
    };
    too_long("detail", &wanted.detail, crate::triage::classify::MAX_DETAIL)?;
    too_long("Debian package name", &wanted.debian_package, 255)?;
    too_long("ABI", &wanted.abi, 100)?;
    let mut cause = match wanted.class {
        Some(class) => class.describe(wanted.detail.as_deref().unwrap_or_default()),
        None => "any class".to_string(),
    };
    if let Some(package) = &wanted.debian_package {
        cause.push_str(&format!(", cured by Debian package {package}"));
    }
    if let Some(abi) = &wanted.abi {
        cause.push_str(&format!(", on {abi}"));
    }
    let dry_run = wanted.dry_run;
    let chosen = sockets.db.call(Requeue { request: wanted, at })?;
    if chosen.is_empty() {
        return Ok(format!("no failed release waits with this cause ({cause})"));
    }
    if !dry_run {
        let releases: BTreeSet<PackageVersion> = chosen.iter().map(|(release, _)| release.clone()).collect();
        if let Err(e) = sockets.remover.build_again(releases.into_iter().collect()) {
            // The requests are recorded: each release is built once the driver's hold on it ends.
            tracing::warn!("{e:#}");
        }
        trigger(sockets, format!("{} failed build(s) to be tried again", chosen.len()));
    }
    let named: Vec<String> = chosen.iter().take(REQUEUE_SHOWN).map(|(r, abi)| format!("{} {} {abi}", r.package, r.version)).collect();
    let mut shown = named.join(", ");
    if chosen.len() > REQUEUE_SHOWN {
        shown.push_str(&format!(" and {} more", chosen.len() - REQUEUE_SHOWN));
    }
    let verb = if dry_run { "would queue" } else { "queued" };
    Ok(format!("{verb} {} failed build(s) again ({cause}): {shown}", chosen.len()))
}

/// Hands a request to the index writer; the error says why it was not taken.
fn web(sockets: &Sockets, request: WebRequest) -> Result<(), WireError> {
    request.send_to(&sockets.web).map_err(WireError::unavailable)
}

/// Asks for a new build of a release (`piw-rebuild build`), its published files kept.
fn build_again(sockets: &Sockets, package: &str, version: &str, abi: Option<String>, at: Timestamp) -> Outcome {
    let package = check_package(package)?;
    check_version(version)?;
    // The database refuses an ABI it does not build.
    let abis = sockets.db.call(WantRebuild { package: package.clone(), version: version.to_string(), abi, at })?;
    if let Err(e) = sockets.remover.build_again(vec![PackageVersion { package: package.clone(), version: version.to_string() }]) {
        // The request is recorded: the release is built once the driver's hold on it ends.
        tracing::warn!("{e:#}");
    }
    trigger(sockets, format!("{package} {version} to be built again"));
    Ok(format!(
        "{package} {version} is to be built again on {}; its published files stay, and a wheel with other bytes is published with the next build tag",
        abis.join(", ")
    ))
}

fn cross_check(sockets: &Sockets, package: &str, version: &str, abi: Option<String>) -> Outcome {
    let package = check_package(package)?;
    check_version(version)?;
    let abis = sockets.db.call(WantCrossCheck { package: package.clone(), version: version.to_string(), abi })?;
    trigger(sockets, format!("{package} {version} to be cross-checked"));
    Ok(format!(
        "{package} {version} is to be cross-checked on {}: another builder of the ABI builds it again from the same source, \
         and the project page shows whether the wheels are the same",
        abis.join(", ")
    ))
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
