//! File transfer end to end: the file juggler task on real sockets (tcp on 127.0.0.1 for the
//! file socket, inproc for file-system requests), the shared uploader, scripted hostile
//! uploaders, temporary directories. Every wait is bounded.

mod support;

use piwheels_testsupport::data::{random_bytes, wheel_bytes, wheel_file, wheel_with_metadata};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use piwheels_common::clock::{FakeClock, SharedClock, SystemClock};
use piwheels_common::protocols::{ErrorKind, FileReply, FileRequest, StatusEvent, TaskControl, TransferId, Versions, WheelFile, WireError};
use piwheels_master::calls::files::{Abandon, Expect, Expected, FileExpectation, FsReply, FsRequest, Verification, Verify};
use piwheels_common::task::{self, Runtime, TaskExit, TaskHandle};
use piwheels_common::transport::{Client, Dealer, Receiver};
use piwheels_common::upload::{UploadError, UploadOptions, UploadReport, upload};
use piwheels_common::{PROTOCOL_VERSION, SOFTWARE_VERSION};
use piwheels_master::file_juggler::{FileJuggler, JugglerConfig, Sockets};
use piwheels_master::wiring;
use sha2::{Digest, Sha256};
use tempfile::TempDir;
use piwheels_common::transport::Security;

const MB: usize = 1_000_000;
const FS_TIMEOUT: Duration = Duration::from_secs(30);
const WAIT: Duration = Duration::from_secs(10);

/// A file juggler task with its own ZeroMQ context, output tree and staging directory, and a
/// file-system client.
struct Juggler {
    rt: Runtime,
    _status: Receiver<StatusEvent>,
    dir: TempDir,
    config: JugglerConfig,
    /// The file socket's address; "tcp://127.0.0.1:*" until first bound.
    endpoint: String,
    handle: Option<TaskHandle>,
    fs: Option<Client<FsRequest, FsReply>>,
    starts: u32,
}

impl Juggler {
    fn new(tweak: impl FnOnce(&mut JugglerConfig)) -> Juggler {
        Self::with_clock(Arc::new(SystemClock), Duration::from_millis(50), tweak)
    }

    fn with_clock(clock: SharedClock, poll_cap: Duration, tweak: impl FnOnce(&mut JugglerConfig)) -> Juggler {
        let zmq = zmq::Context::new();
        let status = Receiver::pull(&zmq, "inproc://status", None).unwrap();
        let rt = Runtime { poll_cap, ..Runtime::new(zmq, clock, "inproc://status") };
        let dir = tempfile::tempdir().unwrap();
        let mut config = JugglerConfig::new(dir.path().join("output"), dir.path().join("staging"));
        tweak(&mut config);
        let mut j = Juggler {
            rt,
            _status: status,
            dir,
            config,
            endpoint: "tcp://127.0.0.1:*".into(),
            handle: None,
            fs: None,
            starts: 0,
        };
        j.start();
        j
    }

    /// Starts the task (again) on the same endpoint and staging directory.
    fn start(&mut self) {
        // A socket just closed may hold its address for a moment.
        let deadline = Instant::now() + WAIT;
        let sockets = loop {
            match Sockets::open(&self.rt.zmq, &self.endpoint, &self.config) {
                Ok(sockets) => break sockets,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("bind retry: {e:#}");
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("cannot bind the juggler: {e:#}"),
            }
        };
        self.endpoint = sockets.file_endpoint();
        let (config, clock) = (self.config.clone(), self.rt.clock.clone());
        let name = format!("file_juggler_{}", self.starts);
        self.starts += 1;
        let handle = task::spawn::<FileJuggler, _, _>(&self.rt, &name, move |_| Ok(sockets), move |_| FileJuggler::start(&config, &clock))
            .unwrap();
        self.handle = Some(handle);
        // inproc never reconnects to a re-bound socket: a new task needs a new client.
        self.fs = Some(Client::connect(&self.rt.zmq, wiring::FS.address(), None).unwrap());
    }

    fn stop(&mut self) {
        self.fs = None;
        if let Some(mut handle) = self.handle.take() {
            handle.control(TaskControl::Quit).unwrap();
            assert_eq!(handle.join(WAIT), Some(TaskExit::Quit));
        }
    }

    fn errors(&self) -> u64 {
        self.handle.as_ref().map_or(0, TaskHandle::errors)
    }

    fn request(&self, req: impl Into<FsRequest>) -> FsReply {
        self.fs.as_ref().unwrap().request(&req.into(), FS_TIMEOUT).unwrap()
    }

