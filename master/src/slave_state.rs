//! The slave driver's view of one slave: where its conversation stands ([`Stage`]), the
//! operator's flags, and the one function ([`Slave::on_request`]) that decides how every
//! request is answered. No I/O happens here: the decision tells the slave driver what to do
//! (find work, record a build, start or verify a transfer), and the driver reports back
//! through the methods that move the conversation on ([`Slave::start_build`],
//! [`Slave::sleep`], [`Slave::send`], [`Slave::done`]).
//!
//! The conversation, by the reply the slave was last sent:
//!
//! | stage | after replying | the slave may say |
//! |---|---|---|
//! | `Idle` | `Ack`, `Sleep`, `Done` | `Idle` |
//! | `Building` | `Build`, `Cont` | `Busy`, `Built` |
//! | `Sending` | `Send` | `Sent` (for that file) |
//!
//! `Bye` is allowed at any stage. Anything else is a protocol error, and so is a `Built` that
//! lists a file twice: the slave is told to `Die` and forgotten, and the master goes on.

use std::time::{Duration, Instant};

use crate::access_log::clean;
use piwheels_common::protocols::{BuildResult, PackageVersion, SlaveHello, SlaveId, SlaveReply, SlaveRequest, SourceFile, TransferId, WheelFile};

/// Extra time the master allows beyond a slave's own build timeout before it abandons the
/// build itself (the slave should have killed it already).
pub const BUILD_TIMEOUT_GRACE: Duration = Duration::from_secs(60);

/// Where a slave's conversation stands.
#[derive(Debug, Clone, PartialEq)]
pub enum Stage {
    /// Waiting for the slave to ask for work.
    Idle,
    /// The slave is building this release.
    Building {
        /// The release.
        build: PackageVersion,
        /// When it was handed out.
        started: Instant,
        /// The source it was handed with.
        source: SourceFile,
    },
    /// The slave is sending a file of a finished build.
    Sending {
        /// The release.
        build: PackageVersion,
        /// When it was handed out.
        started: Instant,
        /// The source it was handed with.
        source: SourceFile,
        /// The build's outcome, kept until every file is in.
        result: Box<BuildResult>,
        /// The file being sent.
        filename: String,
        /// Its transfer.
        transfer: TransferId,
    },
}

/// What an operator asked of this slave.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flags {
    /// Hand it no new builds.
    pub sleeping: bool,
    /// Abandon its current build at the next contact.
    pub skip: bool,
    /// Tell it to exit at the next contact.
    pub kill: bool,
    /// Builders its host is to add (positive) or retire (negative), one per contact.
    pub scale: i8,
}

impl Flags {
    /// Most builders an operator's presses may add or retire before the host hears of them.
    pub const MAX_SCALE: i8 = 16;
}

/// What the slave driver must do about a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Send this reply (the stage has moved already).
    Reply(SlaveReply),
    /// The slave may build: find it a release, then call [`Slave::start_build`], or
    /// [`Slave::sleep`] when there is none.
    FindWork,
    /// The build failed or made no files: record it, then reply with [`Slave::done`].
    RecordFailure {
        /// The release.
        build: PackageVersion,
        /// Its outcome.
        result: Box<BuildResult>,
    },
    /// The build made files: expect the first with the file juggler and reply with
    /// [`Slave::send`] (or record the build and reply [`Slave::done`] if none needs sending).
    StartTransfer {
        /// The release.
        build: PackageVersion,
        /// Its outcome, with the files.
        result: Box<BuildResult>,
    },
    /// The slave says it sent a file: verify it with the file juggler, then send the next one
    /// or record the build.
    VerifyFile {
        /// The release.
        build: PackageVersion,
        /// The build's outcome.
        result: Box<BuildResult>,
        /// The file.
        filename: String,
        /// Its transfer.
        transfer: TransferId,
    },
    /// The slave said goodbye: forget it; a build it held is handed out again later.
    Forget {
        /// Its reason.
        reason: String,
    },
    /// Protocol error or killed: reply `Die` with this reason and forget the slave.
    Die {
        /// Why.
        reason: String,
    },
}

