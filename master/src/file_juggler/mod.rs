//! FileJuggler, the file receiver: takes wheels from uploaders (slaves and piw-import) in
//! chunks it asks for, checks and hashes them as they arrive, keeps them outside the served
//! tree until they are verified, then publishes them under `<output>/simple/<package>/` with
//! their `.metadata` side files.
//!
//! Sockets: binds the file endpoint (ROUTER, external, usually tcp: uploaders' [`FileRequest`]
//! → [`FileReply`]) and [`wiring::FS`] (ROUTER, inproc: the slave driver's and the admin
//! endpoint's [`FsRequest`] → [`FsReply`]).
//!
//! Its parts: [`transfer`] follows one transfer's bytes (no I/O), [`staging`] keeps transfers
//! on disk until they are verified (and across restarts), [`publication`] checks what may be
//! published and puts it in the served tree. This module is the task: it answers the sockets
//! and moves each transfer between them.
//!
//! How a transfer goes:
//!
//! 1. `Expect { package, file, expectation, must_send }` checks the file's name against the
//!    release and build it must belong to (package, version, ABI and platform tags), its size
//!    and hash, and answers `Expecting { transfer }` with a random id (ids are capabilities,
//!    not counters); or `AlreadyHave` when the file is published with those bytes, unless
//!    `must_send` (a builder's file: the bytes are received and compared with the published
//!    ones). An unfinished transfer of the same file is reused, so a re-sent file resumes.
//! 2. The uploader says `Hello { versions, transfer }`. When the file socket authenticates,
//!    only a connection of the key the expectation names may; its connection is bound to the
//!    transfer (a later hello from another connection of that key takes the transfer over: the
//!    slave reconnected) and the juggler
//!    keeps up to `window` `Fetch`es in flight, in increasing offset order, each at most
//!    `chunk_size` bytes. Every `Chunk` must answer a fetch exactly. Chunks that arrive ahead
//!    of the written prefix wait in memory (at most `window` of them) so that the file is
//!    written and hashed in one pass and never read back. When every byte is in: `Done`.
//! 3. `Verify { transfer }` compares size and SHA-256 with what was announced, then reads the
//!    wheel's archive: its one `METADATA` must name the package and version. On a mismatch the
//!    transfer is rolled back; on a match the file's data is synced, its `.metadata` (the
//!    wheel's own METADATA, never the sender's copy) written beside its final place, and it is
//!    linked into `simple/<package>/` (a hard link,
//!    which fails rather than replace an existing file: a published file is never
//!    overwritten) before the directory is synced, `Verified` answered with the description
//!    read from the wheel (which the caller records instead of the sender's) and the staging
//!    files removed. A file published meanwhile (or before, for `must_send`) with the same
//!    bytes is not published again: `Verified` describes the published one.
//!
//! Transfers not touched for `abandon_after` are removed by a periodic reaper.

mod publication;
mod staging;
mod transfer;

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use piwheels_common::clock::SharedClock;
use piwheels_common::codec::FileRequestRef;
use piwheels_common::keys::Endpoint;
use piwheels_common::protocols::{FileReply, FileRequest, TransferId, WheelFile, WireError};
use piwheels_common::task::{Context, PauseMode, Task};
use piwheels_common::transport::{Peer, Server, TransportError};
use piwheels_common::upload::MAX_FETCH;

use self::publication::{Published, Publisher, describe};
use self::staging::{Part, Staging};
use self::transfer::{ChunkBytes, ChunkFault, Progress};
use crate::calls::files::{Abandon, Expect, Expected, FileExpectation, FsReply, FsRequest, Removal, RemoveOrphan, Verification, Verify};
use crate::gatekeeper::{Auth, Gate};
use crate::wiring::{self, TaskName};

/// Bytes a file-socket frame may carry beyond one chunk's data (protocol name, variant,
/// offset and MessagePack headers take about 30).
const FRAME_OVERHEAD: usize = 4 << 10;
/// Longest reaper interval: abandoned transfers are noticed within this much of their limit.
const MAX_REAP_INTERVAL: Duration = Duration::from_secs(60);

