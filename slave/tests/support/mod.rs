//! Set-up shared by piw-slave's process tests (each test file that needs it says `mod
//! support;`): the real binary against a fake master written here, a ROUTER speaking
//! `SlaveRequest`/`SlaveReply` as the slave driver would, and one speaking the file protocol
//! as the file juggler would. Each test scripts its conversations.
//!
//! The slave refuses to run as root, so when the tests run as root (as in CI) it runs as
//! `nobody` through `setpriv`, with its build root owned by `nobody`. Its builds run a shell
//! script instead of pip (the builder's own tests run pip): the script records its pid and a
//! background child's, then waits for a "go" file from the test before it copies a prepared
//! wheel into the wheel directory, so every step the tests look at happens in a known order.
#![allow(dead_code, unreachable_pub)]

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::unistd::{Pid, User};
use piwheels_common::protocols::{FileReply, FileRequest, SlaveHello, SlaveReply, SlaveRequest, TransferId, Versions};
use piwheels_common::transport::{DEFAULT_MAX_MESSAGE, Peer, Server};
use piwheels_testsupport::pypi::FakePypi;

/// How long a test waits for anything before it gives up: a guard against hangs, not a
/// measure of speed.
pub const PATIENCE: Duration = Duration::from_secs(90);

pub const WHEEL: &str = "demo-1.0-py3-none-any.whl";

/// The build script: `build.sh WHEEL_DIR PACKAGE STATE_DIR WHEEL`; a package's pids and go
/// file are its own, so that several builds can run at once.
pub const BUILD_SCRIPT: &str = "#!/bin/sh\n\
    echo $$ >> \"$3/pids-$2\"\n\
    sleep 600 &\n\
    echo $! >> \"$3/pids-$2\"\n\
    echo \"building $2\"\n\
    while [ ! -e \"$3/go-$2\" ]; do sleep 0.1; done\n\
    cp \"$4\" \"$1/\"\n";

/// Directories and files a test's slave uses.
pub struct Scene {
    pub dir: tempfile::TempDir,
    /// Serves the source of the one release the scripted master hands out.
    pub pypi: FakePypi,
}

