//! piw-monitor in a real terminal (tmux) against a real piw-master and its own database: the
//! tables appear, a fake slave joins and is put to sleep from the keyboard (which the master
//! confirms to the slave), commands that destroy work ask first, the master is paused and
//! resumed, the screen follows a resize, and the monitor leaves cleanly on q, on Ctrl-C and
//! when the master shuts down.
//!
//! Needs tmux, PostgreSQL (see `piwheels_testsupport::db`) and the workspace's programs built
//! (`cargo build --workspace --bins`, which a workspace test run does first).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use piwheels_common::protocols::{
    ControlReply, ControlRequest, HostStats, SlaveReply, SlaveRequest, Versions,
};
use piwheels_common::transport::Client;
use piwheels_testsupport::db::{APP_ROLE, TestDb};
use piwheels_testsupport::free_port;
use piwheels_testsupport::programs::program;
use piwheels_common::keys::Role;
use piwheels_testsupport::keys::ClientKey;

/// How long anything on the screen may take to appear.
const PATIENCE: Duration = Duration::from_secs(20);

/// A piw-master in its own directories against its own database, killed when dropped.
struct Master {
    child: Child,
    dir: tempfile::TempDir,
    slave_port: u16,
    slave_key: ClientKey,
    db: TestDb,
}

impl Master {
    fn start() -> Master {
        let db = TestDb::new();
        let initdb = Command::new(program("piw-initdb")).args(["--dsn", &db.owner_url(), "--user", APP_ROLE]).env("PIW_CONFIG", "/dev/null").output().unwrap();
        assert!(initdb.status.success(), "piw-initdb failed: {}", String::from_utf8_lossy(&initdb.stderr));
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("piwheels.toml");
        // The build queue is recomputed every second, so that a release the test adds to the
        // database is handed out without a tool's help.
        std::fs::write(&config, "[master]\nstats-interval = \"200ms\"\noracles = 2\nqueue-interval = \"1s\"\n").unwrap();
        let log = std::fs::File::create(dir.path().join("master.log")).unwrap();
        let slave_port = free_port();
        // The scripted slave's key, authorized before the master starts; the monitor shows
        // the slave under the key's label.
        let slave_key = ClientKey::authorized(&dir.path().join("state"), &dir.path().join("slave.key"), Role::Slave, "fake-pi");
        let child = Command::new(program("piw-master"))
            .arg("--config")
            .arg(&config)
            .args(["--dsn", &db.app_url()])
            .args(["--file-queue", &format!("tcp://127.0.0.1:{}", free_port())])
            .args(["--slave-queue", &format!("tcp://127.0.0.1:{slave_port}")])
            .arg("--output-path")
            .arg(dir.path().join("www"))
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .args(["--control-queue", &format!("ipc://{}/run/control", dir.path().display())])
            .args(["--status-queue", &format!("ipc://{}/run/status", dir.path().display())])
            .args(["--import-queue", &format!("ipc://{}/run/import", dir.path().display())])
            .args(["--logger-queue", &format!("ipc://{}/run/logger", dir.path().display())])
            .env_remove("PIW_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Master { child, dir, slave_port, slave_key, db }
    }

    fn control(&self) -> String {
        format!("ipc://{}/run/control", self.dir.path().display())
    }

    fn status(&self) -> String {
        format!("ipc://{}/run/status", self.dir.path().display())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("master.log")).unwrap_or_default()
    }

    /// Asks the master to stop, as an operator's tool would.
    fn quit(&self) {
        let ctx = zmq::Context::new();
        let client = Client::<ControlRequest, ControlReply>::connect(&ctx, &self.control(), None).unwrap();
        let hello = ControlRequest::Hello { versions: Versions::current(), client: "test".into() };
        assert!(matches!(client.request(&hello, Duration::from_secs(5)), Ok(ControlReply::Welcome { .. })));
        assert_eq!(client.request(&ControlRequest::Quit, Duration::from_secs(5)).unwrap(), ControlReply::Done);
    }

    fn wait(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the master did not stop:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- the master's log ---\n{}", self.log());
        }
    }
}

/// piw-monitor running in a detached tmux session on a private tmux server; the server goes
/// when this is dropped.
struct Monitor {
    server: String,
}

impl Monitor {
    /// Starts the monitor in a `width`×`height` window. When it exits, the window stays with
    /// the monitor's last words and its exit status.
    fn start(master: &Master, name: &str, width: u16, height: u16) -> Monitor {
        assert!(
            Command::new("tmux").arg("-V").output().is_ok_and(|o| o.status.success()),
            "this test needs tmux (apt-get install tmux)"
        );
        let server = format!("piw-monitor-test-{}-{name}", std::process::id());
        let monitor = Path::new(env!("CARGO_BIN_EXE_piw-monitor"));
        let command = format!(
            "env PIW_CONFIG=/dev/null {} --control-queue {} --status-queue {}; echo \"[piw-monitor exited with status $?]\"; sleep 600",
            monitor.display(),
            master.control(),
            master.status()
        );
        let started = Command::new("tmux")
            .args(["-L", &server, "-f", "/dev/null", "new-session", "-d", "-s", "monitor", "-x", &width.to_string(), "-y", &height.to_string()])
            .arg(command)
            .env("TERM", "xterm-256color")
            .status()
            .unwrap();
        assert!(started.success(), "tmux did not start");
        Monitor { server }
    }

