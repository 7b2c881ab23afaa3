//! The build pipeline end to end, timed (run with `cargo bench -p piwheels-master --bench
//! pipeline`, after `cargo build --release --workspace --bins` and with the test Python of
//! `scripts/setup-lib.sh`'s `ensure_test_python` first on PATH).
//!
//! A real piw-master follows the fake PyPI and feeds real piw-slaves, run as an unprivileged
//! user, whose build command is a small Python script that writes a tiny valid pure-Python
//! wheel at once. For 1, 4 and 16 slaves in turn, the bench
//!
//! 1. starts the slaves and, once the master knows them all, tells the master to put them to
//!    sleep (a slave command);
//! 2. registers `BENCH_RELEASES` (default 200) new releases on the fake PyPI and waits until
//!    the master has recorded them all and its queue has had time to take them in; the master's
//!    CPU over this phase is the feed's, reported per release;
//! 3. measures the master's CPU while nothing happens for three seconds (sleeping slaves
//!    still ask for work, the feed still polls): the idle rate, from the threads'
//!    `schedstat`, which is finer than the clock ticks of `stat`;
//! 4. wakes the slaves and waits until every release has a build recorded and its simple page
//!    written, reading CPU times before and after.
//!
//! Figures per round:
//!
//! - **builds/s**: the releases divided by the time from the first build command's start
//!   (written by the script into a side file) to the last `builds.built_at`;
//! - **master CPU per build**: utime + stime of the piw-master process (all its threads) from
//!   `/proc/<pid>/stat`, before and after step 4, over the builds; also per thread (each task
//!   is a named thread);
//! - **PostgreSQL CPU per build**: the same for the server processes of the master's own
//!   connections (the oracles'), found in `pg_stat_activity`;
//! - **slave CPU per build**: the builder processes' own utime + stime (fields 14 and 15,
//!   which leave out their children); and as the **launcher**, their resident launchers' own
//!   and children's CPU (the forked build launchers and the commands they ran) with the
//!   builders' children's (fields 16 and 17: any `ldd`), less the build commands' own CPU as
//!   the launchers recorded it in `builds.cpu_time`: what the launcher costs;
//! - **farm CPU per build**: master + PostgreSQL + slave + launcher, all but the commands;
//! - **slave memory**: the proportional set size (`/proc/PID/smaps_rollup`) of each slave's
//!   processes once its builds are done (host, builders, resident launchers), per slave;
//! - **database requests per build**, by request (with metrics on): from the master's
//!   `piwheels_oracle_requests_total` before and after the builds;
//! - **latency**: from the moment the build command finished (the script's last act is to
//!   write the time into its side file) to `builds.built_at`, the start of the transaction
//!   that recorded the build. It covers the command's exit, the launcher's report, the
//!   slave's inspection of the wheel, `Built`, the file juggler's `Expect`, the upload, the
//!   verification (with its fsyncs) and the recording. Both times come from the same clock.
//!   The slave's log line `built <package> <version> in ...`, written once it has inspected
//!   the wheel, splits it in two: the slave's part and the rest.
//!
//! The master runs with its production intervals (feed every 10 s, queue debounce 2 s, page
//! rewrite window 1 s, stats every 10 s): what it does per build depends on them. The slaves
//! ask again one to one and a half seconds after a `Sleep`. `BENCH_SLAVES` (default `1,4,16`)
//! chooses the rounds.
//!
//! `BENCH_AUTH` chooses how the slaves' sockets are secured: `curve` (CurveZMQ, each slave
//! with its own authorized key, as a real farm runs), `plain` (`--no-auth`), or both,
//! comma-separated (the default, `curve,plain`): each mode gets a farm of its own, and the
//! rounds alternate between them, so that both meet the same moments of the machine's load.
//!
//! `BENCH_BUILDERS` (say `1,2,4`) runs one host instead: each round starts a single piw-slave
//! with `--builders N` (builders per host, where `BENCH_SLAVES` is hosts of one builder);
//! `BENCH_BUILD_TIME` (seconds, default 0) is how long each build command waits before it
//! writes its wheel, a fixed build time in place of a compiler's. `BENCH_METRICS` (`on`, `off`
//! or both, comma-separated; default `on`) runs the master answering Prometheus on a local
//! port (each round ends with a scrape) or not; like `BENCH_AUTH`, each choice gets a farm of
//! its own and the rounds alternate between them.
//!
//! `BENCH_COUNT_STATEMENTS=1` has the master log every statement its oracles run (sqlx's
//! `sqlx::query` events) and counts them per build, by their first words; the logging costs
//! CPU of its own, so its CPU figures are not comparable with other runs.
//!
//! `BENCH_SLAVE`, a path, runs that piw-slave binary instead of the workspace's (an older
//! build, to compare).
//!
//! `BENCH_PROFILE`, a command, is run with the master's pid as its last argument while the
//! builds run, and stopped with SIGINT after the last one (for instance `strace -c -f -o
//! /tmp/master.strace -p`); its own cost then inflates the figures of that run.
//! `BENCH_MASTER_WRAPPER`, a command, runs the master under it: `valgrind --tool=callgrind
//! --instr-atstart=no`, say, with a `BENCH_PROFILE` script that runs `callgrind_control -i on`
//! and, on SIGINT, `-i off` and `-d`.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use piwheels_common::protocols::{ControlReply, ControlRequest, SlaveAction, SlaveTarget, Versions};
use piwheels_common::transport::Client;
use piwheels_master::db::migrate;
use piwheels_testsupport::db::{APP_ROLE, TestDb};
use piwheels_testsupport::free_port;
use piwheels_common::keys::Role;
use piwheels_testsupport::installers::local_abi;
use piwheels_testsupport::keys::ClientKey;
use piwheels_testsupport::programs::{program, shared_dir, unprivileged};
use piwheels_testsupport::pypi::{FakePypi, sdist};

