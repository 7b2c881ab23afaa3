//! Imports: wheels built elsewhere, checked whole, sent one at a time, verified, and recorded
//! as a build only once every file is published; undone when they cannot finish.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::time::Duration;

use piwheels_common::protocols::{AdminReply, BuildResult, ImportRequest, Timestamp, TransferId, WheelFile, WireError};

use crate::calls::db::{BuildAbis, BuildRecord, FileWithHash, LogBuild, NameForFile, PackageExists, RewriteScope, VersionExists};
use crate::calls::files::{Abandon, Expect, Expected, FileExpectation, Verification, Verify};
use crate::calls::CallError;
use crate::calls::tasks::WebRequest;
use piwheels_common::task::Context;
use piwheels_common::wheel::WheelName;

use piwheels_common::names::same_version;

use super::checks::{check_package, check_text, check_version};
use super::{Event, MAX_IMPORT_FILES, MAX_NAME, MAX_SEND_ATTEMPTS, MrChase, Sockets, append_notes, trigger, web};

/// Longest build time an import may claim for its wheels (they were built elsewhere; the
/// figure is only shown).
const MAX_IMPORT_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

/// Where one file of an import stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FileState {
    /// The file juggler expects it as this transfer.
    Pending(TransferId),
    /// The file juggler had it already, with these contents.
    Held,
    /// This import sent and published it.
    Published,
}

/// An import in progress.
#[derive(Debug)]
pub(super) struct Import {
    pub(super) request: ImportRequest,
    /// Per file of the request, in order.
    states: Vec<FileState>,
    /// The file asked for last.
    current: usize,
    /// Verification failures of the current file.
    attempts: u32,
    /// The key that may send the files (the tool's), when the admin socket authenticates.
    uploader: Option<String>,
    /// When the import began, for its provenance.
    began: Timestamp,
}