/// The file juggler's settings. [`JugglerConfig::new`] gives the defaults.
#[derive(Debug, Clone)]
pub struct JugglerConfig {
    /// The served tree; files are published under `<output_path>/simple/<package>/`.
    pub output_path: PathBuf,
    /// Where partial transfers and their records live. Must be on the same file system as
    /// `output_path` (finished files are linked into place) and outside it (nothing unverified
    /// is ever served).
    pub staging_dir: PathBuf,
    /// Largest range asked for in one `Fetch`, in bytes (default 256 KiB, at most
    /// [`MAX_FETCH`]). The file socket's message size limit is this plus 4 KiB.
    pub chunk_size: u64,
    /// Fetches in flight per transfer (default 8); also bounds the chunks a transfer holds in
    /// memory while they wait for the bytes before them.
    pub window: usize,
    /// Largest file accepted, in bytes (default 2 GiB).
    pub max_file_size: u64,
    /// A transfer nobody touched (no hello, chunk or request) for this long is removed with
    /// its partial file (default 1 hour).
    pub abandon_after: Duration,
    /// Who may connect to the file socket (default: everyone, for tests over inproc).
    pub auth: Auth,
}

impl JugglerConfig {
    /// Default `chunk_size`: 256 KiB.
    pub const DEFAULT_CHUNK_SIZE: u64 = 256 << 10;
    /// Default `window`: 8 chunks in flight.
    pub const DEFAULT_WINDOW: usize = 8;
    /// Default `max_file_size`: 2 GiB.
    pub const DEFAULT_MAX_FILE_SIZE: u64 = 2 << 30;
    /// Default `abandon_after`: 1 hour.
    pub const DEFAULT_ABANDON_AFTER: Duration = Duration::from_secs(3600);

    /// Settings with the defaults: 256 KiB chunks, 8 in flight, files up to 2 GiB, transfers
    /// abandoned after an hour.
    pub fn new(output_path: impl Into<PathBuf>, staging_dir: impl Into<PathBuf>) -> Self {
        JugglerConfig {
            output_path: output_path.into(),
            staging_dir: staging_dir.into(),
            chunk_size: Self::DEFAULT_CHUNK_SIZE,
            window: Self::DEFAULT_WINDOW,
            max_file_size: Self::DEFAULT_MAX_FILE_SIZE,
            abandon_after: Self::DEFAULT_ABANDON_AFTER,
            auth: Auth::disabled(),
        }
    }

    /// The file socket's message size limit: one chunk plus the frame around it.
    pub fn max_message(&self) -> usize {
        usize::try_from(self.chunk_size).unwrap_or(usize::MAX).saturating_add(FRAME_OVERHEAD)
    }

    /// The directory of the PEP 503 index, where files are published.
    pub fn simple_dir(&self) -> PathBuf {
        self.output_path.join("simple")
    }

    /// Checks the settings and prepares the directories: creates `<output>/simple` and the
    /// staging directory if missing, and refuses a staging directory inside the output tree
    /// or on another file system than the output.
    pub fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.chunk_size > 0 && self.chunk_size <= MAX_FETCH,
            "the chunk size must be between 1 byte and {MAX_FETCH} bytes (the most an uploader sends in one message)"
        );
        anyhow::ensure!(self.window > 0 && self.window <= 1024, "the transfer window must be between 1 and 1024 chunks");
        anyhow::ensure!(!self.abandon_after.is_zero(), "the abandon time must not be zero");
        let simple = self.simple_dir();
        fs::create_dir_all(&simple).with_context(|| format!("cannot create {}", simple.display()))?;
        if !self.staging_dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&self.staging_dir)
                .with_context(|| format!("cannot create the staging directory {}", self.staging_dir.display()))?;
        }
        let output = fs::canonicalize(&self.output_path).with_context(|| format!("cannot resolve {}", self.output_path.display()))?;
        let staging =
            fs::canonicalize(&self.staging_dir).with_context(|| format!("cannot resolve {}", self.staging_dir.display()))?;
        anyhow::ensure!(
            !staging.starts_with(&output),
            "the staging directory {} is inside the output directory {}: unverified files would be served",
            staging.display(),
            output.display()
        );
        let (out_dev, staging_dev) = (fs::metadata(&simple)?.dev(), fs::metadata(&staging)?.dev());
        anyhow::ensure!(
            out_dev == staging_dev,
            "the staging directory {} (device {staging_dev:#x}) and the output directory {} (device {out_dev:#x}) are on \
             different file systems; finished files are moved into place without copying, so keep them on one",
            staging.display(),
            output.display()
        );
        Ok(())
    }

    fn reap_interval(&self) -> Duration {
        (self.abandon_after / 4).clamp(Duration::from_millis(10), MAX_REAP_INTERVAL)
    }
}

