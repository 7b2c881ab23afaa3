//! The build pipeline end to end: a real piw-master following the fake PyPI, two real
//! piw-slaves (run as an unprivileged user) building with real pip, and the wheels arriving in
//! the index. Builds that fail, time out, are removed upstream mid-build, lose their slave to
//! SIGKILL, or live through a master restart each end as they should.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use piwheels_master::db::migrate;
use piwheels_testsupport::db::{APP_ROLE, TestDb};
use piwheels_testsupport::{free_port, http_exchange};
use piwheels_common::keys::Role;
use piwheels_master::web_server::WebServer;
use piwheels_testsupport::installers::{fresh_venv, local_abi, run, tool};
use piwheels_testsupport::keys::ClientKey;
use piwheels_testsupport::programs::{program, shared_dir, unprivileged};
use piwheels_testsupport::pypi::{FakePypi, sdist};

/// A process killed when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Farm {
    dir: tempfile::TempDir,
    db: TestDb,
    pypi: FakePypi,
    slave_port: u16,
    file_port: u16,
    master: Option<Process>,
    pid_file: PathBuf,
    /// The slaves' keys, authorized before the master first starts (a key authorized later
    /// is only taken at the master's next reload of its list).
    keys: Vec<(String, ClientKey)>,
    /// The slaves' `--build-timeout`: long, so that a loaded machine's slow builds are not
    /// taken for hung ones, but for the test of the timeout itself.
    build_timeout: &'static str,
    /// The master's `--cross-check-share`: none, so that the other tests' builds are not built
    /// again, but for the test of cross-checks.
    cross_check_share: &'static str,
    /// Where the master answers Prometheus.
    metrics_port: u16,
    /// The slaves' `--builders`.
    builders: &'static str,
    /// The master's `--debian-contents`, when given.
    debian_contents: Option<PathBuf>,
    /// The slaves' PATH, when not the test's own.
    slave_path: Option<std::ffi::OsString>,
}