    /// Expects `file` as a file of a cp311 build of the version its name gives.
    fn expect(&self, package: &str, file: &WheelFile) -> FsReply {
        self.expect_as(package, file, expectation(file))
    }

    fn expect_as(&self, package: &str, file: &WheelFile, expectation: FileExpectation) -> FsReply {
        self.request(Expect { package: package.into(), file: Box::new(file.clone()), expectation: Box::new(expectation), must_send: false, compare_with: None })
    }

    fn expecting(&self, package: &str, file: &WheelFile) -> TransferId {
        match self.expect(package, file) {
            FsReply::Expect(Expected::Expecting { transfer }) => transfer,
            other => panic!("expect {}: {other:?}", file.filename),
        }
    }

    fn verify(&self, transfer: TransferId) -> FsReply {
        self.request(Verify { transfer })
    }

    fn upload(&self, transfer: TransferId, path: &Path, options: UploadOptions) -> Result<UploadReport, UploadError> {
        upload(&self.rt.zmq, &self.endpoint, &Security::Plain, transfer, path, options)
    }

    fn output(&self) -> PathBuf {
        self.config.output_path.clone()
    }

    fn published(&self, package: &str, filename: &str) -> PathBuf {
        self.output().join("simple").join(package).join(filename)
    }

    fn staging_files(&self) -> Vec<String> {
        piwheels_testsupport::data::dir_names(&self.config.staging_dir)
    }

    fn part(&self, transfer: TransferId) -> PathBuf {
        self.config.staging_dir.join(format!("{transfer}.part"))
    }

    /// A scripted uploader: a bare DEALER on the file socket.
    fn dealer(&self) -> Dealer<FileRequest, FileReply> {
        Dealer::connect(&self.rt.zmq, &self.endpoint, None).unwrap()
    }

    /// Makes a wheel of `size` pseudo-random bytes in the source directory.
    fn wheel(&self, package: &str, version: &str, size: usize, seed: u64) -> (PathBuf, WheelFile) {
        let src = self.dir.path().join("src");
        fs::create_dir_all(&src).unwrap();
        let filename = format!("{}-{version}-py3-none-any.whl", package.replace('-', "_"));
        let path = src.join(format!("{seed}-{filename}"));
        let bytes = wheel_bytes(&filename, &random_bytes(size, seed));
        fs::write(&path, &bytes).unwrap();
        let file = wheel_file(&filename, &bytes);
        (path, file)
    }

    /// Expects, uploads and verifies a file, checking it was published intact.
    fn transfer_and_verify(&self, package: &str, path: &Path, file: &WheelFile) -> UploadReport {
        let transfer = self.expecting(package, file);
        let report = self.upload(transfer, path, fast()).unwrap();
        verified(self.verify(transfer));
        self.assert_published(package, file);
        report
    }

    fn assert_published(&self, package: &str, file: &WheelFile) {
        let published = self.published(package, &file.filename);
        assert_eq!(sha256(&fs::read(&published).unwrap()), file.sha256, "{} differs", published.display());
        let metadata = fs::read(self.published(package, &format!("{}.metadata", file.filename))).unwrap();
        assert_eq!(metadata, file.metadata.as_slice());
    }
}

impl Drop for Juggler {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            self.stop();
        }
    }
}

/// Upload options for tests: quick nudges, bounded in all.
fn fast() -> UploadOptions {
    UploadOptions { nudge_after: Duration::from_millis(500), overall_timeout: Duration::from_secs(120), stop_after_bytes: None }
}


