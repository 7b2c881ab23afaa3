//! The slave driver with the architect, the file juggler, real oracles and a real database,
//! and slaves played by the test over real tcp sockets: the whole conversation, operators'
//! commands, deletions, silent slaves and bad input.

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use piwheels_common::clock::FakeClock;
use piwheels_common::protocols::{BuildResult, FailureKind, HostStats, NoticeLevel, SlaveAction, PackageVersion, SlaveEvent, SlaveHello, SlaveReply, SlaveRequest, SlaveTarget, StatusEvent, TaskControl, Versions, WheelFile, WireError};
use piwheels_master::calls::db::{Project, QueuedBuild, Reproducibility, RewriteScope, Verdict, WantCrossCheck, WantRebuild};
use piwheels_master::calls::files::{Expected, FsReply, FsRequest, Verification, Verify};
use piwheels_master::calls::tasks::{ArchitectTrigger, BuildQueueUpdate, ReleaseAck, ReleaseNotice, SlaveCommand, SlaveCommandReply, StatsUpdate, WebReply, WebRequest};
use piwheels_common::task::{self, Runtime, TaskHandle};
use piwheels_common::transport::{Client, Receiver, Sender, Server};
use piwheels_common::upload::{UploadOptions, upload};
use piwheels_master::architect::{self, Architect, QueueConfig};
use piwheels_master::file_juggler::JugglerConfig;
use piwheels_master::slave_driver::{self, DriverConfig, RETRY_FIRST, SlaveDriver, SlaveLimits};
use piwheels_testsupport::data::{source_file, wheel_bytes, wheel_file, wheel_with_metadata};
use piwheels_testsupport::free_port;
use support::{Pool, eventually, stand_in};
use piwheels_common::transport::Security;
use piwheels_master::gatekeeper::Auth;
use piwheels_master::wiring;

const WAIT: Duration = Duration::from_secs(10);

/// The master's tasks that slaves meet, over a real database, with the index writer played by
/// a thread that records what it is asked.
struct Farm {
    pool: Pool,
    dir: tempfile::TempDir,
    slave_endpoint: String,
    file_endpoint: String,
    driver: TaskHandle,
    web_requests: Arc<Mutex<Vec<WebRequest>>>,
    events: Vec<StatusEvent>,
    /// The driver's reports of its queue's lengths (the stats task's end).
    stats: Receiver<StatsUpdate>,
}


impl Farm {
    /// A farm whose database holds `releases` (package, version) for ABI cp311.
    fn start(releases: &[(&str, &str)]) -> Farm {
        Farm::start_with(releases, SlaveLimits::default(), |_| {})
    }

    /// [`Farm::start`] with `limits` on slaves and the file juggler configured by `juggler`.
    fn start_with(releases: &[(&str, &str)], limits: SlaveLimits, juggler: impl FnOnce(&mut JugglerConfig)) -> Farm {
        Farm::start_inner(releases, limits, Some(juggler), 0.0, false)
    }

    /// [`Farm::start`] without a file juggler: the test plays it at `wiring::FS`.
    fn start_without_juggler(releases: &[(&str, &str)]) -> Farm {
        Farm::start_inner(releases, SlaveLimits::default(), None::<fn(&mut JugglerConfig)>, 0.0, false)
    }

    /// [`Farm::start`] with every successful build cross-checked.
    fn start_cross_checking(releases: &[(&str, &str)]) -> Farm {
        Farm::start_inner(releases, SlaveLimits::default(), Some(|_: &mut JugglerConfig| {}), 1.0, false)
    }

    /// [`Farm::start`] holding work from builders whose environment drifted.
    fn start_holding_drifted(releases: &[(&str, &str)]) -> Farm {
        Farm::start_inner(releases, SlaveLimits::default(), Some(|_: &mut JugglerConfig| {}), 0.0, true)
    }

    fn start_inner(releases: &[(&str, &str)], limits: SlaveLimits, juggler: Option<impl FnOnce(&mut JugglerConfig)>, cross_check_share: f64, hold_drifted: bool) -> Farm {
        let mut pool = Pool::with_releases(releases);
        let dir = tempfile::tempdir().unwrap();
        let file_endpoint = match juggler {
            Some(configure) => pool.start_file_juggler_with(dir.path(), configure),
            None => String::new(),
        };
        let web_requests = stand_in(&pool.rt.zmq, "inproc://web", WebReply::Done);
        let stats = Receiver::<StatsUpdate>::pull(&pool.rt.zmq, wiring::STATS.address(), None).unwrap();
        let queue = QueueConfig { interval: Duration::from_secs(3600), debounce: Duration::from_millis(100), limit: 100 };
        pool.tasks.add(task::spawn(&pool.rt, "architect", architect::Sockets::open, move |_| Ok(Architect::new(queue))).unwrap());
        let slave_endpoint = format!("tcp://127.0.0.1:{}", free_port());
        let config = DriverConfig {
            slave_queue: slave_endpoint.clone(),
            index_url: "http://127.0.0.1:9/simple/".into(),
            max_message: 16 << 20,
            db_timeout: WAIT,
            auth: Auth::disabled(),
            limits,
            retry_backoff: RETRY_FIRST,
            cross_check_share,
            hold_drifted,
        };
        let (open_config, status) = (config.clone(), pool.rt.status_endpoint.clone());
        let driver = task::spawn(
            &pool.rt,
            "slave_driver",
            move |ctx| slave_driver::Sockets::open(ctx, &open_config, &status),
            move |_| Ok(SlaveDriver::new(config.clone())),
        )
        .unwrap();
        Farm { pool, dir, slave_endpoint, file_endpoint, driver, web_requests, events: Vec::new(), stats }
    }

    fn slave(&self, label: &str) -> FakeSlave {
        FakeSlave::connect(&self.pool.rt.zmq, &self.slave_endpoint, label)
    }

    /// Asks the architect for a new queue, and returns once the driver has a queue that is not
    /// empty: it reports the queue's length when it gets one, so the next idle slave is handed
    /// work (tests count the driver's replies).
    fn refresh_queue(&self) {
        let trigger = Sender::<ArchitectTrigger>::push(&self.pool.rt.zmq, wiring::ARCHITECT.address()).unwrap();
        trigger.send(&ArchitectTrigger::Refresh { reason: "test".into() }, WAIT).unwrap();
        let deadline = Instant::now() + WAIT;
        loop {
            match self.stats.recv_timeout(WAIT).unwrap() {
                Some(StatsUpdate::Queues { lengths }) if lengths.values().sum::<u64>() > 0 => break,
                _ => assert!(Instant::now() < deadline, "the driver never had a queue"),
            }
        }
    }

    fn command(&self, target: SlaveTarget, action: SlaveAction) -> SlaveCommandReply {
        let client = Client::<SlaveCommand, SlaveCommandReply>::connect(&self.pool.rt.zmq, wiring::SLAVE_COMMANDS.address(), None).unwrap();
        client.request(&SlaveCommand { target, action }, WAIT).unwrap()
    }

    fn notify(&self, notice: ReleaseNotice) {
        let client = Client::<ReleaseNotice, ReleaseAck>::connect(&self.pool.rt.zmq, wiring::RELEASE_NOTICES.address(), None).unwrap();
        assert_eq!(client.request(&notice, WAIT).unwrap(), ReleaseAck::Done);
    }

    /// Every status event so far.
    fn events(&mut self) -> &[StatusEvent] {
        while let Ok(Some(event)) = self.pool.status.recv_timeout(Duration::from_millis(50)) {
            self.events.push(event);
        }
        &self.events
    }

    /// The events published so far, without waiting for more: the driver publishes on inproc,
    /// so whatever it published before answering a request is here once the answer is.
    fn events_so_far(&mut self) -> &[StatusEvent] {
        while let Ok(Some(event)) = self.pool.status.recv_timeout(Duration::ZERO) {
            self.events.push(event);
        }
        &self.events
    }

    fn web_requests(&self) -> Vec<WebRequest> {
        self.web_requests.lock().unwrap().clone()
    }

    fn builds(&self) -> Vec<String> {
        self.pool
            .db
            .column("SELECT concat_ws(' ', package, version, built_by, builder, status, coalesce(failure, '-')) FROM builds ORDER BY build_id")
            .into_iter()
            .map(Option::unwrap)
            .collect()
    }
}

/// A slave played by the test.
struct FakeSlave {
    client: Client<SlaveRequest, SlaveReply>,
    label: String,
    busy_timeout: Duration,
}

fn hello(label: &str, busy_timeout: Duration) -> SlaveHello {
    SlaveHello { busy_timeout, ..piwheels_testsupport::data::slave_hello(label) }
}

fn idle() -> SlaveRequest {
    SlaveRequest::Idle { stats: HostStats::default(), declined: None }
}

fn busy() -> SlaveRequest {
    SlaveRequest::Busy { stats: HostStats::default() }
}

fn result(success: bool, files: Vec<WheelFile>) -> BuildResult {
    BuildResult {
        success,
        failure: if success { None } else { Some(FailureKind::Build) },
        exit_status: Some(if success { 0 } else { 1 }),
        // Reported at once, so no longer than the clock slack the driver allows.
        duration: Duration::from_secs(1),
        cpu_time: Duration::from_secs(1),
        peak_memory: 1 << 20,
        output: if success { "built".into() } else { "error: it broke".into() },
        files,
    }
}

impl FakeSlave {
    /// Reports a successful build of `package` `version` with one wheel and sends it; the
    /// build is recorded.
    fn deliver(&self, farm: &Farm, package: &str, version: &str) {
        self.deliver_bytes(farm, package, version, format!("{package} {version}").as_bytes());
    }