/// One connected slave.
#[derive(Debug, Clone)]
pub struct Slave {
    /// Its id for this connection.
    pub id: SlaveId,
    /// What it said about itself.
    pub hello: SlaveHello,
    /// When it was last heard from.
    pub last_seen: Instant,
    /// Where its conversation stands.
    pub stage: Stage,
    /// What an operator asked of it.
    pub flags: Flags,
    /// Why the master holds work from it (its environment drifted), if it does.
    pub held: Option<String>,
    /// When its host figures were last passed on to monitors.
    pub stats_published: Option<Instant>,
    /// The user id of its connection (its public key), when the slave socket authenticates:
    /// a revoked key drops the slave.
    pub key: Option<String>,
    /// The network address its connection comes from (tcp), for the cap on slaves per address.
    pub address: Option<String>,
}

impl Slave {
    /// A slave that has just been acknowledged.
    pub fn new(id: SlaveId, hello: SlaveHello, now: Instant) -> Slave {
        Slave { id, hello, last_seen: now, stage: Stage::Idle, flags: Flags::default(), held: None, stats_published: None, key: None, address: None }
    }

    /// Whether it has been silent for longer than it allowed (its busy timeout).
    pub fn expired(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.last_seen) > self.hello.busy_timeout
    }

    /// When the release it holds was handed out, and the source it was handed with, if it
    /// holds one (building it or sending its files).
    pub fn handed_out(&self) -> Option<(Instant, &SourceFile)> {
        match &self.stage {
            Stage::Building { started, source, .. } | Stage::Sending { started, source, .. } => Some((*started, source)),
            Stage::Idle => None,
        }
    }

    /// The release it holds, if any.
    pub fn build(&self) -> Option<&PackageVersion> {
        match &self.stage {
            Stage::Idle => None,
            Stage::Building { build, .. } | Stage::Sending { build, .. } => Some(build),
        }
    }

    /// Decides how to answer `request`. `master_paused` is true while the master is paused.
    pub fn on_request(&mut self, request: SlaveRequest, now: Instant, master_paused: bool) -> Decision {
        self.last_seen = now;
        if let SlaveRequest::Bye { reason } = request {
            // Shown to monitors and logged: the slave's words, cleaned and cut.
            return Decision::Forget { reason: clean(&reason, MAX_REASON) };
        }
        if self.flags.kill {
            return Decision::Die { reason: "stopped by an operator".into() };
        }
        let asks_or_builds = match (&self.stage, &request) {
            (Stage::Idle, SlaveRequest::Idle { .. }) => true,
            // A build past its time is abandoned first.
            (Stage::Building { started, .. }, SlaveRequest::Busy { .. }) => {
                now.saturating_duration_since(*started) <= self.hello.build_timeout.saturating_add(BUILD_TIMEOUT_GRACE)
            }
            _ => false,
        };
        if asks_or_builds && self.flags.scale != 0 && !self.flags.skip {
            // An operator's change to the host's builders takes the place of a `Sleep` (idle)
            // or a `Cont` (busy); the stage stays as it is.
            let add = self.flags.scale > 0;
            self.flags.scale -= self.flags.scale.signum();
            return Decision::Reply(if add { SlaveReply::AddBuilder } else { SlaveReply::RetireBuilder });
        }
        let stage = std::mem::replace(&mut self.stage, Stage::Idle);
        match (stage, request) {
            (Stage::Idle, SlaveRequest::Idle { declined, .. }) => {
                if let Some(reason) = declined {
                    // The slave logs each change of its reason; the master would repeat it every few seconds.
                    tracing::debug!("slave {} declines work: {}", self.id, clean(&reason, MAX_REASON));
                    Decision::Reply(self.sleep(false))
                } else if master_paused || self.flags.sleeping || self.held.is_some() {
                    Decision::Reply(self.sleep(true))
                } else {
                    Decision::FindWork
                }
            }
            (Stage::Building { build, started, source }, SlaveRequest::Busy { .. }) => {
                if self.flags.skip {
                    Decision::Reply(self.abandon(&build, "skipped by an operator"))
                } else if now.saturating_duration_since(started) > self.hello.build_timeout.saturating_add(BUILD_TIMEOUT_GRACE) {
                    Decision::Reply(self.abandon(&build, "past its build timeout"))
                } else {
                    self.stage = Stage::Building { build, started, source };
                    Decision::Reply(SlaveReply::Cont)
                }
            }
            (Stage::Building { build, started, source }, SlaveRequest::Built(mut result)) => {
                result.output = bounded_log(std::mem::take(&mut result.output));
                if self.flags.skip {
                    Decision::Reply(self.abandon(&build, "skipped by an operator"))
                } else if let Some(reason) = unrecordable(&result.files) {
                    // No such build can be recorded. The slave keeps its build until it is
                    // dropped, so that the release goes back to the queue.
                    self.stage = Stage::Building { build, started, source };
                    Decision::Die { reason: format!("protocol error: {reason}") }
                } else if result.success && !result.files.is_empty() {
                    // A success's time is no longer than the build was out.
                    result.duration = result.duration.min(now.saturating_duration_since(started));
                    bound_figures(&mut result);
                    // The stage stays Building until the driver asks for the first file.
                    self.stage = Stage::Building { build: build.clone(), started, source };
                    Decision::StartTransfer { build, result: Box::new(result) }
                } else {
                    // Files of a failed build were never sent nor checked: none is recorded.
                    result.files.clear();
                    // Its time is checked against the master's before it is recorded.
                    bound_figures(&mut result);
                    self.stage = Stage::Building { build: build.clone(), started, source };
                    Decision::RecordFailure { build, result: Box::new(result) }
                }
            }
            (Stage::Sending { build, started, source, result, filename, transfer }, SlaveRequest::Sent { filename: sent }) if sent == filename => {
                if self.flags.skip {
                    Decision::Reply(self.abandon(&build, "skipped by an operator"))
                } else {
                    self.stage = Stage::Sending { build: build.clone(), started, source, result: result.clone(), filename: filename.clone(), transfer };
                    Decision::VerifyFile { build, result, filename, transfer }
                }
            }
            (stage, request) => {
                let expected = match &stage {
                    Stage::Idle => "Idle",
                    Stage::Building { .. } => "Busy or Built",
                    Stage::Sending { .. } => "Sent for the file asked for",
                };
                // The build stays the slave's until it is dropped, which puts it back in the queue.
                self.stage = stage;
                Decision::Die { reason: format!("protocol error: {} when {expected} was due", request.name()) }
            }
        }
    }

    /// Hands the slave a release to build from its pinned source.
    pub fn start_build(&mut self, build: PackageVersion, source: SourceFile, now: Instant) -> SlaveReply {
        let reply = SlaveReply::Build { package: build.package.clone(), version: build.version.clone(), source: source.clone() };
        self.stage = Stage::Building { build, started: now, source: source.clone() };
        reply
    }

    /// Tells the slave to ask again later; `paused` when the master or the slave is paused.
    pub fn sleep(&mut self, paused: bool) -> SlaveReply {
        self.stage = Stage::Idle;
        SlaveReply::Sleep { paused }
    }

    /// Asks the slave for a file of its finished build.
    pub fn send(&mut self, result: Box<BuildResult>, filename: String, transfer: TransferId) -> SlaveReply {
        let (build, started, source) = match &self.stage {
            Stage::Building { build, started, source } | Stage::Sending { build, started, source, .. } => (build.clone(), *started, source.clone()),
            // The driver asks for files of a build only.
            Stage::Idle => return self.done(),
        };
        self.stage = Stage::Sending { build, started, source, result, filename: filename.clone(), transfer };
        SlaveReply::Send { filename, transfer }
    }

    /// Ends the build (recorded, or abandoned): the slave goes idle.
    pub fn done(&mut self) -> SlaveReply {
        self.stage = Stage::Idle;
        self.flags.skip = false;
        SlaveReply::Done
    }

    fn abandon(&mut self, build: &PackageVersion, why: &str) -> SlaveReply {
        tracing::info!("abandoning {} {} on slave {}: {why}", build.package, build.version, self.id);
        self.done()
    }
}

