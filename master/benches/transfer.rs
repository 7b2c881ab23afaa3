//! File transfer throughput, printing a table (run with `cargo bench -p piwheels-master
//! --bench transfer`):
//!
//! 1. raw TCP on loopback: `BENCH_MB` (default 100) MB written in 256 KiB writes to a reader
//!    thread, the ceiling the transfer is compared with;
//! 2. SHA-256 of the same bytes in memory, the one computation every received byte needs, and
//!    the same bytes from a bare ZeroMQ DEALER to a ROUTER, plain and with CurveZMQ: what
//!    libzmq and its cipher allow before any of our code runs;
//! 3. one transfer of that size through the file juggler task and the shared uploader over tcp
//!    loopback (in one process, as the tests run them), from hello to `Done`, and again up to
//!    `Verified` (fsync, `.metadata`, link into place);
//! 4. 16 transfers at once, each `BENCH_MB / 16` MB from its own uploader thread: aggregate;
//! 5. `BENCH_WHEELS` (default 100) small wheels of `BENCH_WHEEL_KB` KB (default 20), new
//!    versions of one package sent one after another, each expected, uploaded and verified:
//!    the time and the file juggler's CPU per wheel (what publishing costs the master).
//!
//! Parts 3 to 5 run twice, on plain sockets and on CurveZMQ ones (the uploader with an
//! authorized key, the master's gatekeeper answering the handshake, as in a real farm), to
//! show what authentication costs.
//!
//! `BENCH_ONLY=wheels` runs the last part alone, e.g. under `strace -f` to count the juggler's
//! system calls per wheel.
//!
//! Every figure is the best of `BENCH_RUNS` runs (default 3). The uploaders use their own
//! ZeroMQ context (so their own I/O thread), as a separate process would. `BENCH_CHUNK_KIB`
//! and `BENCH_WINDOW` override the juggler's chunk size and window.

use piwheels_testsupport::data::{random_bytes, wheel_bytes, wheel_file};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use piwheels_common::clock::SystemClock;
use piwheels_common::protocols::{StatusEvent, TaskControl, TransferId};
use piwheels_master::calls::files::{Expect, Expected, FileExpectation, FsReply, FsRequest, Verification, Verify};
use piwheels_common::task::{self, Runtime, TaskHandle};
use piwheels_common::transport::{Client, Receiver};
use piwheels_common::upload::{UploadOptions, upload};
use piwheels_master::file_juggler::{FileJuggler, JugglerConfig, Sockets};
use sha2::{Digest, Sha256};
use piwheels_common::keys::Role;
use piwheels_common::transport::Security;
use piwheels_master::gatekeeper::{Auth, Gatekeeper};
use piwheels_master::wiring;
use piwheels_testsupport::keys::ClientKey;

const MB: usize = 1_000_000;
const WRITE: usize = 256 << 10;

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Where the output and staging directories go: `BENCH_DIR`, or by default beside the target
/// directory, on the disk the project builds on (not a tmpfs).
fn bench_dir() -> PathBuf {
    std::env::var_os("BENCH_DIR").map_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")), PathBuf::from)
}


fn best(runs: usize, mut f: impl FnMut() -> Duration) -> Duration {
    (0..runs).map(|_| f()).min().unwrap_or_default()
}

/// Sends `bytes` over a loopback TCP connection in 256 KiB writes; the time until the reader
/// has them all.
fn raw_tcp(bytes: &[u8]) -> Duration {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let expected = bytes.len();
    let reader = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; WRITE];
        let mut got = 0;
        while got < expected {
            match stream.read(&mut buf).unwrap() {
                0 => break,
                n => got += n,
            }
        }
        (got, Instant::now())
    });
    let start = Instant::now();
    let mut stream = TcpStream::connect(addr).unwrap();
    for chunk in bytes.chunks(WRITE) {
        stream.write_all(chunk).unwrap();
    }
    let (got, end) = reader.join().unwrap();
    assert_eq!(got, expected);
    end - start
}

