//! piw-slave, the real binary, against a fake master written here: a ROUTER speaking
//! `SlaveRequest`/`SlaveReply` as the slave driver would, and one speaking the file
//! protocol as the file juggler would. Each test scripts one conversation.
//!
//! The slave refuses to run as root, so when the tests run as root (as in CI) it runs as
//! `nobody` through `setpriv`, with its build root owned by `nobody`. Its builds run a shell
//! script instead of pip (the builder's own tests run pip): the script records its pid and a
//! background child's, then waits for a "go" file from the test before it copies a prepared
//! wheel into the wheel directory, so every step the tests look at happens in a known order.

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::{Pid, User};
use piwheels_common::protocols::{FileReply, FileRequest, SlaveHello, SlaveReply, SlaveRequest, TransferId, Versions, WireError};
use piwheels_common::transport::{DEFAULT_MAX_MESSAGE, Peer, Server};
use sha2::{Digest, Sha256};
use piwheels_testsupport::free_port;
use piwheels_testsupport::pypi::FakePypi;

/// How long a test waits for anything before it gives up: a guard against hangs, not a
/// measure of speed.
const PATIENCE: Duration = Duration::from_secs(90);

const WHEEL: &str = "demo-1.0-py3-none-any.whl";

/// The build script: `build.sh WHEEL_DIR PACKAGE STATE_DIR WHEEL`.
const BUILD_SCRIPT: &str = "#!/bin/sh\n\
    echo $$ >> \"$3/pids\"\n\
    sleep 600 &\n\
    echo $! >> \"$3/pids\"\n\
    echo \"building $2\"\n\
    while [ ! -e \"$3/go\" ]; do sleep 0.1; done\n\
    cp \"$4\" \"$1/\"\n";

/// Directories and files a test's slave uses.
struct Scene {
    dir: tempfile::TempDir,
    /// Serves the source of the one release the scripted master hands out.
    pypi: FakePypi,
}

impl Scene {
    fn new() -> Scene {
        let dir = tempfile::tempdir().expect("temp dir");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
        for sub in ["build", "state"] {
            fs::create_dir(dir.path().join(sub)).expect("mkdir");
            give_to_slave_user(&dir.path().join(sub));
        }
        let script = dir.path().join("build.sh");
        fs::write(&script, BUILD_SCRIPT).expect("write script");
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).expect("chmod script");
        write_wheel(&dir.path().join(WHEEL));
        let pypi = FakePypi::start();
        pypi.create_package("demo", None);
        pypi.add_source("demo", "1.0", b"the source of demo 1.0\n".to_vec());
        Scene { dir, pypi }
    }

    /// The master's word to build demo 1.0 from its pinned source.
    fn build_demo(&self) -> SlaveReply {
        SlaveReply::Build { package: "demo".into(), version: "1.0".into(), source: self.pypi.source_file("demo", "1.0") }
    }

    fn build_root(&self) -> PathBuf {
        self.dir.path().join("build")
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn wheel(&self) -> PathBuf {
        self.dir.path().join(WHEEL)
    }

    /// Lets the running build finish.
    fn go(&self) {
        File::create(self.state().join("go")).expect("create go");
    }

    /// The pids the build script recorded: itself and its background child.
    fn build_pids(&self) -> Vec<i32> {
        fs::read_to_string(self.state().join("pids")).unwrap_or_default().lines().filter_map(|line| line.trim().parse().ok()).collect()
    }

    /// Waits until the build script has recorded both pids.
    fn wait_for_build(&self, slave: &Slave) -> Vec<i32> {
        wait_until(slave, "the build script to start", || (self.build_pids().len() >= 2).then(|| self.build_pids()))
    }

    fn build_root_entries(&self) -> Vec<String> {
        fs::read_dir(self.build_root()).expect("read build root").filter_map(Result::ok).map(|entry| entry.file_name().to_string_lossy().into_owned()).collect()
    }

    /// The arguments of a slave talking to these endpoints.
    fn args(&self, slave_queue: &str, file_queue: &str) -> Vec<String> {
        let command = format!("{} {{wheel_dir}} {{package}} {} {} {{source}}", self.dir.path().join("build.sh").display(), self.state().display(), self.wheel().display());
        [
            "--config", "/dev/null",
            "--slave-queue", slave_queue,
            "--file-queue", file_queue,
            "--build-root", &self.build_root().to_string_lossy(),
            "--python", "python3",
            "--build-command", &command,
            "--build-timeout", "10m",
            "--busy-timeout", "2m",
            "--busy-interval", "100ms",
            "--sleep-interval", "100ms",
            "--master-timeout", "3s",
            "--reconnect-interval", "1s",
            "--upload-timeout", "1m",
            "--memory-limit", "1GiB",
            "--min-free-disk", "0",
            "--min-free-memory", "0",
            "--label", "test-slave",
            // The scripted master speaks without authentication.
            "--no-auth",
        ]
        .iter()
        .map(ToString::to_string)
        .collect()
    }
}

