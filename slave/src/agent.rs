//! The slave's side of the conversation with the master's slave driver (`SlaveRequest` /
//! `SlaveReply` over a REQ [`Client`]), the builds it runs on the master's behalf and the
//! uploads of their wheels; also the start-up checks and the stop signals.
//!
//! | the slave says | the master may answer | the slave then |
//! |---|---|---|
//! | `Hello` | `Ack { slave_id, index_url }` | says `Idle` |
//! | | `Refused { reason }` | exits with the reason, status 1 |
//! | `Idle { stats, declined }` | `Build { package, version, source }` | downloads and checks the source, starts the build, says `Busy` every `--busy-interval` until it ends, then `Built` |
//! | | `Sleep { paused }` | waits `--sleep-interval` (plus up to half as long), says `Idle` |
//! | | `AddBuilder` / `RetireBuilder` | tells its host (see [`crate::host`]), says `Idle` |
//! | `Busy { stats }` | `Cont` | goes on building |
//! | | `AddBuilder` / `RetireBuilder` | tells its host, goes on building |
//! | | `Done` | kills the build, removes it, says `Idle` |
//! | `Built(result)` / `Sent { filename }` | `Send { filename, transfer }` | uploads that wheel to the file juggler, says `Sent` |
//! | | `Done` | removes the build, says `Idle` |
//! | any | `Die { reason }` | kills any build, exits 0 |
//! | anything but `Hello` | `Refused { reason }` | the master forgot it (restarted, or dropped it): kills any build, says `Hello` again |
//! | any | nothing within `--master-timeout` | kills any build, closes the socket, says `Hello` on a new one |
//!
//! While the master does not answer `Hello` (it is down), the slave says it again on a fresh
//! connection every `--reconnect-interval`, logging only the first failure. SIGTERM or SIGINT
//! kill any build at once; the slave then says `Bye` (after the answer to a request in
//! flight, if any) and exits 0. SIGUSR1 (its host retiring it) lets a build finish and its
//! wheels go; the slave then says `Bye` and exits 0. Each request tells the host the builder
//! is alive. Anything else (an answer it cannot decode, or one the
//! conversation does not allow) is a protocol error: the slave is deliberately brittle, says
//! `Bye` with the error and exits 1, for its supervisor to start it afresh.

use piwheels_common::config::human_size;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use chrono::{TimeZone, Utc};
use nix::sys::signal::Signal;
use piwheels_common::hostinfo::{host_info, host_stats};
use piwheels_common::codec;
use piwheels_common::protocols::{BuildResult, FailureKind, HostStats, SlaveHello, SlaveId, SlaveReply, SlaveRequest, TransferId, Versions, WireError};
use piwheels_common::keys::Role;
use piwheels_common::transport::{Client, DEFAULT_MAX_MESSAGE, Security, TransportError};
use piwheels_common::upload::{UploadOptions, Uploader};

use crate::apt::AptIndex;
use crate::builder::{Build, BuildJob, Builder, BuilderOptions};
use crate::config::SlaveConfig;
use crate::host::Slot;
use crate::{environment, python};

/// How long the slave waits, after sending `Bye`, before closing: `Bye` is not answered, so
/// this only gives the message time to leave.
const BYE_WAIT: Duration = Duration::from_millis(200);

/// How long the file juggler may stay silent before the upload says hello again.
const UPLOAD_NUDGE: Duration = Duration::from_secs(5);

/// How long the builder may take to leave after a stop signal: a build is stopped at once and
/// killed with its process group [`crate::builder::KILL_GRACE`] later if it lingers; the
/// clean-up and the goodbye take moments; an upload in progress is what can take longer.
const STOP_GRACE: Duration = Duration::from_secs(15);

/// How often a wait for a stopping build checks that the build's thread is still alive.
const BUILD_CHECK: Duration = Duration::from_millis(200);

/// Builds made before this date would have bad file times (zip cannot store times before
/// 1980) and the clock is surely unset: a Raspberry Pi has no real-time clock.
const EARLIEST_CLOCK: (i32, u32, u32) = (2020, 6, 1);

