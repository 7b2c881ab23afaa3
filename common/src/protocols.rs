//! Every message that every socket of the farm carries, one enum per direction of each socket
//! pair, with named fields. This file is the one place to read to learn what a socket carries;
//! `docs/protocols.md` tells the same story as prose and sequences.
//!
//! Each enum implements [`Message`], which names it on the wire: the codec writes the name in
//! front of every message and refuses a frame whose name is not the one the socket expects, so
//! a peer speaking the wrong protocol gets a clear error instead of a lucky decode.
//!
//! | socket | transport | client → server | server → client |
//! |---|---|---|---|
//! | task control | inproc PUSH → PULL | [`TaskControl`] | — |
//! | master control | ipc/tcp DEALER/REQ → ROUTER | [`ControlRequest`] | [`ControlReply`] |
//! | status | inproc PUSH → PULL, then PUB → SUB | [`StatusEvent`] | — |
//! | slave driver command | inproc REQ → ROUTER | [`SlaveCommand`] | [`SlaveCommandReply`] |
//! | slave | tcp REQ → ROUTER | [`SlaveRequest`] | [`SlaveReply`] |
//! | file transfer | tcp DEALER → ROUTER | [`FileRequest`] | [`FileReply`] |
//! | file-system requests | inproc REQ → ROUTER | [`FsRequest`] | [`FsReply`] |
//! | database (oracles) | inproc REQ → ROUTER (load balancer) | [`DbRequest`] | [`DbReply`] |
//! | build queue | inproc PUSH → PULL | [`BuildQueueUpdate`] | — |
//! | architect trigger | inproc PUSH → PULL | [`ArchitectTrigger`] | — |
//! | delete notices | inproc REQ → ROUTER | [`DeleteNotice`] | [`DeleteAck`] |
//! | stats | inproc PUSH → PULL | [`StatsUpdate`] | — |
//! | page rewrites | inproc REQ → ROUTER | [`WebRequest`] | [`WebReply`] |
//! | import and admin | ipc DEALER/REQ → ROUTER | [`AdminRequest`] | [`AdminReply`] |
//! | access logs | ipc REQ → ROUTER | [`LogRequest`] | [`LogReply`] |

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

#[cfg(test)]
use proptest_derive::Arbitrary;

use crate::{PROTOCOL_VERSION, SOFTWARE_VERSION};

/// A type that travels on a socket. `NAME` is written before every encoded message.
pub trait Message: Serialize + DeserializeOwned + Debug {
    /// The protocol's name on the wire, unique across the farm.
    const NAME: &'static str;
}

macro_rules! messages {
    ($($ty:ident),* $(,)?) => {
        $(impl Message for $ty { const NAME: &'static str = stringify!($ty); })*
    };
}

messages!(
    TaskControl,
    ControlRequest,
    ControlReply,
    StatusEvent,
    SlaveCommand,
    SlaveCommandReply,
    SlaveRequest,
    SlaveReply,
    FileRequest,
    FileReply,
    FsRequest,
    FsReply,
    DbRequest,
    DbReply,
    BuildQueueUpdate,
    ArchitectTrigger,
    DeleteNotice,
    DeleteAck,
    StatsUpdate,
    WebRequest,
    WebReply,
    AdminRequest,
    AdminReply,
    LogRequest,
    LogReply,
);

/// Time stamps on the wire are UTC.
pub type Timestamp = DateTime<Utc>;
/// The number the slave driver gives a slave when it says hello; 0 is reserved for imports.
pub type SlaveId = u32;
/// The database's id of a recorded build.
pub type BuildId = i64;
/// The number the file juggler gives each expected transfer.
pub type TransferId = u64;

// ------------------------------------------------------------------------------------------
// Shared records
// ------------------------------------------------------------------------------------------

/// The versions an external client announces in its first message. The master refuses a
/// client whose protocol or software version differs from its own, naming both.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct Versions {
    /// [`PROTOCOL_VERSION`] of the sender.
    pub protocol: u32,
    /// [`SOFTWARE_VERSION`] of the sender.
    pub software: String,
}

impl Versions {
    /// The versions of this build.
    pub fn current() -> Self {
        Versions { protocol: PROTOCOL_VERSION, software: SOFTWARE_VERSION.to_string() }
    }

    /// Checks a peer's versions against ours; the error names both sides.
    pub fn check(&self) -> Result<(), VersionMismatch> {
        let ours = Versions::current();
        if *self == ours { Ok(()) } else { Err(VersionMismatch { ours, theirs: self.clone() }) }
    }
}

/// A peer runs another protocol or software version than we do.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "version mismatch: this side runs protocol {} (software {}), the peer runs protocol {} (software {})",
    ours.protocol, ours.software, theirs.protocol, theirs.software
)]
pub struct VersionMismatch {
    /// Our versions.
    pub ours: Versions,
    /// The peer's versions.
    pub theirs: Versions,
}

/// A release of a package.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct PackageVersion {
    /// Canonical (PEP 503) package name.
    pub package: String,
    /// Version string as PyPI published it.
    pub version: String,
}

/// Debian packages and libraries a wheel needs at run time, and its Python requirements.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct Dependencies {
    /// Debian packages providing the shared libraries the wheel links, sorted.
    #[cfg_attr(test, proptest(strategy = "small_vec()"))]
    pub apt: Vec<String>,
    /// Canonical names of the wheel's unconditional `Requires-Dist` entries, sorted.
    #[cfg_attr(test, proptest(strategy = "small_vec()"))]
    pub pip: Vec<String>,
    /// Shared libraries that no installed Debian package provides, sorted.
    #[cfg_attr(test, proptest(strategy = "small_vec()"))]
    pub unresolved: Vec<String>,
}

/// One wheel a build produced, as the builder inspected it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct WheelFile {
    /// File name (no directory part); validated against the wheel grammar on receipt.
    pub filename: String,
    /// Size in bytes.
    pub size: u64,
    /// Lower-case hex SHA-256 of the file.
    pub sha256: String,
    /// Distribution name part of the file name.
    pub package_tag: String,
    /// Version part of the file name.
    pub version_tag: String,
    /// Optional build tag (starts with a digit).
    pub build_tag: Option<String>,
    /// Python tag(s), e.g. `cp311` or `py3`.
    pub py_tag: String,
    /// ABI tag(s), e.g. `cp311`, `abi3` or `none`.
    pub abi_tag: String,
    /// Platform tag(s), e.g. `linux_armv7l` or `any`.
    pub platform_tag: String,
    /// `Requires-Python` from METADATA.
    pub requires_python: Option<String>,
    /// What the wheel needs at run time.
    pub dependencies: Dependencies,
    /// The bytes of `*.dist-info/METADATA`, published as the PEP 658 `.metadata` file.
    #[cfg_attr(test, proptest(strategy = "arb_bytes()"))]
    pub metadata: ByteBuf,
}

