//! The authenticated bus, against a real piw-master whose six sockets all listen on tcp: who
//! gets through each socket's handshake (keys in force with the right role only), what a
//! monitor's key may ask of the control socket, a revocation taking effect on a live
//! connection, the audit log naming the key, and the explicit, refused-where-dangerous way to
//! run without authentication.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use piwheels_common::keys::{Endpoint, Role};
use piwheels_common::protocols::{BuildResult, ControlReply, ControlRequest, HostStats, SlaveEvent, SlaveReply, SlaveRequest, StatusEvent, Versions, WireError};
use piwheels_common::transport::{Client, DEFAULT_MAX_MESSAGE, Receiver, Security, TransportError};
use piwheels_common::upload::{UploadError, UploadOptions, upload};
use piwheels_master::db::migrate;
use piwheels_testsupport::data::{wheel_bytes, wheel_file};
use piwheels_testsupport::db::{APP_ROLE, TestDb};
use piwheels_testsupport::free_port;
use piwheels_testsupport::keys::ClientKey;

const WAIT: Duration = Duration::from_secs(20);

/// A master with every socket on tcp, its log in `master.log`, killed when dropped.
struct Master {
    child: Child,
    dir: tempfile::TempDir,
    db: TestDb,
    ports: [(Endpoint, u16); 6],
}

impl Master {
    /// Starts a master whose state directory already holds the keys `keys` made.
    fn start(keys: impl FnOnce(&std::path::Path)) -> Master {
        Master::start_with(|state, _| keys(state), &[])
    }

    /// [`Master::start`] with `setup` run on the state directory and the migrated database
    /// before the master starts, and `args` added to its command line.
    fn start_with(setup: impl FnOnce(&std::path::Path, &TestDb), args: &[&str]) -> Master {
        let dir = tempfile::tempdir().unwrap();
        let db = TestDb::new();
        migrate::upgrade_blocking(&db.owner_url(), APP_ROLE).unwrap();
        setup(&dir.path().join("state"), &db);
        let ports = Endpoint::ALL.map(|e| (e, free_port()));
        let child = Self::command(&dir, &db, &ports).args(args).spawn().unwrap();
        Master { child, dir, db, ports }
    }

    fn command(dir: &tempfile::TempDir, db: &TestDb, ports: &[(Endpoint, u16)]) -> Command {
        let log = std::fs::File::create(dir.path().join("master.log")).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_piw-master"));
        command.args(["--config", "/dev/null", "--oracles", "2", "--dsn", &db.app_url()]);
        command.arg("--output-path").arg(dir.path().join("www")).arg("--state-dir").arg(dir.path().join("state"));
        for (endpoint, port) in ports {
            let flag = match endpoint {
                Endpoint::Slave => "--slave-queue",
                Endpoint::File => "--file-queue",
                Endpoint::Control => "--control-queue",
                Endpoint::Status => "--status-queue",
                Endpoint::Admin => "--import-queue",
                Endpoint::Logger => "--logger-queue",
            };
            command.arg(flag).arg(format!("tcp://127.0.0.1:{port}"));
        }
        command.env_remove("PIW_LOG").stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
        command
    }