    /// [`FakeSlave::deliver`] with a wheel whose payload is `payload`.
    fn deliver_bytes(&self, farm: &Farm, package: &str, version: &str, payload: &[u8]) {
        let (path, file) = wheel(farm.dir.path(), package, version, payload);
        let SlaveReply::Send { filename, transfer } = self.ask(SlaveRequest::Built(result(true, vec![file]))) else {
            panic!("expected a send")
        };
        upload(&farm.pool.rt.zmq, &farm.file_endpoint, &Security::Plain, transfer, &path, UploadOptions::default()).unwrap();
        assert_eq!(self.ask(SlaveRequest::Sent { filename }), SlaveReply::Done);
    }

    fn connect(ctx: &zmq::Context, endpoint: &str, label: &str) -> FakeSlave {
        FakeSlave { client: Client::connect(ctx, endpoint, None).unwrap(), label: label.into(), busy_timeout: Duration::from_secs(300) }
    }

    fn ask(&self, request: SlaveRequest) -> SlaveReply {
        self.client.request(&request, WAIT).unwrap()
    }

    /// Says hello and returns the slave id.
    fn hello(&self) -> u32 {
        self.hello_building_with(piwheels_testsupport::data::slave_hello(&self.label).environment)
    }

    /// Says hello, building with `environment`, and returns the slave id.
    fn hello_building_with(&self, environment: BTreeMap<String, String>) -> u32 {
        match self.ask(SlaveRequest::Hello(SlaveHello { environment, ..hello(&self.label, self.busy_timeout) })) {
            SlaveReply::Ack { slave_id, index_url } => {
                assert_eq!(index_url, "http://127.0.0.1:9/simple/");
                slave_id
            }
            other => panic!("expected an ack, got {other:?}"),
        }
    }

