//! FileJuggler, the file receiver: takes wheels from uploaders (slaves and piw-import) in
//! chunks it asks for, checks and hashes them as they arrive, keeps them outside the served
//! tree until they are verified, then publishes them under `<output>/simple/<package>/` with
//! their `.metadata` side files.
//!
//! Sockets: binds the file endpoint (ROUTER, external, usually tcp: uploaders' [`FileRequest`]
//! → [`FileReply`]) and [`wiring::FS`] (ROUTER, inproc: the slave driver's and the admin
//! endpoint's [`FsRequest`] → [`FsReply`]).
//!
//! Owns the staging directory. Every transfer there is two files named by its id: the record
//! `<id>.expect` (the [`FsRequest::Expect`] that created it, encoded as on the wire) and the
//! partial file `<id>.part`. Bytes are written to the partial file strictly in order, so its
//! length is always the part already received and hashed: a restarted master reads every
//! record, hashes each partial file's bytes once and resumes fetching after them.
//!
//! How a transfer goes:
//!
//! 1. `Expect { package, file, expectation }` checks the file's name against the release and
//!    build it must belong to (package, version, ABI and platform tags), its size and hash, and
//!    answers `Expecting { transfer }` with a random id (ids are capabilities, not counters).
//!    An unfinished transfer of the same file is reused, so a re-sent file resumes.
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
//!    files removed.
//!
//! Transfers not touched for `abandon_after` are removed by a periodic reaper.
//!
//! # What is synced, and why no more
//!
//! A published wheel costs three flushes to disk, four in a new package directory (five and
//! six before):
//!
//! 1. the partial file's data (`fdatasync`), once, before it is linked into the served tree:
//!    a published name must never point at bytes that are not on disk;
//! 2. the `.metadata` file's data, through a temporary file synced before it is renamed into
//!    place, for the same reason;
//! 3. the package directory, once for both names (the `.metadata` rename and the wheel's
//!    link), before `Verified` is answered: the slave driver and the admin endpoint record a
//!    build only after that answer, so a recorded file is on disk. A new package directory is
//!    made durable in `simple/` first.
//!
//! Nothing in staging is synced. A record is created and written in one go (no temporary
//! file, no rename, no fsync); the partial file is not synced until verification; removals
//! are not synced. What a crash can then leave, and why each is harmless:
//!
//! - a torn record (a crash during its write): MessagePack is prefix-free and the decoder
//!   refuses trailing bytes, so it does not decode, and the next start drops the transfer.
//!   This relies on the file system committing a file's new size only with its data, as
//!   ext4 does by default (`data=ordered`). Where a crash can leave a record at its full
//!   size with a block never written (ext4 with `data=writeback`, XFS), zeros inside its
//!   METADATA text would still decode, and that `.metadata` file would be published wrong:
//!   keep the staging directory on a file system mounted the default way;
//! - after a power failure, a lost record or a partial file that lost its tail, or holds
//!   blocks that were never written: the transfer is dropped or resumes after what is there,
//!   and verification catches any bytes that are not the file's (the hash is over the file
//!   as written, and a mismatch rolls the transfer back). A dropped transfer only means bytes
//!   sent again: after a restart the slave driver has forgotten every slave, whose next
//!   request is refused, so the slave drops the build and the release is built again; an
//!   uploader still sending is refused (`unknown transfer`); piw-import expects its files
//!   again in a new session. Resuming a transfer across a master restart remains the common
//!   case (a process restart loses nothing written);
//! - the record and partial file of a transfer already published (its removal was lost): the
//!   restarted juggler finds it complete, a `Verify` finds the file published and forgets it,
//!   and otherwise the reaper removes it. It shares its inode with the published file but
//!   never writes to it, since it is complete.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::ops::Deref;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use piwheels_common::clock::SharedClock;
use piwheels_common::codec::{self, FileRequestRef};
use piwheels_common::inspect::{self, WheelArchive};
use piwheels_common::keys::Endpoint;
use piwheels_common::names::{canonicalize, same_version};
use piwheels_common::protocols::{Dependencies, FileReply, FileRequest, TransferId, WheelFile, WireError};
use piwheels_common::task::{Context, PauseMode, Task};
use piwheels_common::transport::{FrameSlice, Peer, Server, TransportError};
use piwheels_common::upload::MAX_FETCH;
use piwheels_common::wheel::{MAX_FILENAME, WheelName};
use sha2::{Digest, Sha256};

use crate::calls::files::{Abandon, Expect, Expected, FileExpectation, FsReply, FsRequest, Link, Linked, Removal, RemoveOrphan, Verification, Verify};
use crate::gatekeeper::{Auth, Gate};
use crate::wiring::{self, TaskName};


/// Bytes a file-socket frame may carry beyond one chunk's data (protocol name, variant,
/// offset and MessagePack headers take about 30).
const FRAME_OVERHEAD: usize = 4 << 10;
/// Longest `.metadata` side-file name: the file system's limit on one name.
const MAX_PUBLISHED_NAME: usize = 255;
/// Suffix of the side file holding a wheel's METADATA (PEP 658).
const METADATA_SUFFIX: &str = ".metadata";
/// After this many bytes written the juggler asks the kernel to start writing them to disk,
/// so that the fsync at verification finds little left to do and does not stall the task.
const WRITEBACK_EVERY: u64 = 8 << 20;
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

/// A chunk that does not answer a fetch of its transfer.
#[derive(Debug)]
enum ChunkFault {
    /// The uploader broke the protocol; the reason says how.
    Refused(String),
    /// The master could not store the bytes.
    Io(io::Error),
}

/// A chunk's bytes: where they arrived, in the received frame (no copy), or bytes of their own.
enum ChunkBytes {
    Frame(FrameSlice),
    Owned(Vec<u8>),
}

