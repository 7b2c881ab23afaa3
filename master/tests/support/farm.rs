//! A whole farm of real processes for the tests that need one: a piw-master following the
//! fake PyPI with authentication on, and real piw-slaves (run as an unprivileged user) whose
//! builder downloads each source from the fake PyPI and does what the source says: waits, then
//! writes a real wheel of a given size, or fails as the package's own fault.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use piwheels_common::keys::Role;
use piwheels_master::db::migrate;
use piwheels_testsupport::db::{APP_ROLE, TestDb};
use piwheels_testsupport::free_port;
use piwheels_testsupport::installers::local_abi;
use piwheels_testsupport::keys::ClientKey;
use piwheels_testsupport::programs::{program, shared_dir, unprivileged};
use piwheels_testsupport::pypi::FakePypi;

/// How long a slave may stay silent before the master drops it.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(6);

/// The builder: reads what to do from the source file the slave downloaded and checked, and
/// writes a wheel into the wheel directory.
const BUILDER: &str = r##"import base64, hashlib, os, sys, time, zipfile
pids, name, version, wheel_dir, source = sys.argv[1:6]
with open(pids, "a") as out:
    out.write(f"{os.getpid()}\n")

with open(source) as f:
    spec = dict(word.split("=", 1) for word in f.read().split())
print(f"building {name} {version} as its source says: {spec}", flush=True)
time.sleep(float(spec["seconds"]))
if spec["outcome"] == "fail":
    print("error: this package does not build (its source says so)")
    sys.exit(1)
dist = name.replace("-", "_")
info = f"{dist}-{version}.dist-info"
files = [
    (f"{dist}/__init__.py", b""),
    (f"{dist}/data.bin", os.urandom(int(spec["size"]))),
    (f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode()),
    (f"{info}/WHEEL", b"Wheel-Version: 1.0\nGenerator: test-farm\nRoot-Is-Purelib: true\nTag: py3-none-any\n"),
]
record = "".join(
    f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},{len(data)}\n"
    for path, data in files
) + f"{info}/RECORD,,\n"
files.append((f"{info}/RECORD", record.encode()))
with zipfile.ZipFile(os.path.join(wheel_dir, f"{dist}-{version}-py3-none-any.whl"), "w") as wheel:
    for path, data in files:
        wheel.writestr(path, data)
print(f"built {name} {version}")
"##;

/// What a release's source tells the builder.
#[derive(Debug, Clone, Copy)]
pub struct Source {
    /// How long the build takes.
    pub seconds: f64,
    /// Bytes of random data in the wheel.
    pub size: u64,
    /// Whether the build makes a wheel (else it fails: the package's own fault).
    pub builds: bool,
}

impl Source {
    /// A quick build of a small wheel.
    pub const QUICK: Source = Source { seconds: 0.1, size: 1000, builds: true };
}

/// A process killed when dropped (continued first, should it be stopped).
pub struct Process(pub Child);