/// How the slave ended without an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The master said `Die`.
    Died {
        /// Its reason.
        reason: String,
    },
    /// A signal asked the slave to stop.
    Stopped {
        /// The signal's name.
        signal: String,
    },
    /// Its host asked this builder to leave after its build.
    Retired,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Died { reason } => write!(f, "the master told this slave to stop: {reason}"),
            Outcome::Stopped { signal } => write!(f, "stopped by {signal}"),
            Outcome::Retired => write!(f, "retired by its host"),
        }
    }
}

/// Why the slave stopped with an error (exit status 1).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The master refused the slave's hello.
    #[error("the master refused this slave: {reason}")]
    Refused {
        /// The master's reason.
        reason: String,
    },
    /// The master said something the conversation does not allow, or that is not a reply.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The slave cannot start (bad options, no interpreter, unusable build root, ...).
    #[error("{0}")]
    Setup(String),
    /// The master does not accept this slave's key.
    #[error("{0}")]
    Unauthorized(String),
    /// Something inside the slave broke.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Refuses to run as root: builds run the packages' own code, and nothing a slave does needs
/// privileges.
pub fn refuse_root() -> Result<(), String> {
    if nix::unistd::getuid().is_root() || nix::unistd::geteuid().is_root() {
        return Err("piw-slave must not be run as root: builds run the packages' own code; run it as an unprivileged user".into());
    }
    Ok(())
}

/// Runs one builder of its host (see [`crate::host`]) until the master says `Die`, a signal
/// stops it, its host retires it, or an error.
///
/// Call it from the main thread before any other thread exists: it blocks SIGTERM, SIGINT
/// and SIGUSR1 so that they reach the slave through its signal thread only.
pub fn run(config: &SlaveConfig, slot: Slot) -> Result<Outcome, AgentError> {
    config.check().map_err(AgentError::Setup)?;
    // Before anything slow: a slave without a usable key should say so at once.
    let security = config.auth.security(&config.slave_endpoint(), Role::Slave).map_err(|e| AgentError::Setup(e.to_string()))?;
    let file_security = config.auth.security(&config.file_endpoint(), Role::Slave).map_err(|e| AgentError::Setup(e.to_string()))?;
    check_clock()?;
    let stop = Arc::new(OnceLock::new());
    let retire = Arc::new(AtomicBool::new(false));
    let (events_tx, events) = mpsc::channel();
    watch_signals(Arc::clone(&stop), Arc::clone(&retire), events_tx.clone())?;

    let build_root = slot.build_root(&config.build_root());
    check_build_root(&build_root)?;
    let platform = python::probe(&config.python).map_err(|e| AgentError::Setup(e.to_string()))?;
    tracing::info!(
        "building for Python {} ({}, {}) with {}, under {}",
        platform.py_version,
        platform.abi,
        platform.platform,
        config.python,
        build_root.display()
    );
    let apt = match AptIndex::load_system() {
        Ok(index) => Some(Arc::new(index)),
        Err(e) => {
            tracing::warn!("cannot read the Debian package database ({e}): wheels will be sent without their apt dependencies");
            None
        }
    };
    let mut options = BuilderOptions::new(&build_root).map_err(|e| AgentError::Setup(format!("cannot find this program's own path: {e}")))?;
    options.python = config.python.clone();
    options.command = config.build_command.clone();
    options.timeout = config.build_timeout.0;
    options.memory_limit = config.memory_limit.0;
    options.log_limit = config.log_limit.0;
    let mut host = host_info(config.label.as_deref());
    host.label = slot.label(&host.label);
    let environment = environment::probe(&config.python, &host);
    tracing::info!(
        "building with {}",
        environment.iter().map(|(name, value)| format!("{name} {value}")).collect::<Vec<_>>().join(", ")
    );
    let hello = SlaveHello {
        versions: Versions::current(),
        build_timeout: config.build_timeout.0,
        busy_timeout: config.busy_timeout.0,
        py_version: platform.py_version,
        abi: platform.abi,
        platform: platform.platform,
        memory_limit: config.memory_limit.0,
        host,
        environment,
    };
    let builder = Arc::new(Builder::new(options, apt).map_err(|e| AgentError::Setup(format!("cannot make an HTTP client for sources: {e:#}")))?);
    for dir in builder.remove_stale() {
        tracing::info!("removed {}, left by a slave that died", dir.display());
    }
    let ctx = zmq::Context::new();
    let mut agent = Agent {
        config,
        uploader: Uploader::new(&ctx, &config.file_endpoint(), &file_security),
        ctx,
        endpoint: config.slave_endpoint(),
        security,
        builder,
        hello,
        build_root,
        stop,
        retire,
        slot,
        events,
        events_tx,
        declined: None,
        paused: None,
    };
    agent.run()
}

