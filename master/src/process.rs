//! The master process: takes its locks, binds the control and status sockets, starts the
//! tasks in order, relays their status to monitors, obeys control requests and signals, and
//! stops the tasks in reverse order.
//!
//! Sockets: binds the control socket (ROUTER, [`ControlRequest`] → [`ControlReply`]), the
//! external status socket (PUB, [`StatusEvent`]) and the internal status socket
//! [`wiring::STATUS`] (PULL); connects to the slave driver's command socket
//! [`wiring::SLAVE_COMMANDS`] (REQ, [`SlaveCommand`] → [`SlaveCommandReply`]).

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use ed25519_dalek::SigningKey;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use piwheels_common::clock::SystemClock;
use piwheels_common::hostinfo;
use piwheels_common::keys::{Endpoint, needs_keys};
use piwheels_common::systemd::Notifier;
use piwheels_common::protocols::{ControlReply, ControlRequest, FarmSnapshot, NoticeLevel, SlaveAction, SlaveTarget, StatusEvent, TaskControl, Versions, WireError};
use piwheels_common::provenance;
use piwheels_common::task::{self, Runtime, Supervisor};
use piwheels_common::transport::{self, Client, Peer, Receiver, Sender, Server};

use crate::calls::tasks::{SlaveCommand, SlaveCommandReply};
use crate::architect::{self, Architect, QueueConfig};
use crate::big_brother::{self, BigBrother, StatsConfig};
use crate::cloud_gazer::{self, CloudGazer, FollowerConfig};
use crate::source_pinner::{self, PinnerConfig, SourcePinner};
use crate::triage::{self, Triage, TriageConfig};
use crate::config::MasterConfig;
use crate::consistency;
use crate::metrics::{MetricsServer, metrics};
use crate::db::{Database, DbError};
use crate::file_juggler::{self, FileJuggler, JugglerConfig};
use crate::gatekeeper::{self, Auth, Gate, Gatekeeper};
use crate::index::writer::PageOptions;
use crate::index::{self, IndexConfig, Scribe};
use crate::web_access::AccessFeed;
use crate::web_server::WebServer;
use crate::lumberjack::{self, Lumberjack};
use crate::mr_chase::{self, ChaseConfig, MrChase};
use crate::oracle::{self, Oracle};
use crate::pidlock::PidLock;
use crate::seraph::{self, Seraph};
use crate::signing;
use crate::slave_driver::{self, DriverConfig, SlaveDriver, SlaveLimits};
use crate::wiring::{self, TaskName};

/// Largest control request accepted: they are small, so anything big is hostile.
const CONTROL_MAX_MESSAGE: usize = 64 << 10;
/// How long the slave driver may take to apply an operator's command.
const SLAVE_COMMAND_TIMEOUT: Duration = Duration::from_secs(1);
/// How many clients the control socket remembers as having said hello.
const MAX_CLIENTS: usize = 1024;
/// Longest client name (a control Hello's) the master logs.
const MAX_CLIENT_NAME: usize = 100;
/// Tries at the database check at start when the server ends the connection meanwhile.
const START_ATTEMPTS: u32 = 5;

/// Why the master stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum Stopped {
    /// Asked to (QUIT or a signal): exit 0.
    Requested(String),
    /// A task failed for good: exit non-zero.
    Failed(String),
}