/// How a build ended, as the builder measured it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct BuildResult {
    /// True when the build produced at least one wheel and the command exited 0.
    pub success: bool,
    /// Why a failed build failed, so infrastructure failures can be retried.
    pub failure: Option<FailureKind>,
    /// Exit status of the build command, or None when a signal ended it.
    pub exit_status: Option<i32>,
    /// Wall-clock time of the build command.
    pub duration: Duration,
    /// CPU time (user + system) of the build command and its children.
    pub cpu_time: Duration,
    /// Peak resident memory of the build command's largest process, in bytes.
    pub peak_memory: u64,
    /// The build log (its tail when it exceeded the limit).
    pub output: String,
    /// The wheels the build produced.
    #[cfg_attr(test, proptest(strategy = "small_vec()"))]
    pub files: Vec<WheelFile>,
}

/// Classes of build failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub enum FailureKind {
    /// The build command failed: a real failure, not retried automatically.
    Build,
    /// The wall-clock limit killed the build.
    Timeout,
    /// The build hit its memory limit.
    OutOfMemory,
    /// The builder ran out of disk.
    NoSpace,
    /// The builder itself failed (could not start the command, inspect a wheel, ...).
    Builder,
    /// The source could not be downloaded: the package index failed or was unreachable.
    Source,
}

/// Host measurements sent with IDLE and BUSY and by the master's stats task.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct HostStats {
    /// When the figures were taken.
    #[cfg_attr(test, proptest(strategy = "arb_timestamp()"))]
    pub at: Timestamp,
    /// Size of the build (or output) file system, bytes.
    pub disk_size: u64,
    /// Free space on it, bytes.
    pub disk_free: u64,
    /// Total memory, bytes.
    pub mem_size: u64,
    /// Available memory, bytes.
    pub mem_free: u64,
    /// Total swap, bytes.
    pub swap_size: u64,
    /// Free swap, bytes.
    pub swap_free: u64,
    /// One-minute load average.
    pub load_average: f64,
    /// CPU temperature in °C (0 when the host has no sensor).
    pub cpu_temp: f64,
}

/// Facts about a host, shown by the monitor.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct HostInfo {
    /// Label (host name unless configured).
    pub label: String,
    /// `NAME` from /etc/os-release.
    pub os_name: String,
    /// `VERSION` from /etc/os-release.
    pub os_version: String,
    /// Raspberry Pi board revision code, or `unknown`.
    pub board_revision: String,
    /// Raspberry Pi serial number, or `unknown`.
    pub board_serial: String,
}

// ------------------------------------------------------------------------------------------
// Task control (inproc PUSH → PULL, one socket per task)
// ------------------------------------------------------------------------------------------

/// Sent by the supervisor to one task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub enum TaskControl {
    /// Stop work according to the task's pause mode.
    Pause,
    /// Undo [`TaskControl::Pause`].
    Resume,
    /// End the task's loop; it closes its sockets and its thread ends.
    Quit,
}

// ------------------------------------------------------------------------------------------
// Master control (external: monitors and operators' tools → master ROUTER)
// ------------------------------------------------------------------------------------------

/// Which slaves an operator's command applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub enum SlaveTarget {
    /// Every connected slave.
    All,
    /// One slave by id.
    One(SlaveId),
}

/// What an operator asks of slaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub enum SlaveAction {
    /// Hand out no new builds; the current one continues.
    Sleep,
    /// Undo sleep, skip and kill flags.
    Wake,
    /// Abandon the current build at the next contact.
    Skip,
    /// Tell the slave to exit at its next contact.
    Kill,
}

/// A monitor's or tool's request to the master. The first request of every client must be
/// [`ControlRequest::Hello`]; each request gets exactly one [`ControlReply`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub enum ControlRequest {
    /// Attach; answered by `Welcome` with a snapshot of the master's state, or `Refused`.
    Hello {
        /// The client's versions.
        versions: Versions,
        /// What the client is (`piw-monitor`, ...), for the log.
        client: String,
    },
    /// Stop the master in order. Answered `Done` before the shutdown starts.
    Quit,
    /// Pause every task of the master. Answered `Done`.
    Pause,
    /// Resume every task. Answered `Done`.
    Resume,
    /// Apply an action to slaves, through the slave driver. Answered `Done`.
    Slaves {
        /// Which slaves.
        target: SlaveTarget,
        /// What to do.
        action: SlaveAction,
    },
}

/// The master's answer to a [`ControlRequest`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub enum ControlReply {
    /// Answer to `Hello`: who the master is and everything it knows now; live changes follow
    /// on the status socket.
    Welcome {
        /// The master's versions.
        versions: Versions,
        /// The master's state when the client attached.
        snapshot: Box<FarmSnapshot>,
    },
    /// The client's versions do not match, or it sent something before `Hello`.
    Refused {
        /// Why, naming both versions on a mismatch.
        reason: String,
    },
    /// The request was carried out.
    Done,
    /// The request was understood but failed.
    Error {
        /// What went wrong.
        message: String,
    },
}

// ------------------------------------------------------------------------------------------
// Status (tasks → master main loop → monitors)
// ------------------------------------------------------------------------------------------

/// Lifecycle of a master task, as the supervisor sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub enum TaskState {
    /// Its loop is running.
    Running,
    /// It is paused.
    Paused,
    /// It panicked or failed to start and will be restarted after a back-off.
    Restarting,
    /// It ended when told to.
    Stopped,
    /// It kept failing and gave up; the master stops.
    Failed,
}

/// What happened to a slave, as the slave driver reports it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub enum SlaveEvent {
    /// The slave said hello and was accepted.
    Hello(SlaveHello),
    /// The slave sent fresh host figures.
    Stats(HostStats),
    /// The slave driver sent this reply to the slave.
    Replied(SlaveReply),
    /// The slave left or was dropped.
    Gone {
        /// Why (said goodbye, silent past its busy timeout, killed, protocol error).
        reason: String,
    },
}

/// Severity of a [`StatusEvent::Notice`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub enum NoticeLevel {
    /// Routine.
    Info,
    /// Needs an operator's eye.
    Warning,
    /// Something failed.
    Error,
}

