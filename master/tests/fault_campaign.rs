//! The fault campaign: a real piw-master following the fake PyPI and three real piw-slaves
//! building releases that keep arriving, while a seeded random mix of faults hits them: slaves
//! killed mid-build and mid-upload, the master killed and restarted, its database connections
//! terminated, its disk full for a while, PyPI failing or stalling, a slave stopped. The
//! builder downloads each source from the fake PyPI (so PyPI's faults reach the builds too),
//! waits as long as the source says and writes a real wheel of the size it says, or fails when
//! the source says the package does not build.
//!
//! At the end every release that can be built is built exactly once and published, every
//! recorded failure is the package's, piw-check finds nothing and no process of the farm is
//! left. The short form (120 faults) runs in the test suite; `PIW_CAMPAIGN_FAULTS=1000` runs
//! the long form and `PIW_CAMPAIGN_SEED=N` replays a run: the seed, the faults and the counts
//! are printed (run with `--no-capture` to see them when the campaign passes).

mod support;

use std::collections::{BTreeMap, HashMap};
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
use piwheels_testsupport::programs::{is_root, program, shared_dir, unprivileged};
use piwheels_testsupport::pypi::{Failure, FakePypi};

/// Faults of the short form.
const SHORT_FORM: usize = 120;
/// The slaves, each with a key of its own.
const SLAVES: [&str; 3] = ["slave-a", "slave-b", "slave-c"];
/// One release in this many does not build (the package's own failure).
const FAILING_ONE_IN: u64 = 8;
/// How long a slave may stay silent before the master drops it (a stall is sometimes longer).
const BUSY_TIMEOUT: Duration = Duration::from_secs(6);
/// Size of the master's disk (output tree and state), which a fault fills.
const DISK_SIZE: &str = "192m";

/// The builder: downloads the source from the index the master names, reads what to do from
/// it, and writes a wheel into the wheel directory. A download that fails is reported in pip's
/// words, which the slave knows to be the index's fault.
const BUILDER: &str = r##"import base64, hashlib, os, re, sys, time, urllib.parse, urllib.request, zipfile
pids, name, version, wheel_dir, index_url = sys.argv[1:6]
with open(pids, "a") as out:
    out.write(f"{os.getpid()}\n")

def fetch(url):
    try:
        with urllib.request.urlopen(url, timeout=3) as answer:
            return answer.read()
    except Exception as e:
        print(f"WARNING: Could not fetch URL {url}: {e}", flush=True)
        sys.exit(1)

page_url = urllib.parse.urljoin(index_url.rstrip("/") + "/", name + "/")
page = fetch(page_url).decode()
link = re.search(r'href="([^"#]*' + re.escape(f"{name}-{version}.tar.gz") + ')', page)
if link is None:
    print(f"ERROR: Could not find a version that satisfies the requirement {name}=={version}")
    sys.exit(1)
spec = dict(word.split("=", 1) for word in fetch(urllib.parse.urljoin(page_url, link.group(1))).decode().split())
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
    (f"{info}/WHEEL", b"Wheel-Version: 1.0\nGenerator: fault-campaign\nRoot-Is-Purelib: true\nTag: py3-none-any\n"),
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

/// A small seeded generator (splitmix64): the campaign's choices, replayable from the seed.
struct Dice(u64);

impl Dice {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// A duration between `low` and `high` milliseconds.
    fn millis(&mut self, low: u64, high: u64) -> Duration {
        Duration::from_millis(low + self.below(high - low + 1))
    }
}

/// The faults, with their weights in the mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    KillSlaveMidBuild,
    KillSlaveMidUpload,
    KillMaster,
    TerminateDatabaseConnections,
    FullDisk,
    PypiErrors,
    PypiStall,
    StopSlave,
}