/// Sends `bytes` in 256 KiB messages from a DEALER to a ROUTER over loopback tcp, each in a
/// context of its own, with or without CurveZMQ (no ZAP handler: only the cipher's cost is
/// measured): the ceiling libzmq itself sets on this machine.
fn raw_zmq(bytes: &[u8], curve: bool) -> Duration {
    let (server_ctx, client_ctx) = (zmq::Context::new(), zmq::Context::new());
    let router = server_ctx.socket(zmq::ROUTER).unwrap();
    let dealer = client_ctx.socket(zmq::DEALER).unwrap();
    if curve {
        let (server, client) = (zmq::CurveKeyPair::new().unwrap(), zmq::CurveKeyPair::new().unwrap());
        router.set_curve_server(true).unwrap();
        router.set_curve_secretkey(&server.secret_key).unwrap();
        dealer.set_curve_serverkey(&server.public_key).unwrap();
        dealer.set_curve_publickey(&client.public_key).unwrap();
        dealer.set_curve_secretkey(&client.secret_key).unwrap();
    }
    router.bind("tcp://127.0.0.1:*").unwrap();
    let endpoint = router.get_last_endpoint().unwrap().unwrap();
    let expected = bytes.len();
    let reader = std::thread::spawn(move || {
        let mut got = 0;
        while got < expected {
            let frames = router.recv_multipart(0).unwrap();
            got += frames.last().map_or(0, Vec::len);
        }
        Instant::now()
    });
    dealer.connect(&endpoint).unwrap();
    let start = Instant::now();
    for chunk in bytes.chunks(WRITE) {
        dealer.send(chunk, 0).unwrap();
    }
    let end = reader.join().unwrap();
    end - start
}

struct Bench {
    _rt: Runtime,
    /// How the uploaders connect: plain, or with an authorized key.
    security: Security,
    /// The ZAP handler, when the file socket is authenticated.
    gatekeeper: Option<TaskHandle>,
    /// The uploaders' context: another process's, in a real farm.
    uploaders: zmq::Context,
    _status: Receiver<StatusEvent>,
    _dir: tempfile::TempDir,
    src: PathBuf,
    endpoint: String,
    handle: TaskHandle,
    fs: Client<FsRequest, FsReply>,
    files: usize,
}

impl Bench {
    /// A file juggler on tcp loopback; with `curve`, its socket authenticated and the
    /// uploaders holding an authorized key.
    fn new(curve: bool) -> Bench {
        let zmq = zmq::Context::new();
        let status = Receiver::pull(&zmq, "inproc://status", None).unwrap();
        let rt = Runtime { poll_cap: Duration::from_millis(100), ..Runtime::new(zmq, Arc::new(SystemClock), "inproc://status") };
        let dir = tempfile::tempdir_in(bench_dir()).unwrap();
        let mut config = JugglerConfig::new(dir.path().join("output"), dir.path().join("staging"));
        let (mut security, mut gatekeeper) = (Security::Plain, None);
        if curve {
            let state = dir.path().join("state");
            let key = ClientKey::authorized(&state, &dir.path().join("uploader.key"), Role::Slave, "bench");
            config.auth = Auth::load(&state).unwrap();
            let ring = config.auth.keyring().cloned().unwrap();
            let zap = Gatekeeper::bind(&rt.zmq).unwrap();
            gatekeeper = Some(task::spawn(&rt, "gatekeeper", move |_| Ok(zap), move |_| Ok(Gatekeeper::new(Arc::clone(&ring)))).unwrap());
            security = key.security();
        }
        config.chunk_size = env_number("BENCH_CHUNK_KIB", 256) as u64 * 1024;
        config.window = env_number("BENCH_WINDOW", config.window);
        let sockets = Sockets::open(&rt.zmq, "tcp://127.0.0.1:*", &config).unwrap();
        let endpoint = sockets.file_endpoint();
        let clock = rt.clock.clone();
        let handle =
            task::spawn::<FileJuggler, _, _>(&rt, "file_juggler", move |_| Ok(sockets), move |_| FileJuggler::start(&config, &clock))
                .unwrap();
        let fs = Client::connect(&rt.zmq, wiring::FS.address(), None).unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        Bench { _rt: rt, security, gatekeeper, uploaders: zmq::Context::new(), _status: status, _dir: dir, src, endpoint, handle, fs, files: 0 }
    }