/// A change in the master's state, published to every monitor.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub enum StatusEvent {
    /// Fresh master statistics.
    Stats(MasterStats),
    /// Something happened to a slave.
    Slave {
        /// The slave.
        slave_id: SlaveId,
        /// When.
        #[cfg_attr(test, proptest(strategy = "arb_timestamp()"))]
        at: Timestamp,
        /// What.
        event: SlaveEvent,
    },
    /// A task changed state.
    Task {
        /// The task's name.
        name: String,
        /// When.
        #[cfg_attr(test, proptest(strategy = "arb_timestamp()"))]
        at: Timestamp,
        /// Its new state.
        state: TaskState,
    },
    /// The master was paused (true) or resumed (false) by an operator.
    Paused(bool),
    /// A line for the monitor's event log.
    Notice {
        /// When.
        #[cfg_attr(test, proptest(strategy = "arb_timestamp()"))]
        at: Timestamp,
        /// How serious.
        level: NoticeLevel,
        /// What happened.
        text: String,
    },
}

/// Master statistics (the stats task's figures).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct MasterStats {
    /// When the figures were taken.
    #[cfg_attr(test, proptest(strategy = "arb_timestamp()"))]
    pub at: Timestamp,
    /// Distinct packages with at least one file.
    pub packages_built: u64,
    /// Builds in the last hour, per ABI.
    #[cfg_attr(test, proptest(strategy = "small_map()"))]
    pub builds_last_hour: BTreeMap<String, u64>,
    /// Total build time of builds shorter than a week.
    pub builds_time: Duration,
    /// Total size of all files, bytes.
    pub builds_size: u64,
    /// Builds waiting, per ABI.
    #[cfg_attr(test, proptest(strategy = "small_map()"))]
    pub builds_pending: BTreeMap<String, u64>,
    /// Versions released in the last hour.
    pub new_last_hour: u64,
    /// Files in the index.
    pub files_count: u64,
    /// Downloads in the last hour.
    pub downloads_last_hour: u64,
    /// Downloads in the last 30 days.
    pub downloads_last_month: u64,
    /// Downloads ever.
    pub downloads_all: u64,
    /// The master host's own figures (disk is the output file system).
    pub host: HostStats,
}

/// Everything a monitor needs to draw the farm, handed over when it attaches; the master
/// keeps it up to date from the status events it relays.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct FarmSnapshot {
    /// When the master started.
    #[cfg_attr(test, proptest(strategy = "arb_timestamp()"))]
    pub started: Timestamp,
    /// Facts about the master host.
    pub host: HostInfo,
    /// Whether the master is paused.
    pub paused: bool,
    /// Each task and its state.
    #[cfg_attr(test, proptest(strategy = "small_map()"))]
    pub tasks: BTreeMap<String, TaskState>,
    /// Recent master statistics, oldest first.
    #[cfg_attr(test, proptest(strategy = "small_vec()"))]
    pub stats: Vec<MasterStats>,
    /// Every connected slave.
    #[cfg_attr(test, proptest(strategy = "small_map()"))]
    pub slaves: BTreeMap<SlaveId, SlaveSnapshot>,
    /// Recent notices, oldest first.
    #[cfg_attr(
        test,
        proptest(strategy = "proptest::collection::vec((arb_timestamp(), proptest::prelude::any::<NoticeLevel>(), \".*\"), 0..4)")
    )]
    pub notices: Vec<(Timestamp, NoticeLevel, String)>,
}

/// What the master knows of one slave.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct SlaveSnapshot {
    /// Its hello.
    pub hello: SlaveHello,
    /// When it said hello.
    #[cfg_attr(test, proptest(strategy = "arb_timestamp()"))]
    pub first_seen: Timestamp,
    /// When it was last heard from.
    #[cfg_attr(test, proptest(strategy = "arb_timestamp()"))]
    pub last_seen: Timestamp,
    /// Recent host figures, oldest first.
    #[cfg_attr(test, proptest(strategy = "small_vec()"))]
    pub stats: Vec<HostStats>,
    /// The last reply it was sent that changed what it is doing: `Cont` and a repeat of the
    /// same reply (another `Sleep` while idle) leave it as it was.
    pub last_reply: Option<SlaveReply>,
    /// When `last_reply` was sent: the start of the current build, sleep or transfer (the time
    /// of its hello until the first reply).
    #[cfg_attr(test, proptest(strategy = "arb_timestamp()"))]
    pub state_since: Timestamp,
}

// ------------------------------------------------------------------------------------------
// Slave driver commands (master main loop → slave driver, inproc REQ → ROUTER)
// ------------------------------------------------------------------------------------------

/// An operator's command for slaves, forwarded by the master's main loop; answered by
/// [`SlaveCommandReply`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct SlaveCommand {
    /// Which slaves.
    pub target: SlaveTarget,
    /// What to do.
    pub action: SlaveAction,
}

/// The slave driver's answer to a [`SlaveCommand`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub enum SlaveCommandReply {
    /// The command now applies to these slaves (none when none are connected).
    Applied {
        /// Ids of the slaves affected.
        #[cfg_attr(test, proptest(strategy = "small_vec()"))]
        slaves: Vec<SlaveId>,
    },
    /// No slave has this id.
    UnknownSlave {
        /// The id asked for.
        slave_id: SlaveId,
    },
}

// ------------------------------------------------------------------------------------------
// Slave ↔ slave driver (external: slave REQ → master ROUTER)
// ------------------------------------------------------------------------------------------

/// What a slave tells the master about itself when it connects.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct SlaveHello {
    /// The slave's versions.
    pub versions: Versions,
    /// Wall-clock limit the slave enforces on each build.
    pub build_timeout: Duration,
    /// How long the master may wait between the slave's messages before dropping it.
    pub busy_timeout: Duration,
    /// Python version digits of the target interpreter, e.g. `311`.
    pub py_version: String,
    /// ABI tag the slave builds for, e.g. `cp311`.
    pub abi: String,
    /// Platform tag of the slave, e.g. `linux_armv7l`.
    pub platform: String,
    /// Memory limit applied to each build, bytes (0 = none).
    pub memory_limit: u64,
    /// Facts about the slave's host.
    pub host: HostInfo,
}

/// A slave's request. The slave driver answers each with one [`SlaveReply`], except `Bye`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub enum SlaveRequest {
    /// First message: answered `Ack` or, on a version mismatch, `Refused`.
    Hello(SlaveHello),
    /// Ready for work: answered `Build`, `Sleep` or `Die`.
    Idle {
        /// Current host figures.
        stats: HostStats,
        /// Set when the slave cannot take work now, saying why (low disk, low memory).
        declined: Option<String>,
    },
    /// Still building: answered `Cont`, `Done` to abandon the build, or `Die`.
    Busy {
        /// Current host figures.
        stats: HostStats,
    },
    /// The build ended: answered `Send` for each file the master wants, then `Done`; or `Die`.
    Built(BuildResult),
    /// The file last asked for was sent: answered `Send` (next or again), `Done` or `Die`.
    Sent {
        /// Its name.
        filename: String,
    },
    /// The slave is leaving; not answered.
    Bye {
        /// Why, for the log.
        reason: String,
    },
}

