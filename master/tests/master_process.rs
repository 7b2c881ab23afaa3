//! piw-master as a process: start-up, the lock against a second master, the control socket,
//! status relay, and clean stops on QUIT, SIGTERM and SIGINT.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use piwheels_common::protocols::{ControlReply, ControlRequest, SlaveAction, SlaveTarget, StatusEvent, TaskState, Versions, WireError};
use piwheels_common::transport::{Client, Receiver};
use piwheels_master::db::migrate;
use piwheels_testsupport::db::{APP_ROLE, TestDb};
use piwheels_testsupport::free_port;
use piwheels_common::keys::Role;
use piwheels_testsupport::keys::ClientKey;

/// A master running in its own temporary directories against its own database, killed when
/// dropped.
struct Master {
    child: Child,
    dir: tempfile::TempDir,
    db: TestDb,
}

/// A database with the current schema, its app role granted.
fn migrated_db() -> TestDb {
    let db = TestDb::new();
    migrate::upgrade_blocking(&db.owner_url(), APP_ROLE).unwrap();
    db
}

impl Master {
    fn start() -> Master {
        let dir = tempfile::tempdir().unwrap();
        let db = migrated_db();
        let child = Self::spawn(dir.path(), &dir.path().join("state"), &dir.path().join("www"), "run", &db.app_url());
        Master { child, dir, db }
    }

    fn spawn(root: &Path, state: &Path, output: &Path, run: &str, dsn: &str) -> Child {
        Self::spawn_with(root, state, output, run, dsn, free_port(), "")
    }

    /// A master whose file socket listens on `file_port`, with `extra` lines in the
    /// `[master]` table of its configuration file.
    fn spawn_with(root: &Path, state: &Path, output: &Path, run: &str, dsn: &str, file_port: u16, extra: &str) -> Child {
        Self::command(root, state, output, run, dsn, file_port, extra).spawn().unwrap()
    }

    /// The command that [`Master::spawn_with`] runs.
    fn command(root: &Path, state: &Path, output: &Path, run: &str, dsn: &str, file_port: u16, extra: &str) -> Command {
        let config = root.join("piwheels.toml");
        std::fs::write(&config, format!("[master]\nstats-interval = \"100ms\"\noracles = 2\n{extra}")).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_piw-master"));
        command
            .arg("--config")
            .arg(&config)
            .arg("--dsn")
            .arg(dsn)
            .arg("--file-queue")
            .arg(format!("tcp://127.0.0.1:{file_port}"))
            .arg("--slave-queue")
            .arg(format!("tcp://127.0.0.1:{}", free_port()))
            .arg("--output-path")
            .arg(output)
            .arg("--state-dir")
            .arg(state)
            .arg("--control-queue")
            .arg(format!("ipc://{}/{run}/control", root.display()))
            .arg("--status-queue")
            .arg(format!("ipc://{}/{run}/status", root.display()))
            .arg("--import-queue")
            .arg(format!("ipc://{}/{run}/import", root.display()))
            .arg("--logger-queue")
            .arg(format!("ipc://{}/{run}/logger", root.display()))
            .env_remove("PIW_LOG")
            .env_remove("NOTIFY_SOCKET")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        command
    }

    fn control_endpoint(&self) -> String {
        format!("ipc://{}/run/control", self.dir.path().display())
    }

    fn status_endpoint(&self) -> String {
        format!("ipc://{}/run/status", self.dir.path().display())
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.path().join("state/piw-master.pid")
    }