/// Refuses a clock that is surely unset.
pub(crate) fn check_clock() -> Result<(), AgentError> {
    let (year, month, day) = EARLIEST_CLOCK;
    let earliest = Utc.with_ymd_and_hms(year, month, day, 0, 0, 0).single();
    let now = Utc::now();
    if earliest.is_some_and(|earliest| now < earliest) {
        return Err(AgentError::Setup(format!("the system clock is far in the past ({now}): set it (NTP) before building")));
    }
    Ok(())
}

/// Makes the build root if it is missing and checks that builds can be made in it.
pub(crate) fn check_build_root(root: &Path) -> Result<(), AgentError> {
    let problem = |e: std::io::Error| AgentError::Setup(format!("cannot make build directories under {}: {e}", root.display()));
    std::fs::create_dir_all(root).map_err(problem)?;
    tempfile::Builder::new().prefix("piw-check-").tempdir_in(root).map_err(problem)?;
    Ok(())
}

/// Blocks SIGTERM, SIGINT and SIGUSR1 in this thread (and so in every thread it starts later)
/// and starts the thread that reads them: it records the first stop signal in `stop` (which
/// also kills a running build), SIGUSR1 (the host retiring this builder) in `retire`, and
/// wakes the conversation.
fn watch_signals(stop: Arc<OnceLock<String>>, retire: Arc<AtomicBool>, events: Sender<Event>) -> Result<(), AgentError> {
    crate::signals::watch(&[Signal::SIGTERM, Signal::SIGINT, Signal::SIGUSR1], move |signal| {
        let event = if signal == Signal::SIGUSR1 {
            tracing::info!("SIGUSR1: leaving after the current build, if any");
            retire.store(true, Ordering::SeqCst);
            Event::Retire
        } else {
            tracing::info!("{}: stopping", signal.as_str());
            let _ = stop.set(signal.as_str().to_string());
            // A build is killed at once; an upload cannot be cut short, so the builder leaves
            // without it (its host may be gone).
            let _ = std::thread::Builder::new().name("stop-grace".into()).spawn(|| {
                std::thread::sleep(STOP_GRACE);
                tracing::warn!("still busy {}s after the stop signal: leaving now", STOP_GRACE.as_secs());
                std::process::exit(0);
            });
            Event::Stop
        };
        events.send(event).is_ok()
    })
}

/// What wakes the conversation up while it waits.
enum Event {
    /// The build ended (or was stopped).
    Finished(Box<Build>),
    /// A stop signal arrived.
    Stop,
    /// The host retires this builder: it leaves when it has no build.
    Retire,
}

/// How a conversation on one connection ended.
enum After {
    /// Say hello again on the same connection: the master forgot us.
    Hello,
    /// Say hello again on a new connection: the master went silent.
    Reconnect,
    /// Leave.
    Exit(Outcome),
}

/// An answer to a request, or the lack of one.
enum Answer {
    Reply(SlaveReply),
    /// No answer in time (already logged).
    Silent,
}

type Connection = Client<SlaveRequest, SlaveReply>;

/// A build running on its own thread.
struct Running {
    job: BuildJob,
    abort: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

struct Agent<'a> {
    config: &'a SlaveConfig,
    ctx: zmq::Context,
    endpoint: String,
    /// How the slave socket's connections authenticate.
    security: Security,
    /// Sends wheels to the file juggler, on a connection kept from one wheel to the next.
    uploader: Uploader,
    builder: Arc<Builder>,
    hello: SlaveHello,
    build_root: PathBuf,
    /// The stop signal's name, once one arrived.
    stop: Arc<OnceLock<String>>,
    /// Set when the host retires this builder.
    retire: Arc<AtomicBool>,
    /// Which of its host's builders this is.
    slot: Slot,
    events: Receiver<Event>,
    events_tx: Sender<Event>,
    /// Why the slave last declined work, to log changes only.
    declined: Option<String>,
    /// Whether the master's last `Sleep` said it is paused, to log changes only.
    paused: Option<bool>,
}