/// Runs the master until it is asked to stop or a task fails for good.
pub fn run(cfg: &MasterConfig) -> anyhow::Result<Stopped> {
    let _lock = PidLock::acquire(&cfg.state_dir, &cfg.output_path)?;
    let signing_key = signing_key(cfg)?;
    check_database(cfg)?;
    check_consistency(cfg, &signing_key);
    // Block the stop signals before any thread exists, so every thread inherits the mask and
    // the signals arrive only through the signalfd polled below.
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGTERM);
    mask.add(Signal::SIGINT);
    mask.thread_block().context("cannot block signals")?;
    let signals = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC).context("cannot create signalfd")?;

    let auth = authentication(cfg)?;
    let zmq = zmq::Context::new();
    let status_in = wiring::STATUS.pull(&zmq, wiring::TaskName::Main)?;
    let rt = Runtime::new(zmq.clone(), Arc::new(SystemClock), wiring::STATUS.address());
    let mut tasks = Supervisor::new();
    // The ZAP handler before any socket it guards, and it stops after every one of them has
    // closed (its own supervisor): libzmq admits every key while no handler is bound.
    let mut guard = Supervisor::new();
    if let Some(ring) = auth.keyring() {
        let zap = Gatekeeper::bind(&zmq)?;
        let ring = Arc::clone(ring);
        guard.add(task::spawn(&rt, "gatekeeper", move |_| Ok(zap), move |_| Ok(Gatekeeper::new(Arc::clone(&ring))))?);
    }
    let status_out = Sender::<StatusEvent>::publish(&zmq, &cfg.status_queue, &auth.security(Endpoint::Status, &cfg.status_queue))?;
    let control_security = auth.security(Endpoint::Control, &cfg.control_queue);
    let control = Server::<ControlRequest, ControlReply>::bind_external(
        &zmq,
        &cfg.control_queue,
        CONTROL_MAX_MESSAGE,
        Some(piwheels_common::transport::REQUESTS_PER_PEER),
        &control_security,
    )?;
    let slave_commands = wiring::SLAVE_COMMANDS.client(&zmq, wiring::TaskName::Main)?;
    let mut master = Master {
        gate: auth.gate(Endpoint::Control, &cfg.control_queue),
        guard,
        farm: FarmSnapshot { started: chrono::Utc::now(), host: hostinfo::host_info(None), ..FarmSnapshot::default() },
        clients: HashMap::new(),
        bad_requests: 0,
        systemd: Notifier::from_env(),
        metrics: cfg.metrics_listen.is_some(),
    };
    let _metrics = match cfg.metrics_listen {
        Some(listen) => Some(MetricsServer::start(listen).with_context(|| format!("cannot answer Prometheus on {listen}"))?),
        None => None,
    };
    let mut http = None;
    let outcome = start_tasks(&rt, cfg, &auth, &signing_key, &mut tasks).and_then(|()| {
        if let Some(listen) = cfg.http_listen {
            // Its downloads are counted like those of a web server whose log piw-logger reads.
            let feed = AccessFeed::start(zmq.clone(), cfg.logger_queue.clone(), auth.own_client(&cfg.logger_queue));
            let server = WebServer::start_with_access_log(cfg.output_path.clone(), listen, feed.hook())
                .with_context(|| format!("cannot serve the index on {listen}"))?;
            tracing::info!("serving {} on http://{}/", cfg.output_path.display(), server.local_addr());
            http = Some((server, feed));
        }
        master.systemd.ready(&format!("running; output in {}", cfg.output_path.display()));
        tracing::info!(
            "piw-master {} running: control on {}, status on {}, output in {}",
            piwheels_common::SOFTWARE_VERSION,
            cfg.control_queue,
            cfg.status_queue,
            cfg.output_path.display()
        );
        master.main_loop(&control, &status_in, &status_out, &slave_commands, &signals, &mut tasks)
    });

    match &outcome {
        Ok(Stopped::Requested(why)) | Ok(Stopped::Failed(why)) => tracing::info!("shutting down: {why}"),
        Err(e) => tracing::error!("shutting down: {e:#}"),
    }
    master.systemd.stopping("shutting down");
    if let Some((server, feed)) = http {
        server.stop();
        feed.stop();
    }
    let mut stuck = tasks.shutdown(cfg.stop_timeout.0);
    // Relay the tasks' last words, then close every socket before the context goes.
    while let Ok(Some(event)) = status_in.recv_timeout(Duration::ZERO) {
        let _ = status_out.send(&event, Duration::ZERO);
    }
    let endpoints = [cfg.control_queue.clone(), cfg.status_queue.clone(), cfg.import_queue.clone(), cfg.logger_queue.clone()];
    drop((control, status_in, status_out, slave_commands));
    stuck.extend(master.guard.shutdown(cfg.stop_timeout.0));
    for endpoint in &endpoints {
        remove_ipc_file(endpoint);
    }
    if !stuck.is_empty() {
        // A task that will not stop holds sockets, and dropping the context would wait for
        // them forever: leave without it.
        std::mem::forget(zmq);
        return Ok(Stopped::Failed(format!("tasks did not stop: {}", stuck.join(", "))));
    }
    outcome
}