    /// A control client that has said hello, waiting for the master to come up.
    fn attach(&self, ctx: &zmq::Context) -> (Client<ControlRequest, ControlReply>, ControlReply) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let client = Client::connect(ctx, &self.control_endpoint(), None).unwrap();
            let hello = ControlRequest::Hello { versions: Versions::current(), client: "test".into() };
            match client.request(&hello, Duration::from_millis(300)) {
                Ok(reply) => return (client, reply),
                Err(e) => assert!(Instant::now() < deadline, "master never answered: {e}"),
            }
        }
    }

    fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "master did not exit within {timeout:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stderr(&mut self) -> String {
        let mut text = String::new();
        std::io::Read::read_to_string(self.child.stderr.as_mut().unwrap(), &mut text).unwrap();
        text
    }

    fn assert_cleaned_up(&self) {
        assert!(!self.pid_file().exists(), "pid file left behind");
        let leftovers: Vec<_> = std::fs::read_dir(self.dir.path().join("run")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(leftovers.is_empty(), "ipc socket files left behind: {leftovers:?}");
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn hello_is_welcomed_with_a_snapshot_and_quit_stops_cleanly() {
    let mut master = Master::start();
    let ctx = zmq::Context::new();
    let (client, welcome) = master.attach(&ctx);
    match welcome {
        ControlReply::Welcome { versions, snapshot } => {
            assert_eq!(versions, Versions::current());
            assert!(!snapshot.paused);
            assert!(!snapshot.host.label.is_empty());
        }
        other => panic!("expected a welcome, got {other:?}"),
    }
    assert_eq!(std::fs::read_to_string(master.pid_file()).unwrap().trim(), master.child.id().to_string());
    assert_eq!(client.request(&ControlRequest::Quit, Duration::from_secs(2)).unwrap(), ControlReply::Done);
    let status = master.wait(Duration::from_secs(10));
    assert!(status.success(), "exit status {status}");
    master.assert_cleaned_up();
    assert!(master.stderr().contains("shutting down: QUIT"));
}

#[test]
fn sigterm_and_sigint_each_stop_the_master_cleanly() {
    for signal in [Signal::SIGTERM, Signal::SIGINT] {
        let mut master = Master::start();
        let ctx = zmq::Context::new();
        master.attach(&ctx);
        kill(Pid::from_raw(master.child.id() as i32), signal).unwrap();
        let status = master.wait(Duration::from_secs(10));
        assert!(status.success(), "{signal}: exit status {status}");
        master.assert_cleaned_up();
        assert!(master.stderr().contains(&format!("shutting down: {} received", signal.as_str())));
    }
}

#[test]
fn a_second_master_on_the_same_directories_is_refused_naming_the_pid() {
    let master = Master::start();
    let ctx = zmq::Context::new();
    master.attach(&ctx);
    let root = master.dir.path();
    let expected = format!("pid {}", master.child.id());
    let dsn = master.db.app_url();
    // Same state directory.
    let out = Master::spawn(root, &root.join("state"), &root.join("www2"), "run2", &dsn).wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && text.contains(&expected) && text.contains("state directory"), "{text}");
    // Same output directory, another state directory.
    let out = Master::spawn(root, &root.join("state2"), &root.join("www"), "run3", &dsn).wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && text.contains(&expected) && text.contains("output directory"), "{text}");
    // The first master is unharmed.
    master.attach(&ctx);
}