impl Agent<'_> {
    fn run(&mut self) -> Result<Outcome, AgentError> {
        let mut connection = None;
        loop {
            let Some((client, slave_id, index_url)) = self.say_hello(connection.take())? else {
                return Ok(self.stopped_outcome());
            };
            let after = self.converse(&client, slave_id, &index_url);
            if matches!(after, Ok(After::Hello | After::Reconnect)) {
                // The master restarted (it no longer knows this slave) or went silent: its file
                // socket's connection may be gone with it.
                self.uploader.disconnect();
            }
            match after {
                Ok(After::Hello) => connection = Some(client),
                Ok(After::Reconnect) => discard(client),
                // The master's word on a protocol error: a builder it forgot, for its host to
                // start afresh, not one an operator stopped.
                Ok(After::Exit(Outcome::Died { reason })) if reason.starts_with("protocol error") => {
                    return Err(AgentError::Protocol(format!("the master said: {reason}")));
                }
                Ok(After::Exit(outcome)) => {
                    if let Outcome::Stopped { .. } | Outcome::Retired = &outcome {
                        self.bye(&client, &outcome.to_string());
                    }
                    return Ok(outcome);
                }
                Err(e) => {
                    if matches!(e, AgentError::Protocol(_)) {
                        self.bye(&client, &e.to_string());
                    }
                    return Err(e);
                }
            }
        }
    }

    fn stopping(&self) -> bool {
        self.stop.get().is_some()
    }

    /// Stopped, or retired by the host: either way it takes no more work.
    fn leaving(&self) -> bool {
        self.stopping() || self.retire.load(Ordering::SeqCst)
    }

    fn stopped_outcome(&self) -> Outcome {
        match self.stop.get() {
            Some(signal) => Outcome::Stopped { signal: signal.clone() },
            None if self.retire.load(Ordering::SeqCst) => Outcome::Retired,
            None => Outcome::Stopped { signal: "a signal".into() },
        }
    }

    fn connect(&self) -> Result<Connection, AgentError> {
        Client::connect_secured(&self.ctx, &self.endpoint, Some(DEFAULT_MAX_MESSAGE), &self.security)
            .map_err(|e| AgentError::Setup(format!("cannot connect to the master: {e}")))
    }

    /// Says hello until the master answers; None when a signal stops the slave first.
    fn say_hello(&mut self, connection: Option<Connection>) -> Result<Option<(Connection, SlaveId, String)>, AgentError> {
        let mut client = match connection {
            Some(client) => client,
            None => self.connect()?,
        };
        let interval = self.config.reconnect_interval;
        let mut failures = 0u32;
        loop {
            if self.leaving() {
                return Ok(None);
            }
            // Waiting for the master is the slave working as it should.
            self.slot.beat();
            match client.request(&SlaveRequest::Hello(self.hello.clone()), interval.0) {
                Ok(SlaveReply::Ack { slave_id, index_url }) => {
                    tracing::info!("connected to the master at {} as slave {slave_id}; building from {index_url}", self.endpoint);
                    self.slot.ready();
                    return Ok(Some((client, slave_id, index_url)));
                }
                Ok(SlaveReply::Error(error)) => return Err(AgentError::Refused { reason: error.message }),
                Ok(other) => return Err(AgentError::Protocol(format!("the master answered Hello with {}", reply_name(&other)))),
                Err(TransportError::Protocol(e)) => return Err(AgentError::Protocol(format!("the master's answer to Hello is not a slave reply: {e}"))),
                Err(e @ TransportError::Unauthorized { .. }) => return Err(AgentError::Unauthorized(e.to_string())),
                Err(_) if self.leaving() => {
                    discard(client);
                    return Ok(None);
                }
                Err(e) => {
                    failures += 1;
                    if failures == 1 {
                        tracing::warn!("no answer from the master at {} ({e}); saying hello again every {interval} until it answers", self.endpoint);
                    } else {
                        tracing::debug!("still no answer from the master at {} ({e}), attempt {failures}", self.endpoint);
                    }
                    discard(client);
                    // A timeout has waited already; anything else may fail at once.
                    if !matches!(e, TransportError::Timeout { .. } | TransportError::Busy { .. }) {
                        self.pause(interval.0);
                    }
                    client = self.connect()?;
                }
            }
        }
    }

    /// Sends a request and waits `--master-timeout` for the answer.
    fn request(&self, client: &Connection, request: &SlaveRequest) -> Result<Answer, AgentError> {
        tracing::debug!("→ {}", request.name());
        self.slot.beat();
        match client.request(request, self.config.master_timeout.0) {
            Ok(reply) => {
                tracing::debug!("← {}", reply_name(&reply));
                Ok(Answer::Reply(reply))
            }
            Err(TransportError::Protocol(e)) => {
                Err(AgentError::Protocol(format!("the master's answer to {} is not a slave reply: {e}", request.name())))
            }
            Err(e @ TransportError::Unauthorized { .. }) => Err(AgentError::Unauthorized(e.to_string())),
            Err(e) => {
                tracing::warn!("no answer from the master to {} within {} ({e}): connecting again", request.name(), self.config.master_timeout);
                Ok(Answer::Silent)
            }
        }
    }

    /// Asks for work until the connection ends.
    fn converse(&mut self, client: &Connection, slave_id: SlaveId, index_url: &str) -> Result<After, AgentError> {
        loop {
            if self.leaving() {
                return Ok(After::Exit(self.stopped_outcome()));
            }
            let stats = self.stats();
            let declined = self.decline(&stats);
            match self.request(client, &SlaveRequest::Idle { stats, declined })? {
                Answer::Silent => return Ok(After::Reconnect),
                Answer::Reply(SlaveReply::Build { package, version, source }) => {
                    self.paused = None;
                    let job = BuildJob { package, version, source, index_url: index_url.to_string() };
                    if let Some(after) = self.build(client, slave_id, job)? {
                        return Ok(after);
                    }
                }
                Answer::Reply(SlaveReply::Sleep { paused }) => {
                    if self.paused != Some(paused) {
                        tracing::info!("{}: asking again every {} or so", if paused { "the master is paused" } else { "no work for now" }, self.config.sleep_interval);
                        self.paused = Some(paused);
                    }
                    let wait = self.config.sleep_interval.0;
                    self.pause(wait + jitter(wait / 2));
                }
                Answer::Reply(SlaveReply::Die { reason }) => return Ok(After::Exit(Outcome::Died { reason })),
                // Passed on to the host; then asks again.
                Answer::Reply(SlaveReply::AddBuilder) => self.slot.ask(true),
                Answer::Reply(SlaveReply::RetireBuilder) => self.slot.ask(false),
                Answer::Reply(SlaveReply::Error(WireError { message: reason, .. })) => {
                    tracing::info!("the master does not know this slave any more ({reason}): saying hello again");
                    return Ok(After::Hello);
                }
                Answer::Reply(other) => return Err(AgentError::Protocol(format!("the master answered Idle with {}", reply_name(&other)))),
            }
        }
    }

    /// Runs one build to the end of its conversation; None to go idle again.
    fn build(&mut self, client: &Connection, slave_id: SlaveId, job: BuildJob) -> Result<Option<After>, AgentError> {
        tracing::info!("slave {slave_id}: building {} {}", job.package, job.version);
        let running = self.start(job)?;
        let build = loop {
            match self.next_event(self.config.busy_interval.0) {
                Some(Event::Finished(build)) => break build,
                Some(Event::Stop) => {
                    self.abandon(running)?;
                    return Ok(Some(After::Exit(self.stopped_outcome())));
                }
                // The build goes on; the builder leaves after it.
                Some(Event::Retire) => {}
                None => {
                    if running.thread.is_finished() {
                        // The thread ended without reporting: look once more, it may have
                        // reported just now.
                        match self.events.try_recv() {
                            Ok(Event::Finished(build)) => break build,
                            _ => return Err(AgentError::Internal("the build thread ended without a result".into())),
                        }
                    }
                    let stats = self.stats();
                    let answer = self.request(client, &SlaveRequest::Busy { stats })?;
                    match answer {
                        Answer::Reply(SlaveReply::Cont) => {}
                        Answer::Reply(SlaveReply::AddBuilder) => self.slot.ask(true),
                        Answer::Reply(SlaveReply::RetireBuilder) => self.slot.ask(false),
                        Answer::Reply(SlaveReply::Done) => {
                            tracing::info!("the master abandoned the build of {} {}", running.job.package, running.job.version);
                            self.abandon(running)?;
                            return Ok(None);
                        }
                        Answer::Reply(SlaveReply::Die { reason }) => {
                            self.abandon(running)?;
                            return Ok(Some(After::Exit(Outcome::Died { reason })));
                        }
                        Answer::Reply(SlaveReply::Error(WireError { message: reason, .. })) => {
                            tracing::info!("the master does not know this slave any more ({reason}): abandoning the build and saying hello again");
                            self.abandon(running)?;
                            return Ok(Some(After::Hello));
                        }
                        Answer::Reply(other) => {
                            self.abandon(running)?;
                            return Err(AgentError::Protocol(format!("the master answered Busy with {}", reply_name(&other))));
                        }
                        Answer::Silent => {
                            self.abandon(running)?;
                            return Ok(Some(After::Reconnect));
                        }
                    }
                }
            }
        };
        let _ = running.thread.join();
        if self.stopping() {
            return Ok(Some(After::Exit(self.stopped_outcome())));
        }
        self.report(client, *build)
    }

    /// Starts the build thread.
    fn start(&self, job: BuildJob) -> Result<Running, AgentError> {
        let abort = Arc::new(AtomicBool::new(false));
        let builder = Arc::clone(&self.builder);
        let stopping = Arc::clone(&self.stop);
        let events = self.events_tx.clone();
        let thread_job = job.clone();
        let thread_abort = Arc::clone(&abort);
        // The thread waits for the build and ends only when it has. Its lines carry the
        // builder's span.
        let span = tracing::Span::current();
        let thread = std::thread::Builder::new()
            .name("builder".into())
            .spawn(move || {
                let _span = span.entered();
                let stop = || thread_abort.load(Ordering::SeqCst) || stopping.get().is_some();
                let build = builder.build(&thread_job, &stop);
                // When nobody listens any more, dropping the build removes it.
                let _ = events.send(Event::Finished(Box::new(build)));
            })
            .map_err(|e| AgentError::Internal(format!("cannot start a build thread: {e}")))?;
        Ok(Running { job, abort, thread })
    }

    /// Kills a running build and waits until it is gone and removed.
    fn abandon(&self, running: Running) -> Result<(), AgentError> {
        tracing::info!("killing the build of {} {}", running.job.package, running.job.version);
        running.abort.store(true, Ordering::SeqCst);
        loop {
            match self.events.recv_timeout(BUILD_CHECK) {
                Ok(Event::Finished(build)) => {
                    let _ = running.thread.join();
                    if let Err(e) = build.clean_up() {
                        tracing::warn!("cannot remove the abandoned build's directory: {e}");
                    }
                    return Ok(());
                }
                Ok(Event::Stop | Event::Retire) => {}
                Err(RecvTimeoutError::Timeout) if !running.thread.is_finished() => {}
                Err(_) => return Err(AgentError::Internal("the build thread ended without a result".into())),
            }
        }
    }

    /// Reports a finished build and sends the wheels the master asks for.
    fn report(&mut self, client: &Connection, build: Build) -> Result<Option<After>, AgentError> {
        let mut request = SlaveRequest::Built(fit(build.result.clone()));
        loop {
            let answer = self.request(client, &request)?;
            match answer {
                Answer::Silent => return Ok(Some(After::Reconnect)),
                Answer::Reply(SlaveReply::Send { filename, transfer }) => {
                    let Some(path) = build.wheel(&filename) else {
                        return Err(AgentError::Protocol(format!("the master asked for {filename}, which this build did not make")));
                    };
                    self.send_file(path, &filename, transfer);
                    if self.stopping() {
                        return Ok(Some(After::Exit(self.stopped_outcome())));
                    }
                    request = SlaveRequest::Sent { filename };
                }
                Answer::Reply(SlaveReply::Done) => {
                    if let Err(e) = build.clean_up() {
                        tracing::warn!("cannot remove the build's directory: {e}");
                    }
                    return Ok(None);
                }
                Answer::Reply(SlaveReply::Die { reason }) => return Ok(Some(After::Exit(Outcome::Died { reason }))),
                Answer::Reply(SlaveReply::Error(WireError { message: reason, .. })) => {
                    tracing::info!("the master does not know this slave any more ({reason}): dropping the build and saying hello again");
                    return Ok(Some(After::Hello));
                }
                Answer::Reply(other) => {
                    return Err(AgentError::Protocol(format!("the master answered {} with {}", request.name(), reply_name(&other))));
                }
            }
        }
    }

    /// Uploads one wheel. A failure is logged only: the master, told the file was sent,
    /// finds it incomplete and asks again (or gives up).
    fn send_file(&mut self, path: &Path, filename: &str, transfer: TransferId) {
        tracing::info!("sending {filename} to the master at {}", self.uploader.endpoint());
        let options = UploadOptions { nudge_after: UPLOAD_NUDGE, overall_timeout: self.config.upload_timeout.0, stop_after_bytes: None };
        match self.uploader.upload(transfer, path, options) {
            Ok(report) => tracing::info!("sent {filename}: {} bytes in {:.1}s", report.bytes_sent, report.elapsed.as_secs_f64()),
            Err(e) => tracing::warn!("sending {filename} failed: {e}"),
        }
    }

    /// Says goodbye; the master does not answer.
    fn bye(&self, client: &Connection, reason: &str) {
        match client.request(&SlaveRequest::Bye { reason: reason.to_string() }, BYE_WAIT) {
            Err(TransportError::Timeout { .. }) => tracing::debug!("said goodbye: {reason}"),
            Err(e) => tracing::debug!("cannot say goodbye ({e})"),
            Ok(reply) => tracing::debug!("the master answered Bye with {}", reply_name(&reply)),
        }
    }

    /// Waits up to `timeout` for the next event.
    fn next_event(&self, timeout: Duration) -> Option<Event> {
        self.events.recv_timeout(timeout).ok()
    }

    /// Waits `duration`, or less if a stop signal arrives.
    fn pause(&self, duration: Duration) {
        let until = Instant::now() + duration;
        while !self.leaving() {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            match self.events.recv_timeout(left) {
                Ok(Event::Stop | Event::Retire) | Err(_) => return,
                // A build that finished after it was given up; dropping it removes it.
                Ok(Event::Finished(_)) => {}
            }
        }
    }

    fn stats(&self) -> HostStats {
        host_stats(&self.build_root, Utc::now())
    }

    /// Why the slave cannot take work now, if it cannot.
    fn decline(&mut self, stats: &HostStats) -> Option<String> {
        let reason = if stats.disk_free < self.config.min_free_disk.0 {
            Some(format!(
                "low disk: {} free under {}, {} needed",
                human_size(stats.disk_free),
                self.build_root.display(),
                human_size(self.config.min_free_disk.0)
            ))
        } else if stats.mem_free < self.config.min_free_memory.0 {
            Some(format!("low memory: {} available, {} needed", human_size(stats.mem_free), human_size(self.config.min_free_memory.0)))
        } else {
            None
        };
        if reason != self.declined {
            match &reason {
                Some(reason) => tracing::warn!("declining work: {reason}"),
                None if self.declined.is_some() => tracing::info!("taking work again"),
                None => {}
            }
            self.declined.clone_from(&reason);
        }
        reason
    }
}