/// The longest build log kept (the database holds each build's log): a longer one keeps its
/// end, where the error is.
pub const MAX_BUILD_LOG: usize = 1 << 20;
/// Longest reason of a slave's own (a goodbye, declined work) the master repeats.
const MAX_REASON: usize = 200;
/// Most files one build may list (a wheel build makes one; a few for multi-wheel builds).
pub const MAX_BUILD_FILES: usize = 32;
/// Most cores a build's CPU time is believed to have used at once.
const MAX_CORES: u32 = 1024;
/// Largest peak memory believed of a build: 1 TiB.
const MAX_PEAK_MEMORY: u64 = 1 << 40;

/// `output` with no more than [`MAX_BUILD_LOG`] bytes: its tail, after a note of what was cut.
pub(crate) fn bounded_log(output: String) -> String {
    if output.len() <= MAX_BUILD_LOG {
        return output;
    }
    let mut start = output.len() - MAX_BUILD_LOG;
    while !output.is_char_boundary(start) {
        start += 1;
    }
    format!("[piw-master] the first {start} bytes of this log were cut\n{}", &output[start..])
}

/// Why a build's list of files cannot be recorded: too many, or one listed twice.
fn unrecordable(files: &[WheelFile]) -> Option<String> {
    if files.len() > MAX_BUILD_FILES {
        return Some(format!("Built lists {} files, more than the {MAX_BUILD_FILES} one build may make", files.len()));
    }
    let mut seen = std::collections::HashSet::new();
    files.iter().find(|f| !seen.insert(f.filename.as_str())).map(|f| format!("Built lists {} twice", f.filename))
}