    /// Writes a new wheel holding `payload` and expects it.
    fn expect(&mut self, payload: &[u8]) -> (PathBuf, TransferId) {
        self.files += 1;
        let package = format!("bench{}", self.files);
        let filename = format!("{package}-1.0-py3-none-any.whl");
        let path = self.src.join(&filename);
        let bytes = wheel_bytes(&filename, payload);
        std::fs::write(&path, &bytes).unwrap();
        let file = wheel_file(&filename, &bytes);
        let request = FsRequest::from(Expect { package, file: Box::new(file), expectation: Box::new(any_build("1.0")), must_send: true, compare_with: None });
        match self.fs.request(&request, Duration::from_secs(60)).unwrap() {
            FsReply::Expect(Expected::Expecting { transfer }) => (path, transfer),
            other => panic!("{other:?}"),
        }
    }

    /// `n` small wheels, versions of one package, each expected, uploaded and verified in
    /// turn: wall time and the juggler thread's CPU, per wheel.
    fn small_wheels(&mut self, n: usize, size: usize) -> (Duration, Duration) {
        let bytes = random_bytes(size, 7);
        let juggler_cpu = || thread_cpu().get("file_juggler").copied().unwrap_or_default();
        let (start, cpu_before) = (Instant::now(), juggler_cpu());
        for _ in 0..n {
            self.files += 1;
            let version = self.files;
            // Other bytes for each wheel, so that none is already had.
            let mut bytes = bytes.clone();
            bytes[..8].copy_from_slice(&(version as u64).to_le_bytes());
            let filename = format!("smallwheel-{version}.0-py3-none-any.whl");
            let path = self.src.join(&filename);
            let bytes = wheel_bytes(&filename, &bytes);
            std::fs::write(&path, &bytes).unwrap();
            let file = wheel_file(&filename, &bytes);
            let expectation = Box::new(any_build(&format!("{version}.0")));
            let request = FsRequest::from(Expect { package: "smallwheel".into(), file: Box::new(file), expectation, must_send: true, compare_with: None });
            let FsReply::Expect(Expected::Expecting { transfer }) = self.fs.request(&request, Duration::from_secs(60)).unwrap() else {
                panic!("not expected")
            };
            upload(&self.uploaders, &self.endpoint, &self.security, transfer, &path, UploadOptions::default()).unwrap();
            self.verify(transfer);
            std::fs::remove_file(path).unwrap();
        }
        let per = |d: Duration| d / n.max(1) as u32;
        (per(start.elapsed()), per(juggler_cpu().saturating_sub(cpu_before)))
    }

    fn stop(self) {
        for mut handle in [Some(self.handle), self.gatekeeper].into_iter().flatten() {
            handle.control(TaskControl::Quit).unwrap();
            handle.join(Duration::from_secs(10));
        }
    }

    fn verify(&self, transfer: TransferId) {
        let reply = self.fs.request(&Verify { transfer }.into(), Duration::from_secs(120)).unwrap();
        assert!(matches!(reply, FsReply::Verify(Verification::Verified { .. })), "{reply:?}");
    }

    /// One transfer, timed.
    fn one(&mut self, bytes: &[u8]) -> OneRun {
        let (path, transfer) = self.expect(bytes);
        let (start, threads_before) = (Instant::now(), thread_cpu());
        let report = upload(&self.uploaders, &self.endpoint, &self.security, transfer, &path, UploadOptions::default()).unwrap();
        let done = start.elapsed();
        let mut threads = thread_cpu();
        for (name, cpu) in &mut threads {
            *cpu = cpu.saturating_sub(threads_before.get(name).copied().unwrap_or_default());
        }
        assert_eq!(report.bytes_sent, std::fs::metadata(&path).unwrap().len());
        self.verify(transfer);
        let verified = start.elapsed();
        std::fs::remove_file(path).unwrap();
        OneRun { done, verified, threads }
    }