impl Process {
    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.0.id() as i32)
    }

    pub fn signal(&self, signal: Signal) {
        let _ = kill(self.pid(), signal);
    }

    /// A piw-slave's (first) builder: the host's live child process, which talks to the master.
    pub fn builder(&self) -> Option<Pid> {
        let parent = self.0.id().to_string();
        let children = std::fs::read_dir("/proc").ok()?.flatten().filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok());
        children
            .into_iter()
            .find(|pid| {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                let fields: Vec<&str> = stat.rfind(')').map_or("", |at| &stat[at + 1..]).split_whitespace().collect();
                fields.first() != Some(&"Z") && fields.get(1) == Some(&parent.as_str())
            })
            .map(Pid::from_raw)
    }

    /// Whether it still runs.
    pub fn running(&mut self) -> bool {
        self.0.try_wait().unwrap().is_none()
    }

    /// Stops the process with SIGTERM, waiting up to `timeout`; whether it exited in time.
    pub fn terminate(mut self, timeout: Duration) -> bool {
        self.signal(Signal::SIGCONT);
        self.signal(Signal::SIGTERM);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if !self.running() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.signal(Signal::SIGCONT);
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A tmpfs mounted at a directory, unmounted when dropped.
pub struct Mount(PathBuf);

impl Mount {
    /// Mounts a tmpfs of `size` (e.g. "192m") at `dir`, if this process may (root, outside a
    /// container that forbids it); says so when it may not.
    pub fn tmpfs(dir: &Path, size: &str) -> Option<Mount> {
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={size},mode=1777"))
            .arg("tmpfs")
            .arg(dir)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if !mounted {
            eprintln!("cannot mount a tmpfs at {}: the master's disk is the test's own", dir.display());
        }
        mounted.then(|| Mount(dir.to_path_buf()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// One slave: its process while it runs, and when it is to be started again or continued.
pub struct Slave {
    pub name: String,
    pub key: ClientKey,
    pub process: Option<Process>,
    pub restart_at: Option<Instant>,
    pub continue_at: Option<Instant>,
    /// The builder stopped with SIGSTOP, continued at `continue_at` (unless its host has
    /// replaced it as hung by then).
    pub stopped: Option<Pid>,
}

/// The farm. The master's own disk (its output tree and state) is `<dir>/disk`, which the
/// caller may mount a file system of its own on before the farm is made.
pub struct Farm {
    // Processes first: they are dropped before the disk they use.
    pub master: Option<Process>,
    pub slaves: Vec<Slave>,
    pub disk: Option<Mount>,
    pub dir: tempfile::TempDir,
    pub db: TestDb,
    pub pypi: FakePypi,
    pub slave_port: u16,
    pub file_port: u16,
    pub http_port: u16,
}

impl Farm {
    /// A farm building for this machine's ABI with a slave (not started) for each name, each
    /// with a key of its own; `disk` mounts a file system for the master's disk.
    pub fn new(slaves: &[&str], disk: impl FnOnce(&Path) -> Option<Mount>) -> Farm {
        let db = TestDb::new();
        migrate::upgrade_blocking(&db.owner_url(), APP_ROLE).unwrap();
        db.execute(&format!("INSERT INTO build_abis (abi_tag, python_version) VALUES ('{}', 311)", local_abi()));
        let dir = shared_dir();
        let disk_dir = dir.path().join("disk");
        std::fs::create_dir(&disk_dir).unwrap();
        let disk = disk(&disk_dir);
        std::fs::write(dir.path().join("builder.py"), BUILDER).unwrap();
        let state = disk_dir.join("state");
        let slaves = slaves
            .iter()
            .map(|name| {
                let key = ClientKey::authorized(&state, &dir.path().join(format!("{name}.key")), Role::Slave, name).for_unprivileged();
                Slave { name: name.to_string(), key, process: None, restart_at: None, continue_at: None, stopped: None }
            })
            .collect();
        let ports = (free_port(), free_port(), free_port());
        Farm { master: None, slaves, disk, dir, db, pypi: FakePypi::start(), slave_port: ports.0, file_port: ports.1, http_port: ports.2 }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn www(&self) -> PathBuf {
        self.path("disk/www")
    }

    pub fn state(&self) -> PathBuf {
        self.path("disk/state")
    }

    /// Where the master's local sockets (control, status, import, logger) listen.
    pub fn ipc(&self, socket: &str) -> String {
        format!("ipc://{}/run/{socket}", self.dir.path().display())
    }

    pub fn slave_queue(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.slave_port)
    }

    pub fn file_queue(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.file_port)
    }

    /// The options the master and piw-check share.
    pub fn master_args(&self) -> Vec<String> {
        let mut args: Vec<String> = ["--config", "/dev/null", "--dsn"].map(String::from).to_vec();
        args.push(self.db.app_url());
        args.extend(["--output-path".into(), self.www().display().to_string(), "--state-dir".into(), self.state().display().to_string()]);
        for (option, socket) in [("--control-queue", "control"), ("--status-queue", "status"), ("--import-queue", "import"), ("--logger-queue", "logger")] {
            args.extend([option.to_string(), self.ipc(socket)]);
        }
        args.extend(["--slave-queue".into(), self.slave_queue(), "--file-queue".into(), self.file_queue()]);
        args.extend(["--pypi-xmlrpc".into(), self.pypi.xmlrpc_url(), "--pypi-json".into(), self.pypi.json_url()]);
        args.extend(["--pypi-simple".into(), self.pypi.simple_url()]);
        args
    }

    /// Starts the master, quick to follow PyPI and to retry, serving the tree over HTTP; its
    /// log goes to `master.log`.
    pub fn start_master(&mut self) {
        let log = OpenOptions::new().create(true).append(true).open(self.path("master.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_piw-master"))
            .args(self.master_args())
            .args(["--pypi-interval", "200ms", "--queue-debounce", "200ms", "--rewrite-window", "200ms", "--oracles", "2"])
            .args(["--retry-backoff", "500ms"])
            .arg("--http-listen")
            .arg(format!("127.0.0.1:{}", self.http_port))
            .env("PIW_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.master = Some(Process(child));
    }

    pub fn master_running(&mut self) -> bool {
        self.master.as_mut().is_some_and(Process::running)
    }

    /// Starts slave `index`, building under `<dir>/<name>`, its log going to `<name>.log`.
    pub fn start_slave(&mut self, index: usize) {
        let name = self.slaves[index].name.clone();
        let root = self.path(&name);
        std::fs::create_dir_all(&root).unwrap();
        std::fs::set_permissions(&root, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
        let command = format!(
            "{{python}} -I -S {} {} {{package}} {{version}} {{wheel_dir}} {{source}}",
            self.path("builder.py").display(),
            self.path("build-pids").display()
        );
        let log = OpenOptions::new().create(true).append(true).open(self.path(&format!("{name}.log"))).unwrap();
        let child = unprivileged(&program("piw-slave"))
            .args(["--config", "/dev/null", "--master", "127.0.0.1"])
            .args(["--slave-queue", &self.slave_queue(), "--file-queue", &self.file_queue()])
            .arg("--build-root")
            .arg(&root)
            .args(["--build-command", &command])
            .args(["--build-timeout", "30s", "--busy-interval", "1s", "--sleep-interval", "1s", "--upload-timeout", "4s"])
            .arg("--busy-timeout")
            .arg(format!("{}s", BUSY_TIMEOUT.as_secs()))
            .args(["--master-timeout", "5s", "--reconnect-interval", "1s", "--min-free-disk", "0", "--min-free-memory", "0"])
            .args(self.slaves[index].key.args())
            .env("HOME", &root)
            .env("PIW_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let slave = &mut self.slaves[index];
        slave.process = Some(Process(child));
        slave.restart_at = None;
    }

    /// Fails the test if a slave stopped on its own; starts slaves whose restart is due and
    /// continues those whose stop is over.
    pub fn tend_slaves(&mut self, now: Instant) {
        for slave in &mut self.slaves {
            if let Some(process) = &mut slave.process
                && let Some(status) = process.0.try_wait().unwrap()
            {
                panic!("{} stopped on its own ({status}); see its log", slave.name);
            }
        }
        for index in 0..self.slaves.len() {
            if self.slaves[index].restart_at.is_some_and(|at| at <= now) {
                self.start_slave(index);
            }
            let slave = &mut self.slaves[index];
            if slave.continue_at.is_some_and(|at| at <= now) {
                if let Some(builder) = slave.stopped.take() {
                    let _ = kill(builder, Signal::SIGCONT);
                }
                slave.continue_at = None;
            }
        }
    }

    /// Publishes a release on the fake PyPI whose source tells the builder what to do.
    pub fn add_release(&self, package: &str, version: &str, source: Source) {
        let outcome = if source.builds { "wheel" } else { "fail" };
        self.pypi.create_package(package, None);
        self.pypi.add_source(package, version, format!("seconds={} size={} outcome={outcome}\n", source.seconds, source.size).into_bytes());
    }

    /// `(package, version, status, failure)` of every build, `-` for no failure.
    pub fn builds(&self) -> Vec<(String, String, String, String)> {
        self.db
            .column("SELECT concat_ws(' ', package, version, status, coalesce(failure, '-')) FROM builds")
            .into_iter()
            .flatten()
            .map(|row| {
                let words: Vec<&str> = row.split(' ').collect();
                (words[0].into(), words[1].into(), words[2].into(), words[3].into())
            })
            .collect()
    }

    /// Waits up to `timeout` for the build of `package` `version`; returns its status and failure.
    pub fn wait_for_build(&mut self, package: &str, version: &str, timeout: Duration) -> (String, String) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((_, _, status, failure)) = self.builds().into_iter().find(|(p, v, _, _)| p == package && v == version) {
                return (status, failure);
            }
            assert!(Instant::now() < deadline, "no build of {package} {version} within {timeout:?}");
            self.tend_slaves(Instant::now());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Copies the farm's logs to `<target tmp>/<test>/`.
    fn keep_logs(&self, test: &str) {
        let kept = Path::new(env!("CARGO_TARGET_TMPDIR")).join(test);
        let _ = std::fs::create_dir_all(&kept);
        for entry in std::fs::read_dir(self.dir.path()).into_iter().flatten().flatten() {
            if entry.path().extension().is_some_and(|ext| ext == "log") {
                let _ = std::fs::copy(entry.path(), kept.join(entry.file_name()));
            }
        }
        eprintln!("the farm's logs are kept in {}", kept.display());
    }
}

impl Drop for Farm {
    /// A failed test keeps the farm's logs in the target directory, named after the test.
    fn drop(&mut self) {
        if std::thread::panicking() {
            let test = std::thread::current().name().unwrap_or("farm").to_string();
            self.keep_logs(&test);
        }
    }
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| !stat.contains(") Z "))
}

/// Whether every build process the builder recorded has ended.
pub fn build_processes_ended(farm: &Farm) -> bool {
    let pids = std::fs::read_to_string(farm.path("build-pids")).unwrap_or_default();
    pids.lines().filter_map(|l| l.parse().ok()).all(|pid: i32| !alive(pid))
}

/// Processes whose command line names `dir`.
pub fn processes_naming(dir: &Path) -> Vec<String> {
    let needle = dir.display().to_string();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let pid: i32 = entry.file_name().to_string_lossy().parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            (cmdline.contains(&needle) && alive(pid)).then(|| format!("{pid}: {cmdline}"))
        })
        .collect()
}
