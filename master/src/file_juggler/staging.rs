//! The staging directory, where files are received before they are verified and published.
//! Every transfer there is two files named by its id: the record `<id>.expect` (the
//! [`Expect`] that created it, encoded as on the wire) and the partial file `<id>.part`, whose
//! length is always the part received, since bytes are written strictly in order. A restarted
//! master reads every record, hashes each partial file's bytes once and resumes after them.
//!
//! # Nothing here is synced
//!
//! A record is created and written in one go (no temporary file, no rename, no fsync); the
//! partial file is synced only when it is published; removals are not synced. What a crash can
//! then leave, and why each is harmless:
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

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use piwheels_common::codec;
use piwheels_common::protocols::TransferId;
use sha2::{Digest, Sha256};

use crate::calls::files::{Expect, FsRequest};

/// After this many bytes written the juggler asks the kernel to start writing them to disk,
/// so that the fsync at publication finds little left to do and does not stall the task.
const WRITEBACK_EVERY: u64 = 8 << 20;

/// The staging directory.
#[derive(Debug, Clone)]
pub(super) struct Staging {
    dir: PathBuf,
}

/// What a scan of the staging directory found.
#[derive(Debug, Default)]
pub(super) struct Found {
    /// Transfers with a record.
    pub(super) records: Vec<TransferId>,
    /// Partial files, with or without a record.
    pub(super) parts: Vec<TransferId>,
}

impl Staging {
    pub(super) fn new(dir: &Path) -> Staging {
        Staging { dir: dir.to_path_buf() }
    }

    /// The partial file of a transfer: published by a hard link once verified.
    pub(super) fn part_path(&self, id: TransferId) -> PathBuf {
        self.dir.join(format!("{id}.part"))
    }

    fn record_path(&self, id: TransferId) -> PathBuf {
        self.dir.join(format!("{id}.expect"))
    }

    /// Lists the transfers' files. Temporary files of ours (left by an earlier version's crash)
    /// are removed; files that are not ours are left alone.
    pub(super) fn scan(&self) -> anyhow::Result<Found> {
        let mut found = Found::default();
        for entry in fs::read_dir(&self.dir).with_context(|| format!("cannot read {}", self.dir.display()))? {
            let entry = entry?;
            match StagingName::parse(&entry.file_name().to_string_lossy()) {
                Some(StagingName::Record(id)) => found.records.push(id),
                Some(StagingName::Part(id)) => found.parts.push(id),
                Some(StagingName::Temporary) => remove_quietly(&entry.path()),
                None => tracing::debug!("leaving {} alone: not a staging file", entry.path().display()),
            }
        }
        Ok(found)
    }

    /// A transfer's record.
    pub(super) fn read_record(&self, id: TransferId) -> anyhow::Result<Expect> {
        let bytes = fs::read(self.record_path(id)).context("cannot read its record")?;
        match codec::decode::<FsRequest>(&bytes).context("unreadable record")? {
            FsRequest::Expect(expect) => Ok(expect),
            other => anyhow::bail!("the record holds {other:?}, not an Expect"),
        }
    }

    /// Opens a transfer's partial file of a `size`-byte file and hashes what it holds; one
    /// longer than the file is emptied. Returns it with its length.
    pub(super) fn resume_part(&self, id: TransferId, size: u64) -> anyhow::Result<(Part, u64)> {
        let file = open_part(&self.part_path(id), false)?;
        let mut len = file.metadata()?.len();
        if len > size {
            tracing::warn!("partial file of transfer {id} is longer than the file; starting again");
            file.set_len(0)?;
            len = 0;
        }
        // Writes are in order, so the partial file is a prefix: hash it once.
        let mut hasher = Sha256::new();
        let mut reader = io::BufReader::with_capacity(1 << 20, (&file).take(len));
        io::copy(&mut reader, &mut hasher).context("cannot read the partial file")?;
        Ok((Part { file, hasher }, len))
    }