/// The build command: waits the build time it is given (a stand-in for a compiler), writes
/// `<name>-<version>-py3-none-any.whl` with METADATA, WHEEL and a RECORD of correct hashes,
/// then `<start> <end>` (seconds since the epoch) into `<times>/<package>`.
const MAKE_WHEEL: &str = r#"import sys, time
start = time.time()
import base64, hashlib, os, zipfile
times, build_time, name, version, wheel_dir = sys.argv[1:6]
time.sleep(float(build_time))
dist = name.replace("-", "_").replace(".", "_")
info = f"{dist}-{version}.dist-info"
files = [
    (f"{dist}/__init__.py", b""),
    (f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode()),
    (f"{info}/WHEEL", b"Wheel-Version: 1.0\nGenerator: piwheels-bench\nRoot-Is-Purelib: true\nTag: py3-none-any\n"),
]
record = "".join(
    f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},{len(data)}\n"
    for path, data in files
) + f"{info}/RECORD,,\n"
files.append((f"{info}/RECORD", record.encode()))
with zipfile.ZipFile(os.path.join(wheel_dir, f"{dist}-{version}-py3-none-any.whl"), "w") as wheel:
    for path, data in files:
        wheel.writestr(path, data)
with open(os.path.join(times, name), "w") as out:
    out.write(f"{start} {time.time()}\n")
"#;

/// How long the master is watched doing nothing, for its idle rate.
const IDLE_WINDOW: Duration = Duration::from_secs(3);
/// How long after the last release reaches the database the queue is given to take it in
/// (the architect's default debounce is 2 s).
const QUEUE_SETTLE: Duration = Duration::from_secs(4);

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Clock ticks per second, the unit of `/proc/<pid>/stat`'s times.
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(100.0)
}

/// CPU seconds of a process or thread, from its `/proc/.../stat` file.
#[derive(Debug, Clone, Copy, Default)]
struct Times {
    /// utime (field 14).
    user: f64,
    /// stime (field 15).
    system: f64,
    /// cutime + cstime (fields 16 and 17): children waited for.
    children: f64,
}

impl Times {
    fn own(&self) -> f64 {
        self.user + self.system
    }
}

fn stat_cpu(path: &Path, ticks: f64) -> Option<Times> {
    let stat = std::fs::read_to_string(path).ok()?;
    // The command name, in parentheses, may hold spaces: fields are counted after it.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<i64> = rest.split_whitespace().map(|f| f.parse().unwrap_or(0)).collect();
    // `rest` starts at field 3 (the state), so field n is fields[n - 3].
    let at = |n: usize| fields.get(n - 3).copied().unwrap_or(0) as f64 / ticks;
    Some(Times { user: at(14), system: at(15), children: at(16) + at(17) })
}

/// CPU seconds of each thread of `pid`, by thread name (threads of one name summed): user and
/// system.
fn thread_cpu(pid: u32, ticks: f64) -> BTreeMap<String, (f64, f64)> {
    let mut threads = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return threads };
    for task in tasks.flatten() {
        let name = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default().trim().to_string();
        if let Some(times) = stat_cpu(&task.path().join("stat"), ticks) {
            let entry = threads.entry(name).or_insert((0.0, 0.0));
            entry.0 += times.user;
            entry.1 += times.system;
        }
    }
    threads
}

/// Nanoseconds on CPU of the live threads of `pid`, from `/proc/<pid>/task/*/schedstat`: finer
/// than clock ticks, for short windows without threads that come and go.
fn on_cpu(pid: u32) -> f64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0.0 };
    let nanos: u64 = tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|text| text.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    nanos as f64 / 1e9
}

/// A process killed when dropped.
struct Process(Child);

impl Process {
    fn pid(&self) -> u32 {
        self.0.id()
    }