impl Farm {
    fn new() -> Farm {
        let db = TestDb::new();
        migrate::upgrade_blocking(&db.owner_url(), APP_ROLE).unwrap();
        db.execute(&format!("INSERT INTO build_abis (abi_tag, python_version) VALUES ('{}', 311)", local_abi()));
        let dir = shared_dir();
        let pid_file = dir.path().join("build-pids");
        let keys = ["slave-a", "slave-b"]
            .map(|name| {
                let key = ClientKey::authorized(&dir.path().join("state"), &dir.path().join(format!("{name}.key")), Role::Slave, name);
                (name.to_string(), key.for_unprivileged())
            })
            .to_vec();
        Farm { dir, db, pypi: FakePypi::start(), slave_port: free_port(), file_port: free_port(), master: None, pid_file, keys, build_timeout: "300s", cross_check_share: "0", metrics_port: free_port(), builders: "1", debian_contents: None, slave_path: None }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn start_master(&mut self) {
        let child = Command::new(env!("CARGO_BIN_EXE_piw-master"))
            .args(["--config", "/dev/null"])
            .arg("--dsn")
            .arg(self.db.app_url())
            .arg("--output-path")
            .arg(self.path("www"))
            .arg("--state-dir")
            .arg(self.path("state"))
            .arg("--control-queue")
            .arg(format!("ipc://{}/run/control", self.dir.path().display()))
            .arg("--status-queue")
            .arg(format!("ipc://{}/run/status", self.dir.path().display()))
            .arg("--import-queue")
            .arg(format!("ipc://{}/run/import", self.dir.path().display()))
            .arg("--logger-queue")
            .arg(format!("ipc://{}/run/logger", self.dir.path().display()))
            .arg("--slave-queue")
            .arg(format!("tcp://127.0.0.1:{}", self.slave_port))
            .arg("--file-queue")
            .arg(format!("tcp://127.0.0.1:{}", self.file_port))
            .arg("--pypi-xmlrpc")
            .arg(self.pypi.xmlrpc_url())
            .arg("--pypi-json")
            .arg(self.pypi.json_url())
            .arg("--pypi-simple")
            .arg(self.pypi.simple_url())
            .args(["--pypi-interval", "200ms", "--queue-debounce", "200ms", "--rewrite-window", "200ms", "--oracles", "2"])
            .args(["--cross-check-share", self.cross_check_share])
            .arg("--metrics-listen")
            .arg(format!("127.0.0.1:{}", self.metrics_port))
            .args(["--site-url", "https://wheels.test/", "--upstream-project-url", "https://upstream.test/project/{project}/"])
            .args(self.debian_contents.iter().flat_map(|file| [std::ffi::OsString::from("--debian-contents"), file.into()]))
            .env_remove("PIW_LOG")
            .stdout(Stdio::null())
            .stderr(std::fs::OpenOptions::new().create(true).append(true).open(self.path("master.log")).unwrap())
            .spawn()
            .unwrap();
        self.master = Some(Process(child));
    }

    /// What the master has logged, across its restarts.
    fn master_log(&self) -> String {
        std::fs::read_to_string(self.path("master.log")).unwrap_or_default()
    }

    fn stop_master(&mut self) {
        let mut master = self.master.take().expect("a running master");
        kill(Pid::from_raw(master.0.id() as i32), Signal::SIGTERM).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while master.0.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "the master did not stop");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The key of slave `name`, authorized as a slave with that label.
    fn slave_key(&self, name: &str) -> ClientKey {
        self.keys.iter().find(|(n, _)| n == name).map(|(_, key)| key.clone()).expect("a slave the farm made a key for")
    }

    /// A slave building under `<dir>/<name>`, with a key of its own.
    fn start_slave(&self, name: &str) -> Process {
        let key = self.slave_key(name);
        self.start_slave_with(name, &key, Stdio::null())
    }

    /// A slave building under `<dir>/<name>` with `key`, its log going to `stderr`.
    fn start_slave_with(&self, name: &str, key: &ClientKey, stderr: Stdio) -> Process {
        let root = self.path(name);
        std::fs::create_dir_all(&root).unwrap();
        std::fs::set_permissions(&root, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
        let build_command = "{python} -m pip wheel {source} --wheel-dir={wheel_dir} --no-deps --no-cache-dir \
             --no-build-isolation --disable-pip-version-check --progress-bar=off --index-url={index_url}";
        let mut command = unprivileged(&program("piw-slave"));
        if let Some(path) = &self.slave_path {
            command.env("PATH", path);
        }
        let child = command
            .args(["--config", "/dev/null", "--master", "127.0.0.1"])
            .arg("--slave-queue")
            .arg(format!("tcp://127.0.0.1:{}", self.slave_port))
            .arg("--file-queue")
            .arg(format!("tcp://127.0.0.1:{}", self.file_port))
            .arg("--build-root")
            .arg(&root)
            .args(["--build-command", build_command])
            .args(["--build-timeout", self.build_timeout, "--busy-interval", "1s", "--sleep-interval", "1s", "--upload-timeout", "5s"])
            .args(["--busy-timeout", "9s", "--master-timeout", "5s", "--reconnect-interval", "1s", "--min-free-disk", "0"])
            .args(["--builders", self.builders])
            .args(key.args())
            .env(sdist::PID_FILE_ENV, &self.pid_file)
            .env("HOME", &root)
            .env_remove("PIW_LOG")
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        Process(child)
    }

    /// Starts the master with two releases on the fake PyPI, `same-pkg` 1.0 (whose builds are
    /// the same bytes) and `random-pkg` 1.0 (whose builds embed a random value), and slave-a,
    /// which is returned once it has built both.
    fn build_same_and_random(&mut self) -> Process {
        self.pypi.create_package("random-pkg", None);
        self.pypi.add_source("random-pkg", "1.0", sdist::random("random-pkg", "1.0"));
        self.pypi.create_package("same-pkg", None);
        self.pypi.add_source("same-pkg", "1.0", sdist::pure("same-pkg", "1.0"));
        self.start_master();
        let slave = self.start_slave("slave-a");
        assert_eq!(self.wait_for_build("random-pkg 1.0", Duration::from_secs(180)), "random-pkg 1.0 t -");
        assert_eq!(self.wait_for_build("same-pkg 1.0", Duration::from_secs(180)), "same-pkg 1.0 t -");
        slave
    }

    /// Runs piw-rebuild with `args` against the master, which must succeed; what it printed.
    fn rebuild(&self, args: &[&str]) -> String {
        self.admin("piw-rebuild", args)
    }

    /// Runs the admin tool `tool` with `args` against the master, which must succeed; what it
    /// printed.
    fn admin(&self, tool: &str, args: &[&str]) -> String {
        let out = Command::new(program(tool))
            .args(["--config", "/dev/null", "--import-queue"])
            .arg(format!("ipc://{}/run/import", self.dir.path().display()))
            .args(args)
            .env_remove("PIW_LOG")
            .output()
            .unwrap();
        assert!(out.status.success(), "{tool} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// `package version status failure` of every build, sorted.
    fn builds(&self) -> Vec<String> {
        let mut rows: Vec<String> = self
            .db
            .column("SELECT concat_ws(' ', package, version, status, coalesce(failure, '-')) FROM builds")
            .into_iter()
            .flatten()
            .collect();
        rows.sort();
        rows
    }

    fn wait_for_build(&self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(row) = self.builds().into_iter().find(|b| b.starts_with(prefix)) {
                return row;
            }
            assert!(Instant::now() < deadline, "no build of {prefix} within {timeout:?}; builds: {:?}", self.builds());
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Process ids the sleeping test builds wrote, in order.
    fn build_pids(&self) -> Vec<i32> {
        std::fs::read_to_string(&self.pid_file).unwrap_or_default().lines().filter_map(|l| l.trim().parse().ok()).collect()
    }

    fn wait_for_pids(&self, count: usize) -> Vec<i32> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let pids = self.build_pids();
            if pids.len() >= count {
                return pids;
            }
            assert!(Instant::now() < deadline, "the sleeping build never started");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Which slave's build root holds a build now (in its first builder's directory).
    fn building_in(&self, names: &[&str]) -> Option<String> {
        names
            .iter()
            .find(|name| {
                std::fs::read_dir(self.path(name).join("builder-1"))
                    .map(|entries| entries.flatten().any(|e| e.file_name().to_string_lossy().starts_with("piw-build-")))
                    .unwrap_or(false)
            })
            .map(|name| name.to_string())
    }
}

/// The master's figures, as Prometheus reads them.
fn scrape(port: u16) -> prometheus_parse::Scrape {
    let (head, text) = http_exchange(("127.0.0.1", port), "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    let text = text.as_str();
    assert!(head.starts_with("HTTP/1.1 200") && head.to_ascii_lowercase().contains("content-type: application/openmetrics-text"), "{head}");
    // Prometheus' naming conventions: one prefix, counters end in _total, units in the name.
    for line in text.lines().filter(|line| line.starts_with("# TYPE ")) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (name, kind) = (fields[2], fields[3]);
        assert!(name.starts_with("piwheels_") && name.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{line}");
        if kind == "counter" {
            assert!(text.lines().filter(|l| l.starts_with(name) && !l.starts_with('#')).all(|l| l.starts_with(&format!("{name}_total"))), "{name}:\n{text}");
        }
    }
    assert!(text.contains("# UNIT piwheels_oracle_request_duration_seconds seconds"), "{text}");
    prometheus_parse::Scrape::parse(text.lines().map(|line| Ok(line.to_string()))).expect("Prometheus text")
}

/// The value of `metric` with `labels`, 0 when the scrape has no such sample.
fn figure(scrape: &prometheus_parse::Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    let sample = scrape.samples.iter().find(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)));
    match sample.map(|s| &s.value) {
        Some(prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v)) => *v,
        Some(other) => panic!("{metric} is {other:?}"),
        None => 0.0,
    }
}

fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| !stat.contains(") Z "))
}

