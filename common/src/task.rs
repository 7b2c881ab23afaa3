//! The task runtime: each master task is an actor on its own named thread, owning its
//! sockets, running a poll loop over them, its control socket and its timers.
//!
//! A task is split in two parts with different lifetimes:
//!
//! * its **sockets** ([`Task::Sockets`]) are opened once, when the thread starts, and live
//!   until the task quits. Peers' inproc connections never reconnect to a new socket, so
//!   sockets must outlive a restart of the task's state.
//! * its **state** (the [`Task`] value) is built by a start function; when a handler panics the
//!   state is thrown away and built again, after a back-off. Too many restarts in a short
//!   time end the task with [`TaskExit::Failed`], which makes the master exit non-zero.
//!
//! An error returned by a handler is logged with the task's name, counted, and the task goes
//! on. Control messages ([`TaskControl`]) pause, resume and stop a task; what pausing means is
//! the task's [`PauseMode`]. Time comes from an injected [`Clock`], so tests drive timers with
//! a [`crate::clock::FakeClock`].

use std::collections::VecDeque;
use std::fmt::Debug;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::clock::SharedClock;
use crate::protocols::{StatusEvent, TaskControl, TaskState};
use crate::transport::{Receiver, Sender, TransportError};

/// What a task does when it is paused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseMode {
    /// Pausing changes nothing (the load balancer, the oracles, the file juggler).
    NonStop,
    /// Timers stop; sockets are still served and handlers see [`Context::paused`], so they
    /// can answer "not now" (the slave driver tells slaves to sleep).
    Timers,
    /// Timers and sockets stop; only control messages are read until resumed.
    Full,
}

impl PauseMode {
    /// Whether a task in this mode runs its timers now.
    pub fn runs_timers(self, paused: bool) -> bool {
        !paused || self == PauseMode::NonStop
    }

    /// Whether a task in this mode polls and handles its sockets now.
    pub fn serves_sockets(self, paused: bool) -> bool {
        !paused || self != PauseMode::Full
    }
}

/// A master task. See the module documentation for the split between sockets and state.
pub trait Task: Sized + 'static {
    /// The task's sockets, opened once and kept across restarts.
    type Sockets: Send + 'static;
    /// What the task reacts to: a socket with something to read, or a timer falling due.
    type Event: Copy + Eq + Debug + Send + 'static;
    /// What pausing the task means.
    const PAUSE: PauseMode;

    /// The sockets to poll now, each with the event raised when it has something to read.
    /// Asked before every poll, so a task can leave out a socket it cannot serve yet. None by
    /// default: a task of timers alone.
    fn poll_sockets<'s>(&self, _sockets: &'s Self::Sockets) -> Vec<(Self::Event, &'s zmq::Socket)> {
        Vec::new()
    }

    /// Periodic timers, each with its interval. Every timer first falls due when the task
    /// starts, then each interval after its handler returns.
    fn timers(&self) -> Vec<(Self::Event, Duration)> {
        Vec::new()
    }

    /// Reacts to an event. A readable socket's handler should receive one message from it.
    fn handle(&mut self, event: Self::Event, sockets: &mut Self::Sockets, ctx: &mut Context<'_, Self::Event>) -> anyhow::Result<()>;

    /// Called when the task is paused (not for [`PauseMode::NonStop`]).
    fn on_pause(&mut self, _sockets: &mut Self::Sockets) {}

    /// Called when the task is resumed.
    fn on_resume(&mut self, _sockets: &mut Self::Sockets) {}

    /// Called once when the task quits, before its sockets close.
    fn on_quit(&mut self, _sockets: &mut Self::Sockets) {}
}

/// What a handler can ask of the runtime.
#[derive(Debug)]
pub struct Context<'a, E> {
    clock: &'a SharedClock,
    paused: bool,
    timers: &'a mut Timers<E>,
}

impl<E: Copy + Eq> Context<'_, E> {
    /// Monotonic time now.
    pub fn now(&self) -> Instant {
        self.clock.now()
    }

    /// Wall-clock time now.
    pub fn utc(&self) -> crate::protocols::Timestamp {
        self.clock.utc()
    }

    /// Whether the task is paused.
    pub fn paused(&self) -> bool {
        self.paused
    }

    /// Makes `event` fall due `after` from now, or keeps it sooner if it already is. Events
    /// that are not periodic timers fire once.
    pub fn schedule(&mut self, event: E, after: Duration) {
        let due = self.clock.now() + after;
        self.timers.schedule(event, due);
    }
}