/// Bounds a build's figures by what the master can believe: no more CPU than [`MAX_CORES`]
/// cores give in its time, no more memory than [`MAX_PEAK_MEMORY`]. They are only shown.
fn bound_figures(result: &mut BuildResult) {
    result.cpu_time = result.cpu_time.min(result.duration.saturating_mul(MAX_CORES));
    result.peak_memory = result.peak_memory.min(MAX_PEAK_MEMORY);
}


#[cfg(test)]
mod tests {
    use super::*;
    use piwheels_common::protocols::{HostInfo, HostStats, Versions};

    const HOUR: Duration = Duration::from_secs(3600);

    fn hello() -> SlaveHello {
        SlaveHello {
            versions: Versions::current(),
            build_timeout: HOUR,
            busy_timeout: Duration::from_secs(300),
            py_version: "311".into(),
            abi: "cp311".into(),
            platform: "linux_armv7l".into(),
            memory_limit: 0,
            host: HostInfo::default(),
            environment: Default::default(),
        }
    }

    fn pv() -> PackageVersion {
        PackageVersion { package: "foo".into(), version: "1.0".into() }
    }

    fn idle() -> SlaveRequest {
        SlaveRequest::Idle { stats: HostStats::default(), declined: None }
    }

    fn busy() -> SlaveRequest {
        SlaveRequest::Busy { stats: HostStats::default() }
    }

    fn result(success: bool, files: usize) -> BuildResult {
        let file = piwheels_testsupport::data::wheel_file("foo-1.0-py3-none-any.whl", b"x");
        BuildResult {
            success,
            failure: None,
            exit_status: Some(if success { 0 } else { 1 }),
            duration: Duration::from_secs(5),
            cpu_time: Duration::from_secs(4),
            peak_memory: 1 << 20,
            output: "log".into(),
            files: vec![file; files],
        }
    }