impl MrChase {
    pub(super) fn import(&mut self, sockets: &Sockets, ctx: &Context<'_, Event>, identity: &[u8], request: ImportRequest) -> AdminReply {
        let Some(session) = self.sessions.get(identity) else { return AdminReply::Error(WireError::refused("say Hello first")) };
        let (actor, key) = (session.actor.clone(), session.key.clone());
        if let Some(import) = &session.import {
            let message = format!(
                "an import of {} {} is already in progress on this connection",
                import.request.package, import.request.version
            );
            return AdminReply::Error(WireError::refused(message));
        }
        let summary = format!("{} {} for {}", request.package, request.version, request.abi);
        let import = match check_import(sockets, request).and_then(|request| expect_all(sockets, request, key, ctx.utc())) {
            Ok(import) => import,
            Err(error) => {
                let error = WireError { kind: error.kind, message: format!("{summary}: {}", error.message) };
                return self.conclude(sockets, ctx, &actor, "import", Err(error));
            }
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
            return AdminReply::Error(WireError::refused("no import is in progress on this connection"));
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

    pub(super) fn sent(&mut self, sockets: &Sockets, ctx: &Context<'_, Event>, identity: &[u8], filename: &str) -> AdminReply {
        let Some(session) = self.sessions.get_mut(identity) else { return AdminReply::Error(WireError::refused("say Hello first")) };
        let Some(import) = session.import.as_mut() else {
            return AdminReply::Error(WireError::refused(format!("Sent {filename:?} without an import in progress on this connection")));
        };
        let index = import.current;
        let (expected, state) = (import.request.files[index].filename.clone(), import.states[index]);
        let FileState::Pending(transfer) = state else {
            return self.fail_import(sockets, ctx, identity, WireError::refused(format!("Sent {filename:?}, but no file was asked for")));
        };
        if filename != expected {
            return self.fail_import(sockets, ctx, identity, WireError::refused(format!("Sent {filename:?}, but {expected} was asked for")));
        }
        match sockets.fs.call(Verify { transfer }) {
            Ok(Verification::Verified { file }) => {
                import.states[index] = FileState::Published;
                import.request.files[index] = *file;
                import.attempts = 0;
                self.next_file(sockets, ctx, identity)
            }
            Ok(Verification::Failed { reason }) => {
                import.attempts += 1;
                if import.attempts >= MAX_SEND_ATTEMPTS {
                    let reason = format!("{filename} failed verification {MAX_SEND_ATTEMPTS} times: {reason}");
                    return self.fail_import(sockets, ctx, identity, WireError::refused(reason));
                }
                tracing::warn!("{filename} failed verification, asking for it again: {reason}");
                // The transfer was rolled back: the file juggler needs to expect it afresh.
                let request = expect_request(&import.request, index, import.uploader.clone());
                match sockets.fs.call(request) {
                    Ok(Expected::Expecting { transfer }) => {
                        import.states[index] = FileState::Pending(transfer);
                        AdminReply::Send { filename: expected, transfer }
                    }
                    Ok(Expected::AlreadyHave { file }) => {
                        import.states[index] = FileState::Held;
                        import.request.files[index] = *file;
                        self.next_file(sockets, ctx, identity)
                    }
                    Ok(Expected::Refused { reason } | Expected::Conflict { reason }) => {
                        self.fail_import(sockets, ctx, identity, WireError::refused(format!("the master refused {expected}: {reason}")))
                    }
                    Err(e) => self.fail_import(sockets, ctx, identity, e.into()),
                }
            }
            Ok(Verification::Refused { reason } | Verification::Conflict { reason }) => {
                self.fail_import(sockets, ctx, identity, WireError::refused(format!("cannot verify {filename}: {reason}")))
            }
            // Asked of cross-checks only: the file was not published.
            Ok(Verification::Compared { .. }) => {
                let error = WireError::unavailable(format!("the file juggler compared {filename} instead of publishing it"));
                self.fail_import(sockets, ctx, identity, error)
            }
            Err(e) => self.fail_import(sockets, ctx, identity, e.into()),
        }
    }

    /// Ends a session's import with an error: undoes it and tells the tool why.
    fn fail_import(&mut self, sockets: &Sockets, ctx: &Context<'_, Event>, identity: &[u8], error: WireError) -> AdminReply {
        let Some(session) = self.sessions.get_mut(identity) else { return AdminReply::Error(error) };
        let actor = session.actor.clone();
        let Some(import) = session.import.take() else { return AdminReply::Error(error) };
        undo(sockets, &import);
        let request = &import.request;
        let removed = import.states.iter().zip(&request.files).filter(|(s, f)| **s == FileState::Published && !recorded(sockets, f)).count();
        let mut message = format!("{} {} for {}: {}", request.package, request.version, request.abi, error.message);
        if removed > 0 {
            let _ = write!(message, " (the {removed} file(s) it had published were removed again)");
        }
        self.conclude(sockets, ctx, &actor, "import", Err(WireError { kind: error.kind, message }))
    }

    /// Records an import whose files are all in, and asks for its log and pages.
    fn finish(&mut self, sockets: &Sockets, ctx: &Context<'_, Event>, identity: &[u8]) -> AdminReply {
        let Some(session) = self.sessions.get_mut(identity) else { return AdminReply::Error(WireError::refused("say Hello first")) };
        let actor = session.actor.clone();
        let Some(import) = session.import.take() else {
            return AdminReply::Error(WireError::refused("no import is in progress on this connection"));
        };
        let request = &import.request;
        let record = BuildRecord {
            built_by: 0,
            builder: format!("import by {actor}").chars().take(MAX_NAME / 2).collect(),
            package: request.package.clone(),
            version: request.version.clone(),
            abi: request.abi.clone(),
            started_at: import.began,
            builder_key: import.uploader.clone(),
            environment: Default::default(),
            source: None,
            result: BuildResult {
                success: true,
                failure: None,
                exit_status: None,
                // The importer's words, bounded as a slave's are.
                duration: request.duration.min(MAX_IMPORT_DURATION),
                cpu_time: Duration::ZERO,
                peak_memory: 0,
                output: crate::slave_state::bounded_log(request.output.clone()),
                files: request.files.clone(),
            },
        };
        let rewrite = record.pending_rewrite(ctx.utc());
        let build_id = match sockets.db.call(LogBuild { build: Box::new(record), rewrite_at: rewrite.added_at, cross_check: false }) {
            Ok(id) => id,
            Err(e @ CallError::Transport { .. }) => {
                // No answer: the build may yet be recorded, with its files, so they stay, and
                // its pages are asked for in case it was. If it was not, the consistency check
                // removes the files, or importing again takes them as they are.
                if let Err(e) = web(sockets, WebRequest::Rewrite { package: request.package.clone(), scope: RewriteScope::Both }) {
                    tracing::warn!("the index writer did not take the rewrite of {}: {e}", request.package);
                }
                let message = format!(
                    "{} {} for {}: the database did not answer whether it recorded the build: {e} (its files stay \
                     published; `piw-check` tells whether they are recorded)",
                    request.package, request.version, request.abi
                );
                return self.conclude(sockets, ctx, &actor, "import", Err(WireError { kind: e.kind(), message }));
            }
            Err(e) => {
                undo(sockets, &import);
                let message = format!(
                    "{} {} for {}: cannot record the build: {e} (the files it had published were removed again)",
                    request.package, request.version, request.abi
                );
                return self.conclude(sockets, ctx, &actor, "import", Err(WireError { kind: e.kind(), message }));
            }
        };
        let mut notes = Vec::new();
        if let Err(e) = web(sockets, WebRequest::Built { build_id, output: request.output.clone(), rewrite }) {
            notes.push(format!("the index writer did not take its log and pages (the pages are rewritten at its next start): {e}"));
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
}

/// Checks an import against the database and the wheels' names; returns it with the package
/// name in canonical form.
fn check_import(sockets: &Sockets, mut request: ImportRequest) -> Result<ImportRequest, WireError> {
    request.package = check_package(&request.package)?;
    check_version(&request.version)?;
    check_text("the ABI", &request.abi, MAX_NAME, false)?;
    if request.files.is_empty() {
        return Err(WireError::refused("no files listed for import"));
    }
    if request.files.len() > MAX_IMPORT_FILES {
        return Err(WireError::refused(format!("{} files listed; an import holds at most {MAX_IMPORT_FILES}", request.files.len())));
    }
    let mut seen = HashSet::new();
    for file in &request.files {
        let name = WheelName::parse(&file.filename).map_err(|e| WireError::refused(e.to_string()))?;
        if !name.is_for(&request.package) {
            return Err(WireError::refused(format!("{} is not a wheel of {}", file.filename, request.package)));
        }
        if !same_version(&name.version, &request.version) {
            return Err(WireError::refused(format!("{} is not a wheel of version {}", file.filename, request.version)));
        }
        if !seen.insert(file.filename.as_str()) {
            return Err(WireError::refused(format!("{} is listed twice", file.filename)));
        }
    }
    let db = &sockets.db;
    let abis = db.call(BuildAbis {})?;
    if !abis.iter().any(|a| a.tag == request.abi) {
        let known: Vec<&str> = abis.iter().map(|a| a.tag.as_str()).collect();
        return Err(WireError::refused(format!("unknown ABI {}: the farm builds for {}", request.abi, if known.is_empty() { "none yet".into() } else { known.join(", ") })));
    }
    let version_exists = VersionExists { package: request.package.clone(), version: request.version.clone() };
    if !db.call(version_exists)? {
        return Err(WireError::refused(if db.call(PackageExists { package: request.package.clone() })? {
            format!("unknown version {} {}: add it with piw-add (or piw-import --register)", request.package, request.version)
        } else {
            format!("unknown package {}: add it with piw-add (or piw-import --register)", request.package)
        }));
    }
    Ok(request)
}

/// The request that has the file juggler expect file `index` of an import.
fn expect_request(request: &ImportRequest, index: usize, uploader: Option<String>) -> Expect {
    let expectation = FileExpectation { version: request.version.clone(), abi: request.abi.clone(), platform: String::new(), uploader };
    Expect { package: request.package.clone(), file: Box::new(request.files[index].clone()), expectation: Box::new(expectation), must_send: false, compare_with: None }
}

/// Has the file juggler expect every file of an import, so that a refusal comes before any
/// byte is sent; on a refusal, the transfers already made are abandoned. The descriptions of
/// files the index holds already become the master's own.
fn expect_all(sockets: &Sockets, mut request: ImportRequest, uploader: Option<String>, began: Timestamp) -> Result<Import, WireError> {
    let mut states = Vec::with_capacity(request.files.len());
    for index in 0..request.files.len() {
        let file = request.files[index].clone();
        // A name the index ever recorded keeps its bytes: an import under it with other bytes
        // is refused before anything is published (the operator names imported files).
        let naming = NameForFile { package: request.package.clone(), filename: file.filename.clone(), sha256: file.sha256.clone() };
        let state = match sockets.db.call(naming) {
            Ok(name) if name != file.filename => Err(WireError::refused(format!(
                "{} cannot be imported under its name: a name the index published keeps its bytes, and installers take \
                 a wheel's newest build tag; import it as {name}",
                file.filename
            ))),
            Ok(_) => Ok(()),
            Err(e) => Err(e.into()),
        };
        let state = state.and_then(|()| match sockets.fs.call(expect_request(&request, index, uploader.clone())) {
            Ok(Expected::Expecting { transfer }) => Ok(FileState::Pending(transfer)),
            Ok(Expected::AlreadyHave { file }) => {
                request.files[index] = *file;
                Ok(FileState::Held)
            }
            Ok(Expected::Refused { reason } | Expected::Conflict { reason }) => {
                Err(WireError::refused(format!("the master refused {}: {reason}", file.filename)))
            }
            Err(e) => Err(e.into()),
        });
        match state {
            Ok(state) => states.push(state),
            Err(message) => {
                abandon_transfers(sockets, &states);
                return Err(message);
            }
        }
    }
    Ok(Import { request, states, current: 0, attempts: 0, uploader, began })
}

/// Undoes an import: abandons its transfers and has the files it published removed, except
/// those a build has recorded in the meantime (another import or a slave's build of the same
/// release found them published and took them as they were).
pub(super) fn undo(sockets: &Sockets, import: &Import) {
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
    match sockets.db.call(FileWithHash { sha256: file.sha256.clone() }) {
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
            && let Err(e) = sockets.fs.call(Abandon { transfer: *transfer })
        {
            tracing::warn!("cannot abandon transfer {transfer}: {e} (the file juggler's reaper will)");
        }
    }
}

