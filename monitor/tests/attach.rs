//! Attaching to a master, against stand-ins for its sockets: no master, a master that refuses,
//! and the status feed noticing its connection come and go.

mod support;

use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use piwheels_common::protocols::{ControlReply, ControlRequest, StatusEvent};
use piwheels_common::transport::{Security, Sender, Server};
use piwheels_monitor::connection::{Input, StatusFeed};

/// A directory whose `run/` subdirectory holds the ipc sockets (created private, mode 700,
/// by the first socket bound there, as the master's rule wants).
fn run_dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn monitor(control: &str, status: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_piw-monitor"));
    command
        .args(["--control-queue", control, "--status-queue", status, "--control-timeout", "2s"])
        .env("PIW_CONFIG", "/dev/null")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

#[test]
fn no_master_is_a_clear_error_after_the_connect_timeout() {
    let dir = run_dir();
    let control = format!("ipc://{}/run/control", dir.path().display());
    let status = format!("ipc://{}/run/status", dir.path().display());
    let output = monitor(&control, &status).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.starts_with(&format!("piw-monitor: no answer from the master at {control} within 2s: is piw-master running")), "{stderr}");
    assert!(stderr.contains(&format!("there is no socket at {}/run/control", dir.path().display())), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn a_refusal_shows_the_masters_reason() {
    let dir = run_dir();
    let control = format!("ipc://{}/run/control", dir.path().display());
    let status = format!("ipc://{}/run/status", dir.path().display());
    let ctx = zmq::Context::new();
    let server = Server::<ControlRequest, ControlReply>::bind(&ctx, &control, None).unwrap();
    let reason = "version mismatch: this side runs protocol 99 (software 9.9.9), the peer runs protocol 1 (software 0.1.0)";
    let fake = std::thread::spawn(move || {
        let (peer, request) = server.recv().unwrap();
        assert!(matches!(request, Ok(ControlRequest::Hello { ref client, .. }) if client == "piw-monitor"), "{request:?}");
        server.send(&peer, &ControlReply::Error(piwheels_common::protocols::WireError::refused(reason))).unwrap();
    });
    let output = monitor(&control, &status).output().unwrap();
    fake.join().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim(), format!("piw-monitor: the master at {control} refused this monitor: {reason}"));
}

#[test]
fn the_status_feed_reports_events_and_the_connection_going() {
    let dir = run_dir();
    let status = format!("ipc://{}/run/status", dir.path().display());
    let ctx = zmq::Context::new();
    let publisher = Sender::<StatusEvent>::publish(&ctx, &status, &Security::Plain).unwrap();
    let feed = StatusFeed::open(&ctx, &status, &Security::Plain).unwrap();
    assert!(feed.wait_connected(Duration::from_secs(5)), "the subscription never connected");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || feed.pump(tx));
    publisher.send(&StatusEvent::Paused(true), Duration::ZERO).unwrap();
    let next = || rx.recv_timeout(Duration::from_secs(5)).expect("an input from the feed");
    match next() {
        Input::Status(event) => assert_eq!(*event, StatusEvent::Paused(true)),
        other => panic!("expected the event, got {other:?}"),
    }
    drop(publisher);
    loop {
        match next() {
            Input::Disconnected => break,
            Input::Connected => {}
            other => panic!("expected the connection to drop, got {other:?}"),
        }
    }
}