    /// A slave at each stage, built through the driver's own calls.
    fn at_idle(now: Instant) -> Slave {
        Slave::new(1, hello(), now)
    }

    fn at_building(now: Instant) -> Slave {
        let mut slave = at_idle(now);
        assert_eq!(slave.on_request(idle(), now, false), Decision::FindWork);
        let source = SourceFile { filename: "foo-1.0.tar.gz".into(), url: "http://index/foo-1.0.tar.gz".into(), sha256: "0".repeat(64) };
        slave.start_build(pv(), source, now);
        slave
    }

    fn at_sending(now: Instant) -> Slave {
        let mut slave = at_building(now);
        let Decision::StartTransfer { result, .. } = slave.on_request(SlaveRequest::Built(result(true, 1)), now, false) else {
            panic!("expected a transfer")
        };
        assert!(matches!(slave.send(result, "foo-1.0-py3-none-any.whl".into(), 7), SlaveReply::Send { transfer: 7, .. }));
        slave
    }

    fn sent() -> SlaveRequest {
        SlaveRequest::Sent { filename: "foo-1.0-py3-none-any.whl".into() }
    }

    fn is_die(decision: &Decision) -> bool {
        matches!(decision, Decision::Die { reason } if reason.contains("protocol error"))
    }

    #[test]
    fn idle_slaves_get_work_or_sleep() {
        let now = Instant::now();
        let mut slave = at_idle(now);
        assert_eq!(slave.on_request(idle(), now, false), Decision::FindWork);
        assert_eq!(slave.on_request(idle(), now, true), Decision::Reply(SlaveReply::Sleep { paused: true }));
        slave.flags.sleeping = true;
        assert_eq!(slave.on_request(idle(), now, false), Decision::Reply(SlaveReply::Sleep { paused: true }));
        slave.flags.sleeping = false;
        let declined = SlaveRequest::Idle { stats: HostStats::default(), declined: Some("disk full".into()) };
        assert_eq!(slave.on_request(declined, now, false), Decision::Reply(SlaveReply::Sleep { paused: false }));
        assert_eq!(slave.stage, Stage::Idle);
    }

    #[test]
    fn a_handed_out_build_continues_while_busy() {
        let now = Instant::now();
        let mut slave = at_building(now);
        assert_eq!(slave.build(), Some(&pv()));
        assert_eq!(slave.on_request(busy(), now + Duration::from_secs(60), false), Decision::Reply(SlaveReply::Cont));
        assert!(matches!(slave.stage, Stage::Building { .. }));
    }

    #[test]
    fn an_operators_change_to_the_builders_goes_one_per_contact_in_place_of_sleep_or_cont() {
        let now = Instant::now();
        let mut slave = at_idle(now);
        slave.flags.scale = 2;
        assert_eq!(slave.on_request(idle(), now, false), Decision::Reply(SlaveReply::AddBuilder));
        assert_eq!(slave.on_request(idle(), now, false), Decision::Reply(SlaveReply::AddBuilder));
        assert_eq!(slave.on_request(idle(), now, false), Decision::FindWork);
        let mut slave = at_building(now);
        slave.flags.scale = -1;
        assert_eq!(slave.on_request(busy(), now, false), Decision::Reply(SlaveReply::RetireBuilder));
        assert!(matches!(slave.stage, Stage::Building { .. }), "the build goes on");
        assert_eq!(slave.on_request(busy(), now, false), Decision::Reply(SlaveReply::Cont));
        // A skip comes first: the change waits for the next contact.
        slave.flags = Flags { skip: true, scale: 1, ..Flags::default() };
        assert_eq!(slave.on_request(busy(), now, false), Decision::Reply(SlaveReply::Done));
        assert_eq!(slave.on_request(idle(), now, false), Decision::Reply(SlaveReply::AddBuilder));
    }

