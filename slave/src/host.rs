//! The host: `piw-slave` runs `--builders` builders, each a separate slave to the master with
//! its own build directory (`BUILD_ROOT/builder-N`), and keeps them running, in the manner of
//! a pre-forking server.
//!
//! Each builder is this same program started again with the same arguments and the
//! environment variables [`BUILDER_ENV`] (its number) and [`PARENT_ENV`] (the host's pid). It
//! talks to the host over its standard output, a line at a time: `ready` when the master has
//! taken its hello, `beat` each time it talks to the master, `add` or `retire` when an operator
//! asked the master to change the host's builders (the monitor's `+` and `-`). Its log goes to
//! the shared standard error.
//!
//! | the host gets | it then |
//! |---|---|
//! | SIGTTIN, or `add` | starts one more builder |
//! | SIGTTOU, or `retire` | sends SIGUSR1 to the highest-numbered builder the master has taken, which leaves after its current build (one builder always stays; two signals in quick succession may count as one) |
//! | SIGTERM or SIGINT | passes it on to every builder (each kills its build at once) and exits 0 when they are gone |
//! | no `beat` from a builder for [`hung_after`] (the longer of `--busy-timeout` and `--master-timeout` plus `--upload-timeout`; 2 minutes more before its first) | kills it (SIGKILL) and starts another |
//! | a builder's exit, status 0 | the master told it to stop, or it retired: it is not replaced; the host exits 0 when none is left |
//! | status [`SETUP_FAILED`] | it cannot work (refused, unauthorised, a bad set-up): before any builder has worked, the host stops every builder and exits 1; after, as any other status |
//! | any other status, or a signal | starts another after a second; after a pause that doubles (to [`MOST_RESTART_DELAY`]) while builders keep failing before the master has taken their hello |
//!
//! A builder beyond the first is not started while free memory or free disk under the build
//! root is below `--min-free-memory` or `--min-free-disk`; the first is always started, and
//! declines work with the reason. Each builder sets its parent-death signal to SIGTERM: when
//! the host dies, even by SIGKILL, every builder kills its build and exits.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant};

use chrono::Utc;
use nix::sys::prctl;
use nix::sys::signal::{Signal, kill};
use nix::unistd::{Pid, getppid};
use piwheels_common::config::{HumanDuration, human_size};
use piwheels_common::hostinfo::host_stats;
use piwheels_common::keys::Role;
use piwheels_common::systemd::Notifier;

use crate::agent::{AgentError, Outcome};
use crate::config::SlaveConfig;

/// The environment variable that makes `piw-slave` a builder, holding its number.
pub const BUILDER_ENV: &str = "PIW_SLAVE_BUILDER";
/// The environment variable holding the host's pid, for a builder to check its parent.
pub const PARENT_ENV: &str = "PIW_SLAVE_PARENT";
/// A builder's exit status when it cannot work at all: starting it again would not help.
pub const SETUP_FAILED: u8 = 3;
/// The longest pause before a builder that keeps failing is started again.
pub const MOST_RESTART_DELAY: Duration = Duration::from_secs(30);

/// The first pause before a failed builder is started again.
const FIRST_RESTART_DELAY: Duration = Duration::from_secs(1);
/// A builder that worked this long before it failed had not failed because of how it starts.
const STEADY: Duration = Duration::from_secs(60);
/// How often the host looks at its builders when nothing happens.
const TICK: Duration = Duration::from_millis(200);
/// How often the host reads the free memory and disk while a builder waits for them.
const FLOOR_CHECK: Duration = Duration::from_secs(5);
/// How long builders told to stop may take before they are killed.
const STOP_GRACE: Duration = Duration::from_secs(30);
/// How much longer than [`hung_after`] a builder may take to say its first word (it asks its
/// interpreter, its tools and dpkg what it builds with).
const STARTING: Duration = Duration::from_secs(120);

/// Longer than a working builder is ever silent: a request waits `--master-timeout` for its
/// answer, then an upload may take `--upload-timeout`, a build `--busy-interval` or a sleep
/// `--sleep-interval` and half, before the next; hellos go every `--reconnect-interval`; the
/// master itself waits `--busy-timeout`. Plus [`HUNG_MARGIN`].
pub fn hung_after(config: &SlaveConfig) -> Duration {
    let between = config.upload_timeout.0.max(config.busy_interval.0).max(config.sleep_interval.0 * 3 / 2);
    let longest = config.busy_timeout.0.max(config.master_timeout.0 + between).max(config.reconnect_interval.0 * 2);
    longest + HUNG_MARGIN
}