/// The user the slave runs as when the tests run as root.
fn slave_user() -> (u32, u32) {
    match User::from_name("nobody") {
        Ok(Some(user)) => (user.uid.as_raw(), user.gid.as_raw()),
        _ => (65534, 65534),
    }
}

fn running_as_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn give_to_slave_user(path: &Path) {
    if running_as_root() {
        let (uid, gid) = slave_user();
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown to the slave's user");
    }
}

/// A small valid wheel.
fn write_wheel(path: &Path) {
    let mut zip = zip::ZipWriter::new(File::create(path).expect("create wheel"));
    let options = zip::write::SimpleFileOptions::default();
    let members = [
        ("demo_mod.py", "VALUE = 1\n"),
        ("demo-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: demo\nVersion: 1.0\nRequires-Python: >=3.7\n"),
        ("demo-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: piwheels-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"),
        ("demo-1.0.dist-info/RECORD", "demo_mod.py,,\ndemo-1.0.dist-info/METADATA,,\ndemo-1.0.dist-info/WHEEL,,\ndemo-1.0.dist-info/RECORD,,\n"),
    ];
    for (name, text) in members {
        zip.start_file(name, options).expect("start member");
        zip.write_all(text.as_bytes()).expect("write member");
    }
    zip.finish().expect("finish wheel");
}

/// A running piw-slave and what it logs.
struct Slave {
    child: Mutex<Child>,
    log: Arc<Mutex<String>>,
    reader: Option<JoinHandle<()>>,
}