/// Fails fast, with the reason, when the database cannot serve the master: unreachable, the
/// wrong schema version, or a superuser role.
/// A connection the server ends meanwhile (an administrator, a restart) is tried again a few
/// times.
fn check_database(cfg: &MasterConfig) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let mut attempt = 1;
    loop {
        let superuser = runtime.block_on(async {
            let mut db = Database::connect(&cfg.dsn, cfg.db_timeout.0).await?;
            Ok::<bool, DbError>(db.is_superuser().await?)
        });
        match superuser {
            Ok(false) => return Ok(()),
            Ok(true) => {
                anyhow::bail!("the database role in --dsn is a superuser; the master must connect as an ordinary role (see piw-initdb --user)")
            }
            Err(e) if e.is_connection_ended_by_server() && attempt < START_ATTEMPTS => {
                tracing::warn!("the database ended the connection while the master checked it ({e}); trying again");
                attempt += 1;
                std::thread::sleep(Duration::from_secs(1));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Runs the consistency check before any task starts, repairing everything it safely can:
/// nothing is in flight, so a file no build records is one whose build was lost. A check that
/// cannot run is logged and the master starts anyway: serving matters more.
fn check_consistency(cfg: &MasterConfig, signing_key: &SigningKey) {
    let check = consistency::Check {
        output_path: cfg.output_path.clone(),
        staging_dir: cfg.state_dir.join("staging"),
        abandon_after: cfg.abandon_after.0,
        min_age: Duration::ZERO,
        repair: true,
        force: false,
        signing_key: Some(signing_key.clone()),
    };
    match consistency::run_blocking(&cfg.dsn, cfg.db_timeout.0, &check) {
        Ok(findings) if findings.is_clean() => tracing::info!("consistency check at start: {findings}"),
        Ok(findings) => tracing::warn!("consistency check at start:\n{findings}"),
        Err(e) => tracing::error!("the consistency check at start could not run: {e:#}"),
    }
}

/// The key that signs the provenance of published files, made on the first start.
fn signing_key(cfg: &MasterConfig) -> anyhow::Result<SigningKey> {
    let (key, made) = signing::load_or_create(&cfg.state_dir)?;
    let path = cfg.state_dir.join(signing::SIGNING_KEY_FILE);
    let id = provenance::key_id(&key.verifying_key());
    if made {
        tracing::warn!("made the signing key {} (key id {id}); back it up with master.key: statements signed by another key do not verify against the public key users have", path.display());
    } else {
        tracing::info!("signing provenance with {} (key id {id})", path.display());
    }
    Ok(key)
}

/// How the master authenticates its tcp sockets: its keys from the state directory, or, with
/// --no-auth, not at all, which is said at every start and refused on addresses other hosts
/// can reach unless --allow-no-auth-on-network.
fn authentication(cfg: &MasterConfig) -> anyhow::Result<Auth> {
    let tcp: Vec<&String> = [&cfg.slave_queue, &cfg.file_queue, &cfg.control_queue, &cfg.status_queue, &cfg.import_queue, &cfg.logger_queue]
        .into_iter()
        .filter(|address| needs_keys(address))
        .collect();
    if !cfg.no_auth {
        let auth = Auth::load(&cfg.state_dir)?;
        if let (Some(key), Some(ring)) = (auth.public_key(), auth.keyring()) {
            tracing::info!(
                "authentication on: {} keys in force in {}; the master's public key (clients' --master-key) is {key}",
                ring.in_force(),
                ring.path().display()
            );
        }
        return Ok(auth);
    }
    let reachable: Vec<&str> = tcp.iter().filter(|address| !gatekeeper::is_loopback(address)).map(|a| a.as_str()).collect();
    if !reachable.is_empty() && !cfg.allow_no_auth_on_network {
        anyhow::bail!(
            "--no-auth would let anyone who reaches {} build, upload and publish wheels or command the master; \
             listen on loopback addresses only, run with keys (see docs/security.md), or add --allow-no-auth-on-network",
            reachable.join(", ")
        );
    }
    tracing::warn!(
        "AUTHENTICATION IS OFF (--no-auth): anyone who reaches {} can build, upload and publish wheels and command the master",
        if tcp.is_empty() { "the master's sockets".to_string() } else { tcp.iter().map(|a| a.as_str()).collect::<Vec<_>>().join(", ") }
    );
    Ok(Auth::disabled())
}

/// Starts the tasks in the order the wiring gives (`wiring::start_order`): each after every
/// task it calls. They stop in reverse, so a task outlives every task that calls it.
fn start_tasks(rt: &Runtime, cfg: &MasterConfig, auth: &Auth, signing_key: &SigningKey, tasks: &mut Supervisor) -> anyhow::Result<()> {
    for task in wiring::start_order(wiring::WIRING)? {
        start_task(task, rt, cfg, auth, signing_key, tasks)?;
    }
    Ok(())
}

fn start_task(task: TaskName, rt: &Runtime, cfg: &MasterConfig, auth: &Auth, signing_key: &SigningKey, tasks: &mut Supervisor) -> anyhow::Result<()> {
    let db_timeout = cfg.db_timeout.0;
    match task {
        TaskName::Main => {}
        TaskName::Seraph => tasks.add(task::spawn(rt, "seraph", seraph::Sockets::open, |_| Ok(Seraph))?),
        TaskName::Oracle => {
            for n in 1..=cfg.oracles {
                let (url, timeout) = (cfg.dsn.clone(), cfg.db_timeout.0);
                tasks.add(task::spawn(rt, &format!("the_oracle_{n}"), oracle::Sockets::open, move |sockets| {
                    Oracle::start(sockets, &url, timeout)
                })?);
            }
        }
        TaskName::Scribe => {
            let mut index = IndexConfig::new(&cfg.output_path, signing_key.clone());
            index.window = cfg.rewrite_window.0;
            index.pages = PageOptions { upstream_project_url: cfg.upstream_project_url.clone(), site_url: cfg.site_url.clone() };
            tasks.add(task::spawn(rt, "the_scribe", move |ctx| index::Sockets::open(ctx, db_timeout), move |_| Scribe::start(&index))?);
        }
        TaskName::Architect => {
            let queue = QueueConfig { interval: cfg.queue_interval.0, debounce: cfg.queue_debounce.0, limit: cfg.queue_limit };
            tasks.add(task::spawn(rt, "the_architect", architect::Sockets::open, move |_| Ok(Architect::new(queue)))?);
        }
        TaskName::CloudGazer => match &cfg.pypi_xmlrpc {
            Some(xmlrpc_url) => {
                let follower = FollowerConfig {
                    xmlrpc_url: xmlrpc_url.clone(),
                    json_url: cfg.pypi_json.clone(),
                    interval: cfg.pypi_interval.0,
                    timeout: Duration::from_secs(30),
                    skip_new: String::new(),
                };
                tasks.add(task::spawn(
                    rt,
                    "cloud_gazer",
                    move |ctx| cloud_gazer::Sockets::open(ctx, db_timeout),
                    move |sockets| CloudGazer::start(sockets, &follower),
                )?);
            }
            None => tracing::warn!("no --pypi-xmlrpc given: not following PyPI"),
        },
        TaskName::SourcePinner => match &cfg.pypi_simple {
            Some(index_url) => {
                let pinner = PinnerConfig { index_url: index_url.clone(), interval: cfg.pypi_interval.0, timeout: Duration::from_secs(30) };
                tasks.add(task::spawn(
                    rt,
                    "source_pinner",
                    move |ctx| source_pinner::Sockets::open(ctx, db_timeout),
                    move |_| SourcePinner::new(&pinner),
                )?);
            }
            None => tracing::warn!(
                "no --pypi-simple given: no release's source can be pinned, so nothing new is built (see docs/operations.md)"
            ),
        },
        TaskName::Triage => {
            let (config, status) = (TriageConfig { contents: cfg.debian_contents.clone() }, rt.status_endpoint.clone());
            tasks.add(task::spawn(
                rt,
                "triage",
                move |ctx| triage::Sockets::open(ctx, db_timeout, &status),
                move |_| Ok(Triage::new(&config)),
            )?);
        }
        TaskName::FileJuggler => {
            let mut juggler = JugglerConfig::new(&cfg.output_path, cfg.state_dir.join("staging"));
            juggler.chunk_size = cfg.chunk_size.0;
            juggler.window = usize::from(cfg.transfer_window);
            juggler.max_file_size = cfg.max_file_size.0;
            juggler.abandon_after = cfg.abandon_after.0;
            juggler.auth = auth.clone();
            // A staging directory that cannot work is a configuration error: say so now rather
            // than after the task's restarts.
            juggler.check()?;
            let file_queue = cfg.file_queue.clone();
            let (open_config, clock) = (juggler.clone(), rt.clock.clone());
            tasks.add(task::spawn(
                rt,
                "file_juggler",
                move |ctx| file_juggler::Sockets::open(ctx, &file_queue, &open_config),
                move |_| FileJuggler::start(&juggler, &clock),
            )?);
        }
        TaskName::BigBrother => {
            let status = rt.status_endpoint.clone();
            let stats = StatsConfig::new(&cfg.output_path, cfg.stats_interval.0);
            tasks.add(task::spawn(
                rt,
                "big_brother",
                move |ctx| big_brother::Sockets::open_feeding(ctx, &status, db_timeout),
                move |_| Ok(BigBrother::with_config(stats.clone())),
            )?);
        }
        TaskName::MrChase => {
            let chase = ChaseConfig {
                import_queue: cfg.import_queue.clone(),
                db_timeout,
                auth: auth.clone(),
                debian_contents: !cfg.debian_contents.is_empty(),
            };
            let (open_chase, status) = (chase.clone(), rt.status_endpoint.clone());
            tasks.add(task::spawn(
                rt,
                "mr_chase",
                move |ctx| mr_chase::Sockets::open(ctx, &open_chase, &status),
                move |_| Ok(MrChase::new(chase.clone())),
            )?);
        }
        TaskName::Lumberjack => {
            let (logger_queue, logger_auth) = (cfg.logger_queue.clone(), auth.clone());
            tasks.add(task::spawn(
                rt,
                "lumberjack",
                move |ctx| lumberjack::Sockets::open(ctx, &logger_queue, db_timeout, &logger_auth),
                |_| Ok(Lumberjack::new()),
            )?);
        }
        TaskName::SlaveDriver => {
            let driver = DriverConfig {
                slave_queue: cfg.slave_queue.clone(),
                index_url: cfg.pypi_simple.clone().unwrap_or_default(),
                max_message: transport::DEFAULT_MAX_MESSAGE,
                db_timeout,
                auth: auth.clone(),
                limits: SlaveLimits {
                    max_build_timeout: cfg.max_build_timeout.0,
                    max_busy_timeout: cfg.max_busy_timeout.0,
                    max_slaves: cfg.max_slaves.into(),
                    max_slaves_per_key: cfg.max_slaves_per_key.into(),
                    max_slaves_per_address: cfg.max_slaves_per_address.into(),
                },
                retry_backoff: cfg.retry_backoff.0,
                cross_check_share: cfg.cross_check_share,
                hold_drifted: cfg.hold_drifted,
            };
            let (open_driver, status) = (driver.clone(), rt.status_endpoint.clone());
            tasks.add(task::spawn(
                rt,
                "slave_driver",
                move |ctx| slave_driver::Sockets::open(ctx, &open_driver, &status),
                move |_| Ok(SlaveDriver::new(driver.clone())),
            )?);
        }
    }
    Ok(())
}

/// libzmq removes an ipc socket's file when the socket closes; make sure of it, since a stale
/// file would confuse the next start's permission checks and an operator's `ls`.
fn remove_ipc_file(endpoint: &str) {
    if let Some(path) = transport::ipc_path(endpoint) {
        let _ = std::fs::remove_file(path);
    }
}

struct Master {
    /// Who may use the control socket, and who is asking.
    gate: Gate,
    /// The gatekeeper, apart from the other tasks: it stops after the sockets it guards.
    guard: Supervisor,
    farm: FarmSnapshot,
    /// systemd's notifications: ready, the watchdog while every task runs, stopping.
    systemd: Notifier,
    /// Control clients that said hello, by ZeroMQ identity, with when they last spoke.
    clients: HashMap<Vec<u8>, Instant>,
    bad_requests: u64,
    /// Whether Prometheus is answered, so the status events are counted.
    metrics: bool,
}

impl Master {
    fn main_loop(
        &mut self,
        control: &Server<ControlRequest, ControlReply>,
        status_in: &Receiver<StatusEvent>,
        status_out: &Sender<StatusEvent>,
        slave_commands: &Client<SlaveCommand, SlaveCommandReply>,
        signals: &SignalFd,
        tasks: &mut Supervisor,
    ) -> anyhow::Result<Stopped> {
        loop {
            let mut items = [
                control.socket().as_poll_item(zmq::POLLIN),
                status_in.socket().as_poll_item(zmq::POLLIN),
                zmq::PollItem::from_fd(signals.as_raw_fd(), zmq::POLLIN),
            ];
            match zmq::poll(&mut items, 1000) {
                Ok(_) | Err(zmq::Error::EINTR) => {}
                Err(e) => anyhow::bail!("poll failed: {e}"),
            }
            if items[2].is_readable()
                && let Ok(Some(info)) = signals.read_signal()
            {
                let name = Signal::try_from(info.ssi_signo as i32).map_or("a signal", |s| s.as_str());
                return Ok(Stopped::Requested(format!("{name} received")));
            }
            if items[1].is_readable() {
                self.relay_status(status_in, status_out);
            }
            if items[0].is_readable()
                && let Some(stopped) = self.serve_control(control, status_out, slave_commands, tasks)
            {
                return Ok(stopped);
            }
            if let Some(reason) = tasks.failed().or_else(|| self.guard.failed()) {
                return Ok(Stopped::Failed(reason));
            }
            self.systemd.healthy();
        }
    }

    fn relay_status(&mut self, status_in: &Receiver<StatusEvent>, status_out: &Sender<StatusEvent>) {
        match status_in.recv() {
            Ok(event) => self.publish(status_out, event),
            Err(e) => tracing::error!("bad status message from a task: {e}"),
        }
    }

    /// Applies an event to the snapshot and sends it to every monitor.
    fn publish(&mut self, status_out: &Sender<StatusEvent>, event: StatusEvent) {
        self.farm.apply(&event);
        if self.metrics {
            metrics().observe(&event);
        }
        if let Err(e) = status_out.send(&event, Duration::ZERO) {
            tracing::warn!("cannot publish status: {e}");
        }
    }

    /// Serves one control request; Some when the master must stop.
    fn serve_control(
        &mut self,
        control: &Server<ControlRequest, ControlReply>,
        status_out: &Sender<StatusEvent>,
        slave_commands: &Client<SlaveCommand, SlaveCommandReply>,
        tasks: &Supervisor,
    ) -> Option<Stopped> {
        let (peer, request) = match control.recv() {
            Ok(incoming) => incoming,
            Err(e) => {
                self.bad_requests += 1;
                tracing::warn!("unanswerable control message ({} so far): {e}", self.bad_requests);
                return None;
            }
        };
        let (reply, stop) = self.answer(&peer, request, status_out, slave_commands, tasks);
        if let Err(e) = control.send(&peer, &reply) {
            tracing::warn!("cannot answer control client {peer}: {e}");
        }
        stop
    }

    fn answer(
        &mut self,
        peer: &Peer,
        request: Result<ControlRequest, piwheels_common::codec::ProtocolError>,
        status_out: &Sender<StatusEvent>,
        slave_commands: &Client<SlaveCommand, SlaveCommandReply>,
        tasks: &Supervisor,
    ) -> (ControlReply, Option<Stopped>) {
        let request = match request {
            Ok(request) => request,
            Err(e) => {
                self.bad_requests += 1;
                tracing::warn!("bad control request from {peer} ({} so far): {e}", self.bad_requests);
                return (ControlReply::Error(WireError::refused(e.to_string())), None);
            }
        };
        let caller = match self.gate.admit(peer) {
            Ok(caller) => caller,
            Err(refusal) => {
                self.clients.remove(peer.identity());
                return (ControlReply::Error(WireError::refused(refusal.to_string())), None);
            }
        };
        let identity = peer.identity().to_vec();
        if let ControlRequest::Hello { versions, client } = &request {
            return match versions.check() {
                Ok(()) => {
                    tracing::info!("{} attached from {peer} as {caller}", crate::access_log::clean(client, MAX_CLIENT_NAME));
                    self.remember(identity);
                    (ControlReply::Welcome { versions: Versions::current(), snapshot: Box::new(self.farm.clone()) }, None)
                }
                Err(mismatch) => {
                    tracing::warn!("refused {} from {peer}: {mismatch}", crate::access_log::clean(client, MAX_CLIENT_NAME));
                    (ControlReply::Error(WireError::refused(mismatch.to_string())), None)
                }
            };
        }
        if !self.clients.contains_key(&identity) {
            tracing::warn!("control request from {peer} before hello: {request:?}");
            return (ControlReply::Error(WireError::refused("say Hello (with your versions) first")), None);
        }
        self.remember(identity);
        if !caller.may_command() {
            tracing::warn!("refused a command from {caller} at {peer}: {request:?}");
            return (ControlReply::Error(WireError::refused(format!("{caller} may watch but not command: commands need an operator's key"))), None);
        }
        // Monitors show who asked for what: the key the master vouches for.
        let what = match &request {
            ControlRequest::Hello { .. } => unreachable!("answered above"),
            ControlRequest::Quit => "stop the master".to_string(),
            ControlRequest::Pause => "pause the master".to_string(),
            ControlRequest::Resume => "resume the master".to_string(),
            ControlRequest::Slaves { target: SlaveTarget::All, action } => format!("{} every slave", format!("{action:?}").to_lowercase()),
            ControlRequest::Slaves { target: SlaveTarget::One(id), action } => format!("{} slave {id}", format!("{action:?}").to_lowercase()),
        };
        self.publish(status_out, StatusEvent::Notice { at: chrono::Utc::now(), level: NoticeLevel::Info, text: format!("{caller} asked to {what}") });
        match request {
            ControlRequest::Hello { .. } => unreachable!("answered above"),
            ControlRequest::Quit => {
                tracing::info!("shutting down on QUIT from {caller} at {peer}");
                (ControlReply::Done, Some(Stopped::Requested(format!("QUIT from {caller}"))))
            }
            ControlRequest::Pause => {
                tracing::info!("pausing every task on request from {caller} at {peer}");
                tasks.broadcast(TaskControl::Pause);
                self.publish(status_out, StatusEvent::Paused(true));
                (ControlReply::Done, None)
            }
            ControlRequest::Resume => {
                tracing::info!("resuming every task on request from {caller} at {peer}");
                tasks.broadcast(TaskControl::Resume);
                self.publish(status_out, StatusEvent::Paused(false));
                (ControlReply::Done, None)
            }
            ControlRequest::Slaves { target: SlaveTarget::All, action: action @ (SlaveAction::AddBuilder | SlaveAction::RetireBuilder) } => {
                // Every builder of a host would pass it on: a host of 4 would grow by 4.
                let refusal = format!("{action:?} applies to one slave's host: name the slave");
                (ControlReply::Error(WireError::refused(refusal)), None)
            }
            ControlRequest::Slaves { target, action } => {
                tracing::info!("{action:?} {target:?} on request from {caller} at {peer}");
                let reply = match slave_commands.request(&SlaveCommand { target, action }, SLAVE_COMMAND_TIMEOUT) {
                    Ok(SlaveCommandReply::Applied { .. }) => ControlReply::Done,
                    Ok(SlaveCommandReply::UnknownSlave { slave_id }) => ControlReply::Error(WireError::refused(format!("no slave has id {slave_id}"))),
                    Err(e) => ControlReply::Error(WireError::unavailable(format!("the slave driver did not answer: {e}"))),
                };
                (reply, None)
            }
        }
    }

    fn remember(&mut self, identity: Vec<u8>) {
        if self.clients.len() >= MAX_CLIENTS && !self.clients.contains_key(&identity) {
            // Forget the client that has been quiet longest.
            if let Some(oldest) = self.clients.iter().min_by_key(|(_, seen)| **seen).map(|(id, _)| id.clone()) {
                self.clients.remove(&oldest);
            }
        }
        self.clients.insert(identity, Instant::now());
    }
}