fn sha256(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// Every file under `dir`, recursively, relative to it.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else { continue };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                out.push(path.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

fn next_reply(dealer: &Dealer<FileRequest, FileReply>) -> FileReply {
    dealer.recv_timeout(WAIT).unwrap().expect("no reply from the juggler")
}

fn refusal(dealer: &Dealer<FileRequest, FileReply>) -> String {
    // Fetches sent before the refusal may come first.
    loop {
        match next_reply(dealer) {
            FileReply::Error(WireError { message: reason, .. }) => return reason,
            FileReply::Fetch { .. } => continue,
            FileReply::Done => panic!("expected a refusal, got Done"),
        }
    }
}

fn hello(transfer: TransferId) -> FileRequest {
    FileRequest::Hello { versions: Versions::current(), transfer }
}

fn chunk(offset: u64, data: Vec<u8>) -> FileRequest {
    FileRequest::Chunk { offset, data: data.into() }
}

/// The expectation of a cp311 build of the version `file`'s name gives, from any sender.
fn expectation(file: &WheelFile) -> FileExpectation {
    let version = file.filename.split('-').nth(1).unwrap_or("1.0").to_string();
    FileExpectation { version, abi: "cp311".into(), platform: "linux_armv7l".into(), uploader: None }
}

fn failed(reply: FsReply) -> String {
    match reply {
        FsReply::Verify(Verification::Failed { reason }) => reason,
        other => panic!("expected Failed, got {other:?}"),
    }
}

fn refused(reply: FsReply) -> String {
    match reply {
        FsReply::Expect(Expected::Refused { reason }) | FsReply::Verify(Verification::Refused { reason }) => reason,
        other => panic!("expected Refused, got {other:?}"),
    }
}

fn conflict(reply: FsReply) -> String {
    match reply {
        FsReply::Expect(Expected::Conflict { reason }) | FsReply::Verify(Verification::Conflict { reason }) => reason,
        other => panic!("expected Conflict, got {other:?}"),
    }
}

/// The master's description of a verified file.
fn verified(reply: FsReply) -> WheelFile {
    match reply {
        FsReply::Verify(Verification::Verified { file }) => *file,
        other => panic!("expected Verified, got {other:?}"),
    }
}

#[test]
fn a_100_mb_file_arrives_byte_identical_with_its_metadata_and_staging_is_left_clean() {
    let j = Juggler::new(|_| {});
    let (path, file) = j.wheel("big", "1.0", 100 * MB, 1);
    let report = j.transfer_and_verify("big", &path, &file);
    assert_eq!(report.bytes_sent, file.size);
    assert_eq!(j.staging_files(), Vec::<String>::new());
    assert_eq!(tree(&j.output()), ["simple/big/big-1.0-py3-none-any.whl", "simple/big/big-1.0-py3-none-any.whl.metadata"]);
    assert_eq!(j.errors(), 0);
}

#[test]
fn a_hash_mismatch_is_rolled_back_and_a_second_upload_with_the_right_hash_succeeds() {
    let j = Juggler::new(|_| {});
    let (path, file) = j.wheel("foo", "1.0", 3 * MB + 17, 2);
    let wrong = WheelFile { sha256: "0".repeat(64), ..file.clone() };
    let transfer = j.expecting("foo", &wrong);
    j.upload(transfer, &path, fast()).unwrap();
    let reason = failed(j.verify(transfer));
    assert!(reason.contains(&file.sha256) && reason.contains(&wrong.sha256), "both hashes named: {reason}");
    assert_eq!(tree(&j.output().join("simple")), Vec::<String>::new(), "nothing published");
    assert_eq!(j.staging_files(), Vec::<String>::new(), "staging rolled back");
    assert!(failed(j.verify(transfer)).contains("unknown transfer"), "the transfer is forgotten");

    let report = j.transfer_and_verify("foo", &path, &file);
    assert_eq!(report.bytes_sent, file.size);
    assert_eq!(j.staging_files(), Vec::<String>::new());
}

#[test]
fn hostile_announcements_are_refused_and_the_juggler_still_serves() {
    let j = Juggler::new(|c| c.max_file_size = 10 * MB as u64);
    let (path, good) = j.wheel("foo", "1.0", 100_000, 3);
    let named = |name: &str| WheelFile { filename: name.into(), ..good.clone() };
    let cases: Vec<(&str, WheelFile, &str)> = vec![
        ("foo", named("../foo-1.0-py3-none-any.whl"), "separator"),
        ("foo", named("../x-1.0-py3-none-any.whl"), "separator"),
        ("foo", named("..foo-1.0-py3-none-any.whl"), "`..`"),
        ("foo", named("foo-1.0-py3-none-any.whl/"), "separator"),
        ("foo", named("sub/foo-1.0-py3-none-any.whl"), "separator"),
        ("foo", named("foo-1.0-py3-none-any.whl\0.txt"), "control character"),
        ("foo", named("foo-1.0-py3-none-any.zip"), ".whl"),
        ("foo", named("bar-1.0-py3-none-any.whl"), "not a file of package foo"),
        ("foo", named("foo-1.0-1234567890-py3-none-any.whl"), "a number of more than 9 digits"),
        // 243 bytes: its .metadata file would fit, its provenance statement (13 more) not.
        ("foo", named(&format!("foo-1.0-1{}-py3-none-any.whl", "a".repeat(218))), "too long to publish its side files"),
        ("../foo", good.clone(), "not a canonical package name"),
        ("Foo", good.clone(), "not a canonical package name"),
        ("foo/bar", good.clone(), "not a canonical package name"),
        ("foo", WheelFile { size: 10 * MB as u64 + 1, ..good.clone() }, "more than the 10000000 bytes"),
        ("foo", WheelFile { sha256: good.sha256.to_uppercase(), ..good.clone() }, "not a SHA-256"),
        ("foo", WheelFile { sha256: "abc".into(), ..good.clone() }, "not a SHA-256"),
    ];
    for (package, file, why) in cases {
        let reason = refused(j.expect(package, &file));
        assert!(reason.contains(why), "{package} {:?}: {reason}", file.filename);
    }
    assert_eq!(j.staging_files(), Vec::<String>::new(), "no transfer was created");

    // A published name claimed by other bytes.
    j.transfer_and_verify("foo", &path, &good);
    let (_, other) = j.wheel("foo", "1.0", 100_000, 4);
    let reason = conflict(j.expect("foo", &other));
    assert!(reason.contains("foo-1.0-py3-none-any.whl") && reason.contains("never overwritten"), "{reason}");
    assert_eq!(j.expect("foo", &good), FsReply::Expect(Expected::AlreadyHave { file: Box::new(good.clone()) }), "the same bytes are already had");
    j.assert_published("foo", &good);
    // A builder's file is received all the same, compared with the published one and
    // described from it; nothing is published again.
    use std::os::unix::fs::MetadataExt;
    let inode = std::fs::metadata(j.published("foo", &good.filename)).unwrap().ino();
    let must_send = Expect { package: "foo".into(), file: Box::new(good.clone()), expectation: Box::new(expectation(&good)), must_send: true, compare_with: None };
    let FsReply::Expect(Expected::Expecting { transfer }) = j.request(must_send) else { panic!("a builder's file must be sent") };
    j.upload(transfer, &path, UploadOptions::default()).unwrap();
    assert_eq!(j.verify(transfer), FsReply::Verify(Verification::Verified { file: Box::new(good.clone()) }));
    assert_eq!(std::fs::metadata(j.published("foo", &good.filename)).unwrap().ino(), inode, "the published file stays as it was");
    assert_eq!(j.staging_files(), Vec::<String>::new());
    // Another key's unfinished transfer of a builder's file is not taken over: each builder
    // sends its own bytes.
    let from = |key: &str| {
        let expectation = FileExpectation { uploader: Some(key.into()), ..expectation(&good) };
        match j.request(Expect { package: "foo".into(), file: Box::new(good.clone()), expectation: Box::new(expectation), must_send: true, compare_with: None }) {
            FsReply::Expect(Expected::Expecting { transfer }) => transfer,
            other => panic!("{other:?}"),
        }
    };
    let (a, b) = (from("key-a"), from("key-b"));
    assert_ne!(a, b);
    assert_eq!(from("key-a"), a, "the same key resumes its own transfer");
    for transfer in [a, b] {
        assert_eq!(j.request(Abandon { transfer }), FsReply::Abandon(()));
    }

    let (path, next) = j.wheel("foo", "1.1", 500_000, 5);
    j.transfer_and_verify("foo", &path, &next);
    assert_eq!(j.errors(), 0);
}

#[test]
fn hostile_uploaders_are_refused_and_the_juggler_still_serves() {
    let j = Juggler::new(|c| c.chunk_size = 64 << 10);
    let (path, file) = j.wheel("foo", "1.0", 200_000, 6);
    let transfer = j.expecting("foo", &file);

    let d = j.dealer();
    d.send(&hello(transfer ^ 0x5555), WAIT).unwrap();
    assert_eq!(refusal(&d), format!("unknown transfer {}", transfer ^ 0x5555));

    let d = j.dealer();
    d.send(&chunk(0, vec![0; 10]), WAIT).unwrap();
    assert!(refusal(&d).contains("say Hello first"));

    // Each misbehaviour on a connection that said hello properly.
    let past_the_end = format!("runs past the end of the {}-byte file", file.size);
    let cases: [(u64, usize, &str); 4] = [
        (file.size - 1000, 2_000, &past_the_end),
        (0, (64 << 10) + 1, "larger than the 65536 bytes asked for"),
        (0, 100, "smaller than the 65536 bytes asked for"),
        (1000, 1000, "never asked for"),
    ];
    for (offset, len, why) in cases {
        let d = j.dealer();
        d.send(&hello(transfer), WAIT).unwrap();
        assert_eq!(next_reply(&d), FileReply::Fetch { offset: 0, length: 64 << 10 });
        d.send(&chunk(offset, vec![0; len]), WAIT).unwrap();
        let reason = refusal(&d);
        assert!(reason.contains(why), "{offset}+{len}: {reason}");
        // The refused connection is no longer bound to the transfer.
        d.send(&chunk(0, vec![0; 64 << 10]), WAIT).unwrap();
        assert!(refusal(&d).contains("say Hello first"));
    }

    // Garbage on the file socket.
    let raw = j.rt.zmq.socket(zmq::DEALER).unwrap();
    raw.connect(&j.endpoint).unwrap();
    raw.send_multipart([&b""[..], b"not a message"], 0).unwrap();
    assert!(raw.poll(zmq::POLLIN, 10_000).unwrap() > 0, "garbage answered");
    let frames = raw.recv_multipart(0).unwrap();
    let reply: FileReply = piwheels_common::codec::decode(&frames[1]).unwrap();
    assert!(matches!(reply, FileReply::Error(WireError { message: ref reason, .. }) if reason.contains("bad message")), "{reply:?}");

    // A real uploader still gets the file through, on the same transfer.
    let report = j.upload(transfer, &path, fast()).unwrap();
    assert_eq!(report.bytes_sent, file.size);
    verified(j.verify(transfer));
    j.assert_published("foo", &file);
    assert_eq!(j.errors(), 0, "bad input is not a handler error");
}

#[test]
fn a_killed_sender_resumes_and_sends_only_the_missing_bytes() {
    let j = Juggler::new(|_| {});
    let (path, file) = j.wheel("foo", "2.0", 20 * MB, 7);
    let transfer = j.expecting("foo", &file);
    let stop = UploadOptions { stop_after_bytes: Some(8 * MB as u64), ..fast() };
    let sent = match j.upload(transfer, &path, stop) {
        Err(UploadError::Stopped { bytes_sent }) => bytes_sent,
        other => panic!("{other:?}"),
    };
    assert!(sent >= 8 * MB as u64 && sent < file.size, "{sent}");
    // The chunks the dead sender had sent all arrive; then a new sender starts.
    eventually("the first sender's bytes written", || file_len(&j.part(transfer)) == sent);

    // The slave is told to send the file again: the same transfer resumes. (No nudges here:
    // a nudge re-asks for chunks in flight, which would make the count inexact.)
    assert_eq!(j.expecting("foo", &file), transfer);
    let report = j.upload(transfer, &path, UploadOptions { nudge_after: Duration::from_secs(5), ..fast() }).unwrap();
    assert_eq!(report.bytes_sent, file.size - sent, "only the missing bytes are sent again");
    verified(j.verify(transfer));
    j.assert_published("foo", &file);
    assert_eq!(j.staging_files(), Vec::<String>::new());
}

#[test]
fn a_restarted_juggler_resumes_the_transfer_and_publishes_nothing_half_written() {
    let mut j = Juggler::new(|_| {});
    let (path, file) = j.wheel("foo", "3.0", 20 * MB + 123, 8);
    let transfer = j.expecting("foo", &file);
    let stop = UploadOptions { stop_after_bytes: Some(5 * MB as u64), ..fast() };
    let Err(UploadError::Stopped { bytes_sent: sent }) = j.upload(transfer, &path, stop) else { panic!("not stopped") };
    eventually("the first sender's bytes written", || file_len(&j.part(transfer)) == sent);

    j.stop();
    assert_eq!(tree(&j.output()), Vec::<String>::new(), "nothing under output/ before verification");
    assert_eq!(j.staging_files(), [format!("{transfer}.expect"), format!("{transfer}.part")]);

    // An uploader starts while the juggler is down and nudges (on new connections) until it
    // is back.
    let (ctx, endpoint, upload_path) = (j.rt.zmq.clone(), j.endpoint.clone(), path.clone());
    let uploader = std::thread::spawn(move || {
        upload(&ctx, &endpoint, &Security::Plain, transfer, &upload_path, UploadOptions { nudge_after: Duration::from_secs(1), ..fast() })
    });
    std::thread::sleep(Duration::from_millis(1500));
    j.start();
    let report = uploader.join().unwrap().unwrap();
    assert_eq!(report.bytes_sent, file.size - sent, "the restarted juggler resumes after the bytes it had");
    assert!(report.hellos >= 2, "the uploader had to nudge: {report:?}");
    assert_eq!(tree(&j.output()), Vec::<String>::new(), "complete but unverified: still nothing published");
    verified(j.verify(transfer));
    j.assert_published("foo", &file);
    assert_eq!(j.staging_files(), Vec::<String>::new());
}

#[test]
fn sixteen_concurrent_transfers_all_complete_and_verify() {
    let j = Juggler::new(|_| {});
    let files: Vec<(PathBuf, WheelFile, TransferId)> = (0..16)
        .map(|n| {
            let (path, file) = j.wheel(&format!("pkg{n}"), "1.0", 2 * MB + n * 1000, 100 + n as u64);
            let transfer = j.expecting(&format!("pkg{n}"), &file);
            (path, file, transfer)
        })
        .collect();
    let uploaders: Vec<_> = files
        .iter()
        .map(|(path, _, transfer)| {
            let (ctx, endpoint, path, transfer) = (j.rt.zmq.clone(), j.endpoint.clone(), path.clone(), *transfer);
            let options = UploadOptions { nudge_after: Duration::from_secs(5), ..fast() };
            std::thread::spawn(move || upload(&ctx, &endpoint, &Security::Plain, transfer, &path, options))
        })
        .collect();
    for (uploader, (_, file, _)) in uploaders.into_iter().zip(&files) {
        // A nudge (a slow juggler) may make an uploader send a chunk twice, never less.
        assert!(uploader.join().unwrap().unwrap().bytes_sent >= file.size);
    }
    for (n, (_, file, transfer)) in files.iter().enumerate() {
        verified(j.verify(*transfer));
        j.assert_published(&format!("pkg{n}"), file);
    }
    assert_eq!(j.staging_files(), Vec::<String>::new());
}

#[test]
fn an_uploader_with_other_versions_is_refused_naming_both() {
    let j = Juggler::new(|_| {});
    let (_, file) = j.wheel("foo", "1.0", 1000, 9);
    let transfer = j.expecting("foo", &file);
    let d = j.dealer();
    let theirs = Versions { protocol: PROTOCOL_VERSION + 41, software: "9.9.9-other".into() };
    d.send(&FileRequest::Hello { versions: theirs, transfer }, WAIT).unwrap();
    let reason = refusal(&d);
    for part in [PROTOCOL_VERSION.to_string(), SOFTWARE_VERSION.to_string(), (PROTOCOL_VERSION + 41).to_string(), "9.9.9-other".into()]
    {
        assert!(reason.contains(&part), "{part} not named in {reason}");
    }
}

#[test]
fn a_file_expected_again_reuses_its_transfer_and_abandon_removes_it() {
    let j = Juggler::new(|_| {});
    let (path, file) = j.wheel("foo", "1.0", 1_000_000, 10);
    let transfer = j.expecting("foo", &file);
    assert_eq!(j.expecting("foo", &file), transfer);
    let (_, rebuilt) = j.wheel("foo", "1.0", 1_000_000, 11);
    let other = j.expecting("foo", &rebuilt);
    assert_ne!(other, transfer, "other bytes under the same name are another transfer");
    let reason = failed(j.verify(transfer));
    assert!(reason.contains(&format!("transfer incomplete: 0 of {} bytes", file.size)), "{reason}");

    assert_eq!(j.request(Abandon { transfer: other }), FsReply::Abandon(()));
    assert_eq!(j.request(Abandon { transfer: other }), FsReply::Abandon(()), "abandoning twice is harmless");
    assert_eq!(j.staging_files(), [format!("{transfer}.expect"), format!("{transfer}.part")]);
    let d = j.dealer();
    d.send(&hello(other), WAIT).unwrap();
    assert_eq!(refusal(&d), format!("unknown transfer {other}"));

    j.transfer_and_verify("foo", &path, &file);
}

/// A disk that fills while a file arrives is the master's failure, not the file's: the
/// uploader is told so (`Unavailable`), which piw-import turns into "try again later".
#[test]
fn a_disk_that_fills_during_a_transfer_is_the_masters_failure() {
    let disk = tempfile::tempdir().unwrap();
    let Some(_mount) = support::farm::Mount::tmpfs(disk.path(), "4m") else {
        eprintln!("skipped: mounting a tmpfs needs root (CI runs as root)");
        return;
    };
    let j = Juggler::new(|c| {
        c.output_path = disk.path().join("output");
        c.staging_dir = disk.path().join("staging");
    });
    let (path, file) = j.wheel("foo", "1.0", 1_000_000, 21);
    // Room when the file is expected, none when its bytes arrive.
    let transfer = j.expecting("foo", &file);
    let mut filler = fs::File::create(disk.path().join("filler")).unwrap();
    while std::io::Write::write_all(&mut filler, &[0; 64 * 1024]).is_ok() {}
    match j.upload(transfer, &path, fast()) {
        Err(UploadError::Refused { reason, kind, .. }) => {
            assert_eq!(kind, ErrorKind::Unavailable, "{reason}");
            assert!(reason.contains("cannot store"), "{reason}");
        }
        other => panic!("expected the master's failure, got {other:?}"),
    }
}

#[test]
fn a_second_transfer_of_a_published_name_with_other_bytes_fails_at_verification() {
    let j = Juggler::new(|_| {});
    let (path_a, a) = j.wheel("foo", "1.0", 300_000, 12);
    let (path_b, b) = j.wheel("foo", "1.0", 300_000, 13);
    let (ta, tb) = (j.expecting("foo", &a), j.expecting("foo", &b));
    j.upload(ta, &path_a, fast()).unwrap();
    j.upload(tb, &path_b, fast()).unwrap();
    verified(j.verify(ta));
    let reason = conflict(j.verify(tb));
    assert!(reason.contains("never overwritten"), "{reason}");
    j.assert_published("foo", &a);
    assert_eq!(j.staging_files(), Vec::<String>::new());
}

#[test]
fn abandoned_transfers_are_reaped_after_abandon_after() {
    let clock = FakeClock::new(chrono::DateTime::from_timestamp(1_750_000_000, 0).unwrap());
    let j = Juggler::with_clock(Arc::new(clock.clone()), Duration::from_millis(5), |_| {});
    let (path, file) = j.wheel("foo", "1.0", 3 * MB, 14);
    let transfer = j.expecting("foo", &file);
    let stop = UploadOptions { stop_after_bytes: Some(MB as u64), ..fast() };
    let Err(UploadError::Stopped { bytes_sent }) = j.upload(transfer, &path, stop) else { panic!("not stopped") };
    eventually("bytes written", || file_len(&j.part(transfer)) == bytes_sent);

    clock.advance(JugglerConfig::DEFAULT_ABANDON_AFTER - Duration::from_secs(60));
    // Two requests answered one after the other: the juggler's loop went round, due timers
    // first, since the clock moved.
    for _ in 0..2 {
        assert!(failed(j.verify(0)).contains("unknown transfer"));
    }
    assert_eq!(j.staging_files().len(), 2, "not abandoned yet");
    clock.advance(Duration::from_secs(120));
    eventually("the abandoned transfer removed", || j.staging_files().is_empty());
    assert!(failed(j.verify(transfer)).contains("unknown transfer"));
}

#[test]
fn staging_inside_the_output_tree_or_on_another_file_system_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let inside = JugglerConfig::new(dir.path().join("out"), dir.path().join("out/staging"));
    let err = inside.check().unwrap_err().to_string();
    assert!(err.contains("inside the output directory"), "{err}");

    // /dev/shm is a tmpfs on Linux, so another file system than the temporary directory.
    let shm = Path::new("/dev/shm");
    let other = tempfile::tempdir_in(shm);
    match other {
        Ok(other) if fs::metadata(shm).is_ok() => {
            let split = JugglerConfig::new(dir.path().join("out2"), other.path().join("staging"));
            let err = split.check().unwrap_err().to_string();
            assert!(err.contains("different file systems"), "{err}");
        }
        _ => eprintln!("no /dev/shm: the different-file-system case is not checked here"),
    }
}