fn wait_dead(pids: &[i32], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while pids.iter().any(|&p| alive(p)) {
        assert!(Instant::now() < deadline, "build processes {pids:?} outlived their build");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn two_slaves_build_the_feed_and_survive_removals_kills_and_a_master_restart() {
    let mut farm = Farm::new();
    let pypi = &farm.pypi;
    pypi.create_package("pure-pkg", Some("pure"));
    pypi.add_source("pure-pkg", "1.0", sdist::pure("pure-pkg", "1.0"));
    pypi.create_package("cext-pkg", None);
    pypi.add_source("cext-pkg", "1.0", sdist::c_extension("cext-pkg", "1.0"));
    pypi.create_package("broken-pkg", None);
    pypi.add_source("broken-pkg", "1.0", sdist::failing("broken-pkg", "1.0"));
    farm.start_master();
    let mut slaves = [("slave-a", Some(farm.start_slave("slave-a"))), ("slave-b", Some(farm.start_slave("slave-b")))];

    // The pure and C-extension packages are built and their wheels published; the failing
    // one is recorded as failed, with its log.
    let minute = Duration::from_secs(120);
    assert_eq!(farm.wait_for_build("pure-pkg 1.0", minute), "pure-pkg 1.0 t -");
    assert_eq!(farm.wait_for_build("cext-pkg 1.0", minute), "cext-pkg 1.0 t -");
    assert_eq!(farm.wait_for_build("broken-pkg 1.0", minute), "broken-pkg 1.0 f build");
    let files = farm.db.column("SELECT filename FROM files ORDER BY filename");
    assert_eq!(files.len(), 2, "{files:?}");
    for file in files.iter().flatten() {
        let package = file.split('-').next().unwrap().replace('_', "-");
        let published = farm.path("www/simple").join(&package).join(file);
        assert!(published.is_file(), "{} is not published", published.display());
    }
    let abi = local_abi();
    assert!(files.iter().flatten().any(|f| f.contains(&format!("-{abi}-{abi}-linux_"))), "{files:?}");
    let build_id = farm.db.column("SELECT build_id::text FROM builds WHERE package = 'broken-pkg'")[0].clone().unwrap();
    let log = farm.path("www").join(piwheels_master::index::layout::log_path(build_id.parse().unwrap()));
    wait_until("the failed build's log", || log.is_file());
    let mut text = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(std::fs::File::open(&log).unwrap()), &mut text).unwrap();
    assert!(text.contains(sdist::FAILURE_MESSAGE), "{text}");

    // A package removed upstream while it builds is abandoned: killed, never recorded.
    farm.pypi.create_package("doomed-pkg", None);
    farm.pypi.add_source("doomed-pkg", "1.0", sdist::sleeping("doomed-pkg", "1.0", 3600));
    let pids = farm.wait_for_pids(2);
    farm.pypi.remove_package("doomed-pkg");
    wait_dead(&pids, Duration::from_secs(20));
    // Its build directory goes too (and cannot be taken below for the next build's).
    wait_until("the abandoned build's directory removed", || farm.building_in(&["slave-a", "slave-b"]).is_none());
    // That it is never recorded shows at the end: a slave reports a build before it takes the
    // next, so any record of it comes before the builds below.

    // SIGKILL to the slave building a release: the other slave builds it.
    farm.pypi.create_package("slow-pkg", None);
    farm.pypi.add_source("slow-pkg", "1.0", sdist::sleeping("slow-pkg", "1.0", 3));
    let pids = farm.wait_for_pids(4)[2..].to_vec();
    let builder = farm.building_in(&["slave-a", "slave-b"]).expect("a slave building slow-pkg");
    let victim = slaves.iter_mut().find(|(name, _)| *name == builder).and_then(|(_, p)| p.take()).unwrap();
    kill(Pid::from_raw(victim.0.id() as i32), Signal::SIGKILL).unwrap();
    drop(victim);
    // Its build dies with it (the parent-death signal), and the other slave takes it over once
    // the master has dropped the silent one.
    wait_dead(&pids, Duration::from_secs(20));
    assert_eq!(farm.wait_for_build("slow-pkg 1.0", minute), "slow-pkg 1.0 t -");

    // The master restarted mid-run loses nothing: the remaining slave reconnects and a release
    // that arrives meanwhile is built.
    farm.stop_master();
    farm.pypi.create_package("late-pkg", None);
    farm.pypi.add_source("late-pkg", "1.0", sdist::pure("late-pkg", "1.0"));
    farm.start_master();
    assert_eq!(farm.wait_for_build("late-pkg 1.0", minute), "late-pkg 1.0 t -");
    let builds = farm.builds();
    assert!(!builds.iter().any(|b| b.starts_with("doomed-pkg")), "{builds:?}");
    assert_eq!(builds.len(), 5, "{builds:?}");
    drop(slaves);
}

/// A host with two builders builds two releases at once, and the master's figures for
/// Prometheus say what the database holds.
#[test]
fn two_builders_of_one_host_build_and_the_metrics_match_the_database() {
    let mut farm = Farm::new();
    farm.builders = "2";
    farm.pypi.create_package("first-pkg", None);
    farm.pypi.add_source("first-pkg", "1.0", sdist::sleeping("first-pkg", "1.0", 4));
    farm.pypi.create_package("second-pkg", None);
    farm.pypi.add_source("second-pkg", "1.0", sdist::sleeping("second-pkg", "1.0", 4));
    farm.pypi.create_package("broken-pkg", None);
    farm.pypi.add_source("broken-pkg", "1.0", sdist::failing("broken-pkg", "1.0"));
    farm.start_master();
    let _slave = farm.start_slave("slave-a");
    // Both sleeping builds run at once, one in each builder's directory.
    farm.wait_for_pids(4);
    wait_until("a build in each builder's directory", || {
        ["builder-1", "builder-2"].iter().all(|b| {
            std::fs::read_dir(farm.path("slave-a").join(b)).is_ok_and(|mut e| e.any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().starts_with("piw-build-"))))
        })
    });
    let minute = Duration::from_secs(120);
    assert_eq!(farm.wait_for_build("first-pkg 1.0", minute), "first-pkg 1.0 t -");
    assert_eq!(farm.wait_for_build("second-pkg 1.0", minute), "second-pkg 1.0 t -");
    assert_eq!(farm.wait_for_build("broken-pkg 1.0", minute), "broken-pkg 1.0 f build");
    let builders: Vec<String> = farm.db.column("SELECT DISTINCT builder FROM builds").into_iter().flatten().collect();
    assert_eq!(builders, ["slave-a"], "both builders are the key's");

    let abi = local_abi();
    let counted = |outcome: &str| -> f64 {
        let sql = match outcome {
            "success" => format!("SELECT count(*)::text FROM builds WHERE abi_tag = '{abi}' AND status"),
            failure => format!("SELECT count(*)::text FROM builds WHERE abi_tag = '{abi}' AND NOT status AND failure = '{failure}'"),
        };
        farm.db.column(&sql)[0].as_deref().unwrap().parse().unwrap()
    };
    let received: f64 = farm.db.column("SELECT sum(filesize)::text FROM files")[0].as_deref().unwrap().parse().unwrap();
    assert_eq!((counted("success"), counted("build")), (2.0, 1.0));
    // The figures follow the records (the status events and the logs' pages come after them).
    let deadline = Instant::now() + Duration::from_secs(30);
    let (scrape, seen) = loop {
        let scrape = scrape(farm.metrics_port);
        let builds = |outcome| figure(&scrape, "piwheels_builds_total", &[("abi", &abi), ("outcome", outcome)]);
        let connected: f64 = ["starting", "idle", "asleep", "building", "sending"].iter().map(|state| figure(&scrape, "piwheels_builders", &[("abi", &abi), ("state", state)])).sum();
        let seen = (builds("success"), builds("build"), figure(&scrape, "piwheels_received_bytes_total", &[]), connected, figure(&scrape, "piwheels_page_writes_total", &[("kind", "log")]));
        if seen == (counted("success"), counted("build"), received, 2.0, 3.0) || Instant::now() > deadline {
            break (scrape, seen);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    // Builds by outcome, the wheels' bytes and the two builders as the database and the farm
    // have them; a log written for each build.
    assert_eq!(seen, (counted("success"), counted("build"), received, 2.0, 3.0));
    assert!(figure(&scrape, "piwheels_page_writes_total", &[("kind", "project")]) >= 3.0);
    let oracle = scrape.samples.iter().find(|s| s.metric == "piwheels_oracle_request_duration_seconds").expect("the oracles' histogram");
    assert!(matches!(&oracle.value, prometheus_parse::Value::Histogram(buckets) if buckets.last().is_some_and(|b| b.count > 0.0)), "{oracle:?}");
    // Each build recorded by one request.
    assert_eq!(figure(&scrape, "piwheels_oracle_requests_total", &[("request", "LogBuild")]), counted("success") + counted("build"));
}

#[test]
fn a_build_past_the_slaves_timeout_is_killed_with_its_processes_and_recorded_as_a_timeout() {
    let mut farm = Farm::new();
    farm.build_timeout = "8s";
    farm.start_master();
    let _slave = farm.start_slave("slave-a");
    farm.pypi.create_package("sleepy-pkg", None);
    farm.pypi.add_source("sleepy-pkg", "1.0", sdist::sleeping("sleepy-pkg", "1.0", 3600));
    let pids = farm.wait_for_pids(2);
    assert_eq!(farm.wait_for_build("sleepy-pkg 1.0", Duration::from_secs(120)), "sleepy-pkg 1.0 f timeout");
    wait_dead(&pids, Duration::from_secs(10));
}

#[test]
fn revoking_a_busy_slaves_key_drops_it_and_another_slave_builds_its_release() {
    let mut farm = Farm::new();
    farm.start_master();
    let (key_a, key_b) = (farm.slave_key("slave-a"), farm.slave_key("slave-b"));
    let logs = |name: &str| farm.path(&format!("{name}.log"));
    let log_file = |name: &str| Stdio::from(std::fs::File::create(logs(name)).unwrap());
    let mut slaves = [
        ("slave-a", &key_a, Some(farm.start_slave_with("slave-a", &key_a, log_file("slave-a")))),
        ("slave-b", &key_b, Some(farm.start_slave_with("slave-b", &key_b, log_file("slave-b")))),
    ];
    farm.pypi.create_package("slow-pkg", None);
    farm.pypi.add_source("slow-pkg", "1.0", sdist::sleeping("slow-pkg", "1.0", 3));
    let pids = farm.wait_for_pids(1);
    let builder = farm.building_in(&["slave-a", "slave-b"]).expect("a slave building slow-pkg");
    let (_, key, process) = slaves.iter_mut().find(|(name, _, _)| *name == builder).unwrap();
    let mut victim = process.take().unwrap();

    // Its key is revoked mid-build: the master drops it at its next check of the keys (every
    // 5 s) and the slave, told why, exits and kills its build. (The deadline only ends a hung
    // test: load may slow the check down.)
    key.revoke(&farm.path("state"));
    let revoked = Instant::now();
    let status = loop {
        if let Some(status) = victim.0.try_wait().unwrap() {
            break status;
        }
        assert!(revoked.elapsed() < Duration::from_secs(60), "the slave with the revoked key still runs after 60 s");
        std::thread::sleep(Duration::from_millis(50));
    };
    let said = std::fs::read_to_string(logs(&builder)).unwrap();
    assert!(said.contains(&format!("the key {} ({builder}) was revoked", key.pair.public.fingerprint())), "{status}: {said}");
    wait_dead(&pids, Duration::from_secs(20));

    // The other slave builds the release, and the build is recorded under its key's label.
    assert_eq!(farm.wait_for_build("slow-pkg 1.0", Duration::from_secs(120)), "slow-pkg 1.0 t -");
    let other = if builder == "slave-a" { "slave-b" } else { "slave-a" };
    assert_eq!(farm.db.column("SELECT builder FROM builds WHERE package = 'slow-pkg'"), vec![Some(other.to_string())]);

    // The revoked key's new connections are refused: a slave started with it says so and exits.
    let again = farm.start_slave_with(&builder, key, log_file(&format!("{builder}-again")));
    let mut again = again;
    let status = again.0.wait().unwrap();
    let said = std::fs::read_to_string(logs(&format!("{builder}-again"))).unwrap();
    assert!(!status.success(), "{said}");
    assert!(said.contains("refused this client's key") && said.contains(&key.pair.public.fingerprint()), "{said}");
    drop(slaves);
}

/// A release is built only from the source the index published when the master pinned it:
/// other bytes under the same name are refused by the slave and reported, nothing is
/// recorded, and the release is built once the index serves the published file again.
#[test]
fn a_source_that_is_not_the_pinned_file_is_refused_and_reported_and_built_once_it_is() {
    let mut farm = Farm::new();
    farm.pypi.create_package("pinned-pkg", None);
    let published = sdist::pure("pinned-pkg", "1.0");
    farm.pypi.add_source("pinned-pkg", "1.0", published.clone());
    let pin = farm.pypi.source_file("pinned-pkg", "1.0");
    farm.start_master();
    wait_until("the source pinned", || {
        farm.db.column("SELECT source_sha256 FROM versions WHERE package = 'pinned-pkg'") == [Some(pin.sha256.clone())]
    });
    // A mirror, or someone between, serves a changed source under the published name.
    farm.pypi.tamper("pinned-pkg-1.0.tar.gz", sdist::failing("pinned-pkg", "1.0"));
    let _slave = farm.start_slave("slave-a");
    wait_until("the refusal reported", || farm.master_log().contains("is not the pinned file"));
    let log = farm.master_log();
    let line = log.lines().find(|l| l.contains("is not the pinned file")).unwrap();
    assert!(line.contains("could not build pinned-pkg 1.0: the source could not be had") && line.contains(&pin.sha256), "{line}");
    assert!(line.contains("not recorded, to be built again"), "{line}");
    assert_eq!(farm.builds(), Vec::<String>::new());

    // The index serves the published bytes again: the release is built from them.
    farm.pypi.tamper("pinned-pkg-1.0.tar.gz", published);
    assert_eq!(farm.wait_for_build("pinned-pkg 1.0", Duration::from_secs(180)), "pinned-pkg 1.0 t -");
    assert_eq!(farm.builds().len(), 1, "{:?}", farm.builds());
}

/// A release built again (`piw-rebuild build`) whose wheel has other bytes is published under
/// build tag 1 beside the first wheel, which keeps its bytes, and pip installs the new one. A
/// release whose build is deterministic (the slave fixes SOURCE_DATE_EPOCH) gets no new file.
#[test]
fn a_rebuild_with_other_bytes_is_published_under_build_tag_1_and_identical_bytes_publish_nothing() {
    let mut farm = Farm::new();
    let _slave = farm.build_same_and_random();
    let first = "random_pkg-1.0-py3-none-any.whl";
    let tagged = "random_pkg-1.0-1-py3-none-any.whl";
    let recorded_hash = |name: &str| farm.db.column(&format!("SELECT filehash::text FROM files WHERE filename = '{name}'"));
    let first_hash = recorded_hash(first);
    assert_eq!(first_hash.len(), 1, "the first build records {first}");
    let same_files = || farm.db.column("SELECT filename || ' ' || filehash FROM files WHERE package_tag = 'same_pkg'");
    let same_before = same_files();
    assert_eq!(same_before.len(), 1);

    let rebuild = |package: &str| {
        let said = farm.rebuild(&["build", package, "1.0"]);
        assert!(said.contains(&format!("{package} 1.0 is to be built again on")), "{said}");
    };
    rebuild("random-pkg");
    rebuild("same-pkg");
    wait_until("the rebuild's wheel recorded under build tag 1", || recorded_hash(tagged).len() == 1);
    wait_until("same-pkg built again", || farm.builds().iter().filter(|b| b.starts_with("same-pkg")).count() == 2);
    assert_eq!(farm.builds(), ["random-pkg 1.0 t -", "random-pkg 1.0 t -", "same-pkg 1.0 t -", "same-pkg 1.0 t -"]);
    // The identical wheel is the second build's now; nothing new was published.
    assert_eq!(same_files(), same_before);
    let newest_build = farm.db.column("SELECT max(build_id)::text FROM builds WHERE package = 'same-pkg'");
    assert_eq!(farm.db.column("SELECT f.build_id::text FROM files f WHERE package_tag = 'same_pkg'"), newest_build);
    // Its signed statement now describes the build that recorded it last.
    let statement_path = farm.path("www/simple/same-pkg/same_pkg-1.0-py3-none-any.whl.intoto.jsonl");
    wait_until("the identical wheel's statement naming the second build", || {
        std::fs::read_to_string(&statement_path).is_ok_and(|line| {
            let envelope: serde_json::Value = serde_json::from_str(line.trim_end()).unwrap();
            use base64::Engine as _;
            let payload = base64::engine::general_purpose::STANDARD.decode(envelope["payload"].as_str().unwrap()).unwrap();
            let statement: serde_json::Value = serde_json::from_slice(&payload).unwrap();
            Some(statement["predicate"]["runDetails"]["metadata"]["invocationId"].as_str().unwrap().to_string()) == newest_build[0]
        })
    });
    let names = |dir: &Path| {
        let mut names: Vec<String> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        names
    };
    assert_eq!(
        names(&farm.path("www/simple/same-pkg")),
        ["index.html", "index.json", "same_pkg-1.0-py3-none-any.whl", "same_pkg-1.0-py3-none-any.whl.intoto.jsonl", "same_pkg-1.0-py3-none-any.whl.metadata"]
    );

    let simple = farm.path("www/simple/random-pkg");
    wait_until("the simple page listing both wheels", || {
        std::fs::read_to_string(simple.join("index.html")).is_ok_and(|page| page.contains(first) && page.contains(tagged))
    });
    // The first wheel keeps its bytes.
    let on_disk = |name: &str| piwheels_common::inspect::sha256_hex(&std::fs::read(simple.join(name)).unwrap());
    assert_eq!(recorded_hash(first), first_hash);
    assert_eq!(Some(on_disk(first)), first_hash[0]);
    assert_ne!(on_disk(first), on_disk(tagged));

    // pip prefers the higher build tag.
    let server = WebServer::start(farm.path("www"), "127.0.0.1:0".parse().unwrap()).unwrap();
    let url = format!("http://{}/simple/", server.local_addr());
    let work = tempfile::tempdir().unwrap();
    let python = fresh_venv(work.path(), "venv", true);
    run(tool(&python, work.path()).args(["-m", "pip", "install", "--no-cache-dir", "--index-url", &url, "random-pkg==1.0"]));
    let module = |code: &str| {
        let out = run(tool(&python, work.path()).args(["-c", code]));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let installed = module("import random_pkg_mod; print(random_pkg_mod.BUILD)");
    let read_build = |name: &str| {
        module(&format!(
            "import zipfile; text = zipfile.ZipFile({:?}).read('random_pkg_mod.py').decode(); print(text.split('BUILD = ')[1].strip().strip(chr(39)))",
            simple.join(name).display().to_string()
        ))
    };
    assert_eq!(installed, read_build(tagged));
    assert_ne!(installed, read_build(first));
}

/// Every wheel the farm builds gets a signed statement of its provenance beside it; piw-verify
/// passes the wheel and names the mismatch for a changed byte, another key and a statement of
/// another file.
#[test]
fn built_wheels_carry_signed_provenance_that_piw_verify_checks() {
    let mut farm = Farm::new();
    for package in ["signed-pkg", "other-pkg"] {
        farm.pypi.create_package(package, None);
        farm.pypi.add_source(package, "1.0", sdist::pure(package, "1.0"));
    }
    farm.start_master();
    let _slave = farm.start_slave("slave-a");
    assert_eq!(farm.wait_for_build("signed-pkg 1.0", Duration::from_secs(180)), "signed-pkg 1.0 t -");
    assert_eq!(farm.wait_for_build("other-pkg 1.0", Duration::from_secs(180)), "other-pkg 1.0 t -");
    let wheel_name = "signed_pkg-1.0-py3-none-any.whl";
    let simple = farm.path("www/simple/signed-pkg");
    let statement_path = simple.join(format!("{wheel_name}.intoto.jsonl"));
    let other_statement = farm.path("www/simple/other-pkg/other_pkg-1.0-py3-none-any.whl.intoto.jsonl");
    wait_until("both statements written", || statement_path.is_file() && other_statement.is_file());
    wait_until("the project page linking the statement", || {
        std::fs::read_to_string(farm.path("www/project/signed-pkg/index.html")).is_ok_and(|page| page.contains(&format!("{wheel_name}.intoto.jsonl")))
    });
    let json = std::fs::read_to_string(farm.path("www/project/signed-pkg/json/index.json")).unwrap();
    assert!(json.contains(&format!("\"provenance_url\":\"/simple/signed-pkg/{wheel_name}.intoto.jsonl\"")), "{json}");

    // The statement's fields are in-toto's and SLSA's.
    let line = std::fs::read_to_string(&statement_path).unwrap();
    let envelope: serde_json::Value = serde_json::from_str(line.trim_end()).unwrap();
    assert_eq!(envelope["payloadType"], "application/vnd.in-toto+json");
    use base64::Engine as _;
    let payload = base64::engine::general_purpose::STANDARD.decode(envelope["payload"].as_str().unwrap()).unwrap();
    let statement: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(statement["_type"], "https://in-toto.io/Statement/v1");
    assert_eq!(statement["predicateType"], "https://slsa.dev/provenance/v1");
    let wheel_bytes = std::fs::read(simple.join(wheel_name)).unwrap();
    let sha256 = piwheels_common::inspect::sha256_hex(&wheel_bytes);
    assert_eq!(statement["subject"], serde_json::json!([{ "name": wheel_name, "digest": { "sha256": sha256 } }]));
    let definition = &statement["predicate"]["buildDefinition"];
    assert_eq!(definition["externalParameters"], serde_json::json!({ "package": "signed-pkg", "version": "1.0", "abi": local_abi() }));
    let pin = farm.pypi.source_file("signed-pkg", "1.0");
    assert_eq!(definition["resolvedDependencies"], serde_json::json!([{ "name": pin.filename, "uri": pin.url, "digest": { "sha256": pin.sha256 } }]));
    let slave_key = farm.slave_key("slave-a");
    assert_eq!(definition["internalParameters"]["label"], "slave-a");
    assert_eq!(definition["internalParameters"]["key"], slave_key.pair.public.to_string());
    // What the slave builds with, as it reported it: the interpreter its builds ran.
    let python_version = {
        let out = Command::new("python3").args(["-c", "import platform; print(platform.python_version())"]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let environment = &definition["internalParameters"]["environment"];
    assert_eq!(environment["python"], python_version.as_str(), "{environment}");
    assert!(environment["pip"].is_string() && environment["setuptools"].is_string() && environment["kernel"].is_string(), "{environment}");
    // The build was out from when it was handed out to when it was recorded: longer than the
    // command ran, which the slave measured.
    let metadata = &statement["predicate"]["runDetails"]["metadata"];
    let time = |field: &str| chrono::DateTime::parse_from_rfc3339(metadata[field].as_str().unwrap()).unwrap();
    let out_for = time("finishedOn") - time("startedOn");
    let ran_ms: i64 = farm.db.column("SELECT (extract(epoch FROM duration) * 1000)::bigint::text FROM builds WHERE package = 'signed-pkg'")[0]
        .as_deref()
        .unwrap()
        .parse()
        .unwrap();
    assert!(out_for.num_milliseconds() >= ran_ms && ran_ms > 0, "out for {out_for}, ran {ran_ms} ms: {metadata}");

    let server = WebServer::start(farm.path("www"), "127.0.0.1:0".parse().unwrap()).unwrap();
    let index = format!("http://{}/simple/", server.local_addr());
    let work = tempfile::tempdir().unwrap();
    let wheel = work.path().join(wheel_name);
    std::fs::write(&wheel, &wheel_bytes).unwrap();
    let verify = |args: &[&std::ffi::OsStr]| {
        let out = Command::new(program("piw-verify")).arg("--index").arg(&index).args(args).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).to_string(), String::from_utf8_lossy(&out.stderr).to_string())
    };
    let (status, said, _) = verify(&[wheel.as_os_str()]);
    assert_eq!(status, Some(0), "{said}");
    assert!(said.contains(&format!("{wheel_name}: verified")) && said.contains(&sha256), "{said}");
    assert!(said.contains(&format!("release      signed-pkg 1.0 for {}", local_abi())), "{said}");
    assert!(said.contains(&format!("built from   {} (SHA-256 {})", pin.filename, pin.sha256)), "{said}");
    assert!(said.contains("built by     slave-a, key SHA256:"), "{said}");
    assert!(said.contains(&format!("with         python {python_version}")), "{said}");
    // The release from the index, with the key pinned.
    let key_file = work.path().join("key.pem");
    std::fs::copy(farm.path("www/signing-key.pem"), &key_file).unwrap();
    let (status, said, _) = verify(&["--key".as_ref(), key_file.as_os_str(), "signed-pkg".as_ref(), "1.0".as_ref()]);
    assert_eq!(status, Some(0), "{said}");
    assert!(said.contains(&format!("{wheel_name}: verified")), "{said}");

    // One byte changed.
    let changed = work.path().join("changed").join(wheel_name);
    std::fs::create_dir_all(changed.parent().unwrap()).unwrap();
    let mut bytes = wheel_bytes.clone();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 1;
    std::fs::write(&changed, &bytes).unwrap();
    let (status, _, why) = verify(&[changed.as_os_str()]);
    assert_eq!(status, Some(1), "{why}");
    assert!(why.contains(wheel_name) && why.contains("the file was changed"), "{why}");
    // A key other than the master's.
    let other_key = work.path().join("other.pem");
    let other = ed25519_dalek::SigningKey::from_bytes(&[9; 32]).verifying_key();
    std::fs::write(&other_key, piwheels_common::provenance::public_key_pem(&other)).unwrap();
    let (status, _, why) = verify(&["--key".as_ref(), other_key.as_os_str(), wheel.as_os_str()]);
    assert_eq!(status, Some(1), "{why}");
    assert!(why.contains("the statement is not signed by the key"), "{why}");
    // The statement of another file.
    let (status, _, why) = verify(&["--statement".as_ref(), other_statement.as_os_str(), wheel.as_os_str()]);
    assert_eq!(status, Some(1), "{why}");
    assert!(why.contains("the statement is for another file: other_pkg-1.0-py3-none-any.whl"), "{why}");
    // A wheel the index has no statement for.
    std::fs::remove_file(&other_statement).unwrap();
    let other_wheel = work.path().join("other_pkg-1.0-py3-none-any.whl");
    std::fs::copy(farm.path("www/simple/other-pkg/other_pkg-1.0-py3-none-any.whl"), &other_wheel).unwrap();
    let (status, _, why) = verify(&[other_wheel.as_os_str()]);
    assert_eq!(status, Some(1), "{why}");
    assert!(why.contains("the index has no signed statement for it"), "{why}");
}

/// Cross-checks with real pip: every build (the master's share set to all) is built again by
/// the other slave from the same source; a deterministic package is reproduced, one whose build
/// embeds a random value is not, and its page names the files that differ. piw-rebuild asks
/// for one more on demand.
#[test]
fn a_deterministic_build_is_reproduced_by_another_slave_and_a_random_one_is_not() {
    let mut farm = Farm::new();
    farm.cross_check_share = "1";
    // The first slave builds both; only the other one may check them.
    let first = farm.build_same_and_random();
    let published = || farm.db.column("SELECT filename || ' ' || filehash FROM files ORDER BY filename");
    let before = published();
    let _second = farm.start_slave("slave-b");
    let verdict = |package: &str| {
        farm.db.column(&format!(
            "SELECT c.verdict || ' by ' || c.builder || ': ' || array_to_string(c.differences, ' | ') \
             FROM cross_checks c JOIN builds b USING (build_id) WHERE b.package = '{package}' AND c.verdict IS NOT NULL ORDER BY c.check_id"
        ))
    };
    wait_until("both cross-checks done", || verdict("same-pkg").len() == 1 && verdict("random-pkg").len() == 1);
    drop(first);
    assert_eq!(verdict("same-pkg"), [Some("reproduced by slave-b: ".to_string())]);
    assert_eq!(
        verdict("random-pkg"),
        [Some("differs by slave-b: random_pkg-1.0.dist-info/RECORD: contents differ | random_pkg_mod.py: contents differ".to_string())]
    );
    // Compared, never published, and no build recorded for them.
    assert_eq!(published(), before);
    assert_eq!(farm.builds(), ["random-pkg 1.0 t -", "same-pkg 1.0 t -"]);

    let page = |package: &str| std::fs::read_to_string(farm.path(&format!("www/project/{package}/index.html"))).unwrap_or_default();
    wait_until("the project pages showing the verdicts", || {
        page("same-pkg").contains("reproduced on 2 builders") && page("random-pkg").contains("not reproduced")
    });
    assert!(page("random-pkg").contains("random_pkg_mod.py: contents differ"), "{}", page("random-pkg"));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(farm.path("www/project/same-pkg/json/index.json")).unwrap()).unwrap();
    assert_eq!(json["releases"]["1.0"]["builds"][local_abi()]["cross_check"], serde_json::json!({ "verdict": "reproduced", "builders": 2 }));

    // piw-rebuild asks for another; the home page counts them.
    let said = farm.rebuild(&["cross-check", "same-pkg", "1.0"]);
    assert!(said.contains(&format!("same-pkg 1.0 is to be cross-checked on {}", local_abi())), "{said}");
    wait_until("the second cross-check done", || verdict("same-pkg").len() == 2);
    assert_eq!(verdict("same-pkg")[1], Some("reproduced by slave-b: ".to_string()));
    farm.rebuild(&["home"]);
    let home = || std::fs::read_to_string(farm.path("www/index.html")).unwrap_or_default();
    wait_until("the home page counting the cross-checks", || {
        home().contains(r#"<td id="reproduced">2</td>"#) && home().contains(r#"<td id="not-reproduced">1</td>"#)
    });
    // The site's settings reach the pages: the index's address in the settings shown, the
    // upstream project's page linked.
    assert!(home().contains("extra-index-url=https://wheels.test/simple</pre>"), "{}", home());
    assert!(home().contains(r#"url = "https://wheels.test/simple""#), "{}", home());
    assert!(page("same-pkg").contains(r#"<a href="https://upstream.test/project/same-pkg/">"#), "{}", page("same-pkg"));
}

/// The failure triage with real builds: a C extension whose header no builder has, a build
/// that runs rustc on a builder without it, and a package for a Python no builder has are each
/// classified from their logs; the header's Debian package comes from the Contents index the
/// master is given. piw-triage ranks them and re-queues exactly the releases of one cause.
#[test]
fn failed_builds_are_triaged_from_their_logs_and_one_cause_is_queued_again() {
    let mut farm = Farm::new();
    // A Contents index as Debian publishes it, gzipped: the header is in a package no guess
    // would name.
    let contents = farm.path("Contents-arm64.gz");
    let mut gz = flate2::write::GzEncoder::new(std::fs::File::create(&contents).unwrap(), flate2::Compression::default());
    std::io::Write::write_all(
        &mut gz,
        b"usr/bin/rustc                                  devel/rustc\n\
          usr/include/piwtest/absent.h                   libdevel/libpiwtest-absent-dev\n\
          usr/share/doc/piwtest/absent.h                 doc/piwtest-doc\n",
    )
    .unwrap();
    gz.finish().unwrap();
    farm.debian_contents = Some(contents);
    // The builders have no rustc: their PATH is the test's Python's directory and the
    // system's, less any that holds a rustc.
    let path = std::env::var_os("PATH").unwrap_or_default();
    let python = std::env::split_paths(&path).find(|dir| dir.join("python3").is_file()).expect("python3 on PATH");
    let dirs = [python, "/usr/local/bin".into(), "/usr/bin".into(), "/bin".into()];
    farm.slave_path = Some(std::env::join_paths(dirs.into_iter().filter(|dir| !dir.join("rustc").exists())).unwrap());
    let releases = [
        ("header-pkg", sdist::missing_header("header-pkg", "1.0", "piwtest/absent.h")),
        ("rust-pkg", sdist::needs_tool("rust-pkg", "1.0", "rustc")),
        ("future-pkg", sdist::future_python("future-pkg", "1.0")),
    ];
    for (name, source) in releases {
        farm.pypi.create_package(name, None);
        farm.pypi.add_source(name, "1.0", source);
    }
    farm.start_master();
    let _slave = farm.start_slave("slave-a");
    let limit = Duration::from_secs(180);
    for name in ["header-pkg", "rust-pkg", "future-pkg"] {
        assert_eq!(farm.wait_for_build(&format!("{name} 1.0"), limit), format!("{name} 1.0 f build"));
    }

    // Each is classified from its log, and the header's Debian package looked up.
    let causes = || {
        farm.db.column(
            "SELECT concat_ws(' ', b.package, b.failure_class, b.failure_detail, coalesce(d.debian_package, '-')) FROM builds b \
             LEFT JOIN debian_lookups d ON d.failure_class = b.failure_class AND d.failure_detail = b.failure_detail \
             ORDER BY b.package",
        )
    };
    let expected = [
        "future-pkg unsupported-python >=3.99 -",
        "header-pkg missing-header piwtest/absent.h libpiwtest-absent-dev",
        "rust-pkg missing-tool rustc rustc",
    ]
    .map(|row| Some(row.to_string()));
    let deadline = Instant::now() + Duration::from_secs(60);
    while causes() != expected {
        assert!(Instant::now() < deadline, "the failures are {:?}; their logs: {:?}", causes(), farm.db.column("SELECT right(output, 1000) FROM output"));
        std::thread::sleep(Duration::from_millis(200));
    }

    // The project page and its JSON show the cause and the package.
    let page = || std::fs::read_to_string(farm.path("www/project/header-pkg/index.html")).unwrap_or_default();
    wait_until("the page showing the cause", || page().contains("missing header piwtest/absent.h (in Debian package <code>libpiwtest-absent-dev</code>)"));
    // The JSON is written after the page: waited for on its own.
    let json = || -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(farm.path("www/project/header-pkg/json/index.json")).unwrap_or_default()).unwrap_or_default()
    };
    let failure = || json()["releases"]["1.0"]["builds"][local_abi()]["failure"].clone();
    wait_until("the JSON showing the cause", || failure()["debian_package"] == "libpiwtest-absent-dev");
    assert_eq!(failure()["class"], "missing-header", "{}", json());
    assert_eq!(failure()["detail"], "piwtest/absent.h", "{}", json());

    // The report ranks them, and says what to install.
    let triage = |args: &[&str]| farm.admin("piw-triage", args);
    let report = triage(&["report"]);
    assert!(
        report.contains("installing libpiwtest-absent-dev would let 1 failed release(s) be retried: piw-triage requeue --debian-package libpiwtest-absent-dev"),
        "{report}"
    );
    for line in ["1  missing header piwtest/absent.h  (Debian package libpiwtest-absent-dev)", "1  missing tool rustc  (Debian package rustc)", "1  unsupported Python >=3.99"] {
        assert!(report.contains(line), "{line:?} not in\n{report}");
    }

    // A dry run queues nothing; the re-queue of missing headers queues exactly header-pkg,
    // which is built again (and fails again, the header still missing).
    let dry = triage(&["requeue", "missing-header", "--dry-run"]);
    assert!(dry.contains(&format!("would queue 1 failed build(s) again (missing header): header-pkg 1.0 {}", local_abi())), "{dry}");
    assert_eq!(farm.db.column("SELECT count(*)::text FROM rebuilds_wanted"), [Some("0".to_string())]);
    let done = triage(&["requeue", "missing-header", "--yes"]);
    assert!(done.contains(&format!("queued 1 failed build(s) again (missing header): header-pkg 1.0 {}", local_abi())), "{done}");
    let builds_of = |package: &str| farm.db.column(&format!("SELECT count(*)::text FROM builds WHERE package = '{package}'"));
    wait_until("header-pkg built again", || builds_of("header-pkg") == [Some("2".to_string())]);
    assert_eq!(builds_of("rust-pkg"), [Some("1".to_string())]);
    assert_eq!(builds_of("future-pkg"), [Some("1".to_string())]);
    // The new failure is triaged in turn, and is what a re-queue would queue now.
    wait_until("the new failure triaged", || farm.db.column("SELECT count(*)::text FROM builds WHERE failure_class IS NULL AND NOT status") == [Some("0".to_string())]);
    let again = triage(&["requeue", "missing-header", "--dry-run"]);
    assert!(again.contains("would queue 1 failed build(s) again"), "{again}");
}