/// The juggler's sockets.
#[derive(Debug)]
pub struct Sockets {
    files: Server<FileRequest, FileReply>,
    gate: Gate,
    fs: Server<FsRequest, FsReply>,
}

impl Sockets {
    /// Binds the file endpoint (with a message size limit of one chunk of `config`, plus the
    /// frame) and [`wiring::FS`].
    pub fn open(ctx: &zmq::Context, file_endpoint: &str, config: &JugglerConfig) -> anyhow::Result<Sockets> {
        let security = config.auth.security(Endpoint::File, file_endpoint);
        // An uploader sends at most a window of chunks unasked for; a flood holds no more.
        let queue = i32::try_from(config.window.saturating_mul(2)).unwrap_or(i32::MAX);
        let files = Server::bind_external(ctx, file_endpoint, config.max_message(), Some(queue), &security)?;
        let fs = wiring::FS.serve(ctx, TaskName::FileJuggler)?;
        Ok(Sockets { files, gate: config.auth.gate(Endpoint::File, file_endpoint), fs })
    }

    /// The address the file socket is bound to, with the port filled in when it was bound to
    /// `*` (tests bind `tcp://127.0.0.1:*`).
    pub fn file_endpoint(&self) -> String {
        match self.files.socket().get_last_endpoint() {
            Ok(Ok(endpoint)) => endpoint,
            _ => self.files.endpoint().to_string(),
        }
    }
}

/// What the juggler reacts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// An uploader sent something on the file socket.
    File,
    /// A task sent an [`FsRequest`].
    Fs,
    /// Time to remove abandoned transfers.
    Reap,
}


/// One expected file.
struct Transfer {
    id: TransferId,
    package: String,
    file: WheelFile,
    /// What the file must be, and who may send it.
    expectation: FileExpectation,
    /// Which bytes are in, asked for and held.
    progress: Progress,
    /// The partial file in staging.
    part: Part,
    /// For a cross-check's file, the published file it is compared with.
    compare_with: Option<String>,
    /// The uploader connection bound by its hello, if any.
    peer: Option<Peer>,
    /// Last hello, chunk or request about this transfer.
    touched: Instant,
}

impl Transfer {
    fn new(id: TransferId, Expect { package, file, expectation, compare_with, .. }: Expect, part: Part, received: u64, now: Instant) -> Transfer {
        let progress = Progress::new(file.size, received);
        Transfer { id, package, file: *file, expectation: *expectation, progress, part, compare_with, peer: None, touched: now }
    }
}

/// The file juggler task's state: the transfers, and which uploader connection serves which.
pub struct FileJuggler {
    config: JugglerConfig,
    staging: Staging,
    publisher: Publisher,
    transfers: HashMap<TransferId, Transfer>,
    /// Uploader connection identity → the transfer its hello bound it to.
    peers: HashMap<Vec<u8>, TransferId>,
    /// Messages from uploaders that were refused since the start (for the logs and tests).
    refused: u64,
}

impl fmt::Debug for FileJuggler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileJuggler")
            .field("staging_dir", &self.config.staging_dir)
            .field("transfers", &self.transfers.len())
            .field("uploaders", &self.peers.len())
            .field("refused", &self.refused)
            .finish()
    }
}

impl FileJuggler {
    /// Checks the configuration (see [`JugglerConfig::check`]) and rebuilds the transfers
    /// recorded in the staging directory, each resuming after the bytes already received.
    /// Staging files of ours without a record are deleted; other files are left alone.
    pub fn start(config: &JugglerConfig, clock: &SharedClock) -> anyhow::Result<FileJuggler> {
        config.check()?;
        let mut juggler = FileJuggler {
            config: config.clone(),
            staging: Staging::new(&config.staging_dir),
            publisher: Publisher::new(config.simple_dir(), config.max_file_size),
            transfers: HashMap::new(),
            peers: HashMap::new(),
            refused: 0,
        };
        juggler.load(clock.now())?;
        Ok(juggler)
    }

