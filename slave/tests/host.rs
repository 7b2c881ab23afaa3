//! piw-slave with several builders, the real binary against a fake master (see `support`):
//! builds at once, SIGTTIN and SIGTTOU, the operator's add and retire through the master, a
//! hung builder replaced, the floors, and the host's death ending every builder and build.

mod support;

use std::collections::HashMap;
use std::os::unix::process::ExitStatusExt;
use std::time::Instant;

use nix::sys::signal::{Signal, kill};
use piwheels_common::protocols::{SlaveReply, SlaveRequest};
use support::*;

/// The fake master's view of the builders: who each connection is, and what was said.
#[derive(Default)]
struct Farm {
    /// Each connection's label, from its hello.
    labels: HashMap<Vec<u8>, String>,
    /// Every request by label, in order: `label request-name`.
    said: Vec<String>,
    /// Each `Built` by label.
    built: Vec<(String, SlaveRequest)>,
}

impl Farm {
    /// Answers every builder's requests until `until` holds: hellos with `Ack`, `Bye` not at
    /// all, the rest with `answer(label, request)`.
    fn serve(
        &mut self,
        master: &FakeMaster,
        slave: &Slave,
        what: &str,
        mut answer: impl FnMut(&str, &SlaveRequest) -> SlaveReply,
        mut until: impl FnMut(&Farm) -> bool,
    ) {
        let deadline = Instant::now() + PATIENCE;
        while !until(self) {
            assert!(Instant::now() < deadline, "gave up waiting for {what}; last said: {:?}\nthe slave's log:\n{}", &self.said[self.said.len().saturating_sub(20)..], slave.log());
            slave.check_running();
            if !master.server.readable(Some(std::time::Duration::from_millis(50))).expect("poll") {
                continue;
            }
            let (peer, request) = master.server.recv().expect("receive");
            let request = request.expect("a slave request");
            if let SlaveRequest::Hello(hello) = &request {
                self.labels.insert(peer.identity().to_vec(), hello.host.label.clone());
            }
            let label = self.labels.get(peer.identity()).cloned().unwrap_or_else(|| "?".into());
            self.said.push(format!("{label} {}", request.name()));
            match &request {
                SlaveRequest::Hello(_) => master.reply(&peer, &SlaveReply::Ack { slave_id: 7, index_url: "http://127.0.0.1:9/simple".into() }),
                SlaveRequest::Bye { .. } => {}
                SlaveRequest::Built(_) => {
                    self.built.push((label.clone(), request.clone()));
                    master.reply(&peer, &answer(&label, &request));
                }
                _ => master.reply(&peer, &answer(&label, &request)),
            }
        }
    }

    fn heard(&self, line: &str) -> bool {
        self.said.iter().any(|said| said == line)
    }
}

/// Builds `package` when builder `label` asks for work, sleeps the others, lets builds go on.
fn build_on<'a>(scene: &'a Scene, plan: &'a [(&'a str, &'a str)]) -> impl FnMut(&str, &SlaveRequest) -> SlaveReply + 'a {
    let mut handed: Vec<String> = Vec::new();
    move |label, request| match request {
        SlaveRequest::Idle { .. } => match plan.iter().find(|(builder, _)| *builder == label).filter(|_| !handed.iter().any(|l| l == label)) {
            Some((_, package)) => {
                handed.push(label.to_string());
                scene.build(package)
            }
            None => SlaveReply::Sleep { paused: false },
        },
        SlaveRequest::Busy { .. } => SlaveReply::Cont,
        _ => SlaveReply::Done,
    }
}

fn alive(pids: &[i32]) -> bool {
    pids.iter().all(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists())
}

/// `args` with `option` set to `value`.
fn with(mut args: Vec<String>, option: &str, value: &str) -> Vec<String> {
    match args.iter().position(|arg| arg == option) {
        Some(at) => args[at + 1] = value.to_string(),
        None => args.extend([option.to_string(), value.to_string()]),
    }
    args
}