    fn tmux(&self, args: &[&str]) -> String {
        let output = Command::new("tmux").args(["-L", &self.server]).args(args).output().unwrap();
        assert!(output.status.success(), "tmux {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// The screen as text.
    fn screen(&self) -> String {
        self.tmux(&["capture-pane", "-p", "-t", "monitor"])
    }

    fn press(&self, key: &str) {
        self.tmux(&["send-keys", "-t", "monitor", key]);
    }

    fn resize(&self, width: u16, height: u16) {
        self.tmux(&["resize-window", "-t", "monitor", "-x", &width.to_string(), "-y", &height.to_string()]);
    }

    /// Waits until one row of the screen holds all of `parts`; returns the screen.
    #[track_caller]
    fn wait_for_row(&self, parts: &[&str]) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let screen = self.screen();
            if screen.lines().any(|row| parts.iter().all(|p| row.contains(p))) {
                return screen;
            }
            assert!(Instant::now() < deadline, "no row with {parts:?} within {PATIENCE:?}; the screen:\n{screen}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = Command::new("tmux").args(["-L", &self.server, "kill-server"]).status();
    }
}

/// A slave played by the test, one request at a time.
struct FakeSlave {
    client: Client<SlaveRequest, SlaveReply>,
    _ctx: zmq::Context,
}

impl FakeSlave {
    fn connect(master: &Master) -> (FakeSlave, u32) {
        let ctx = zmq::Context::new();
        let client = Client::connect_secured(&ctx, &format!("tcp://127.0.0.1:{}", master.slave_port), None, &master.slave_key.security()).unwrap();
        let slave = FakeSlave { client, _ctx: ctx };
        let mut hello = piwheels_testsupport::data::slave_hello("fake-pi");
        (hello.host.os_name, hello.host.os_version) = ("Raspbian GNU/Linux".into(), "12 (bookworm)".into());
        match slave.ask(SlaveRequest::Hello(hello)) {
            SlaveReply::Ack { slave_id, .. } => (slave, slave_id),
            other => panic!("hello answered {other:?}"),
        }
    }

    fn ask(&self, request: SlaveRequest) -> SlaveReply {
        self.client.request(&request, Duration::from_secs(10)).unwrap()
    }

    fn idle(&self) -> SlaveReply {
        let stats = HostStats {
            at: chrono::Utc::now(),
            disk_size: 32 << 30,
            disk_free: 20 << 30,
            mem_size: 4 << 30,
            mem_free: 3 << 30,
            load_average: 0.5,
            cpu_temp: 47.0,
            ..HostStats::default()
        };
        self.ask(SlaveRequest::Idle { stats, declined: None })
    }

    /// Says goodbye, which the master does not answer.
    fn bye(&self) {
        let frame = piwheels_common::codec::encode(&SlaveRequest::Bye { reason: "the test is over".into() }).unwrap();
        self.client.socket().send(frame, 0).unwrap();
    }
}

/// A report of a build whose command failed, as a slave makes one.
fn failed_build() -> piwheels_common::protocols::BuildResult {
    piwheels_common::protocols::BuildResult {
        success: false,
        failure: Some(piwheels_common::protocols::FailureKind::Build),
        exit_status: Some(1),
        duration: Duration::from_secs(1),
        cpu_time: Duration::from_secs(1),
        peak_memory: 1 << 20,
        output: "error: the build failed".into(),
        files: Vec::new(),
    }
}

fn exited(monitor: &Monitor, status: i32) -> String {
    monitor.wait_for_row(&[&format!("[piw-monitor exited with status {status}]")])
}

/// The screen of a monitor that has left shows no trace of its tables: the terminal is back
/// to what it was.
#[track_caller]
fn assert_restored(screen: &str) {
    assert!(!screen.contains("Slaves (") && !screen.contains('┌'), "the monitor's screen is still there:\n{screen}");
}

#[test]
fn the_monitor_shows_a_real_master_and_puts_its_slave_to_sleep() {
    let mut master = Master::start();

    // Attach: the tables appear, and q leaves with the terminal restored.
    let first = Monitor::start(&master, "q", 150, 45);
    let screen = first.wait_for_row(&["piw-monitor", "RUNNING"]);
    for parts in [&["Slaves (0)"][..], &["No slaves connected"], &["Tasks", "seraph running"], &["Queue"], &["attached to the master at"]] {
        assert!(screen.lines().any(|row| parts.iter().all(|p| row.contains(p))), "no {parts:?}:\n{screen}");
    }
    first.press("q");
    assert_restored(&exited(&first, 0));

    let monitor = Monitor::start(&master, "main", 150, 45);
    monitor.wait_for_row(&["Slaves (0)"]);

    // A slave joins and finds no work.
    let (slave, id) = FakeSlave::connect(&master);
    assert_eq!(slave.idle(), SlaveReply::Sleep { paused: false });
    monitor.wait_for_row(&["Slaves (1)"]);
    monitor.wait_for_row(&[&id.to_string(), "fake-pi", "cp311", "idle", "0.50", "47°C", "20.0 GiB (63%)"]);
    monitor.wait_for_row(&[&format!("slave {id} (fake-pi) joined: cp311 on linux_armv7l")]);

    // s puts the selected slave to sleep: the master says done, and the slave's next Idle is
    // told to sleep, which the monitor shows.
    monitor.press("s");
    monitor.wait_for_row(&[&format!("sleep slave {id} (fake-pi): done")]);
    assert_eq!(slave.idle(), SlaveReply::Sleep { paused: true });
    monitor.wait_for_row(&["fake-pi", "asleep"]);
    monitor.wait_for_row(&[&format!("slave {id} (fake-pi) is asleep")]);

    // w wakes it.
    monitor.press("w");
    monitor.wait_for_row(&[&format!("wake slave {id} (fake-pi): done")]);
    assert_eq!(slave.idle(), SlaveReply::Sleep { paused: false });
    monitor.wait_for_row(&["fake-pi", "idle"]);

    // d asks first; n leaves the slave alone.
    monitor.press("d");
    monitor.wait_for_row(&["Are you sure?"]);
    monitor.wait_for_row(&[&format!("Kill slave {id} (fake-pi)? It exits at its next contact.")]);
    monitor.press("n");
    monitor.wait_for_row(&[&format!("not done: kill slave {id} (fake-pi)")]);
    assert_eq!(slave.idle(), SlaveReply::Sleep { paused: false });

    // A release to build: the slave reports that its build failed, and the monitor shows the
    // failure as one.
    master.db.execute(
        "INSERT INTO build_abis (abi_tag, python_version) VALUES ('cp311', 311); \
         INSERT INTO packages (package) VALUES ('demo'); \
         INSERT INTO versions (package, version, released, source_filename, source_url, source_sha256) \
         VALUES ('demo', '1.0', now(), 'demo-1.0.tar.gz', 'http://127.0.0.1:9/demo-1.0.tar.gz', repeat('a', 64))",
    );
    let deadline = Instant::now() + PATIENCE;
    while !matches!(slave.idle(), SlaveReply::Build { .. }) {
        assert!(Instant::now() < deadline, "the release was not handed out");
        std::thread::sleep(Duration::from_millis(200));
    }
    monitor.wait_for_row(&[&format!("slave {id} (fake-pi) is building demo 1.0")]);
    assert_eq!(slave.ask(SlaveRequest::Built(failed_build())), SlaveReply::Done);
    monitor.wait_for_row(&[&format!("slave {id} (fake-pi) failed to build demo 1.0 after 1s: its command failed")]);

    // p and r pause and resume the master; a paused master sends its slaves to sleep.
    monitor.press("p");
    monitor.wait_for_row(&["pause the master: done"]);
    monitor.wait_for_row(&["piw-monitor", "PAUSED"]);
    assert_eq!(slave.idle(), SlaveReply::Sleep { paused: true });
    monitor.press("r");
    monitor.wait_for_row(&["resume the master: done"]);
    monitor.wait_for_row(&["piw-monitor", "RUNNING"]);

    // The screen follows the terminal's size.
    monitor.resize(90, 28);
    let screen = monitor.wait_for_row(&["Slaves (1)"]);
    assert!(screen.lines().all(|row| row.chars().count() <= 90), "{screen}");
    // Home shows the log's oldest lines filling the pane, not the oldest alone; End follows.
    monitor.press("Home");
    let screen = monitor.wait_for_row(&["Events (", "newer below: End to follow"]);
    for oldest in ["attached to the master at", &format!("slave {id} (fake-pi) joined")] {
        assert!(screen.contains(oldest), "no {oldest:?} after Home:\n{screen}");
    }
    monitor.press("End");
    monitor.wait_for_row(&["resume the master: done"]);
    monitor.resize(150, 45);

    // The slave leaves.
    slave.bye();
    monitor.wait_for_row(&[&format!("slave {id} (fake-pi) left: said goodbye: the test is over")]);
    monitor.wait_for_row(&["Slaves (0)"]);

    // A second monitor is shown the builds recorded before it attached, and leaves on Ctrl-C.
    let other = Monitor::start(&master, "ctrl-c", 100, 30);
    other.wait_for_row(&["piw-monitor", "RUNNING"]);
    other.wait_for_row(&[&format!("slave {id} (fake-pi) failed to build demo 1.0 after 1s")]);
    other.press("C-c");
    assert_restored(&exited(&other, 0));

    // The master shuts down: the monitor says so and leaves.
    master.quit();
    let screen = exited(&monitor, 0);
    assert!(screen.contains("piw-monitor: the master has shut down"), "{screen}");
    assert_restored(&screen);
    assert!(master.wait(Duration::from_secs(30)).success());
}