/// A build result that fits in one message to the master: the log is cut further if need be
/// and, if the wheels' descriptions alone are too big (a METADATA of megabytes), the build is
/// reported as the builder's failure without them.
fn fit(mut result: BuildResult) -> BuildResult {
    let size = |result: &BuildResult| codec::encode(&SlaveRequest::Built(result.clone())).map_or(usize::MAX, |frame| frame.len());
    let excess = size(&result).saturating_sub(DEFAULT_MAX_MESSAGE);
    if excess == 0 {
        return result;
    }
    let note = "[piw-slave] the log was cut to fit in a message to the master\n";
    let mut cut = (excess + note.len()).min(result.output.len());
    while !result.output.is_char_boundary(cut) {
        cut += 1;
    }
    result.output = format!("{note}{}", &result.output[cut..]);
    if size(&result) > DEFAULT_MAX_MESSAGE {
        let files: Vec<String> = result.files.iter().map(|file| file.filename.clone()).collect();
        result.files.clear();
        result.success = false;
        result.failure = Some(FailureKind::Builder);
        result.output.push_str(&format!("[piw-slave] the descriptions of {} are too big to send to the master\n", files.join(", ")));
    }
    result
}

/// Closes a connection at once, dropping what it still holds (a hello nobody took).
fn discard(client: Connection) {
    let _ = client.socket().set_linger(0);
}