    /// How many transfers are in progress or waiting for verification.
    pub fn transfers(&self) -> usize {
        self.transfers.len()
    }

    fn load(&mut self, now: Instant) -> anyhow::Result<()> {
        let found = self.staging.scan()?;
        for id in found.records {
            match self.resume(id, now) {
                Ok(t) => {
                    tracing::info!(
                        "resuming transfer {id} of {} for {}: {} of {} bytes received",
                        t.file.filename,
                        t.package,
                        t.progress.received(),
                        t.progress.size()
                    );
                    self.transfers.insert(id, t);
                }
                Err(e) => {
                    tracing::warn!("dropping transfer {id}: {e:#}");
                    self.staging.remove(id);
                }
            }
        }
        for id in found.parts {
            if !self.transfers.contains_key(&id) {
                tracing::info!("removing {}: no transfer record", self.staging.part_path(id).display());
                self.staging.remove(id);
            }
        }
        Ok(())
    }

    /// Rebuilds one transfer from its record and partial file.
    fn resume(&self, id: TransferId, now: Instant) -> anyhow::Result<Transfer> {
        let expect = self.staging.read_record(id)?;
        if let Err(reason) = self.publisher.validate(&expect.package, &expect.file, &expect.expectation) {
            anyhow::bail!("its record is no longer acceptable: {reason}");
        }
        let (part, received) = self.staging.resume_part(id, expect.file.size)?;
        Ok(Transfer::new(id, expect, part, received, now))
    }

    // --------------------------------------------------------------------------------------
    // File-system requests
    // --------------------------------------------------------------------------------------