/// What [`hung_after`] adds to the longest silence.
const HUNG_MARGIN: Duration = Duration::from_secs(5);

/// A builder's side of the link with its host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// The builder's number, from 1.
    pub number: u16,
}

impl Slot {
    /// The slot this process fills, when the host started it; an error when the variables
    /// are malformed or the host is gone already.
    pub fn from_env() -> Option<Result<Slot, String>> {
        let number = std::env::var_os(BUILDER_ENV)?;
        Some(Slot::adopt(&number, std::env::var_os(PARENT_ENV)))
    }

    fn adopt(number: &OsString, parent: Option<OsString>) -> Result<Slot, String> {
        let number: u16 = number.to_str().and_then(|n| n.parse().ok()).filter(|n| *n > 0).ok_or_else(|| format!("{BUILDER_ENV} must be a builder's number"))?;
        let parent: i32 = parent.as_deref().and_then(|p| p.to_str()).and_then(|p| p.parse().ok()).ok_or_else(|| format!("{PARENT_ENV} must be the host's pid"))?;
        // The host's death ends this builder; a host gone before the call is seen as a parent
        // that is no longer the host.
        prctl::set_pdeathsig(Signal::SIGTERM).map_err(|e| format!("cannot set the parent-death signal: {e}"))?;
        if getppid() != Pid::from_raw(parent) {
            return Err("the host piw-slave that started this builder is gone".into());
        }
        Ok(Slot { number })
    }

    /// The builder's build root under the host's.
    pub fn build_root(self, host_root: &Path) -> PathBuf {
        host_root.join(format!("builder-{}", self.number))
    }

    /// The builder's label, from the host's.
    pub fn label(self, host_label: &str) -> String {
        format!("{host_label}#{}", self.number)
    }

    /// Tells the host the master has taken this builder's hello.
    pub fn ready(self) {
        self.tell("ready");
    }

    /// Tells the host this builder is alive.
    pub fn beat(self) {
        self.tell("beat");
    }

    /// Passes an operator's change to the host's builders on.
    pub fn ask(self, add: bool) {
        self.tell(if add { "add" } else { "retire" });
    }

    fn tell(self, line: &str) {
        // A host that cannot hear has died, and its death signal ends this builder.
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}").and_then(|()| out.flush());
    }
}

/// What wakes the host.
enum Event {
    /// A signal.
    Signal(Signal),
    /// A line from a builder.
    Said { number: u16, line: String },
}

/// One running builder.
struct Running {
    child: Child,
    started: Instant,
    last_beat: Instant,
    /// It has said it is alive at least once.
    beaten: bool,
    /// The master took its hello.
    ready: bool,
    /// Told to leave after its build.
    retiring: bool,
    /// Killed as hung (its exit is then expected).
    killed: bool,
}

/// Runs the host until a signal stops it or the master has stopped every builder.
///
/// Call it from the main thread before any other thread exists: it blocks the signals it
/// reads, and the builders' parent-death signal is tied to the thread that starts them.
pub fn run(config: &SlaveConfig) -> Result<Outcome, AgentError> {
    config.check().map_err(AgentError::Setup)?;
    // Said once, here, rather than by every builder.
    for endpoint in [config.slave_endpoint(), config.file_endpoint()] {
        config.auth.security(&endpoint, Role::Slave).map_err(|e| AgentError::Setup(e.to_string()))?;
    }
    crate::agent::check_clock()?;
    let root = config.build_root();
    crate::agent::check_build_root(&root)?;
    let program = std::env::current_exe().map_err(|e| AgentError::Setup(format!("cannot find this program's own path: {e}")))?;
    let (events_tx, events) = mpsc::channel();
    watch_signals(events_tx.clone())?;
    let mut host = Host {
        config,
        program,
        args: std::env::args_os().skip(1).collect(),
        root,
        wanted: usize::from(config.builders),
        builders: BTreeMap::new(),
        events,
        events_tx,
        failures: 0,
        worked: false,
        restart_at: None,
        floor_checked: None,
        short_of: None,
        systemd: Notifier::from_env(),
    };
    tracing::info!("running {} builder(s) under {}", host.wanted, host.root.display());
    host.systemd.ready(&format!("{} builder(s)", host.wanted));
    let outcome = host.run();
    host.systemd.stopping("stopping");
    outcome
}