impl Deref for ChunkBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            ChunkBytes::Frame(slice) => slice,
            ChunkBytes::Owned(bytes) => bytes,
        }
    }
}

impl From<Vec<u8>> for ChunkBytes {
    fn from(bytes: Vec<u8>) -> Self {
        ChunkBytes::Owned(bytes)
    }
}

impl From<FrameSlice> for ChunkBytes {
    fn from(slice: FrameSlice) -> Self {
        ChunkBytes::Frame(slice)
    }
}

/// One expected file.
struct Transfer {
    id: TransferId,
    package: String,
    file: WheelFile,
    /// What the file must be, and who may send it.
    expectation: FileExpectation,
    /// The partial file in staging.
    part: File,
    /// Bytes written to `part` and hashed: always a prefix of the file.
    received: u64,
    /// SHA-256 of the first `received` bytes.
    hasher: Sha256,
    /// Chunks received beyond `received`, waiting for the bytes before them, by offset.
    ahead: BTreeMap<u64, ChunkBytes>,
    /// Ranges asked of the bound uploader and not yet received: offset → length.
    fetched: BTreeMap<u64, u64>,
    /// The uploader connection bound by its hello, if any.
    peer: Option<Peer>,
    /// Last hello, chunk or request about this transfer.
    touched: Instant,
}

impl Transfer {
    fn size(&self) -> u64 {
        self.file.size
    }

    fn complete(&self) -> bool {
        self.received == self.size()
    }

    /// Checks a chunk against the fetches in flight and stores it. True for new bytes, false
    /// for a repeat of bytes already held (an answer to a fetch re-sent after a nudge).
    fn accept(&mut self, offset: u64, data: impl Into<ChunkBytes>) -> Result<bool, ChunkFault> {
        let data = data.into();
        let len = data.len() as u64;
        let size = self.size();
        let end = offset.checked_add(len).filter(|end| *end <= size);
        let Some(end) = end else {
            return Err(ChunkFault::Refused(format!(
                "chunk of {len} bytes at offset {offset} runs past the end of the {size}-byte file"
            )));
        };
        if let Some(&asked) = self.fetched.get(&offset) {
            if len != asked {
                let what = if len > asked { "larger" } else { "smaller" };
                return Err(ChunkFault::Refused(format!(
                    "chunk of {len} bytes at offset {offset} is {what} than the {asked} bytes asked for"
                )));
            }
            self.fetched.remove(&offset);
            self.store(offset, data).map_err(ChunkFault::Io)?;
            return Ok(true);
        }
        let repeat = len > 0 && (end <= self.received || self.ahead.get(&offset).is_some_and(|held| held.len() as u64 == len));
        if repeat {
            return Ok(false);
        }
        Err(ChunkFault::Refused(format!("chunk of {len} bytes at offset {offset} was never asked for")))
    }

    /// Writes and hashes bytes that extend the prefix; keeps others until their turn.
    fn store(&mut self, offset: u64, data: ChunkBytes) -> io::Result<()> {
        if offset != self.received {
            self.ahead.insert(offset, data);
            return Ok(());
        }
        self.append(&data)?;
        while let Some(entry) = self.ahead.first_entry() {
            if *entry.key() != self.received {
                break;
            }
            let data = entry.remove();
            self.append(&data)?;
        }
        Ok(())
    }

    fn append(&mut self, data: &[u8]) -> io::Result<()> {
        self.part.write_all_at(data, self.received)?;
        self.hasher.update(data);
        let before = self.received;
        self.received += data.len() as u64;
        if before / WRITEBACK_EVERY != self.received / WRITEBACK_EVERY {
            start_writeback(&self.part, self.received);
        }
        Ok(())
    }

    /// Asks for more ranges until `window` are in flight or held ahead, lowest offsets first,
    /// each at most `chunk_size`. Returns the new fetches.
    fn fill(&mut self, chunk_size: u64, window: usize) -> Vec<(u64, u64)> {
        let mut new = Vec::new();
        let mut cursor = self.received;
        let size = self.size();
        while cursor < size && self.fetched.len() + self.ahead.len() < window {
            if let Some(held) = self.ahead.get(&cursor) {
                cursor += held.len() as u64;
                continue;
            }
            if let Some(&asked) = self.fetched.get(&cursor) {
                cursor += asked;
                continue;
            }
            // Stop at the next range already held or asked for.
            let next_ahead = self.ahead.range(cursor..).next().map(|(o, _)| *o);
            let next_fetch = self.fetched.range(cursor..).next().map(|(o, _)| *o);
            let limit = [next_ahead, next_fetch, Some(size)].into_iter().flatten().min().unwrap_or(size);
            let len = chunk_size.min(limit - cursor);
            self.fetched.insert(cursor, len);
            new.push((cursor, len));
            cursor += len;
        }
        new
    }

    fn digest(&self) -> String {
        format!("{:x}", self.hasher.clone().finalize())
    }
}