/// The slave driver's answer to a [`SlaveRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub enum SlaveReply {
    /// Hello accepted.
    Ack {
        /// The slave's id for this connection.
        slave_id: SlaveId,
        /// The package index pip should build from.
        index_url: String,
    },
    /// The request was refused. In answer to `Hello` (a version mismatch, say) the slave exits
    /// with this reason; in answer to anything else it means the master does not know this
    /// connection (it restarted, or dropped the slave as silent): the slave abandons what it
    /// was doing and says `Hello` again.
    Refused {
        /// Why.
        reason: String,
    },
    /// No work now: ask again in a few seconds.
    Sleep {
        /// True when the master or this slave is paused, false when there is simply no work.
        paused: bool,
    },
    /// Build this release.
    Build {
        /// Canonical package name.
        package: String,
        /// Version.
        version: String,
    },
    /// Keep building.
    Cont,
    /// Send this file over the file socket.
    Send {
        /// The wheel's file name, one of the built files.
        filename: String,
        /// The transfer id to greet the file juggler with.
        transfer: TransferId,
    },
    /// The build is finished with (recorded, or abandoned); go idle.
    Done,
    /// Exit now.
    Die {
        /// Why (killed by an operator, protocol error, master shutting down).
        reason: String,
    },
}

// ------------------------------------------------------------------------------------------
// File transfer (external: uploader DEALER → file juggler ROUTER)
// ------------------------------------------------------------------------------------------

/// What an uploader (slave or piw-import) sends the file juggler.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub enum FileRequest {
    /// Start, resume or nudge a transfer; answered by `Fetch`es, `Done` or `Refused`.
    Hello {
        /// The uploader's versions.
        versions: Versions,
        /// The id from the `Send` reply that asked for the file.
        transfer: TransferId,
    },
    /// Bytes the master fetched.
    Chunk {
        /// Where they start in the file (as asked).
        offset: u64,
        /// The bytes; no more than asked.
        #[cfg_attr(test, proptest(strategy = "arb_bytes()"))]
        data: ByteBuf,
    },
}

/// What the file juggler asks of an uploader.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub enum FileReply {
    /// Send these bytes.
    Fetch {
        /// Start of the range.
        offset: u64,
        /// Number of bytes.
        length: u64,
    },
    /// Every byte arrived; the uploader may close the file.
    Done,
    /// The transfer cannot go on, and why.
    Refused {
        /// Why.
        reason: String,
    },
}

// ------------------------------------------------------------------------------------------
// File-system requests (slave driver, admin endpoint → file juggler)
// ------------------------------------------------------------------------------------------

/// What a file must be to be taken for a release: the master checks the wheel's name, tags and
/// METADATA against it, and lets only the key it names send the bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct FileExpectation {
    /// The release's version: the file name's version and METADATA's `Version` must be it.
    pub version: String,
    /// The ABI of the build (the slave's, or the import's): each of the wheel's ABI tags must
    /// be it, `abi3` or `none`.
    pub abi: String,
    /// The builder's platform tag, e.g. `linux_armv7l`: each of the wheel's platform tags must
    /// be it, `any`, or a manylinux or musllinux tag of the same machine. Empty for imports,
    /// whose platform the tool does not know.
    pub platform: String,
    /// The key (Z85 public key) whose connection may send the bytes; None when the file socket
    /// does not authenticate.
    pub uploader: Option<String>,
}

/// A request to the file juggler.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub enum FsRequest {
    /// Expect this file for this package: answered `Expecting { transfer }`, `AlreadyHave`,
    /// `Refused`, `Conflict` or `Error`.
    Expect {
        /// Canonical package name (the file's directory).
        package: String,
        /// The file, as its sender describes it.
        file: Box<WheelFile>,
        /// What it must be.
        expectation: Box<FileExpectation>,
    },
    /// Publish `file` as a link to `existing`, a published file of the same package that the
    /// database holds with the same SHA-256, instead of receiving it: answered `AlreadyHave`,
    /// or `Refused` when `existing` is not there with those contents (then expect the file).
    Link {
        /// Canonical package name (the directory of both files).
        package: String,
        /// The published file with the same contents.
        existing: String,
        /// The file to publish.
        file: Box<WheelFile>,
        /// What it must be.
        expectation: Box<FileExpectation>,
    },
    /// Check and publish a finished transfer: answered `Verified`, `Failed`, `Refused`,
    /// `Conflict` or `Error`.
    Verify {
        /// The transfer.
        transfer: TransferId,
    },
    /// Forget a transfer and remove its temporary file: answered `Done`.
    Abandon {
        /// The transfer.
        transfer: TransferId,
    },
    /// Remove a published file that no build records (it blocks a rebuild of its name),
    /// with its `.metadata` file: answered `Done`. The caller has checked that no build
    /// records it and none is publishing it.
    RemoveOrphan {
        /// Canonical package name.
        package: String,
        /// The file's name.
        filename: String,
    },
}

/// The file juggler's answer to an [`FsRequest`]. Each refusal says whose fault it is: the
/// file's (`Refused`), its sender's (`Failed`), another file's (`Conflict`) or the master's
/// own (`Error`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub enum FsReply {
    /// The uploader should greet the file socket with this id.
    Expecting {
        /// The transfer id.
        transfer: TransferId,
    },
    /// A file of this name and these contents is published: nothing to send. The description
    /// is the master's own, read from the published wheel.
    AlreadyHave {
        /// The file, as the master read it.
        file: Box<WheelFile>,
    },
    /// The file is published. The description is the master's own, read from the bytes
    /// received: record this one, not the sender's.
    Verified {
        /// The file, as the master read it.
        file: Box<WheelFile>,
    },
    /// The file is not what the build may publish (its name, tags, archive or METADATA): the
    /// build's fault. Nothing is published.
    Refused {
        /// Why.
        reason: String,
    },
    /// The bytes received are not the ones announced (size or SHA-256), or the transfer is
    /// unknown or incomplete: the sender's fault. The transfer was rolled back.
    Failed {
        /// Why.
        reason: String,
    },
    /// Another file of this name is published with other bytes; a published file is never
    /// overwritten.
    Conflict {
        /// Why.
        reason: String,
    },
    /// Request carried out.
    Done,
    /// The master could not carry the request out (a full disk, an I/O error): nobody's fault
    /// but the master's; worth trying again later.
    Error {
        /// What went wrong.
        message: String,
    },
}

