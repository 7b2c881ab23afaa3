//! SlaveDriver, the slaves' coordinator: greets slaves, hands them builds from the architect's
//! queues, has their wheels sent to the file juggler, records finished builds and asks for the
//! pages to be rewritten. How each request is answered is decided by the per-slave state
//! machine in [`crate::slave_state`]; this task does the I/O those decisions call for.
//!
//! Sockets: binds the slave socket (ROUTER, external, usually tcp: [`SlaveRequest`] →
//! [`SlaveReply`]), [`wiring::BUILDS`] (PULL, [`BuildQueueUpdate`] from the architect),
//! [`wiring::SLAVE_COMMANDS`] (ROUTER, operators' [`SlaveCommand`]s from the master's main
//! loop) and [`wiring::RELEASE_NOTICES`] (ROUTER, [`ReleaseNotice`]s); connects to the status socket,
//! the stats task, the architect's trigger, the oracles, the file juggler and the index writer.
//!
//! Exclusions keep one release from being built twice at once: a release handed to a slave is
//! excluded for that slave's ABI until its build timeout passes (with the time its source's
//! download may take, and [`HOLD_MARGIN`] more), and a deleted package or
//! version is excluded everywhere for [`DELETED_EXCLUSION`]. Unlike the original, a slave that
//! is dropped (silent past its busy timeout, killed, said goodbye) releases its exclusion at
//! once: the driver no longer knows its connection, so anything it says later is refused and
//! it cannot record a result, and its release goes back to the queue at the next refresh.
//!
//! # Whose fault a failure is
//!
//! Only a failure of the package's own is recorded: a build that ran and failed, timed out or
//! ran out of memory, as far as the slave's report shows it ran (see [`check_failure`]), or a
//! wheel the master refuses for what it is (another version, foreign tags, a broken archive).
//! Everything else is the infrastructure's and is never recorded: the builder's own trouble
//! (its disk, its tools), a report that does not show the build ran, a slave dropped mid-build,
//! a file that fails verification again and again, the master's full disk or an unanswered
//! database. Such a release is handed out again at once the first time (a lost builder is
//! rarely the package's doing), then after a back-off that doubles with each further failure
//! (`--retry-backoff`, [`RETRY_FIRST`] by default, up to [`RETRY_LONGEST`]), to another
//! builder of its ABI when one is connected and takes it within [`PASS_OVER_AT_MOST`]; the
//! files it published are removed (or, when the database cannot say they are unrecorded,
//! removed at the next conflict: see [`SlaveDriver::resolve_conflict`]).
//!
//! # What a slave may claim
//!
//! Every duration, size and count a slave sends is bounded ([`SlaveLimits`]): its build and
//! busy timeouts, the slaves one key and one address may run, the slaves connected at all.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use piwheels_common::protocols::{BuildResult, ErrorKind, FailureKind, FinishedBuild, HostStats, NoticeLevel, PackageVersion, SlaveAction, SlaveEvent, SlaveHello, SlaveId, SlaveReply, SlaveRequest, SlaveTarget, SourceFile, StatusEvent, TransferId, WheelFile, WireError};
use piwheels_common::config::HumanDuration;
use piwheels_common::keys::Endpoint;
use piwheels_common::task::{Context, PauseMode, Task};
use piwheels_common::wheel::WheelName;
use piwheels_common::transport::{self, Client, Dealer, Peer, Receiver, Sender, Server, TransportError};

use crate::calls::db::{BuildRecord, CheckRecord, ForgetCheck, LogBuild, LogCheck, NameForFile, PackageFiles, QueuedBuild, QueuedCheck, RewriteScope, Verdict, VersionFiles};
use crate::calls::files::{Expect, Expected, FileExpectation, FsReply, FsRequest, Removal, RemoveOrphan, Verification, Verify};
use crate::calls::tasks::{ArchitectTrigger, BuildQueueUpdate, ReleaseAck, ReleaseNotice, SlaveCommand, SlaveCommandReply, StatsUpdate, WebReply, WebRequest};
use crate::calls::{Call, CallError, Caller, ReplyName};
use crate::cross_check;
use crate::db::requests::stored_label;
use crate::db_client::DbClient;
use crate::gatekeeper::{Auth, Gate};
use crate::drift::{self, Drift};
use crate::metrics::{DriftLabels, metrics};
use crate::slave_state::{Decision, Flags, Slave, Stage};
use crate::wiring::{self, TaskName};

/// Build tags a builder may give its wheels stay below this number, so that the tags the
/// master gives rebuilds above them stay within the nine digits it publishes.
const BUILDER_TAG_LIMIT: u64 = 1_000_000;

/// How long a deleted package or version stays out of the queues, so that a queue computed
/// just before the deletion cannot hand it out again.
pub const DELETED_EXCLUSION: Duration = Duration::from_secs(3600);
/// How long a verification given up on is remembered, for its late answer.
const GIVEN_UP_KEPT: Duration = Duration::from_secs(3600);
/// How often silent slaves are looked for.
const EXPIRY_CHECK: Duration = Duration::from_secs(5);
/// How often the list of keys is checked for revocations of connected slaves' keys.
const REVOCATION_CHECK: Duration = Duration::from_secs(1);
/// Times a file that fails verification is asked for again before the build is given up.
const MAX_SEND_ATTEMPTS: u32 = 3;
/// The master's default back-off before a release that failed twice for the infrastructure's
/// reasons is handed out again (`--retry-backoff`); it doubles with each further such failure
/// of the release, up to [`RETRY_LONGEST`].
pub const RETRY_FIRST: Duration = Duration::from_secs(30);
/// Longest back-off between attempts at a release that keeps failing for the infrastructure's
/// reasons: it is retried at least this often, and never recorded as failed for them.
pub const RETRY_LONGEST: Duration = Duration::from_secs(3600);
/// Longest time after its back-off that a release waits for another builder than the one it
/// last failed on: the others may all be busy with long builds.
const PASS_OVER_AT_MOST: Duration = Duration::from_secs(300);
/// A release whose last infrastructure failure's back-off ended this long ago starts afresh.
const RETRY_FORGOTTEN: Duration = Duration::from_secs(24 * 3600);
/// Slack allowed between a slave's measure of a build's duration and the master's.
const CLOCK_SLACK: Duration = Duration::from_secs(2);
/// Attempts at a cross-check that may end without a verdict before it is forgotten (with a
/// warning): one per builder, the back-off between them, so it does not cost builds for ever.
const MAX_CHECK_ATTEMPTS: u32 = 5;
/// How long a cross-check's failed attempts are remembered when it is not tried again (its
/// build was removed): they count towards [`MAX_CHECK_ATTEMPTS`] until then.
const CHECK_RETRY_KEPT: Duration = Duration::from_secs(7 * 24 * 3600);
/// Lines of a failed cross-check's log its verdict keeps.
const FAILURE_LINES: usize = 10;
/// The most of a slave's last log line a notice repeats, in characters.
const LAST_WORDS: usize = 400;
/// How long past its download limit and build timeout a handed-out release stays the slave's:
/// a stalled read of the source (a minute), the kill of a build past its time and the report.
const HOLD_MARGIN: Duration = Duration::from_secs(120);
/// Longest field a slave's hello may carry (labels, tags, host facts).
const MAX_HELLO_FIELD: usize = 256;
/// How long the file juggler may take to answer (a verification fsyncs a whole file).
const FS_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a message to a local queue may wait for room.
const LOCAL_SEND_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a refresh of the queue, or a report of its lengths, may wait to be folded with
/// those after it: a farm finishing a build every few milliseconds needs neither per build,
/// and each would wake another task.
const FOLD_WITHIN: Duration = Duration::from_secs(1);
/// A slave's host figures reach monitors at most this often: a slave asking for work every
/// few milliseconds would otherwise fill a monitor's history of them (100 entries) in seconds,
/// and wake the master's main loop for each.
const STATS_EVERY: Duration = Duration::from_secs(5);

/// Bounds on what slaves may claim and how many may connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlaveLimits {
    /// Longest build timeout a slave may announce: a build is excluded from the queue that
    /// long, and the master abandons it after it.
    pub max_build_timeout: Duration,
    /// Longest busy timeout a slave may announce: a silent slave holds its build that long.
    pub max_busy_timeout: Duration,
    /// Most slaves connected at once.
    pub max_slaves: usize,
    /// Most slaves connected at once with one key.
    pub max_slaves_per_key: usize,
    /// Most slaves connected at once from one network address.
    pub max_slaves_per_address: usize,
}

impl Default for SlaveLimits {
    /// The master's defaults: builds up to 12 hours, silences up to an hour, 1,000 slaves,
    /// 32 per key and per address.
    fn default() -> Self {
        SlaveLimits {
            max_build_timeout: Duration::from_secs(12 * 3600),
            max_busy_timeout: Duration::from_secs(3600),
            max_slaves: piwheels_common::farm::MAX_SLAVES,
            max_slaves_per_key: 32,
            max_slaves_per_address: 32,
        }
    }
}

/// The slave driver's settings.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// Where slaves connect, e.g. `tcp://*:5555`.
    pub slave_queue: String,
    /// The index slaves' pip builds from, sent in every `Ack` (empty: the slave's own).
    pub index_url: String,
    /// Largest message a slave may send (a build result carries its log and METADATA files).
    pub max_message: usize,
    /// How long the database may take to answer.
    pub db_timeout: Duration,
    /// Who may connect to the slave socket.
    pub auth: Auth,
    /// Bounds on slaves' claims and numbers.
    pub limits: SlaveLimits,
    /// Back-off after a release's second infrastructure failure (doubling after each further
    /// one, up to [`RETRY_LONGEST`]).
    pub retry_backoff: Duration,
    /// Share of successful builds (0 to 1) that are cross-checked by another builder
    /// ([`cross_check::sampled`]).
    pub cross_check_share: f64,
    /// Hand no work to a builder whose environment differs from its ABI's other builders'
    /// ([`drift`]).
    pub hold_drifted: bool,
}

/// The slave driver's sockets, and the slave-id counter, which outlive restarts of its state
/// so that an id is never given twice in the master's life.
#[derive(Debug)]
pub struct Sockets {
    slaves: Server<SlaveRequest, SlaveReply>,
    builds: Receiver<BuildQueueUpdate>,
    commands: Server<SlaveCommand, SlaveCommandReply>,
    release_notices: Server<ReleaseNotice, ReleaseAck>,
    status: Sender<StatusEvent>,
    stats: Sender<StatsUpdate>,
    trigger: Sender<ArchitectTrigger>,
    db: DbClient,
    fs: Caller<FsRequest, FsReply>,
    /// Verifications go out on their own socket, tagged with their transfer id, and their
    /// answers come back as events: the driver never waits for one.
    verify: Dealer<FsRequest, FsReply>,
    web: Client<WebRequest, WebReply>,
    gate: Gate,
    last_slave_id: SlaveId,
}