    fn endpoint(&self, which: Endpoint) -> String {
        let port = self.ports.iter().find(|(e, _)| *e == which).map(|(_, p)| *p).unwrap();
        format!("tcp://127.0.0.1:{port}")
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("master.log")).unwrap_or_default()
    }

    /// A control client with `key`, attached once the master answers.
    fn attach(&self, key: &ClientKey) -> Client<ControlRequest, ControlReply> {
        let ctx = zmq::Context::new();
        let deadline = Instant::now() + WAIT;
        loop {
            let client = Client::connect_secured(&ctx, &self.endpoint(Endpoint::Control), Some(DEFAULT_MAX_MESSAGE), &key.security()).unwrap();
            let hello = ControlRequest::Hello { versions: Versions::current(), client: "test".into() };
            match client.request(&hello, Duration::from_secs(1)) {
                Ok(ControlReply::Welcome { .. }) => return client,
                other => {
                    let _ = client.socket().set_linger(0);
                    assert!(Instant::now() < deadline, "the master did not welcome {:?}: {other:?}\n{}", key.file, self.log());
                }
            }
        }
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How a handshake ended, as the client's socket monitor reports it.
#[derive(Debug, PartialEq, Eq)]
enum Handshake {
    Succeeded,
    /// The master's ZAP handler refused the key.
    RefusedKey,
    /// The handshake failed otherwise (a client without CurveZMQ, say).
    Failed,
}

/// Connects a socket of the type `endpoint` serves, with `key` (or none), and waits for the
/// socket monitor to report how the handshake ended: a positive answer either way, never a
/// time-out taken as a refusal.
fn handshake(master: &Master, endpoint: Endpoint, key: Option<&ClientKey>) -> Handshake {
    let ctx = zmq::Context::new();
    let kind = match endpoint {
        Endpoint::Status => zmq::SUB,
        Endpoint::File => zmq::DEALER,
        _ => zmq::REQ,
    };
    let socket = ctx.socket(kind).unwrap();
    socket.set_linger(0).unwrap();
    if let Some(key) = key {
        socket.set_curve_serverkey(key.master.bytes()).unwrap();
        socket.set_curve_publickey(key.pair.public.bytes()).unwrap();
        socket.set_curve_secretkey(key.pair.secret.bytes()).unwrap();
    }
    let events = [
        zmq::SocketEvent::HANDSHAKE_SUCCEEDED,
        zmq::SocketEvent::HANDSHAKE_FAILED_AUTH,
        zmq::SocketEvent::HANDSHAKE_FAILED_PROTOCOL,
        zmq::SocketEvent::HANDSHAKE_FAILED_NO_DETAIL,
    ];
    let watch = format!("inproc://watch-{}", endpoint.zap_domain());
    socket.monitor(&watch, events.iter().fold(0, |all, e| all | i32::from(e.to_raw()))).unwrap();
    let monitor = ctx.socket(zmq::PAIR).unwrap();
    monitor.connect(&watch).unwrap();
    socket.connect(&master.endpoint(endpoint)).unwrap();
    assert!(monitor.poll(zmq::POLLIN, WAIT.as_millis() as i64).unwrap() > 0, "no handshake with {endpoint} within {WAIT:?}");
    let frames = monitor.recv_multipart(0).unwrap();
    let id = u16::from_ne_bytes([frames[0][0], frames[0][1]]);
    if id == zmq::SocketEvent::HANDSHAKE_SUCCEEDED.to_raw() {
        Handshake::Succeeded
    } else if id == zmq::SocketEvent::HANDSHAKE_FAILED_AUTH.to_raw() {
        Handshake::RefusedKey
    } else {
        Handshake::Failed
    }
}

fn slave_hello() -> SlaveRequest {
    SlaveRequest::Hello(piwheels_testsupport::data::slave_hello("what-it-calls-itself"))
}

/// Every role's key, one unknown key and one revoked key, in `state`'s list.
struct Keys {
    by_role: Vec<(Role, ClientKey)>,
    unknown: ClientKey,
    revoked: ClientKey,
}

impl Keys {
    fn make(state: &std::path::Path, dir: &std::path::Path) -> Keys {
        let by_role = Role::ALL.map(|role| (role, ClientKey::authorized(state, &dir.join(format!("{role}.key")), role, &format!("the-{role}")))).to_vec();
        let unknown = ClientKey::unknown(state, &dir.join("unknown.key"));
        let revoked = ClientKey::authorized(state, &dir.join("revoked.key"), Role::Slave, "stolen-pi");
        revoked.revoke(state);
        Keys { by_role, unknown, revoked }
    }

    fn role(&self, role: Role) -> &ClientKey {
        &self.by_role.iter().find(|(r, _)| *r == role).unwrap().1
    }
}

/// A master started with every role's key, an unknown and a revoked key made beforehand; the
/// directory holding the client key files goes with it.
fn keyed_master() -> (Master, Keys, tempfile::TempDir) {
    let keys_dir = tempfile::tempdir().unwrap();
    let mut keys = None;
    let master = Master::start(|state| keys = Some(Keys::make(state, keys_dir.path())));
    (master, keys.unwrap(), keys_dir)
}

#[test]
fn each_tcp_socket_admits_exactly_the_roles_it_serves_and_no_stranger() {
    let (master, keys, _keys_dir) = keyed_master();
    master.attach(keys.role(Role::Operator));

    for endpoint in Endpoint::ALL {
        for (role, key) in &keys.by_role {
            let expected = if role.may_connect(endpoint) { Handshake::Succeeded } else { Handshake::RefusedKey };
            assert_eq!(handshake(&master, endpoint, Some(key)), expected, "{role} on {endpoint}");
        }
        assert_eq!(handshake(&master, endpoint, Some(&keys.unknown)), Handshake::RefusedKey, "an unknown key on {endpoint}");
        assert_eq!(handshake(&master, endpoint, Some(&keys.revoked)), Handshake::RefusedKey, "a revoked key on {endpoint}");
        assert_eq!(handshake(&master, endpoint, None), Handshake::Failed, "no key on {endpoint}");
    }

    // The client's own transport reports the refusal at once, with the key to give the
    // operator, rather than waiting for an answer that cannot come.
    let ctx = zmq::Context::new();
    for stranger in [&keys.unknown, &keys.revoked] {
        let client = Client::<SlaveRequest, SlaveReply>::connect_secured(&ctx, &master.endpoint(Endpoint::Slave), None, &stranger.security()).unwrap();
        match client.request(&slave_hello(), WAIT) {
            Err(e @ TransportError::Unauthorized { .. }) => {
                let text = e.to_string();
                assert!(text.contains(&stranger.pair.public.fingerprint()) && text.contains(&stranger.pair.public.to_string()), "{text}");
            }
            other => panic!("expected a refusal of the key, got {other:?}"),
        }
    }

    // The master logs each refused key once a minute per address, however often it knocks,
    // and says whether the key is unknown or revoked.
    let log = master.log();
    let unknown = format!("refused a connection to the slave socket from 127.0.0.1: the key {} is not authorized", keys.unknown.pair.public.fingerprint());
    assert_eq!(log.matches(&unknown).count(), 1, "{log}");
    let revoked = format!("the key {} (stolen-pi) was revoked", keys.revoked.pair.public.fingerprint());
    assert!(log.contains(&revoked), "{log}");

    // And it goes on serving real slaves, named by their key's label.
    let slave = Client::<SlaveRequest, SlaveReply>::connect_secured(&ctx, &master.endpoint(Endpoint::Slave), None, &keys.role(Role::Slave).security()).unwrap();
    match slave.request(&slave_hello(), WAIT) {
        Ok(SlaveReply::Ack { .. }) => {}
        other => panic!("expected the slave to be welcomed, got {other:?}\n{}", master.log()),
    }
    let deadline = Instant::now() + WAIT;
    while !master.log().contains("slave 1 (the-slave) connected") {
        assert!(Instant::now() < deadline, "{}", master.log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_monitor_may_watch_but_not_command_and_an_operator_may_do_both() {
    let (master, keys, _keys_dir) = keyed_master();

    let monitor = master.attach(keys.role(Role::Monitor));
    for command in [ControlRequest::Pause, ControlRequest::Quit] {
        match monitor.request(&command, WAIT) {
            Ok(ControlReply::Error(WireError { message: reason, .. })) => {
                assert!(reason.contains("key the-monitor (monitor,") && reason.contains("may watch but not command"), "{reason}")
            }
            other => panic!("a monitor's {command:?} was answered {other:?}"),
        }
    }
    let operator = master.attach(keys.role(Role::Operator));
    assert_eq!(operator.request(&ControlRequest::Pause, WAIT).unwrap(), ControlReply::Done);
    assert_eq!(operator.request(&ControlRequest::Resume, WAIT).unwrap(), ControlReply::Done);
    let log = master.log();
    assert!(log.contains("pausing every task on request from key the-operator (operator,"), "{log}");
    // Monitors are told which key asked for what.
    let hello = ControlRequest::Hello { versions: Versions::current(), client: "test".into() };
    let Ok(ControlReply::Welcome { snapshot, .. }) = monitor.request(&hello, WAIT) else { panic!("no welcome") };
    let told = format!("key the-operator (operator, {}) asked to pause the master", keys.role(Role::Operator).pair.public.fingerprint());
    assert!(snapshot.notices.iter().any(|(_, _, text)| *text == told), "{:?}", snapshot.notices);
    assert!(log.contains("refused a command from key the-monitor (monitor,"), "{log}");

    // Revoked while attached: the connection made before is refused from its next request.
    let operator_key = keys.role(Role::Operator);
    operator_key.revoke(&master.state());
    let deadline = Instant::now() + WAIT;
    loop {
        match operator.request(&ControlRequest::Pause, WAIT).unwrap() {
            ControlReply::Error(WireError { message: reason, .. }) => {
                assert!(reason.contains(&format!("the key {} (the-operator) was revoked", operator_key.pair.public.fingerprint())), "{reason}");
                break;
            }
            ControlReply::Done => assert!(Instant::now() < deadline, "the revoked operator key still commands after {WAIT:?}"),
            other => panic!("{other:?}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_audit_log_names_the_key_behind_an_admin_action() {
    let (master, keys, _keys_dir) = keyed_master();
    master.attach(keys.role(Role::Operator));
    let add = |key: &ClientKey, package: &str| {
        Command::new(piwheels_testsupport::programs::program("piw-add"))
            .args(["--config", "/dev/null", "--import-queue", &master.endpoint(Endpoint::Admin)])
            .args(key.args())
            .arg(package)
            .env_remove("PIW_LOG")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let importer = keys.role(Role::Importer);
    let output = add(importer, "numpy");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let actors = master.db.column("SELECT actor FROM audit_log");
    let expected = format!("key the-importer ({}): ", importer.pair.public.fingerprint());
    assert!(actors.iter().flatten().any(|actor| actor.starts_with(&expected)), "{actors:?}");

    // A slave's key is no way into the admin socket: the tool says so and what to do.
    let output = add(keys.role(Role::Slave), "scipy");
    let said = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{said}");
    assert!(said.contains("refused this client's key") && said.contains("piw-keys authorize"), "{said}");
}

#[test]
fn running_without_authentication_is_explicit_and_refused_where_others_can_reach() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::new();
    migrate::upgrade_blocking(&db.owner_url(), APP_ROLE).unwrap();
    let slave_port = free_port();
    let ports = [(Endpoint::File, free_port())];
    let run = |extra: &[&str]| {
        let mut command = Master::command(&dir, &db, &ports);
        command.args(["--control-queue", &format!("ipc://{}/run/control", dir.path().display())]);
        command.args(["--status-queue", &format!("ipc://{}/run/status", dir.path().display())]);
        command.args(["--import-queue", &format!("ipc://{}/run/import", dir.path().display())]);
        command.args(["--logger-queue", &format!("ipc://{}/run/logger", dir.path().display())]);
        command.args(extra);
        command
    };

    // Listening on every address without keys is refused, naming the way out.
    let status = run(&["--no-auth", "--slave-queue", &format!("tcp://*:{slave_port}")]).status().unwrap();
    let log = std::fs::read_to_string(dir.path().join("master.log")).unwrap();
    assert!(!status.success(), "{log}");
    assert!(log.contains("--no-auth would let anyone who reaches tcp://*:") && log.contains("--allow-no-auth-on-network"), "{log}");

    // On loopback it runs, and says at start that authentication is off; a client without a
    // key is served.
    let slave_queue = format!("tcp://127.0.0.1:{slave_port}");
    let mut child = run(&["--no-auth", "--slave-queue", &slave_queue]).spawn().unwrap();
    let ctx = zmq::Context::new();
    let slave = Client::<SlaveRequest, SlaveReply>::connect_secured(&ctx, &slave_queue, None, &Security::Plain).unwrap();
    let answer = slave.request(&slave_hello(), WAIT);
    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(dir.path().join("master.log")).unwrap();
    assert!(matches!(answer, Ok(SlaveReply::Ack { .. })), "{answer:?}\n{log}");
    assert!(log.contains("AUTHENTICATION IS OFF (--no-auth)"), "{log}");
    // The slave calls itself what it likes: nobody vouches for its name.
    assert!(log.contains("(what-it-calls-itself) connected"), "{log}");
}

#[test]
fn the_built_in_server_counts_downloads_over_the_authenticated_logger_socket() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::new();
    migrate::upgrade_blocking(&db.owner_url(), APP_ROLE).unwrap();
    // A published wheel with its record (the master removes wheels no build records at start).
    db.execute(
        "INSERT INTO packages (package) VALUES ('foo');
         INSERT INTO versions (package, version) VALUES ('foo', '1.0');
         WITH b AS (INSERT INTO builds (package, version, built_by, abi_tag, status, duration)
                    VALUES ('foo', '1.0', 1, 'cp311', true, '1 minute') RETURNING build_id)
         INSERT INTO files (filename, build_id, filesize, filehash, package_tag, package_version_tag, py_version_tag, abi_tag, platform_tag)
         SELECT 'foo-1.0-py3-none-any.whl', build_id, 5, repeat('0', 64), 'foo', '1.0', 'py3', 'none', 'any' FROM b",
    );
    let wheel = dir.path().join("www/simple/foo/foo-1.0-py3-none-any.whl");
    std::fs::create_dir_all(wheel.parent().unwrap()).unwrap();
    std::fs::write(&wheel, b"wheel").unwrap();
    let ports = Endpoint::ALL.map(|e| (e, free_port()));
    let http = free_port();
    let child = Master::command(&dir, &db, &ports).args(["--http-listen", &format!("127.0.0.1:{http}")]).spawn().unwrap();
    let master = Master { child, dir, db, ports };
    let get = || -> Option<String> {
        use std::io::{Read, Write};
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", http)).ok()?;
        let agent = "pip/24.0 {\"installer\":{\"name\":\"pip\",\"version\":\"24.0\"}}";
        let request = format!("GET /simple/foo/foo-1.0-py3-none-any.whl HTTP/1.1\r\nHost: localhost\r\nUser-Agent: {agent}\r\nConnection: close\r\n\r\n");
        conn.write_all(request.as_bytes()).ok()?;
        let mut answer = String::new();
        conn.read_to_string(&mut answer).ok()?;
        Some(answer)
    };
    let deadline = Instant::now() + WAIT;
    while !get().is_some_and(|answer| answer.starts_with("HTTP/1.1 200")) {
        assert!(Instant::now() < deadline, "the wheel was never served\n{}", master.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    // The server feeds the logger socket with the master's own key, which no list holds.
    let deadline = Instant::now() + Duration::from_secs(30);
    while master.db.column("SELECT filename FROM downloads").is_empty() {
        assert!(Instant::now() < deadline, "the download was never counted\n{}", master.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(!master.log().contains("refused"), "{}", master.log());
}

/// A transfer belongs to the key of the slave told to send it: another authorized slave that
/// learns its id is refused and the upload still goes through; monitors see which file is
/// asked for, never the id. And one key runs only as many slaves as the master allows.
#[test]
fn a_transfer_is_for_the_key_told_to_send_it_and_one_key_runs_only_so_many_slaves() {
    let keys_dir = tempfile::tempdir().unwrap();
    let (mut keys, mut thief) = (None, None);
    let master = Master::start_with(
        |state, db| {
            keys = Some(Keys::make(state, keys_dir.path()));
            thief = Some(ClientKey::authorized(state, &keys_dir.path().join("thief.key"), Role::Slave, "thief"));
            db.execute(&format!(
                "INSERT INTO build_abis (abi_tag, python_version) VALUES ('cp311', 311);
                 INSERT INTO packages (package) VALUES ('foo'); {}",
                piwheels_testsupport::data::insert_pinned_version("foo", "1.0")
            ));
        },
        &["--max-slaves-per-key", "1"],
    );
    let (keys, thief) = (keys.unwrap(), thief.unwrap());
    let ctx = zmq::Context::new();
    let watcher = Receiver::<StatusEvent>::subscribe_with(&ctx, &master.endpoint(Endpoint::Status), None, &keys.role(Role::Monitor).security(), |_| Ok(())).unwrap();
    let slave_with = |key: &ClientKey| Client::<SlaveRequest, SlaveReply>::connect_secured(&ctx, &master.endpoint(Endpoint::Slave), None, &key.security()).unwrap();
    let slave = slave_with(keys.role(Role::Slave));
    assert!(matches!(slave.request(&slave_hello(), WAIT), Ok(SlaveReply::Ack { .. })), "{}", master.log());

    // A second slave with the same key is refused; another key is welcome.
    match slave_with(keys.role(Role::Slave)).request(&slave_hello(), WAIT) {
        Ok(SlaveReply::Error(WireError { message: reason, .. })) => assert!(reason.contains("this key has 1 slaves connected") && reason.contains("--max-slaves-per-key"), "{reason}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    let thief_slave = slave_with(&thief);
    assert!(matches!(thief_slave.request(&slave_hello(), WAIT), Ok(SlaveReply::Ack { .. })));
    // A subscription hears only what is published once it is in place: until the watcher
    // hears something, the thief is dropped (a request out of turn) and says hello again,
    // each of which monitors are told.
    let deadline = Instant::now() + WAIT;
    while watcher.recv_timeout(Duration::from_millis(200)).unwrap().is_none() {
        assert!(Instant::now() < deadline, "the monitor's subscription never heard the master");
        let busy = SlaveRequest::Busy { stats: HostStats::default() };
        assert!(matches!(thief_slave.request(&busy, WAIT), Ok(SlaveReply::Die { .. })));
        assert!(matches!(thief_slave.request(&slave_hello(), WAIT), Ok(SlaveReply::Ack { .. })));
    }

    let deadline = Instant::now() + WAIT;
    let idle = SlaveRequest::Idle { stats: HostStats::default(), declined: None };
    loop {
        match slave.request(&idle, WAIT).unwrap() {
            SlaveReply::Build { package, version, .. } => break assert_eq!((package.as_str(), version.as_str()), ("foo", "1.0")),
            SlaveReply::Sleep { .. } => assert!(Instant::now() < deadline, "no build was handed out\n{}", master.log()),
            other => panic!("expected work, got {other:?}"),
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let filename = "foo-1.0-cp311-cp311-linux_armv7l.whl";
    let path = keys_dir.path().join(filename);
    let bytes = wheel_bytes(filename, b"the real build");
    std::fs::write(&path, &bytes).unwrap();
    let report = BuildResult {
        success: true,
        failure: None,
        exit_status: Some(0),
        duration: Duration::from_secs(1),
        cpu_time: Duration::from_secs(1),
        peak_memory: 1 << 20,
        output: "built".into(),
        files: vec![wheel_file(filename, &bytes)],
    };
    let Ok(SlaveReply::Send { transfer, .. }) = slave.request(&SlaveRequest::Built(report), WAIT) else { panic!("expected a send") };

    // The thief knows the id (as a leak would tell it) but its key was not told to send.
    let options = || UploadOptions { overall_timeout: WAIT, ..Default::default() };
    match upload(&ctx, &master.endpoint(Endpoint::File), &thief.security(), transfer, &path, options()) {
        Err(UploadError::Refused { reason, .. }) => assert_eq!(reason, format!("transfer {transfer} was not asked of this key")),
        other => panic!("expected a refusal, got {other:?}"),
    }
    upload(&ctx, &master.endpoint(Endpoint::File), &keys.role(Role::Slave).security(), transfer, &path, options()).unwrap();
    assert_eq!(slave.request(&SlaveRequest::Sent { filename: filename.into() }, WAIT).unwrap(), SlaveReply::Done);
    assert_eq!(std::fs::read(master.dir.path().join("www/simple/foo").join(filename)).unwrap(), bytes);

    // Monitors were told a file was asked for, with the id hidden. The status relay may lag
    // behind under load: wait for the event itself rather than for a pause in the stream.
    let deadline = Instant::now() + WAIT;
    let mut asked = Vec::new();
    while asked.is_empty() && Instant::now() < deadline {
        if let Ok(Some(StatusEvent::Slave { event: SlaveEvent::Replied(SlaveReply::Send { filename, transfer }), .. })) =
            watcher.recv_timeout(Duration::from_millis(200))
        {
            asked.push((filename, transfer));
        }
    }
    assert_eq!(asked, [(filename.to_string(), 0)]);
}