impl Scene {
    pub fn new() -> Scene {
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
    pub fn build_demo(&self) -> SlaveReply {
        self.build("demo")
    }

    /// The master's word to build `package` 1.0, from demo 1.0's source (the script builds
    /// demo's wheel whatever the name).
    pub fn build(&self, package: &str) -> SlaveReply {
        SlaveReply::Build { package: package.into(), version: "1.0".into(), source: self.pypi.source_file("demo", "1.0") }
    }

    pub fn build_root(&self) -> PathBuf {
        self.dir.path().join("build")
    }

    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn wheel(&self) -> PathBuf {
        self.dir.path().join(WHEEL)
    }

    /// Lets the running build of demo finish.
    pub fn go(&self) {
        self.go_for("demo");
    }

    /// Lets the running build of `package` finish.
    pub fn go_for(&self, package: &str) {
        File::create(self.state().join(format!("go-{package}"))).expect("create go");
    }

    /// The pids demo's build script recorded: itself and its background child.
    pub fn build_pids(&self) -> Vec<i32> {
        self.build_pids_of("demo")
    }

    /// The pids `package`'s build script recorded.
    pub fn build_pids_of(&self, package: &str) -> Vec<i32> {
        let pids = fs::read_to_string(self.state().join(format!("pids-{package}"))).unwrap_or_default();
        pids.lines().filter_map(|line| line.trim().parse().ok()).collect()
    }

    /// Waits until demo's build script has recorded both pids.
    pub fn wait_for_build(&self, slave: &Slave) -> Vec<i32> {
        self.wait_for_build_of(slave, "demo")
    }

    /// Waits until `package`'s build script has recorded both pids.
    pub fn wait_for_build_of(&self, slave: &Slave, package: &str) -> Vec<i32> {
        wait_until(slave, &format!("the build script of {package} to start"), || {
            let pids = self.build_pids_of(package);
            (pids.len() >= 2).then_some(pids)
        })
    }

    /// What builder `number`'s directory holds: its builds' directories.
    pub fn build_dirs(&self, number: u16) -> Vec<String> {
        let dir = self.build_root().join(format!("builder-{number}"));
        fs::read_dir(dir).expect("read the builder's directory").filter_map(Result::ok).map(|entry| entry.file_name().to_string_lossy().into_owned()).collect()
    }

    /// The arguments of a slave talking to these endpoints.
    pub fn args(&self, slave_queue: &str, file_queue: &str) -> Vec<String> {
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
pub fn slave_user() -> (u32, u32) {
    match User::from_name("nobody") {
        Ok(Some(user)) => (user.uid.as_raw(), user.gid.as_raw()),
        _ => (65534, 65534),
    }
}

pub fn running_as_root() -> bool {
    nix::unistd::geteuid().is_root()
}

pub fn give_to_slave_user(path: &Path) {
    if running_as_root() {
        let (uid, gid) = slave_user();
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown to the slave's user");
    }
}

/// A small valid wheel.
pub fn write_wheel(path: &Path) {
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
pub struct Slave {
    child: Mutex<Child>,
    log: Arc<Mutex<String>>,
    reader: Option<JoinHandle<()>>,
}

impl Slave {
    /// Starts piw-slave with `args`, as an unprivileged user.
    pub fn start(args: &[String]) -> Slave {
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

    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.child().id()).expect("pid"))
    }

    /// The host's builders: its child processes.
    pub fn builder_pids(&self) -> Vec<Pid> {
        children_of(self.pid())
    }

    pub fn child(&self) -> std::sync::MutexGuard<'_, Child> {
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Fails the test if the slave has exited.
    pub fn check_running(&self) {
        if let Some(status) = self.child().try_wait().expect("try_wait") {
            panic!("piw-slave exited ({status}); its log:\n{}", self.log());
        }
    }

    /// Waits for the slave to exit; its status and everything it logged.
    pub fn exit(mut self) -> (ExitStatus, String) {
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
pub fn wait_until<T>(slave: &Slave, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
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
pub struct FakeMaster {
    pub server: Server<SlaveRequest, SlaveReply>,
    pub endpoint: String,
    _ctx: zmq::Context,
}

impl FakeMaster {
    pub fn bind() -> FakeMaster {
        FakeMaster::bind_at("tcp://127.0.0.1:*")
    }

    pub fn bind_at(address: &str) -> FakeMaster {
        let ctx = zmq::Context::new();
        let server = Server::bind(&ctx, address, Some(DEFAULT_MAX_MESSAGE)).expect("bind the fake master");
        let endpoint = last_endpoint(server.socket());
        FakeMaster { server, endpoint, _ctx: ctx }
    }

    /// The next request.
    pub fn recv(&self, slave: &Slave) -> (Peer, SlaveRequest) {
        let deadline = Instant::now() + PATIENCE;
        while !self.server.readable(Some(Duration::from_millis(100))).expect("poll") {
            slave.check_running();
            assert!(Instant::now() < deadline, "no request from the slave; its log:\n{}", slave.log());
        }
        let (peer, request) = self.server.recv().expect("receive");
        (peer, request.unwrap_or_else(|e| panic!("undecodable request: {e}\n{}", slave.log())))
    }

    pub fn reply(&self, peer: &Peer, reply: &SlaveReply) {
        self.server.send(peer, reply).expect("reply");
    }

    /// Expects a hello and acknowledges it.
    pub fn welcome(&self, slave: &Slave) -> (Peer, SlaveHello) {
        let (peer, request) = self.recv(slave);
        let SlaveRequest::Hello(hello) = request else { panic!("expected Hello, got {request:?}\n{}", slave.log()) };
        self.reply(&peer, &SlaveReply::Ack { slave_id: 7, index_url: "http://127.0.0.1:9/simple".into() });
        (peer, hello)
    }

    /// Expects `Idle` (with work accepted) and answers it.
    pub fn idle(&self, slave: &Slave, reply: &SlaveReply) -> Peer {
        let (peer, request) = self.recv(slave);
        let SlaveRequest::Idle { stats, declined } = request else { panic!("expected Idle, got {request:?}\n{}", slave.log()) };
        assert_eq!(declined, None);
        assert!(stats.disk_size > 0 && stats.mem_size > 0, "{stats:?}");
        self.reply(&peer, reply);
        peer
    }

    /// Expects `Busy` and answers it.
    pub fn busy(&self, slave: &Slave, reply: &SlaveReply) {
        let (peer, request) = self.recv(slave);
        assert!(matches!(request, SlaveRequest::Busy { .. }), "expected Busy, got {request:?}\n{}", slave.log());
        self.reply(&peer, reply);
    }

    /// Hands out a build and waits until its script runs; the script's pids.
    pub fn start_build(&self, slave: &Slave, scene: &Scene) -> Vec<i32> {
        self.idle(slave, &scene.build_demo());
        self.busy(slave, &SlaveReply::Cont);
        scene.wait_for_build(slave)
    }
}

pub fn last_endpoint(socket: &zmq::Socket) -> String {
    socket.get_last_endpoint().expect("last endpoint").expect("endpoint text")
}

/// Serves one upload as the file juggler does: asks for the whole file, collects it.
pub fn serve_upload(juggler: &Server<FileRequest, FileReply>, transfer: TransferId, size: u64, slave: &Slave) -> Vec<u8> {
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

/// The processes whose parent is `parent`, from /proc.
pub fn children_of(parent: Pid) -> Vec<Pid> {
    let mut children: Vec<Pid> = fs::read_dir("/proc")
        .expect("read /proc")
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| parent_of(*pid) == Some(parent.as_raw()))
        .map(Pid::from_raw)
        .collect();
    children.sort();
    children
}

/// The parent of `pid`, while it runs (zombies have none worth counting).
fn parent_of(pid: i32) -> Option<i32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name, in parentheses, may hold spaces: the fields after it are plain.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    (fields.first() != Some(&"Z")).then(|| fields.get(1)?.parse().ok())?
}

/// Whether every one of `pids` has ended (a zombie has: only its exit status is left, for a
/// parent, or an init that reaps late, to collect).
pub fn gone(pids: &[i32]) -> bool {
    pids.iter().all(|pid| match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rfind(')').is_some_and(|at| stat[at + 1..].split_whitespace().next() == Some("Z")),
        Err(_) => true,
    })
}

/// `parent`'s children, their children, and so on.
pub fn descendants_of(parent: Pid) -> Vec<Pid> {
    let mut found = Vec::new();
    let mut next = vec![parent];
    while let Some(pid) = next.pop() {
        let children = children_of(pid);
        next.extend(&children);
        found.extend(children);
    }
    found
}