    #[test]
    fn a_build_past_its_timeout_is_abandoned_by_the_master() {
        let now = Instant::now();
        let mut slave = at_building(now);
        let late = now + HOUR + BUILD_TIMEOUT_GRACE + Duration::from_secs(1);
        assert_eq!(slave.on_request(busy(), late, false), Decision::Reply(SlaveReply::Done));
        assert_eq!(slave.stage, Stage::Idle);
    }

    #[test]
    fn a_skipped_build_is_abandoned_at_the_next_contact_whatever_the_slave_says() {
        let now = Instant::now();
        for (mut slave, request) in [(at_building(now), busy()), (at_building(now), SlaveRequest::Built(result(true, 1))), (at_sending(now), sent())] {
            slave.flags.skip = true;
            assert_eq!(slave.on_request(request, now, false), Decision::Reply(SlaveReply::Done));
            assert_eq!(slave.stage, Stage::Idle);
            assert!(!slave.flags.skip, "skip applies to one build");
        }
    }

    #[test]
    fn a_failed_or_empty_build_is_recorded_then_done() {
        let now = Instant::now();
        for outcome in [result(false, 0), result(true, 0)] {
            let mut slave = at_building(now);
            let decision = slave.on_request(SlaveRequest::Built(outcome.clone()), now, false);
            assert_eq!(decision, Decision::RecordFailure { build: pv(), result: Box::new(outcome) });
            assert_eq!(slave.done(), SlaveReply::Done);
            assert_eq!(slave.stage, Stage::Idle);
        }
    }

    #[test]
    fn a_successful_build_sends_its_files_one_by_one() {
        let now = Instant::now();
        let mut slave = at_sending(now);
        match slave.on_request(sent(), now, false) {
            Decision::VerifyFile { build, filename, transfer, .. } => {
                assert_eq!((build, filename.as_str(), transfer), (pv(), "foo-1.0-py3-none-any.whl", 7));
            }
            other => panic!("expected a verification, got {other:?}"),
        }
        // The driver asks for the same file again (verification failed), then finishes.
        let Stage::Sending { result, .. } = slave.stage.clone() else { panic!("still sending") };
        assert!(matches!(slave.send(result, "foo-1.0-py3-none-any.whl".into(), 8), SlaveReply::Send { transfer: 8, .. }));
        assert!(matches!(slave.on_request(sent(), now, false), Decision::VerifyFile { transfer: 8, .. }));
        assert_eq!(slave.done(), SlaveReply::Done);
    }

    #[test]
    fn out_of_order_messages_are_protocol_errors_at_every_stage() {
        let now = Instant::now();
        let wrong_file = SlaveRequest::Sent { filename: "other-1.0-py3-none-any.whl".into() };
        let hello_again = SlaveRequest::Hello(hello());
        let cases: Vec<(Slave, SlaveRequest)> = vec![
            (at_idle(now), busy()),
            (at_idle(now), SlaveRequest::Built(result(true, 1))),
            (at_idle(now), sent()),
            (at_idle(now), hello_again.clone()),
            (at_building(now), idle()),
            (at_building(now), sent()),
            (at_building(now), hello_again.clone()),
            (at_sending(now), idle()),
            (at_sending(now), busy()),
            (at_sending(now), SlaveRequest::Built(result(true, 1))),
            (at_sending(now), wrong_file),
            (at_sending(now), hello_again),
        ];
        for (mut slave, request) in cases {
            let text = format!("{:?} then {request:?}", slave.stage);
            let held = slave.build().cloned();
            assert!(is_die(&slave.on_request(request, now, false)), "{text}");
            assert_eq!(slave.build(), held.as_ref(), "{text}: the build stays to be released when the slave is dropped");
        }
    }