#[test]
fn files_in_staging_without_a_record_are_removed_at_start_and_others_left_alone() {
    let mut j = Juggler::new(|_| {});
    j.stop();
    let staging = j.config.staging_dir.clone();
    fs::write(staging.join("123.part"), b"orphan").unwrap();
    fs::write(staging.join("456.expect.tmp"), b"half a record").unwrap();
    fs::write(staging.join("789.expect"), b"garbage record").unwrap();
    fs::write(staging.join("piw-master.pid"), b"42").unwrap();
    j.start();
    let (path, file) = j.wheel("foo", "1.0", 1000, 15);
    j.transfer_and_verify("foo", &path, &file);
    assert_eq!(j.staging_files(), ["piw-master.pid"]);
}

/// A wheel is what its build says only when its name and its METADATA say so: another
/// version, ABI or platform is refused before a byte is sent; METADATA naming another project
/// or version is refused at verification and rolled back; and the published `.metadata` and
/// the description the master answers with are the wheel's own, whatever the sender claimed.
#[test]
fn a_wheel_must_be_of_its_build_and_its_metadata_is_read_from_the_wheel() {
    let j = Juggler::new(|_| {});
    let src = j.dir.path().join("src");
    fs::create_dir_all(&src).unwrap();
    let make = |filename: &str, metadata: Option<&str>| {
        let bytes = match metadata {
            Some(metadata) => wheel_with_metadata(filename, metadata, b"payload"),
            None => wheel_bytes(filename, b"payload"),
        };
        let path = src.join(filename);
        fs::write(&path, &bytes).unwrap();
        (path, wheel_file(filename, &bytes))
    };
    let build = FileExpectation { version: "2.2.3".into(), abi: "cp311".into(), platform: "linux_armv7l".into(), uploader: None };
    for (filename, why) in [
        ("urllib3-99.0-py3-none-any.whl", "is version 99.0, not 2.2.3"),
        ("urllib3-2.2.3-cp39-cp39-linux_armv7l.whl", "ABI tag cp39"),
        ("urllib3-2.2.3-cp311-cp311-linux_x86_64.whl", "platform tag linux_x86_64"),
        ("urllib3-2.2.3-cp311-cp311-manylinux_2_17_aarch64.whl", "platform tag manylinux_2_17_aarch64"),
    ] {
        let (_, file) = make(filename, None);
        let reason = refused(j.expect_as("urllib3", &file, build.clone()));
        assert!(reason.contains(why), "{filename}: {reason}");
    }
    for filename in ["urllib3-2.2.3.0-py3-none-any.whl", "urllib3-2.2.3-cp311-abi3-manylinux_2_31_armv7l.whl", "urllib3-2.2.3-cp311-cp311-linux_armv7l.whl"] {
        let (_, file) = make(filename, None);
        assert!(matches!(j.expect_as("urllib3", &file, build.clone()), FsReply::Expect(Expected::Expecting { .. })), "{filename}");
    }

    // METADATA naming another version or project: refused once the bytes are in.
    for (metadata, why) in [
        ("Metadata-Version: 2.1\nName: urllib3\nVersion: 99.0\n", "names version Some(\"99.0\")"),
        ("Metadata-Version: 2.1\nName: requests\nVersion: 2.2.3\n", "names project Some(\"requests\")"),
    ] {
        let (path, file) = make("urllib3-2.2.3-py3-none-any.whl", Some(metadata));
        let transfer = match j.expect_as("urllib3", &file, build.clone()) {
            FsReply::Expect(Expected::Expecting { transfer }) => transfer,
            other => panic!("{other:?}"),
        };
        j.upload(transfer, &path, fast()).unwrap();
        let reason = refused(j.verify(transfer));
        assert!(reason.contains(why), "{reason}");
        assert!(!j.published("urllib3", &file.filename).exists(), "nothing published");
    }

    // The sender's METADATA and dependencies are not believed.
    let genuine = "Metadata-Version: 2.1\nName: urllib3\nVersion: 2.2.3\nRequires-Dist: brotli\n";
    let (path, mut file) = make("urllib3-2.2.3-py3-none-any.whl", Some(genuine));
    file.metadata = b"Metadata-Version: 2.1\nName: urllib3\nVersion: 2.2.3\nRequires-Dist: evil-package\n".to_vec().into();
    file.dependencies.pip = vec!["evil-package".into()];
    file.requires_python = Some(">=2.0".into());
    let transfer = match j.expect_as("urllib3", &file, build.clone()) {
        FsReply::Expect(Expected::Expecting { transfer }) => transfer,
        other => panic!("{other:?}"),
    };
    j.upload(transfer, &path, fast()).unwrap();
    let described = verified(j.verify(transfer));
    assert_eq!(described.metadata, genuine.as_bytes());
    assert_eq!((described.dependencies.pip, described.requires_python), (vec!["brotli".to_string()], None));
    let published = fs::read(j.published("urllib3", "urllib3-2.2.3-py3-none-any.whl.metadata")).unwrap();
    assert_eq!(published, genuine.as_bytes(), "the .metadata file is the wheel's own");
    assert_eq!(j.errors(), 0);
}