/// The file juggler task's state: the transfers, and which uploader connection serves which.
pub struct FileJuggler {
    config: JugglerConfig,
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
        let mut juggler = FileJuggler { config: config.clone(), transfers: HashMap::new(), peers: HashMap::new(), refused: 0 };
        juggler.load(clock.now())?;
        Ok(juggler)
    }

    /// How many transfers are in progress or waiting for verification.
    pub fn transfers(&self) -> usize {
        self.transfers.len()
    }

    fn part_path(&self, id: TransferId) -> PathBuf {
        self.config.staging_dir.join(format!("{id}.part"))
    }

    fn record_path(&self, id: TransferId) -> PathBuf {
        self.config.staging_dir.join(format!("{id}.expect"))
    }

    fn load(&mut self, now: Instant) -> anyhow::Result<()> {
        let dir = &self.config.staging_dir;
        let mut records = Vec::new();
        let mut parts = Vec::new();
        for entry in fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
            let entry = entry?;
            let name = entry.file_name();
            match StagingName::parse(&name.to_string_lossy()) {
                Some(StagingName::Record(id)) => records.push(id),
                Some(StagingName::Part(id)) => parts.push(id),
                Some(StagingName::Temporary) => remove_quietly(&entry.path()),
                None => tracing::debug!("leaving {} alone: not a staging file", entry.path().display()),
            }
        }
        for id in records {
            match self.resume(id, now) {
                Ok(t) => {
                    tracing::info!(
                        "resuming transfer {id} of {} for {}: {} of {} bytes received",
                        t.file.filename,
                        t.package,
                        t.received,
                        t.size()
                    );
                    self.transfers.insert(id, t);
                }
                Err(e) => {
                    tracing::warn!("dropping transfer {id}: {e:#}");
                    remove_quietly(&self.record_path(id));
                    remove_quietly(&self.part_path(id));
                }
            }
        }
        for id in parts {
            if !self.transfers.contains_key(&id) {
                tracing::info!("removing {}: no transfer record", self.part_path(id).display());
                remove_quietly(&self.part_path(id));
            }
        }
        Ok(())
    }

    /// Rebuilds one transfer from its record and partial file.
    fn resume(&self, id: TransferId, now: Instant) -> anyhow::Result<Transfer> {
        let bytes = fs::read(self.record_path(id)).context("cannot read its record")?;
        let (package, file, expectation) = match codec::decode::<FsRequest>(&bytes).context("unreadable record")? {
            FsRequest::Expect(Expect { package, file, expectation }) => (package, *file, *expectation),
            other => anyhow::bail!("the record holds {other:?}, not an Expect"),
        };
        if let Err(reason) = self.validate(&package, &file, &expectation) {
            anyhow::bail!("its record is no longer acceptable: {reason}");
        }
        let part = open_part(&self.part_path(id), false)?;
        let mut len = part.metadata()?.len();
        if len > file.size {
            tracing::warn!("partial file of transfer {id} is longer than the file; starting again");
            part.set_len(0)?;
            len = 0;
        }
        // Writes are in order, so the partial file is a prefix: hash it once.
        let mut hasher = Sha256::new();
        let mut reader = io::BufReader::with_capacity(1 << 20, (&part).take(len));
        io::copy(&mut reader, &mut HashWriter(&mut hasher)).context("cannot read the partial file")?;
        Ok(Transfer {
            id,
            package,
            file,
            expectation,
            part,
            received: len,
            hasher,
            ahead: BTreeMap::new(),
            fetched: BTreeMap::new(),
            peer: None,
            touched: now,
        })
    }

    /// Why a file cannot be accepted for `package` as `expectation` describes the build, if it
    /// cannot: judged from its name and announced size and hash, before any byte is read.
    fn validate(&self, package: &str, file: &WheelFile, expectation: &FileExpectation) -> Result<(), String> {
        let package_ok = !package.is_empty()
            && package.len() <= MAX_FILENAME
            && canonicalize(package) == package
            && package.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !package.starts_with('-')
            && !package.ends_with('-');
        if !package_ok {
            return Err(format!("{package:?} is not a canonical package name"));
        }
        let name = WheelName::parse(&file.filename).map_err(|e| e.to_string())?;
        check_name(&name, package, expectation)?;
        if file.filename.len() + METADATA_SUFFIX.len() > MAX_PUBLISHED_NAME {
            return Err(format!("{} is too long to publish its {METADATA_SUFFIX} file beside it", file.filename));
        }
        if file.size > self.config.max_file_size {
            return Err(format!(
                "{} is {} bytes, more than the {} bytes this master accepts",
                file.filename, file.size, self.config.max_file_size
            ));
        }
        if !is_sha256(&file.sha256) {
            return Err(format!("{:?} is not a SHA-256 in lower-case hex", file.sha256));
        }
        check_description(file)
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
            Ok(FsRequest::Expect(Expect { package, file, expectation })) => {
                self.expect(package, *file, *expectation, now).map(|reply| reply.map_or_else(FsReply::Error, FsReply::Expect))
            }
            Ok(FsRequest::Link(Link { package, existing, file, expectation })) => {
                self.link(&package, &existing, &file, &expectation).map(FsReply::Link)
            }
            Ok(FsRequest::Verify(Verify { transfer })) => self.verify(transfer).map(FsReply::Verify),
            Ok(FsRequest::Abandon(Abandon { transfer })) => {
                if let Some(t) = self.forget(transfer) {
                    tracing::info!("transfer {transfer} of {} abandoned at {} of {} bytes", t.file.filename, t.received, t.size());
                }
                Ok(FsReply::Abandon(()))
            }
            Ok(FsRequest::RemoveOrphan(RemoveOrphan { package, filename })) => {
                self.remove_orphan(&package, &filename).map(FsReply::RemoveOrphan)
            }
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

    /// Publishes `file` as a hard link to `existing` when that holds the same bytes, so that a
    /// file the index has under another name is not sent again.
    fn link(&mut self, package: &str, existing: &str, file: &WheelFile, expectation: &FileExpectation) -> anyhow::Result<Linked> {
        if let Err(reason) = self.validate(package, file, expectation) {
            tracing::warn!("refusing to link {:?} for {package:?}: {reason}", file.filename);
            return Ok(Linked::Refused { reason });
        }
        if WheelName::parse(existing).map_or(true, |name| !name.is_for(package)) {
            return Ok(Linked::Refused { reason: format!("{existing:?} is not a published file of {package}") });
        }
        let dir = self.config.simple_dir().join(package);
        let source = dir.join(existing);
        let target = dir.join(&file.filename);
        // The target may be there already (published earlier with these bytes, or not).
        match same_contents(&target, file)? {
            Some(true) => {
                return Ok(match self.already_published(package, &target, file, expectation)? {
                    Ok(file) => Linked::AlreadyHave { file },
                    Err(reason) => Linked::Refused { reason },
                });
            }
            Some(false) => return Ok(Linked::Conflict { reason: conflict(&file.filename) }),
            None => {}
        }
        if same_contents(&source, file)? != Some(true) {
            return Ok(Linked::Refused { reason: format!("{existing} is not published with the contents of {}", file.filename) });
        }
        let described = match describe(&source, package, file, expectation) {
            Ok(described) => described,
            Err(reason) => return Ok(Linked::Refused { reason }),
        };
        fs::hard_link(&source, &target).with_context(|| format!("cannot link {} to {}", target.display(), source.display()))?;
        let metadata = dir.join(format!("{}{METADATA_SUFFIX}", file.filename));
        write_atomically(&random_tmp(&dir)?, &metadata, &described.metadata)?;
        sync_dir(&dir)?;
        tracing::info!("published {} as a link to {existing}, which has the same contents", file.filename);
        Ok(Linked::AlreadyHave { file: Box::new(described) })
    }

    /// A file published already with the announced bytes: its description read from the
    /// published wheel, its `.metadata` file written if it is missing; or why the published
    /// wheel is not the build's.
    fn already_published(
        &self,
        package: &str,
        path: &Path,
        file: &WheelFile,
        expectation: &FileExpectation,
    ) -> anyhow::Result<Result<Box<WheelFile>, String>> {
        let described = match describe(path, package, file, expectation) {
            Ok(described) => described,
            Err(reason) => return Ok(Err(format!("the published {}: {reason}", file.filename))),
        };
        let dir = self.config.simple_dir().join(package);
        let metadata = dir.join(format!("{}{METADATA_SUFFIX}", file.filename));
        if !metadata.exists() {
            write_atomically(&random_tmp(&dir)?, &metadata, &described.metadata)?;
            sync_dir(&dir)?;
        }
        Ok(Ok(Box::new(described)))
    }

    /// Expects a file, or says why not; too little space for it is the master's failure, an
    /// error answer that leaves the task running.
    fn expect(
        &mut self,
        package: String,
        file: WheelFile,
        expectation: FileExpectation,
        now: Instant,
    ) -> anyhow::Result<Result<Expected, WireError>> {
        if let Err(reason) = self.validate(&package, &file, &expectation) {
            tracing::warn!("refusing to expect {:?} for {package:?}: {reason}", file.filename);
            return Ok(Ok(Expected::Refused { reason }));
        }
        let published = self.config.simple_dir().join(&package).join(&file.filename);
        match same_contents(&published, &file)? {
            Some(true) => {
                tracing::info!("{} is already published with the same contents", file.filename);
                return Ok(Ok(match self.already_published(&package, &published, &file, &expectation)? {
                    Ok(file) => Expected::AlreadyHave { file },
                    Err(reason) => Expected::Refused { reason },
                }));
            }
            Some(false) => {
                let reason = conflict(&file.filename);
                tracing::warn!("{reason}");
                return Ok(Ok(Expected::Conflict { reason }));
            }
            None => {}
        }
        if let Some(t) = self.transfers.values_mut().find(|t| {
            t.package == package && t.file.filename == file.filename && t.file.sha256 == file.sha256 && t.file.size == file.size
        }) {
            t.touched = now;
            // The sender of a build handed out again may be another slave.
            t.expectation = expectation;
            tracing::info!("expecting {} again: transfer {} resumes at {} of {} bytes", file.filename, t.id, t.received, t.size());
            return Ok(Ok(Expected::Expecting { transfer: t.id }));
        }
        let avail = free_space(&self.config.staging_dir);
        if file.size > avail {
            let message = format!("not enough space on the master for {} ({} bytes, {avail} free)", file.filename, file.size);
            tracing::warn!("{message}");
            return Ok(Err(WireError::unavailable(message)));
        }
        let id = loop {
            let id = random_id()?;
            if id != 0 && !self.transfers.contains_key(&id) && !self.part_path(id).exists() {
                break id;
            }
        };
        let record = FsRequest::from(Expect { package: package.clone(), file: Box::new(file.clone()), expectation: Box::new(expectation.clone()) });
        let record = codec::encode(&record)?;
        let part = open_part(&self.part_path(id), true)?;
        if let Err(e) = write_record(&self.record_path(id), &record) {
            remove_quietly(&self.part_path(id));
            return Err(e);
        }
        tracing::info!("expecting {} ({} bytes) for {package} as transfer {id}", file.filename, file.size);
        self.transfers.insert(
            id,
            Transfer {
                id,
                package,
                file,
                expectation,
                part,
                received: 0,
                hasher: Sha256::new(),
                ahead: BTreeMap::new(),
                fetched: BTreeMap::new(),
                peer: None,
                touched: now,
            },
        );
        Ok(Ok(Expected::Expecting { transfer: id }))
    }

    fn verify(&mut self, id: TransferId) -> anyhow::Result<Verification> {
        let Some(t) = self.transfers.get(&id) else {
            return Ok(Verification::Failed { reason: format!("unknown transfer {id} (never expected, abandoned or already verified)") });
        };
        if !t.complete() {
            return Ok(Verification::Failed { reason: format!("transfer incomplete: {} of {} bytes", t.received, t.size()) });
        }
        let digest = t.digest();
        let on_disk = t.part.metadata()?.len();
        if digest != t.file.sha256 || on_disk != t.size() {
            let reason = format!(
                "{} failed verification: received {on_disk} bytes with SHA-256 {digest}, expected {} bytes with SHA-256 {}; \
                 transfer {id} rolled back",
                t.file.filename,
                t.size(),
                t.file.sha256
            );
            tracing::warn!("{reason}");
            self.forget(id);
            return Ok(Verification::Failed { reason });
        }
        let described = match describe(&self.part_path(id), &t.package, &t.file, &t.expectation) {
            Ok(described) => described,
            Err(reason) => {
                tracing::warn!("{reason}; transfer {id} rolled back");
                self.forget(id);
                return Ok(Verification::Refused { reason });
            }
        };
        let dir = self.config.simple_dir().join(&t.package);
        let target = dir.join(&t.file.filename);
        // Another transfer of the same name may have been published since this one started.
        match same_contents(&target, &t.file)? {
            Some(true) => {
                tracing::info!("{} was already published with the same contents", t.file.filename);
                let (package, file, expectation) = (t.package.clone(), t.file.clone(), t.expectation.clone());
                self.forget(id);
                return Ok(match self.already_published(&package, &target, &file, &expectation)? {
                    Ok(file) => Verification::Verified { file },
                    Err(reason) => Verification::Refused { reason },
                });
            }
            Some(false) => {
                let reason = conflict(&t.file.filename);
                tracing::warn!("{reason}; transfer {id} rolled back");
                self.forget(id);
                return Ok(Verification::Conflict { reason });
            }
            None => {}
        }
        self.publish(id, &dir, &target, &described.metadata)?;
        Ok(Verification::Verified { file: Box::new(described) })
    }

    /// Moves a verified transfer into the served tree: sync its data, `.metadata` beside it,
    /// link into place (never replacing), sync the directory, then clear staging (unsynced:
    /// see the module documentation).
    fn publish(&mut self, id: TransferId, dir: &Path, target: &Path, metadata: &[u8]) -> anyhow::Result<()> {
        let Some(t) = self.transfers.get(&id) else { anyhow::bail!("transfer {id} vanished") };
        t.part.sync_data().context("cannot sync the received file")?;
        if !dir.exists() {
            fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
            if let Some(parent) = dir.parent() {
                sync_dir(parent)?;
            }
        }
        let metadata_path = dir.join(format!("{}{METADATA_SUFFIX}", t.file.filename));
        // Named after the transfer: a temporary file left by a crash is replaced, not added to.
        let tmp = dir.join(format!(".{id}{METADATA_SUFFIX}.tmp"));
        write_atomically(&tmp, &metadata_path, metadata)?;
        let part_path = self.part_path(id);
        if let Err(e) = fs::hard_link(&part_path, target) {
            remove_quietly(&metadata_path);
            return Err(e).with_context(|| format!("cannot link {} into place", target.display()));
        }
        sync_dir(dir)?;
        tracing::info!("verified and published {} ({} bytes) for {}", t.file.filename, t.size(), t.package);
        self.forget(id);
        Ok(())
    }

    /// Removes a published file no build records, and its `.metadata` file.
    fn remove_orphan(&mut self, package: &str, filename: &str) -> anyhow::Result<Removal> {
        let name_ok = WheelName::parse(filename).is_ok_and(|name| name.is_for(package)) && canonicalize(package) == package;
        if !name_ok {
            return Ok(Removal::Refused { reason: format!("{filename:?} is not a file of package {package:?}") });
        }
        let dir = self.config.simple_dir().join(package);
        let path = dir.join(filename);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Removal::Removed),
            Err(e) => return Err(e).with_context(|| format!("cannot remove {}", path.display())),
        }
        remove_quietly(&dir.join(format!("{filename}{METADATA_SUFFIX}")));
        sync_dir(&dir)?;
        tracing::warn!("removed {}: no build records it", path.display());
        Ok(Removal::Removed)
    }

    /// Drops a transfer and deletes its staging files.
    fn forget(&mut self, id: TransferId) -> Option<Transfer> {
        let t = self.transfers.remove(&id)?;
        if let Some(peer) = &t.peer {
            self.peers.remove(peer.identity());
        }
        remove_quietly(&self.part_path(id));
        remove_quietly(&self.record_path(id));
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
                    t.received,
                    t.size()
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
            p.fetched.clear();
        }
        let Some(t) = self.transfers.get_mut(&id) else { return };
        t.touched = now;
        match &t.peer {
            Some(old) if old.identity() == identity.as_slice() => {
                tracing::debug!("uploader {peer} nudged transfer {id} at {} of {} bytes", t.received, t.size());
            }
            Some(old) => {
                tracing::info!("uploader {peer} takes transfer {id} over from {old} at {} of {} bytes", t.received, t.size());
                let old = old.identity().to_vec();
                self.peers.remove(&old);
            }
            None => tracing::info!("uploader {peer} sends {} (transfer {id}) from byte {}", t.file.filename, t.received),
        }
        let Some(t) = self.transfers.get_mut(&id) else { return };
        t.peer = Some(peer.clone());
        // Whatever was asked before is asked again: of this uploader, or of the new one.
        t.fetched.clear();
        if t.complete() {
            reply(&sockets.files, peer, &FileReply::Done);
            return;
        }
        for (offset, length) in t.fill(self.config.chunk_size, self.config.window) {
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
        match t.accept(offset, data) {
            Ok(true) if t.complete() => {
                tracing::info!("transfer {id} of {} complete: {} bytes", t.file.filename, t.size());
                reply(&sockets.files, peer, &FileReply::Done);
            }
            Ok(true) => {
                for (offset, length) in t.fill(self.config.chunk_size, self.config.window) {
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
            t.fetched.clear();
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

/// The kinds of file the juggler keeps in its staging directory.
enum StagingName {
    Record(TransferId),
    Part(TransferId),
    Temporary,
}

impl StagingName {
    fn parse(name: &str) -> Option<StagingName> {
        let id = |s: &str| s.parse::<TransferId>().ok().filter(|_| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()));
        if let Some(stem) = name.strip_suffix(".expect") {
            return id(stem).map(StagingName::Record);
        }
        if let Some(stem) = name.strip_suffix(".part") {
            return id(stem).map(StagingName::Part);
        }
        if let Some(stem) = name.strip_suffix(".expect.tmp") {
            return id(stem).map(|_| StagingName::Temporary);
        }
        None
    }
}

/// Feeds a hasher through `io::copy`.
struct HashWriter<'a>(&'a mut Sha256);

impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Bytes free for an unprivileged writer on the file system of `dir` (as many as can be
/// counted when it cannot be asked: the write itself will tell).
// The counts are 32 bits wide on 32-bit targets, 64 on others.
#[allow(clippy::useless_conversion)]
fn free_space(dir: &Path) -> u64 {
    nix::sys::statvfs::statvfs(dir)
        .map(|s| u64::from(s.blocks_available()).saturating_mul(u64::from(s.fragment_size())))
        .unwrap_or(u64::MAX)
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A transfer id: 8 random bytes, so that ids cannot be guessed.
fn random_id() -> io::Result<TransferId> {
    let mut bytes = [0u8; 8];
    File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(TransferId::from_le_bytes(bytes))
}

fn open_part(path: &Path, create_new: bool) -> anyhow::Result<File> {
    let mut options = OpenOptions::new();
    options.read(true).write(true).mode(0o644);
    if create_new {
        options.create_new(true);
    } else {
        options.create(true).truncate(false);
    }
    let file = options.open(path).with_context(|| format!("cannot open {}", path.display()))?;
    // Published files must be readable by the web server whatever the umask.
    file.set_permissions(fs::Permissions::from_mode(0o644))?;
    Ok(file)
}

/// Whether `path` holds the file `file` describes: None when nothing is there, Some(false)
/// when something else is (compared by size, then SHA-256).
fn same_contents(path: &Path, file: &WheelFile) -> anyhow::Result<Option<bool>> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", path.display())),
    };
    if !meta.is_file() || meta.len() != file.size {
        return Ok(Some(false));
    }
    let mut hasher = Sha256::new();
    let mut reader = io::BufReader::with_capacity(1 << 20, File::open(path)?);
    io::copy(&mut reader, &mut HashWriter(&mut hasher)).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(Some(format!("{:x}", hasher.finalize()) == file.sha256))
}

/// Writes `bytes` to `path` through the temporary file `tmp` in the same directory (its data
/// synced, then renamed), so that readers see the old contents or the new, never part of
/// them, and the name never points at bytes not on disk. A file already at `tmp` (left by a
/// crash) is replaced, never written through. The directory is not synced.
fn write_atomically(tmp: &Path, path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let result = (|| -> io::Result<()> {
        let create = || OpenOptions::new().write(true).create_new(true).mode(0o644).open(tmp);
        let mut f = match create() {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                fs::remove_file(tmp)?;
                create()?
            }
            other => other?,
        };
        f.set_permissions(fs::Permissions::from_mode(0o644))?;
        f.write_all(bytes)?;
        f.sync_data()?;
        fs::rename(tmp, path)
    })();
    if let Err(e) = result {
        remove_quietly(tmp);
        return Err(e).with_context(|| format!("cannot write {}", path.display()));
    }
    Ok(())
}

/// A temporary file's name in `dir`: short (the target's may already be as long as a name can
/// be) and random.
fn random_tmp(dir: &Path) -> anyhow::Result<PathBuf> {
    Ok(dir.join(format!(".{}.tmp", random_id()?)))
}

/// Creates a transfer's record and writes it in one go: no temporary file and no sync (see
/// the module documentation for why a torn or lost record is harmless).
fn write_record(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    if let Err(e) = file.write_all(bytes) {
        remove_quietly(path);
        return Err(e).with_context(|| format!("cannot write {}", path.display()));
    }
    Ok(())
}

/// Starts writing the bytes of `file` before `len` to disk without waiting (on Linux, "don't
/// need" advice writes dirty pages back and drops pages already clean: the juggler never reads
/// a partial file back). Called every [`WRITEBACK_EVERY`] bytes, it covers the last two such
/// stretches only: what lies before was handed to writeback by the calls before, and walking
/// it again costs a page lookup per page each time. Only a hint: failure changes nothing but
/// the fsync's duration.
fn start_writeback(file: &File, len: u64) {
    let start = len.saturating_sub(2 * WRITEBACK_EVERY);
    let offset = i64::try_from(start).unwrap_or(i64::MAX);
    let length = i64::try_from(len - start).unwrap_or(i64::MAX);
    if let Err(e) = nix::fcntl::posix_fadvise(file, offset, length, nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED) {
        tracing::debug!("writeback hint failed: {e}");
    }
}

fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("cannot sync {}", dir.display()))
}