// ------------------------------------------------------------------------------------------
// Database (every task → load balancer → oracles)
// ------------------------------------------------------------------------------------------

/// A build ABI the farm builds for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct BuildAbi {
    /// The tag, e.g. `cp311`.
    pub tag: String,
    /// Position in the build order (lower first).
    pub position: i32,
    /// Non-empty when the ABI is not built, with the reason.
    pub skip: String,
}

/// A build to record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct BuildRecord {
    /// Slave id (0 for imports).
    pub built_by: SlaveId,
    /// The slave's label, kept for the history.
    pub builder: String,
    /// The release built.
    pub package: String,
    /// Its version.
    pub version: String,
    /// The builder's ABI.
    pub abi: String,
    /// What happened.
    pub result: BuildResult,
}

impl BuildRecord {
    /// The rewrite of the package's pages this build calls for, added at `added_at`: both
    /// scopes after a success (new files), the project page only after a failure.
    pub fn pending_rewrite(&self, added_at: Timestamp) -> PendingRewrite {
        let scope = if self.result.success { RewriteScope::Both } else { RewriteScope::Project };
        PendingRewrite { package: self.package.clone(), added_at, scope }
    }
}

/// A file and its hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct FileHash {
    /// File name.
    pub filename: String,
    /// Lower-case hex SHA-256.
    pub sha256: String,
}

/// Which pages of a package to rewrite.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub enum RewriteScope {
    /// The project page and project JSON.
    Project,
    /// Those plus the package's simple index pages.
    Both,
}

/// A page rewrite waiting in the page buffer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct PendingRewrite {
    /// The package.
    pub package: String,
    /// When the latest request for it arrived.
    #[cfg_attr(test, proptest(strategy = "arb_timestamp()"))]
    pub added_at: Timestamp,
    /// What to rewrite.
    pub scope: RewriteScope,
}

/// A package whose pages were written from the database as `snapshot` saw it: its pending
/// rewrite is done if the snapshot saw the last request for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct RewriteWritten {
    /// The package.
    pub package: String,
    /// The snapshot the pages were made from, as [`DbReply::Projects`] gave it.
    pub snapshot: String,
}

/// Figures the database computes for the home page and monitors.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct DbStats {
    /// Distinct packages with at least one file.
    pub packages_built: u64,
    /// Builds in the last hour, per active ABI.
    #[cfg_attr(test, proptest(strategy = "small_map()"))]
    pub builds_last_hour: BTreeMap<String, u64>,
    /// Total duration of builds shorter than a week.
    pub builds_time: Duration,
    /// Total size of files, bytes.
    pub builds_size: u64,
    /// Files in the index.
    pub files_count: u64,
    /// Versions released in the last hour.
    pub new_last_hour: u64,
    /// Downloads in the last hour.
    pub downloads_last_hour: u64,
    /// Downloads in the last 30 days.
    pub downloads_last_month: u64,
    /// Downloads ever.
    pub downloads_all: u64,
}

/// One package in the search index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct SearchEntry {
    /// Canonical name.
    pub package: String,
    /// Downloads in the last 30 days.
    pub downloads_recent: u64,
    /// Downloads ever.
    pub downloads_all: u64,
}

/// Build state of one release for one ABI, for project pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub enum AbiStatus {
    /// Built, with a file that serves this ABI.
    Success,
    /// The build failed.
    Fail,
    /// Not built on purpose (package, version or ABI skipped).
    Skip,
    /// Not built yet.
    Pending,
}

/// A file of a release, for project pages and the simple index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct ProjectFile {
    /// File name.
    pub filename: String,
    /// Size, bytes.
    pub size: u64,
    /// Lower-case hex SHA-256.
    pub sha256: String,
    /// Lower-case hex SHA-256 of the `.metadata` side file.
    pub metadata_sha256: Option<String>,
    /// ABI of the build that made it.
    pub builder_abi: String,
    /// The file's own ABI tag.
    pub abi_tag: String,
    /// The file's platform tag.
    pub platform_tag: String,
    /// `Requires-Python`.
    pub requires_python: Option<String>,
    /// When the file was published.
    #[cfg_attr(test, proptest(strategy = "arb_timestamp()"))]
    pub uploaded: Timestamp,
    /// Run-time needs.
    pub dependencies: Dependencies,
}

/// One release of a project.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct ReleaseData {
    /// Version string.
    pub version: String,
    /// When PyPI released it.
    #[cfg_attr(test, proptest(strategy = "arb_timestamp()"))]
    pub released: Timestamp,
    /// Yank reason, when yanked (may be empty).
    pub yanked: Option<String>,
    /// Why it is not built (the version's or the package's reason), empty when it is.
    pub skip: String,
    /// Its files.
    #[cfg_attr(test, proptest(strategy = "small_vec()"))]
    pub files: Vec<ProjectFile>,
    /// Build state per ABI, with the build's id where there is one.
    #[cfg_attr(test, proptest(strategy = "small_map()"))]
    pub abis: BTreeMap<String, (AbiStatus, Option<BuildId>)>,
}

/// Everything the index writer needs for one project.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct ProjectData {
    /// Canonical name.
    pub package: String,
    /// Display name (the most recently seen spelling).
    pub display_name: String,
    /// Summary from PyPI.
    pub description: String,
    /// Other spellings of the name.
    #[cfg_attr(test, proptest(strategy = "small_vec()"))]
    pub aliases: Vec<String>,
    /// Releases, in no particular order.
    #[cfg_attr(test, proptest(strategy = "small_vec()"))]
    pub releases: Vec<ReleaseData>,
}