#[derive(Debug)]
struct Timer<E> {
    event: E,
    every: Option<Duration>,
    due: Option<Instant>,
}

#[derive(Debug)]
struct Timers<E> {
    entries: Vec<Timer<E>>,
}

impl<E: Copy + Eq> Timers<E> {
    fn new(periodic: Vec<(E, Duration)>, now: Instant) -> Self {
        Timers { entries: periodic.into_iter().map(|(event, every)| Timer { event, every: Some(every), due: Some(now) }).collect() }
    }

    fn schedule(&mut self, event: E, due: Instant) {
        match self.entries.iter_mut().find(|t| t.event == event) {
            Some(t) => t.due = Some(t.due.map_or(due, |d| d.min(due))),
            None => self.entries.push(Timer { event, every: None, due: Some(due) }),
        }
    }

    fn next_due(&self) -> Option<Instant> {
        self.entries.iter().filter_map(|t| t.due).min()
    }

    fn take_due(&mut self, now: Instant) -> Vec<E> {
        let mut due = Vec::new();
        for t in &mut self.entries {
            if t.due.is_some_and(|d| d <= now) {
                t.due = None;
                due.push(t.event);
            }
        }
        due
    }

    fn rearm(&mut self, event: E, now: Instant) {
        if let Some(t) = self.entries.iter_mut().find(|t| t.event == event)
            && let (Some(every), None) = (t.every, t.due)
        {
            t.due = Some(now + every);
        }
    }
}

/// How a task's thread ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskExit {
    /// It was told to quit.
    Quit,
    /// It could not open its sockets, or kept failing; the master must stop.
    Failed(String),
}

/// When to give up restarting a task.
#[derive(Debug, Clone, Copy)]
pub struct RestartPolicy {
    /// Wait before the first restart; doubles with each further restart.
    pub initial_backoff: Duration,
    /// Longest wait between restarts.
    pub max_backoff: Duration,
    /// This many restarts within `window` end the task.
    pub max_restarts: usize,
    /// See `max_restarts`.
    pub window: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            max_restarts: 5,
            window: Duration::from_secs(300),
        }
    }
}

/// What every task of a process shares.
#[derive(Clone)]
pub struct Runtime {
    /// The process's one ZeroMQ context.
    pub zmq: zmq::Context,
    /// The clock.
    pub clock: SharedClock,
    /// Where tasks report their state ([`StatusEvent::Task`]).
    pub status_endpoint: String,
    /// Longest time a poll waits, so that a fake clock's timers are noticed.
    pub poll_cap: Duration,
    /// Restart policy for every task.
    pub restart: RestartPolicy,
}

impl Runtime {
    /// A runtime with the real defaults: polls wake at least every second, and the default
    /// restart policy.
    pub fn new(zmq: zmq::Context, clock: SharedClock, status_endpoint: &str) -> Runtime {
        Runtime {
            zmq,
            clock,
            status_endpoint: status_endpoint.to_string(),
            poll_cap: Duration::from_secs(1),
            restart: RestartPolicy::default(),
        }
    }
}

impl Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime").field("status_endpoint", &self.status_endpoint).field("poll_cap", &self.poll_cap).finish()
    }
}

/// Counters a task's thread keeps for its supervisor.
#[derive(Debug, Default)]
pub struct TaskCounters {
    /// Handler errors so far.
    pub errors: AtomicU64,
    /// Restarts after panics so far.
    pub restarts: AtomicU64,
}

/// The supervisor's end of a running task.
#[derive(Debug)]
pub struct TaskHandle {
    name: String,
    control: Sender<TaskControl>,
    thread: Option<JoinHandle<TaskExit>>,
    exit: Option<TaskExit>,
    counters: Arc<TaskCounters>,
}

/// How long a control message may wait for room in a task's control queue.
const CONTROL_SEND_TIMEOUT: Duration = Duration::from_secs(1);

impl TaskHandle {
    /// The task's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sends a control message.
    pub fn control(&self, msg: TaskControl) -> Result<(), TransportError> {
        self.control.send(&msg, CONTROL_SEND_TIMEOUT)
    }

    /// Handler errors so far.
    pub fn errors(&self) -> u64 {
        self.counters.errors.load(Ordering::Relaxed)
    }

    /// Restarts so far.
    pub fn restarts(&self) -> u64 {
        self.counters.restarts.load(Ordering::Relaxed)
    }