fn remove_quietly(path: &Path) {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!("cannot remove {}: {e}", path.display()),
    }
}

/// Refuses descriptions the database cannot record (its column sizes), so that a file is
/// never published for a build that then cannot be recorded.
fn check_description(file: &WheelFile) -> Result<(), String> {
    let tags = [
        ("distribution", file.package_tag.as_str(), 200),
        ("version", &file.version_tag, 200),
        ("build tag", file.build_tag.as_deref().unwrap_or(""), 100),
        ("python tag", &file.py_tag, 100),
        ("ABI tag", &file.abi_tag, 100),
        ("platform tag", &file.platform_tag, 100),
        ("Requires-Python", file.requires_python.as_deref().unwrap_or(""), 200),
    ];
    for (what, value, limit) in tags {
        if value.chars().count() > limit {
            return Err(format!("{}: its {what} is longer than {limit} characters", file.filename));
        }
    }
    let deps = &file.dependencies;
    if let Some(long) = deps.apt.iter().chain(&deps.pip).chain(&deps.unresolved).find(|d| d.chars().count() > 255) {
        return Err(format!("{}: dependency {long:?} is longer than 255 characters", file.filename));
    }
    Ok(())
}

/// The answer for a file whose name is published with other bytes.
/// Why a file cannot be published under its name.
fn conflict(filename: &str) -> String {
    format!("{filename} is already published with different contents; a published file is never overwritten with different bytes")
}

