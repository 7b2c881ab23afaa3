//! The task runtime over real inproc sockets, with a fake clock driving the timers.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use piwheels_common::clock::{FakeClock, SharedClock};
use piwheels_common::protocols::{StatusEvent, TaskControl, TaskState};
use piwheels_common::task::{self, Context, PauseMode, RestartPolicy, Runtime, Supervisor, Task, TaskExit, TaskHandle};
use piwheels_common::transport::{Receiver, Sender};

/// How long a test waits for what it expects; generous, since a loaded machine is slow and a
/// passing test does not wait it out.
const WAIT: Duration = Duration::from_secs(30);

/// What the probe task saw, shared with the test.
#[derive(Default)]
struct Seen {
    ticks: AtomicU64,
    handled: Mutex<Vec<u64>>,
    /// The messages handled while the task was paused.
    handled_paused: Mutex<Vec<u64>>,
    quits: Mutex<Vec<String>>,
}

/// What the test task's inbox carries.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
enum Inbox {
    Downloads { count: u64 },
}

piwheels_common::messages!(Inbox);

/// A task that counts timer ticks and reacts to `Inbox::Downloads { count }` on its
/// inbox: 1 returns an error, 2 panics, anything else is recorded.
struct Probe<const MODE: u8> {
    name: String,
    seen: Arc<Seen>,
}

struct ProbeSockets {
    inbox: Receiver<Inbox>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ev {
    Inbox,
    Tick,
}

const NON_STOP: u8 = 0;
const TIMERS: u8 = 1;
const FULL: u8 = 2;

impl<const MODE: u8> Task for Probe<MODE> {
    type Sockets = ProbeSockets;
    type Event = Ev;
    const PAUSE: PauseMode = match MODE {
        NON_STOP => PauseMode::NonStop,
        TIMERS => PauseMode::Timers,
        _ => PauseMode::Full,
    };

    fn poll_sockets<'s>(&self, sockets: &'s ProbeSockets) -> Vec<(Ev, &'s zmq::Socket)> {
        vec![(Ev::Inbox, sockets.inbox.socket())]
    }

    fn timers(&self) -> Vec<(Ev, Duration)> {
        vec![(Ev::Tick, Duration::from_secs(60))]
    }

    fn handle(&mut self, event: Ev, sockets: &mut ProbeSockets, ctx: &mut Context<'_, Ev>) -> anyhow::Result<()> {
        match event {
            Ev::Tick => {
                self.seen.ticks.fetch_add(1, Ordering::SeqCst);
            }
            Ev::Inbox => match sockets.inbox.recv()? {
                Inbox::Downloads { count: 1 } => anyhow::bail!("handler failed on purpose"),
                Inbox::Downloads { count: 2 } => panic!("handler panicked on purpose"),
                Inbox::Downloads { count } => {
                    if ctx.paused() {
                        self.seen.handled_paused.lock().unwrap().push(count);
                    }
                    self.seen.handled.lock().unwrap().push(count);
                }
            },
        }
        Ok(())
    }

    fn on_quit(&mut self, _sockets: &mut ProbeSockets) {
        self.seen.quits.lock().unwrap().push(self.name.clone());
    }
}

struct Harness {
    rt: Runtime,
    clock: FakeClock,
    status: Receiver<StatusEvent>,
}

impl Harness {
    fn new(restart: RestartPolicy) -> Harness {
        let zmq = zmq::Context::new();
        let clock = FakeClock::new(chrono::DateTime::from_timestamp(1_750_000_000, 0).unwrap());
        let status_endpoint = "inproc://status".to_string();
        let status = Receiver::pull(&zmq, &status_endpoint, None).unwrap();
        let shared: SharedClock = Arc::new(clock.clone());
        let rt = Runtime { zmq, clock: shared, status_endpoint, poll_cap: Duration::from_millis(5), restart };
        Harness { rt, clock, status }
    }

    fn spawn<const MODE: u8>(&self, name: &str) -> (TaskHandle, Arc<Seen>, Sender<Inbox>) {
        self.spawn_sharing::<MODE>(name, Arc::new(Seen::default()))
    }

    /// Like `spawn`, recording into `seen`, which other tasks may share.
    fn spawn_sharing<const MODE: u8>(&self, name: &str, seen: Arc<Seen>) -> (TaskHandle, Arc<Seen>, Sender<Inbox>) {
        let inbox = format!("inproc://inbox-{name}");
        let endpoint = inbox.clone();
        let task_seen = Arc::clone(&seen);
        let task_name = name.to_string();
        let handle = task::spawn::<Probe<MODE>, _, _>(
            &self.rt,
            name,
            move |ctx| Ok(ProbeSockets { inbox: Receiver::pull(ctx, &endpoint, None)? }),
            move |_| Ok(Probe { name: task_name.clone(), seen: Arc::clone(&task_seen) }),
        )
        .unwrap();
        let sender = Sender::push(&self.rt.zmq, &inbox).unwrap();
        (handle, seen, sender)
    }