/// Up to `most`, chosen from the clock's nanoseconds: enough to keep slaves out of step.
fn jitter(most: Duration) -> Duration {
    let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |since| u64::from(since.subsec_nanos()));
    let most = u64::try_from(most.as_millis()).unwrap_or(u64::MAX);
    if most == 0 { Duration::ZERO } else { Duration::from_millis(nanos % most) }
}


fn reply_name(reply: &SlaveReply) -> String {
    match reply {
        SlaveReply::Ack { slave_id, .. } => format!("Ack (slave {slave_id})"),
        SlaveReply::Error(error) => format!("Error ({})", error.message),
        SlaveReply::Sleep { paused } => format!("Sleep (paused: {paused})"),
        SlaveReply::Build { package, version, .. } => format!("Build ({package} {version})"),
        SlaveReply::Cont => "Cont".into(),
        SlaveReply::Send { filename, transfer } => format!("Send ({filename}, transfer {transfer})"),
        SlaveReply::Done => "Done".into(),
        SlaveReply::Die { reason } => format!("Die ({reason})"),
        SlaveReply::AddBuilder => "AddBuilder".into(),
        SlaveReply::RetireBuilder => "RetireBuilder".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(output: String, metadata: usize) -> BuildResult {
        let mut file = piwheels_testsupport::data::wheel_file("demo-1.0-py3-none-any.whl", b"wheel");
        file.metadata = vec![b'x'; metadata].into();
        BuildResult {
            success: true,
            failure: None,
            exit_status: Some(0),
            duration: Duration::from_secs(1),
            cpu_time: Duration::from_secs(1),
            peak_memory: 1,
            output,
            files: vec![file],
        }
    }

    #[test]
    fn a_result_that_fits_is_sent_as_it_is() {
        let small = result("log\n".into(), 100);
        assert_eq!(fit(small.clone()), small);
    }

    #[test]
    fn a_long_log_is_cut_to_fit_a_message() {
        let log: String = (0..2_000_000).map(|n| format!("{n}\n")).collect::<String>() + "the end\n";
        let fitted = fit(result(log, 10 << 20));
        assert!(fitted.success);
        assert!(fitted.output.starts_with("[piw-slave] the log was cut"), "{}", &fitted.output[..100]);
        assert!(fitted.output.ends_with("the end\n"));
        assert!(codec::encode(&SlaveRequest::Built(fitted)).expect("encode").len() <= DEFAULT_MAX_MESSAGE);
    }

    #[test]
    fn wheels_whose_descriptions_cannot_fit_fail_the_build() {
        let fitted = fit(result("log\n".into(), 17 << 20));
        assert!(!fitted.success && fitted.files.is_empty());
        assert_eq!(fitted.failure, Some(FailureKind::Builder));
        assert!(fitted.output.contains("demo-1.0-py3-none-any.whl are too big"), "{}", fitted.output);
    }

    #[test]
    fn jitter_stays_within_its_bound() {
        for _ in 0..100 {
            assert!(jitter(Duration::from_millis(10)) < Duration::from_millis(10));
        }
        assert_eq!(jitter(Duration::ZERO), Duration::ZERO);
    }
}