/// Why a wheel's name does not belong to the build `expectation` describes, if it does not:
/// another package or version, an ABI tag other than the build's (or `abi3`, `none`), or a
/// platform tag the builder cannot have made.
fn check_name(name: &WheelName, package: &str, expectation: &FileExpectation) -> Result<(), String> {
    let filename = || format!("{}-{}-…-{}-{}-{}.whl", name.name, name.version, name.python, name.abi, name.platform);
    if !name.is_for(package) {
        return Err(format!("{} is not a file of package {package}", filename()));
    }
    if !same_version(&name.version, &expectation.version) {
        return Err(format!("{} is version {}, not {} that was built", filename(), name.version, expectation.version));
    }
    if let Some(abi) = name.abi.split('.').find(|abi| !matches!(*abi, "abi3" | "none") && *abi != expectation.abi) {
        return Err(format!("{} has ABI tag {abi}; a build for {} makes {}, abi3 or none", filename(), expectation.abi, expectation.abi));
    }
    if !expectation.platform.is_empty() {
        let machine = expectation.platform.strip_prefix("linux_").unwrap_or(&expectation.platform);
        let allowed = |tag: &str| {
            tag == "any"
                || tag == expectation.platform
                || ((tag.starts_with("manylinux") || tag.starts_with("musllinux")) && tag.strip_suffix(machine).is_some_and(|rest| rest.ends_with('_')))
        };
        if let Some(tag) = name.platform.split('.').find(|tag| !allowed(tag)) {
            return Err(format!("{} has platform tag {tag}; a builder on {} makes {}, any, or a manylinux or musllinux tag of {machine}", filename(), expectation.platform, expectation.platform));
        }
    }
    Ok(())
}