    /// Waits for the task's state to become `state`, failing the test after [`WAIT`].
    fn expect_state(&self, name: &str, state: TaskState) {
        self.expect_states(&[name], state);
    }

    /// Waits until every named task has reported `state`.
    fn expect_states(&self, names: &[&str], state: TaskState) {
        let mut missing: Vec<&str> = names.to_vec();
        let deadline = Instant::now() + WAIT;
        while !missing.is_empty() && Instant::now() < deadline {
            if let Some(StatusEvent::Task { name, state: s, .. }) = self.status.recv_timeout(Duration::from_millis(50)).unwrap()
                && s == state
            {
                missing.retain(|m| *m != name);
            }
        }
        assert!(missing.is_empty(), "{missing:?} never reported {state:?}");
    }
}

fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Returns once the task has gone round its loop, timers first, since the call: it handled a
/// message sent after one it handled (a loop handles what was ready when it polled).
fn went_round(tx: &Sender<Inbox>, seen: &Seen) {
    for marker in [1001, 1002] {
        send(tx, marker);
        eventually("a message handled", || seen.handled.lock().unwrap().contains(&marker));
    }
}

/// Waits for the tick every timer makes at start, and for the task to go round its loop after
/// it: the tick is counted within the handler, and the timer set again from the clock only
/// once the handler returns, so a clock moved before that would set it too late.
fn first_tick(tx: &Sender<Inbox>, seen: &Seen) {
    eventually("first tick at start", || seen.ticks.load(Ordering::SeqCst) == 1);
    went_round(tx, seen);
}

fn send(tx: &Sender<Inbox>, count: u64) {
    tx.send(&Inbox::Downloads { count }, Duration::from_secs(1)).unwrap();
}

#[test]
fn timers_fire_when_the_fake_clock_reaches_them() {
    let h = Harness::new(RestartPolicy::default());
    let (mut task, seen, tx) = h.spawn::<TIMERS>("timers");
    h.expect_state("timers", TaskState::Running);
    first_tick(&tx, &seen);
    h.clock.advance(Duration::from_secs(59));
    went_round(&tx, &seen);
    assert_eq!(seen.ticks.load(Ordering::SeqCst), 1, "a tick before the interval");
    h.clock.advance(Duration::from_secs(1));
    eventually("second tick", || seen.ticks.load(Ordering::SeqCst) == 2);
    task.control(TaskControl::Quit).unwrap();
    assert_eq!(task.join(WAIT), Some(TaskExit::Quit));
}

#[test]
fn pause_stops_timers_resume_restarts_them_and_quit_works_while_paused() {
    let h = Harness::new(RestartPolicy::default());
    let (mut task, seen, tx) = h.spawn::<TIMERS>("pausing");
    eventually("first tick", || seen.ticks.load(Ordering::SeqCst) == 1);
    task.control(TaskControl::Pause).unwrap();
    task.control(TaskControl::Pause).unwrap();
    h.expect_state("pausing", TaskState::Paused);
    h.clock.advance(Duration::from_secs(600));
    // A timers-only pause still serves sockets.
    send(&tx, 7);
    eventually("message handled while paused", || *seen.handled.lock().unwrap() == [7]);
    assert_eq!(*seen.handled_paused.lock().unwrap(), [7]);
    went_round(&tx, &seen);
    assert_eq!(seen.ticks.load(Ordering::SeqCst), 1, "a tick while paused");
    task.control(TaskControl::Resume).unwrap();
    h.expect_state("pausing", TaskState::Running);
    eventually("tick after resume", || seen.ticks.load(Ordering::SeqCst) == 2);
    task.control(TaskControl::Pause).unwrap();
    h.expect_state("pausing", TaskState::Paused);
    task.control(TaskControl::Quit).unwrap();
    assert_eq!(task.join(WAIT), Some(TaskExit::Quit));
    assert_eq!(*seen.quits.lock().unwrap(), ["pausing"]);
}

#[test]
fn a_full_pause_stops_sockets_until_resumed() {
    let h = Harness::new(RestartPolicy::default());
    let (mut task, seen, tx) = h.spawn::<FULL>("full");
    task.control(TaskControl::Pause).unwrap();
    h.expect_state("full", TaskState::Paused);
    send(&tx, 5);
    task.control(TaskControl::Resume).unwrap();
    eventually("handled after resume", || *seen.handled.lock().unwrap() == [5]);
    // Which sockets a pause stops is `PauseMode::serves_sockets`, tested on its own; this shows
    // the loop asks it: the message waited for the resume.
    assert!(seen.handled_paused.lock().unwrap().is_empty(), "handled while fully paused");
    task.control(TaskControl::Quit).unwrap();
    assert_eq!(task.join(WAIT), Some(TaskExit::Quit));
}