    /// Whether the thread has ended.
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Waits up to `timeout` for the thread to end; None if it is still running.
    pub fn join(&mut self, timeout: Duration) -> Option<TaskExit> {
        let deadline = Instant::now() + timeout;
        while !self.is_finished() {
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        if let Some(thread) = self.thread.take() {
            let exit = thread.join().unwrap_or_else(|_| TaskExit::Failed("task thread panicked outside its loop".into()));
            self.exit = Some(exit);
        }
        self.exit.clone()
    }
}

/// Starts a task on its own thread named `name`. `open` makes its sockets (once); `start`
/// makes its state (at start and after every panic).
pub fn spawn<T, O, S>(rt: &Runtime, name: &str, open: O, start: S) -> Result<TaskHandle, TransportError>
where
    T: Task,
    O: FnOnce(&zmq::Context) -> anyhow::Result<T::Sockets> + Send + 'static,
    S: FnMut(&mut T::Sockets) -> anyhow::Result<T> + Send + 'static,
{
    let control_endpoint = format!("inproc://ctrl-{name}");
    // Bind the control socket here, before the thread exists, so that a control message can
    // never race ahead of it.
    let control_rx = Receiver::<TaskControl>::pull(&rt.zmq, &control_endpoint, None)?;
    let control = Sender::push(&rt.zmq, &control_endpoint)?;
    let counters = Arc::new(TaskCounters::default());
    let thread_counters = Arc::clone(&counters);
    let rt = rt.clone();
    let thread_name = name.to_string();
    let thread = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            let span = tracing::info_span!("task", name = %thread_name);
            let _entered = span.enter();
            Runner { rt, name: thread_name, control: control_rx, counters: thread_counters, paused: false, status: None }
                .run::<T, O, S>(open, start)
        })
        .map_err(|e| TransportError::Ipc { endpoint: control_endpoint.clone(), reason: format!("cannot start thread: {e}") })?;
    Ok(TaskHandle { name: name.to_string(), control, thread: Some(thread), exit: None, counters })
}

struct Runner {
    rt: Runtime,
    name: String,
    control: Receiver<TaskControl>,
    counters: Arc<TaskCounters>,
    paused: bool,
    status: Option<Sender<StatusEvent>>,
}

enum LoopEnd {
    Quit,
}