/// Reads the wheel at `path` (the bytes announced as `file`, already verified) and describes
/// it from its own contents: tags from its name, METADATA and what the farm keeps of it from
/// its archive, which must name the package and version. Only the Debian dependencies, which
/// the builder found by linking the wheel's libraries on its own system, are the sender's.
fn describe(path: &Path, package: &str, file: &WheelFile, expectation: &FileExpectation) -> Result<WheelFile, String> {
    let opened = File::open(path).map_err(|e| format!("cannot read {}: {e}", file.filename))?;
    let mut archive = WheelArchive::open(opened, &file.filename, Path::new(&file.filename)).map_err(|e| e.to_string())?;
    let metadata = archive.metadata(inspect::Limits::default().metadata).map_err(|e| e.to_string())?;
    let core = inspect::parse_metadata(&metadata);
    match core.name.as_deref() {
        Some(name) if canonicalize(name) == package => {}
        other => return Err(format!("{}: its METADATA names project {other:?}, not {package}", file.filename)),
    }
    match core.version.as_deref() {
        Some(version) if same_version(version, &expectation.version) => {}
        other => return Err(format!("{}: its METADATA names version {other:?}, not {}", file.filename, expectation.version)),
    }
    let described = WheelFile {
        size: file.size,
        sha256: file.sha256.clone(),
        requires_python: core.requires_python,
        dependencies: Dependencies { apt: file.dependencies.apt.clone(), pip: core.requirements, unresolved: file.dependencies.unresolved.clone() },
        metadata: metadata.into(),
        ..WheelFile::named(&file.filename, archive.name().clone())
    };
    check_description(&described)?;
    Ok(described)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transfer(size: u64, dir: &Path) -> Transfer {
        let file = piwheels_testsupport::data::wheel_file("foo-1.0-py3-none-any.whl", &vec![0; size as usize]);
        Transfer {
            id: 1,
            package: "foo".into(),
            file,
            expectation: FileExpectation { version: "1.0".into(), abi: "cp311".into(), platform: String::new(), uploader: None },
            part: open_part(&dir.join("1.part"), true).unwrap(),
            received: 0,
            hasher: Sha256::new(),
            ahead: BTreeMap::new(),
            fetched: BTreeMap::new(),
            peer: None,
            touched: Instant::now(),
        }
    }

    #[test]
    fn fetches_fill_the_window_in_order_and_the_last_is_short() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = transfer(25, dir.path());
        assert_eq!(t.fill(10, 2), vec![(0, 10), (10, 10)]);
        assert!(t.fill(10, 2).is_empty());
        assert!(t.accept(10, vec![1; 10]).unwrap());
        assert_eq!(t.received, 0, "bytes ahead of the prefix wait");
        assert!(t.fill(10, 2).is_empty(), "held chunks count against the window");
        assert!(t.accept(0, vec![0; 10]).unwrap());
        assert_eq!(t.received, 20);
        assert_eq!(t.fill(10, 2), vec![(20, 5)]);
        assert!(!t.accept(0, vec![0; 10]).unwrap(), "a repeat is ignored");
        assert!(t.accept(20, vec![2; 5]).unwrap());
        assert!(t.complete());
        assert_eq!(fs::read(dir.path().join("1.part")).unwrap(), [vec![0; 10], vec![1; 10], vec![2; 5]].concat());
    }

    #[test]
    fn chunks_that_answer_no_fetch_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = transfer(25, dir.path());
        t.fill(10, 1);
        for (offset, len, what) in
            [(20, 10, "past the end"), (0, 11, "larger than"), (0, 9, "smaller than"), (10, 10, "never asked"), (u64::MAX, 1, "past")]
        {
            match t.accept(offset, vec![0; len]) {
                Err(ChunkFault::Refused(reason)) => assert!(reason.contains(what), "{reason}"),
                other => panic!("{offset}+{len}: {other:?}"),
            }
        }
    }

    #[test]
    fn descriptions_the_database_cannot_hold_are_refused() {
        let good = piwheels_testsupport::data::wheel_file("foo-1.0-py3-none-any.whl", b"x");
        assert_eq!(check_description(&good), Ok(()));
        let mut long_python = good.clone();
        long_python.requires_python = Some(">=3".repeat(100));
        assert!(check_description(&long_python).unwrap_err().contains("Requires-Python"));
        let mut long_dependency = good.clone();
        long_dependency.dependencies.unresolved = vec![format!("/usr/local/lib/{}.so", "x".repeat(300))];
        assert!(check_description(&long_dependency).unwrap_err().contains("dependency"));
    }

    #[test]
    fn a_nudge_asks_again_around_held_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = transfer(40, dir.path());
        assert_eq!(t.fill(10, 3), vec![(0, 10), (10, 10), (20, 10)]);
        t.accept(10, vec![0; 10]).unwrap();
        t.fetched.clear();
        assert_eq!(t.fill(10, 3), vec![(0, 10), (20, 10)]);
    }

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
        let record = codec::encode(&FsRequest::from(Expect { package: "foo".into(), file: Box::new(file), expectation })).unwrap();
        let staged = || fs::read_dir(&config.staging_dir).unwrap().count();
        for cut in (0..record.len()).step_by(5).chain([record.len() - 1]) {
            write_record(&config.staging_dir.join("7.expect"), &record[..cut]).unwrap();
            fs::write(config.staging_dir.join("7.part"), b"the wh").unwrap();
            let juggler = FileJuggler::start(&config, &clock).unwrap();
            assert_eq!(juggler.transfers(), 0, "a record cut at {cut} of {} bytes was taken", record.len());
            assert_eq!(staged(), 0, "cut at {cut}");
        }
        write_record(&config.staging_dir.join("7.expect"), &record).unwrap();
        fs::write(config.staging_dir.join("7.part"), b"the wh").unwrap();
        let juggler = FileJuggler::start(&config, &clock).unwrap();
        assert_eq!(juggler.transfers(), 1, "the whole record resumes");
        assert_eq!(juggler.transfers[&7].received, 6);
    }

    #[test]
    fn a_leftover_temporary_file_is_replaced_not_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        fs::write(&outside, b"keep").unwrap();
        let tmp = dir.path().join(".7.metadata.tmp");
        std::os::unix::fs::symlink(&outside, &tmp).unwrap();
        let target = dir.path().join("foo-1.0-py3-none-any.whl.metadata");
        write_atomically(&tmp, &target, b"Metadata-Version: 2.1").unwrap();
        assert_eq!(fs::read(&outside).unwrap(), b"keep");
        assert_eq!(fs::read(&target).unwrap(), b"Metadata-Version: 2.1");
        assert!(fs::symlink_metadata(&tmp).is_err(), "the temporary name is gone");
        assert_eq!(fs::metadata(&target).unwrap().permissions().mode() & 0o777, 0o644);
    }

    #[test]
    fn wheel_names_must_belong_to_their_build() {
        let build = FileExpectation { version: "1.0".into(), abi: "cp311".into(), platform: "linux_armv7l".into(), uploader: None };
        let check = |filename: &str| check_name(&WheelName::parse(filename).unwrap(), "foo", &build);
        for good in [
            "foo-1.0-py3-none-any.whl",
            "foo-1.0.0-cp311-cp311-linux_armv7l.whl",
            "Foo-1.0-cp39-abi3-linux_armv7l.whl",
            "foo-1.0-cp311-cp311-manylinux_2_17_armv7l.manylinux2014_armv7l.whl",
            "foo-1.0-cp311-cp311-musllinux_1_1_armv7l.whl",
            "foo-1.0-1-py2.py3-none-any.whl",
        ] {
            assert_eq!(check(good), Ok(()), "{good}");
        }
        for (bad, why) in [
            ("bar-1.0-py3-none-any.whl", "not a file of package foo"),
            ("foo-1.1-py3-none-any.whl", "version 1.1"),
            ("foo-1.0-cp312-cp312-linux_armv7l.whl", "ABI tag cp312"),
            ("foo-1.0-cp311-cp311.cp312-linux_armv7l.whl", "ABI tag cp312"),
            ("foo-1.0-cp311-cp311-linux_aarch64.whl", "platform tag linux_aarch64"),
            ("foo-1.0-cp311-cp311-manylinux_2_17_x86_64.whl", "platform tag manylinux_2_17_x86_64"),
            ("foo-1.0-cp311-cp311-win_armv7l.whl", "platform tag win_armv7l"),
            ("foo-1.0-cp311-cp311-manylinux_2_17_xarmv7l.whl", "platform tag manylinux_2_17_xarmv7l"),
        ] {
            let reason = check(bad).unwrap_err();
            assert!(reason.contains(why), "{bad}: {reason}");
        }
        let import = FileExpectation { platform: String::new(), ..build };
        assert_eq!(check_name(&WheelName::parse("foo-1.0-cp311-cp311-linux_aarch64.whl").unwrap(), "foo", &import), Ok(()), "an import's platform is not checked");
    }

    #[test]
    fn staging_names() {
        assert!(matches!(StagingName::parse("123.part"), Some(StagingName::Part(123))));
        assert!(matches!(StagingName::parse("123.expect"), Some(StagingName::Record(123))));
        assert!(matches!(StagingName::parse("123.expect.tmp"), Some(StagingName::Temporary)));
        for other in ["piw-master.pid", ".part", "+1.part", "x.expect", "99999999999999999999999.part"] {
            assert!(StagingName::parse(other).is_none(), "{other}");
        }
    }
}