impl Fault {
    const MIX: [(Fault, u64); 8] = [
        (Fault::KillSlaveMidBuild, 4),
        (Fault::KillSlaveMidUpload, 3),
        (Fault::KillMaster, 1),
        (Fault::TerminateDatabaseConnections, 3),
        (Fault::FullDisk, 2),
        (Fault::PypiErrors, 3),
        (Fault::PypiStall, 1),
        (Fault::StopSlave, 2),
    ];

    fn draw(dice: &mut Dice, disk: bool) -> Fault {
        let mix: Vec<(Fault, u64)> = Fault::MIX.into_iter().filter(|(fault, _)| disk || *fault != Fault::FullDisk).collect();
        let mut roll = dice.below(mix.iter().map(|(_, weight)| weight).sum());
        for (fault, weight) in mix {
            if roll < weight {
                return fault;
            }
            roll -= weight;
        }
        unreachable!("the roll is below the total weight")
    }
}

/// A process killed when dropped (continued first, should it be stopped).
struct Process(Child);

impl Process {
    fn pid(&self) -> Pid {
        Pid::from_raw(self.0.id() as i32)
    }

    fn signal(&self, signal: Signal) {
        let _ = kill(self.pid(), signal);
    }

    /// Stops the process with SIGTERM, waiting up to `timeout`; whether it exited in time.
    fn terminate(mut self, timeout: Duration) -> bool {
        self.signal(Signal::SIGCONT);
        self.signal(Signal::SIGTERM);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.0.try_wait().unwrap().is_some() {
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

/// A tmpfs mounted for the master's disk, unmounted when dropped.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// One slave: its process while it runs, and when it is to be started again or continued.
struct Slave {
    name: &'static str,
    key: ClientKey,
    process: Option<Process>,
    restart_at: Option<Instant>,
    continue_at: Option<Instant>,
}

struct Farm {
    // Processes first: they are dropped before the disk they use.
    master: Option<Process>,
    slaves: Vec<Slave>,
    disk: Option<Mount>,
    dir: tempfile::TempDir,
    db: TestDb,
    pypi: FakePypi,
    slave_port: u16,
    file_port: u16,
}

impl Farm {
    fn new() -> Farm {
        let db = TestDb::new();
        migrate::upgrade_blocking(&db.owner_url(), APP_ROLE).unwrap();
        db.execute(&format!("INSERT INTO build_abis (abi_tag, python_version) VALUES ('{}', 311)", local_abi()));
        let dir = shared_dir();
        let disk_dir = dir.path().join("disk");
        std::fs::create_dir(&disk_dir).unwrap();
        // As root the master's disk is a small tmpfs that a fault can fill.
        let disk = is_root().then(|| {
            let status = Command::new("mount").args(["-t", "tmpfs", "-o"]).arg(format!("size={DISK_SIZE},mode=1777")).arg("tmpfs").arg(&disk_dir).status().unwrap();
            assert!(status.success(), "cannot mount a tmpfs at {}", disk_dir.display());
            Mount(disk_dir.clone())
        });
        std::fs::write(dir.path().join("builder.py"), BUILDER).unwrap();
        let state = disk_dir.join("state");
        let slaves = SLAVES
            .iter()
            .map(|name| {
                let key = ClientKey::authorized(&state, &dir.path().join(format!("{name}.key")), Role::Slave, name).for_unprivileged();
                Slave { name, key, process: None, restart_at: None, continue_at: None }
            })
            .collect();
        Farm { master: None, slaves, disk, dir, db, pypi: FakePypi::start(), slave_port: free_port(), file_port: free_port() }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn www(&self) -> PathBuf {
        self.path("disk/www")
    }

    /// The options the master and piw-check share.
    fn master_args(&self) -> Vec<String> {
        let run = self.path("run");
        vec![
            "--config".into(),
            "/dev/null".into(),
            "--dsn".into(),
            self.db.app_url(),
            "--output-path".into(),
            self.www().display().to_string(),
            "--state-dir".into(),
            self.path("disk/state").display().to_string(),
            "--control-queue".into(),
            format!("ipc://{}/control", run.display()),
            "--status-queue".into(),
            format!("ipc://{}/status", run.display()),
            "--import-queue".into(),
            format!("ipc://{}/import", run.display()),
            "--logger-queue".into(),
            format!("ipc://{}/logger", run.display()),
            "--slave-queue".into(),
            format!("tcp://127.0.0.1:{}", self.slave_port),
            "--file-queue".into(),
            format!("tcp://127.0.0.1:{}", self.file_port),
            "--pypi-xmlrpc".into(),
            self.pypi.xmlrpc_url(),
            "--pypi-json".into(),
            self.pypi.json_url(),
            "--pypi-simple".into(),
            self.pypi.simple_url(),
        ]
    }

    fn start_master(&mut self) {
        let log = OpenOptions::new().create(true).append(true).open(self.path("master.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_piw-master"))
            .args(self.master_args())
            .args(["--pypi-interval", "200ms", "--queue-debounce", "200ms", "--rewrite-window", "200ms", "--oracles", "2"])
            .args(["--retry-backoff", "500ms"])
            .env("PIW_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.master = Some(Process(child));
    }

    fn start_slave(&mut self, index: usize) {
        let root = self.path(self.slaves[index].name);
        std::fs::create_dir_all(&root).unwrap();
        std::fs::set_permissions(&root, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
        let command = format!(
            "{{python}} -I -S {} {} {{package}} {{version}} {{wheel_dir}} {{index_url}}",
            self.path("builder.py").display(),
            self.path("build-pids").display()
        );
        let log = OpenOptions::new().create(true).append(true).open(self.path(&format!("{}.log", self.slaves[index].name))).unwrap();
        let slave = &mut self.slaves[index];
        let child = unprivileged(&program("piw-slave"))
            .args(["--config", "/dev/null", "--master", "127.0.0.1"])
            .arg("--slave-queue")
            .arg(format!("tcp://127.0.0.1:{}", self.slave_port))
            .arg("--file-queue")
            .arg(format!("tcp://127.0.0.1:{}", self.file_port))
            .arg("--build-root")
            .arg(&root)
            .args(["--build-command", &command])
            .args(["--build-timeout", "30s", "--busy-interval", "1s", "--sleep-interval", "1s", "--upload-timeout", "4s"])
            .arg("--busy-timeout")
            .arg(format!("{}s", BUSY_TIMEOUT.as_secs()))
            .args(["--master-timeout", "5s", "--reconnect-interval", "1s", "--min-free-disk", "0", "--min-free-memory", "0"])
            .args(slave.key.args())
            .env("HOME", &root)
            .env("PIW_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        slave.process = Some(Process(child));
        slave.restart_at = None;
    }

    /// Starts slaves whose restart is due and continues those whose stop is over.
    fn tend_slaves(&mut self, now: Instant) {
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
                if let Some(process) = &slave.process {
                    process.signal(Signal::SIGCONT);
                }
                slave.continue_at = None;
            }
        }
    }

    /// Whether slave `index` is building now, and whether its wheel is made (it is then being
    /// sent, or about to be).
    fn build_state(&self, index: usize) -> Option<bool> {
        let root = self.path(self.slaves[index].name);
        let builds: Vec<PathBuf> = std::fs::read_dir(&root)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|entry| entry.file_name().to_string_lossy().starts_with("piw-build-"))
            .map(|entry| entry.path())
            .collect();
        if builds.is_empty() {
            return None;
        }
        Some(builds.iter().any(|build| has_wheel(build, 3)))
    }

    /// SIGKILLs a running slave that is building (`uploading`: whose wheel is made) within 15 s,
    /// to be started again shortly; whether one was found.
    fn kill_slave_when(&mut self, dice: &mut Dice, uploading: bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            let running = |slave: &Slave| slave.process.is_some() && slave.continue_at.is_none();
            let victim = (0..self.slaves.len()).find(|&i| running(&self.slaves[i]) && self.build_state(i) == Some(uploading));
            if let Some(index) = victim {
                let slave = &mut self.slaves[index];
                slave.process.take().unwrap().signal(Signal::SIGKILL);
                slave.restart_at = Some(Instant::now() + dice.millis(200, 2000));
                return true;
            }
            self.tend_slaves(Instant::now());
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    /// Fills the master's disk, holds it full for `hold`, then frees it.
    fn fill_disk(&self, hold: Duration) {
        use std::io::Write;
        let ballast = self.path("disk/ballast");
        let mut file = std::fs::File::create(&ballast).unwrap();
        let block = vec![0xa5u8; 1 << 20];
        loop {
            if let Err(e) = file.write_all(&block) {
                assert_eq!(e.raw_os_error(), Some(nix::libc::ENOSPC), "filling the disk: {e}");
                break;
            }
        }
        // The last partial block too, so that not even a page fits.
        let _ = file.write_all(&block[..4096]);
        std::thread::sleep(hold);
        std::fs::remove_file(&ballast).unwrap();
    }

    fn master_running(&mut self) -> bool {
        self.master.as_mut().is_some_and(|m| m.0.try_wait().unwrap().is_none())
    }

    /// `package version status failure` of every build.
    fn builds(&self) -> Vec<(String, String, String, String)> {
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
}

impl Drop for Farm {
    /// A failed campaign keeps its logs in the target directory, for the replay.
    fn drop(&mut self) {
        if std::thread::panicking() {
            let kept = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fault-campaign");
            let _ = std::fs::create_dir_all(&kept);
            for entry in std::fs::read_dir(self.dir.path()).into_iter().flatten().flatten() {
                if entry.path().extension().is_some_and(|ext| ext == "log") {
                    let _ = std::fs::copy(entry.path(), kept.join(entry.file_name()));
                }
            }
            eprintln!("fault campaign: the logs are kept in {}", kept.display());
        }
    }
}

fn has_wheel(dir: &Path, depth: u32) -> bool {
    std::fs::read_dir(dir).into_iter().flatten().flatten().any(|entry| {
        let path = entry.path();
        path.extension().is_some_and(|ext| ext == "whl") || (depth > 0 && path.is_dir() && has_wheel(&path, depth - 1))
    })
}

fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| !stat.contains(") Z "))
}

/// Processes whose command line names `dir`.
fn processes_naming(dir: &Path) -> Vec<String> {
    let needle = dir.display().to_string();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().chars().all(|c| c.is_ascii_digit()))
        .filter_map(|entry| {
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            let pid: i32 = entry.file_name().to_string_lossy().parse().ok()?;
            (cmdline.contains(&needle) && alive(pid)).then(|| format!("{pid}: {cmdline}"))
        })
        .collect()
}

/// A release of the campaign and whether it builds.
struct Release {
    package: String,
    version: String,
    builds: bool,
}

fn add_release(farm: &Farm, dice: &mut Dice, number: usize) -> Release {
    let package = format!("camp-{number:04}");
    let version = format!("1.{}", dice.below(20));
    let builds = dice.below(FAILING_ONE_IN) != 0;
    let seconds = dice.millis(300, 1500).as_secs_f64();
    let size = 100_000 + dice.below(2_900_000);
    let outcome = if builds { "wheel" } else { "fail" };
    farm.pypi.create_package(&package, None);
    farm.pypi.add_source(&package, &version, format!("seconds={seconds} size={size} outcome={outcome}\n").into_bytes());
    Release { package, version, builds }
}

#[test]
fn a_farm_under_a_hundred_random_faults_builds_every_release_once_and_loses_nothing() {
    let faults: usize = std::env::var("PIW_CAMPAIGN_FAULTS").ok().and_then(|v| v.parse().ok()).unwrap_or(SHORT_FORM);
    let seed: u64 = std::env::var("PIW_CAMPAIGN_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64);
    eprintln!("fault campaign: seed {seed}, {faults} faults (replay with PIW_CAMPAIGN_SEED={seed} PIW_CAMPAIGN_FAULTS={faults})");
    let started = Instant::now();
    let mut dice = Dice(seed);
    let mut farm = Farm::new();
    let disk = farm.disk.is_some();
    if !disk {
        eprintln!("fault campaign: not root, so no full-disk faults (the master's disk cannot be a tmpfs)");
    }
    let mut releases: Vec<Release> = (0..10).map(|n| add_release(&farm, &mut dice, n)).collect();
    farm.start_master();
    for index in 0..farm.slaves.len() {
        farm.start_slave(index);
    }

    let mut injected: BTreeMap<Fault, usize> = BTreeMap::new();
    let mut missed = 0;
    let mut master_exits = 0;
    while injected.values().sum::<usize>() < faults {
        farm.tend_slaves(Instant::now());
        if !farm.master_running() {
            // The master stopped on its own: the campaign goes on, but reports it.
            master_exits += 1;
            farm.start_master();
        }
        // Releases keep arriving, so there is always something to build.
        if injected.values().sum::<usize>() % 2 == 0 {
            let number = releases.len();
            releases.push(add_release(&farm, &mut dice, number));
        }
        let fault = Fault::draw(&mut dice, disk);
        let done = match fault {
            Fault::KillSlaveMidBuild => farm.kill_slave_when(&mut dice, false),
            Fault::KillSlaveMidUpload => farm.kill_slave_when(&mut dice, true),
            Fault::KillMaster => {
                farm.master.take().unwrap().signal(Signal::SIGKILL);
                std::thread::sleep(dice.millis(0, 1000));
                farm.start_master();
                true
            }
            Fault::TerminateDatabaseConnections => farm.db.terminate_connections() > 0,
            Fault::FullDisk => {
                farm.fill_disk(dice.millis(300, 3000));
                true
            }
            Fault::PypiErrors => {
                let failure = [Failure::Status(500), Failure::Status(503), Failure::Status(429), Failure::Disconnect][dice.below(4) as usize];
                farm.pypi.fail_next(1 + dice.below(4) as usize, failure);
                true
            }
            Fault::PypiStall => {
                farm.pypi.fail_next(1, Failure::Timeout(dice.millis(1000, 6000)));
                true
            }
            Fault::StopSlave => {
                let running: Vec<usize> = (0..farm.slaves.len()).filter(|&i| farm.slaves[i].process.is_some() && farm.slaves[i].continue_at.is_none()).collect();
                match running.is_empty() {
                    true => false,
                    false => {
                        let slave = &mut farm.slaves[running[dice.below(running.len() as u64) as usize]];
                        slave.process.as_ref().unwrap().signal(Signal::SIGSTOP);
                        // Sometimes past the busy timeout, so that the master gives its build up.
                        slave.continue_at = Some(Instant::now() + dice.millis(500, 2 * BUSY_TIMEOUT.as_millis() as u64));
                        true
                    }
                }
            }
        };
        match done {
            true => *injected.entry(fault).or_default() += 1,
            false => missed += 1,
        }
        std::thread::sleep(dice.millis(50, 600));
    }
    let faults_took = started.elapsed();

    // The faults end: every slave runs again, and the farm is given time to finish.
    farm.pypi.clear_failures();
    for slave in &mut farm.slaves {
        slave.restart_at = slave.restart_at.map(|_| Instant::now());
        slave.continue_at = slave.continue_at.map(|_| Instant::now());
    }
    farm.tend_slaves(Instant::now());
    let deadline = Instant::now() + Duration::from_secs(300 + faults as u64 / 2);
    loop {
        farm.tend_slaves(Instant::now());
        if !farm.master_running() {
            master_exits += 1;
            farm.start_master();
        }
        let built: HashMap<(String, String), usize> = farm.builds().into_iter().fold(HashMap::new(), |mut seen, (package, version, _, _)| {
            *seen.entry((package, version)).or_default() += 1;
            seen
        });
        let waiting: Vec<String> =
            releases.iter().filter(|r| !built.contains_key(&(r.package.clone(), r.version.clone()))).map(|r| format!("{} {}", r.package, r.version)).collect();
        if waiting.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "seed {seed}: {} releases never built: {waiting:?}",
            waiting.len()
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // Every release is built exactly once, as its source says; every wheel is published and
    // linked from its project's simple page.
    let builds = farm.builds();
    let mut counts: HashMap<(String, String), Vec<(String, String)>> = HashMap::new();
    for (package, version, status, failure) in &builds {
        counts.entry((package.clone(), version.clone())).or_default().push((status.clone(), failure.clone()));
    }
    for release in &releases {
        let recorded = &counts[&(release.package.clone(), release.version.clone())];
        let expected = if release.builds { ("t".to_string(), "-".to_string()) } else { ("f".to_string(), "build".to_string()) };
        assert_eq!(recorded, &vec![expected], "seed {seed}: the builds of {} {}", release.package, release.version);
    }
    assert_eq!(builds.len(), releases.len(), "seed {seed}: builds of releases the campaign never made: {builds:?}");
    let files = farm.db.column("SELECT b.package || ' ' || f.filename FROM files f JOIN builds b USING (build_id)");
    assert_eq!(files.len(), releases.iter().filter(|r| r.builds).count(), "seed {seed}: {files:?}");
    for row in files.iter().flatten() {
        let (package, filename) = row.split_once(' ').unwrap();
        let dir = farm.www().join("simple").join(package);
        support::eventually(&format!("{filename} on its simple page"), Duration::from_secs(30), || {
            std::fs::read_to_string(dir.join("index.html")).is_ok_and(|page| page.contains(filename))
        });
        assert!(dir.join(filename).is_file(), "seed {seed}: {filename} is recorded but not published");
    }

    // The farm stops cleanly and leaves no process behind; the tree and the records agree.
    for slave in &mut farm.slaves {
        if let Some(process) = slave.process.take() {
            assert!(process.terminate(Duration::from_secs(30)), "seed {seed}: {} did not stop on SIGTERM", slave.name);
        }
    }
    let master = farm.master.take().unwrap();
    assert!(master.terminate(Duration::from_secs(30)), "seed {seed}: the master did not stop on SIGTERM");
    let build_pids: Vec<i32> = std::fs::read_to_string(farm.path("build-pids")).unwrap_or_default().lines().filter_map(|l| l.parse().ok()).collect();
    support::eventually("every build process to end", Duration::from_secs(10), || build_pids.iter().all(|&pid| !alive(pid)));
    assert_eq!(processes_naming(farm.dir.path()), Vec::<String>::new(), "seed {seed}: processes left behind");
    let check = Command::new(env!("CARGO_BIN_EXE_piw-check")).args(farm.master_args()).output().unwrap();
    let said = String::from_utf8_lossy(&check.stdout).to_string() + &String::from_utf8_lossy(&check.stderr);
    assert!(check.status.success(), "seed {seed}: piw-check found something: {said}");

    let log = std::fs::read_to_string(farm.path("master.log")).unwrap_or_default();
    let retried = log.lines().filter(|line| line.contains("not recorded, to be built again")).count();
    let failed = releases.iter().filter(|r| !r.builds).count();
    eprintln!(
        "fault campaign: seed {seed}: {} faults injected in {:.0?} ({missed} draws found no target): {}",
        injected.values().sum::<usize>(),
        faults_took,
        injected.iter().map(|(fault, n)| format!("{fault:?} {n}")).collect::<Vec<_>>().join(", ")
    );
    eprintln!(
        "fault campaign: {} releases: {} built once, {failed} failed once as the package's; {retried} builds given up as infrastructure failures and built again; master exits on its own: {master_exits}; piw-check: {}; {:.0?} in all",
        releases.len(),
        releases.len() - failed,
        said.trim(),
        started.elapsed()
    );
    assert_eq!(master_exits, 0, "seed {seed}: the master stopped on its own (see its log)");
}