    fn on_fs(&mut self, sockets: &mut Sockets, now: Instant) -> anyhow::Result<()> {
        let (peer, request) = sockets.fs.recv()?;
        let outcome = match request {
            Err(e) => {
                tracing::warn!("bad request from {peer}: {e}");
                Ok(FsReply::Error(WireError::refused(e.to_string())))
            }
            Ok(FsRequest::Expect(expect)) => self.expect(expect, now).map(|reply| reply.map_or_else(FsReply::Error, FsReply::Expect)),
            Ok(FsRequest::Verify(Verify { transfer })) => self.verify(transfer).map(FsReply::Verify),
            Ok(FsRequest::Abandon(Abandon { transfer })) => {
                if let Some(t) = self.forget(transfer) {
                    tracing::info!(
                        "transfer {transfer} of {} abandoned at {} of {} bytes",
                        t.file.filename,
                        t.progress.received(),
                        t.progress.size()
                    );
                }
                Ok(FsReply::Abandon(()))
            }
            Ok(FsRequest::RemoveOrphan(RemoveOrphan { package, filename })) => self.remove_orphan(&package, &filename).map(FsReply::RemoveOrphan),
        };
        // The master's own failures (a full disk, say) are answered, then restart the task as
        // any error does: the caller retries later.
        let (reply, failure) = match outcome {
            Ok(reply) => (reply, None),
            Err(e) => (FsReply::Error(WireError::unavailable(format!("{e:#}"))), Some(e)),
        };
        sockets.fs.send(&peer, &reply)?;
        match failure {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Expects a file, or says why not; too little space for it is the master's failure, an
    /// error answer that leaves the task running.
    fn expect(&mut self, expect: Expect, now: Instant) -> anyhow::Result<Result<Expected, WireError>> {
        let Expect { package, file, expectation, must_send, compare_with } = &expect;
        if let Err(reason) = self.publisher.validate(package, file, expectation) {
            tracing::warn!("refusing to expect {:?} for {package:?}: {reason}", file.filename);
            return Ok(Ok(Expected::Refused { reason }));
        }
        // A cross-check's file is compared, not published: what is published under its name
        // does not matter.
        let published = match compare_with {
            Some(_) => Published::Nothing,
            None => self.publisher.find(package, file, expectation)?,
        };
        match published {
            // A builder sends the bytes all the same: its claim of a hash proves nothing.
            Published::Same(Ok(_)) if *must_send => {}
            Published::Same(described) => {
                tracing::info!("{} is already published with the same contents", file.filename);
                return Ok(Ok(match described {
                    Ok(file) => Expected::AlreadyHave { file },
                    Err(reason) => Expected::Refused { reason },
                }));
            }
            Published::Conflict(reason) => {
                tracing::warn!("{reason}");
                return Ok(Ok(Expected::Conflict { reason }));
            }
            Published::Nothing => {}
        }
        // A builder's file is its own bytes: another key's unfinished transfer of it is not
        // taken over (that key may be the one sending them).
        if let Some(t) = self.transfers.values_mut().find(|t| {
            t.package == *package
                && t.file.filename == file.filename
                && t.file.sha256 == file.sha256
                && t.file.size == file.size
                && (!*must_send || t.expectation.uploader == expectation.uploader)
                && t.compare_with == *compare_with
        }) {
            t.touched = now;
            // The sender of a build handed out again may be another slave.
            t.expectation = (**expectation).clone();
            tracing::info!(
                "expecting {} again: transfer {} resumes at {} of {} bytes",
                file.filename,
                t.id,
                t.progress.received(),
                t.progress.size()
            );
            return Ok(Ok(Expected::Expecting { transfer: t.id }));
        }
        let avail = self.staging.free_space();
        if file.size > avail {
            let message = format!("not enough space on the master for {} ({} bytes, {avail} free)", file.filename, file.size);
            tracing::warn!("{message}");
            return Ok(Err(WireError::unavailable(message)));
        }
        let (id, part) = self.staging.create(expect.clone(), |id| self.transfers.contains_key(&id))?;
        tracing::info!("expecting {} ({} bytes) for {package} as transfer {id}", file.filename, file.size);
        self.transfers.insert(id, Transfer::new(id, expect, part, 0, now));
        Ok(Ok(Expected::Expecting { transfer: id }))
    }

    fn verify(&mut self, id: TransferId) -> anyhow::Result<Verification> {
        let Some(t) = self.transfers.get(&id) else {
            return Ok(Verification::Failed { reason: format!("unknown transfer {id} (never expected, abandoned or already verified)") });
        };
        if !t.progress.complete() {
            return Ok(Verification::Failed {
                reason: format!("transfer incomplete: {} of {} bytes", t.progress.received(), t.progress.size()),
            });
        }
        let digest = t.part.digest();
        let on_disk = t.part.len()?;
        if digest != t.file.sha256 || on_disk != t.file.size {
            let reason = format!(
                "{} failed verification: received {on_disk} bytes with SHA-256 {digest}, expected {} bytes with SHA-256 {}; \
                 transfer {id} rolled back",
                t.file.filename, t.file.size, t.file.sha256
            );
            tracing::warn!("{reason}");
            self.forget(id);
            return Ok(Verification::Failed { reason });
        }
        let staged = self.staging.part_path(id);
        let described = match describe(&staged, &t.package, &t.file, &t.expectation) {
            Ok(described) => described,
            Err(reason) => {
                tracing::warn!("{reason}; transfer {id} rolled back");
                self.forget(id);
                return Ok(Verification::Refused { reason });
            }
        };
        if let Some(published) = &t.compare_with {
            let verification = match self.publisher.compare(&t.package, published, (&staged, &t.file.filename)) {
                Ok(differences) => {
                    tracing::info!("compared {} with {published}: {} difference(s)", t.file.filename, differences.len());
                    Verification::Compared { file: Box::new(described), differences }
                }
                Err(reason) => Verification::Conflict { reason },
            };
            self.forget(id);
            return Ok(verification);
        }
        // Another transfer of the same name may have been published since this one started.
        let verification = match self.publisher.find(&t.package, &t.file, &t.expectation)? {
            Published::Same(Ok(file)) => {
                tracing::info!("{} was already published with the same contents", t.file.filename);
                Verification::Verified { file }
            }
            Published::Same(Err(reason)) => Verification::Refused { reason },
            Published::Conflict(reason) => {
                tracing::warn!("{reason}; transfer {id} rolled back");
                Verification::Conflict { reason }
            }
            Published::Nothing => {
                self.publisher.publish(&t.package, &t.file.filename, &staged, &t.part, &described.metadata)?;
                tracing::info!("verified and published {} ({} bytes) for {}", t.file.filename, t.file.size, t.package);
                Verification::Verified { file: Box::new(described) }
            }
        };
        // Staging is cleared unsynced: see the staging module.
        self.forget(id);
        Ok(verification)
    }

    /// Removes a published file no build records, and its `.metadata` file.
    fn remove_orphan(&mut self, package: &str, filename: &str) -> anyhow::Result<Removal> {
        Ok(match self.publisher.remove(package, filename)? {
            Ok(removed) => {
                if removed {
                    tracing::warn!("removed {filename} of {package}: no build records it");
                }
                Removal::Removed
            }
            Err(reason) => Removal::Refused { reason },
        })
    }

    /// Drops a transfer and deletes its staging files.
    fn forget(&mut self, id: TransferId) -> Option<Transfer> {
        let t = self.transfers.remove(&id)?;
        if let Some(peer) = &t.peer {
            self.peers.remove(peer.identity());
        }
        self.staging.remove(id);
        Some(t)
    }

    fn reap(&mut self, now: Instant) {
        let limit = self.config.abandon_after;
        let idle: Vec<TransferId> =
            self.transfers.values().filter(|t| now.saturating_duration_since(t.touched) >= limit).map(|t| t.id).collect();
        for id in idle {
            if let Some(t) = self.forget(id) {
                tracing::warn!(
                    "transfer {id} of {} for {} abandoned: untouched for {limit:?} at {} of {} bytes",
                    t.file.filename,
                    t.package,
                    t.progress.received(),
                    t.progress.size()
                );
            }
        }
    }

    // --------------------------------------------------------------------------------------
    // The file socket
    // --------------------------------------------------------------------------------------

    fn on_file(&mut self, sockets: &mut Sockets, now: Instant) -> anyhow::Result<()> {
        // The frame is decoded where it lies: a chunk's bytes are written and hashed straight
        // from the message ZeroMQ received, and kept in it if they must wait.
        let (peer, frame) = match sockets.files.recv_frame() {
            Ok(incoming) => incoming,
            // A message with no envelope cannot be answered: a peer's doing, not the juggler's.
            Err(TransportError::Protocol(e)) => {
                self.refused += 1;
                // Logged with doubling gaps, so that a flood cannot fill the log.
                if self.refused.is_power_of_two() {
                    tracing::warn!("unanswerable message on the file socket ({} refusals so far): {e}", self.refused);
                }
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        if let Err(refusal) = sockets.gate.admit(&peer) {
            // A key revoked since its connection was made (the gate logged it).
            if let Some(id) = self.peers.get(peer.identity()).copied() {
                self.unbind(id);
            }
            self.refused += 1;
            reply(&sockets.files, &peer, &FileReply::Error(WireError::refused(refusal.to_string())));
            return Ok(());
        }
        let frame = match frame {
            Ok(frame) => frame,
            Err(e) => {
                self.refuse(sockets, &peer, format!("bad message: {e}"));
                return Ok(());
            }
        };
        match frame.decode_in_place() {
            Err(e) => {
                self.refuse(sockets, &peer, format!("bad message: {e}"));
                Ok(())
            }
            Ok(FileRequestRef::Hello { versions, transfer }) => {
                if let Err(mismatch) = versions.check() {
                    self.refuse(sockets, &peer, mismatch.to_string());
                    return Ok(());
                }
                self.hello(sockets, &peer, transfer, now);
                Ok(())
            }
            Ok(FileRequestRef::Chunk { offset, data: Cow::Owned(data) }) => self.chunk(sockets, &peer, offset, data.into(), now),
            Ok(FileRequestRef::Chunk { offset, data: Cow::Borrowed(data) }) => {
                let slice = frame.range_of(data).and_then(|range| frame.into_slice(range));
                let Some(slice) = slice else { anyhow::bail!("a decoded chunk is not within its frame") };
                self.chunk(sockets, &peer, offset, slice.into(), now)
            }
        }
    }

    fn hello(&mut self, sockets: &Sockets, peer: &Peer, id: TransferId, now: Instant) {
        let Some(t) = self.transfers.get(&id) else {
            self.refuse(sockets, peer, format!("unknown transfer {id}"));
            return;
        };
        // Only the key told to send the file may: an id learned elsewhere (a monitor, a log)
        // takes nothing over.
        if let Some(uploader) = &t.expectation.uploader
            && peer.user() != Some(uploader.as_str())
        {
            self.refuse(sockets, peer, format!("transfer {id} was not asked of this key"));
            return;
        }
        let identity = peer.identity().to_vec();
        // This connection may have served another transfer before.
        if let Some(previous) = self.peers.insert(identity.clone(), id)
            && previous != id
            && let Some(p) = self.transfers.get_mut(&previous)
        {
            p.peer = None;
            p.progress.forget_fetches();
        }
        let Some(t) = self.transfers.get_mut(&id) else { return };
        t.touched = now;
        match &t.peer {
            Some(old) if old.identity() == identity.as_slice() => {
                tracing::debug!("uploader {peer} nudged transfer {id} at {} of {} bytes", t.progress.received(), t.progress.size());
            }
            Some(old) => {
                tracing::info!("uploader {peer} takes transfer {id} over from {old} at {} of {} bytes", t.progress.received(), t.progress.size());
                let old = old.identity().to_vec();
                self.peers.remove(&old);
            }
            None => tracing::info!("uploader {peer} sends {} (transfer {id}) from byte {}", t.file.filename, t.progress.received()),
        }
        let Some(t) = self.transfers.get_mut(&id) else { return };
        t.peer = Some(peer.clone());
        // Whatever was asked before is asked again: of this uploader, or of the new one.
        t.progress.forget_fetches();
        if t.progress.complete() {
            reply(&sockets.files, peer, &FileReply::Done);
            return;
        }
        for (offset, length) in t.progress.fill(self.config.chunk_size, self.config.window) {
            reply(&sockets.files, peer, &FileReply::Fetch { offset, length });
        }
    }

    fn chunk(&mut self, sockets: &Sockets, peer: &Peer, offset: u64, data: ChunkBytes, now: Instant) -> anyhow::Result<()> {
        let Some(&id) = self.peers.get(peer.identity()) else {
            self.refuse(sockets, peer, "chunk from a connection bound to no transfer: say Hello first".into());
            return Ok(());
        };
        let Some(t) = self.transfers.get_mut(&id) else {
            self.peers.remove(peer.identity());
            self.refuse(sockets, peer, format!("transfer {id} is over"));
            return Ok(());
        };
        t.touched = now;
        let len = data.len();
        let part = &mut t.part;
        let accepted = t.progress.accept(offset, data, |at, bytes| part.write(at, bytes));
        if let Ok(true) = accepted {
            crate::metrics::metrics().received_bytes.inc_by(len as u64);
        }
        match accepted {
            Ok(true) if t.progress.complete() => {
                tracing::info!("transfer {id} of {} complete: {} bytes", t.file.filename, t.progress.size());
                reply(&sockets.files, peer, &FileReply::Done);
            }
            Ok(true) => {
                for (offset, length) in t.progress.fill(self.config.chunk_size, self.config.window) {
                    reply(&sockets.files, peer, &FileReply::Fetch { offset, length });
                }
            }
            Ok(false) => tracing::debug!("repeated chunk of {len} bytes at offset {offset} of transfer {id} from {peer} ignored"),
            Err(ChunkFault::Refused(reason)) => {
                let reason = format!("transfer {id}: {reason}");
                self.unbind(id);
                self.refuse(sockets, peer, reason);
            }
            Err(ChunkFault::Io(e)) => {
                let filename = t.file.filename.clone();
                self.unbind(id);
                self.fail(sockets, peer, format!("the master cannot store {filename}: {e}"));
                return Err(e).with_context(|| format!("cannot write transfer {id} of {filename}"));
            }
        }
        Ok(())
    }

    /// Releases a transfer's uploader; the bytes received so far are kept for the next one.
    fn unbind(&mut self, id: TransferId) {
        if let Some(t) = self.transfers.get_mut(&id) {
            t.progress.forget_fetches();
            if let Some(peer) = t.peer.take() {
                self.peers.remove(peer.identity());
            }
        }
    }

    fn refuse(&mut self, sockets: &Sockets, peer: &Peer, reason: String) {
        self.refused += 1;
        tracing::warn!("refused uploader {peer}: {reason}");
        reply(&sockets.files, peer, &FileReply::Error(WireError::refused(reason)));
    }

    /// Tells an uploader the master could not store its bytes: the master's fault, not the
    /// transfer's, and worth trying again later.
    fn fail(&mut self, sockets: &Sockets, peer: &Peer, reason: String) {
        tracing::warn!("uploader {peer} stopped: {reason}");
        reply(&sockets.files, peer, &FileReply::Error(WireError::unavailable(reason)));
    }
}

impl Task for FileJuggler {
    type Sockets = Sockets;
    type Event = Event;
    const PAUSE: PauseMode = PauseMode::NonStop;

    fn poll_sockets<'s>(&self, sockets: &'s Sockets) -> Vec<(Event, &'s zmq::Socket)> {
        vec![(Event::Fs, sockets.fs.socket()), (Event::File, sockets.files.socket())]
    }

    fn timers(&self) -> Vec<(Event, Duration)> {
        vec![(Event::Reap, self.config.reap_interval())]
    }

    fn handle(&mut self, event: Event, sockets: &mut Sockets, ctx: &mut Context<'_, Event>) -> anyhow::Result<()> {
        match event {
            Event::File => self.on_file(sockets, ctx.now()),
            Event::Fs => self.on_fs(sockets, ctx.now()),
            Event::Reap => {
                self.reap(ctx.now());
                Ok(())
            }
        }
    }
}

/// Sends a reply to an uploader. One that has gone cannot be told anything; that is normal
/// (it gave up, or reconnected as a new uploader) and not an error of the juggler.
fn reply(files: &Server<FileRequest, FileReply>, peer: &Peer, msg: &FileReply) {
    if let Err(e) = files.send(peer, msg) {
        tracing::debug!("reply to uploader {peer} lost: {e}");
    }
}


#[cfg(test)]
mod tests {
    use super::*;
    use piwheels_common::codec;

    /// A record torn by a crash during its write (it is written in one go, without a rename)
    /// never decodes: the transfer is dropped at the next start, with its partial file.
    #[test]
    fn a_torn_record_is_dropped_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let config = JugglerConfig::new(dir.path().join("out"), dir.path().join("staging"));
        config.check().unwrap();
        let clock: SharedClock = std::sync::Arc::new(piwheels_common::clock::SystemClock);
        let file = piwheels_testsupport::data::wheel_file("foo-1.0-py3-none-any.whl", b"the wheel's bytes");
        let expectation = Box::new(FileExpectation { version: "1.0".into(), abi: "cp311".into(), platform: String::new(), uploader: None });
        let record = codec::encode(&FsRequest::from(Expect { package: "foo".into(), file: Box::new(file), expectation, must_send: false, compare_with: None })).unwrap();
        let staged = || fs::read_dir(&config.staging_dir).unwrap().count();
        for cut in (0..record.len()).step_by(5).chain([record.len() - 1]) {
            fs::write(config.staging_dir.join("7.expect"), &record[..cut]).unwrap();
            fs::write(config.staging_dir.join("7.part"), b"the wh").unwrap();
            let juggler = FileJuggler::start(&config, &clock).unwrap();
            assert_eq!(juggler.transfers(), 0, "a record cut at {cut} of {} bytes was taken", record.len());
            assert_eq!(staged(), 0, "cut at {cut}");
        }
        fs::write(config.staging_dir.join("7.expect"), &record).unwrap();
        fs::write(config.staging_dir.join("7.part"), b"the wh").unwrap();
        let juggler = FileJuggler::start(&config, &clock).unwrap();
        assert_eq!(juggler.transfers(), 1, "the whole record resumes");
        assert_eq!(juggler.transfers[&7].progress.received(), 6);
    }
}