    /// Asks for work until some is handed out.
    fn take_build(&self) -> (String, String) {
        let deadline = Instant::now() + WAIT;
        loop {
            match self.ask(idle()) {
                SlaveReply::Build { package, version, .. } => return (package, version),
                SlaveReply::Sleep { .. } => assert!(Instant::now() < deadline, "no work was handed out"),
                other => panic!("expected work, got {other:?}"),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A wheel file on disk for `package` `version` whose payload is `contents`, and its
/// description.
fn wheel(dir: &std::path::Path, package: &str, version: &str, contents: &[u8]) -> (std::path::PathBuf, WheelFile) {
    let filename = format!("{package}-{version}-cp311-cp311-linux_armv7l.whl");
    let path = dir.join(&filename);
    let bytes = wheel_bytes(&filename, contents);
    std::fs::write(&path, &bytes).unwrap();
    (path, wheel_file(&filename, &bytes))
}

#[test]
fn a_build_is_handed_out_its_wheel_sent_and_the_build_recorded() {
    let mut farm = Farm::start(&[("foo", "1.0")]);
    let slave = farm.slave("pi-1");
    let id = slave.hello();
    farm.refresh_queue();
    assert_eq!(slave.take_build(), ("foo".to_string(), "1.0".to_string()));
    assert_eq!(slave.ask(busy()), SlaveReply::Cont);

    let (path, file) = wheel(farm.dir.path(), "foo", "1.0", b"wheel bytes");
    let SlaveReply::Send { filename, transfer } = slave.ask(SlaveRequest::Built(result(true, vec![file]))) else {
        panic!("expected a send")
    };
    assert_eq!(filename, "foo-1.0-cp311-cp311-linux_armv7l.whl");
    upload(&farm.pool.rt.zmq, &farm.file_endpoint, &Security::Plain, transfer, &path, UploadOptions::default()).unwrap();
    assert_eq!(slave.ask(SlaveRequest::Sent { filename: filename.clone() }), SlaveReply::Done);

    let published = farm.dir.path().join("www/simple/foo").join(&filename);
    assert_eq!(std::fs::read(published).unwrap(), std::fs::read(&path).unwrap());
    assert_eq!(farm.builds(), [format!("foo 1.0 {id} pi-1 t -")]);
    let files = farm.pool.db.column("SELECT filename FROM files");
    assert_eq!(files, [Some(filename)]);
    let web = farm.web_requests();
    // The log and the pages in one request; the rewrite was recorded with the build. The log
    // starts with what the master knows of the build, then the slave's log.
    let header = format!("== piwheels build of foo 1.0 for cp311 ==\nbuilder      pi-1 (slave {id})\nstarted      ");
    let outcome = "\noutcome      built 1 wheel(s)\nwall time    ";
    assert!(
        web.iter().any(|r| matches!(r, WebRequest::Built { output, rewrite, .. }
            if output.starts_with(&header) && output.contains(outcome) && output.ends_with("\npeak memory  1.0 MiB\n==\nbuilt")
                && rewrite.package == "foo" && rewrite.scope == RewriteScope::Both)),
        "{web:?}"
    );
    assert_eq!(farm.pool.db.column("SELECT package || ' ' || scope FROM rewrites_pending"), [Some("foo both".to_string())]);

    // Nothing else to do: the slave sleeps, and monitors saw the whole conversation.
    assert_eq!(slave.ask(idle()), SlaveReply::Sleep { paused: false });
    let replies: Vec<String> = farm
        .events()
        .iter()
        .filter_map(|e| match e {
            StatusEvent::Slave { slave_id, event: SlaveEvent::Replied(reply), .. } if *slave_id == id => {
                Some(format!("{reply:?}").split([' ', '{']).next().unwrap().to_string())
            }
            _ => None,
        })
        .collect();
    assert_eq!(replies, ["Ack", "Build", "Send", "Done", "Sleep"]);
}

#[test]
fn a_failed_build_is_recorded_with_its_log_and_a_wheel_the_tree_holds_is_sent_and_recorded() {
    let farm = Farm::start(&[("bad", "1.0"), ("same", "2.0")]);
    // The index already holds same's wheel, with the very bytes the slave will build.
    let (held_path, held) = wheel(farm.dir.path(), "same", "2.0", b"identical");
    std::fs::create_dir_all(farm.dir.path().join("www/simple/same")).unwrap();
    std::fs::copy(&held_path, farm.dir.path().join("www/simple/same").join(&held.filename)).unwrap();
    let slave = farm.slave("pi-1");
    let id = slave.hello();
    farm.refresh_queue();
    let mut handed = Vec::new();
    for _ in 0..2 {
        let (package, version) = slave.take_build();
        if package == "bad" {
            // A failure has no files: nothing to send.
            assert_eq!(slave.ask(SlaveRequest::Built(result(false, vec![]))), SlaveReply::Done);
        } else {
            // The tree holds the very bytes: the slave sends them all the same (its word that
            // it made them proves nothing), and the file in the tree is recorded as it is.
            let SlaveReply::Send { filename, transfer } = slave.ask(SlaveRequest::Built(result(true, vec![held.clone()]))) else {
                panic!("expected a send")
            };
            upload(&farm.pool.rt.zmq, &farm.file_endpoint, &Security::Plain, transfer, &held_path, UploadOptions::default()).unwrap();
            assert_eq!(slave.ask(SlaveRequest::Sent { filename }), SlaveReply::Done);
        }
        handed.push((package, version));
    }
    handed.sort();
    assert_eq!(handed, [("bad".to_string(), "1.0".to_string()), ("same".to_string(), "2.0".to_string())]);
    let mut builds = farm.builds();
    builds.sort();
    assert_eq!(builds, [format!("bad 1.0 {id} pi-1 f build"), format!("same 2.0 {id} pi-1 t -")]);
    // The database keeps each log, for the log file the index writer may fail to write.
    let logs = farm.pool.db.column("SELECT package || ': ' || output FROM output JOIN builds USING (build_id) ORDER BY package");
    let logs: Vec<String> = logs.into_iter().flatten().collect();
    assert!(logs[0].starts_with("bad: == piwheels build of bad 1.0 for cp311 ==") && logs[0].ends_with("==\nerror: it broke"), "{logs:?}");
    assert!(logs[0].contains("\noutcome      failed: its command exited with status 1\n"), "{logs:?}");
    assert!(logs[1].starts_with("same: == piwheels build of same 2.0") && logs[1].ends_with("==\nbuilt"), "{logs:?}");
    let web = farm.web_requests();
    assert!(
        web.iter().any(|r| matches!(r, WebRequest::Built { output, rewrite, .. }
            if output.ends_with("error: it broke") && output == &logs[0]["bad: ".len()..] && rewrite.package == "bad" && rewrite.scope == RewriteScope::Project)),
        "{web:?}"
    );
}

#[test]
fn a_file_that_fails_verification_is_asked_for_again() {
    let farm = Farm::start(&[("foo", "1.0")]);
    let slave = farm.slave("pi-1");
    slave.hello();
    farm.refresh_queue();
    slave.take_build();
    // The slave announces one hash but holds other bytes.
    let (path, mut file) = wheel(farm.dir.path(), "foo", "1.0", b"real bytes");
    file.sha256 = "0".repeat(64);
    let SlaveReply::Send { filename, transfer } = slave.ask(SlaveRequest::Built(result(true, vec![file.clone()]))) else {
        panic!("expected a send")
    };
    upload(&farm.pool.rt.zmq, &farm.file_endpoint, &Security::Plain, transfer, &path, UploadOptions::default()).unwrap();
    let again = slave.ask(SlaveRequest::Sent { filename: filename.clone() });
    let SlaveReply::Send { filename: asked, transfer: second } = again else { panic!("expected the file again, got {again:?}") };
    assert_eq!(asked, filename);
    upload(&farm.pool.rt.zmq, &farm.file_endpoint, &Security::Plain, second, &path, UploadOptions::default()).unwrap();
    let SlaveReply::Send { transfer: third, .. } = slave.ask(SlaveRequest::Sent { filename: filename.clone() }) else {
        panic!("expected a third attempt")
    };
    upload(&farm.pool.rt.zmq, &farm.file_endpoint, &Security::Plain, third, &path, UploadOptions::default()).unwrap();
    // After three failed attempts the build is given up, not recorded: the slave's fault, not
    // the package's; the release is handed out again (at once, the first time).
    assert_eq!(slave.ask(SlaveRequest::Sent { filename: filename.clone() }), SlaveReply::Done);
    assert_eq!(farm.builds(), Vec::<String>::new());
    assert!(!farm.dir.path().join("www/simple/foo").join(&filename).exists());
    assert_eq!(slave.take_build(), ("foo".to_string(), "1.0".to_string()));
}

#[test]
fn a_verification_the_file_juggler_takes_long_over_holds_up_only_its_own_slave() {
    let farm = Farm::start_without_juggler(&[("foo", "1.0"), ("bar", "1.0")]);
    // The file juggler, played here: it expects any file, and verifies only when the test says.
    let juggler = Server::<FsRequest, FsReply>::bind(&farm.pool.rt.zmq, wiring::FS.address(), None).unwrap();
    let juggler_request = || {
        assert!(juggler.readable(Some(WAIT)).unwrap(), "the driver asked the file juggler nothing");
        let (peer, request) = juggler.recv().unwrap();
        (peer, request.unwrap())
    };
    let first = farm.slave("pi-1");
    let id = first.hello();
    farm.refresh_queue();
    let (package, version) = first.take_build();
    let (_, file) = wheel(farm.dir.path(), &package, &version, b"contents");
    let sent = file.clone();
    let sender = std::thread::spawn(move || {
        let SlaveReply::Send { filename, .. } = first.ask(SlaveRequest::Built(result(true, vec![sent]))) else { panic!("expected a send") };
        first.ask(SlaveRequest::Sent { filename })
    });
    let (peer, request) = juggler_request();
    assert!(matches!(request, FsRequest::Expect(_)), "{request:?}");
    juggler.send(&peer, &FsReply::Expect(Expected::Expecting { transfer: 7 })).unwrap();
    let (verifier, request) = juggler_request();
    assert_eq!(request, FsRequest::Verify(Verify { transfer: 7 }));

    // The verification is not answered, and the driver serves another slave all the same: it
    // does not wait for the answer (a driver that did would leave this hello unanswered past
    // the fake slave's deadline).
    let second = farm.slave("pi-2");
    second.hello();
    let (other, _) = second.take_build();
    assert_ne!(other, package);

    // The answer comes: the first slave is told its build is done, and the build is recorded.
    juggler.send(&verifier, &FsReply::Verify(Verification::Verified { file: Box::new(file) })).unwrap();
    assert_eq!(sender.join().unwrap(), SlaveReply::Done);
    assert_eq!(farm.builds(), [format!("{package} {version} {id} pi-1 t -")]);
}

#[test]
fn out_of_order_malformed_and_unknown_requests_are_refused_and_the_driver_goes_on() {
    let mut farm = Farm::start(&[("foo", "1.0")]);
    // A hello with another protocol version names both.
    let stranger = farm.slave("old");
    let mut old = hello("old", Duration::from_secs(300));
    old.versions.protocol += 1;
    match stranger.ask(SlaveRequest::Hello(old)) {
        SlaveReply::Error(WireError { message: reason, .. }) => {
            assert!(reason.contains(&Versions::current().protocol.to_string()), "{reason}");
            assert!(reason.contains(&(Versions::current().protocol + 1).to_string()), "{reason}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // Other software speaking the same protocol is welcome: builders upgrade one at a time.
    let mut older = hello("older", Duration::from_secs(300));
    older.versions.software = "0.0.1-older".into();
    assert!(matches!(farm.slave("older").ask(SlaveRequest::Hello(older)), SlaveReply::Ack { .. }));
    // A request from a connection that never said hello: say hello again.
    assert!(matches!(stranger.ask(idle()), SlaveReply::Error(WireError { message: reason, .. }) if reason.contains("Hello")));
    // A hello with an unusable ABI.
    let mut weird = hello("weird", Duration::from_secs(300));
    weird.abi = "cp311/../../x".into();
    assert!(matches!(farm.slave("weird").ask(SlaveRequest::Hello(weird)), SlaveReply::Error(_)));

    // Out of order: Sent while idle.
    let slave = farm.slave("pi-1");
    let id = slave.hello();
    match slave.ask(SlaveRequest::Sent { filename: "x-1-py3-none-any.whl".into() }) {
        SlaveReply::Die { reason } => assert!(reason.contains("protocol error"), "{reason}"),
        other => panic!("expected die, got {other:?}"),
    }
    // The driver forgot it.
    assert!(matches!(slave.ask(idle()), SlaveReply::Error(_)));
    assert!(farm.events().iter().any(|e| matches!(e, StatusEvent::Slave { slave_id, event: SlaveEvent::Gone { .. }, .. } if *slave_id == id)));

    // Garbage on the wire gets a Die, not silence.
    let raw = farm.pool.rt.zmq.socket(zmq::REQ).unwrap();
    raw.set_rcvtimeo(10_000).unwrap();
    raw.connect(&farm.slave_endpoint).unwrap();
    raw.send(b"\xc1\xc1\xc1".as_slice(), 0).unwrap();
    let answer = raw.recv_multipart(0).expect("an answer to garbage");
    assert!(String::from_utf8_lossy(&answer.concat()).contains("protocol error"));

    // And the driver still serves a well-behaved slave.
    let good = farm.slave("pi-2");
    good.hello();
    farm.refresh_queue();
    assert_eq!(good.take_build(), ("foo".to_string(), "1.0".to_string()));
    assert!(!farm.driver.is_finished());
}

#[test]
fn operators_sleep_wake_skip_and_kill_slaves() {
    let farm = Farm::start(&[("foo", "1.0"), ("bar", "1.0")]);
    let a = farm.slave("pi-a");
    let b = farm.slave("pi-b");
    let id_a = a.hello();
    let id_b = b.hello();
    farm.refresh_queue();

    assert_eq!(farm.command(SlaveTarget::One(id_a), SlaveAction::Sleep), SlaveCommandReply::Applied { slaves: vec![id_a] });
    assert_eq!(a.ask(idle()), SlaveReply::Sleep { paused: true });
    assert_eq!(farm.command(SlaveTarget::One(id_a), SlaveAction::Wake), SlaveCommandReply::Applied { slaves: vec![id_a] });
    let (package, _) = a.take_build();

    // Skip abandons the build at the next contact, and only that build.
    farm.command(SlaveTarget::One(id_a), SlaveAction::Skip);
    assert_eq!(a.ask(busy()), SlaveReply::Done);
    assert!(farm.builds().is_empty(), "an abandoned build is not recorded");

    // The other release goes to b; killing every slave stops both at their next contact.
    let (other, _) = b.take_build();
    assert_ne!(package, other);
    let applied = farm.command(SlaveTarget::All, SlaveAction::Kill);
    assert_eq!(applied, SlaveCommandReply::Applied { slaves: vec![id_a, id_b] });
    assert!(matches!(a.ask(idle()), SlaveReply::Die { .. }));
    assert!(matches!(b.ask(busy()), SlaveReply::Die { .. }));
    assert_eq!(farm.command(SlaveTarget::One(id_a), SlaveAction::Wake), SlaveCommandReply::UnknownSlave { slave_id: id_a });
}

#[test]
fn a_builder_whose_setuptools_differs_from_its_peers_is_named_and_held() {
    let mut farm = Farm::start_holding_drifted(&[("foo", "1.0"), ("bar", "1.0")]);
    let environment = |setuptools: &str| BTreeMap::from([("python".to_string(), "3.11.2".to_string()), ("setuptools".to_string(), setuptools.to_string())]);
    let (a, b, c) = (farm.slave("pi-a"), farm.slave("pi-b"), farm.slave("pi-c"));
    a.hello_building_with(environment("66.1.1"));
    b.hello_building_with(environment("66.1.1"));
    let id_c = c.hello_building_with(environment("68.0.0"));
    // The home page is told, naming no builder.
    let deadline = Instant::now() + WAIT;
    let public = loop {
        match farm.stats.recv_timeout(WAIT).unwrap() {
            Some(StatsUpdate::Drifts { notices }) if !notices.is_empty() => break notices,
            _ => assert!(Instant::now() < deadline, "the stats task was not told of the drift"),
        }
    };
    assert_eq!(public, ["cp311 builders differ in setuptools: 2 hosts with 66.1.1, 1 host with 68.0.0"]);
    farm.refresh_queue();
    let drift = farm.events_so_far().iter().find_map(|e| match e {
        StatusEvent::Notice { level: NoticeLevel::Warning, text, .. } if text.contains("differ") => Some(text.clone()),
        _ => None,
    });
    assert_eq!(drift.as_deref(), Some("cp311 builders differ in setuptools: pi-c has 68.0.0; the other 2 have 66.1.1"));
    // The drifted builder gets no work; the others do.
    assert_eq!(c.ask(idle()), SlaveReply::Sleep { paused: true });
    a.take_build();
    b.take_build();
    // Once it has gone, its peers agree again.
    farm.command(SlaveTarget::One(id_c), SlaveAction::Kill);
    assert!(matches!(c.ask(idle()), SlaveReply::Die { .. }));
    assert!(farm.events_so_far().iter().any(|e| matches!(e, StatusEvent::Notice { level: NoticeLevel::Info, text, .. } if text == "cp311 builders agree on setuptools again")));
}

/// An operator's presses reach the slave's host one per contact, at most 16 pending: more are
/// not kept.
#[test]
fn builders_to_add_are_passed_on_one_per_contact_and_bounded() {
    let farm = Farm::start(&[]);
    let slave = farm.slave("pi-a#1");
    let id = slave.hello();
    for _ in 0..20 {
        assert_eq!(farm.command(SlaveTarget::One(id), SlaveAction::AddBuilder), SlaveCommandReply::Applied { slaves: vec![id] });
    }
    let added = std::iter::from_fn(|| Some(slave.ask(idle()))).take_while(|reply| *reply == SlaveReply::AddBuilder).count();
    assert_eq!(added, 16);
    // A retire cancels an add still pending.
    farm.command(SlaveTarget::One(id), SlaveAction::AddBuilder);
    farm.command(SlaveTarget::One(id), SlaveAction::RetireBuilder);
    farm.command(SlaveTarget::One(id), SlaveAction::RetireBuilder);
    assert_eq!(slave.ask(idle()), SlaveReply::RetireBuilder);
    assert!(matches!(slave.ask(idle()), SlaveReply::Sleep { .. }), "nothing else pending");
}

#[test]
fn a_paused_master_puts_slaves_to_sleep() {
    let farm = Farm::start(&[("foo", "1.0")]);
    let slave = farm.slave("pi-1");
    slave.hello();
    farm.refresh_queue();
    farm.driver.control(TaskControl::Pause).unwrap();
    eventually("the driver to pause", WAIT, || slave.ask(idle()) == SlaveReply::Sleep { paused: true });
    farm.driver.control(TaskControl::Resume).unwrap();
    assert_eq!(slave.take_build(), ("foo".to_string(), "1.0".to_string()));
}

#[test]
fn a_deleted_release_leaves_the_queue_and_its_build_in_flight_is_abandoned() {
    let farm = Farm::start(&[("foo", "1.0"), ("foo", "2.0"), ("bar", "1.0")]);
    let a = farm.slave("pi-a");
    a.hello();
    farm.refresh_queue();
    let (package, version) = a.take_build();
    farm.notify(ReleaseNotice::Version { package: package.clone(), version: version.clone() });
    assert_eq!(a.ask(busy()), SlaveReply::Done);
    // Deleting the whole package of foo: whatever is left is only bar's.
    farm.notify(ReleaseNotice::Package { package: "foo".into() });
    let b = farm.slave("pi-b");
    b.hello();
    let mut handed = Vec::new();
    loop {
        match b.ask(idle()) {
            SlaveReply::Build { package, .. } => handed.push(package),
            SlaveReply::Sleep { .. } => break,
            other => panic!("unexpected {other:?}"),
        }
        // Give each build back unrecorded.
        farm.command(SlaveTarget::All, SlaveAction::Skip);
        assert_eq!(b.ask(busy()), SlaveReply::Done);
    }
    assert!(handed.iter().all(|p| p == "bar"), "{handed:?}");
    assert!(farm.builds().is_empty());
}

#[test]
fn a_silent_slave_is_dropped_and_its_build_handed_to_another() {
    let mut farm = Farm::start(&[("foo", "1.0")]);
    let mut quiet = farm.slave("quiet");
    quiet.busy_timeout = Duration::from_secs(1);
    let id = quiet.hello();
    farm.refresh_queue();
    assert_eq!(quiet.take_build(), ("foo".to_string(), "1.0".to_string()));
    // Another slave finds nothing: foo is being built.
    let other = farm.slave("other");
    other.hello();
    assert_eq!(other.ask(idle()), SlaveReply::Sleep { paused: false });
    // The quiet one says nothing; the driver drops it within its expiry check.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !farm.events().iter().any(
        |e| matches!(e, StatusEvent::Slave { slave_id, event: SlaveEvent::Gone { reason }, .. } if *slave_id == id && reason.contains("silent")),
    ) {
        assert!(Instant::now() < deadline, "the silent slave was never dropped");
    }
    // Its build goes to the other slave once the queue is refreshed (the driver asks for that).
    let deadline = Instant::now() + Duration::from_secs(20);
    let build = loop {
        match other.ask(idle()) {
            SlaveReply::Build { package, version, .. } => break (package, version),
            _ => assert!(Instant::now() < deadline, "the dropped build was never handed out again"),
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(build, ("foo".to_string(), "1.0".to_string()));
    // A late word from the dropped slave is refused: it must say hello again.
    assert!(matches!(quiet.ask(busy()), SlaveReply::Error(_)));
}

#[test]
fn files_of_an_abandoned_build_are_unpublished_unless_a_build_records_them() {
    let farm = Farm::start(&[("foo", "1.0")]);
    let slave = farm.slave("pi-1");
    let id = slave.hello();
    farm.refresh_queue();
    slave.take_build();
    let (first_path, first) = wheel(farm.dir.path(), "foo", "1.0", b"first wheel");
    let second_name = "foo-1.0-cp311-abi3-linux_armv7l.whl";
    let second = wheel_file(second_name, &wheel_bytes(second_name, b"second wheel"));
    let SlaveReply::Send { filename, transfer } = slave.ask(SlaveRequest::Built(result(true, vec![first.clone(), second]))) else {
        panic!("expected a send")
    };
    assert_eq!(filename, first.filename);
    upload(&farm.pool.rt.zmq, &farm.file_endpoint, &Security::Plain, transfer, &first_path, UploadOptions::default()).unwrap();
    // The first file is published; the operator skips the build before the second arrives.
    let SlaveReply::Send { filename: next, .. } = slave.ask(SlaveRequest::Sent { filename: filename.clone() }) else {
        panic!("expected the second file to be asked for")
    };
    assert_eq!(next, second_name);
    farm.command(SlaveTarget::One(id), SlaveAction::Skip);
    assert_eq!(slave.ask(SlaveRequest::Sent { filename: next }), SlaveReply::Done);
    assert!(farm.builds().is_empty());
    let removal = farm
        .web_requests()
        .into_iter()
        .find(|r| matches!(r, WebRequest::DeleteVersion { .. }))
        .expect("the published file's removal");
    assert_eq!(
        removal,
        WebRequest::DeleteVersion { package: "foo".into(), version: "1.0".into(), files: vec![filename], builds: vec![] }
    );
}

/// A slave shows that it made a wheel by sending it: the same bytes as a published file, even
/// one of another name, are received and checked, never taken on the slave's word.
#[test]
fn a_file_whose_contents_the_index_holds_already_is_sent_all_the_same() {
    // Two release strings of one PEP 440 version (as old projects have): a wheel of either is
    // the same bytes under another name.
    let farm = Farm::start(&[("foo", "1.0"), ("foo", "1.0.0")]);
    let slave = farm.slave("pi-1");
    slave.hello();
    farm.refresh_queue();
    let (first_version, second_version) = {
        let (_, version) = slave.take_build();
        let other = if version == "1.0" { "1.0.0" } else { "1.0" };
        (version, other.to_string())
    };
    let metadata = "Metadata-Version: 2.1\nName: foo\nVersion: 1.0\n";
    let bytes = wheel_with_metadata("foo-1.0-cp311-cp311-linux_armv7l.whl", metadata, b"the same bytes");
    let same_bytes = |version: &str| {
        let filename = format!("foo-{version}-cp311-cp311-linux_armv7l.whl");
        let path = farm.dir.path().join(&filename);
        std::fs::write(&path, &bytes).unwrap();
        (path, wheel_file(&filename, &bytes))
    };
    let deliver = |path: &std::path::Path, file: &WheelFile| {
        let SlaveReply::Send { filename, transfer } = slave.ask(SlaveRequest::Built(result(true, vec![file.clone()]))) else {
            panic!("expected a send of {}", file.filename)
        };
        upload(&farm.pool.rt.zmq, &farm.file_endpoint, &Security::Plain, transfer, path, UploadOptions::default()).unwrap();
        assert_eq!(slave.ask(SlaveRequest::Sent { filename }), SlaveReply::Done);
    };
    let (path, first) = same_bytes(&first_version);
    deliver(&path, &first);
    // The other release builds to the very same bytes under its own name: sent, and published
    // under that name.
    assert_eq!(slave.take_build().1, second_version);
    let (path, second) = same_bytes(&second_version);
    deliver(&path, &second);
    let dir = farm.dir.path().join("www/simple/foo");
    assert_eq!(std::fs::read(dir.join(&second.filename)).unwrap(), bytes);
    assert_eq!(std::fs::read(dir.join(format!("{}.metadata", second.filename))).unwrap(), metadata.as_bytes());
    assert_eq!(farm.builds().len(), 2);
    assert_eq!(farm.pool.db.column("SELECT count(*)::text FROM files"), [Some("2".into())]);
}

/// The slave driver alone on a fake clock, with the architect, the stats task and the index
/// writer played by the test.
struct TimedDriver {
    pool: Pool,
    clock: FakeClock,
    slave_endpoint: String,
    driver: TaskHandle,
    triggers: Receiver<ArchitectTrigger>,
    stats: Receiver<StatsUpdate>,
    /// Where the test, playing the architect, sends the queue.
    builds: Sender<BuildQueueUpdate>,
    /// What the index writer, played by a stand-in, was asked.
    web: Arc<Mutex<Vec<WebRequest>>>,
}

impl TimedDriver {
    /// A driver whose queue for cp311 holds `packages` at version 1.0; the report of that
    /// queue's lengths has been received.
    fn start(packages: &[&str]) -> TimedDriver {
        let releases: Vec<(&str, &str)> = packages.iter().map(|p| (*p, "1.0")).collect();
        let pool = Pool::with_releases(&releases);
        let web = stand_in::<WebRequest, _>(&pool.rt.zmq, "inproc://web", WebReply::Done);
        let triggers = Receiver::<ArchitectTrigger>::pull(&pool.rt.zmq, wiring::ARCHITECT.address(), None).unwrap();
        let stats = Receiver::<StatsUpdate>::pull(&pool.rt.zmq, wiring::STATS.address(), None).unwrap();
        let clock = FakeClock::new(chrono::DateTime::from_timestamp(1_750_000_000, 0).unwrap());
        let rt = Runtime { poll_cap: Duration::from_millis(10), ..Runtime::new(pool.rt.zmq.clone(), Arc::new(clock.clone()), "inproc://status") };
        let slave_endpoint = format!("tcp://127.0.0.1:{}", free_port());
        let config =
            DriverConfig { slave_queue: slave_endpoint.clone(), index_url: "http://127.0.0.1:9/simple/".into(), max_message: 16 << 20, db_timeout: WAIT, auth: Auth::disabled(), limits: SlaveLimits::default(), retry_backoff: RETRY_FIRST, cross_check_share: 0.0, hold_drifted: false };
        let open_config = config.clone();
        let driver = task::spawn(
            &rt,
            "slave_driver",
            move |ctx| slave_driver::Sockets::open(ctx, &open_config, "inproc://status"),
            move |_| Ok(SlaveDriver::new(config.clone())),
        )
        .unwrap();
        let builds = Sender::<BuildQueueUpdate>::push(&pool.rt.zmq, wiring::BUILDS.address()).unwrap();
        let timed = TimedDriver { pool, clock, slave_endpoint, driver, triggers, stats, builds, web };
        timed.queue(packages);
        // A new queue is reported at once.
        assert_eq!(timed.next_lengths(), [("cp311".to_string(), packages.len() as u64)].into());
        timed
    }

    fn slave(&self, label: &str) -> FakeSlave {
        FakeSlave::connect(&self.pool.rt.zmq, &self.slave_endpoint, label)
    }

    /// Sends the queue for cp311: `packages` at version 1.0.
    fn queue(&self, packages: &[&str]) {
        let queue = packages
            .iter()
            .map(|p| QueuedBuild { release: PackageVersion { package: p.to_string(), version: "1.0".into() }, source: source_file(p, "1.0") })
            .collect();
        self.builds.send(&BuildQueueUpdate { queues: [("cp311".to_string(), queue)].into(), checks: BTreeMap::new() }, WAIT).unwrap();
    }

    fn next_lengths(&self) -> BTreeMap<String, u64> {
        match self.stats_update(WAIT) {
            Some(StatsUpdate::Queues { lengths }) => lengths,
            other => panic!("expected queue lengths, got {other:?}"),
        }
    }

    /// The next update for the stats task within `timeout` but for the builders' drifts (sent
    /// at every hello).
    fn stats_update(&self, timeout: Duration) -> Option<StatsUpdate> {
        loop {
            match self.stats.recv_timeout(timeout).unwrap() {
                Some(StatsUpdate::Drifts { .. }) => {}
                other => return other,
            }
        }
    }

    /// Returns once the driver has gone round its loop, timers first, since the call: it
    /// answered a request sent after one it answered. (A slave that never said hello is told
    /// to; nothing else changes.)
    fn went_round(&self) {
        let stranger = self.slave("stranger");
        for _ in 0..2 {
            assert!(matches!(stranger.ask(idle()), SlaveReply::Error(_)));
        }
    }

    /// The slaves' host figures passed on to monitors since the last call. The driver publishes
    /// them on inproc as it takes the request that carries them: once the loop went round,
    /// all there are have arrived.
    fn published_stats(&self) -> Vec<u32> {
        self.went_round();
        let mut ids = Vec::new();
        while let Ok(Some(event)) = self.pool.status.recv_timeout(Duration::ZERO) {
            if let StatusEvent::Slave { slave_id, event: SlaveEvent::Stats(_), .. } = event {
                ids.push(slave_id);
            }
        }
        ids
    }

    fn stop(mut self) {
        self.driver.control(TaskControl::Quit).unwrap();
        assert!(self.driver.join(WAIT).is_some(), "the driver did not stop");
    }
}

#[test]
fn refresh_requests_and_queue_lengths_of_builds_close_together_are_folded_into_one() {
    let timed = TimedDriver::start(&["a", "b", "c"]);
    for label in ["pi-1", "pi-2", "pi-3"] {
        let slave = timed.slave(label);
        slave.hello();
        slave.take_build();
        assert_eq!(slave.ask(SlaveRequest::Built(result(false, vec![]))), SlaveReply::Done);
    }
    // Three builds handed out and recorded, and nothing said yet: the clock has not moved.
    timed.went_round();
    assert_eq!(timed.triggers.recv_timeout(Duration::ZERO).unwrap(), None, "a refresh was asked for before its time");
    assert_eq!(timed.stats_update(Duration::ZERO), None, "queue lengths were sent before their time");

    timed.clock.advance(Duration::from_secs(1));
    let ArchitectTrigger::Refresh { reason } = timed.triggers.recv_timeout(WAIT).unwrap().expect("one refresh for the three builds");
    assert!(reason.ends_with("built, and 2 more"), "{reason}");
    assert_eq!(timed.next_lengths(), [("cp311".to_string(), 0)].into());
    timed.clock.advance(Duration::from_secs(1));
    timed.went_round();
    assert_eq!(timed.triggers.recv_timeout(Duration::ZERO).unwrap(), None, "a second refresh with nothing new to say");
    assert_eq!(timed.stats_update(Duration::ZERO), None, "lengths sent again unchanged");
    timed.stop();
}

#[test]
fn a_slaves_host_figures_reach_monitors_at_most_every_five_seconds() {
    let timed = TimedDriver::start(&["a", "b"]);
    let slave = timed.slave("pi-1");
    let id = slave.hello();
    for _ in 0..2 {
        slave.take_build();
        assert_eq!(slave.ask(SlaveRequest::Built(result(false, vec![]))), SlaveReply::Done);
    }
    assert!(matches!(slave.ask(idle()), SlaveReply::Sleep { .. }));
    assert_eq!(timed.published_stats(), [id], "three requests with figures within a moment");
    timed.clock.advance(Duration::from_millis(4900));
    assert!(matches!(slave.ask(idle()), SlaveReply::Sleep { .. }));
    assert_eq!(timed.published_stats(), Vec::<u32>::new(), "figures passed on again within five seconds");
    timed.clock.advance(Duration::from_millis(100));
    assert!(matches!(slave.ask(idle()), SlaveReply::Sleep { .. }));
    assert_eq!(timed.published_stats(), [id], "figures held back after five seconds");
    timed.stop();
}

/// A verification the file juggler never answers gives the build up after two minutes: the
/// slave is told it is done, and is not taken for silent meanwhile, though it says nothing for
/// longer than its busy timeout; the file the answer publishes at last is removed again.
#[test]
fn a_verification_left_unanswered_gives_the_build_up_and_its_slave_is_not_taken_for_silent() {
    let timed = TimedDriver::start(&["a"]);
    let juggler = Server::<FsRequest, FsReply>::bind(&timed.pool.rt.zmq, wiring::FS.address(), None).unwrap();
    let juggler_request = || {
        assert!(juggler.readable(Some(WAIT)).unwrap(), "the driver asked the file juggler nothing");
        let (peer, request) = juggler.recv().unwrap();
        (peer, request.unwrap())
    };
    let notices = |until: &str| -> Vec<String> {
        let mut seen = Vec::new();
        while !seen.iter().any(|n: &String| n.contains(until)) {
            match timed.pool.status.recv_timeout(WAIT).unwrap() {
                Some(StatusEvent::Notice { text, .. }) => seen.push(text),
                Some(_) => {}
                None => panic!("no notice saying {until:?} came; seen {seen:?}"),
            }
        }
        seen
    };
    let mut slave = timed.slave("pi-1");
    slave.busy_timeout = Duration::from_secs(60);
    slave.hello();
    // Another slave, as quiet as the first: its drop shows when the driver looked for silence.
    let mut quiet = timed.slave("pi-2");
    quiet.busy_timeout = Duration::from_secs(60);
    quiet.hello();
    let (package, version) = slave.take_build();
    let dir = tempfile::tempdir().unwrap();
    let (_, file) = wheel(dir.path(), &package, &version, b"contents");
    let sent = file.clone();
    let sender = std::thread::spawn(move || {
        let SlaveReply::Send { filename, .. } = slave.ask(SlaveRequest::Built(result(true, vec![sent]))) else { panic!("expected a send") };
        // This answer waits for every step below, each of which may take up to WAIT on a
        // loaded machine.
        let answer = slave.client.request(&SlaveRequest::Sent { filename }, 6 * WAIT).unwrap();
        (answer, slave)
    });
    let (peer, _) = juggler_request();
    juggler.send(&peer, &FsReply::Expect(Expected::Expecting { transfer: 7 })).unwrap();
    let (verifier, request) = juggler_request();
    assert_eq!(request, FsRequest::Verify(Verify { transfer: 7 }));

    // Past both slaves' busy timeout: the quiet one is dropped, the waiting one is not.
    timed.clock.advance(Duration::from_secs(65));
    let seen = notices("(pi-2) dropped: silent");
    assert!(!seen.iter().any(|n| n.contains("(pi-1) dropped")), "{seen:?}");
    // The notice comes from within the timer's handler, and the timer is set again from the
    // clock once the handler returns: moving the clock before that would set it past the
    // next move. So the driver's loop goes round first.
    timed.went_round();
    // Past the verification's two minutes: the build is given up.
    timed.clock.advance(Duration::from_secs(60));
    let (answer, slave) = sender.join().unwrap();
    assert_eq!(answer, SlaveReply::Done);
    let seen = notices("did not answer the verification");
    assert!(!seen.iter().any(|n| n.contains("(pi-1) dropped")), "{seen:?}");

    // The late answer published the file: it goes again, since no build records it.
    juggler.send(&verifier, &FsReply::Verify(Verification::Verified { file: Box::new(file.clone()) })).unwrap();
    eventually("the late file's removal", WAIT, || {
        timed.web.lock().unwrap().iter().any(|request| matches!(request, WebRequest::DeleteVersion { files, .. } if *files == [file.filename.clone()]))
    });
    assert!(matches!(slave.ask(idle()), SlaveReply::Sleep { .. } | SlaveReply::Build { .. }), "the slave is still known");
    assert_eq!(timed.pool.db.column("SELECT count(*)::text FROM builds"), [Some("0".to_string())]);
    timed.stop();
}

/// A release that failed on one builder for the infrastructure's reasons waits for another
/// builder of its ABI, but not for ever: the others may all be busy with long builds.
#[test]
fn a_release_passes_its_last_builder_over_for_five_minutes_at_most() {
    let timed = TimedDriver::start(&["a", "b"]);
    let (first, second) = (timed.slave("pi-1"), timed.slave("pi-2"));
    first.hello();
    second.hello();
    let (failed, _) = first.take_build();
    second.take_build();
    let mut report = result(false, vec![]);
    report.failure = Some(FailureKind::Builder);
    assert_eq!(first.ask(SlaveRequest::Built(report)), SlaveReply::Done);
    // The architect hands the queue over again; the other builder is busy with its own build.
    timed.queue(&["a", "b"]);
    let asks_in_vain = |minutes: u64| {
        for _ in 0..minutes {
            timed.clock.advance(Duration::from_secs(60));
            assert_eq!(second.ask(SlaveRequest::Busy { stats: HostStats::default() }), SlaveReply::Cont);
            assert!(matches!(first.ask(idle()), SlaveReply::Sleep { .. }), "{failed} handed to the builder it failed on within 5 min");
        }
    };
    asks_in_vain(4);
    timed.clock.advance(Duration::from_secs(61));
    assert_eq!(second.ask(SlaveRequest::Busy { stats: HostStats::default() }), SlaveReply::Cont);
    let source = source_file(&failed, "1.0");
    assert_eq!(first.ask(idle()), SlaveReply::Build { package: failed, version: "1.0".into(), source }, "the release still waits after 5 min");
    timed.stop();
}

/// Whether a notice so far holds every one of `words`.
fn noticed(farm: &mut Farm, words: &[&str]) -> bool {
    farm.events().iter().any(|e| matches!(e, StatusEvent::Notice { text, .. } if words.iter().all(|w| text.contains(w))))
}

/// A failure is the package's only when the slave's report shows the build ran; any other
/// report, and a failure of the builder itself, is not recorded, and the release is built again.
#[test]
fn a_failure_report_that_does_not_show_the_build_ran_is_not_recorded_and_the_release_is_built_again() {
    type Spoil = fn(&mut BuildResult);
    let cases: [(&str, Spoil); 8] = [
        ("a failure without a build log", |r| r.output = " \n".into()),
        ("a failed build that took no time", |r| r.duration = Duration::ZERO),
        ("after handing it out", |r| r.duration = Duration::from_secs(3600)),
        ("a failed build whose command exited 0", |r| r.exit_status = Some(0)),
        ("before its build timeout", |r| r.failure = Some(FailureKind::Timeout)),
        ("the builder ran out of disk space", |r| r.failure = Some(FailureKind::NoSpace)),
        ("the builder itself failed", |r| r.failure = Some(FailureKind::Builder)),
        ("the source could not be had: [piw-slave] the source is not the pinned file", |r| {
            r.failure = Some(FailureKind::Source);
            r.output = "downloading\n[piw-slave] the source is not the pinned file\n\n".into();
        }),
    ];
    let names: Vec<String> = (0..cases.len()).map(|i| format!("pkg{i}")).collect();
    let releases: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "1.0")).collect();
    let mut farm = Farm::start(&releases);
    let slave = farm.slave("pi-1");
    slave.hello();
    farm.refresh_queue();
    let mut failed = Vec::new();
    for (why, spoil) in cases {
        // A release handed out again is built for real: each fails at most once, so none
        // waits out a back-off.
        let package = loop {
            let (package, version) = slave.take_build();
            if !failed.contains(&package) {
                break package;
            }
            slave.deliver(&farm, &package, &version);
        };
        let mut report = result(false, vec![]);
        spoil(&mut report);
        assert_eq!(slave.ask(SlaveRequest::Built(report)), SlaveReply::Done);
        assert!(noticed(&mut farm, &[&package, why, "not recorded", "built again at once"]), "{why}: {:?}", farm.events());
        assert!(!farm.builds().iter().any(|b| b.contains(" f ")), "{why}: {:?}", farm.builds());
        failed.push(package);
    }
    // Every release is handed out again and built.
    while farm.builds().len() < names.len() {
        let (package, version) = slave.take_build();
        slave.deliver(&farm, &package, &version);
    }
    let mut built: Vec<String> = farm.builds().iter().map(|b| b.split(' ').next().unwrap().to_string()).collect();
    built.sort();
    assert_eq!(built, names, "each release built once, and successfully: {:?}", farm.builds());
    assert!(farm.builds().iter().all(|b| b.contains(" t -")), "{:?}", farm.builds());
}

/// Build and busy timeouts past the master's limits are refused at hello, before any
/// arithmetic on them; so is a slave past the cap on one address, until one leaves.
#[test]
fn a_hello_claiming_endless_timeouts_or_past_the_cap_on_one_address_is_refused() {
    let limits = SlaveLimits { max_slaves_per_address: 2, ..SlaveLimits::default() };
    let mut farm = Farm::start_with(&[("foo", "1.0")], limits, |_| {});
    let forever = Duration::from_secs(1 << 63);
    let ten_years = Duration::from_secs(10 * 365 * 24 * 3600);
    for (build_timeout, busy_timeout, why) in [
        (forever, Duration::from_secs(300), "build timeout"),
        (Duration::from_secs(3600), ten_years, "busy timeout"),
        (Duration::from_secs(3600), forever, "busy timeout"),
    ] {
        let greedy = farm.slave("greedy");
        let mut claim = hello("greedy", busy_timeout);
        claim.build_timeout = build_timeout;
        match greedy.ask(SlaveRequest::Hello(claim)) {
            SlaveReply::Error(WireError { message: reason, .. }) => {
                assert!(reason.contains(why) && reason.contains("longer than this master allows"), "{reason}")
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        // Its next word is refused too: it never joined, and nothing overflowed.
        assert!(matches!(greedy.ask(idle()), SlaveReply::Error(WireError { message: reason, .. }) if reason.contains("Hello")));
    }

    // Two slaves from 127.0.0.1 are welcome, a third is not until one says goodbye.
    let (first, second) = (farm.slave("pi-1"), farm.slave("pi-2"));
    first.hello();
    second.hello();
    let third = farm.slave("pi-3");
    match third.ask(SlaveRequest::Hello(hello("pi-3", Duration::from_secs(300)))) {
        SlaveReply::Error(WireError { message: reason, .. }) => assert!(reason.contains("127.0.0.1 has 2 slaves connected") && reason.contains("--max-slaves-per-address"), "{reason}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    // Bye is not answered: the slave leaves without waiting.
    let _ = first.client.request(&SlaveRequest::Bye { reason: "done".into() }, Duration::from_millis(100));
    let deadline = Instant::now() + WAIT;
    while !matches!(third.ask(SlaveRequest::Hello(hello("pi-3", Duration::from_secs(300)))), SlaveReply::Ack { .. }) {
        assert!(Instant::now() < deadline, "the room the first slave left was never given to the third");
    }
    farm.refresh_queue();
    assert_eq!(third.take_build(), ("foo".to_string(), "1.0".to_string()));
    assert!(!farm.driver.is_finished());
    assert!(!farm.events_so_far().iter().any(|e| matches!(e, StatusEvent::Task { .. } if format!("{e:?}").contains("Failed"))));
}

/// A file on disk that no build records (a build whose record was lost, say) does not block
/// the release: the rebuild's wheel replaces it, and is recorded.
#[test]
fn an_unrecorded_file_in_the_way_of_a_rebuild_is_removed_and_the_new_wheel_published() {
    let farm = Farm::start(&[("foo", "1.0")]);
    let (stale_path, stale) = wheel(farm.dir.path(), "foo", "1.0", b"left by a lost build");
    let published = farm.dir.path().join("www/simple/foo").join(&stale.filename);
    std::fs::create_dir_all(published.parent().unwrap()).unwrap();
    std::fs::copy(&stale_path, &published).unwrap();
    let slave = farm.slave("pi-1");
    let id = slave.hello();
    farm.refresh_queue();
    slave.take_build();
    let (path, file) = wheel(farm.dir.path(), "foo", "1.0", b"the rebuild");
    assert_eq!(file.filename, stale.filename);
    let SlaveReply::Send { filename, transfer } = slave.ask(SlaveRequest::Built(result(true, vec![file.clone()]))) else {
        panic!("expected a send")
    };
    upload(&farm.pool.rt.zmq, &farm.file_endpoint, &Security::Plain, transfer, &path, UploadOptions::default()).unwrap();
    assert_eq!(slave.ask(SlaveRequest::Sent { filename }), SlaveReply::Done);
    assert_eq!(std::fs::read(&published).unwrap(), std::fs::read(&path).unwrap());
    assert_eq!(farm.builds(), [format!("foo 1.0 {id} pi-1 t -")]);
}

/// A release built again whose wheel has other bytes than the published one is published
/// under the next build tag, the old file staying; built again with the same bytes as one of
/// them, it publishes nothing new.
#[test]
fn a_rebuild_with_other_bytes_gets_the_next_build_tag_and_identical_bytes_no_new_file() {
    let farm = Farm::start(&[("foo", "1.0")]);
    let db = farm.pool.client(WAIT);
    let simple = farm.dir.path().join("www/simple/foo");
    let slave = farm.slave("pi-1");
    slave.hello();
    let build_again = |bytes: &[u8]| {
        farm.refresh_queue();
        slave.take_build();
        let (path, file) = wheel(farm.dir.path(), "foo", "1.0", bytes);
        (path, file)
    };
    let (first_path, first) = build_again(b"first");
    let SlaveReply::Send { filename, transfer } = slave.ask(SlaveRequest::Built(result(true, vec![first.clone()]))) else { panic!("expected a send") };
    upload(&farm.pool.rt.zmq, &farm.file_endpoint, &Security::Plain, transfer, &first_path, UploadOptions::default()).unwrap();
    assert_eq!(slave.ask(SlaveRequest::Sent { filename }), SlaveReply::Done);
    let first_bytes = std::fs::read(&first_path).unwrap();

    // What piw-rebuild build does: the request in the database, then the driver's hold on the
    // release just built lifted.
    let want_again = || {
        assert_eq!(db.call(WantRebuild { package: "foo".into(), version: "1.0".into(), abi: None, at: chrono::Utc::now() }).unwrap(), ["cp311"]);
        farm.notify(ReleaseNotice::BuildAgain { releases: vec![PackageVersion { package: "foo".into(), version: "1.0".into() }] });
    };
    want_again();
    let (second_path, second) = build_again(b"second");
    assert_eq!(second.filename, first.filename);
    // The slave sends the file under its own name; the master publishes it under the next tag.
    let SlaveReply::Send { filename, transfer } = slave.ask(SlaveRequest::Built(result(true, vec![second.clone()]))) else { panic!("expected a send") };
    assert_eq!(filename, second.filename);
    upload(&farm.pool.rt.zmq, &farm.file_endpoint, &Security::Plain, transfer, &second_path, UploadOptions::default()).unwrap();
    assert_eq!(slave.ask(SlaveRequest::Sent { filename }), SlaveReply::Done);
    let tagged = "foo-1.0-1-cp311-cp311-linux_armv7l.whl";
    assert_eq!(std::fs::read(simple.join(&first.filename)).unwrap(), first_bytes, "the published file keeps its bytes");
    assert_eq!(std::fs::read(simple.join(tagged)).unwrap(), std::fs::read(&second_path).unwrap());
    assert!(simple.join(format!("{tagged}.metadata")).is_file());
    let files = || farm.pool.db.column("SELECT filename || ' ' || coalesce(build_tag, '-') || ' ' || build_id FROM files ORDER BY filename");
    let ids = farm.pool.db.column("SELECT build_id::text FROM builds ORDER BY build_id");
    assert_eq!(ids.len(), 2);
    let id = |n: usize| ids[n].clone().unwrap();
    assert_eq!(
        files(),
        [Some(format!("{tagged} 1 {}", id(1))), Some(format!("{} - {}", first.filename, id(0)))],
        "each build records its own file"
    );

    // The same bytes as the tagged file: sent (a slave's word is not proof), then recorded by
    // the new build; nothing new is published.
    want_again();
    let (third_path, third) = build_again(b"second");
    let SlaveReply::Send { filename, transfer } = slave.ask(SlaveRequest::Built(result(true, vec![third.clone()]))) else { panic!("expected a send") };
    assert_eq!(filename, third.filename);
    upload(&farm.pool.rt.zmq, &farm.file_endpoint, &Security::Plain, transfer, &third_path, UploadOptions::default()).unwrap();
    assert_eq!(slave.ask(SlaveRequest::Sent { filename }), SlaveReply::Done);
    let ids = farm.pool.db.column("SELECT build_id::text FROM builds ORDER BY build_id");
    assert_eq!(ids.len(), 3);
    assert_eq!(files(), [Some(format!("{tagged} 1 {}", ids[2].clone().unwrap())), Some(format!("{} - {}", first.filename, id(0)))]);
    let mut names: Vec<String> = std::fs::read_dir(&simple).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    assert_eq!(names, [tagged.to_string(), format!("{tagged}.metadata"), first.filename.clone(), format!("{}.metadata", first.filename)]);
}

/// A builder's own build tag stays below the numbers the master gives rebuilds: a wheel with
/// a larger one is left out of the build's record, with the reason in its log.
#[test]
fn a_wheel_whose_builder_chose_a_huge_build_tag_is_left_out() {
    let farm = Farm::start(&[("foo", "1.0")]);
    let slave = farm.slave("pi-1");
    let id = slave.hello();
    farm.refresh_queue();
    slave.take_build();
    let filename = "foo-1.0-1000000-cp311-cp311-linux_armv7l.whl";
    let file = wheel_file(filename, &wheel_bytes(filename, b"tagged"));
    assert_eq!(slave.ask(SlaveRequest::Built(result(true, vec![file]))), SlaveReply::Done, "nothing to send");
    assert_eq!(farm.builds(), [format!("foo 1.0 {id} pi-1 f build")]);
    let log = farm.pool.db.column("SELECT output FROM output");
    assert!(log[0].as_deref().unwrap().contains("its build tag's number is 1000000 or more"), "{log:?}");
}

/// A master without room for a wheel says so, and that is nobody's fault but the
/// infrastructure's: nothing is recorded and the release is handed out again.
#[test]
fn a_wheel_the_master_has_no_room_for_is_not_recorded_and_the_release_is_built_again() {
    // No disk holds an exbibyte; the juggler's own size limit is lifted so that only the
    // free space refuses it.
    let mut farm = Farm::start_with(&[("foo", "1.0")], SlaveLimits::default(), |c| c.max_file_size = u64::MAX);
    let slave = farm.slave("pi-1");
    slave.hello();
    farm.refresh_queue();
    slave.take_build();
    let (_, mut huge) = wheel(farm.dir.path(), "foo", "1.0", b"claims to be huge");
    huge.size = 1 << 60;
    assert_eq!(slave.ask(SlaveRequest::Built(result(true, vec![huge]))), SlaveReply::Done);
    assert!(noticed(&mut farm, &["foo 1.0", "not enough space on the master", "not recorded"]), "{:?}", farm.events());
    assert_eq!(farm.builds(), Vec::<String>::new());
    assert_eq!(slave.take_build(), ("foo".to_string(), "1.0".to_string()));
    slave.deliver(&farm, "foo", "1.0");
    assert_eq!(farm.builds().len(), 1);
}

/// Cross-checks: a build sampled for one is built again by another builder of the ABI (never
/// by its own), compared member by member with the published wheel, and never published; the
/// verdict is recorded, shown to monitors and the project page's data.
#[test]
fn sampled_builds_are_cross_checked_by_another_builder_and_the_verdict_recorded() {
    let mut farm = Farm::start_cross_checking(&[("same", "1.0"), ("other", "1.0"), ("broken", "1.0")]);
    let first = farm.slave("pi-1");
    let second = farm.slave("pi-2");
    first.hello();
    farm.refresh_queue();
    for _ in 0..3 {
        let (package, version) = first.take_build();
        first.deliver(&farm, &package, &version);
    }
    assert_eq!(farm.pool.db.column("SELECT count(*)::text FROM cross_checks WHERE checked_at IS NULL"), [Some("3".to_string())]);
    let simple = farm.dir.path().join("www/simple");
    let published = |package: &str| {
        let mut names: Vec<String> = std::fs::read_dir(simple.join(package)).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        names
    };
    let before: Vec<Vec<String>> = ["same", "other", "broken"].iter().map(|p| published(p)).collect();

    second.hello();
    let mut verdicts = BTreeMap::new();
    for _ in 0..3 {
        // The first builder is asked first each time, and never handed its own builds' checks.
        let package = take_check(&farm, &second, &[&first]);
        match package.as_str() {
            "same" => second.deliver(&farm, "same", "1.0"),
            "other" => second.deliver_bytes(&farm, "other", "1.0", b"a random value"),
            _ => assert_eq!(second.ask(SlaveRequest::Built(result(false, Vec::new()))), SlaveReply::Done),
        }
        let verdict = farm.pool.db.column(&format!(
            "SELECT c.verdict || ': ' || array_to_string(c.differences, ' | ') || ' by ' || c.builder \
             FROM cross_checks c JOIN builds b USING (build_id) WHERE b.package = '{package}'"
        ));
        verdicts.insert(package, verdict[0].clone().unwrap());
    }
    assert_eq!(verdicts["same"], "reproduced:  by pi-2");
    assert_eq!(verdicts["other"], "differs: other-1.0.dist-info/RECORD: contents differ | other/payload.bin: contents differ by pi-2");
    assert_eq!(verdicts["broken"], "failed: the second build failed: error: it broke by pi-2");

    // Compared, not published, and no build recorded for them.
    let after: Vec<Vec<String>> = ["same", "other", "broken"].iter().map(|p| published(p)).collect();
    assert_eq!(after, before);
    assert_eq!(farm.pool.db.column("SELECT count(*)::text FROM builds"), [Some("3".to_string())]);
    assert!(farm.events().iter().any(|e| matches!(e, StatusEvent::Notice { level: NoticeLevel::Info, text, .. }
        if text == "cross-check of same 1.0 (cp311 on pi-1, again on pi-2): reproduced")));
    assert!(noticed(&mut farm, &["cross-check of other 1.0", "NOT reproduced", "other/payload.bin: contents differ"]));
    assert!(noticed(&mut farm, &["cross-check of broken 1.0", "NOT reproduced: the second build failed"]));
    assert!(farm.events().iter().any(|e| matches!(e, StatusEvent::Notice { level: NoticeLevel::Warning, text, .. } if text.contains("cross-check of other 1.0"))));
    let rewrites = farm.web_requests();
    for package in ["same", "other", "broken"] {
        assert!(
            // LogCheck recorded the rewrite, so the index writer need not.
            rewrites.iter().any(|r| matches!(r, WebRequest::Recorded { package: p, scope: RewriteScope::Project } if p == package)),
            "{rewrites:?}"
        );
    }

    // The project pages' data.
    let db = farm.pool.client(WAIT);
    let found = |package: &str| db.call(Project { package: package.into() }).unwrap().releases[0].reproducibility.get("cp311").cloned();
    assert_eq!(found("same"), Some(Reproducibility { latest: Some(Verdict::Reproduced), builders: 2 }));
    assert!(matches!(found("other"), Some(Reproducibility { latest: Some(Verdict::Differs { differences }), builders: 1 }) if differences.len() == 2));
    assert!(matches!(found("broken"), Some(Reproducibility { latest: Some(Verdict::Failed { reason }), .. }) if reason.contains("it broke")));
    // Nothing waits any more, and the second build's records do not make new checks.
    assert_eq!(farm.pool.db.column("SELECT count(*)::text FROM cross_checks WHERE checked_at IS NULL"), [Some("0".to_string())]);
}

/// piw-rebuild cross-check's request: the latest successful build of each ABI, once however
/// often it is asked; refused with a reason for what cannot be checked.
#[test]
fn a_cross_check_is_asked_for_a_release_with_a_successful_build_from_a_source() {
    let farm = Farm::start(&[("foo", "1.0"), ("bad", "1.0")]);
    let db = farm.pool.client(WAIT);
    let want = |package: &str, abi: Option<&str>| {
        db.call(WantCrossCheck { package: package.into(), version: "1.0".into(), abi: abi.map(str::to_string) }).map_err(|e| e.to_string())
    };
    assert!(want("foo", None).unwrap_err().contains("no successful build to cross-check"));
    let slave = farm.slave("pi-1");
    slave.hello();
    farm.refresh_queue();
    for _ in 0..2 {
        match slave.take_build().0.as_str() {
            "foo" => slave.deliver(&farm, "foo", "1.0"),
            _ => assert_eq!(slave.ask(SlaveRequest::Built(result(false, Vec::new()))), SlaveReply::Done),
        }
    }
    assert_eq!(want("foo", None).unwrap(), ["cp311"]);
    assert_eq!(want("foo", Some("cp311")).unwrap(), ["cp311"]);
    assert!(want("bad", None).unwrap_err().contains("no successful build to cross-check"));
    assert!(want("foo", Some("cp39")).unwrap_err().contains("no successful build on cp39"));
    assert!(want("nope", None).unwrap_err().contains("unknown version nope 1.0"));
    farm.pool.db.column("UPDATE versions SET skip = 'broken upstream' WHERE package = 'foo' RETURNING ''");
    assert!(want("foo", None).unwrap_err().contains("foo 1.0 is skipped (broken upstream)"));
    farm.pool.db.column("UPDATE versions SET skip = '' WHERE package = 'foo' RETURNING ''");
    assert_eq!(
        farm.pool.db.column("SELECT b.package || ' ' || c.requested_by FROM cross_checks c JOIN builds b USING (build_id)"),
        [Some("foo operator".to_string())],
        "one check waits, however often it was asked"
    );
    // A build without a recorded source (an import) cannot be built again from it.
    farm.pool.db.column("UPDATE builds SET source_filename = NULL, source_url = NULL, source_sha256 = NULL RETURNING ''");
    farm.pool.db.column("DELETE FROM cross_checks RETURNING ''");
    assert!(want("foo", None).unwrap_err().contains("record no source"));
}

/// Asks the architect for a new queue, then asks `slave` for work until it is handed a check
/// (built from the release's pinned source), asking each of `passed_over` first each time,
/// which must be told to sleep; the check's package.
fn take_check(farm: &Farm, slave: &FakeSlave, passed_over: &[&FakeSlave]) -> String {
    let deadline = Instant::now() + WAIT;
    let trigger = Sender::<ArchitectTrigger>::push(&farm.pool.rt.zmq, wiring::ARCHITECT.address()).unwrap();
    trigger.send(&ArchitectTrigger::Refresh { reason: "test".into() }, WAIT).unwrap();
    loop {
        for other in passed_over {
            assert_eq!(other.ask(idle()), SlaveReply::Sleep { paused: false }, "{} was handed the check", other.label);
        }
        match slave.ask(idle()) {
            SlaveReply::Build { package, version, source } => {
                assert_eq!(source, source_file(&package, &version), "a check builds from the same source");
                return package;
            }
            SlaveReply::Sleep { .. } => assert!(Instant::now() < deadline, "no check was handed out"),
            other => panic!("expected a check, got {other:?}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A farm cross-checking every build, where pi-1 (returned) built foo 1.0, whose check waits.
fn farm_with_a_check() -> (Farm, FakeSlave) {
    let farm = Farm::start_cross_checking(&[("foo", "1.0")]);
    let first = farm.slave("pi-1");
    first.hello();
    farm.refresh_queue();
    first.take_build();
    first.deliver(&farm, "foo", "1.0");
    (farm, first)
}

/// A check whose second build says nothing of the package (its builder's time limit ended it,
/// or its builder left) is not recorded, and waits for its next builder; a builder whose
/// attempt ended so is passed over.
#[test]
fn a_check_that_ends_without_a_verdict_waits_for_its_next_builder() {
    let (mut farm, first) = farm_with_a_check();
    let waiting = |farm: &Farm| farm.pool.db.column("SELECT count(*)::text FROM cross_checks WHERE checked_at IS NULL")[0].clone().unwrap();
    assert_eq!(waiting(&farm), "1");

    // A second builder whose build timeout is 2 s reports a timeout: its limits, not the
    // package's doing.
    let short = farm.slave("pi-2");
    let hello = SlaveHello { build_timeout: Duration::from_secs(2), ..piwheels_testsupport::data::slave_hello("pi-2") };
    assert!(matches!(short.ask(SlaveRequest::Hello(hello)), SlaveReply::Ack { .. }));
    assert_eq!(take_check(&farm, &short, &[&first]), "foo");
    let timed_out = BuildResult { failure: Some(FailureKind::Timeout), exit_status: None, duration: Duration::from_secs(2), ..result(false, Vec::new()) };
    assert_eq!(short.ask(SlaveRequest::Built(timed_out)), SlaveReply::Done);
    assert_eq!(waiting(&farm), "1", "nothing is recorded");
    assert!(noticed(&mut farm, &["(pi-2) could not cross-check foo 1.0", "time or memory limit", "not recorded"]));

    // The next builder takes it, pi-2 passed over; it leaves mid-build.
    let third = farm.slave("pi-3");
    third.hello();
    assert_eq!(take_check(&farm, &third, &[&first, &short]), "foo");
    // Bye is not answered: the slave leaves without waiting.
    let _ = third.client.request(&SlaveRequest::Bye { reason: "shutting down".into() }, Duration::from_millis(100));
    // The one after reproduces the build.
    let fourth = farm.slave("pi-4");
    fourth.hello();
    assert_eq!(take_check(&farm, &fourth, &[&first, &short]), "foo");
    fourth.deliver(&farm, "foo", "1.0");
    assert_eq!(waiting(&farm), "0");
    assert_eq!(farm.pool.db.column("SELECT verdict || ' by ' || builder FROM cross_checks"), [Some("reproduced by pi-4".to_string())]);
}

/// A check that no builder can finish does not cost builds for ever: after five attempts that
/// ended without a verdict it is forgotten, with a warning.
#[test]
fn a_check_no_builder_can_finish_is_forgotten_after_five_attempts() {
    let (mut farm, first) = farm_with_a_check();
    let mut tried: Vec<FakeSlave> = vec![first];
    for n in 2..=6 {
        let builder = farm.slave(&format!("pi-{n}"));
        builder.hello();
        let passed_over: Vec<&FakeSlave> = tried.iter().collect();
        assert_eq!(take_check(&farm, &builder, &passed_over), "foo");
        let broken = BuildResult { failure: Some(FailureKind::Builder), ..result(false, Vec::new()) };
        assert_eq!(builder.ask(SlaveRequest::Built(broken)), SlaveReply::Done);
        tried.push(builder);
    }
    assert_eq!(farm.pool.db.column("SELECT count(*)::text FROM cross_checks"), [Some("0".to_string())]);
    assert!(noticed(&mut farm, &["the cross-check of foo 1.0 is given up: 5 attempts ended without a verdict"]));
}