impl Runner {
    fn run<T, O, S>(mut self, open: O, mut start: S) -> TaskExit
    where
        T: Task,
        O: FnOnce(&zmq::Context) -> anyhow::Result<T::Sockets>,
        S: FnMut(&mut T::Sockets) -> anyhow::Result<T>,
    {
        match Sender::push(&self.rt.zmq, &self.rt.status_endpoint) {
            Ok(status) => self.status = Some(status),
            Err(e) => tracing::warn!("cannot report status: {e}"),
        }
        tracing::debug!("starting");
        let mut sockets = match catch_unwind(AssertUnwindSafe(|| open(&self.rt.zmq))) {
            Ok(Ok(sockets)) => sockets,
            Ok(Err(e)) => return self.fail(format!("cannot open its sockets: {e:#}")),
            Err(panic) => return self.fail(format!("panicked opening its sockets: {}", panic_message(&panic))),
        };
        let mut restarts: VecDeque<Instant> = VecDeque::new();
        loop {
            let outcome = match catch_unwind(AssertUnwindSafe(|| start(&mut sockets))) {
                Ok(Ok(mut task)) => {
                    self.report(if self.paused { TaskState::Paused } else { TaskState::Running });
                    if self.paused {
                        task.on_pause(&mut sockets);
                    }
                    match catch_unwind(AssertUnwindSafe(|| self.event_loop(&mut task, &mut sockets))) {
                        Ok(LoopEnd::Quit) => {
                            tracing::debug!("stopping");
                            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| task.on_quit(&mut sockets))) {
                                tracing::error!("panicked while stopping: {}", panic_message(&panic));
                            }
                            self.report(TaskState::Stopped);
                            tracing::debug!("stopped");
                            return TaskExit::Quit;
                        }
                        Err(panic) => format!("panicked: {}", panic_message(&panic)),
                    }
                }
                Ok(Err(e)) => format!("failed to start: {e:#}"),
                Err(panic) => format!("panicked while starting: {}", panic_message(&panic)),
            };
            // The state is gone; decide whether to build it again.
            let now = Instant::now();
            restarts.push_back(now);
            while restarts.front().is_some_and(|t| now.duration_since(*t) > self.rt.restart.window) {
                restarts.pop_front();
            }
            if restarts.len() > self.rt.restart.max_restarts {
                return self.fail(format!(
                    "{outcome}; giving up after {} restarts within {:?}",
                    self.rt.restart.max_restarts, self.rt.restart.window
                ));
            }
            self.counters.restarts.fetch_add(1, Ordering::Relaxed);
            let backoff = self.backoff(restarts.len());
            tracing::error!("{outcome}; restarting in {backoff:?}");
            self.report(TaskState::Restarting);
            if self.wait_for_quit(backoff) {
                self.report(TaskState::Stopped);
                return TaskExit::Quit;
            }
        }
    }

    fn backoff(&self, attempt: usize) -> Duration {
        let policy = &self.rt.restart;
        let factor = 1u32 << attempt.saturating_sub(1).min(16);
        policy.initial_backoff.saturating_mul(factor).min(policy.max_backoff)
    }

    fn fail(&self, reason: String) -> TaskExit {
        tracing::error!("{reason}");
        self.report(TaskState::Failed);
        TaskExit::Failed(format!("task {} {reason}", self.name))
    }

    fn report(&self, state: TaskState) {
        if let Some(status) = &self.status {
            let event = StatusEvent::Task { name: self.name.clone(), at: self.rt.clock.utc(), state };
            if let Err(e) = status.send(&event, Duration::from_millis(100)) {
                tracing::debug!("status not sent: {e}");
            }
        }
    }

    /// Sleeps for a back-off, still obeying control messages; true when told to quit.
    fn wait_for_quit(&mut self, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            match self.control.recv_timeout(left) {
                Ok(Some(TaskControl::Quit)) => return true,
                Ok(Some(TaskControl::Pause)) => self.paused = true,
                Ok(Some(TaskControl::Resume)) => self.paused = false,
                Ok(None) => return false,
                Err(e) => tracing::error!("bad control message: {e}"),
            }
        }
    }

    fn event_loop<T: Task>(&mut self, task: &mut T, sockets: &mut T::Sockets) -> LoopEnd {
        let clock = self.rt.clock.clone();
        let mut timers = Timers::new(task.timers(), clock.now());
        loop {
            let timers_run = T::PAUSE.runs_timers(self.paused);
            let sockets_run = T::PAUSE.serves_sockets(self.paused);
            if timers_run {
                let now = clock.now();
                for event in timers.take_due(now) {
                    self.dispatch(task, sockets, event, &mut timers);
                    timers.rearm(event, clock.now());
                }
            }
            let mut wait = self.rt.poll_cap;
            if timers_run && let Some(due) = timers.next_due() {
                wait = wait.min(due.saturating_duration_since(clock.now()));
            }
            let ready = {
                let polled = if sockets_run { task.poll_sockets(sockets) } else { Vec::new() };
                let mut items = Vec::with_capacity(polled.len() + 1);
                items.push(self.control.socket().as_poll_item(zmq::POLLIN));
                items.extend(polled.iter().map(|(_, s)| s.as_poll_item(zmq::POLLIN)));
                match zmq::poll(&mut items, wait.as_millis().min(i64::MAX as u128) as i64) {
                    Ok(_) => {}
                    Err(zmq::Error::EINTR) => continue,
                    Err(e) => {
                        // Only a closed context makes poll fail; nothing more can be done.
                        tracing::error!("poll failed: {e}");
                        return LoopEnd::Quit;
                    }
                }
                let control_ready = items[0].is_readable();
                let events: Vec<T::Event> =
                    polled.iter().zip(&items[1..]).filter(|(_, item)| item.is_readable()).map(|((e, _), _)| *e).collect();
                (control_ready, events)
            };
            let (control_ready, events) = ready;
            if control_ready && self.read_control(task, sockets) {
                return LoopEnd::Quit;
            }
            for event in events {
                // A pause read just now holds back what was polled before it.
                if T::PAUSE.serves_sockets(self.paused) {
                    self.dispatch(task, sockets, event, &mut timers);
                }
            }
        }
    }

    fn dispatch<T: Task>(&self, task: &mut T, sockets: &mut T::Sockets, event: T::Event, timers: &mut Timers<T::Event>) {
        let mut ctx = Context { clock: &self.rt.clock, paused: self.paused, timers };
        if let Err(e) = task.handle(event, sockets, &mut ctx) {
            self.counters.errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!("{event:?}: {e:#}");
        }
    }

    /// Reads every waiting control message; true when told to quit.
    fn read_control<T: Task>(&mut self, task: &mut T, sockets: &mut T::Sockets) -> bool {
        loop {
            let msg = match self.control.recv_timeout(Duration::ZERO) {
                Ok(Some(msg)) => msg,
                Ok(None) => return false,
                Err(e) => {
                    tracing::error!("bad control message: {e}");
                    continue;
                }
            };
            match msg {
                TaskControl::Quit => return true,
                TaskControl::Pause if T::PAUSE == PauseMode::NonStop => tracing::debug!("pause ignored: this task never pauses"),
                TaskControl::Pause if self.paused => tracing::debug!("already paused"),
                TaskControl::Pause => {
                    self.paused = true;
                    task.on_pause(sockets);
                    self.report(TaskState::Paused);
                    tracing::info!("paused");
                }
                TaskControl::Resume if !self.paused => {
                    if T::PAUSE != PauseMode::NonStop {
                        tracing::warn!("resumed while not paused");
                    }
                }
                TaskControl::Resume => {
                    self.paused = false;
                    task.on_resume(sockets);
                    self.report(TaskState::Running);
                    tracing::info!("resumed");
                }
            }
        }
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_string()
    }
}