impl Sockets {
    /// Binds the slave, builds, commands and release-notice sockets and connects to the rest.
    pub fn open(ctx: &zmq::Context, config: &DriverConfig, status_endpoint: &str) -> anyhow::Result<Sockets> {
        Ok(Sockets {
            slaves: Server::bind_external(
                ctx,
                &config.slave_queue,
                config.max_message,
                Some(transport::REQUESTS_PER_PEER),
                &config.auth.security(Endpoint::Slave, &config.slave_queue),
            )?,
            builds: wiring::BUILDS.pull(ctx, TaskName::SlaveDriver)?,
            commands: wiring::SLAVE_COMMANDS.serve(ctx, TaskName::SlaveDriver)?,
            release_notices: wiring::RELEASE_NOTICES.serve(ctx, TaskName::SlaveDriver)?,
            status: Sender::push(ctx, status_endpoint)?,
            stats: wiring::STATS.push(ctx, TaskName::SlaveDriver)?,
            trigger: wiring::ARCHITECT.push(ctx, TaskName::SlaveDriver)?,
            db: wiring::DB.caller(ctx, TaskName::SlaveDriver, config.db_timeout)?,
            fs: wiring::FS.caller(ctx, TaskName::SlaveDriver, FS_TIMEOUT)?,
            verify: wiring::FS.dealer(ctx, TaskName::SlaveDriver)?,
            web: wiring::WEB.client(ctx, TaskName::SlaveDriver)?,
            gate: config.auth.gate(Endpoint::Slave, &config.slave_queue),
            last_slave_id: 0,
        })
    }

    /// The address the slave socket is bound to (with the port chosen, when it was `*`).
    pub fn slave_endpoint(&self) -> String {
        self.slaves.endpoint().to_string()
    }
}

/// What the slave driver reacts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A slave sent a request.
    Slave,
    /// The architect sent new queues.
    Builds,
    /// An operator's command arrived.
    Command,
    /// A deletion or a rebuild was announced.
    ReleaseNotice,
    /// The file juggler answered a verification.
    Verified,
    /// Time to drop silent slaves (and verifications gone unanswered).
    Expire,
    /// Time to drop slaves whose keys were revoked.
    Revocations,
    /// Time to send the folded refresh request and queue lengths.
    Flush,
}

/// A verification the file juggler has not answered yet, with what the slave's answer needs.
#[derive(Debug)]
struct Verifying {
    /// The slave, waiting for its answer to `Sent`.
    peer: Peer,
    /// Its id: a slave of another id on the same connection is another slave.
    slave_id: SlaveId,
    /// Its build.
    build: PackageVersion,
    /// The build's outcome, its files described as the master has them so far.
    result: Box<BuildResult>,
    /// The file being verified.
    filename: String,
    /// When the verification was asked for.
    asked: Instant,
}

/// A verification given up on before the file juggler answered it.
#[derive(Debug)]
struct GivenUp {
    /// The slave whose build it was.
    slave_id: SlaveId,
    /// The build.
    build: PackageVersion,
    /// The file.
    filename: String,
    /// When it was given up.
    at: Instant,
}

/// A release kept out of a queue until a time.
type Exclusions = BTreeMap<PackageVersion, Instant>;

/// A release that failed for the infrastructure's reasons, waiting for its next attempt.
#[derive(Debug, Clone)]
struct Retry {
    /// Such failures so far.
    failures: u32,
    /// Not handed out before this.
    until: Instant,
    /// The builder (its label) of the last attempt, which is passed over while another
    /// builder of the ABI is connected.
    builder: String,
}

/// A cross-check a slave is building, and what its files showed so far.
#[derive(Debug)]
struct Checking {
    /// The check, as the queue gave it.
    check: QueuedCheck,
    /// The first build's files a file of this build was compared with.
    compared: Vec<String>,
    /// What differs so far.
    differences: Vec<String>,
}

impl Checking {
    /// Notes what the second build's file `filename` showed: a line per difference, prefixed
    /// with the first build's file of the same wheel when it made several.
    fn note(&mut self, filename: &str, differences: impl IntoIterator<Item = String>) {
        let first_file = cross_check::counterpart(filename, &self.check.files).map(str::to_string);
        let prefix = match &first_file {
            Some(file) if self.check.files.len() > 1 => format!("{file}: "),
            _ => String::new(),
        };
        self.differences.extend(differences.into_iter().map(|d| format!("{prefix}{d}")));
        if let Some(file) = first_file {
            self.compared.push(file);
        }
    }

    /// The verdict of a second build that succeeded: the first build's files it made no
    /// counterpart of differ too.
    fn verdict(&self) -> Verdict {
        let missing = self.check.files.iter().filter(|file| !self.compared.contains(file));
        let differences: Vec<String> =
            self.differences.iter().cloned().chain(missing.map(|file| format!("{file}: the second build made no such wheel"))).collect();
        match differences.is_empty() {
            true => Verdict::Reproduced,
            false => Verdict::Differs { differences: cross_check::bounded(differences) },
        }
    }
}

/// A cross-check's attempts that ended without a verdict (the infrastructure's failures, a
/// second build past its builder's limits, a slave that left or was skipped).
#[derive(Debug, Clone)]
struct CheckRetry {
    /// How many.
    failures: u32,
    /// The builders (labels as builds keep them) that made them: each is passed over for the
    /// check for [`RETRY_FORGOTTEN`] after the last, so that another builder tries.
    builders: Vec<String>,
    /// When the last ended.
    last: Instant,
}

/// What stands in the way of a file the file juggler reports a conflict for.
enum Conflict {
    /// An unrecorded file, now removed.
    Removed,
    /// A recorded file with other contents.
    Recorded,
    /// Nothing can be settled now (why): the build is given up and tried again.
    Unsettled(String),
}

/// The slaves' coordinator.
#[derive(Debug)]
pub struct SlaveDriver {
    config: DriverConfig,
    /// Connected slaves by connection identity.
    slaves: HashMap<Vec<u8>, Slave>,
    /// Releases still to hand out, per ABI, in the architect's order.
    queues: BTreeMap<String, VecDeque<QueuedBuild>>,
    /// Cross-checks waiting for a builder, per ABI, oldest first: handed out before the queue
    /// to a builder other than the first build's.
    checks: BTreeMap<String, VecDeque<QueuedCheck>>,
    /// The cross-checks slaves are building.
    checking: HashMap<SlaveId, Checking>,
    /// Cross-checks (by id) handed out, until their slave's build could have ended: a queue
    /// computed before one was recorded does not hand it out again.
    checks_held: HashMap<i64, Instant>,
    /// Cross-checks whose attempts ended without a verdict.
    check_retries: HashMap<i64, CheckRetry>,
    /// Releases handed out, per ABI, until their slave's build could have ended (see the
    /// module documentation).
    building: HashMap<String, Exclusions>,
    /// Deleted releases (an empty version means the whole package), for every ABI.
    deleted: Exclusions,
    /// Releases that failed for the infrastructure's reasons, per ABI.
    retries: HashMap<String, BTreeMap<PackageVersion, Retry>>,
    /// Infrastructure failures since the start, for the log.
    infrastructure_failures: u64,
    /// Messages without an envelope on the slave socket since the start.
    unanswerable: u64,
    /// Verification attempts of the file each slave is sending.
    attempts: HashMap<SlaveId, u32>,
    /// Files each slave's current build has published, until the build is recorded.
    published: HashMap<SlaveId, (PackageVersion, Vec<String>)>,
    /// Verifications asked of the file juggler and not answered yet, by transfer: each slave
    /// behind one waits for its answer to `Sent`.
    verifying: HashMap<TransferId, Verifying>,
    /// Verifications given up on before the file juggler answered, with when: a file one of
    /// them publishes after all is removed again (it will not be recorded).
    given_up: HashMap<TransferId, GivenUp>,
    /// Why the architect should recompute the queue, and how many more reasons were folded
    /// into that one, until the next [`Event::Flush`].
    refresh: Option<(String, usize)>,
    /// Whether the queue lengths changed since they were last sent to the stats task.
    lengths_changed: bool,
    /// The generation of the list of keys the connected slaves were last checked against.
    keys_checked: u64,
    /// The differences among the connected builders' environments, as last announced.
    drifts: Vec<Drift>,
}

impl SlaveDriver {
    /// A driver with no slaves and empty queues.
    pub fn new(config: DriverConfig) -> SlaveDriver {
        // A driver starting afresh knows no builder, so no difference between them.
        metrics().drifts.clear();
        SlaveDriver {
            config,
            slaves: HashMap::new(),
            queues: BTreeMap::new(),
            checks: BTreeMap::new(),
            checking: HashMap::new(),
            checks_held: HashMap::new(),
            check_retries: HashMap::new(),
            building: HashMap::new(),
            deleted: BTreeMap::new(),
            retries: HashMap::new(),
            infrastructure_failures: 0,
            unanswerable: 0,
            attempts: HashMap::new(),
            published: HashMap::new(),
            verifying: HashMap::new(),
            given_up: HashMap::new(),
            refresh: None,
            lengths_changed: false,
            keys_checked: 0,
            drifts: Vec::new(),
        }
    }

    /// Compares the connected builders' environments again (a builder came or went): announces
    /// each new difference and each one gone, and holds or frees the drifted builders as the
    /// configuration says.
    fn check_drift(&mut self, sockets: &Sockets, ctx: &Context<'_, Event>) {
        let drifts = drift::find(self.slaves.values().map(|slave| (slave.id, &slave.hello)));
        for new in drifts.iter().filter(|d| !self.drifts.iter().any(|old| old.subject() == d.subject())) {
            tracing::warn!("{}", new.describe());
            notice(sockets, ctx, NoticeLevel::Warning, new.describe());
        }
        for gone in self.drifts.iter().filter(|old| !drifts.iter().any(|d| (&d.abi, &d.entry) == (&old.abi, &old.entry))) {
            let text = format!("{} builders agree on {} again", gone.abi, gone.entry);
            tracing::info!("{text}");
            notice(sockets, ctx, NoticeLevel::Info, text);
        }
        let figures = &metrics().drifts;
        figures.clear();
        for d in &drifts {
            figures.get_or_create(&DriftLabels { abi: d.abi.clone(), entry: d.entry.clone() }).set(i64::try_from(d.drifted.len()).unwrap_or(i64::MAX));
        }
        // Sent each time (a builder came or went), so that a restarted stats task learns them.
        let notices = drifts.iter().map(Drift::public).collect();
        if let Err(e) = sockets.stats.send(&StatsUpdate::Drifts { notices }, LOCAL_SEND_TIMEOUT) {
            tracing::warn!("the home page will not show the builders' drifts: {e}");
        }
        let held = drift::held(&drifts);
        for slave in self.slaves.values_mut() {
            slave.held = match held.get(&slave.id) {
                Some(entries) if self.config.hold_drifted => Some(format!("its {} differ from its ABI's other builders'", entries.join(", "))),
                _ => None,
            };
        }
        self.drifts = drifts;
    }