/// A request to the database, answered by an oracle with one [`DbReply`]. The comment on each
/// variant names the reply it gets on success; any request can get `Error`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub enum DbRequest {
    /// Every package name: `Names`.
    AllPackages,
    /// Add a package: `Bool` (false when it existed).
    NewPackage {
        /// Canonical name.
        package: String,
        /// Skip reason, empty to build.
        skip: String,
        /// Summary.
        description: String,
    },
    /// Add a version: `Bool` (false when it existed).
    NewVersion {
        /// Canonical name.
        package: String,
        /// Version.
        version: String,
        /// Release time; None means now.
        #[cfg_attr(test, proptest(strategy = "proptest::option::of(arb_timestamp())"))]
        released: Option<Timestamp>,
        /// Skip reason, empty to build.
        skip: String,
    },
    /// Record a spelling of a package's name seen at a time: `Done`.
    NewPackageName {
        /// Canonical name.
        package: String,
        /// The spelling.
        name: String,
        /// When it was seen; a later sighting never moves the time backwards.
        #[cfg_attr(test, proptest(strategy = "arb_timestamp()"))]
        seen: Timestamp,
    },
    /// Other spellings of a package's name: `Names`.
    PackageAliases {
        /// Canonical name.
        package: String,
    },
    /// Set a package's summary: `Done`.
    SetDescription {
        /// Canonical name.
        package: String,
        /// Summary.
        description: String,
    },
    /// Set or clear a package's skip reason: `Done`.
    SkipPackage {
        /// Canonical name.
        package: String,
        /// Reason, empty to build again.
        reason: String,
    },
    /// Set or clear a version's skip reason: `Done`.
    SkipVersion {
        /// Canonical name.
        package: String,
        /// Version.
        version: String,
        /// Reason, empty to build again.
        reason: String,
    },
    /// A version's skip reason: `Text`.
    VersionSkip {
        /// Canonical name.
        package: String,
        /// Version.
        version: String,
    },
    /// Yank or unyank a version: `Done`.
    YankVersion {
        /// Canonical name.
        package: String,
        /// Version.
        version: String,
        /// Some(reason) to yank, None to unyank.
        reason: Option<String>,
    },
    /// Delete a package with its versions, builds and files: `Done`.
    DeletePackage {
        /// Canonical name.
        package: String,
    },
    /// Delete a version with its builds and files: `Done`.
    DeleteVersion {
        /// Canonical name.
        package: String,
        /// Version.
        version: String,
    },
    /// Rename a package (PyPI rename event): `Done`.
    RenamePackage {
        /// Old canonical name.
        from: String,
        /// New canonical name.
        to: String,
    },
    /// Does the package exist: `Bool`.
    PackageExists {
        /// Canonical name.
        package: String,
    },
    /// Does the version exist: `Bool`.
    VersionExists {
        /// Canonical name.
        package: String,
        /// Version.
        version: String,
    },
    /// Record a build and its files, and in the same transaction a pending rewrite of its
    /// package's pages added at `rewrite_at` (both scopes after a success, the project page
    /// after a failure), so that the index writer need not record it again: `Id` (the build
    /// id).
    LogBuild {
        /// The build.
        build: BuildRecord,
        /// The pending rewrite's time, by the index writer's clock (the master's).
        #[cfg_attr(test, proptest(strategy = "arb_timestamp()"))]
        rewrite_at: Timestamp,
    },
    /// Delete the builds (and files) of a version, or of every version when None: `Done`.
    DeleteBuilds {
        /// Canonical name.
        package: String,
        /// Version, or None for all.
        version: Option<String>,
    },
    /// Files of a package: `Files`.
    PackageFiles {
        /// Canonical name.
        package: String,
    },
    /// Files of a version: `Files`.
    VersionFiles {
        /// Canonical name.
        package: String,
        /// Version.
        version: String,
    },
    /// A file the index already holds with this hash: `Text` (its file name) or `Text(None)`.
    FileWithHash {
        /// Lower-case hex SHA-256.
        sha256: String,
    },
    /// Everything for a project's pages: `Project`.
    ProjectData {
        /// Canonical name.
        package: String,
    },
    /// Everything for the pages of several projects at once (the index writer's batches):
    /// `Projects`, the build ABIs and the projects' data in the order asked, leaving out
    /// packages that do not exist, all read from one snapshot, which comes with them.
    ProjectsData {
        /// Canonical names.
        #[cfg_attr(test, proptest(strategy = "small_vec()"))]
        packages: Vec<String>,
    },
    /// The ids of every build of a package, or of one version of it: `Builds` (ascending).
    /// Asked before deleting the rows, so that the index writer can remove their logs.
    BuildIds {
        /// Canonical name.
        package: String,
        /// Version, or None for all.
        version: Option<String>,
    },
    /// The ABIs: `Abis`.
    BuildAbis,
    /// The build queue, per ABI, at most `limit` per ABI: `Queue`.
    BuildQueue {
        /// Maximum entries per ABI.
        limit: u32,
    },
    /// The last applied PyPI serial: `Id`.
    PypiSerial,
    /// Store the last applied PyPI serial (never backwards): `Done`.
    SetPypiSerial {
        /// The serial.
        serial: i64,
    },
    /// Home page figures: `Stats`.
    Statistics,
    /// Download counts of every package: `Search`.
    SearchIndex,
    /// Store access-log records: `Id` (how many were stored).
    LogAccess {
        /// The records.
        #[cfg_attr(test, proptest(strategy = "small_vec()"))]
        records: Vec<AccessRecord>,
    },
    /// Add or widen a pending page rewrite: `Done`.
    AddRewrite(PendingRewrite),
    /// The pending page rewrites, oldest first: `Rewrites`.
    PendingRewrites,
    /// Remove the pending rewrites whose pages were written and made durable, each if the
    /// snapshot its pages were made from saw the last request for it: `Done`.
    ClearRewrites {
        /// Each package with the snapshot its pages were made from.
        #[cfg_attr(test, proptest(strategy = "small_vec()"))]
        written: Vec<RewriteWritten>,
    },
    /// Append to the audit log: `Done`.
    Audit {
        /// Who (user and tool).
        actor: String,
        /// What was done.
        action: String,
        /// To what, with parameters.
        detail: String,
    },
}