/// Starts and stops a process's tasks: start order is the order of [`Supervisor::add`], and
/// shutdown goes in reverse, so that a task outlives every task that depends on it.
#[derive(Debug, Default)]
pub struct Supervisor {
    tasks: Vec<TaskHandle>,
}

impl Supervisor {
    /// An empty supervisor.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a started task.
    pub fn add(&mut self, task: TaskHandle) {
        self.tasks.push(task);
    }

    /// The tasks, in start order.
    pub fn tasks(&self) -> &[TaskHandle] {
        &self.tasks
    }

    /// Sends a control message to every task, in start order.
    pub fn broadcast(&self, msg: TaskControl) {
        for task in &self.tasks {
            if let Err(e) = task.control(msg.clone()) {
                tracing::warn!("cannot send {msg:?} to {}: {e}", task.name());
            }
        }
    }

    /// The first task that ended with a failure, if any, without waiting.
    pub fn failed(&mut self) -> Option<String> {
        for task in &mut self.tasks {
            if task.is_finished()
                && let Some(TaskExit::Failed(reason)) = task.join(Duration::ZERO)
            {
                return Some(reason);
            }
        }
        None
    }

    /// Stops every task in reverse start order, waiting up to `timeout` for each. Returns the
    /// names of tasks that did not stop in time.
    pub fn shutdown(&mut self, timeout: Duration) -> Vec<String> {
        let mut stuck = Vec::new();
        while let Some(mut task) = self.tasks.pop() {
            if !task.is_finished() && task.control(TaskControl::Quit).is_err() {
                tracing::warn!("cannot tell {} to quit", task.name());
            }
            if task.join(timeout).is_none() {
                tracing::error!("{} did not stop within {timeout:?}", task.name());
                stuck.push(task.name().to_string());
            }
        }
        stuck
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_each_pause_mode_stops() {
        use PauseMode::*;
        for mode in [NonStop, Timers, Full] {
            assert!(mode.runs_timers(false) && mode.serves_sockets(false), "{mode:?} running");
        }
        assert_eq!([NonStop, Timers, Full].map(|m| m.runs_timers(true)), [true, false, false]);
        assert_eq!([NonStop, Timers, Full].map(|m| m.serves_sockets(true)), [true, true, false]);
    }

    #[test]
    fn an_event_scheduled_again_falls_due_once_at_the_soonest_time() {
        let start = Instant::now();
        let mut timers = Timers::new(vec![("periodic", Duration::from_secs(3600))], start);
        assert_eq!(timers.take_due(start), ["periodic"]);
        timers.rearm("periodic", start);
        // Five debounced requests for the periodic event, and one for another event.
        for n in 0..5 {
            timers.schedule("periodic", start + Duration::from_millis(200 + n));
        }
        timers.schedule("once", start + Duration::from_secs(1));
        assert_eq!(timers.next_due(), Some(start + Duration::from_millis(200)));
        assert_eq!(timers.take_due(start + Duration::from_millis(199)), Vec::<&str>::new());
        assert_eq!(timers.take_due(start + Duration::from_millis(204)), ["periodic"]);
        timers.rearm("periodic", start + Duration::from_millis(204));
        assert_eq!(timers.take_due(start + Duration::from_secs(1)), ["once"]);
        // The one-shot event is gone; the periodic one is due an interval after it ran.
        timers.rearm("once", start + Duration::from_secs(1));
        assert_eq!(timers.next_due(), Some(start + Duration::from_millis(204) + Duration::from_secs(3600)));
    }
}