    fn on_slave(&mut self, sockets: &mut Sockets, ctx: &Context<'_, Event>) -> anyhow::Result<()> {
        let (peer, request) = match sockets.slaves.recv() {
            Ok(incoming) => incoming,
            // A message with no envelope cannot be answered: a peer's doing, not the driver's.
            Err(TransportError::Protocol(e)) => {
                self.unanswerable += 1;
                // Logged with doubling gaps, so that a flood cannot fill the log.
                if self.unanswerable.is_power_of_two() {
                    tracing::warn!("unanswerable message on the slave socket ({} so far): {e}", self.unanswerable);
                }
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        let now = ctx.now();
        let identity = peer.identity().to_vec();
        let caller = match sockets.gate.admit(&peer) {
            Ok(caller) => caller,
            Err(refusal) => {
                // A key revoked since its connection was made: whatever it asks, it is done.
                let reason = refusal.to_string();
                if let Some(slave) = self.slaves.remove(&identity) {
                    self.drop_slave(sockets, ctx, slave, &reason, false);
                }
                return match request {
                    Ok(SlaveRequest::Hello(_)) => reply(sockets, &peer, &SlaveReply::Error(WireError::refused(reason))),
                    Ok(SlaveRequest::Bye { .. }) => Ok(()),
                    _ => reply(sockets, &peer, &SlaveReply::Die { reason }),
                };
            }
        };
        let request = match request {
            Ok(request) => request,
            Err(e) => {
                let reason = format!("protocol error: {e}");
                match self.slaves.remove(&identity) {
                    Some(slave) => self.drop_slave(sockets, ctx, slave, &reason, false),
                    None => tracing::warn!("bad message from unknown slave {peer}: {e}"),
                }
                return reply(sockets, &peer, &SlaveReply::Die { reason });
            }
        };
        let Some(slave) = self.slaves.get_mut(&identity) else {
            return self.on_stranger(sockets, ctx, peer, request, caller.label());
        };
        let id = slave.id;
        if let SlaveRequest::Idle { stats, .. } | SlaveRequest::Busy { stats } = &request
            && slave.stats_published.is_none_or(|at| now.saturating_duration_since(at) >= STATS_EVERY)
        {
            slave.stats_published = Some(now);
            publish(sockets, ctx, id, SlaveEvent::Stats(believable(stats)));
        }
        let decision = slave.on_request(request, now, ctx.paused());
        match decision {
            Decision::Reply(answer) => {
                if answer == SlaveReply::Done {
                    // The state machine abandoned the build (skipped, or past its timeout).
                    let label = slave.hello.host.label.clone();
                    if let Some(check) = self.end_build(sockets, id) {
                        self.check_given_up(sockets, ctx, check.check_id, &check.release, &label);
                    }
                }
                self.answer(sockets, ctx, &peer, answer)
            }
            Decision::FindWork => {
                let answer = self.find_work(&identity, now);
                self.answer(sockets, ctx, &peer, answer)
            }
            Decision::RecordFailure { build, result } => {
                let answer = self.finish(sockets, ctx, &identity, build, *result);
                self.answer(sockets, ctx, &peer, answer)
            }
            Decision::StartTransfer { build, result } => {
                self.attempts.remove(&id);
                let answer = self.next_file(sockets, ctx, &identity, build, result, 0);
                self.answer(sockets, ctx, &peer, answer)
            }
            Decision::VerifyFile { build, result, filename, transfer } => {
                let waiting = Verifying { peer, slave_id: id, build, result, filename, asked: now };
                self.ask_verification(sockets, ctx, transfer, waiting)
            }
            Decision::Forget { reason } => {
                if let Some(slave) = self.slaves.remove(&identity) {
                    self.drop_slave(sockets, ctx, slave, &format!("said goodbye: {reason}"), true);
                }
                Ok(())
            }
            Decision::Die { reason } => {
                if let Some(slave) = self.slaves.remove(&identity) {
                    // An operator's kill puts the build back at once; a protocol error is the
                    // builder's failure.
                    let killed = slave.flags.kill;
                    if !killed {
                        tracing::warn!("slave {} ({}): {reason}", slave.id, slave.hello.host.label);
                    }
                    self.drop_slave(sockets, ctx, slave, &reason, killed);
                }
                reply(sockets, &peer, &SlaveReply::Die { reason })
            }
        }
    }

    /// A request from a connection the driver does not know: only `Hello` is welcome.
    /// A slave with a key is named by its key's label, whatever it calls itself.
    fn on_stranger(&mut self, sockets: &mut Sockets, ctx: &Context<'_, Event>, peer: Peer, request: SlaveRequest, key_label: Option<&str>) -> anyhow::Result<()> {
        match request {
            SlaveRequest::Hello(mut hello) => {
                if let Some(label) = key_label {
                    hello.host.label = label.to_string();
                }
                if let Err(mismatch) = hello.versions.check() {
                    tracing::warn!("refused slave {} from {peer}: {mismatch}", hello.host.label);
                    return reply(sockets, &peer, &SlaveReply::Error(WireError::refused(mismatch.to_string())));
                }
                if let Err(reason) = check_hello(&hello, &self.config.limits).and_then(|()| self.check_room(&peer)) {
                    tracing::warn!("refused slave {} from {peer}: {reason}", hello.host.label);
                    return reply(sockets, &peer, &SlaveReply::Error(WireError::refused(reason)));
                }
                sockets.last_slave_id = sockets.last_slave_id.wrapping_add(1).max(1);
                let id = sockets.last_slave_id;
                tracing::info!(
                    "slave {id} ({}) connected from {peer}: piwheels {}, {} on {}, build timeout {:?}, busy timeout {:?}",
                    hello.host.label,
                    hello.versions.software,
                    hello.abi,
                    hello.platform,
                    hello.build_timeout,
                    hello.busy_timeout
                );
                publish(sockets, ctx, id, SlaveEvent::Hello(hello.clone()));
                let mut slave = Slave::new(id, hello, ctx.now());
                slave.key = peer.user().map(str::to_string);
                slave.address = peer.address().map(str::to_string);
                self.slaves.insert(peer.identity().to_vec(), slave);
                self.check_drift(sockets, ctx);
                let answer = SlaveReply::Ack { slave_id: id, index_url: self.config.index_url.clone() };
                self.answer(sockets, ctx, &peer, answer)
            }
            // Nothing to answer, and nobody to forget.
            SlaveRequest::Bye { .. } => Ok(()),
            other => {
                tracing::info!("{} from unknown slave {peer}: telling it to say hello again", other.name());
                reply(sockets, &peer, &SlaveReply::Error(WireError::refused("this master does not know you (it restarted, or dropped you as silent): say Hello again")))
            }
        }
    }

    /// Refuses a new slave when the farm, its key or its address has as many as allowed.
    fn check_room(&self, peer: &Peer) -> Result<(), String> {
        let limits = &self.config.limits;
        if self.slaves.len() >= limits.max_slaves {
            return Err(format!("this master has {} slaves connected, the most it allows (--max-slaves)", self.slaves.len()));
        }
        if let Some(key) = peer.user() {
            let same = self.slaves.values().filter(|s| s.key.as_deref() == Some(key)).count();
            if same >= limits.max_slaves_per_key {
                return Err(format!("this key has {same} slaves connected, the most one key may (--max-slaves-per-key)"));
            }
        }
        if let Some(address) = peer.address() {
            let same = self.slaves.values().filter(|s| s.address.as_deref() == Some(address)).count();
            if same >= limits.max_slaves_per_address {
                return Err(format!("{address} has {same} slaves connected, the most one address may (--max-slaves-per-address)"));
            }
        }
        Ok(())
    }

    /// Sends `answer` to the slave at `peer` and tells monitors (except for `Cont`, which only
    /// says that nothing changed).
    fn answer(&mut self, sockets: &Sockets, ctx: &Context<'_, Event>, peer: &Peer, answer: SlaveReply) -> anyhow::Result<()> {
        if let Some(slave) = self.slaves.get(peer.identity())
            && answer != SlaveReply::Cont
        {
            let shown = match &answer {
                // A transfer id is for the slave alone: monitors learn which file, not the id.
                SlaveReply::Send { filename, .. } => SlaveReply::Send { filename: filename.clone(), transfer: 0 },
                other => other.clone(),
            };
            publish(sockets, ctx, slave.id, SlaveEvent::Replied(shown));
        }
        reply(sockets, peer, &answer)
    }

    /// The next release for the slave's ABI that nobody builds and nobody deleted, and that is
    /// not waiting out a back-off (or for another builder) after an infrastructure failure: a
    /// cross-check another builder's build waits for first, then the queue.
    fn find_work(&mut self, identity: &[u8], now: Instant) -> SlaveReply {
        let Some(slave) = self.slaves.get(identity) else { return SlaveReply::Done };
        let (abi, label) = (slave.hello.abi.clone(), slave.hello.host.label.clone());
        // A release whose build failed for the infrastructure's reasons passes its builder's
        // host over for a while (its other builders share the machine), if another can take it.
        let others_of_abi = self.slaves.values().any(|s| s.hello.abi == abi && drift::host(&s.hello.host.label) != drift::host(&label));
        let retries = self.retries.get(&abi);
        let waiting = |build: &PackageVersion| {
            retries.and_then(|r| r.get(build)).is_some_and(|retry| {
                retry.until > now || (drift::host(&retry.builder) == drift::host(&label) && others_of_abi && now < retry.until + PASS_OVER_AT_MOST)
            })
        };
        let building = self.building.entry(abi.clone()).or_default();
        let slave = &self.slaves[identity];
        let checks = self.checks.entry(abi.clone()).or_default();
        let (held, check_retries) = (&self.checks_held, &self.check_retries);
        let stored = stored_label(&label);
        let passed_over = |check: &QueuedCheck| {
            check_retries.get(&check.check_id).is_some_and(|r| {
                r.builders.iter().any(|b| drift::host(b) == drift::host(stored)) && now.saturating_duration_since(r.last) < RETRY_FORGOTTEN
            })
        };
        let free = |check: &QueuedCheck| {
            !cross_check::same_builder(check, slave.key.as_deref(), &label)
                && cross_check::same_platform(&check.files, &slave.hello.platform)
                && held.get(&check.check_id).is_none_or(|until| *until <= now)
                && !passed_over(check)
                && !is_deleted(&self.deleted, &check.release, now)
                && !waiting(&check.release)
        };
        if let Some(at) = checks.iter().position(free)
            && let Some(check) = checks.remove(at)
        {
            let Some(slave) = self.slaves.get_mut(identity) else { return SlaveReply::Done };
            self.checks_held.insert(check.check_id, hold_until(slave, now));
            let reply = slave.start_build(check.release.clone(), check.source.clone(), now);
            tracing::info!("slave {} cross-checks {} {} (built by {})", slave.id, check.release.package, check.release.version, check.builder);
            self.checking.insert(slave.id, Checking { check, compared: Vec::new(), differences: Vec::new() });
            return reply;
        }
        let queue = self.queues.entry(abi).or_default();
        let mut index = 0;
        while index < queue.len() {
            let build = &queue[index].release;
            if building.get(build).is_some_and(|until| *until > now) || is_deleted(&self.deleted, build, now) {
                queue.remove(index);
                self.lengths_changed = true;
                continue;
            }
            if waiting(build) {
                // Kept in the queue for its turn.
                index += 1;
                continue;
            }
            let Some(QueuedBuild { release, source }) = queue.remove(index) else { break };
            let Some(slave) = self.slaves.get_mut(identity) else { return SlaveReply::Done };
            building.insert(release.clone(), hold_until(slave, now));
            self.lengths_changed = true;
            return slave.start_build(release, source, now);
        }
        match self.slaves.get_mut(identity) {
            Some(slave) => slave.sleep(false),
            None => SlaveReply::Done,
        }
    }

    /// Gives a build up for the infrastructure's reasons (`reason` says which): nothing is
    /// recorded, the files it published are removed, and the release is handed out again after
    /// a back-off, to another builder of the ABI when one is connected.
    fn give_up(&mut self, sockets: &Sockets, ctx: &Context<'_, Event>, identity: &[u8], build: &PackageVersion, reason: &str) -> SlaveReply {
        if let Some(check_id) = self.slaves.get(identity).and_then(|slave| self.checking.get(&slave.id)).map(|c| c.check.check_id) {
            return self.give_up_check(sockets, ctx, identity, build, check_id, reason);
        }
        let now = ctx.now();
        self.infrastructure_failures += 1;
        if let Some(slave) = self.slaves.get(identity) {
            let (id, label, abi) = (slave.id, slave.hello.host.label.clone(), slave.hello.abi.clone());
            let delay = self.schedule_retry(&abi, build, &label, now);
            let text = format!(
                "slave {id} ({label}) could not build {} {}: {reason}; not recorded, to be built again {} (infrastructure failure {} since the start)",
                build.package,
                build.version,
                when(delay),
                self.infrastructure_failures
            );
            tracing::warn!("{text}");
            notice(sockets, ctx, NoticeLevel::Warning, text);
        }
        self.release(identity, now);
        self.want_refresh(format!("{} {} to be built again", build.package, build.version));
        self.done(sockets, identity)
    }

    /// [`SlaveDriver::give_up`] for a cross-check: nothing is recorded, and the check is handed
    /// out again to another builder of the ABI ([`SlaveDriver::check_given_up`]). The
    /// release's own queue entry, exclusion and back-off are not the check's.
    fn give_up_check(&mut self, sockets: &Sockets, ctx: &Context<'_, Event>, identity: &[u8], build: &PackageVersion, check_id: i64, reason: &str) -> SlaveReply {
        self.infrastructure_failures += 1;
        let Some(slave) = self.slaves.get(identity) else { return SlaveReply::Done };
        let (id, label) = (slave.id, slave.hello.host.label.clone());
        let text = format!(
            "slave {id} ({label}) could not cross-check {} {}: {reason}; not recorded (infrastructure failure {} since the start)",
            build.package, build.version, self.infrastructure_failures
        );
        tracing::warn!("{text}");
        notice(sockets, ctx, NoticeLevel::Warning, text);
        let answer = self.done(sockets, identity);
        self.check_given_up(sockets, ctx, check_id, build, &label);
        answer
    }

    /// Notes an attempt at a cross-check by `builder` that ended without a verdict: the check
    /// passes that builder over (so each builder tries it at most once a day: no back-off is
    /// needed) and comes back with the next queue; after [`MAX_CHECK_ATTEMPTS`] it is
    /// forgotten, with a warning.
    fn check_given_up(&mut self, sockets: &Sockets, ctx: &Context<'_, Event>, check_id: i64, build: &PackageVersion, builder: &str) {
        let now = ctx.now();
        let retry = self.check_retries.entry(check_id).or_insert(CheckRetry { failures: 0, builders: Vec::new(), last: now });
        retry.failures = retry.failures.saturating_add(1);
        retry.builders.push(stored_label(builder).to_string());
        retry.last = now;
        let failures = retry.failures;
        let what = format!("the cross-check of {} {}", build.package, build.version);
        if failures >= MAX_CHECK_ATTEMPTS {
            match sockets.db.call(ForgetCheck { check_id }) {
                Ok(_) => {
                    self.check_retries.remove(&check_id);
                    let text = format!("{what} is given up: {failures} attempts ended without a verdict; piw-rebuild cross-check asks for another");
                    tracing::warn!("{text}");
                    notice(sockets, ctx, NoticeLevel::Warning, text);
                }
                // Tried again at the next failure.
                Err(e) => tracing::warn!("cannot forget {what} after {failures} attempts: {e}"),
            }
            return;
        }
        tracing::info!("{what} is to be tried again by another builder than {builder}");
        self.want_refresh(format!("{what} to be tried again"));
    }

    /// The back-off after the `failures`th infrastructure failure of a release:
    /// none after the first, then `--retry-backoff` doubling up to [`RETRY_LONGEST`].
    fn backoff(&self, failures: u32) -> Duration {
        match failures {
            0 | 1 => Duration::ZERO,
            _ => self.config.retry_backoff.saturating_mul(1 << (failures - 2).min(16)).min(RETRY_LONGEST),
        }
    }

    /// Notes one more infrastructure failure of `build` on `builder`; returns the back-off.
    fn schedule_retry(&mut self, abi: &str, build: &PackageVersion, builder: &str, now: Instant) -> Duration {
        let failures = self.retries.get(abi).and_then(|r| r.get(build)).map_or(0, |r| r.failures).saturating_add(1);
        let delay = self.backoff(failures);
        let retries = self.retries.entry(abi.to_string()).or_default();
        retries.insert(build.clone(), Retry { failures, until: now + delay, builder: builder.to_string() });
        delay
    }

    /// Asks the file juggler for the files of `result` from `from` on, until one must be sent;
    /// records the build when none is left. Each file is published under the name the
    /// database gives it ([`NameForFile`]): the wheel's newest file when that holds the same
    /// bytes, its own name, or its name with the next build tag. The slave sends every file,
    /// under its own name.
    fn next_file(
        &mut self,
        sockets: &Sockets,
        ctx: &Context<'_, Event>,
        identity: &[u8],
        build: PackageVersion,
        mut result: Box<BuildResult>,
        from: usize,
    ) -> SlaveReply {
        if self.slaves.get(identity).is_some_and(|slave| self.checking.contains_key(&slave.id)) {
            return self.next_check_file(sockets, ctx, identity, build, result, from);
        }
        let Some(expectation) = self.expectation(identity, &build) else { return SlaveReply::Done };
        let mut index = from;
        // A file whose conflict was resolved once: a second conflict means it could not be.
        let mut resolved: Option<String> = None;
        while index < result.files.len() {
            let file = result.files[index].clone();
            let own_tag = WheelName::parse(&file.filename).ok().and_then(|wheel| wheel.build_tag_rank().map(|(number, _)| number));
            if own_tag.is_some_and(|number| number >= BUILDER_TAG_LIMIT) {
                let reason = format!("its build tag's number is {BUILDER_TAG_LIMIT} or more; the master numbers rebuilds above a builder's tag");
                self.refuse_file(sockets, ctx, identity, &mut result, index, &reason);
                continue;
            }
            let request = NameForFile { package: build.package.clone(), filename: file.filename.clone(), sha256: file.sha256.clone() };
            let published = match sockets.db.call(request) {
                Ok(name) => renamed(&file, &name),
                Err(e) if e.kind() == ErrorKind::Refused => {
                    self.refuse_file(sockets, ctx, identity, &mut result, index, &e.to_string());
                    continue;
                }
                Err(e) => {
                    let reason = format!("the database cannot say under which name {} is published: {e}", file.filename);
                    return self.give_up(sockets, ctx, identity, &build, &reason);
                }
            };
            // Sent even when the same bytes are published: a slave shows it made a wheel by
            // sending it, not by naming its hash.
            let request = Expect {
                package: build.package.clone(),
                file: Box::new(published.clone()),
                expectation: Box::new(expectation.clone()),
                must_send: true,
                compare_with: None,
            };
            match sockets.fs.call(request) {
                Ok(Expected::Expecting { transfer }) => {
                    let Some(slave) = self.slaves.get_mut(identity) else { return SlaveReply::Done };
                    if published.filename != file.filename {
                        tracing::info!("{} from slave {} is to be published as {} (a name keeps its bytes, and installers take a wheel's newest build tag)", file.filename, slave.id, published.filename);
                    }
                    return slave.send(result, file.filename, transfer);
                }
                // Not answered to a `must_send` expectation; taken as it says all the same.
                Ok(Expected::AlreadyHave { file: described }) => {
                    self.note_published(identity, &build, &described.filename);
                    result.files[index] = *described;
                    index += 1;
                }
                Ok(Expected::Refused { reason }) => self.refuse_file(sockets, ctx, identity, &mut result, index, &reason),
                Ok(Expected::Conflict { reason }) => {
                    if resolved.as_deref() == Some(published.filename.as_str()) {
                        let reason = format!("{} was removed from the way and is there again: {reason}", published.filename);
                        return self.give_up(sockets, ctx, identity, &build, &reason);
                    }
                    match self.resolve_conflict(sockets, &build.package, &published.filename) {
                        Conflict::Removed => resolved = Some(published.filename),
                        // The database gave the name as free or as holding these bytes: it was
                        // recorded meanwhile, or the tree does not hold what the record says.
                        Conflict::Recorded => {
                            let reason = format!("{reason}; the database records {} with other bytes than it gave", published.filename);
                            return self.give_up(sockets, ctx, identity, &build, &reason);
                        }
                        Conflict::Unsettled(why) => return self.give_up(sockets, ctx, identity, &build, &format!("{reason}; {why}")),
                    }
                }
                Err(e) => {
                    let reason = format!("the master could not take {}: {e}", file.filename);
                    return self.give_up(sockets, ctx, identity, &build, &reason);
                }
            }
        }
        self.finish(sockets, ctx, identity, build, *result)
    }

    /// [`SlaveDriver::next_file`] for a cross-check: each file from `from` on is received and
    /// compared with the first build's file of the same wheel, never published; a file the
    /// first build has no counterpart of, or that the master refuses, is a difference. The
    /// verdict is recorded when none is left.
    fn next_check_file(
        &mut self,
        sockets: &Sockets,
        ctx: &Context<'_, Event>,
        identity: &[u8],
        build: PackageVersion,
        result: Box<BuildResult>,
        from: usize,
    ) -> SlaveReply {
        let Some(expectation) = self.expectation(identity, &build) else { return SlaveReply::Done };
        let Some(slave) = self.slaves.get_mut(identity) else { return SlaveReply::Done };
        let Some(checking) = self.checking.get_mut(&slave.id) else { return SlaveReply::Done };
        for index in from..result.files.len() {
            let file = &result.files[index];
            let Some(first) = cross_check::counterpart(&file.filename, &checking.check.files).map(str::to_string) else {
                checking.note(&file.filename, [format!("{}: the first build made no such wheel", file.filename)]);
                continue;
            };
            let request = Expect {
                package: build.package.clone(),
                file: Box::new(file.clone()),
                expectation: Box::new(expectation.clone()),
                must_send: true,
                compare_with: Some(first.clone()),
            };
            let reason = match sockets.fs.call(request) {
                Ok(Expected::Expecting { transfer }) => {
                    let filename = file.filename.clone();
                    return slave.send(result, filename, transfer);
                }
                Ok(Expected::Refused { reason }) => {
                    checking.note(&file.filename, [format!("{}: the master refuses it: {reason}", file.filename)]);
                    continue;
                }
                Ok(other) => format!("the file juggler answered {other:?} to a cross-check's file"),
                Err(e) => format!("the master could not take {}: {e}", file.filename),
            };
            return self.give_up(sockets, ctx, identity, &build, &reason);
        }
        self.finish(sockets, ctx, identity, build, *result)
    }

    /// Records what a cross-check found, with a rewrite of the project page, and tells
    /// monitors (a warning when the build was not reproduced). A failure that is not the
    /// package's is given up instead, and so is a second build past its time or memory limit
    /// (the second builder's limits may be lower than the first's): the check waits for its
    /// next builder. A failed command is a verdict.
    fn finish_check(&mut self, sockets: &Sockets, ctx: &Context<'_, Event>, identity: &[u8], build: PackageVersion, result: BuildResult) -> SlaveReply {
        let Some(slave) = self.slaves.get(identity) else { return SlaveReply::Done };
        let elapsed = slave.handed_out().map(|(started, _)| ctx.now().saturating_duration_since(started));
        let failed = !result.success || result.files.is_empty();
        if failed {
            if let Err(reason) = check_failure(&result, &slave.hello, elapsed) {
                return self.give_up(sockets, ctx, identity, &build, &reason);
            }
            if let Some(FailureKind::Timeout | FailureKind::OutOfMemory) = result.failure {
                let reason = "the second build ran past its builder's time or memory limit, which says nothing of the package";
                return self.give_up(sockets, ctx, identity, &build, reason);
            }
        }
        let Some(checking) = self.checking.get(&slave.id) else { return self.done(sockets, identity) };
        let check_id = checking.check.check_id;
        let verdict = if failed {
            let tail: Vec<String> = result.output.lines().rev().take(FAILURE_LINES).map(str::to_string).collect();
            let tail: Vec<String> = cross_check::bounded(tail.into_iter().rev().collect());
            Verdict::Failed { reason: format!("the second build failed: {}", tail.join("\n")) }
        } else {
            checking.verdict()
        };
        let what = format!("{} {} ({} on {}, again on {})", build.package, build.version, slave.hello.abi, checking.check.builder, slave.hello.host.label);
        let record = CheckRecord {
            check_id,
            builder: slave.hello.host.label.clone(),
            builder_key: slave.key.clone(),
            environment: slave.hello.environment.clone(),
            started_at: ctx.utc() - chrono::Duration::from_std(elapsed.unwrap_or_default()).unwrap_or_default(),
            duration: result.duration,
            verdict: verdict.clone(),
        };
        let id = slave.id;
        match sockets.db.call(LogCheck { check: Box::new(record), rewrite_at: ctx.utc() }) {
            Ok(()) => {
                let (level, text) = match &verdict {
                    Verdict::Reproduced => (NoticeLevel::Info, format!("cross-check of {what}: reproduced")),
                    Verdict::Differs { differences } => {
                        (NoticeLevel::Warning, format!("cross-check of {what}: NOT reproduced: {}", differences.join("; ")))
                    }
                    Verdict::Failed { .. } => (NoticeLevel::Warning, format!("cross-check of {what}: NOT reproduced: the second build failed")),
                };
                match level {
                    NoticeLevel::Info => tracing::info!("slave {id}: {text}"),
                    _ => tracing::warn!("slave {id}: {text}"),
                }
                notice(sockets, ctx, level, text);
                // LogCheck recorded the rewrite.
                web(sockets, WebRequest::Recorded { package: build.package.clone(), scope: RewriteScope::Project });
            }
            // Its build was removed meanwhile: nothing to record.
            Err(e) if e.kind() == ErrorKind::Refused => tracing::info!("slave {id}: cross-check of {what} not recorded: {e}"),
            Err(e) => return self.give_up(sockets, ctx, identity, &build, &format!("the database did not record the cross-check: {e}")),
        }
        // Recorded (or no longer wanted): its hold stays until it expires, so that a queue
        // computed before cannot hand it out again.
        self.checking.remove(&id);
        self.check_retries.remove(&check_id);
        self.done(sockets, identity)
    }

    /// What the files of the slave's build must be: a wheel of its release for its ABI and
    /// platform, sent by its key.
    fn expectation(&self, identity: &[u8], build: &PackageVersion) -> Option<FileExpectation> {
        let slave = self.slaves.get(identity)?;
        Some(FileExpectation {
            version: build.version.clone(),
            abi: slave.hello.abi.clone(),
            platform: slave.hello.platform.clone(),
            uploader: slave.key.clone(),
        })
    }

    /// A file published under this name with other bytes blocks the build's file. When no
    /// build records it and no build in progress holds it, it is left over from a build whose
    /// recording failed: it is removed so the file can be expected again. When that cannot be
    /// known or done now, the build is the infrastructure's to retry, not the package's fault.
    fn resolve_conflict(&self, sockets: &Sockets, package: &str, filename: &str) -> Conflict {
        let recorded = match sockets.db.call(PackageFiles { package: package.to_string() }) {
            Ok(files) => files.iter().any(|f| f.filename == filename),
            Err(e) => return Conflict::Unsettled(format!("the database cannot say whether {filename} is recorded: {e}")),
        };
        if recorded {
            return Conflict::Recorded;
        }
        if self.published.values().any(|(build, files)| build.package == package && files.iter().any(|f| f == filename)) {
            return Conflict::Unsettled(format!("{filename} belongs to a build not yet recorded"));
        }
        let request = RemoveOrphan { package: package.to_string(), filename: filename.to_string() };
        match sockets.fs.call(request) {
            Ok(Removal::Removed) => {
                tracing::warn!("removed {filename}, which no build records, so that its build can publish it");
                Conflict::Removed
            }
            other => Conflict::Unsettled(format!("{filename}, which no build records, cannot be removed: {other:?}")),
        }
    }

    /// Notes that `filename` is in the tree for the slave's build, which is to record it: until
    /// then no conflict removes it, and if the build is given up it is removed (unless a
    /// recorded build holds it).
    fn note_published(&mut self, identity: &[u8], build: &PackageVersion, filename: &str) {
        if let Some(slave) = self.slaves.get(identity) {
            self.published.entry(slave.id).or_insert_with(|| (build.clone(), Vec::new())).1.push(filename.to_string());
        }
    }

    /// Leaves a file the master refuses for what it is out of the build's record, noting why
    /// in the build's log: the build's fault.
    fn refuse_file(
        &mut self,
        sockets: &Sockets,
        ctx: &Context<'_, Event>,
        identity: &[u8],
        result: &mut BuildResult,
        index: usize,
        reason: &str,
    ) {
        let file = result.files.remove(index);
        let text = format!("{} not published: {reason}", file.filename);
        tracing::warn!("{text}");
        result.output.push_str(&format!("\n[piw-master] {text}\n"));
        if let Some(slave) = self.slaves.get(identity) {
            notice(sockets, ctx, NoticeLevel::Warning, format!("slave {}: {text}", slave.id));
        }
    }

    /// Asks the file juggler to verify a transfer; the slave is answered when the juggler
    /// is ([`SlaveDriver::on_verified`]), or when it has not answered in time
    /// ([`SlaveDriver::on_expire`]). Meanwhile the driver serves every other slave.
    fn ask_verification(&mut self, sockets: &Sockets, ctx: &Context<'_, Event>, transfer: TransferId, waiting: Verifying) -> anyhow::Result<()> {
        match sockets.verify.send_tagged(&transfer.to_be_bytes(), &Verify { transfer }.into(), LOCAL_SEND_TIMEOUT) {
            Ok(()) => {
                self.verifying.insert(transfer, waiting);
                Ok(())
            }
            Err(e) => {
                let reason = format!("the file juggler did not take the verification of {}: {e}", waiting.filename);
                self.answer_verification(sockets, ctx, waiting, Err(reason))
            }
        }
    }

    /// The file juggler answered a verification: the slave behind it gets its answer.
    fn on_verified(&mut self, sockets: &Sockets, ctx: &Context<'_, Event>) -> anyhow::Result<()> {
        let (tag, reply) = sockets.verify.recv_tagged()?;
        let transfer = <[u8; 8]>::try_from(tag.as_slice()).map(TransferId::from_be_bytes);
        let Ok(transfer) = transfer else { anyhow::bail!("the file juggler answered a verification with the tag {tag:?}") };
        let outcome = match Verify::reply(reply) {
            Ok(Ok(verification)) => Ok(verification),
            Ok(Err(error)) => Err(format!("the master could not publish the file of transfer {transfer}: {error}")),
            Err(other) => Err(format!("the file juggler answered a verification as {}", other.call_name())),
        };
        if let Some(waiting) = self.verifying.remove(&transfer) {
            return self.answer_verification(sockets, ctx, waiting, outcome);
        }
        match self.given_up.remove(&transfer) {
            // The slave was answered when the juggler took too long.
            Some(GivenUp { slave_id, build, filename, .. }) => {
                tracing::warn!("the verification of {filename} was answered after its build was given up");
                if let Ok(verification) = &outcome {
                    self.discard(sockets, slave_id, build, verification);
                }
            }
            None => tracing::warn!("the file juggler answered a verification nobody asked for: transfer {transfer}"),
        }
        Ok(())
    }

    /// Removes the file a verification published for a build that will not record it (its
    /// slave is gone, or the build was given up), unless a recorded build or another build in
    /// progress holds it.
    fn discard(&mut self, sockets: &Sockets, slave_id: SlaveId, build: PackageVersion, verification: &Verification) {
        if let Verification::Verified { file } = verification {
            tracing::info!("slave {slave_id}'s build of {} {} will not record {}", build.package, build.version, file.filename);
            self.remove_unrecorded(sockets, build, vec![file.filename.clone()]);
        }
    }

    /// Answers the slave behind a verification with what follows from `outcome`.
    fn answer_verification(&mut self, sockets: &Sockets, ctx: &Context<'_, Event>, waiting: Verifying, outcome: Result<Verification, String>) -> anyhow::Result<()> {
        let Some(slave) = self.slaves.get_mut(waiting.peer.identity()).filter(|slave| slave.id == waiting.slave_id) else {
            // Dropped meanwhile (revoked, killed): nobody to answer, no build to record.
            if let Ok(verification) = &outcome {
                self.discard(sockets, waiting.slave_id, waiting.build, verification);
            }
            return Ok(());
        };
        // The master kept the slave waiting: its silence counts from this answer.
        slave.last_seen = ctx.now();
        let Verifying { peer, build, result, filename, .. } = waiting;
        let answer = self.verified(sockets, ctx, peer.identity(), build, result, &filename, outcome);
        self.answer(sockets, ctx, &peer, answer)
    }

    /// What the slave does after the verification of `filename` ended with `outcome`: send the
    /// next file or the same again, or be done (the build recorded or given up).
    #[allow(clippy::too_many_arguments)]
    fn verified(
        &mut self,
        sockets: &Sockets,
        ctx: &Context<'_, Event>,
        identity: &[u8],
        build: PackageVersion,
        mut result: Box<BuildResult>,
        filename: &str,
        outcome: Result<Verification, String>,
    ) -> SlaveReply {
        let Some(index) = result.files.iter().position(|f| f.filename == filename) else {
            return self.done(sockets, identity);
        };
        let id = self.slaves.get(identity).map_or(0, |s| s.id);
        match outcome {
            Ok(Verification::Verified { file }) => {
                self.attempts.remove(&id);
                self.note_published(identity, &build, &file.filename);
                result.files[index] = *file;
                self.next_file(sockets, ctx, identity, build, result, index + 1)
            }
            Ok(Verification::Failed { reason }) => {
                let attempts = self.attempts.entry(id).or_insert(0);
                *attempts += 1;
                if *attempts >= MAX_SEND_ATTEMPTS {
                    self.attempts.remove(&id);
                    let reason = format!("{filename} failed verification {MAX_SEND_ATTEMPTS} times: {reason}");
                    self.give_up(sockets, ctx, identity, &build, &reason)
                } else {
                    tracing::warn!("{filename} from slave {id} failed verification, asking again: {reason}");
                    self.next_file(sockets, ctx, identity, build, result, index)
                }
            }
            Ok(Verification::Compared { differences, .. }) => {
                self.attempts.remove(&id);
                if let Some(checking) = self.checking.get_mut(&id) {
                    checking.note(filename, differences);
                }
                self.next_file(sockets, ctx, identity, build, result, index + 1)
            }
            Ok(Verification::Refused { reason }) if self.checking.contains_key(&id) => {
                self.attempts.remove(&id);
                if let Some(checking) = self.checking.get_mut(&id) {
                    checking.note(filename, [format!("{filename}: the master refuses it: {reason}")]);
                }
                self.next_file(sockets, ctx, identity, build, result, index + 1)
            }
            Ok(Verification::Refused { reason }) => {
                self.attempts.remove(&id);
                self.refuse_file(sockets, ctx, identity, &mut result, index, &reason);
                self.next_file(sockets, ctx, identity, build, result, index)
            }
            Ok(Verification::Conflict { reason }) => {
                let reason = format!("the master could not publish {filename}: {reason}");
                self.give_up(sockets, ctx, identity, &build, &reason)
            }
            Err(reason) => self.give_up(sockets, ctx, identity, &build, &reason),
        }
    }

    /// Records a finished build (a failure of the package's own, or a success whose files are
    /// all published), asks for its log and pages to be written, and lets the slave go idle.
    /// A failure that is not the package's is given up instead (see [`SlaveDriver::give_up`]).
    fn finish(&mut self, sockets: &Sockets, ctx: &Context<'_, Event>, identity: &[u8], build: PackageVersion, mut result: BuildResult) -> SlaveReply {
        let Some(slave) = self.slaves.get(identity) else { return SlaveReply::Done };
        if self.checking.contains_key(&slave.id) {
            return self.finish_check(sockets, ctx, identity, build, result);
        }
        if !result.success || result.files.is_empty() {
            let elapsed = slave.handed_out().map(|(started, _)| ctx.now().saturating_duration_since(started));
            if let Err(reason) = check_failure(&result, &slave.hello, elapsed) {
                return self.give_up(sockets, ctx, identity, &build, &reason);
            }
        }
        if result.success && result.files.is_empty() {
            result.success = false;
            result.failure.get_or_insert(FailureKind::Build);
        }
        let success = result.success;
        let (failure, duration) = ((!success).then(|| result.failure.unwrap_or(FailureKind::Build)), result.duration);
        let handed_out = slave.handed_out().map_or(Duration::ZERO, |(started, _)| ctx.now().saturating_duration_since(started));
        let mut record = BuildRecord {
            built_by: slave.id,
            builder: slave.hello.host.label.clone(),
            package: build.package.clone(),
            version: build.version.clone(),
            abi: slave.hello.abi.clone(),
            started_at: ctx.utc() - chrono::Duration::from_std(handed_out).unwrap_or_default(),
            builder_key: slave.key.clone(),
            environment: slave.hello.environment.clone(),
            source: slave.handed_out().map(|(_, source)| source.clone()),
            result,
        };
        // The log says what it is the log of, from the master's own record.
        record.result.output = format!("{}{}", record.log_header(), record.result.output);
        let output = record.result.output.clone();
        let (slave_id, abi) = (slave.id, slave.hello.abi.clone());
        let rewrite = record.pending_rewrite(ctx.utc());
        let cross_check = success && cross_check::sampled(self.config.cross_check_share);
        // Sent once: an unanswered request may have been recorded all the same.
        match sockets.db.call(LogBuild { build: Box::new(record), rewrite_at: rewrite.added_at, cross_check }) {
            Ok(build_id) => {
                // Its files are the build's now.
                self.published.remove(&slave_id);
                if let Some(retries) = self.retries.get_mut(&abi) {
                    retries.remove(&build);
                }
                tracing::info!(
                    "build {build_id}: {} {} on slave {slave_id} {}",
                    build.package,
                    build.version,
                    if success { "succeeded" } else { "failed" }
                );
                let finished = FinishedBuild { package: build.package.clone(), version: build.version.clone(), failure, duration, build_id };
                publish(sockets, ctx, slave_id, SlaveEvent::Finished(finished));
                web(sockets, WebRequest::Built { build_id, output, rewrite });
                self.want_refresh(format!("{} {} built", build.package, build.version));
                self.done(sockets, identity)
            }
            Err(e) => {
                if matches!(e, CallError::Transport { .. }) {
                    // No answer: the build may yet be recorded, with its files. They stay; if
                    // it was not, a file in the way of the rebuild is removed then, or by the
                    // consistency check at the next start.
                    self.published.remove(&slave_id);
                }
                self.give_up(sockets, ctx, identity, &build, &format!("the database did not record the build: {e}"))
            }
        }
    }

    /// Lets the slave go idle. Files of its build that were published but not recorded (the
    /// build was abandoned, or could not be recorded) are removed again.
    fn done(&mut self, sockets: &Sockets, identity: &[u8]) -> SlaveReply {
        match self.slaves.get_mut(identity) {
            Some(slave) => {
                let id = slave.id;
                let answer = slave.done();
                self.end_build(sockets, id);
                answer
            }
            None => SlaveReply::Done,
        }
    }

    /// Forgets a slave's build that ended, recorded or not: the files it published unrecorded, which are removed (except any that a recorded build or
    /// another build in progress holds: another slave or an import may have published the
    /// same file meanwhile), and a cross-check it was, let go when it was not recorded (and
    /// returned then).
    fn end_build(&mut self, sockets: &Sockets, slave_id: SlaveId) -> Option<QueuedCheck> {
        if let Some((build, files)) = self.published.remove(&slave_id) {
            self.remove_unrecorded(sockets, build, files);
        }
        // A check still here was not recorded: it may be handed out again (unless another
        // slave holds it: handed out again once this one's hold ran out).
        let check = self.checking.remove(&slave_id)?.check;
        if !self.checking.values().any(|c| c.check.check_id == check.check_id) {
            self.checks_held.remove(&check.check_id);
        }
        Some(check)
    }

    /// Removes `files` of `build`, which will not record them, except any that a recorded
    /// build or a build in progress holds.
    fn remove_unrecorded(&mut self, sockets: &Sockets, build: PackageVersion, files: Vec<String>) {
        let request = VersionFiles { package: build.package.clone(), version: build.version.clone() };
        let recorded: Vec<String> = match sockets.db.call(request) {
            Ok(files) => files.into_iter().map(|f| f.filename).collect(),
            Err(e) => {
                // Better an unlinked file on disk than a removed file a build recorded.
                tracing::error!("cannot tell which files of {} {} are recorded, so none is removed: {e}", build.package, build.version);
                return;
            }
        };
        // A file another build in progress holds too (it found the same bytes there) is its.
        let held = |file: &String| self.published.values().any(|(other, theirs)| other.package == build.package && theirs.contains(file));
        let files: Vec<String> = files.into_iter().filter(|f| !recorded.contains(f) && !held(f)).collect();
        if files.is_empty() {
            return;
        }
        tracing::warn!("removing {} published file(s) of the unrecorded build of {} {}: {}", files.len(), build.package, build.version, files.join(", "));
        web(sockets, WebRequest::DeleteVersion { package: build.package, version: build.version, files, builds: Vec::new() });
    }

    /// Lets the release a slave holds be handed out again.
    fn release(&mut self, identity: &[u8], now: Instant) {
        let Some(slave) = self.slaves.get(identity) else { return };
        if let Some(build) = slave.build()
            && let Some(exclusions) = self.building.get_mut(&slave.hello.abi)
        {
            exclusions.insert(build.clone(), now);
        }
    }

    /// Forgets a slave that has been removed from `slaves`; its build goes back to the queue,
    /// after a back-off unless the slave said goodbye (a builder that crashes or goes silent on
    /// a release is an infrastructure failure of it).
    fn drop_slave(&mut self, sockets: &Sockets, ctx: &Context<'_, Event>, slave: Slave, reason: &str, goodbye: bool) {
        let holding = slave.build().map(|b| format!(" (it was building {} {})", b.package, b.version)).unwrap_or_default();
        tracing::info!("slave {} ({}) gone: {reason}{holding}", slave.id, slave.hello.host.label);
        self.attempts.remove(&slave.id);
        if let Some(check) = self.end_build(sockets, slave.id) {
            // A check's release is not the queue's: only the check waits for its next builder.
            if !goodbye {
                self.infrastructure_failures += 1;
                self.check_given_up(sockets, ctx, check.check_id, &check.release, &slave.hello.host.label);
            } else {
                self.want_refresh(format!("slave {} dropped the cross-check of {} {}", slave.id, check.release.package, check.release.version));
            }
        } else if let Some(build) = slave.build() {
            if !goodbye {
                self.infrastructure_failures += 1;
                self.schedule_retry(&slave.hello.abi, build, &slave.hello.host.label, ctx.now());
            }
            if let Some(exclusions) = self.building.get_mut(&slave.hello.abi) {
                exclusions.remove(build);
            }
            self.want_refresh(format!("slave {} dropped its build of {} {}", slave.id, build.package, build.version));
        }
        publish(sockets, ctx, slave.id, SlaveEvent::Gone { reason: format!("{reason}{holding}") });
        self.check_drift(sockets, ctx);
    }

    fn on_builds(&mut self, sockets: &Sockets, now: Instant) -> anyhow::Result<()> {
        let BuildQueueUpdate { queues, checks } = sockets.builds.recv()?;
        self.checks = checks.into_iter().map(|(abi, checks)| (abi, checks.into())).collect();
        self.deleted.retain(|_, until| *until > now);
        for exclusions in self.building.values_mut() {
            exclusions.retain(|_, until| *until > now);
        }
        self.checks_held.retain(|_, until| *until > now);
        self.check_retries.retain(|_, retry| now.saturating_duration_since(retry.last) < CHECK_RETRY_KEPT);
        // A release not failed again for a day starts its back-off afresh.
        for retries in self.retries.values_mut() {
            retries.retain(|_, retry| now.saturating_duration_since(retry.until) < RETRY_FORGOTTEN);
        }
        self.queues = queues
            .into_iter()
            .map(|(abi, queue)| {
                let building = self.building.get(&abi);
                let queue = queue
                    .into_iter()
                    .filter(|b| !building.is_some_and(|x| x.contains_key(&b.release)) && !is_deleted(&self.deleted, &b.release, now))
                    .collect();
                (abi, queue)
            })
            .collect();
        self.send_queue_lengths(sockets);
        Ok(())
    }

    /// Asks for a refresh of the queue at the next [`Event::Flush`].
    fn want_refresh(&mut self, reason: String) {
        match &mut self.refresh {
            Some((_, folded)) => *folded += 1,
            None => self.refresh = Some((reason, 0)),
        }
    }

    /// Sends what was folded: the refresh request and the queue lengths.
    fn flush(&mut self, sockets: &Sockets) {
        if let Some((reason, folded)) = self.refresh.take() {
            let reason = if folded == 0 { reason } else { format!("{reason}, and {folded} more") };
            if let Err(e) = sockets.trigger.send(&ArchitectTrigger::Refresh { reason }, LOCAL_SEND_TIMEOUT) {
                tracing::warn!("cannot ask the architect for a new queue: {e}");
            }
        }
        if self.lengths_changed {
            self.send_queue_lengths(sockets);
        }
    }

    fn send_queue_lengths(&mut self, sockets: &Sockets) {
        self.lengths_changed = false;
        let lengths = self.queues.iter().map(|(abi, q)| (abi.clone(), q.len() as u64)).collect();
        if let Err(e) = sockets.stats.send(&StatsUpdate::Queues { lengths }, LOCAL_SEND_TIMEOUT) {
            tracing::debug!("queue lengths not sent to the stats task: {e}");
        }
    }

    fn on_command(&mut self, sockets: &Sockets, ctx: &Context<'_, Event>) -> anyhow::Result<()> {
        let (peer, command) = sockets.commands.recv()?;
        let SlaveCommand { target, action } = command?;
        let affected: Vec<&mut Slave> = match target {
            SlaveTarget::All => self.slaves.values_mut().collect(),
            SlaveTarget::One(id) => self.slaves.values_mut().filter(|s| s.id == id).collect(),
        };
        if let (SlaveTarget::One(slave_id), true) = (target, affected.is_empty()) {
            sockets.commands.send(&peer, &SlaveCommandReply::UnknownSlave { slave_id })?;
            return Ok(());
        }
        let mut ids = Vec::new();
        for slave in affected {
            match action {
                SlaveAction::Sleep => slave.flags.sleeping = true,
                // Wake undoes what stops the slave's work; a change to its host waits on.
                SlaveAction::Wake => slave.flags = Flags { scale: slave.flags.scale, ..Flags::default() },
                SlaveAction::Skip => slave.flags.skip = slave.build().is_some(),
                SlaveAction::Kill => slave.flags.kill = true,
                SlaveAction::AddBuilder => slave.flags.scale = (slave.flags.scale + 1).min(Flags::MAX_SCALE),
                SlaveAction::RetireBuilder => slave.flags.scale = (slave.flags.scale - 1).max(-Flags::MAX_SCALE),
            }
            ids.push(slave.id);
        }
        ids.sort_unstable();
        if !ids.is_empty() {
            let list: Vec<String> = ids.iter().map(ToString::to_string).collect();
            notice(sockets, ctx, NoticeLevel::Info, format!("{action:?} slave(s) {}: takes effect at their next request", list.join(", ")));
        }
        sockets.commands.send(&peer, &SlaveCommandReply::Applied { slaves: ids })?;
        Ok(())
    }

    fn on_release_notice(&mut self, sockets: &Sockets, ctx: &Context<'_, Event>) -> anyhow::Result<()> {
        let (peer, notice_msg) = sockets.release_notices.recv()?;
        let now = ctx.now();
        let gone = match notice_msg? {
            ReleaseNotice::Package { package } => PackageVersion { package, version: String::new() },
            ReleaseNotice::Version { package, version } => PackageVersion { package, version },
            ReleaseNotice::BuildAgain { releases } => {
                // A release a slave of the ABI builds now stays held there.
                let built: BTreeSet<(&str, &PackageVersion)> =
                    self.slaves.values().filter_map(|s| Some((s.hello.abi.as_str(), s.build()?))).collect();
                for (abi, exclusions) in &mut self.building {
                    for again in &releases {
                        if !built.contains(&(abi.as_str(), again)) {
                            exclusions.remove(again);
                        }
                    }
                }
                sockets.release_notices.send(&peer, &ReleaseAck::Done)?;
                return Ok(());
            }
        };
        self.deleted.insert(gone.clone(), now + DELETED_EXCLUSION);
        for queue in self.queues.values_mut() {
            queue.retain(|b| !is_deleted(&self.deleted, &b.release, now));
        }
        for slave in self.slaves.values_mut() {
            if let Some(build) = slave.build()
                && matches(&gone, build)
            {
                tracing::info!("{} {} was deleted: slave {} abandons it", build.package, build.version, slave.id);
                slave.flags.skip = true;
            }
        }
        self.send_queue_lengths(sockets);
        sockets.release_notices.send(&peer, &ReleaseAck::Done)?;
        Ok(())
    }

    /// Drops the slaves whose keys were revoked since the last check (their builds go back to
    /// the queue); their next request is refused.
    fn on_revocations(&mut self, sockets: &Sockets, ctx: &Context<'_, Event>) {
        let Some(ring) = sockets.gate.keyring() else { return };
        let generation = ring.generation();
        if generation == self.keys_checked {
            return;
        }
        self.keys_checked = generation;
        let refused: Vec<(Vec<u8>, String)> = self
            .slaves
            .iter()
            .filter_map(|(identity, slave)| sockets.gate.check(slave.key.as_deref()).err().map(|refusal| (identity.clone(), refusal.to_string())))
            .collect();
        for (identity, reason) in refused {
            if let Some(slave) = self.slaves.remove(&identity) {
                notice(sockets, ctx, NoticeLevel::Warning, format!("slave {} ({}) dropped: {reason}", slave.id, slave.hello.host.label));
                self.drop_slave(sockets, ctx, slave, &reason, false);
            }
        }
    }

    fn on_expire(&mut self, sockets: &Sockets, ctx: &Context<'_, Event>) {
        let now = ctx.now();
        let overdue: Vec<TransferId> =
            self.verifying.iter().filter(|(_, v)| now.saturating_duration_since(v.asked) >= FS_TIMEOUT).map(|(t, _)| *t).collect();
        for transfer in overdue {
            if let Some(waiting) = self.verifying.remove(&transfer) {
                let reason = format!("the file juggler did not answer the verification of {} within {FS_TIMEOUT:?}", waiting.filename);
                let given_up = GivenUp { slave_id: waiting.slave_id, build: waiting.build.clone(), filename: waiting.filename.clone(), at: now };
                self.given_up.insert(transfer, given_up);
                if let Err(e) = self.answer_verification(sockets, ctx, waiting, Err(reason)) {
                    tracing::warn!("cannot answer a slave whose verification went unanswered: {e}");
                }
            }
        }
        // A juggler that never answers (it restarted, say) leaves the consistency check at the
        // next start to find any file in the way.
        self.given_up.retain(|_, given_up| now.saturating_duration_since(given_up.at) < GIVEN_UP_KEPT);
        // A slave waiting for its verification's answer is quiet because of the master.
        let waiting: HashSet<&[u8]> = self.verifying.values().map(|v| v.peer.identity()).collect();
        let silent: Vec<Vec<u8>> =
            self.slaves.iter().filter(|(id, s)| s.expired(now) && !waiting.contains(id.as_slice())).map(|(id, _)| id.clone()).collect();
        for identity in silent {
            if let Some(slave) = self.slaves.remove(&identity) {
                let reason = format!("silent for more than its busy timeout ({:?})", slave.hello.busy_timeout);
                notice(sockets, ctx, NoticeLevel::Warning, format!("slave {} ({}) dropped: {reason}", slave.id, slave.hello.host.label));
                self.drop_slave(sockets, ctx, slave, &reason, false);
            }
        }
    }
}

impl Task for SlaveDriver {
    type Sockets = Sockets;
    type Event = Event;
    // Slaves are still answered while paused: they are told to sleep.
    const PAUSE: PauseMode = PauseMode::Timers;

    fn poll_sockets<'s>(&self, sockets: &'s Sockets) -> Vec<(Event, &'s zmq::Socket)> {
        vec![
            (Event::Slave, sockets.slaves.socket()),
            (Event::Builds, sockets.builds.socket()),
            (Event::Command, sockets.commands.socket()),
            (Event::ReleaseNotice, sockets.release_notices.socket()),
            (Event::Verified, sockets.verify.socket()),
        ]
    }

    fn timers(&self) -> Vec<(Event, Duration)> {
        vec![(Event::Expire, EXPIRY_CHECK), (Event::Revocations, REVOCATION_CHECK)]
    }

    fn handle(&mut self, event: Event, sockets: &mut Sockets, ctx: &mut Context<'_, Event>) -> anyhow::Result<()> {
        let outcome = match event {
            Event::Slave => self.on_slave(sockets, ctx),
            Event::Builds => self.on_builds(sockets, ctx.now()),
            Event::Command => self.on_command(sockets, ctx),
            Event::ReleaseNotice => self.on_release_notice(sockets, ctx),
            Event::Verified => self.on_verified(sockets, ctx),
            Event::Revocations => {
                self.on_revocations(sockets, ctx);
                Ok(())
            }
            Event::Expire => {
                self.on_expire(sockets, ctx);
                Ok(())
            }
            Event::Flush => {
                self.flush(sockets);
                Ok(())
            }
        };
        if self.refresh.is_some() || self.lengths_changed {
            // Keeps an earlier flush that is due already.
            ctx.schedule(Event::Flush, FOLD_WITHIN);
        }
        outcome
    }

    fn on_quit(&mut self, sockets: &mut Sockets) {
        // Slaves learn of the shutdown when their next request goes unanswered; their builds
        // are unrecorded and stay in the queue.
        let building = self.slaves.values().filter(|s| !matches!(s.stage, Stage::Idle)).count();
        if building > 0 {
            tracing::info!("stopping with {building} build(s) in progress; they will be handed out again");
        }
        // The architect and the stats task stop after this task.
        self.flush(sockets);
    }
}

/// `file` described under the name `name`, the same wheel with another build tag (or itself).
fn renamed(file: &WheelFile, name: &str) -> WheelFile {
    let mut renamed = file.clone();
    if name != file.filename {
        renamed.build_tag = WheelName::parse(name).ok().and_then(|wheel| wheel.build);
        renamed.filename = name.to_string();
    }
    renamed
}

/// Whether `build` falls under the deletion `gone` (an empty version means every version).
fn matches(gone: &PackageVersion, build: &PackageVersion) -> bool {
    gone.package == build.package && (gone.version.is_empty() || gone.version == build.version)
}

fn is_deleted(deleted: &Exclusions, build: &PackageVersion, now: Instant) -> bool {
    deleted.iter().any(|(gone, until)| *until > now && matches(gone, build))
}

/// Refuses hellos whose facts the driver cannot use or show, or whose timeouts pass the
/// master's limits.
fn check_hello(hello: &SlaveHello, limits: &SlaveLimits) -> Result<(), String> {
    let fields = [
        ("abi", &hello.abi),
        ("platform", &hello.platform),
        ("py_version", &hello.py_version),
        ("label", &hello.host.label),
        ("os_name", &hello.host.os_name),
        ("os_version", &hello.host.os_version),
        ("board_revision", &hello.host.board_revision),
        ("board_serial", &hello.host.board_serial),
    ];
    for (name, value) in fields {
        if value.len() > MAX_HELLO_FIELD || value.chars().any(char::is_control) {
            return Err(format!("hello field {name} is longer than {MAX_HELLO_FIELD} bytes or holds control characters"));
        }
    }
    if let Some(problem) = hello.environment_problem() {
        return Err(format!("hello: {problem}"));
    }
    let tag_ok = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
    if !tag_ok(&hello.abi) || !tag_ok(&hello.platform) {
        return Err(format!("hello names no usable ABI and platform ({:?}, {:?})", hello.abi, hello.platform));
    }
    if hello.busy_timeout.is_zero() || hello.build_timeout.is_zero() {
        return Err("hello's build and busy timeouts must be more than zero".into());
    }
    if hello.build_timeout > limits.max_build_timeout {
        return Err(format!(
            "hello's build timeout {} is longer than this master allows ({}, --max-build-timeout)",
            HumanDuration(hello.build_timeout),
            HumanDuration(limits.max_build_timeout)
        ));
    }
    if hello.busy_timeout > limits.max_busy_timeout {
        return Err(format!(
            "hello's busy timeout {} is longer than this master allows ({}, --max-busy-timeout)",
            HumanDuration(hello.busy_timeout),
            HumanDuration(limits.max_busy_timeout)
        ));
    }
    Ok(())
}

/// The last line of a build log, for a notice: the slave's own account of a failure that
/// ended the build early, cut short and stripped of control characters (the words are the
/// slave's).
fn last_words(output: &str) -> String {
    let line = output.lines().rev().find(|line| !line.trim().is_empty()).unwrap_or("(no log)");
    let words = crate::access_log::clean(line, usize::MAX);
    if words.chars().count() > LAST_WORDS { format!("{}…", crate::access_log::clean(line, LAST_WORDS)) } else { words }
}

/// "at once", or "in T or later": when something given up is tried again.
fn when(delay: Duration) -> String {
    match delay {
        Duration::ZERO => "at once".to_string(),
        delay => format!("in {} or later", HumanDuration(delay)),
    }
}

/// Until when a release handed to `slave` stays its: the slave may download the source for a
/// while before its build timeout starts. A far future is as good as none.
fn hold_until(slave: &Slave, now: Instant) -> Instant {
    let hold = slave.hello.build_timeout.saturating_add(SourceFile::DOWNLOAD_LIMIT + HOLD_MARGIN);
    now.checked_add(hold).unwrap_or(now + RETRY_LONGEST)
}

/// Whether a slave's report of a failed build (or one that made no wheel) shows that the build
/// ran and failed, so that the failure is the package's: `Err` says why it does not, and the
/// failure is then the infrastructure's. `elapsed` is the time since the build was handed out,
/// which the build cannot have outlasted.
fn check_failure(result: &BuildResult, hello: &SlaveHello, elapsed: Option<Duration>) -> Result<(), String> {
    let kind = match result.failure {
        Some(FailureKind::NoSpace) => return Err("the builder ran out of disk space".into()),
        Some(FailureKind::Builder) => return Err("the builder itself failed (see its log)".into()),
        Some(FailureKind::Source) => return Err(format!("the source could not be had: {}", last_words(&result.output))),
        Some(kind) => kind,
        None => FailureKind::Build,
    };
    let shown = |duration: Duration| HumanDuration(duration).to_string();
    if result.output.trim().is_empty() {
        return Err("the slave reports a failure without a build log".into());
    }
    if result.duration.is_zero() {
        return Err("the slave reports a failed build that took no time".into());
    }
    if let Some(elapsed) = elapsed
        && result.duration > elapsed.saturating_add(CLOCK_SLACK)
    {
        return Err(format!("the slave reports a build of {}, {} after handing it out", shown(result.duration), shown(elapsed)));
    }
    match kind {
        FailureKind::Build if !result.success && result.exit_status == Some(0) => {
            Err("the slave reports a failed build whose command exited 0".into())
        }
        FailureKind::Timeout if result.duration.saturating_add(CLOCK_SLACK) < hello.build_timeout => Err(format!(
            "the slave reports a timeout after {}, before its build timeout of {}",
            shown(result.duration),
            shown(hello.build_timeout)
        )),
        _ => Ok(()),
    }
}

/// A slave's host figures as monitors are shown them: a load or a temperature that is not a
/// number, or not one a host can have, is shown as 0.
fn believable(stats: &HostStats) -> HostStats {
    let bounded = |value: f64, low: f64, high: f64| if value.is_finite() && (low..=high).contains(&value) { value } else { 0.0 };
    HostStats { load_average: bounded(stats.load_average, 0.0, 1e6), cpu_temp: bounded(stats.cpu_temp, -273.0, 1000.0), ..stats.clone() }
}


fn reply(sockets: &Sockets, peer: &Peer, answer: &SlaveReply) -> anyhow::Result<()> {
    if let Err(e) = sockets.slaves.send(peer, answer) {
        // The slave went away between its request and our answer; it will say hello again.
        tracing::info!("cannot answer slave {peer}: {e}");
    }
    Ok(())
}

fn publish(sockets: &Sockets, ctx: &Context<'_, Event>, slave_id: SlaveId, event: SlaveEvent) {
    let event = StatusEvent::Slave { slave_id, at: ctx.utc(), event };
    if let Err(e) = sockets.status.send(&event, LOCAL_SEND_TIMEOUT) {
        tracing::debug!("slave status not sent: {e}");
    }
}

fn notice(sockets: &Sockets, ctx: &Context<'_, Event>, level: NoticeLevel, text: String) {
    if let Err(e) = sockets.status.send(&StatusEvent::Notice { at: ctx.utc(), level, text }, LOCAL_SEND_TIMEOUT) {
        tracing::debug!("notice not sent: {e}");
    }
}

/// Hands a request to the index writer. Its failure loses no data (the build is recorded);
/// the pages are rewritten at the next change of the package or a full rebuild.
fn web(sockets: &Sockets, request: WebRequest) {
    if let Err(e) = request.send_to(&sockets.web) {
        tracing::error!("{e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_figures_no_host_has_are_shown_as_zero() {
        let stats = HostStats { load_average: f64::NAN, cpu_temp: f64::INFINITY, disk_free: 7, ..HostStats::default() };
        let shown = believable(&stats);
        assert_eq!((shown.load_average, shown.cpu_temp, shown.disk_free), (0.0, 0.0, 7));
        let stats = HostStats { load_average: 1.5, cpu_temp: 48.0, ..HostStats::default() };
        assert_eq!(believable(&stats), stats);
    }
}
