//! The sending side of a file transfer, shared by piw-slave and piw-import: greets the file
//! juggler with a transfer id and answers each `Fetch` with the bytes it asks for, read from
//! the file at their offset, until the juggler says `Done`.
//!
//! The juggler drives the transfer, so the sender keeps no state but the file. When nothing
//! arrives for [`UploadOptions::nudge_after`] the sender says hello again **on a new
//! connection**: the juggler takes the transfer over for the new connection and asks for the
//! missing bytes again. A new connection, rather than a repeated hello on the old one, means
//! that chunks still queued for a master that has restarted are dropped with the old socket
//! instead of reaching the new master from a connection it does not know (which it would
//! refuse). A `Refused` reply, a file that does not hold the bytes asked for, or
//! [`UploadOptions::overall_timeout`] ends the upload with an [`UploadError`].
//!
//! An [`Uploader`] keeps its connection after a transfer that ended with `Done`, and greets
//! the juggler with the next transfer's hello on it: a slave sends a wheel every few seconds,
//! and a new connection per wheel costs the master a TCP accept, ZeroMQ's handshake and the
//! connection's teardown. Only a clean end allows this: the juggler says `Done` once every
//! byte it fetched has arrived, so nothing of the finished transfer is still in flight either
//! way. After any failure the connection is closed, as after a nudge, and a connection idle
//! for [`KEEP_IDLE`] is not used again: a firewall or a rebooted master may have dropped it
//! without a word, and a hello lost in it would cost a nudge.

use std::fmt;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::codec;
use crate::protocols::{ErrorKind, FileReply, FileRequest, TransferId, Versions};
use crate::transport::{DEFAULT_MAX_MESSAGE, Dealer, Security, TransportError};

/// Largest range the sender will read for one `Fetch`: what fits in one message of the
/// socket's size limit, with room for the frame around it.
pub const MAX_FETCH: u64 = (DEFAULT_MAX_MESSAGE - (4 << 10)) as u64;

/// How long an [`Uploader`] keeps an idle connection for the next transfer.
pub const KEEP_IDLE: Duration = Duration::from_secs(60);

/// How an upload behaves.
#[derive(Debug, Clone)]
pub struct UploadOptions {
    /// Say hello again (on a new connection) after this long without a word from the juggler
    /// (default 5 s): the master may have restarted or lost our messages.
    pub nudge_after: Duration,
    /// Give up after this long in all (default 30 minutes), so a sender never waits forever
    /// for a master that does not want the file.
    pub overall_timeout: Duration,
    /// Test hook: stop, as if the sender died, once this many bytes have been sent. The
    /// upload then fails with [`UploadError::Stopped`].
    pub stop_after_bytes: Option<u64>,
}

impl Default for UploadOptions {
    fn default() -> Self {
        UploadOptions { nudge_after: Duration::from_secs(5), overall_timeout: Duration::from_secs(30 * 60), stop_after_bytes: None }
    }
}

/// What a finished upload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadReport {
    /// Bytes of the file sent (a resumed transfer sends only what the juggler is missing).
    pub bytes_sent: u64,
    /// Chunks sent.
    pub chunks_sent: u64,
    /// Hellos sent: 1, plus one per nudge.
    pub hellos: u32,
    /// Time from the first hello to `Done`.
    pub elapsed: Duration,
}