fn wait_for(slave: &Slave, what: &str, mut check: impl FnMut() -> bool) {
    wait_until(slave, what, || check().then_some(()));
}

#[test]
fn builders_build_at_once_and_signals_add_and_retire_them() {
    let scene = Scene::new();
    let master = FakeMaster::bind();
    let slave = Slave::start(&with(scene.args(&master.endpoint, "tcp://127.0.0.1:9"), "--builders", "2"));
    let mut farm = Farm::default();
    let plan = [("test-slave#1", "alpha"), ("test-slave#2", "beta"), ("test-slave#3", "gamma")];
    let mut answer = build_on(&scene, &plan);

    // Two builders, two builds at once, each in its builder's own directory.
    farm.serve(&master, &slave, "two builds", &mut answer, |_| scene.build_pids_of("alpha").len() >= 2 && scene.build_pids_of("beta").len() >= 2);
    let (alpha, beta) = (scene.build_pids_of("alpha"), scene.build_pids_of("beta"));
    assert!(alive(&alpha) && alive(&beta), "{alpha:?} {beta:?}");
    assert_eq!((scene.build_dirs(1).len(), scene.build_dirs(2).len()), (1, 1));
    let builders = slave.builder_pids();
    assert_eq!(builders.len(), 2, "{builders:?}");

    // SIGTTIN: a third builder, which takes work too.
    kill(slave.pid(), Signal::SIGTTIN).expect("SIGTTIN");
    farm.serve(&master, &slave, "a third build", &mut answer, |_| scene.build_pids_of("gamma").len() >= 2);
    let gamma = scene.build_pids_of("gamma");
    assert_eq!(slave.builder_pids().len(), 3);

    // SIGTTOU: the newest builder leaves after its build, which is not killed.
    kill(slave.pid(), Signal::SIGTTOU).expect("SIGTTOU");
    wait_for(&slave, "the host to retire builder 3", || slave.log().contains("retiring builder 3 after its current build"));
    let busy_before = farm.said.iter().filter(|s| *s == "test-slave#3 Busy").count();
    farm.serve(&master, &slave, "builder 3 to go on building", &mut answer, |farm| farm.said.iter().filter(|s| *s == "test-slave#3 Busy").count() > busy_before);
    assert!(alive(&gamma), "the retiring builder's build was killed");
    scene.go_for("gamma");
    farm.serve(&master, &slave, "builder 3's goodbye", &mut answer, |farm| farm.heard("test-slave#3 Bye"));
    let (label, SlaveRequest::Built(result)) = &farm.built[0] else { panic!("{:?}", farm.built) };
    assert_eq!((label.as_str(), result.exit_status), ("test-slave#3", Some(0)), "{}", result.output);
    wait_for(&slave, "two builders", || slave.builder_pids().len() == 2);
    assert_eq!(slave.builder_pids(), builders, "the first two builders go on");
    assert!(alive(&alpha) && alive(&beta));

    // The host's death, even by SIGKILL, ends every builder and build: the builders, their
    // launchers and the build scripts, and the scripts' own children.
    let descendants = descendants_of(slave.pid());
    assert!(descendants.len() >= 2 + 2 + 4, "builders, launchers, scripts and their sleeps: {descendants:?}");
    kill(slave.pid(), Signal::SIGKILL).expect("SIGKILL");
    let (status, log) = slave.exit();
    assert_eq!(status.signal(), Some(Signal::SIGKILL as i32), "{log}");
    let everything: Vec<i32> = descendants.iter().map(|pid| pid.as_raw()).chain(alpha).chain(beta).collect();
    let deadline = Instant::now() + PATIENCE;
    while !gone(&everything) {
        let left: Vec<&i32> = everything.iter().filter(|pid| !gone(&[**pid])).collect();
        assert!(Instant::now() < deadline, "outlived the host: {left:?}\n{log}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn an_operators_add_and_retire_reach_the_host_through_the_master() {
    let scene = Scene::new();
    let master = FakeMaster::bind();
    let slave = Slave::start(&scene.args(&master.endpoint, "tcp://127.0.0.1:9"));
    let mut farm = Farm::default();
    let mut told = false;
    let add_once = |label: &str, _: &SlaveRequest| {
        if label == "test-slave#1" && !std::mem::replace(&mut told, true) { SlaveReply::AddBuilder } else { SlaveReply::Sleep { paused: false } }
    };
    farm.serve(&master, &slave, "a second builder", add_once, |farm| farm.heard("test-slave#2 Idle"));
    assert_eq!(slave.builder_pids().len(), 2);
    assert!(slave.log().contains("an operator, through builder 1: 1 → 2 builder(s)"), "{}", slave.log());

    let mut told = false;
    let retire_once = |label: &str, _: &SlaveRequest| {
        if label == "test-slave#1" && !std::mem::replace(&mut told, true) { SlaveReply::RetireBuilder } else { SlaveReply::Sleep { paused: false } }
    };
    farm.serve(&master, &slave, "builder 2's goodbye", retire_once, |farm| farm.heard("test-slave#2 Bye"));
    wait_for(&slave, "one builder", || slave.builder_pids().len() == 1);

    master.idle(&slave, &SlaveReply::Die { reason: "test over".into() });
    let (status, log) = slave.exit();
    assert!(status.success(), "{log}");
    assert!(log.contains("the master stopped every builder"), "{log}");
}

#[test]
fn a_hung_builder_is_killed_and_replaced() {
    let scene = Scene::new();
    let master = FakeMaster::bind();
    let args = scene.args(&master.endpoint, "tcp://127.0.0.1:9");
    let args = with(with(with(args, "--busy-timeout", "2s"), "--upload-timeout", "1s"), "--master-timeout", "500ms");
    let slave = Slave::start(&args);
    let mut farm = Farm::default();
    let sleep = |_: &str, _: &SlaveRequest| SlaveReply::Sleep { paused: false };
    farm.serve(&master, &slave, "the builder to ask for work", sleep, |farm| farm.heard("test-slave#1 Idle"));
    let hung = slave.builder_pids();
    assert_eq!(hung.len(), 1);
    kill(hung[0], Signal::SIGSTOP).expect("SIGSTOP");
    wait_for(&slave, "another builder", || !slave.builder_pids().is_empty() && slave.builder_pids() != hung);
    let hellos = farm.said.iter().filter(|s| *s == "test-slave#1 Hello").count();
    farm.serve(&master, &slave, "the new builder's hello", sleep, |farm| farm.said.iter().filter(|s| *s == "test-slave#1 Hello").count() > hellos);
    assert!(gone(&[hung[0].as_raw()]), "the hung builder lives on");
    let log = slave.log();
    assert!(log.contains("builder 1 has been silent for more than 7s: killing it"), "{log}");
    assert!(log.contains("builder 1 was killed as hung"), "{log}");
}

#[test]
fn no_builder_is_added_below_the_floors_and_the_first_declines_work() {
    let scene = Scene::new();
    let master = FakeMaster::bind();
    let args = with(with(scene.args(&master.endpoint, "tcp://127.0.0.1:9"), "--builders", "2"), "--min-free-disk", "1000PiB");
    let slave = Slave::start(&args);
    wait_for(&slave, "the host to hold the second builder back", || slave.log().contains("not starting another builder: low disk"));
    assert_eq!(slave.builder_pids().len(), 1);
    let mut farm = Farm::default();
    let mut declined = None;
    farm.serve(
        &master,
        &slave,
        "the first builder to decline work",
        |_, request| {
            if let SlaveRequest::Idle { declined: reason, .. } = request {
                declined.clone_from(reason);
            }
            SlaveReply::Sleep { paused: false }
        },
        |farm| farm.heard("test-slave#1 Idle"),
    );
    let reason = declined.expect("a reason");
    assert!(reason.starts_with("low disk:") && reason.contains("builder-1"), "{reason}");
    assert_eq!(slave.builder_pids().len(), 1);
}
