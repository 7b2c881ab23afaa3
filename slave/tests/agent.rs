//! piw-slave with one builder, the real binary, against a fake master: each test scripts
//! one conversation (see `support`).

mod support;

use std::fs;
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use piwheels_common::protocols::{FileReply, FileRequest, SlaveReply, SlaveRequest, Versions, WireError};
use piwheels_common::transport::{DEFAULT_MAX_MESSAGE, Server};
use piwheels_testsupport::free_port;
use sha2::{Digest, Sha256};
use support::*;

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
    assert_eq!(hello.host.label, "test-slave#1");
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
    assert_eq!(scene.build_dirs(1), Vec::<String>::new(), "the build was not removed");
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
    assert_eq!(scene.build_dirs(1), Vec::<String>::new(), "the abandoned build was not removed");
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
    assert_eq!(scene.build_dirs(1), Vec::<String>::new());
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
    assert_eq!(scene.build_dirs(1), Vec::<String>::new());
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
    assert_eq!(scene.build_dirs(1), Vec::<String>::new());
}

/// The master's Die for a protocol error (a build it cannot record, say) is not an operator's
/// kill: the host starts another builder in its place.
#[test]
fn a_die_for_a_protocol_error_is_followed_by_another_builder() {
    let scene = Scene::new();
    let master = FakeMaster::bind();
    let slave = Slave::start(&scene.args(&master.endpoint, "tcp://127.0.0.1:9"));
    master.welcome(&slave);
    let first = slave.builder_pids();
    master.idle(&slave, &SlaveReply::Die { reason: "protocol error: the build lists demo-1.0-py3-none-any.whl twice".into() });
    master.welcome(&slave);
    assert_ne!(slave.builder_pids(), first);
    master.idle(&slave, &SlaveReply::Die { reason: "stopped by an operator".into() });
    let (status, log) = slave.exit();
    assert!(status.success(), "{log}");
    assert!(log.contains("builder 1 ended (exit status: 1)"), "{log}");
}

/// An answer the conversation does not allow: the builder says why in its Bye and exits 1,
/// and its host starts another in its place.
#[test]
fn an_unexpected_answer_is_a_protocol_error() {
    let scene = Scene::new();
    let master = FakeMaster::bind();
    let slave = Slave::start(&scene.args(&master.endpoint, "tcp://127.0.0.1:9"));
    master.welcome(&slave);
    let first = slave.builder_pids();
    master.idle(&slave, &SlaveReply::Cont);
    let (_, request) = master.recv(&slave);
    let SlaveRequest::Bye { reason } = request else { panic!("expected Bye, got {request:?}") };
    assert!(reason.contains("protocol error") && reason.contains("answered Idle with Cont"), "{reason}");
    let (_, hello) = master.welcome(&slave);
    assert_eq!(hello.host.label, "test-slave#1");
    assert_ne!(slave.builder_pids(), first);
    master.idle(&slave, &SlaveReply::Die { reason: "test over".into() });
    let (status, log) = slave.exit();
    assert!(status.success(), "{log}");
    assert!(log.contains("builder 1 ended (exit status: 1)"), "{log}");
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

/// A builder killed outright (SIGKILL: no clean-up of its own) takes its build with it: the
/// launcher's parent-death signal makes it kill every process of the build. Its host starts
/// another builder in its place, which removes the directory left behind.
#[test]
fn a_killed_builder_takes_its_build_with_it_and_is_replaced() {
    let scene = Scene::new();
    let master = FakeMaster::bind();
    let slave = Slave::start(&scene.args(&master.endpoint, "tcp://127.0.0.1:9"));
    master.welcome(&slave);
    let pids = master.start_build(&slave, &scene);
    let builders = slave.builder_pids();
    assert_eq!(builders.len(), 1, "{builders:?}");
    kill(builders[0], Signal::SIGKILL).expect("kill the builder");
    let deadline = Instant::now() + PATIENCE;
    while !gone(&pids) {
        assert!(Instant::now() < deadline, "the build outlived its builder: {pids:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The new builder cleans up before it says hello.
    let (_, hello) = master.welcome(&slave);
    assert_eq!(hello.host.label, "test-slave#1");
    assert_eq!(scene.build_dirs(1), Vec::<String>::new());
    assert_ne!(slave.builder_pids(), builders);
    master.idle(&slave, &SlaveReply::Die { reason: "done".into() });
    let (status, log) = slave.exit();
    assert!(status.success(), "{log}");
    assert!(log.contains("left by a slave that died"), "{log}");
    assert!(log.contains("builder 1 ended (signal: 9"), "{log}");
}