    /// `n` transfers at once from `n` threads: wall time until all are `Done`.
    fn concurrent(&mut self, parts: &[Vec<u8>]) -> Duration {
        let jobs: Vec<(PathBuf, TransferId)> = parts.iter().map(|p| self.expect(p)).collect();
        let start = Instant::now();
        let threads: Vec<_> = jobs
            .iter()
            .map(|(path, transfer)| {
                let (ctx, endpoint, path, transfer) = (self.uploaders.clone(), self.endpoint.clone(), path.clone(), *transfer);
                let security = self.security.clone();
                std::thread::spawn(move || upload(&ctx, &endpoint, &security, transfer, &path, UploadOptions::default()).unwrap())
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let elapsed = start.elapsed();
        for (path, transfer) in jobs {
            self.verify(transfer);
            std::fs::remove_file(path).unwrap();
        }
        elapsed
    }
}

/// One transfer's times, and the CPU each kind of thread of the process used until `Done`.
struct OneRun {
    done: Duration,
    verified: Duration,
    threads: BTreeMap<String, Duration>,
}

/// CPU time used so far by the process's threads, summed by thread name (Linux: from
/// `/proc/self/task/*/schedstat`). The bench's main thread is the uploader.
fn thread_cpu() -> BTreeMap<String, Duration> {
    let mut by_name = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return by_name };
    for task in tasks.flatten() {
        let path = task.path();
        let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default().trim().to_string();
        let name = match name.as_str() {
            n if n.starts_with("ZMQbg/IO") => "ZeroMQ I/O threads (both contexts)".to_string(),
            n if n.starts_with("transfer") => "uploader (bench main thread)".to_string(),
            _ => name,
        };
        let ns: u64 = std::fs::read_to_string(path.join("schedstat"))
            .unwrap_or_default()
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        *by_name.entry(name).or_default() += Duration::from_nanos(ns);
    }
    by_name
}

fn rate(bytes: usize, time: Duration) -> f64 {
    bytes as f64 / MB as f64 / time.as_secs_f64()
}

fn row(what: &str, bytes: usize, time: Duration, raw: f64) {
    let r = rate(bytes, time);
    println!("| {what:<44} | {:>5} | {:>8.3} | {r:>8.0} | {:>5.0} % |", bytes / MB, time.as_secs_f64(), 100.0 * r / raw);
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing we need.
    let size = env_number("BENCH_MB", 100) * MB;
    let runs = env_number("BENCH_RUNS", 3).max(1);
    let wheels = env_number("BENCH_WHEELS", 100).max(1);
    let wheel_kb = env_number("BENCH_WHEEL_KB", 20);
    if std::env::var("BENCH_ONLY").is_ok_and(|v| v == "wheels") {
        for curve in [false, true] {
            let mut bench = Bench::new(curve);
            print_small_wheels(&mut bench, wheels, wheel_kb);
            bench.stop();
        }
        return;
    }
    let bytes = random_bytes(size, 1);
    let path_note = |p: &Path| p.display().to_string();

    let raw_time = best(runs, || raw_tcp(&bytes));
    let raw = rate(size, raw_time);
    let zmq_time = best(runs, || raw_zmq(&bytes, false));
    let zmq_curve_time = best(runs, || raw_zmq(&bytes, true));
    let sha_time = best(runs, || {
        let start = Instant::now();
        std::hint::black_box(Sha256::digest(&bytes));
        start.elapsed()
    });

    // Plain and CurveZMQ runs alternate, so that both meet the same moments of the machine's
    // load.
    let (mut bench, mut secure) = (Bench::new(false), Bench::new(true));
    let (mut one, mut one_secure): (Vec<OneRun>, Vec<OneRun>) = (0..runs).map(|_| (bench.one(&bytes), secure.one(&bytes))).unzip();
    one.sort_by_key(|r| r.done);
    one_secure.sort_by_key(|r| r.done);
    let fastest = one.remove(0);
    let fastest_secure = one_secure.remove(0);
    let verified = one.iter().map(|r| r.verified).chain([fastest.verified]).min().unwrap_or_default();
    let verified_secure = one_secure.iter().map(|r| r.verified).chain([fastest_secure.verified]).min().unwrap_or_default();
    let parts: Vec<Vec<u8>> = (0..16).map(|n| random_bytes(size / 16, 100 + n)).collect();
    let total: usize = parts.iter().map(Vec::len).sum();
    let (mut concurrent, mut concurrent_secure) = (Duration::MAX, Duration::MAX);
    for _ in 0..runs {
        concurrent = concurrent.min(bench.concurrent(&parts));
        concurrent_secure = concurrent_secure.min(secure.concurrent(&parts));
    }

    println!("file transfer, {} MB, best of {runs}, staging in {}", size / MB, path_note(&bench_dir()));
    println!();
    println!("| {:<44} | {:>5} | {:>8} | {:>8} | {:>7} |", "what", "MB", "seconds", "MB/s", "vs raw");
    println!("|{:-<46}|{:-<7}|{:-<10}|{:-<10}|{:-<9}|", "", "", "", "", "");
    row("raw TCP loopback, 256 KiB writes", size, raw_time, raw);
    row("SHA-256 in memory (sha2)", size, sha_time, raw);
    row("raw ZeroMQ DEALER to ROUTER, 256 KiB messages", size, zmq_time, raw);
    row("raw ZeroMQ DEALER to ROUTER, CurveZMQ", size, zmq_curve_time, raw);
    row("one transfer, hello to Done", size, fastest.done, raw);
    row("one transfer, hello to Verified (with fsync)", size, verified, raw);
    row("16 concurrent transfers, aggregate to Done", total, concurrent, raw);
    row("one transfer, hello to Done, CurveZMQ", size, fastest_secure.done, raw);
    row("one transfer, hello to Verified, CurveZMQ", size, verified_secure, raw);
    row("16 concurrent transfers, CurveZMQ", total, concurrent_secure, raw);
    println!();
    println!(
        "CurveZMQ against plain: one transfer {:.0} %, 16 concurrent {:.0} % of the plain throughput; raw ZeroMQ {:.0} %",
        100.0 * fastest.done.as_secs_f64() / fastest_secure.done.as_secs_f64(),
        100.0 * concurrent.as_secs_f64() / concurrent_secure.as_secs_f64(),
        100.0 * zmq_time.as_secs_f64() / zmq_curve_time.as_secs_f64()
    );

    println!();
    print_cpu("plain", &fastest, sha_time);
    println!();
    print_cpu("CurveZMQ", &fastest_secure, sha_time);
    println!();
    print_small_wheels(&mut bench, wheels, wheel_kb);
    print_small_wheels(&mut secure, wheels, wheel_kb);
    bench.stop();
    secure.stop();
}

/// The CPU each kind of thread used in `run`, a single transfer.
fn print_cpu(how: &str, run: &OneRun, sha_time: Duration) {
    println!("CPU used by the fastest single transfer, {how} ({:.3} s to Done), by thread:", run.done.as_secs_f64());
    println!();
    println!("| {:<40} | {:>8} |", "thread", "CPU ms");
    println!("|{:-<42}|{:-<10}|", "", "");
    for (name, cpu) in run.threads.iter().filter(|(_, cpu)| cpu.as_micros() >= 500) {
        println!("| {name:<40} | {:>8.1} |", cpu.as_secs_f64() * 1e3);
        if name == "file_juggler" {
            println!("| {:<40} | {:>8.1} |", "  of which SHA-256 (as measured above)", sha_time.as_secs_f64() * 1e3);
        }
    }
    println!(
        "| {:<40} | {:>8.1} |",
        format!("total, on {} CPUs", std::thread::available_parallelism().map_or(1, |n| n.get())),
        run.threads.values().sum::<Duration>().as_secs_f64() * 1e3
    );
}

fn print_small_wheels(bench: &mut Bench, wheels: usize, kb: usize) {
    // One wheel first, so that the package's directory exists: every timed wheel is a new
    // version of a known package.
    bench.small_wheels(1, kb * 1000);
    let (wall, cpu) = bench.small_wheels(wheels, kb * 1000);
    let how = if matches!(bench.security, Security::Plain) { "plain" } else { "CurveZMQ" };
    println!("{wheels} wheels of {kb} kB, one after another (expect, upload, verify), {how}:");
    println!();
    println!("| {:<32} | {:>10} |", "per wheel", "ms");
    println!("|{:-<34}|{:-<12}|", "", "");
    println!("| {:<32} | {:>10.3} |", "wall time", wall.as_secs_f64() * 1e3);
    println!("| {:<32} | {:>10.3} |", "file juggler's CPU", cpu.as_secs_f64() * 1e3);
}

/// What the juggler expects of a pure wheel of `version` from any uploader.
fn any_build(version: &str) -> FileExpectation {
    FileExpectation { version: version.into(), abi: "cp311".into(), platform: "linux_armv7l".into(), uploader: None }
}