    /// Creates a new transfer's record and empty partial file under a random id that `taken`
    /// does not hold.
    pub(super) fn create(&self, expect: Expect, taken: impl Fn(TransferId) -> bool) -> anyhow::Result<(TransferId, Part)> {
        let id = loop {
            let id = random_id()?;
            if id != 0 && !taken(id) && !self.part_path(id).exists() {
                break id;
            }
        };
        let record = codec::encode(&FsRequest::from(expect))?;
        let file = open_part(&self.part_path(id), true)?;
        if let Err(e) = write_record(&self.record_path(id), &record) {
            remove_quietly(&self.part_path(id));
            return Err(e);
        }
        Ok((id, Part { file, hasher: Sha256::new() }))
    }

    /// Removes a transfer's files.
    pub(super) fn remove(&self, id: TransferId) {
        remove_quietly(&self.part_path(id));
        remove_quietly(&self.record_path(id));
    }

    /// Bytes free for an unprivileged writer on the staging file system (as many as can be
    /// counted when it cannot be asked: the write itself will tell).
    // The counts are 32 bits wide on 32-bit targets, 64 on others.
    #[allow(clippy::useless_conversion)]
    pub(super) fn free_space(&self) -> u64 {
        nix::sys::statvfs::statvfs(&self.dir)
            .map(|s| u64::from(s.blocks_available()).saturating_mul(u64::from(s.fragment_size())))
            .unwrap_or(u64::MAX)
    }
}

/// A transfer's partial file and the SHA-256 of the bytes written to it.
pub(super) struct Part {
    file: File,
    hasher: Sha256,
}

impl Part {
    /// Writes and hashes the bytes at `offset`, which must be the end of what is written.
    pub(super) fn write(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.file.write_all_at(data, offset)?;
        self.hasher.update(data);
        let end = offset + data.len() as u64;
        if offset / WRITEBACK_EVERY != end / WRITEBACK_EVERY {
            start_writeback(&self.file, end);
        }
        Ok(())
    }

    /// SHA-256 of the bytes written, in lower-case hex.
    pub(super) fn digest(&self) -> String {
        hex::encode(self.hasher.clone().finalize())
    }

    /// Its length on disk.
    pub(super) fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    /// Makes its data durable.
    pub(super) fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
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

/// Removes a file; one already gone is not an error, and another failure is only logged (a
/// file left behind is found again by the next scan or reap).
pub(super) fn remove_quietly(path: &Path) {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!("cannot remove {}: {e}", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calls::files::FileExpectation;
    use piwheels_testsupport::data::dir_names as names;

    fn expect() -> Expect {
        let file = piwheels_testsupport::data::wheel_file("foo-1.0-py3-none-any.whl", b"the wheel's bytes");
        let expectation = Box::new(FileExpectation { version: "1.0".into(), abi: "cp311".into(), platform: String::new(), uploader: None });
        Expect { package: "foo".into(), file: Box::new(file), expectation, must_send: false, compare_with: None }
    }

    #[test]
    fn a_transfer_is_a_record_and_a_partial_file_that_resumes_with_its_hash() {
        let dir = tempfile::tempdir().unwrap();
        let staging = Staging::new(dir.path());
        let (id, mut part) = staging.create(expect(), |_| false).unwrap();
        assert_eq!(names(dir.path()), [format!("{id}.expect"), format!("{id}.part")]);
        part.write(0, b"the wh").unwrap();
        let before = part.digest();
        drop(part);
        let record = staging.read_record(id).unwrap();
        assert_eq!(record.file.filename, "foo-1.0-py3-none-any.whl");
        let (mut part, len) = staging.resume_part(id, record.file.size).unwrap();
        assert_eq!((len, part.digest()), (6, before), "the prefix is hashed again at resumption");
        part.write(6, b"eel's bytes").unwrap();
        assert_eq!(part.digest(), record.file.sha256);
        let found = staging.scan().unwrap();
        assert_eq!((found.records, found.parts), (vec![id], vec![id]));
        staging.remove(id);
        assert!(names(dir.path()).is_empty());
    }

    #[test]
    fn a_partial_file_longer_than_its_file_starts_again() {
        let dir = tempfile::tempdir().unwrap();
        let staging = Staging::new(dir.path());
        fs::write(staging.part_path(9), b"far too many bytes").unwrap();
        let (part, len) = staging.resume_part(9, 4).unwrap();
        assert_eq!((len, part.len().unwrap()), (0, 0));
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