impl Slave {
    /// Starts piw-slave with `args`, as an unprivileged user.
    fn start(args: &[String]) -> Slave {
        let binary = env!("CARGO_BIN_EXE_piw-slave");
        let mut command = if running_as_root() {
            let (uid, gid) = slave_user();
            let mut command = Command::new("setpriv");
            command.args([format!("--reuid={uid}"), format!("--regid={gid}"), "--clear-groups".into(), "--".into(), binary.into()]);
            command
        } else {
            Command::new(binary)
        };
        command
            .args(args)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("PIW_LOG", "debug")
            .env("LC_ALL", "C")
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("start piw-slave");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&log);
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut log = sink.lock().unwrap_or_else(|e| e.into_inner());
                log.push_str(&line);
                log.push('\n');
            }
        });
        Slave { child: Mutex::new(child), log, reader: Some(reader) }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.child().id()).expect("pid"))
    }

    fn child(&self) -> std::sync::MutexGuard<'_, Child> {
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Fails the test if the slave has exited.
    fn check_running(&self) {
        if let Some(status) = self.child().try_wait().expect("try_wait") {
            panic!("piw-slave exited ({status}); its log:\n{}", self.log());
        }
    }

    /// Waits for the slave to exit; its status and everything it logged.
    fn exit(mut self) -> (ExitStatus, String) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let status = self.child().try_wait().expect("try_wait");
            if let Some(status) = status {
                if let Some(reader) = self.reader.take() {
                    let _ = reader.join();
                }
                return (status, self.log());
            }
            assert!(Instant::now() < deadline, "piw-slave did not exit; its log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Slave {
    fn drop(&mut self) {
        let mut child = self.child();
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Polls `check` until it gives a value.
fn wait_until<T>(slave: &Slave, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(value) = check() {
            return value;
        }
        slave.check_running();
        assert!(Instant::now() < deadline, "gave up waiting for {what}; the slave's log:\n{}", slave.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The fake slave driver.
struct FakeMaster {
    server: Server<SlaveRequest, SlaveReply>,
    endpoint: String,
    _ctx: zmq::Context,
}

impl FakeMaster {
    fn bind() -> FakeMaster {
        FakeMaster::bind_at("tcp://127.0.0.1:*")
    }

    fn bind_at(address: &str) -> FakeMaster {
        let ctx = zmq::Context::new();
        let server = Server::bind(&ctx, address, Some(DEFAULT_MAX_MESSAGE)).expect("bind the fake master");
        let endpoint = last_endpoint(server.socket());
        FakeMaster { server, endpoint, _ctx: ctx }
    }

    /// The next request.
    fn recv(&self, slave: &Slave) -> (Peer, SlaveRequest) {
        let deadline = Instant::now() + PATIENCE;
        while !self.server.readable(Some(Duration::from_millis(100))).expect("poll") {
            slave.check_running();
            assert!(Instant::now() < deadline, "no request from the slave; its log:\n{}", slave.log());
        }
        let (peer, request) = self.server.recv().expect("receive");
        (peer, request.unwrap_or_else(|e| panic!("undecodable request: {e}\n{}", slave.log())))
    }

    fn reply(&self, peer: &Peer, reply: &SlaveReply) {
        self.server.send(peer, reply).expect("reply");
    }

    /// Expects a hello and acknowledges it.
    fn welcome(&self, slave: &Slave) -> (Peer, SlaveHello) {
        let (peer, request) = self.recv(slave);
        let SlaveRequest::Hello(hello) = request else { panic!("expected Hello, got {request:?}\n{}", slave.log()) };
        self.reply(&peer, &SlaveReply::Ack { slave_id: 7, index_url: "http://127.0.0.1:9/simple".into() });
        (peer, hello)
    }

    /// Expects `Idle` (with work accepted) and answers it.
    fn idle(&self, slave: &Slave, reply: &SlaveReply) -> Peer {
        let (peer, request) = self.recv(slave);
        let SlaveRequest::Idle { stats, declined } = request else { panic!("expected Idle, got {request:?}\n{}", slave.log()) };
        assert_eq!(declined, None);
        assert!(stats.disk_size > 0 && stats.mem_size > 0, "{stats:?}");
        self.reply(&peer, reply);
        peer
    }

    /// Expects `Busy` and answers it.
    fn busy(&self, slave: &Slave, reply: &SlaveReply) {
        let (peer, request) = self.recv(slave);
        assert!(matches!(request, SlaveRequest::Busy { .. }), "expected Busy, got {request:?}\n{}", slave.log());
        self.reply(&peer, reply);
    }

    /// Hands out a build and waits until its script runs; the script's pids.
    fn start_build(&self, slave: &Slave, scene: &Scene) -> Vec<i32> {
        self.idle(slave, &scene.build_demo());
        self.busy(slave, &SlaveReply::Cont);
        scene.wait_for_build(slave)
    }
}

fn last_endpoint(socket: &zmq::Socket) -> String {
    socket.get_last_endpoint().expect("last endpoint").expect("endpoint text")
}

/// Serves one upload as the file juggler does: asks for the whole file, collects it.
fn serve_upload(juggler: &Server<FileRequest, FileReply>, transfer: TransferId, size: u64, slave: &Slave) -> Vec<u8> {
    let mut received = Vec::new();
    loop {
        assert!(juggler.readable(Some(PATIENCE)).expect("poll"), "the upload stalled; the slave's log:\n{}", slave.log());
        let (peer, request) = juggler.recv().expect("receive");
        match request.expect("a file request") {
            FileRequest::Hello { versions, transfer: asked } => {
                assert_eq!(versions, Versions::current());
                assert_eq!(asked, transfer);
                received.clear();
                juggler.send(&peer, &FileReply::Fetch { offset: 0, length: size }).expect("fetch");
            }
            FileRequest::Chunk { offset, data } => {
                assert_eq!(offset, received.len() as u64);
                received.extend_from_slice(&data);
                if received.len() as u64 == size {
                    juggler.send(&peer, &FileReply::Done).expect("done");
                    return received;
                }
            }
        }
    }
}

fn gone(pids: &[i32]) -> bool {
    pids.iter().all(|pid| !Path::new(&format!("/proc/{pid}")).exists())
}

#[test]
fn says_hello_with_its_facts_asks_for_work_and_obeys_die() {
    let scene = Scene::new();
    let master = FakeMaster::bind();
    let slave = Slave::start(&scene.args(&master.endpoint, "tcp://127.0.0.1:9"));
    let (_, hello) = master.welcome(&slave);
    assert_eq!(hello.versions, Versions::current());
    assert_eq!(hello.build_timeout, Duration::from_secs(600));
    assert_eq!(hello.busy_timeout, Duration::from_secs(120));
    assert_eq!(hello.memory_limit, 1 << 30);
    assert_eq!(hello.host.label, "test-slave");
    assert!(!hello.py_version.is_empty() && hello.py_version.chars().all(|c| c.is_ascii_digit()), "{hello:?}");
    assert!(hello.abi.contains(&hello.py_version), "{hello:?}");
    assert!(hello.platform.starts_with("linux_"), "{hello:?}");
    master.idle(&slave, &SlaveReply::Die { reason: "test over".into() });
    let (status, log) = slave.exit();
    assert!(status.success(), "{status}\n{log}");
    assert!(log.contains("test over"), "{log}");
}

#[test]
fn a_refused_hello_ends_the_slave_with_the_reason() {
    let scene = Scene::new();
    let master = FakeMaster::bind();
    let slave = Slave::start(&scene.args(&master.endpoint, "tcp://127.0.0.1:9"));
    let (peer, request) = master.recv(&slave);
    assert!(matches!(request, SlaveRequest::Hello(_)), "{request:?}");
    master.reply(&peer, &SlaveReply::Error(WireError::refused("version mismatch: this side runs protocol 99")));
    let (status, log) = slave.exit();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("the master refused this slave: version mismatch: this side runs protocol 99"), "{log}");
}

#[test]
fn a_slave_without_a_key_says_how_to_make_one() {
    let scene = Scene::new();
    let args: Vec<String> = scene.args("tcp://127.0.0.1:9", "tcp://127.0.0.1:9").into_iter().filter(|a| a != "--no-auth").collect();
    let slave = Slave::start(&args);
    let (status, log) = slave.exit();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("this program has no key: make a key pair with `piw-keys new FILE`") && log.contains("--role slave"), "{log}");

    let mut with_key = args.clone();
    let missing = scene.dir.path().join("no-such.key");
    with_key.extend(["--key".into(), missing.display().to_string(), "--master-key".into(), "x".repeat(40)]);
    let (status, log) = Slave::start(&with_key).exit();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains(&format!("no key file at {}: make one with `piw-keys new", missing.display())), "{log}");
}

#[test]
fn sleep_means_ask_again() {
    let scene = Scene::new();
    let master = FakeMaster::bind();
    let slave = Slave::start(&scene.args(&master.endpoint, "tcp://127.0.0.1:9"));
    master.welcome(&slave);
    master.idle(&slave, &SlaveReply::Sleep { paused: true });
    master.idle(&slave, &SlaveReply::Sleep { paused: false });
    master.idle(&slave, &SlaveReply::Die { reason: "enough".into() });
    let (status, log) = slave.exit();
    assert!(status.success(), "{log}");
    assert!(log.contains("the master is paused") && log.contains("no work for now"), "{log}");
}

#[test]
fn low_disk_is_declined_with_the_reason() {
    let scene = Scene::new();
    let master = FakeMaster::bind();
    let mut args = scene.args(&master.endpoint, "tcp://127.0.0.1:9");
    let at = args.iter().position(|arg| arg == "--min-free-disk").expect("--min-free-disk");
    args[at + 1] = "1000PiB".into();
    let slave = Slave::start(&args);
    master.welcome(&slave);
    let (peer, request) = master.recv(&slave);
    let SlaveRequest::Idle { declined, .. } = request else { panic!("expected Idle, got {request:?}") };
    let reason = declined.expect("the slave declines work");
    assert!(reason.contains("low disk") && reason.contains(&scene.build_root().display().to_string()), "{reason}");
    master.reply(&peer, &SlaveReply::Die { reason: "done".into() });
    assert!(slave.exit().0.success());
}

/// The whole of a build: Build, Busy while it runs, Built with the inspected wheel, Send and
/// the upload to the file juggler, Sent, Done, and Idle with the build gone.
#[test]
fn builds_reports_and_sends_the_wheel() {
    let scene = Scene::new();
    let master = FakeMaster::bind();
    let ctx = zmq::Context::new();
    let juggler: Server<FileRequest, FileReply> = Server::bind(&ctx, "tcp://127.0.0.1:*", Some(DEFAULT_MAX_MESSAGE)).expect("bind juggler");
    let slave = Slave::start(&scene.args(&master.endpoint, &last_endpoint(juggler.socket())));
    master.welcome(&slave);
    let pids = master.start_build(&slave, &scene);
    scene.go();
    let result = loop {
        let (peer, request) = master.recv(&slave);
        match request {
            SlaveRequest::Busy { .. } => master.reply(&peer, &SlaveReply::Cont),
            SlaveRequest::Built(result) => break (peer, result),
            other => panic!("expected Busy or Built, got {other:?}\n{}", slave.log()),
        }
    };
    let (peer, result) = result;
    assert!(result.success, "{result:?}\n{}", slave.log());
    assert_eq!(result.exit_status, Some(0));
    assert!(result.output.contains("building demo"), "{}", result.output);
    assert_eq!(result.files.len(), 1);
    let file = &result.files[0];
    let bytes = fs::read(scene.wheel()).expect("read wheel");
    assert_eq!(file.filename, WHEEL);
    assert_eq!(file.sha256, format!("{:x}", Sha256::digest(&bytes)));
    assert_eq!(file.requires_python.as_deref(), Some(">=3.7"));
    // The build's leftover background process was killed when the build ended.
    assert!(gone(&pids), "processes of the build survived: {pids:?}");

    master.reply(&peer, &SlaveReply::Send { filename: WHEEL.into(), transfer: 41 });
    assert_eq!(serve_upload(&juggler, 41, file.size, &slave), bytes);
    let (peer, request) = master.recv(&slave);
    assert_eq!(request, SlaveRequest::Sent { filename: WHEEL.into() });
    // Asked again (as after a failed verification), it sends the file again.
    master.reply(&peer, &SlaveReply::Send { filename: WHEEL.into(), transfer: 42 });
    assert_eq!(serve_upload(&juggler, 42, file.size, &slave), bytes);
    let (peer, request) = master.recv(&slave);
    assert_eq!(request, SlaveRequest::Sent { filename: WHEEL.into() });
    master.reply(&peer, &SlaveReply::Done);

    let peer = {
        let (peer, request) = master.recv(&slave);
        assert!(matches!(request, SlaveRequest::Idle { declined: None, .. }), "{request:?}");
        peer
    };
    assert_eq!(scene.build_root_entries(), Vec::<String>::new(), "the build was not removed");
    master.reply(&peer, &SlaveReply::Die { reason: "done".into() });
    assert!(slave.exit().0.success());
}

#[test]
fn done_while_busy_kills_the_build_and_goes_idle() {
    let scene = Scene::new();
    let master = FakeMaster::bind();
    let slave = Slave::start(&scene.args(&master.endpoint, "tcp://127.0.0.1:9"));
    master.welcome(&slave);
    let pids = master.start_build(&slave, &scene);
    master.busy(&slave, &SlaveReply::Done);
    let peer = master.idle(&slave, &SlaveReply::Sleep { paused: false });
    drop(peer);
    assert!(gone(&pids), "processes of the abandoned build survived: {pids:?}\n{}", slave.log());
    assert_eq!(scene.build_root_entries(), Vec::<String>::new(), "the abandoned build was not removed");
    master.idle(&slave, &SlaveReply::Die { reason: "done".into() });
    let (status, log) = slave.exit();
    assert!(status.success(), "{log}");
    assert!(log.contains("the master abandoned the build of demo 1.0"), "{log}");
}

#[test]
fn die_while_busy_kills_the_build_and_exits() {
    let scene = Scene::new();
    let master = FakeMaster::bind();
    let slave = Slave::start(&scene.args(&master.endpoint, "tcp://127.0.0.1:9"));
    master.welcome(&slave);
    let pids = master.start_build(&slave, &scene);
    master.busy(&slave, &SlaveReply::Die { reason: "killed by an operator".into() });
    let (status, log) = slave.exit();
    assert!(status.success(), "{log}");
    assert!(gone(&pids), "processes of the build survived: {pids:?}");
    assert_eq!(scene.build_root_entries(), Vec::<String>::new());
}

/// A master that restarted refuses what it does not know: the slave drops its build and
/// says hello again.
#[test]
fn refused_mid_build_means_hello_again() {
    let scene = Scene::new();
    let master = FakeMaster::bind();
    let slave = Slave::start(&scene.args(&master.endpoint, "tcp://127.0.0.1:9"));
    master.welcome(&slave);
    let pids = master.start_build(&slave, &scene);
    master.busy(&slave, &SlaveReply::Error(WireError::refused("this master does not know you")));
    master.welcome(&slave);
    assert!(gone(&pids), "processes of the build survived: {pids:?}");
    assert_eq!(scene.build_root_entries(), Vec::<String>::new());
    master.idle(&slave, &SlaveReply::Die { reason: "done".into() });
    assert!(slave.exit().0.success());
}

/// The master does not answer: the slave gives the connection up and says hello on a new
/// one (a new identity on the master's side).
#[test]
fn a_silent_master_gets_a_new_connection_and_a_new_hello() {
    let scene = Scene::new();
    let master = FakeMaster::bind();
    let slave = Slave::start(&scene.args(&master.endpoint, "tcp://127.0.0.1:9"));
    let (first, _) = master.welcome(&slave);
    let pids = {
        master.idle(&slave, &scene.build_demo());
        scene.wait_for_build(&slave)
    };
    // Busy goes unanswered.
    let (_, request) = master.recv(&slave);
    assert!(matches!(request, SlaveRequest::Busy { .. }), "{request:?}");
    let (second, _) = master.welcome(&slave);
    assert_ne!(first.identity(), second.identity(), "the hello came on the old connection");
    assert!(gone(&pids), "processes of the build survived: {pids:?}");
    master.idle(&slave, &SlaveReply::Die { reason: "done".into() });
    let (status, log) = slave.exit();
    assert!(status.success(), "{log}");
    assert!(log.contains("no answer from the master to Busy"), "{log}");
}

/// Started before the master, the slave keeps saying hello until the master is there.
#[test]
fn connects_once_the_master_appears() {
    let scene = Scene::new();
    let endpoint = format!("tcp://127.0.0.1:{}", free_port());
    let slave = Slave::start(&scene.args(&endpoint, "tcp://127.0.0.1:9"));
    wait_until(&slave, "the slave to find no master", || slave.log().contains("no answer from the master").then_some(()));
    let master = FakeMaster::bind_at(&endpoint);
    master.welcome(&slave);
    master.idle(&slave, &SlaveReply::Die { reason: "done".into() });
    assert!(slave.exit().0.success());
}

#[test]
fn sigterm_kills_the_build_says_bye_and_exits_zero() {
    let scene = Scene::new();
    let master = FakeMaster::bind();
    let slave = Slave::start(&scene.args(&master.endpoint, "tcp://127.0.0.1:9"));
    master.welcome(&slave);
    let pids = master.start_build(&slave, &scene);
    kill(slave.pid(), Signal::SIGTERM).expect("signal the slave");
    let reason = loop {
        let (peer, request) = master.recv(&slave);
        match request {
            SlaveRequest::Busy { .. } => master.reply(&peer, &SlaveReply::Cont),
            SlaveRequest::Bye { reason } => break reason,
            other => panic!("expected Busy or Bye, got {other:?}\n{}", slave.log()),
        }
    };
    assert!(reason.contains("SIGTERM"), "{reason}");
    let (status, log) = slave.exit();
    assert!(status.success(), "{status}\n{log}");
    assert!(gone(&pids), "processes of the build survived: {pids:?}");
    assert_eq!(scene.build_root_entries(), Vec::<String>::new());
}

/// An answer the conversation does not allow: the slave says why in its Bye and exits 1.
#[test]
fn an_unexpected_answer_is_a_protocol_error() {
    let scene = Scene::new();
    let master = FakeMaster::bind();
    let slave = Slave::start(&scene.args(&master.endpoint, "tcp://127.0.0.1:9"));
    master.welcome(&slave);
    master.idle(&slave, &SlaveReply::Cont);
    let (_, request) = master.recv(&slave);
    let SlaveRequest::Bye { reason } = request else { panic!("expected Bye, got {request:?}") };
    assert!(reason.contains("protocol error") && reason.contains("answered Idle with Cont"), "{reason}");
    let (status, log) = slave.exit();
    assert_eq!(status.code(), Some(1), "{log}");
}

/// `--version` and `--help` answer anyone, root included. Run as root otherwise, the slave
/// refuses before it does anything (no connection, no build directory).
#[test]
fn refuses_to_run_as_root_but_answers_help_and_version() {
    for flag in ["--version", "--help"] {
        let output = Command::new(env!("CARGO_BIN_EXE_piw-slave")).arg(flag).env_clear().output().expect("run piw-slave");
        assert!(output.status.success(), "{flag}: {}", String::from_utf8_lossy(&output.stderr));
        assert!(String::from_utf8_lossy(&output.stdout).contains("piw-slave"), "{flag}");
    }
    if running_as_root() {
        let output = Command::new(env!("CARGO_BIN_EXE_piw-slave"))
            .args(["--config", "/dev/null", "--master", "127.0.0.1"])
            .env_clear()
            .output()
            .expect("run piw-slave");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("must not be run as root"), "{stderr}");
    }
}