/// Why an upload failed.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// The juggler refused the transfer (unknown transfer, version mismatch, a chunk it did
    /// not ask for: `Refused`) or could not store it (`Unavailable`); its reason is given.
    #[error("the file juggler stopped transfer {transfer}: {reason}")]
    Refused {
        /// The transfer.
        transfer: TransferId,
        /// The juggler's reason.
        reason: String,
        /// Whose fault it is: the transfer's, or the master's own.
        kind: ErrorKind,
    },
    /// The juggler asked for bytes the file does not have: it expects another file.
    #[error("the file juggler asked for bytes {offset}..{end} of {path}, which holds {size} bytes")]
    BadFetch {
        /// The file.
        path: PathBuf,
        /// Start of the range asked for.
        offset: u64,
        /// End of the range asked for (or `u64::MAX` when it overflows).
        end: u64,
        /// The file's size.
        size: u64,
    },
    /// The transfer did not finish in time.
    #[error("transfer {transfer} of {path} did not finish within {timeout:?} ({bytes_sent} bytes sent)")]
    TimedOut {
        /// The transfer.
        transfer: TransferId,
        /// The file.
        path: PathBuf,
        /// The limit.
        timeout: Duration,
        /// Bytes sent before giving up.
        bytes_sent: u64,
    },
    /// [`UploadOptions::stop_after_bytes`] stopped the upload.
    #[error("upload stopped after {bytes_sent} bytes, as asked")]
    Stopped {
        /// Bytes sent before stopping.
        bytes_sent: u64,
    },
    /// The socket failed, or the juggler sent something that is not a [`FileReply`].
    #[error(transparent)]
    Transport(#[from] TransportError),
}

/// Uploads `path` as `transfer` to the file juggler at `endpoint` on a connection of its own,
/// answering its fetches until it says `Done`. See the module documentation for nudges and
/// failures.
pub fn upload(
    ctx: &zmq::Context,
    endpoint: &str,
    security: &Security,
    transfer: TransferId,
    path: &Path,
    options: UploadOptions,
) -> Result<UploadReport, UploadError> {
    upload_with_progress(ctx, endpoint, security, transfer, path, options, &mut |_| {})
}

/// [`upload`], calling `progress` after each chunk with how far into the file the bytes sent
/// reach (the juggler asks in increasing order, so this is how much of the file it has, give
/// or take the chunks in flight), for a progress display.
pub fn upload_with_progress(
    ctx: &zmq::Context,
    endpoint: &str,
    security: &Security,
    transfer: TransferId,
    path: &Path,
    options: UploadOptions,
    progress: &mut dyn FnMut(u64),
) -> Result<UploadReport, UploadError> {
    Uploader::new(ctx, endpoint, security).upload_with_progress(transfer, path, options, progress)
}

/// Uploads one file after another to one file juggler, on a connection kept between transfers
/// that end cleanly (see the module documentation).
pub struct Uploader {
    ctx: zmq::Context,
    endpoint: String,
    security: Security,
    /// The connection the last transfer ended cleanly on, if any, and when it ended.
    kept: Option<(Dealer<FileRequest, FileReply>, Instant)>,
}

impl fmt::Debug for Uploader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Uploader").field("endpoint", &self.endpoint).field("connected", &self.kept.is_some()).finish()
    }
}

impl Uploader {
    /// An uploader to the file juggler at `endpoint`, authenticating with `security`; it
    /// connects at its first upload.
    pub fn new(ctx: &zmq::Context, endpoint: &str, security: &Security) -> Uploader {
        Uploader { ctx: ctx.clone(), endpoint: endpoint.to_string(), security: security.clone(), kept: None }
    }

    /// The file juggler's address.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Closes the kept connection, if any: the next upload starts on a new one.
    pub fn disconnect(&mut self) {
        if let Some((dealer, _)) = self.kept.take() {
            drop_now(dealer);
        }
    }

    /// Uploads `path` as `transfer`, answering the juggler's fetches until it says `Done`.
    pub fn upload(&mut self, transfer: TransferId, path: &Path, options: UploadOptions) -> Result<UploadReport, UploadError> {
        self.upload_with_progress(transfer, path, options, &mut |_| {})
    }