/// Reads the signals the host acts on, as events.
fn watch_signals(events: Sender<Event>) -> Result<(), AgentError> {
    crate::signals::watch(&[Signal::SIGTERM, Signal::SIGINT, Signal::SIGTTIN, Signal::SIGTTOU], move |signal| events.send(Event::Signal(signal)).is_ok())
}

struct Host<'a> {
    config: &'a SlaveConfig,
    program: PathBuf,
    args: Vec<OsString>,
    root: PathBuf,
    /// How many builders should run.
    wanted: usize,
    builders: BTreeMap<u16, Running>,
    events: Receiver<Event>,
    events_tx: Sender<Event>,
    /// Builders that failed one after another before the master took their hello.
    failures: u32,
    /// Whether any builder has had its hello taken by the master.
    worked: bool,
    /// When the next builder may start after a failure.
    restart_at: Option<Instant>,
    /// When the floors were last read, while a builder waits for them.
    floor_checked: Option<Instant>,
    /// Why a builder is not started now, to log changes only.
    short_of: Option<String>,
    systemd: Notifier,
}

impl Host<'_> {
    fn run(&mut self) -> Result<Outcome, AgentError> {
        loop {
            self.systemd.healthy();
            let first = match self.events.recv_timeout(TICK) {
                Ok(event) => Some(event),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return Err(AgentError::Internal("the host's events ended".into())),
            };
            // Everything said so far, before the exits are looked at: a builder's `ready` may
            // be waiting behind another's exit.
            for event in first.into_iter().chain(std::iter::from_fn(|| self.events.try_recv().ok()).collect::<Vec<_>>()) {
                if let Some(stopped) = self.on_event(event) {
                    return Ok(stopped);
                }
            }
            self.reap()?;
            if self.wanted == 0 && self.builders.is_empty() {
                return Ok(Outcome::Died { reason: "the master stopped every builder".into() });
            }
            self.kill_hung();
            self.retire_extra();
            self.start_missing();
        }
    }

    /// Acts on one event; the outcome when it stops the host.
    fn on_event(&mut self, event: Event) -> Option<Outcome> {
        match event {
            Event::Signal(signal @ (Signal::SIGTERM | Signal::SIGINT)) => {
                tracing::info!("{}: stopping every builder", signal.as_str());
                self.stop_all(Signal::SIGTERM);
                return Some(Outcome::Stopped { signal: signal.as_str().to_string() });
            }
            Event::Signal(Signal::SIGTTIN) => self.scale(true, "SIGTTIN"),
            Event::Signal(Signal::SIGTTOU) => self.scale(false, "SIGTTOU"),
            Event::Signal(_) => {}
            Event::Said { number, line } => match line.as_str() {
                "beat" => {
                    if let Some(builder) = self.builders.get_mut(&number) {
                        builder.last_beat = Instant::now();
                        builder.beaten = true;
                    }
                }
                "ready" => {
                    if let Some(builder) = self.builders.get_mut(&number) {
                        builder.ready = true;
                        self.worked = true;
                    }
                }
                "add" => self.scale(true, &format!("an operator, through builder {number}")),
                "retire" => self.scale(false, &format!("an operator, through builder {number}")),
                other => tracing::debug!("builder {number} said {other:?}"),
            },
        }
        None
    }

    /// One builder more or fewer; never fewer than one.
    fn scale(&mut self, add: bool, by: &str) {
        let before = self.wanted;
        self.wanted = if add { (self.wanted + 1).min(usize::from(SlaveConfig::MOST_BUILDERS)) } else { self.wanted.saturating_sub(1).max(1) };
        if self.wanted == before {
            tracing::info!("{by}: staying at {before} builder(s), the {}", if add { "most allowed" } else { "fewest" });
        } else {
            tracing::info!("{by}: {before} → {} builder(s)", self.wanted);
        }
    }

    /// Builders not retiring. One killed as hung counts until it has exited, so that its
    /// replacement takes its number and removes what it left in its directory.
    fn active(&self) -> usize {
        self.builders.values().filter(|b| !b.retiring).count()
    }

    /// Deals with the builders that exited.
    fn reap(&mut self) -> Result<(), AgentError> {
        let mut exited = Vec::new();
        for (number, builder) in &mut self.builders {
            match builder.child.try_wait() {
                Ok(Some(status)) => exited.push((*number, status)),
                Ok(None) => {}
                Err(e) => tracing::warn!("cannot check builder {number}: {e}"),
            }
        }
        for (number, status) in exited {
            let Some(builder) = self.builders.remove(&number) else { continue };
            self.exited(number, &builder, status)?;
        }
        Ok(())
    }

    fn exited(&mut self, number: u16, builder: &Running, status: ExitStatus) -> Result<(), AgentError> {
        let lived = builder.started.elapsed();
        if builder.retiring {
            tracing::info!("builder {number} retired ({status})");
            return Ok(());
        }
        match status.code() {
            Some(0) => {
                // The master said Die (an operator's kill, a revoked key): not replaced.
                self.wanted = self.wanted.saturating_sub(1);
                tracing::info!("builder {number} was told to stop; {} builder(s) wanted now", self.wanted);
            }
            // Until a builder has worked, a set-up that cannot work is the host's too: starting
            // more would fail the same way. After that, the cause may pass (no room at the
            // master, a full disk): the builder is started again, as after any failure.
            Some(code) if code == i32::from(SETUP_FAILED) && !builder.killed && !self.worked => {
                self.stop_all(Signal::SIGTERM);
                return Err(AgentError::Setup(format!("builder {number} cannot work (its error is above): stopping")));
            }
            _ => {
                // Killed from outside (the kernel's OOM killer, an operator, as hung), or after a
                // good run: it starts again at once. Failing of its own soon after its start,
                // it would likely fail the same way again: the pause doubles. Its replacement
                // removes what it left in its directory.
                let killed = builder.killed || matches!(status.signal(), Some(signal) if signal == Signal::SIGKILL as i32 || signal == Signal::SIGTERM as i32);
                self.failures = if killed || (builder.ready && lived >= STEADY) { 0 } else { self.failures + 1 };
                let delay = FIRST_RESTART_DELAY.saturating_mul(1 << self.failures.min(5)).min(MOST_RESTART_DELAY);
                let how = if builder.killed { "was killed as hung".to_string() } else { format!("ended ({status})") };
                tracing::warn!("builder {number} {how} after {}s: starting another in {}s", lived.as_secs(), delay.as_secs());
                self.restart_at = Some(Instant::now() + delay);
            }
        }
        Ok(())
    }

    /// Kills the builders silent longer than a working one can be.
    fn kill_hung(&mut self) {
        let silence = hung_after(self.config);
        for (number, builder) in &mut self.builders {
            // Before its first word it looks at its interpreter and tools, which may be slow.
            let limit = if builder.beaten { silence } else { silence + STARTING };
            if !builder.killed && builder.last_beat.elapsed() > limit {
                tracing::error!("builder {number} has been silent for more than {}: killing it", HumanDuration(limit));
                builder.killed = true;
                let _ = builder.child.kill();
            }
        }
    }

    /// Retires the builders beyond the wanted count: first those the master has not taken yet
    /// (they hold no build: SIGTERM), then the highest-numbered of the others, after their
    /// builds (SIGUSR1, which a builder not listening yet would die of).
    fn retire_extra(&mut self) {
        let working = |b: &Running| !b.retiring && !b.killed;
        while self.builders.values().filter(|b| working(b)).count() > self.wanted.max(1) {
            let pick = self.builders.iter_mut().rev().filter(|(_, b)| working(b)).min_by_key(|(_, b)| b.ready);
            let Some((number, builder)) = pick else { return };
            builder.retiring = true;
            let signal = if builder.ready { Signal::SIGUSR1 } else { Signal::SIGTERM };
            tracing::info!("retiring builder {number}{}", if builder.ready { " after its current build" } else { "" });
            if let Err(e) = kill(pid(&builder.child), signal) {
                tracing::warn!("cannot tell builder {number} to retire: {e}");
            }
        }
    }

    /// Starts builders up to the wanted count, as the floors and the restart pause allow.
    fn start_missing(&mut self) {
        while self.active() < self.wanted {
            let now = Instant::now();
            if self.restart_at.is_some_and(|at| now < at) {
                return;
            }
            if !self.builders.is_empty() {
                if self.floor_checked.is_some_and(|at| now.saturating_duration_since(at) < FLOOR_CHECK) {
                    return;
                }
                self.floor_checked = Some(now);
                let short = self.short_of();
                if short != self.short_of {
                    match &short {
                        Some(why) => tracing::warn!("not starting another builder: {why}"),
                        None => tracing::info!("memory and disk suffice again: starting builders"),
                    }
                    self.short_of.clone_from(&short);
                }
                if short.is_some() {
                    return;
                }
            }
            if let Err(e) = self.start() {
                tracing::error!("cannot start a builder: {e}");
                self.restart_at = Some(now + MOST_RESTART_DELAY);
                return;
            }
            self.floor_checked = None;
        }
    }

    /// Why another builder may not start now, if it may not.
    fn short_of(&self) -> Option<String> {
        let stats = host_stats(&self.root, Utc::now());
        if stats.mem_free < self.config.min_free_memory.0 {
            Some(format!("low memory: {} available, {} needed", human_size(stats.mem_free), human_size(self.config.min_free_memory.0)))
        } else if stats.disk_free < self.config.min_free_disk.0 {
            Some(format!("low disk: {} free under {}, {} needed", human_size(stats.disk_free), self.root.display(), human_size(self.config.min_free_disk.0)))
        } else {
            None
        }
    }

    fn start(&mut self) -> std::io::Result<()> {
        // Retiring builders keep their numbers until they leave.
        let Some(number) = (1..=SlaveConfig::MOST_BUILDERS).find(|n| !self.builders.contains_key(n)) else {
            return Err(std::io::Error::other("every builder number is taken, by builders still leaving"));
        };
        let mut child = Command::new(&self.program)
            .args(&self.args)
            .env(BUILDER_ENV, number.to_string())
            .env(PARENT_ENV, std::process::id().to_string())
            // The host speaks to systemd; its builders do not.
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().ok_or_else(|| std::io::Error::other("no pipe from the builder"))?;
        let events = self.events_tx.clone();
        std::thread::Builder::new().name(format!("builder-{number}")).spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if events.send(Event::Said { number, line }).is_err() {
                    return;
                }
            }
        })?;
        tracing::info!("started builder {number} (pid {})", child.id());
        let now = Instant::now();
        self.builders.insert(number, Running { child, started: now, last_beat: now, beaten: false, ready: false, retiring: false, killed: false });
        Ok(())
    }

    /// Sends `signal` to every builder and waits for them all; kills those that outstay
    /// [`STOP_GRACE`].
    fn stop_all(&mut self, signal: Signal) {
        for builder in self.builders.values() {
            let _ = kill(pid(&builder.child), signal);
        }
        let deadline = Instant::now() + STOP_GRACE;
        for (number, builder) in &mut self.builders {
            loop {
                match builder.child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() >= deadline => {
                        tracing::warn!("builder {number} did not stop within {}s: killing it", STOP_GRACE.as_secs());
                        let _ = builder.child.kill();
                        let _ = builder.child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
        self.builders.clear();
    }
}

fn pid(child: &Child) -> Pid {
    Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_builder_needs_its_number_and_its_host() {
        let error = Slot::adopt(&OsString::from("0"), Some(OsString::from("1"))).unwrap_err();
        assert!(error.contains(BUILDER_ENV), "{error}");
        let error = Slot::adopt(&OsString::from("2"), None).unwrap_err();
        assert!(error.contains(PARENT_ENV), "{error}");
        // This test's parent is not pid 1's child of that number.
        let error = Slot::adopt(&OsString::from("2"), Some(OsString::from("1"))).unwrap_err();
        assert!(error.contains("gone"), "{error}");
    }

    #[test]
    fn each_builder_has_its_own_directory_and_label() {
        let slot = Slot { number: 3 };
        assert_eq!(slot.build_root(Path::new("/var/tmp/piw")), Path::new("/var/tmp/piw/builder-3"));
        assert_eq!(slot.label("pi4-a"), "pi4-a#3");
    }
}