#[test]
fn a_client_with_other_versions_is_refused_naming_both() {
    let master = Master::start();
    let ctx = zmq::Context::new();
    master.attach(&ctx);
    let client = Client::<ControlRequest, ControlReply>::connect(&ctx, &master.control_endpoint(), None).unwrap();
    let old = Versions { protocol: 0, software: "0.0.1".into() };
    let reply = client.request(&ControlRequest::Hello { versions: old, client: "old-monitor".into() }, Duration::from_secs(2)).unwrap();
    match reply {
        ControlReply::Error(WireError { message: reason, .. }) => {
            assert!(reason.contains("protocol 0") && reason.contains("0.0.1"), "{reason}");
            assert!(reason.contains(&format!("protocol {}", piwheels_common::PROTOCOL_VERSION)), "{reason}");
            assert!(reason.contains(piwheels_common::SOFTWARE_VERSION), "{reason}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // Having been refused, it is still a stranger.
    let reply = client.request(&ControlRequest::Quit, Duration::from_secs(2)).unwrap();
    assert!(matches!(reply, ControlReply::Error(_)), "{reply:?}");
}

#[test]
fn garbage_on_the_control_socket_is_answered_and_the_master_runs_on() {
    let master = Master::start();
    let ctx = zmq::Context::new();
    master.attach(&ctx);
    let raw = ctx.socket(zmq::REQ).unwrap();
    raw.set_rcvtimeo(2000).unwrap();
    raw.connect(&master.control_endpoint()).unwrap();
    raw.send(&b"\x92\xa4junk\xc1"[..], 0).unwrap();
    let reply = raw.recv_bytes(0).unwrap();
    let reply: ControlReply = piwheels_common::codec::decode(&reply).unwrap();
    assert!(matches!(reply, ControlReply::Error(_)), "{reply:?}");
    // An oversized request (over 64 KiB) is dropped by libzmq; the master stays up.
    let big = ctx.socket(zmq::DEALER).unwrap();
    big.connect(&master.control_endpoint()).unwrap();
    big.send_multipart([&b""[..], &vec![0u8; 1 << 20]], 0).unwrap();
    let (_client, welcome) = master.attach(&ctx);
    assert!(matches!(welcome, ControlReply::Welcome { .. }));
}

#[test]
fn task_states_and_stats_are_relayed_to_monitors() {
    let master = Master::start();
    let ctx = zmq::Context::new();
    let status = Receiver::<StatusEvent>::subscribe(&ctx, &master.status_endpoint(), None).unwrap();
    let (client, _) = master.attach(&ctx);
    // Host figures arrive every 100 ms (the stats interval set in the test's config file).
    let deadline = Instant::now() + Duration::from_secs(10);
    let stats = loop {
        assert!(Instant::now() < deadline, "no stats relayed");
        if let Some(StatusEvent::Stats(stats)) = status.recv_timeout(Duration::from_millis(200)).unwrap() {
            break stats;
        }
    };
    assert!(stats.host.mem_size > 0 && stats.host.disk_size > 0, "{stats:?}");
    assert_eq!(client.request(&ControlRequest::Pause, Duration::from_secs(2)).unwrap(), ControlReply::Done);
    // Every task that pauses reports it; wait for the stats task's report among them.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "the stats task's pause was not relayed");
        if let Some(StatusEvent::Task { name, state: TaskState::Paused, .. }) = status.recv_timeout(Duration::from_millis(200)).unwrap()
            && name == "big_brother"
        {
            break;
        }
    }
    // A monitor attaching now sees the paused master and task in its snapshot.
    let (_other, welcome) = master.attach(&ctx);
    match welcome {
        ControlReply::Welcome { snapshot, .. } => {
            assert!(snapshot.paused);
            assert_eq!(snapshot.tasks.get("big_brother"), Some(&TaskState::Paused));
            assert!(!snapshot.stats.is_empty());
        }
        other => panic!("expected a welcome, got {other:?}"),
    }
    assert_eq!(client.request(&ControlRequest::Resume, Duration::from_secs(2)).unwrap(), ControlReply::Done);
}

#[test]
fn slave_commands_reach_the_slave_driver() {
    let master = Master::start();
    let ctx = zmq::Context::new();
    let (client, _) = master.attach(&ctx);
    let all = ControlRequest::Slaves { target: SlaveTarget::All, action: SlaveAction::Sleep };
    assert_eq!(client.request(&all, Duration::from_secs(5)).unwrap(), ControlReply::Done);
    let one = ControlRequest::Slaves { target: SlaveTarget::One(99), action: SlaveAction::Kill };
    match client.request(&one, Duration::from_secs(5)).unwrap() {
        ControlReply::Error(WireError { message, .. }) => assert!(message.contains("no slave has id 99"), "{message}"),
        other => panic!("unexpected {other:?}"),
    }
    // Every builder of a host would pass a change to all on: it is for one slave only.
    let grow_all = ControlRequest::Slaves { target: SlaveTarget::All, action: SlaveAction::AddBuilder };
    match client.request(&grow_all, Duration::from_secs(5)).unwrap() {
        ControlReply::Error(WireError { message, .. }) => assert!(message.contains("name the slave"), "{message}"),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn a_database_the_master_cannot_use_stops_it_at_once_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // A database without the schema.
    let empty = TestDb::new();
    let out = Master::spawn(root, &root.join("state"), &root.join("www"), "run", &empty.app_url()).wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && text.contains("piw-initdb"), "{text}");
    // A superuser role.
    let db = migrated_db();
    let out = Master::spawn(root, &root.join("state"), &root.join("www"), "run", &db.superuser_url()).wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && text.contains("superuser"), "{text}");
    // Nothing left behind by the failed starts.
    assert!(!root.join("state/piw-master.pid").exists());
}

#[test]
fn the_file_socket_refuses_an_upload_nobody_expects() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let db = migrated_db();
    let port = free_port();
    let key = ClientKey::authorized(&root.join("state"), &root.join("slave.key"), Role::Slave, "pi-1");
    let mut child = Master::spawn_with(root, &root.join("state"), &root.join("www"), "run", &db.app_url(), port, "");
    let ctx = zmq::Context::new();
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), b"not a wheel").unwrap();
    let options = piwheels_common::upload::UploadOptions { overall_timeout: Duration::from_secs(10), ..Default::default() };
    let result = piwheels_common::upload::upload(&ctx, &format!("tcp://127.0.0.1:{port}"), &key.security(), 12345, file.path(), options);
    let _ = child.kill();
    let _ = child.wait();
    match result {
        Err(piwheels_common::upload::UploadError::Refused { reason, .. }) => assert!(reason.contains("12345"), "{reason}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    // Staging lives in the state directory, outside the served tree.
    assert!(root.join("state/staging").is_dir());
}

#[test]
fn the_master_follows_pypi_when_given_its_address() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let db = migrated_db();
    let pypi = piwheels_testsupport::pypi::FakePypi::start();
    pypi.create_package("Followed", Some("seen by the master"));
    let extra = format!("pypi-interval = \"100ms\"\npypi-xmlrpc = \"{}\"\npypi-json = \"{}\"\n", pypi.xmlrpc_url(), pypi.json_url());
    let mut child = Master::spawn_with(root, &root.join("state"), &root.join("www"), "run", &db.app_url(), free_port(), &extra);
    let deadline = Instant::now() + Duration::from_secs(20);
    // The summary comes a moment after the project, which it never holds back.
    let found = loop {
        let rows = db.column("SELECT package || ' ' || description FROM packages");
        if rows == [Some("followed seen by the master".into())] || Instant::now() > deadline {
            break rows;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(found, [Some("followed seen by the master".into())]);
}

#[test]
fn the_master_serves_its_index_over_http_when_asked_and_counts_downloads() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let db = migrated_db();
    let port = free_port();
    let extra = format!("http-listen = \"127.0.0.1:{port}\"\n");
    let child = Master::spawn_with(root, &root.join("state"), &root.join("www"), "run", &db.app_url(), free_port(), &extra);
    let mut master = Master { child, dir, db };
    let get = |path: &str, agent: &str| -> Option<String> {
        use std::io::{Read, Write};
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: {agent}\r\nConnection: close\r\n\r\n");
        conn.write_all(request.as_bytes()).ok()?;
        let mut answer = String::new();
        conn.read_to_string(&mut answer).ok()?;
        Some(answer)
    };
    // The index writer writes the (empty) root index at start-up; the server then serves it.
    let deadline = Instant::now() + Duration::from_secs(20);
    let page = loop {
        if let Some(answer) = get("/simple/", "curl/8") && answer.starts_with("HTTP/1.1 200") {
            break answer;
        }
        assert!(Instant::now() < deadline, "the index was never served");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(page.contains("pypi:repository-version"), "{page}");
    // A wheel fetched by pip is counted as a download, as piw-logger would count it.
    let wheel = master.dir.path().join("www/simple/foo/foo-1.0-py3-none-any.whl");
    std::fs::create_dir_all(wheel.parent().unwrap()).unwrap();
    std::fs::write(&wheel, b"wheel").unwrap();
    let answer = get("/simple/foo/foo-1.0-py3-none-any.whl", "pip/24.0 {\"installer\":{\"name\":\"pip\",\"version\":\"24.0\"}}").unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while master.db.column("SELECT filename FROM downloads") != [Some("foo-1.0-py3-none-any.whl".to_string())] {
        assert!(Instant::now() < deadline, "the download was never counted");
        std::thread::sleep(Duration::from_millis(200));
    }
    kill(Pid::from_raw(master.child.id() as i32), Signal::SIGTERM).unwrap();
    assert!(master.wait(Duration::from_secs(20)).success());
}

#[test]
fn systemd_hears_ready_the_watchdog_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let db = migrated_db();
    let socket_path = root.join("notify");
    let systemd = UnixDatagram::bind(&socket_path).unwrap();
    systemd.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let child = Master::command(root, &root.join("state"), &root.join("www"), "run", &db.app_url(), free_port(), "")
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "400000")
        .spawn()
        .unwrap();
    let mut master = Master { child, dir, db };
    let next = || {
        let mut buf = [0u8; 512];
        let n = systemd.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert!(next().starts_with("READY=1\n"));
    // Fed at half the watchdog's interval while every task runs.
    assert_eq!(next(), "WATCHDOG=1");
    assert_eq!(next(), "WATCHDOG=1");
    kill(Pid::from_raw(master.child.id() as i32), Signal::SIGTERM).unwrap();
    loop {
        let message = next();
        if message.starts_with("STOPPING=1") {
            break;
        }
        assert_eq!(message, "WATCHDOG=1");
    }
    assert!(master.wait(Duration::from_secs(20)).success());
}

/// At start, before any task runs, the master removes a wheel no build records (its build
/// was lost with the last run) and a staging entry past the abandon time, and says so.
#[test]
fn the_master_removes_what_no_build_records_before_it_starts() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let db = migrated_db();
    let stray = root.join("www/simple/foo/foo-1.0-py3-none-any.whl");
    std::fs::create_dir_all(stray.parent().unwrap()).unwrap();
    std::fs::write(&stray, b"published, but its build was never recorded").unwrap();
    let staged = root.join("state/staging/42.part");
    std::fs::create_dir_all(staged.parent().unwrap()).unwrap();
    std::fs::write(&staged, b"half a wheel").unwrap();
    let extra = "abandon-after = \"1ms\"\n";
    let child = Master::spawn_with(&root, &root.join("state"), &root.join("www"), "run", &db.app_url(), free_port(), extra);
    let mut master = Master { child, dir, db };
    let ctx = zmq::Context::new();
    let (client, _) = master.attach(&ctx);
    assert!(!stray.exists(), "the unrecorded wheel is still there");
    assert!(!staged.exists(), "the stale staging entry is still there");
    assert_eq!(client.request(&ControlRequest::Quit, Duration::from_secs(2)).unwrap(), ControlReply::Done);
    master.wait(Duration::from_secs(10));
    let log = master.stderr();
    assert!(log.contains("consistency check at start"), "{log}");
    for path in [&stray, &staged] {
        assert!(log.contains(&format!("removed {}", path.display())), "{log}");
    }
}