/// A slave killed outright (SIGKILL: no clean-up of its own) takes its build with it: the
/// launcher's parent-death signal makes it kill every process of the build. The next slave
/// removes the directory left behind.
#[test]
fn a_killed_slave_takes_its_build_with_it() {
    let scene = Scene::new();
    let master = FakeMaster::bind();
    let slave = Slave::start(&scene.args(&master.endpoint, "tcp://127.0.0.1:9"));
    master.welcome(&slave);
    let pids = master.start_build(&slave, &scene);
    kill(slave.pid(), Signal::SIGKILL).expect("kill the slave");
    let deadline = Instant::now() + PATIENCE;
    while !gone(&pids) {
        assert!(Instant::now() < deadline, "the build outlived its slave: {pids:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, _) = slave.exit();
    assert_eq!(status.signal(), Some(Signal::SIGKILL as i32));
    // Its build directory is left over, until the next slave starts and removes it.
    assert_eq!(scene.build_root_entries().len(), 1, "{:?}", scene.build_root_entries());
    let slave = Slave::start(&scene.args(&master.endpoint, "tcp://127.0.0.1:9"));
    master.welcome(&slave);
    assert_eq!(scene.build_root_entries(), Vec::<String>::new());
    master.idle(&slave, &SlaveReply::Die { reason: "done".into() });
    let (status, log) = slave.exit();
    assert!(status.success(), "{log}");
    assert!(log.contains("left by a slave that died"), "{log}");
}