    /// SIGTERM, then up to `timeout` to exit.
    fn stop(&mut self, timeout: Duration) {
        let _ = kill(Pid::from_raw(self.pid() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + timeout;
        while self.0.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// CPU times read at one moment.
#[derive(Debug, Clone)]
struct Sample {
    master: Times,
    master_threads: BTreeMap<String, (f64, f64)>,
    /// The master's live threads' CPU from schedstat.
    master_on_cpu: f64,
    /// Each PostgreSQL server process of the master's connections.
    postgres: HashMap<u32, f64>,
    /// Each slave.
    slaves: HashMap<u32, Times>,
    /// Each builder's resident launcher, once it has one.
    launchers: HashMap<u32, Times>,
    /// The database requests the oracles answered, by request (with metrics on).
    requests: BTreeMap<String, f64>,
    /// The length of the master's log.
    log_length: u64,
    at: Instant,
}

/// What one round measured.
#[derive(Debug)]
struct Round {
    /// How the slaves' sockets were secured.
    mode: &'static str,
    /// Whether the master answered Prometheus.
    metrics: bool,
    /// Whether the builders ran on one host.
    one_host: bool,
    slaves: usize,
    builds: usize,
    seconds: f64,
    feed_master_ms: f64,
    feed_postgres_ms: f64,
    idle_master_ms_per_s: f64,
    /// Proportional set size per slave, MB, after the builds: host, builders, resident launchers.
    slave_memory: [f64; 3],
    master_ms: f64,
    master_system_ms: f64,
    postgres_ms: f64,
    slave_own_ms: f64,
    launcher_ms: f64,
    command_ms: f64,
    latency_ms: Vec<f64>,
    /// Database requests per build, by request.
    requests: BTreeMap<String, f64>,
    /// Statements per build, in all and by their first words, when counted.
    statements: Option<(f64, Vec<(String, f64)>)>,
    /// The median of the build's wall time as the slave measured it around the launcher.
    duration_ms: f64,
    /// The median of the build command's wall time, from its first line to its last.
    command_wall_ms: f64,
    /// The median latency from the command's end to the slave's log line saying it built the
    /// release (after it inspected the wheel).
    in_slave_ms: f64,
    /// The median latency from that log line to the record.
    after_slave_ms: f64,
    /// Each thread's user and system CPU.
    threads: Vec<(String, f64, f64)>,
}

struct Farm {
    dir: tempfile::TempDir,
    db: TestDb,
    pypi: FakePypi,
    abi: String,
    ticks: f64,
    slave_port: u16,
    file_port: u16,
    master: Process,
    control: Client<ControlRequest, ControlReply>,
    _zmq: zmq::Context,
    /// Whether the slave and file sockets are authenticated (CurveZMQ).
    curve: bool,
    /// Each slave's key, by its name, authorized before the master starts.
    keys: HashMap<String, ClientKey>,
    /// Where the master answers Prometheus, if it does.
    metrics_port: Option<u16>,
    /// What the build command waits, in seconds.
    build_time: f64,
}

impl Farm {
    /// A farm whose slaves will be named `names`.
    fn start(curve: bool, metrics: bool, build_time: f64, names: &[String]) -> Farm {
        let db = TestDb::new();
        migrate::upgrade_blocking(&db.owner_url(), APP_ROLE).unwrap();
        let abi = local_abi();
        let python_version = abi.trim_start_matches("cp");
        db.execute(&format!("INSERT INTO build_abis (abi_tag, python_version) VALUES ('{abi}', {python_version})"));
        let dir = shared_dir();
        let times = dir.path().join("times");
        std::fs::create_dir(&times).unwrap();
        std::fs::set_permissions(&times, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
        std::fs::write(dir.path().join("make_wheel.py"), MAKE_WHEEL).unwrap();
        let pypi = FakePypi::start();
        let (slave_port, file_port) = (free_port(), free_port());
        let metrics_port = metrics.then(free_port);
        let path = |name: &str| dir.path().join(name);
        let keys = match curve {
            true => names
                .iter()
                .map(|name| {
                    let key = ClientKey::authorized(&path("state"), &path(&format!("{name}.key")), Role::Slave, name);
                    (name.clone(), key.for_unprivileged())
                })
                .collect(),
            false => HashMap::new(),
        };
        let log = std::fs::File::create(path("master.log")).unwrap();
        let master = env!("CARGO_BIN_EXE_piw-master");
        let wrapper = std::env::var("BENCH_MASTER_WRAPPER").unwrap_or_default();
        let mut words = wrapper.split_whitespace();
        let mut command = match words.next() {
            Some(program) => {
                let mut command = Command::new(program);
                command.args(words).arg(master);
                command
            }
            None => Command::new(master),
        };
        let child = command
            .args(["--config", "/dev/null"])
            .arg("--dsn")
            .arg(db.app_url())
            .arg("--output-path")
            .arg(path("www"))
            .arg("--state-dir")
            .arg(path("state"))
            .arg("--control-queue")
            .arg(format!("ipc://{}/run/control", dir.path().display()))
            .arg("--status-queue")
            .arg(format!("ipc://{}/run/status", dir.path().display()))
            .arg("--import-queue")
            .arg(format!("ipc://{}/run/import", dir.path().display()))
            .arg("--logger-queue")
            .arg(format!("ipc://{}/run/logger", dir.path().display()))
            .arg("--slave-queue")
            .arg(format!("tcp://127.0.0.1:{slave_port}"))
            .arg("--file-queue")
            .arg(format!("tcp://127.0.0.1:{file_port}"))
            .arg("--pypi-xmlrpc")
            .arg(pypi.xmlrpc_url())
            .arg("--pypi-json")
            .arg(pypi.json_url())
            .arg("--pypi-simple")
            .arg(pypi.simple_url())
            .args(if curve { &[][..] } else { &["--no-auth"][..] })
            .args(metrics_port.map(|port| format!("--metrics-listen=127.0.0.1:{port}")))
            .env_remove("PIW_LOG")
            .envs(counting_statements().then_some(("PIW_LOG", "info,sqlx::query=debug")))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let master = Process(child);
        let zmq = zmq::Context::new();
        let endpoint = format!("ipc://{}/run/control", dir.path().display());
        let deadline = Instant::now() + Duration::from_secs(if wrapper.is_empty() { 30 } else { 600 });
        let control = loop {
            let client = Client::connect(&zmq, &endpoint, None).unwrap();
            let hello = ControlRequest::Hello { versions: Versions::current(), client: "pipeline-bench".into() };
            match client.request(&hello, Duration::from_millis(500)) {
                Ok(ControlReply::Welcome { .. }) => break client,
                Ok(other) => panic!("the master refused the bench: {other:?}"),
                Err(e) => assert!(Instant::now() < deadline, "the master never answered (see {}): {e}", path("master.log").display()),
            }
        };
        Farm { dir, db, pypi, abi, ticks: clock_ticks(), slave_port, file_port, master, control, _zmq: zmq, curve, keys, metrics_port, build_time }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A piw-slave running `builders` builders.
    fn start_slave(&self, name: &str, builders: usize) -> Process {
        let root = self.path(name);
        std::fs::create_dir_all(&root).unwrap();
        std::fs::set_permissions(&root, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
        let command = format!(
            "{{python}} -I -S {} {} {} {{package}} {{version}} {{wheel_dir}} {{source}}",
            self.path("make_wheel.py").display(),
            self.path("times").display(),
            self.build_time
        );
        let auth = match self.keys.get(name) {
            Some(key) => key.args(),
            None if !self.curve => vec!["--no-auth".into()],
            None => panic!("no key for slave {name}"),
        };
        let slave = std::env::var_os("BENCH_SLAVE").map_or_else(|| program("piw-slave"), PathBuf::from);
        let child = unprivileged(&slave)
            .args(["--config", "/dev/null", "--master", "127.0.0.1", "--label", name])
            .args(auth)
            .arg("--slave-queue")
            .arg(format!("tcp://127.0.0.1:{}", self.slave_port))
            .arg("--file-queue")
            .arg(format!("tcp://127.0.0.1:{}", self.file_port))
            .arg("--build-root")
            .arg(&root)
            .args(["--build-command", &command])
            .args(["--sleep-interval", "1s", "--reconnect-interval", "1s", "--min-free-disk", "0", "--min-free-memory", "0"])
            .args(["--builders", &builders.to_string()])
            .env("HOME", &root)
            .env_remove("PIW_LOG")
            .envs(counting_statements().then_some(("PIW_LOG", "info,sqlx::query=debug")))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.path(&format!("{name}.log"))).unwrap())
            .spawn()
            .unwrap();
        Process(child)
    }

    fn command(&self, request: ControlRequest) -> ControlReply {
        self.control.request(&request, Duration::from_secs(10)).expect("the master's control socket")
    }

    fn connected_slaves(&self) -> usize {
        let hello = ControlRequest::Hello { versions: Versions::current(), client: "pipeline-bench".into() };
        match self.command(hello) {
            ControlReply::Welcome { snapshot, .. } => snapshot.slaves.len(),
            other => panic!("unexpected answer to hello: {other:?}"),
        }
    }

    fn slaves(&self, action: SlaveAction) {
        let reply = self.command(ControlRequest::Slaves { target: SlaveTarget::All, action });
        assert_eq!(reply, ControlReply::Done, "{action:?} all slaves");
    }

    fn count(&self, sql: &str) -> usize {
        self.db.column(sql)[0].as_deref().unwrap_or("0").parse().unwrap()
    }

    fn wait_for(&self, what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while !done() {
            assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what} (master log: {})", self.path("master.log").display());
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// When each slave of the round logged `built <package> <version> in ...`, by package, in
    /// seconds since the epoch.
    fn built_lines(&self, names: &[String]) -> HashMap<String, f64> {
        let mut built = HashMap::new();
        for name in names {
            let log = std::fs::read_to_string(self.path(&format!("{name}.log"))).unwrap_or_default();
            for line in log.lines() {
                // A builder's lines carry its span (`builder{n=2}:`) before the message.
                let words: Vec<&str> = line.split_whitespace().filter(|word| !word.starts_with("builder{")).collect();
                let (Some(&time), Some(&"built"), Some(&package)) = (words.first(), words.get(2), words.get(3)) else {
                    continue;
                };
                if let Ok(time) = chrono::DateTime::parse_from_rfc3339(time) {
                    built.insert(package.to_string(), time.timestamp_micros() as f64 / 1e6);
                }
            }
        }
        built
    }

    /// CPU times now; `slaves` are the processes that build (the builders).
    fn sample(&self, slaves: &[u32]) -> Sample {
        let postgres_pids = self.db.column(&format!(
            "SELECT pid::text FROM pg_stat_activity WHERE datname = current_database() AND usename = '{APP_ROLE}'"
        ));
        let at = Instant::now();
        let pid = self.master.pid();
        let master = stat_cpu(Path::new(&format!("/proc/{pid}/stat")), self.ticks).expect("the master's /proc stat");
        let postgres = postgres_pids
            .into_iter()
            .flatten()
            .filter_map(|p| p.parse::<u32>().ok())
            .filter_map(|p| Some((p, stat_cpu(Path::new(&format!("/proc/{p}/stat")), self.ticks)?.own())))
            .collect();
        // A builder's children: its resident launcher (and any `ldd` of the moment).
        let launchers = slaves
            .iter()
            .flat_map(|builder| children(*builder))
            .filter_map(|p| Some((p, stat_cpu(Path::new(&format!("/proc/{p}/stat")), self.ticks)?)))
            .collect();
        let slaves = slaves
            .iter()
            .map(|pid| (*pid, stat_cpu(Path::new(&format!("/proc/{pid}/stat")), self.ticks).expect("a builder's /proc stat")))
            .collect();
        let requests = self.metrics_port.map(|port| oracle_requests(&scrape(port))).unwrap_or_default();
        let log_length = std::fs::metadata(self.path("master.log")).map_or(0, |meta| meta.len());
        Sample { master, master_threads: thread_cpu(pid, self.ticks), master_on_cpu: on_cpu(pid), postgres, slaves, launchers, requests, log_length, at }
    }

    /// A round of `slave_count` builders: as many hosts of one builder each, or with
    /// `one_host` one host running them all.
    fn round(&self, slave_count: usize, one_host: bool, releases: usize) -> Round {
        let prefix = format!("bench-{}{slave_count}-", if one_host { "b" } else { "s" });
        let like = format!("'{prefix}%'");
        let names: Vec<String> = match one_host {
            true => vec![host_name(slave_count)],
            false => (0..slave_count).map(|i| slave_name(slave_count, i)).collect(),
        };
        let per_host = if one_host { slave_count } else { 1 };
        let mut slaves: Vec<Process> = names.iter().map(|name| self.start_slave(name, per_host)).collect();
        self.wait_for("the slaves' hellos", Duration::from_secs(60), || self.connected_slaves() >= slave_count);
        self.slaves(SlaveAction::Sleep);
        // The builders: each host's children.
        let builders: Vec<u32> = slaves.iter().flat_map(|host| children(host.pid())).collect();
        assert_eq!(builders.len(), slave_count, "one builder per slave");

        // The feed: new releases on the fake PyPI, recorded by the master and queued.
        let before_feed = self.sample(&builders);
        for i in 0..releases {
            let name = format!("{prefix}{i:05}");
            self.pypi.create_package(&name, None);
            self.pypi.add_source(&name, "1.0", sdist::pure(&name, "1.0"));
        }
        self.wait_for("the releases in the database", Duration::from_secs(120 + releases as u64 / 5), || {
            self.count(&format!("SELECT count(*)::text FROM versions WHERE package LIKE {like}")) >= releases
        });
        std::thread::sleep(QUEUE_SETTLE);
        let after_feed = self.sample(&builders);
        std::thread::sleep(IDLE_WINDOW);
        let before = self.sample(&builders);

        // The builds, under the profiler if one is asked for.
        let profiler = std::env::var("BENCH_PROFILE").ok().map(|command| {
            let mut words = command.split_whitespace();
            let program = words.next().expect("BENCH_PROFILE: a command");
            let child = Command::new(program).args(words).arg(self.master.pid().to_string()).spawn().expect("BENCH_PROFILE's command");
            // Let it attach before the first build.
            std::thread::sleep(Duration::from_secs(2));
            child
        });
        self.slaves(SlaveAction::Wake);
        self.wait_for("the builds", Duration::from_secs(120 + releases as u64), || {
            self.count(&format!("SELECT count(*)::text FROM builds WHERE package LIKE {like}")) >= releases
        });
        // The pages the builds call for are part of their cost: a project gets its simple page
        // with its first file, up to a rewrite window after its build was recorded.
        let simple = self.path("www").join("simple");
        self.wait_for("the builds' pages", Duration::from_secs(60), || {
            (0..releases).all(|i| simple.join(format!("{prefix}{i:05}")).join("index.html").is_file())
        });
        let after = self.sample(&builders);
        // The slaves' memory once they are idle again: hosts, builders and resident launchers.
        let hosts: Vec<u32> = slaves.iter().map(Process::pid).collect();
        let residents: Vec<u32> = after.launchers.keys().copied().collect();
        let slave_memory = [hosts.as_slice(), builders.as_slice(), residents.as_slice()].map(|pids| pids.iter().map(|pid| pss_mb(*pid)).sum::<f64>() / hosts.len() as f64);
        if let Some(mut profiler) = profiler {
            let _ = kill(Pid::from_raw(profiler.id() as i32), Signal::SIGINT);
            let _ = profiler.wait();
        }
        for slave in &mut slaves {
            slave.stop(Duration::from_secs(15));
        }
        drop(slaves);
        self.wait_for("the slaves' goodbyes", Duration::from_secs(30), || self.connected_slaves() == 0);
        if let Some(port) = self.metrics_port {
            let figures = scrape(port);
            let recorded = format!("piwheels_builds_total{{abi=\"{}\",outcome=\"success\"}}", self.abi);
            assert!(figures.lines().any(|line| line.starts_with(&recorded)), "no builds in the master's figures:\n{figures}");
        }

        let failed = self.db.column(&format!(
            "SELECT concat_ws(' ', package, coalesce(failure, '-')) FROM builds WHERE package LIKE {like} AND NOT status"
        ));
        assert!(failed.is_empty(), "failed builds: {failed:?} (logs under {})", self.path("www").display());
        let files = self.count(&format!("SELECT count(*)::text FROM files f JOIN builds b USING (build_id) WHERE b.package LIKE {like}"));
        assert_eq!(files, releases, "every build published its wheel");

        // built_at and the build command's CPU time of every build.
        let rows = self.db.column(&format!(
            "SELECT concat_ws(' ', package, extract(epoch FROM built_at), extract(epoch FROM cpu_time), \
             extract(epoch FROM duration)) FROM builds WHERE package LIKE {like}"
        ));
        let mut first_start = f64::MAX;
        let mut last_recorded = f64::MIN;
        let mut command_cpu = 0.0;
        let mut latency_ms = Vec::new();
        let mut durations = Vec::new();
        let mut command_walls = Vec::new();
        let mut in_slave = Vec::new();
        let mut after_slave = Vec::new();
        let built = self.built_lines(&names);
        for row in rows.into_iter().flatten() {
            let mut fields = row.split(' ');
            let package = fields.next().unwrap();
            let mut numbers = fields.map(|f| f.parse::<f64>().unwrap());
            let (built_at, cpu, duration) = (numbers.next().unwrap(), numbers.next().unwrap(), numbers.next().unwrap());
            command_cpu += cpu;
            durations.push(duration * 1e3);
            let times = std::fs::read_to_string(self.path("times").join(package)).expect("the build command's side file");
            let mut times = times.split_whitespace().map(|t| t.parse::<f64>().unwrap());
            let (start, end) = (times.next().unwrap(), times.next().unwrap());
            first_start = first_start.min(start);
            last_recorded = last_recorded.max(built_at);
            latency_ms.push((built_at - end) * 1e3);
            command_walls.push((end - start) * 1e3);
            let logged = built[package];
            in_slave.push((logged - end) * 1e3);
            after_slave.push((built_at - logged) * 1e3);
        }
        for list in [&mut latency_ms, &mut durations, &mut command_walls, &mut in_slave, &mut after_slave] {
            list.sort_by(f64::total_cmp);
        }

        let n = releases as f64;
        let per_build = |seconds: f64| seconds * 1e3 / n;
        let postgres = |a: &Sample, b: &Sample| b.postgres.iter().filter_map(|(pid, t)| Some(t - a.postgres.get(pid)?)).sum::<f64>();
        let slave_own: f64 = after.slaves.iter().map(|(pid, t)| t.own() - before.slaves[pid].own()).sum();
        // The builders' children waited for, and their resident launchers' CPU with their
        // children's (the build launchers and the commands): a launcher not there before
        // started during the builds.
        let slave_children: f64 = after.slaves.iter().map(|(pid, t)| t.children - before.slaves[pid].children).sum::<f64>()
            + after.launchers.iter().map(|(pid, t)| t.own() + t.children - before.launchers.get(pid).map_or(0.0, |b| b.own() + b.children)).sum::<f64>();
        let requests: BTreeMap<String, f64> = after
            .requests
            .iter()
            .map(|(name, count)| (name.clone(), (count - before.requests.get(name).copied().unwrap_or(0.0)) / releases as f64))
            .filter(|(_, per_build)| *per_build > 0.0)
            .collect();
        let statements = counting_statements().then(|| self.statements_logged(before.log_length, after.log_length, releases));
        let mut threads: Vec<(String, f64, f64)> = after
            .master_threads
            .iter()
            .map(|(name, (user, system))| {
                let (user_before, system_before) = before.master_threads.get(name).copied().unwrap_or((0.0, 0.0));
                (name.clone(), per_build(user - user_before), per_build(system - system_before))
            })
            .filter(|(_, user, system)| user + system > 0.0)
            .collect();
        threads.sort_by(|a, b| (b.1 + b.2).total_cmp(&(a.1 + a.2)));
        Round {
            mode: mode_name(self.curve),
            metrics: self.metrics_port.is_some(),
            one_host,
            slaves: slave_count,
            builds: releases,
            seconds: last_recorded - first_start,
            feed_master_ms: per_build(after_feed.master.own() - before_feed.master.own()),
            feed_postgres_ms: per_build(postgres(&before_feed, &after_feed)),
            slave_memory,
            idle_master_ms_per_s: (before.master_on_cpu - after_feed.master_on_cpu) * 1e3 / (before.at - after_feed.at).as_secs_f64(),
            master_ms: per_build(after.master.own() - before.master.own()),
            master_system_ms: per_build(after.master.system - before.master.system),
            postgres_ms: per_build(postgres(&before, &after)),
            slave_own_ms: per_build(slave_own),
            launcher_ms: per_build(slave_children - command_cpu),
            command_ms: per_build(command_cpu),
            duration_ms: percentile(&durations, 0.5),
            command_wall_ms: percentile(&command_walls, 0.5),
            in_slave_ms: percentile(&in_slave, 0.5),
            after_slave_ms: percentile(&after_slave, 0.5),
            latency_ms,
            threads,
            requests,
            statements,
        }
    }

    /// The statements the oracles ran, as sqlx logged them between two lengths of the
    /// master's log: per build in all, and per build by the statement's first words.
    fn statements_logged(&self, from: u64, to: u64, releases: usize) -> (f64, Vec<(String, f64)>) {
        let log = std::fs::read(self.path("master.log")).expect("the master's log");
        let text = String::from_utf8_lossy(&log[from as usize..(to as usize).min(log.len())]).into_owned();
        let mut by_summary: BTreeMap<String, usize> = BTreeMap::new();
        let mut all = 0;
        // The log leaves out targets: sqlx's statement events are the lines with its fields.
        for line in text.lines().filter(|line| line.contains("summary=") && line.contains("rows_returned=")) {
            all += 1;
            let summary = line.split_once("summary=\"").map_or("?", |(_, rest)| rest.split('"').next().unwrap_or("?"));
            *by_summary.entry(summary.chars().take(60).collect()).or_default() += 1;
        }
        let n = releases as f64;
        let mut by_summary: Vec<(String, f64)> = by_summary.into_iter().map(|(summary, count)| (summary, count as f64 / n)).collect();
        by_summary.sort_by(|a, b| b.1.total_cmp(&a.1));
        (all as f64 / n, by_summary)
    }
}

/// Whether the master logs every statement it runs, to count them (`BENCH_COUNT_STATEMENTS=1`;
/// the logging costs CPU of its own, so this is for a run of its own).
fn counting_statements() -> bool {
    std::env::var("BENCH_COUNT_STATEMENTS").is_ok_and(|value| value == "1")
}

/// The name of slave `i` of a round of `count` slaves.
fn slave_name(count: usize, i: usize) -> String {
    format!("s{count}-{i}")
}

/// The name of the host of a round of `count` builders on one host.
fn host_name(count: usize) -> String {
    format!("b{count}")
}

/// The processes whose parent is `parent`.
fn children(parent: u32) -> Vec<u32> {
    let entries = std::fs::read_dir("/proc").expect("/proc");
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let after = stat.rfind(')').map_or("", |at| &stat[at + 1..]);
            after.split_whitespace().nth(1).and_then(|ppid| ppid.parse::<u32>().ok()) == Some(parent)
        })
        .collect()
}

/// A process's proportional set size in MB, from `/proc/PID/smaps_rollup` (0 when unreadable).
fn pss_mb(pid: u32) -> f64 {
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    let kib = rollup.lines().find_map(|line| line.strip_prefix("Pss:")?.trim().strip_suffix("kB")?.trim().parse::<f64>().ok());
    kib.unwrap_or(0.0) / 1024.0
}

/// `piwheels_oracle_requests_total` by request, from a scrape.
fn oracle_requests(figures: &str) -> BTreeMap<String, f64> {
    figures
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("piwheels_oracle_requests_total{request=\"")?;
            let (name, rest) = rest.split_once("\"}")?;
            Some((name.to_string(), rest.trim().parse().ok()?))
        })
        .collect()
}

/// The master's figures from its metrics endpoint.
fn scrape(port: u16) -> String {
    piwheels_testsupport::http_exchange(("127.0.0.1", port), "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").1
}

/// How a farm's slave sockets are secured, as the tables say it.
fn mode_name(curve: bool) -> &'static str {
    if curve { "curve" } else { "plain" }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// The comma-separated words of environment variable `name`, or of `default`.
fn env_list(name: &str, default: &str) -> Vec<String> {
    std::env::var(name).unwrap_or_else(|_| default.into()).split(',').map(|word| word.trim().to_string()).collect()
}

fn main() {
    let releases = env_number("BENCH_RELEASES", 200);
    let one_host = std::env::var_os("BENCH_BUILDERS").is_some();
    let counts: Vec<usize> = match one_host {
        true => env_list("BENCH_BUILDERS", ""),
        false => env_list("BENCH_SLAVES", "1,4,16"),
    }
    .iter()
    .map(|n| n.parse().expect("BENCH_SLAVES, BENCH_BUILDERS: numbers separated by commas"))
    .collect();
    let build_time: f64 = std::env::var("BENCH_BUILD_TIME").map_or(0.0, |t| t.parse().expect("BENCH_BUILD_TIME: seconds"));
    let metrics: Vec<bool> = env_list("BENCH_METRICS", "on")
        .iter()
        .map(|choice| match choice.as_str() {
            "on" => true,
            "off" => false,
            other => panic!("BENCH_METRICS: on, off or both comma-separated, not {other:?}"),
        })
        .collect();
    let modes: Vec<bool> = std::env::var("BENCH_AUTH")
        .unwrap_or_else(|_| "curve,plain".into())
        .split(',')
        .map(|mode| match mode.trim() {
            "curve" => true,
            "plain" => false,
            other => panic!("BENCH_AUTH: curve, plain or both comma-separated, not {other:?}"),
        })
        .collect();
    let names: Vec<String> = match one_host {
        true => counts.iter().map(|&count| host_name(count)).collect(),
        false => counts.iter().flat_map(|&count| (0..count).map(move |i| slave_name(count, i))).collect(),
    };
    let farms: Vec<Farm> = modes.iter().flat_map(|&curve| metrics.iter().map(move |&metrics| (curve, metrics))).map(|(curve, metrics)| Farm::start(curve, metrics, build_time, &names)).collect();
    for farm in &farms {
        println!(
            "{releases} releases per round, ABI {}, {} sockets, metrics {}, build time {build_time} s, files in {}",
            farm.abi,
            mode_name(farm.curve),
            if farm.metrics_port.is_some() { "on" } else { "off" },
            farm.dir.path().display()
        );
    }
    let what = if one_host { "builders on one host" } else { "slaves" };
    let mut rounds = Vec::new();
    for &count in &counts {
        for farm in &farms {
            let round = farm.round(count, one_host, releases);
            println!(
                "{count:>2} {what}, {}, metrics {}: {} builds in {:.2} s; master {:.2} ms/build, feed {:.2} ms/release",
                mode_name(farm.curve),
                if round.metrics { "on" } else { "off" },
                round.builds,
                round.seconds,
                round.master_ms,
                round.feed_master_ms
            );
            rounds.push(round);
        }
    }

    println!();
    println!("CPU in ms per build (master: of which system; farm: master + postgres + slave + launcher, all but the build command); latency from the build command's end to its record, in ms");
    println!(
        "{:>8} {:>6} {:>7} {:>8} {:>14} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}",
        if one_host { "builders" } else { "slaves" }, "auth", "metrics", "builds/s", "master (sys)", "postgres", "slave", "launcher", "farm", "command", "lat p50", "lat p90", "lat max"
    );
    for r in &rounds {
        println!(
            "{:>8} {:>6} {:>7} {:>8.2} {:>7.2} ({:>4.2}) {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.1} {:>8.1} {:>8.1}",
            r.slaves,
            r.mode,
            if r.metrics { "on" } else { "off" },
            r.builds as f64 / r.seconds,
            r.master_ms,
            r.master_system_ms,
            r.postgres_ms,
            r.slave_own_ms,
            r.launcher_ms,
            r.master_ms + r.postgres_ms + r.slave_own_ms + r.launcher_ms,
            r.command_ms,
            percentile(&r.latency_ms, 0.5),
            percentile(&r.latency_ms, 0.9),
            percentile(&r.latency_ms, 1.0),
        );
    }
    println!();
    for r in &rounds {
        println!(
            "{:>2} {}, {}, metrics {}: medians: build {:.0} ms as the slave timed it, the command {:.0} ms of it; latency {:.0} ms to the slave's \
             `built` log line, {:.0} ms from there to the record; master idle {:.2} ms/s; feed {:.2} ms/release on the master, \
             {:.2} ms in PostgreSQL",
            r.slaves,
            if r.one_host { "builders" } else { "slaves" },
            r.mode,
            if r.metrics { "on" } else { "off" },
            r.duration_ms,
            r.command_wall_ms,
            r.in_slave_ms,
            r.after_slave_ms,
            r.idle_master_ms_per_s,
            r.feed_master_ms,
            r.feed_postgres_ms
        );
    }
    for r in &rounds {
        let [host, builders, residents] = r.slave_memory;
        println!(
            "slave memory after the builds, PSS per {}: {:.1} MB (host {host:.1}, builders {builders:.1}, resident launchers {residents:.1}), {} {}",
            if r.one_host { "host" } else { "slave" },
            host + builders + residents,
            r.slaves,
            r.mode
        );
    }
    for r in rounds.iter().filter(|r| r.metrics) {
        let requests: Vec<String> = r.requests.iter().map(|(name, per_build)| format!("{name} {per_build:.2}")).collect();
        let all: f64 = r.requests.values().sum();
        println!("database requests per build, {} {}, {}: {all:.2} in all: {}", r.slaves, if r.one_host { "builders" } else { "slaves" }, r.mode, requests.join(", "));
    }
    for r in &rounds {
        if let Some((all, by_summary)) = &r.statements {
            let top: Vec<String> = by_summary.iter().map(|(summary, per_build)| format!("{per_build:.2} {summary}")).collect();
            println!("statements per build, {} {}, {}: {all:.2} in all:\n  {}", r.slaves, if r.one_host { "builders" } else { "slaves" }, r.mode, top.join("\n  "));
        }
    }
    for r in &rounds {
        let threads: Vec<String> = r.threads.iter().map(|(name, user, system)| format!("{name} {user:.2}+{system:.2}")).collect();
        println!("master threads, user+system ms/build, {} {}, {}: {}", r.slaves, if r.one_host { "builders" } else { "slaves" }, r.mode, threads.join(", "));
    }
}