    /// [`Uploader::upload`], calling `progress` as [`upload_with_progress`] does.
    pub fn upload_with_progress(
        &mut self,
        transfer: TransferId,
        path: &Path,
        options: UploadOptions,
        progress: &mut dyn FnMut(u64),
    ) -> Result<UploadReport, UploadError> {
        if self.kept.as_ref().is_some_and(|(_, ended)| ended.elapsed() >= KEEP_IDLE) {
            self.disconnect();
        }
        let mut dealer = match self.kept.take() {
            Some((dealer, _)) => dealer,
            None => connect(&self.ctx, &self.endpoint, &self.security)?,
        };
        let outcome = answer_fetches(&self.ctx, &self.endpoint, &self.security, &mut dealer, transfer, path, options, progress);
        match outcome {
            Ok(_) => self.kept = Some((dealer, Instant::now())),
            // A stop asked for stands for a sender killed after its last send: what it sent
            // still leaves (the socket lingers), so that the bytes it counted are the bytes the
            // juggler gets.
            Err(UploadError::Stopped { .. }) => drop(dealer),
            // Fetches of the failed transfer may still be on their way.
            Err(_) => drop_now(dealer),
        }
        outcome
    }
}

/// One transfer on `dealer`, which a nudge replaces with a new connection.
#[allow(clippy::too_many_arguments)]
fn answer_fetches(
    ctx: &zmq::Context,
    endpoint: &str,
    security: &Security,
    dealer: &mut Dealer<FileRequest, FileReply>,
    transfer: TransferId,
    path: &Path,
    options: UploadOptions,
    progress: &mut dyn FnMut(u64),
) -> Result<UploadReport, UploadError> {
    let io_err = |source| UploadError::Io { path: path.to_path_buf(), source };
    let file = File::open(path).map_err(io_err)?;
    let size = file.metadata().map_err(io_err)?.len();
    let start = Instant::now();
    let deadline = start + options.overall_timeout;
    let hello = FileRequest::Hello { versions: Versions::current(), transfer };
    let mut report = UploadReport { bytes_sent: 0, chunks_sent: 0, hellos: 0, elapsed: Duration::ZERO };
    dealer.send(&hello, options.nudge_after)?;
    report.hellos += 1;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(UploadError::TimedOut {
                transfer,
                path: path.to_path_buf(),
                timeout: options.overall_timeout,
                bytes_sent: report.bytes_sent,
            });
        }
        match dealer.recv_timeout(options.nudge_after.min(left))? {
            None => {
                if Instant::now() >= deadline {
                    continue;
                }
                tracing::debug!("no word from {endpoint} for {:?}: saying hello again for transfer {transfer}", options.nudge_after);
                let old = std::mem::replace(dealer, connect(ctx, endpoint, security)?);
                drop_now(old);
                dealer.send(&hello, options.nudge_after)?;
                report.hellos += 1;
            }
            Some(FileReply::Fetch { offset, length }) => {
                let end = offset.saturating_add(length);
                if end > size || length > MAX_FETCH {
                    return Err(UploadError::BadFetch { path: path.to_path_buf(), offset, end, size });
                }
                if options.stop_after_bytes.is_some_and(|limit| report.bytes_sent >= limit) {
                    return Err(UploadError::Stopped { bytes_sent: report.bytes_sent });
                }
                // The bytes are read straight into the frame, whose buffer ZeroMQ then takes
                // over: no copy between the file and the socket. `length` fits in memory: it
                // is at most MAX_FETCH.
                let mut chunk = codec::encode_chunk(offset, length as usize).map_err(TransportError::from)?;
                file.read_exact_at(chunk.data_mut(), offset).map_err(io_err)?;
                dealer.send_encoded(chunk.into_encoded(), options.nudge_after)?;
                report.bytes_sent += length;
                report.chunks_sent += 1;
                progress(end);
            }
            Some(FileReply::Done) => {
                report.elapsed = start.elapsed();
                return Ok(report);
            }
            Some(FileReply::Error(error)) => return Err(UploadError::Refused { transfer, reason: error.message, kind: error.kind }),
        }
    }
}

fn connect(ctx: &zmq::Context, endpoint: &str, security: &Security) -> Result<Dealer<FileRequest, FileReply>, TransportError> {
    Dealer::connect_secured(ctx, endpoint, Some(DEFAULT_MAX_MESSAGE), security)
}

/// Closes a socket without delivering what it still has queued: after a nudge those are
/// answers to fetches the juggler no longer expects from this connection.
fn drop_now(dealer: Dealer<FileRequest, FileReply>) {
    let _ = dealer.socket().set_linger(0);
}