/// An oracle's answer to a [`DbRequest`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub enum DbReply {
    /// Carried out; nothing to return.
    Done,
    /// A yes/no answer.
    Bool(bool),
    /// A number (build id, serial, count).
    Id(i64),
    /// An optional text.
    Text(Option<String>),
    /// Names.
    Names(#[cfg_attr(test, proptest(strategy = "small_vec()"))] Vec<String>),
    /// Files with hashes.
    Files(#[cfg_attr(test, proptest(strategy = "small_vec()"))] Vec<FileHash>),
    /// A project's data.
    Project(Box<ProjectData>),
    /// Several projects' data.
    Projects {
        /// The ABIs builds are made for (every project page's columns).
        #[cfg_attr(test, proptest(strategy = "small_vec()"))]
        abis: Vec<BuildAbi>,
        /// The projects.
        #[cfg_attr(test, proptest(strategy = "small_vec()"))]
        data: Vec<ProjectData>,
        /// The snapshot they were read from (PostgreSQL's `pg_snapshot` as text), for
        /// [`DbRequest::ClearRewrites`].
        snapshot: String,
    },
    /// Build ids.
    Builds(#[cfg_attr(test, proptest(strategy = "small_vec()"))] Vec<BuildId>),
    /// Build ABIs in build order.
    Abis(#[cfg_attr(test, proptest(strategy = "small_vec()"))] Vec<BuildAbi>),
    /// The build queue per ABI, newest release first.
    Queue(#[cfg_attr(test, proptest(strategy = "small_map()"))] BTreeMap<String, Vec<PackageVersion>>),
    /// Statistics.
    Stats(DbStats),
    /// The search index.
    Search(#[cfg_attr(test, proptest(strategy = "small_vec()"))] Vec<SearchEntry>),
    /// Pending page rewrites.
    Rewrites(#[cfg_attr(test, proptest(strategy = "small_vec()"))] Vec<PendingRewrite>),
    /// The request failed; the oracle stays up.
    Error {
        /// The database's or the oracle's message.
        message: String,
    },
}

// ------------------------------------------------------------------------------------------
// Build queue, architect trigger, delete notices, stats
// ------------------------------------------------------------------------------------------

/// The architect's new build queues, sent to the slave driver.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct BuildQueueUpdate {
    /// Per ABI, the releases to build, newest release first.
    #[cfg_attr(test, proptest(strategy = "small_map()"))]
    pub queues: BTreeMap<String, Vec<PackageVersion>>,
}

/// Something changed that may change the build queue; the architect debounces these.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub enum ArchitectTrigger {
    /// Recompute the queues soon.
    Refresh {
        /// What happened, for the log.
        reason: String,
    },
}

/// A package or version was deleted: the slave driver drops it from its queues and abandons
/// builds of it in flight. Answered by [`DeleteAck`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub enum DeleteNotice {
    /// A whole package.
    Package {
        /// Canonical name.
        package: String,
    },
    /// One version.
    Version {
        /// Canonical name.
        package: String,
        /// Version.
        version: String,
    },
}

/// The slave driver has applied a [`DeleteNotice`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub enum DeleteAck {
    /// Applied.
    Done,
}

/// Figures other tasks send the stats task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub enum StatsUpdate {
    /// Queue lengths per ABI (from the slave driver).
    Queues {
        /// Builds waiting per ABI.
        #[cfg_attr(test, proptest(strategy = "small_map()"))]
        lengths: BTreeMap<String, u64>,
    },
    /// Downloads logged since the last update (from the log ingester).
    Downloads {
        /// How many.
        count: u64,
    },
    /// Rewrite the home page and search index now (from the admin endpoint).
    RefreshHome,
}

// ------------------------------------------------------------------------------------------
// Page rewrites (tasks → page buffer → index writer)
// ------------------------------------------------------------------------------------------

/// A request to write or delete pages; answered by [`WebReply`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub enum WebRequest {
    /// Rewrite a package's pages (coalesced by the page buffer).
    Rewrite {
        /// Canonical name.
        package: String,
        /// Which pages.
        scope: RewriteScope,
    },
    /// Write the home page with these figures.
    Home(MasterStats),
    /// Write the search index.
    Search {
        /// Every package with its download counts.
        #[cfg_attr(test, proptest(strategy = "small_vec()"))]
        entries: Vec<SearchEntry>,
    },
    /// Write the log of a build just recorded, and buffer the rewrite of its package's pages
    /// that [`DbRequest::LogBuild`] recorded with it.
    Built {
        /// The build.
        build_id: BuildId,
        /// The log text.
        output: String,
        /// The rewrite recorded with the build.
        rewrite: PendingRewrite,
    },
    /// Remove a package's files and build logs, then its pages (or rewrite them, when the
    /// package is still in the database, e.g. after only its builds were deleted).
    DeletePackage {
        /// Canonical name.
        package: String,
        /// Its files (looked up before the database rows went).
        #[cfg_attr(test, proptest(strategy = "small_vec()"))]
        files: Vec<String>,
        /// Its builds, whose logs go too (`DbRequest::BuildIds`, looked up before the rows went).
        #[cfg_attr(test, proptest(strategy = "small_vec()"))]
        builds: Vec<BuildId>,
    },
    /// Remove a version's files and build logs and rewrite the package's pages.
    DeleteVersion {
        /// Canonical name.
        package: String,
        /// Version.
        version: String,
        /// Its files (looked up before the database rows went).
        #[cfg_attr(test, proptest(strategy = "small_vec()"))]
        files: Vec<String>,
        /// Its builds, whose logs go too (looked up before the rows went).
        #[cfg_attr(test, proptest(strategy = "small_vec()"))]
        builds: Vec<BuildId>,
    },
}

/// The page buffer's or index writer's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub enum WebReply {
    /// Done (or queued, for `Rewrite`).
    Done,
    /// Failed.
    Error {
        /// What went wrong.
        message: String,
    },
}

// ------------------------------------------------------------------------------------------
// Import and admin (external: piw-import, piw-add, piw-remove, piw-rebuild → master ROUTER)
// ------------------------------------------------------------------------------------------

/// What to rebuild.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub enum RebuildTarget {
    /// The home page.
    Home,
    /// The search index.
    Search,
    /// Project pages of one package, or of all when None.
    Project(Option<String>),
    /// Project and simple pages of one package, or of all when None.
    Both(Option<String>),
}

/// A manual import of wheels built elsewhere.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct ImportRequest {
    /// Canonical package name.
    pub package: String,
    /// Version.
    pub version: String,
    /// ABI the wheels were built for.
    pub abi: String,
    /// Build time to record.
    pub duration: Duration,
    /// Build log to record.
    pub output: String,
    /// The wheels.
    #[cfg_attr(test, proptest(strategy = "small_vec()"))]
    pub files: Vec<WheelFile>,
}