#[test]
fn a_non_stop_task_ignores_pause() {
    let h = Harness::new(RestartPolicy::default());
    let (mut task, seen, tx) = h.spawn::<NON_STOP>("nonstop");
    first_tick(&tx, &seen);
    task.control(TaskControl::Pause).unwrap();
    h.clock.advance(Duration::from_secs(60));
    eventually("tick despite pause", || seen.ticks.load(Ordering::SeqCst) == 2);
    task.control(TaskControl::Quit).unwrap();
    assert_eq!(task.join(WAIT), Some(TaskExit::Quit));
}

#[test]
fn a_handler_error_is_counted_and_the_task_goes_on() {
    let h = Harness::new(RestartPolicy::default());
    let (mut task, seen, tx) = h.spawn::<TIMERS>("erring");
    send(&tx, 1);
    eventually("error counted", || task.errors() == 1);
    send(&tx, 3);
    eventually("next message handled", || *seen.handled.lock().unwrap() == [3]);
    assert_eq!(task.restarts(), 0);
    task.control(TaskControl::Quit).unwrap();
    assert_eq!(task.join(WAIT), Some(TaskExit::Quit));
}

#[test]
fn a_panicking_task_is_restarted_and_keeps_its_sockets() {
    let policy = RestartPolicy { initial_backoff: Duration::from_millis(1), ..RestartPolicy::default() };
    let h = Harness::new(policy);
    let (mut task, seen, tx) = h.spawn::<TIMERS>("panicky");
    h.expect_state("panicky", TaskState::Running);
    send(&tx, 2);
    h.expect_state("panicky", TaskState::Restarting);
    h.expect_state("panicky", TaskState::Running);
    assert_eq!(task.restarts(), 1);
    // The same sender still reaches the restarted task: its inbox socket survived.
    send(&tx, 4);
    eventually("handled after restart", || *seen.handled.lock().unwrap() == [4]);
    task.control(TaskControl::Quit).unwrap();
    assert_eq!(task.join(WAIT), Some(TaskExit::Quit));
}

#[test]
fn repeated_panics_end_the_task_as_failed() {
    let policy = RestartPolicy {
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(2),
        max_restarts: 2,
        window: Duration::from_secs(60),
    };
    let h = Harness::new(policy);
    let (mut task, _seen, tx) = h.spawn::<TIMERS>("doomed");
    for _ in 0..3 {
        h.expect_state("doomed", TaskState::Running);
        send(&tx, 2);
    }
    h.expect_state("doomed", TaskState::Failed);
    match task.join(WAIT) {
        Some(TaskExit::Failed(reason)) => {
            assert!(reason.contains("doomed") && reason.contains("panicked on purpose"), "{reason}")
        }
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[test]
fn an_undecodable_control_message_is_survived() {
    let h = Harness::new(RestartPolicy::default());
    let (mut task, seen, tx) = h.spawn::<TIMERS>("garbled");
    let raw = h.rt.zmq.socket(zmq::PUSH).unwrap();
    raw.connect("inproc://ctrl-garbled").unwrap();
    raw.send(&b"\xff\x00garbage"[..], 0).unwrap();
    send(&tx, 9);
    eventually("still handling messages", || *seen.handled.lock().unwrap() == [9]);
    task.control(TaskControl::Quit).unwrap();
    assert_eq!(task.join(WAIT), Some(TaskExit::Quit));
}

#[test]
fn shutdown_stops_tasks_in_reverse_start_order() {
    let h = Harness::new(RestartPolicy::default());
    // One record shared by the three tasks: each task's quit hook appends its name, and the
    // supervisor waits for each task to end before telling the next, so the record's order is
    // the stopping order.
    let seen = Arc::new(Seen::default());
    let mut supervisor = Supervisor::new();
    let mut senders = Vec::new();
    for name in ["first", "second", "third"] {
        let (handle, _, tx) = h.spawn_sharing::<TIMERS>(name, Arc::clone(&seen));
        supervisor.add(handle);
        senders.push(tx);
    }
    h.expect_states(&["first", "second", "third"], TaskState::Running);
    assert!(supervisor.shutdown(WAIT).is_empty());
    assert_eq!(*seen.quits.lock().unwrap(), ["third", "second", "first"]);
}

#[test]
fn a_task_whose_sockets_cannot_open_fails_at_once() {
    let h = Harness::new(RestartPolicy::default());
    let mut task = task::spawn::<Probe<TIMERS>, _, _>(
        &h.rt,
        "unopenable",
        |_| anyhow::bail!("address in use"),
        |_| unreachable!("start is never called without sockets"),
    )
    .unwrap();
    match task.join(WAIT) {
        Some(TaskExit::Failed(reason)) => assert!(reason.contains("address in use"), "{reason}"),
        other => panic!("expected a failure, got {other:?}"),
    }
}