    #[test]
    fn a_build_listing_a_file_twice_is_a_protocol_error() {
        let now = Instant::now();
        let mut slave = at_building(now);
        match slave.on_request(SlaveRequest::Built(result(true, 2)), now, false) {
            Decision::Die { reason } => assert!(reason.contains("foo-1.0-py3-none-any.whl twice"), "{reason}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(slave.build(), Some(&pv()), "the build stays to be released when the slave is dropped");
    }

    #[test]
    fn a_killed_slave_dies_at_its_next_contact_at_any_stage() {
        let now = Instant::now();
        for (mut slave, request) in [(at_idle(now), idle()), (at_building(now), busy()), (at_sending(now), sent())] {
            slave.flags.kill = true;
            assert_eq!(slave.on_request(request, now, false), Decision::Die { reason: "stopped by an operator".into() });
        }
    }

    #[test]
    fn a_goodbye_is_repeated_cleaned_and_cut() {
        let now = Instant::now();
        let mut slave = at_idle(now);
        let reason = format!("\u{1b}[2J{}", "x".repeat(10_000));
        match slave.on_request(SlaveRequest::Bye { reason }, now, false) {
            Decision::Forget { reason } => assert_eq!(reason, format!("[2J{}", "x".repeat(197))),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bye_is_allowed_at_any_stage() {
        let now = Instant::now();
        for mut slave in [at_idle(now), at_building(now), at_sending(now)] {
            let bye = SlaveRequest::Bye { reason: "shutting down".into() };
            assert_eq!(slave.on_request(bye, now, false), Decision::Forget { reason: "shutting down".into() });
        }
    }

    #[test]
    fn a_slave_expires_after_its_busy_timeout_of_silence() {
        let now = Instant::now();
        let mut slave = at_idle(now);
        assert!(!slave.expired(now + Duration::from_secs(300)));
        assert!(slave.expired(now + Duration::from_secs(301)));
        slave.on_request(idle(), now + Duration::from_secs(200), false);
        assert!(!slave.expired(now + Duration::from_secs(400)));
    }

    #[test]
    fn a_long_log_keeps_its_end_and_says_what_was_cut() {
        assert_eq!(bounded_log("short".into()), "short");
        let long = format!("{}é{}", "a".repeat(MAX_BUILD_LOG), "the error at the end");
        let kept = bounded_log(long.clone());
        let (note, tail) = kept.split_once('\n').unwrap();
        assert!(tail.len() <= MAX_BUILD_LOG && long.ends_with(tail) && tail.ends_with("the error at the end"), "{note}");
        assert_eq!(note, format!("[piw-master] the first {} bytes of this log were cut", long.len() - tail.len()));
    }

    #[test]
    fn a_build_listing_more_files_than_a_build_makes_is_a_protocol_error() {
        let now = Instant::now();
        let mut slave = at_building(now);
        let mut outcome = result(true, 0);
        outcome.files = (0..=MAX_BUILD_FILES).map(|n| piwheels_testsupport::data::wheel_file(&format!("foo-1.0-{n}-py3-none-any.whl"), b"x")).collect();
        match slave.on_request(SlaveRequest::Built(outcome), now, false) {
            Decision::Die { reason } => assert!(reason.contains("33 files, more than the 32"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_successful_builds_figures_are_bounded_by_what_the_master_saw() {
        let now = Instant::now();
        let mut slave = at_building(now);
        let mut outcome = result(true, 1);
        (outcome.duration, outcome.cpu_time, outcome.peak_memory) = (Duration::MAX, Duration::MAX, u64::MAX);
        let later = now + Duration::from_secs(90);
        let Decision::StartTransfer { result, .. } = slave.on_request(SlaveRequest::Built(outcome), later, false) else {
            panic!("expected a transfer")
        };
        assert_eq!(result.duration, Duration::from_secs(90));
        assert_eq!(result.cpu_time, Duration::from_secs(90 * 1024));
        assert_eq!(result.peak_memory, 1 << 40);
    }

    #[test]
    fn the_files_a_failed_build_lists_are_never_recorded() {
        let now = Instant::now();
        let mut slave = at_building(now);
        let Decision::RecordFailure { result, .. } = slave.on_request(SlaveRequest::Built(result(false, 1)), now, false) else {
            panic!("expected the failure to be recorded")
        };
        assert!(result.files.is_empty(), "{:?}", result.files);
    }
}