/// An administrator's tool's request. The first request must be `Hello`; each request gets
/// one [`AdminReply`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub enum AdminRequest {
    /// Attach: `Welcome` or `Refused`.
    Hello {
        /// The tool's versions.
        versions: Versions,
        /// Who runs it (user@host and tool), for the audit log.
        actor: String,
    },
    /// Add or update a package: `Done`.
    AddPackage {
        /// Name as typed.
        name: String,
        /// Summary, None to leave as is.
        description: Option<String>,
        /// Skip reason to set, None to leave as is.
        skip: Option<String>,
        /// Clear the skip reason.
        unskip: bool,
        /// Other spellings.
        #[cfg_attr(test, proptest(strategy = "small_vec()"))]
        aliases: Vec<String>,
    },
    /// Add or update a version: `Done`.
    AddVersion {
        /// Name as typed.
        name: String,
        /// Version.
        version: String,
        /// Release time; None means now.
        #[cfg_attr(test, proptest(strategy = "proptest::option::of(arb_timestamp())"))]
        released: Option<Timestamp>,
        /// Skip reason to set, None to leave as is.
        skip: Option<String>,
        /// Clear the skip reason.
        unskip: bool,
        /// Yank it.
        yank: bool,
        /// Unyank it.
        unyank: bool,
    },
    /// Import wheels: `Send` for each file, then `Done`.
    Import(ImportRequest),
    /// The file last asked for was sent: `Send` or `Done`.
    Sent {
        /// Its name.
        filename: String,
    },
    /// Remove a package, or only its builds, or mark it skipped: `Done`.
    RemovePackage {
        /// Name.
        name: String,
        /// Only delete its builds and files.
        builds_only: bool,
        /// Skip reason to set.
        skip: Option<String>,
    },
    /// Remove a version, or only its builds, or skip or yank it: `Done`.
    RemoveVersion {
        /// Name.
        name: String,
        /// Version.
        version: String,
        /// Only delete its builds and files.
        builds_only: bool,
        /// Skip reason to set.
        skip: Option<String>,
        /// Yank instead of deleting.
        yank: bool,
    },
    /// Rewrite pages: `Done` once queued.
    Rebuild(RebuildTarget),
}

/// The admin endpoint's answer to an [`AdminRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub enum AdminReply {
    /// `Hello` accepted.
    Welcome,
    /// Versions differ, or a request came before `Hello`.
    Refused {
        /// Why, naming both versions on a mismatch.
        reason: String,
    },
    /// Upload this file over the file socket.
    Send {
        /// File name.
        filename: String,
        /// Transfer id to greet the file juggler with.
        transfer: TransferId,
    },
    /// Finished; says what was done.
    Done {
        /// A sentence for the operator.
        message: String,
    },
    /// Failed; says why.
    Error {
        /// A sentence for the operator.
        message: String,
    },
}

// ------------------------------------------------------------------------------------------
// Access logs (external: piw-logger DEALER → master ROUTER)
// ------------------------------------------------------------------------------------------

/// What an installer said about its platform in its User-Agent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub struct ClientInfo {
    /// CPU architecture.
    pub arch: Option<String>,
    /// Distribution name.
    pub distro_name: Option<String>,
    /// Distribution version.
    pub distro_version: Option<String>,
    /// Operating system.
    pub os_name: Option<String>,
    /// Its version.
    pub os_version: Option<String>,
    /// Python implementation.
    pub py_name: Option<String>,
    /// Its version.
    pub py_version: Option<String>,
    /// Installer (pip, uv).
    pub installer_name: Option<String>,
    /// Its version.
    pub installer_version: Option<String>,
    /// setuptools version.
    pub setuptools_version: Option<String>,
}

/// One access-log hit worth recording.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub enum AccessRecord {
    /// A wheel was downloaded.
    Download {
        /// File name.
        filename: String,
        /// Client address.
        host: String,
        /// When.
        #[cfg_attr(test, proptest(strategy = "arb_timestamp()"))]
        at: Timestamp,
        /// What the installer said about itself.
        client: ClientInfo,
    },
    /// An installer looked a project up in the simple index.
    Search {
        /// Canonical name.
        package: String,
        /// Client address.
        host: String,
        /// When.
        #[cfg_attr(test, proptest(strategy = "arb_timestamp()"))]
        at: Timestamp,
        /// What the installer said about itself.
        client: ClientInfo,
    },
    /// A project page was viewed.
    ProjectPage {
        /// Canonical name.
        package: String,
        /// Client address.
        host: String,
        /// When.
        #[cfg_attr(test, proptest(strategy = "arb_timestamp()"))]
        at: Timestamp,
        /// Product part of the User-Agent.
        user_agent: String,
    },
    /// A project's JSON was fetched.
    ProjectJson {
        /// Canonical name.
        package: String,
        /// Client address.
        host: String,
        /// When.
        #[cfg_attr(test, proptest(strategy = "arb_timestamp()"))]
        at: Timestamp,
        /// Product part of the User-Agent.
        user_agent: String,
    },
    /// Another page was viewed.
    Page {
        /// Page name (`home`, `faq`, ...).
        page: String,
        /// Client address.
        host: String,
        /// When.
        #[cfg_attr(test, proptest(strategy = "arb_timestamp()"))]
        at: Timestamp,
        /// Product part of the User-Agent.
        user_agent: String,
    },
}

/// What piw-logger sends the log ingester.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub enum LogRequest {
    /// Attach: `Welcome` or `Refused`.
    Hello {
        /// The logger's versions.
        versions: Versions,
    },
    /// A batch of records: `Accepted`.
    Records {
        /// The records.
        #[cfg_attr(test, proptest(strategy = "small_vec()"))]
        records: Vec<AccessRecord>,
    },
}

/// The log ingester's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(Arbitrary))]
pub enum LogReply {
    /// `Hello` accepted.
    Welcome,
    /// Versions differ, or records came before `Hello`.
    Refused {
        /// Why.
        reason: String,
    },
    /// The batch was taken; `rejected` records failed validation and were dropped.
    Accepted {
        /// Records stored.
        stored: u64,
        /// Records dropped.
        rejected: u64,
    },
}

#[cfg(test)]
fn arb_timestamp() -> impl proptest::strategy::Strategy<Value = Timestamp> {
    use proptest::strategy::Strategy;
    // Any microsecond between 1970 and 2100.
    (0i64..4_102_444_800_000_000).prop_map(|us| DateTime::from_timestamp_micros(us).expect("in range"))
}

#[cfg(test)]
fn arb_bytes() -> impl proptest::strategy::Strategy<Value = ByteBuf> {
    use proptest::strategy::Strategy;
    proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048).prop_map(ByteBuf::from)
}

/// Small collections keep generated messages (and the tests) small: nesting the default
/// sizes of up to 100 items three levels deep makes millions of values per case.
#[cfg(test)]
fn small_vec<T: proptest::arbitrary::Arbitrary>() -> impl proptest::strategy::Strategy<Value = Vec<T>> {
    proptest::collection::vec(proptest::prelude::any::<T>(), 0..4)
}

#[cfg(test)]
fn small_map<K: proptest::arbitrary::Arbitrary + Ord, V: proptest::arbitrary::Arbitrary>()
-> impl proptest::strategy::Strategy<Value = BTreeMap<K, V>> {
    proptest::collection::btree_map(proptest::prelude::any::<K>(), proptest::prelude::any::<V>(), 0..4)
}
