//! Every message that a program outside the master sends or receives, and the task control
//! every task runtime shares: one enum per direction of each socket pair, with named fields.
//! This file is the one place to read to learn what a socket between programs carries;
//! `docs/protocols.md` tells the same story as prose and sequences. The calls between the
//! master's own tasks (database, file juggler, page rewrites) live in the master crate's
//! `calls` module, each request with the type of its reply.
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
//! | slave | tcp REQ → ROUTER | [`SlaveRequest`] | [`SlaveReply`] |
//! | file transfer | tcp DEALER → ROUTER | [`FileRequest`] | [`FileReply`] |
//! | import and admin | ipc DEALER/REQ → ROUTER | [`AdminRequest`] | [`AdminReply`] |
//! | access logs | ipc REQ → ROUTER | [`LogRequest`] | [`LogReply`] |

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

#[cfg(any(test, feature = "arbitrary"))]
use proptest_derive::Arbitrary;

#[cfg(any(test, feature = "arbitrary"))]
use crate::arbitrary::{arb_bytes, arb_timestamp, small_map, small_vec};

use crate::{PROTOCOL_VERSION, SOFTWARE_VERSION};

/// A type that travels on a socket. `NAME` is written before every encoded message.
pub trait Message: Serialize + DeserializeOwned + Debug {
    /// The protocol's name on the wire, unique across the farm.
    const NAME: &'static str;
}

/// Implements [`Message`] for each type, named as the type is.
#[macro_export]
macro_rules! messages {
    ($($ty:ident),* $(,)?) => {
        $(impl $crate::protocols::Message for $ty { const NAME: &'static str = stringify!($ty); })*
    };
}

messages!(
    TaskControl,
    ControlRequest,
    ControlReply,
    StatusEvent,
    SlaveRequest,
    SlaveReply,
    FileRequest,
    FileReply,
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

/// Why a request was not carried out: the one error every reply that can fail carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct WireError {
    /// Whose fault it is, which says whether asking again can help.
    pub kind: ErrorKind,
    /// What went wrong, for people.
    pub message: String,
}

/// Whose fault a [`WireError`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub enum ErrorKind {
    /// The request itself cannot be carried out (a refusal): asking again gets the same answer.
    Refused,
    /// The server could not carry the request out now (its database, its disk): nobody's
    /// fault but the server's, and worth asking again later.
    Unavailable,
}

impl WireError {
    /// A refusal of the request.
    pub fn refused(message: impl Into<String>) -> WireError {
        WireError { kind: ErrorKind::Refused, message: message.into() }
    }

    /// A failure of the server.
    pub fn unavailable(message: impl Into<String>) -> WireError {
        WireError { kind: ErrorKind::Unavailable, message: message.into() }
    }
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for WireError {}

/// The versions an external client announces in its first message. The master refuses a
/// client whose protocol version differs from its own, naming both sides' versions; the
/// software version is logged and shown, and need not match, so that builders can be
/// upgraded one at a time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
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

    /// Checks a peer's protocol version against ours; the error names both sides' versions.
    /// A software version that is not a short printable text is refused too, since it is
    /// logged and shown.
    pub fn check(&self) -> Result<(), VersionMismatch> {
        let ours = Versions::current();
        let printable = self.software.len() <= MAX_SOFTWARE_VERSION && !self.software.chars().any(char::is_control);
        if self.protocol == ours.protocol && printable {
            return Ok(());
        }
        let software = if printable { self.software.clone() } else { "unprintable".into() };
        Err(VersionMismatch { ours, theirs: Versions { protocol: self.protocol, software } })
    }
}

/// Longest software version a peer may announce, in bytes.
pub const MAX_SOFTWARE_VERSION: usize = 64;

/// A peer speaks another protocol version than we do (or announces an unprintable software
/// version).
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
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct PackageVersion {
    /// Canonical (PEP 503) package name.
    pub package: String,
    /// Version string as PyPI published it.
    pub version: String,
}

/// A release's source distribution as the package index publishes it. The master pins it when
/// it learns of the release; the slave downloads it, refuses other bytes, and builds from it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct SourceFile {
    /// The file's name on the index (no directory part), e.g. `foo-1.0.tar.gz`.
    pub filename: String,
    /// Where to download it: an absolute http or https URL.
    pub url: String,
    /// Lower-case hex SHA-256 of its bytes.
    pub sha256: String,
}

impl SourceFile {
    /// How long a slave may take to download a build's source, before its build command
    /// gets the whole build timeout: the master holds a release it handed out for both. A
    /// source of 1 GiB needs 0.6 MB/s.
    pub const DOWNLOAD_LIMIT: Duration = Duration::from_secs(30 * 60);
    /// The longest file name a pin may have (the schema's column).
    pub const MAX_FILENAME: usize = 255;
    /// The longest URL a pin may have (the schema's column).
    pub const MAX_URL: usize = 2000;

    /// Why the pin is unusable, if it is: the one check of a pin, made where the master reads
    /// it from the index, where the database stores it, and where a slave acts on it. The file
    /// name must be a plain name (no directory part, not hidden, no control characters), the
    /// URL absolute http or https, and the SHA-256 64 lower-case hex digits.
    pub fn check(&self) -> Result<(), String> {
        let name = &self.filename;
        if name.is_empty()
            || name.len() > Self::MAX_FILENAME
            || name.starts_with('.')
            || name.contains(['/', '\\'])
            || name.chars().any(char::is_control)
        {
            return Err(format!("bad source file name {name:?}"));
        }
        if self.url.len() > Self::MAX_URL {
            return Err(format!("source URL longer than {} bytes", Self::MAX_URL));
        }
        if !(self.url.starts_with("https://") || self.url.starts_with("http://")) || self.url.chars().any(char::is_control) {
            return Err(format!("source URL {:?} is not http or https", self.url));
        }
        if self.sha256.len() != 64 || !self.sha256.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(format!("bad source SHA-256 {:?}", self.sha256));
        }
        Ok(())
    }
}

/// Debian packages and libraries a wheel needs at run time, and its Python requirements.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct Dependencies {
    /// Debian packages providing the shared libraries the wheel links, sorted.
    #[cfg_attr(any(test, feature = "arbitrary"), proptest(strategy = "small_vec()"))]
    pub apt: Vec<String>,
    /// Canonical names of the wheel's unconditional `Requires-Dist` entries, sorted.
    #[cfg_attr(any(test, feature = "arbitrary"), proptest(strategy = "small_vec()"))]
    pub pip: Vec<String>,
    /// Shared libraries that no installed Debian package provides, sorted.
    #[cfg_attr(any(test, feature = "arbitrary"), proptest(strategy = "small_vec()"))]
    pub unresolved: Vec<String>,
}

/// One wheel a build produced, as the builder inspected it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
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
    #[cfg_attr(any(test, feature = "arbitrary"), proptest(strategy = "arb_bytes()"))]
    pub metadata: ByteBuf,
}

impl WheelFile {
    /// A description of the wheel `filename` with the tags its parsed name gives and nothing
    /// else: the rest is filled in with struct update syntax (`..WheelFile::named(..)`).
    pub fn named(filename: &str, name: crate::wheel::WheelName) -> WheelFile {
        WheelFile {
            filename: filename.to_string(),
            size: 0,
            sha256: String::new(),
            package_tag: name.name,
            version_tag: name.version,
            build_tag: name.build,
            py_tag: name.python,
            abi_tag: name.abi,
            platform_tag: name.platform,
            requires_python: None,
            dependencies: Dependencies::default(),
            metadata: ByteBuf::new(),
        }
    }
}

/// How a build ended, as the builder measured it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
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
    #[cfg_attr(any(test, feature = "arbitrary"), proptest(strategy = "small_vec()"))]
    pub files: Vec<WheelFile>,
}

/// Classes of build failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
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
    /// The source could not be had: its download failed, it is not the pinned file (its
    /// SHA-256 differs), the pin is malformed, or the index failed to serve a build dependency.
    Source,
}

impl FailureKind {
    /// Why a build its limit stopped failed, for people ("it ran out of memory"); None for
    /// the other kinds, whose exit says more.
    pub fn limit_reason(self) -> Option<&'static str> {
        match self {
            FailureKind::Timeout => Some("it ran past its time limit"),
            FailureKind::OutOfMemory => Some("it ran out of memory"),
            _ => None,
        }
    }
}

/// What a failed build failed for, as the master's triage read it from its log and exit
/// (see `docs/operations.md`, "Why builds fail"). Schema names are [`FailureClass::name`]'s.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub enum FailureClass {
    /// A C header the compiler could not find (the detail: its include path).
    MissingHeader,
    /// A library the linker or pkg-config could not find (the detail: its file name).
    MissingLibrary,
    /// A compiler or tool that is not installed (the detail: its command).
    MissingTool,
    /// The package does not support the builder's Python.
    UnsupportedPython,
    /// The source, or a build dependency, could not be had or did not match its hash.
    SourceUnavailable,
    /// The build reached for the network and failed.
    Network,
    /// The build ran past its time limit.
    Timeout,
    /// The build ran out of memory.
    Memory,
    /// The build was killed by a signal other than the farm's limits.
    Killed,
    /// None of the above.
    Other,
}

impl FailureClass {
    /// Every class, in the order reports list them.
    pub const ALL: [FailureClass; 10] = [
        FailureClass::MissingHeader,
        FailureClass::MissingLibrary,
        FailureClass::MissingTool,
        FailureClass::UnsupportedPython,
        FailureClass::SourceUnavailable,
        FailureClass::Network,
        FailureClass::Timeout,
        FailureClass::Memory,
        FailureClass::Killed,
        FailureClass::Other,
    ];

    /// The schema's, the tools' and the pages' name (`missing-header`).
    pub fn name(self) -> &'static str {
        match self {
            FailureClass::MissingHeader => "missing-header",
            FailureClass::MissingLibrary => "missing-library",
            FailureClass::MissingTool => "missing-tool",
            FailureClass::UnsupportedPython => "unsupported-python",
            FailureClass::SourceUnavailable => "source-unavailable",
            FailureClass::Network => "network",
            FailureClass::Timeout => "timeout",
            FailureClass::Memory => "memory",
            FailureClass::Killed => "killed",
            FailureClass::Other => "other",
        }
    }

    /// The class of a name given by [`FailureClass::name`].
    pub fn from_name(name: &str) -> Option<FailureClass> {
        FailureClass::ALL.into_iter().find(|class| class.name() == name)
    }

    /// True for the classes a Debian package may cure, whose detail is looked up in the
    /// Debian Contents index.
    pub fn has_debian_package(self) -> bool {
        matches!(self, FailureClass::MissingHeader | FailureClass::MissingLibrary | FailureClass::MissingTool)
    }

    /// A few words for people: "missing header libxml/xmlversion.h".
    pub fn describe(self, detail: &str) -> String {
        let what = match self {
            FailureClass::MissingHeader => "missing header",
            FailureClass::MissingLibrary => "missing library",
            FailureClass::MissingTool => "missing tool",
            FailureClass::UnsupportedPython => "unsupported Python",
            FailureClass::SourceUnavailable => "source unavailable",
            FailureClass::Network => "network failure",
            FailureClass::Timeout => "timed out",
            FailureClass::Memory => "out of memory",
            FailureClass::Killed => "killed",
            FailureClass::Other => "other failure",
        };
        if detail.is_empty() { what.to_string() } else { format!("{what} {detail}") }
    }
}

/// Host measurements sent with IDLE and BUSY and by the master's stats task.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct HostStats {
    /// When the figures were taken.
    #[cfg_attr(any(test, feature = "arbitrary"), proptest(strategy = "arb_timestamp()"))]
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
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
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
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
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
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub enum SlaveTarget {
    /// Every connected slave.
    All,
    /// One slave by id.
    One(SlaveId),
}

/// What an operator asks of slaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub enum SlaveAction {
    /// Hand out no new builds; the current one continues.
    Sleep,
    /// Undo sleep, skip and kill flags.
    Wake,
    /// Abandon the current build at the next contact.
    Skip,
    /// Tell the slave to exit at its next contact.
    Kill,
    /// Start one more builder on the slave's host (as SIGTTIN to its `piw-slave` does); for
    /// one slave only.
    AddBuilder,
    /// Retire one builder of the slave's host after its current build (as SIGTTOU does); for
    /// one slave only.
    RetireBuilder,
}

/// A monitor's or tool's request to the master. The first request of every client must be
/// [`ControlRequest::Hello`]; each request gets exactly one [`ControlReply`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub enum ControlRequest {
    /// Attach; answered by `Welcome` with a snapshot of the master's state, or `Error`.
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
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub enum ControlReply {
    /// Answer to `Hello`: who the master is and everything it knows now; live changes follow
    /// on the status socket.
    Welcome {
        /// The master's versions.
        versions: Versions,
        /// The master's state when the client attached.
        snapshot: Box<FarmSnapshot>,
    },
    /// The request was carried out.
    Done,
    /// The request was not carried out: refused (the protocol versions differ, naming both;
    /// something came before `Hello`; no slave has that id) or failed in the master.
    Error(WireError),
}

// ------------------------------------------------------------------------------------------
// Status (tasks → master main loop → monitors)
// ------------------------------------------------------------------------------------------

/// Lifecycle of a master task, as the supervisor sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
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
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
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
    /// The slave's build was recorded.
    Finished(FinishedBuild),
}

/// A build the master recorded, as monitors are told of it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct FinishedBuild {
    /// The release's canonical name.
    pub package: String,
    /// Its version.
    pub version: String,
    /// Why it failed (a failure of the package's own), or None when it succeeded.
    pub failure: Option<FailureKind>,
    /// How long the build ran, as its slave measured it.
    pub duration: Duration,
    /// Its id in the database.
    pub build_id: BuildId,
}

/// A recorded build in a [`FarmSnapshot`]'s history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct RecentBuild {
    /// When it was recorded.
    #[cfg_attr(any(test, feature = "arbitrary"), proptest(strategy = "arb_timestamp()"))]
    pub at: Timestamp,
    /// The slave that built it.
    pub slave_id: SlaveId,
    /// Its label then.
    pub label: String,
    /// The build.
    pub build: FinishedBuild,
}

/// Severity of a [`StatusEvent::Notice`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
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
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub enum StatusEvent {
    /// Fresh master statistics.
    Stats(MasterStats),
    /// Something happened to a slave.
    Slave {
        /// The slave.
        slave_id: SlaveId,
        /// When.
        #[cfg_attr(any(test, feature = "arbitrary"), proptest(strategy = "arb_timestamp()"))]
        at: Timestamp,
        /// What.
        event: SlaveEvent,
    },
    /// A task changed state.
    Task {
        /// The task's name.
        name: String,
        /// When.
        #[cfg_attr(any(test, feature = "arbitrary"), proptest(strategy = "arb_timestamp()"))]
        at: Timestamp,
        /// Its new state.
        state: TaskState,
    },
    /// The master was paused (true) or resumed (false) by an operator.
    Paused(bool),
    /// A line for the monitor's event log.
    Notice {
        /// When.
        #[cfg_attr(any(test, feature = "arbitrary"), proptest(strategy = "arb_timestamp()"))]
        at: Timestamp,
        /// How serious.
        level: NoticeLevel,
        /// What happened.
        text: String,
    },
}

/// Master statistics (the stats task's figures).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct MasterStats {
    /// When the figures were taken.
    #[cfg_attr(any(test, feature = "arbitrary"), proptest(strategy = "arb_timestamp()"))]
    pub at: Timestamp,
    /// Distinct packages with at least one file.
    pub packages_built: u64,
    /// Builds in the last hour, per ABI.
    #[cfg_attr(any(test, feature = "arbitrary"), proptest(strategy = "small_map()"))]
    pub builds_last_hour: BTreeMap<String, u64>,
    /// Total build time of builds shorter than a week.
    pub builds_time: Duration,
    /// Total size of all files, bytes.
    pub builds_size: u64,
    /// Builds waiting, per ABI.
    #[cfg_attr(any(test, feature = "arbitrary"), proptest(strategy = "small_map()"))]
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
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct FarmSnapshot {
    /// When the master started.
    #[cfg_attr(any(test, feature = "arbitrary"), proptest(strategy = "arb_timestamp()"))]
    pub started: Timestamp,
    /// Facts about the master host.
    pub host: HostInfo,
    /// Whether the master is paused.
    pub paused: bool,
    /// Each task and its state.
    #[cfg_attr(any(test, feature = "arbitrary"), proptest(strategy = "small_map()"))]
    pub tasks: BTreeMap<String, TaskState>,
    /// Recent master statistics, oldest first.
    #[cfg_attr(any(test, feature = "arbitrary"), proptest(strategy = "small_vec()"))]
    pub stats: Vec<MasterStats>,
    /// Every connected slave.
    #[cfg_attr(any(test, feature = "arbitrary"), proptest(strategy = "small_map()"))]
    pub slaves: BTreeMap<SlaveId, SlaveSnapshot>,
    /// Recent notices, oldest first.
    #[cfg_attr(
        any(test, feature = "arbitrary"),
        proptest(strategy = "proptest::collection::vec((arb_timestamp(), proptest::prelude::any::<NoticeLevel>(), \".*\"), 0..4)")
    )]
    pub notices: Vec<(Timestamp, NoticeLevel, String)>,
    /// Recently recorded builds, oldest first.
    #[cfg_attr(any(test, feature = "arbitrary"), proptest(strategy = "small_vec()"))]
    pub builds: Vec<RecentBuild>,
}

/// What the master knows of one slave.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct SlaveSnapshot {
    /// Its hello.
    pub hello: SlaveHello,
    /// When it said hello.
    #[cfg_attr(any(test, feature = "arbitrary"), proptest(strategy = "arb_timestamp()"))]
    pub first_seen: Timestamp,
    /// When it was last heard from.
    #[cfg_attr(any(test, feature = "arbitrary"), proptest(strategy = "arb_timestamp()"))]
    pub last_seen: Timestamp,
    /// Recent host figures, oldest first.
    #[cfg_attr(any(test, feature = "arbitrary"), proptest(strategy = "small_vec()"))]
    pub stats: Vec<HostStats>,
    /// The last reply it was sent that changed what it is doing: `Cont` and a repeat of the
    /// same reply (another `Sleep` while idle) leave it as it was.
    pub last_reply: Option<SlaveReply>,
    /// When `last_reply` was sent: the start of the current build, sleep or transfer (the time
    /// of its hello until the first reply).
    #[cfg_attr(any(test, feature = "arbitrary"), proptest(strategy = "arb_timestamp()"))]
    pub state_since: Timestamp,
}

// ------------------------------------------------------------------------------------------
// Slave ↔ slave driver (external: slave REQ → master ROUTER)
// ------------------------------------------------------------------------------------------

/// What a slave tells the master about itself when it connects.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
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
    /// What the slave builds with, by name (`os`, `kernel`, `python`, `pip`, `setuptools`,
    /// `wheel`, `cc`, `ld`): versions as the tools report them. Recorded with each build and
    /// in its signed provenance; bounded by [`SlaveHello::environment_problem`].
    #[cfg_attr(any(test, feature = "arbitrary"), proptest(strategy = "small_map()"))]
    pub environment: BTreeMap<String, String>,
}

impl SlaveHello {
    /// Most entries an environment may have.
    pub const MAX_ENVIRONMENT: usize = 32;
    /// Longest name and value of an entry, in bytes.
    pub const MAX_ENVIRONMENT_TEXT: usize = 200;

    /// Why the environment cannot be taken, if it cannot: too many entries, or an entry too
    /// long, empty-named or holding control characters.
    pub fn environment_problem(&self) -> Option<String> {
        if self.environment.len() > Self::MAX_ENVIRONMENT {
            return Some(format!("the environment has {} entries, more than {}", self.environment.len(), Self::MAX_ENVIRONMENT));
        }
        let bad = |text: &str| text.len() > Self::MAX_ENVIRONMENT_TEXT || text.chars().any(char::is_control);
        self.environment
            .iter()
            .find(|(name, value)| name.is_empty() || bad(name) || bad(value))
            .map(|(name, _)| format!("the environment's entry {name:?} is empty-named, longer than {} bytes or holds control characters", Self::MAX_ENVIRONMENT_TEXT))
    }
}

/// A slave's request. The slave driver answers each with one [`SlaveReply`], except `Bye`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub enum SlaveRequest {
    /// First message: answered `Ack` or, on a protocol version mismatch, `Error`.
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

impl SlaveRequest {
    /// The request's name, for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            SlaveRequest::Hello(_) => "Hello",
            SlaveRequest::Idle { .. } => "Idle",
            SlaveRequest::Busy { .. } => "Busy",
            SlaveRequest::Built(_) => "Built",
            SlaveRequest::Sent { .. } => "Sent",
            SlaveRequest::Bye { .. } => "Bye",
        }
    }
}

/// The slave driver's answer to a [`SlaveRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub enum SlaveReply {
    /// Hello accepted.
    Ack {
        /// The slave's id for this connection.
        slave_id: SlaveId,
        /// The package index pip should build from.
        index_url: String,
    },
    /// The request was not carried out. In answer to `Hello` (a protocol version mismatch,
    /// say) the slave exits with this error; in answer to anything else it means the master
    /// does not know this connection (it restarted, or dropped the slave as silent): the slave
    /// abandons what it was doing and says `Hello` again.
    Error(WireError),
    /// No work now: ask again in a few seconds.
    Sleep {
        /// True when the master or this slave is paused, false when there is simply no work.
        paused: bool,
    },
    /// Build this release from this source file.
    Build {
        /// Canonical package name.
        package: String,
        /// Version.
        version: String,
        /// The source to build from: the slave checks its hash before building.
        source: SourceFile,
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
    /// In answer to `Idle` or `Busy`: an operator asked this slave's host to run one more
    /// builder. Otherwise as `Sleep` (idle) or `Cont` (busy).
    AddBuilder,
    /// In answer to `Idle` or `Busy`: an operator asked this slave's host to run one builder
    /// fewer. Otherwise as `Sleep` (idle) or `Cont` (busy).
    RetireBuilder,
}

// ------------------------------------------------------------------------------------------
// File transfer (external: uploader DEALER → file juggler ROUTER)
// ------------------------------------------------------------------------------------------

/// What an uploader (slave or piw-import) sends the file juggler.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub enum FileRequest {
    /// Start, resume or nudge a transfer; answered by `Fetch`es, `Done` or `Error`.
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
        #[cfg_attr(any(test, feature = "arbitrary"), proptest(strategy = "arb_bytes()"))]
        data: ByteBuf,
    },
}

/// What the file juggler asks of an uploader.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
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
    Error(WireError),
}

// ------------------------------------------------------------------------------------------
// Import and admin (external: piw-import, piw-add, piw-remove, piw-rebuild → master ROUTER)
// ------------------------------------------------------------------------------------------

/// What to rebuild.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub enum RebuildTarget {
    /// The home page.
    Home,
    /// The search index.
    Search,
    /// Project pages of one package, or of all when None.
    Project(Option<String>),
    /// Project and simple pages of one package, or of all when None.
    Both(Option<String>),
    /// A new build of a release on one ABI, or on every ABI it was built on when None, its
    /// published files kept: a wheel with other bytes is published with the next build tag.
    Release {
        /// The project's name.
        package: String,
        /// The version.
        version: String,
        /// The ABI.
        abi: Option<String>,
    },
    /// A reproducibility cross-check of a release's latest successful build on one ABI, or
    /// on every ABI it has one on when None: built again by another builder of the ABI from
    /// the same source and compared, never published.
    CrossCheck {
        /// The project's name.
        package: String,
        /// The version.
        version: String,
        /// The ABI.
        abi: Option<String>,
    },
}

/// A manual import of wheels built elsewhere.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
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
    #[cfg_attr(any(test, feature = "arbitrary"), proptest(strategy = "small_vec()"))]
    pub files: Vec<WheelFile>,
}

/// An administrator's tool's request. The first request must be `Hello`; each request gets
/// one [`AdminReply`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub enum AdminRequest {
    /// Attach: `Welcome` or `Error`.
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
        #[cfg_attr(any(test, feature = "arbitrary"), proptest(strategy = "small_vec()"))]
        aliases: Vec<String>,
    },
    /// Add or update a version: `Done`.
    AddVersion {
        /// Name as typed.
        name: String,
        /// Version.
        version: String,
        /// Release time; None means now.
        #[cfg_attr(any(test, feature = "arbitrary"), proptest(strategy = "proptest::option::of(arb_timestamp())"))]
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
        /// Yank instead of deleting, with this reason (PEP 592; may be empty).
        yank: Option<String>,
    },
    /// Rewrite pages: `Done` once queued.
    Rebuild(RebuildTarget),
    /// How many packages' page rewrites are still to be written: `Pending`.
    RewritesPending,
    /// The failed releases by cause, on one ABI or on all: `Triage`.
    Triage {
        /// Only this ABI.
        abi: Option<String>,
    },
    /// Build again every release whose latest build (on one ABI, or on each) failed for the
    /// cause given: `Done`, saying how many and which.
    Requeue(RequeueRequest),
}

/// Which failed releases to build again ([`AdminRequest::Requeue`]): those whose latest build
/// on an ABI failed for the cause the fields name together. A class or a Debian package is
/// required: a request for every failure is refused.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct RequeueRequest {
    /// Only failures of this class.
    pub class: Option<FailureClass>,
    /// Only failures of this detail (a header, a library, a tool).
    pub detail: Option<String>,
    /// Only failures the Debian package of this name would cure.
    pub debian_package: Option<String>,
    /// Only this ABI.
    pub abi: Option<String>,
    /// Count them, queue nothing.
    pub dry_run: bool,
}

/// The failed releases of a farm by cause: each release counted on the latest build of each
/// ABI, when that build failed of the package's own and is not queued again already. Lists
/// are ranked, most releases first, and cut at [`TriageReport::MAX_ROWS`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub struct TriageReport {
    /// Releases per class.
    #[cfg_attr(any(test, feature = "arbitrary"), proptest(strategy = "small_vec()"))]
    pub classes: Vec<(FailureClass, u64)>,
    /// Releases per Debian package that would cure them.
    #[cfg_attr(any(test, feature = "arbitrary"), proptest(strategy = "small_vec()"))]
    pub debian_packages: Vec<(String, u64)>,
    /// Releases per cause: class, detail, the Debian package when one is known.
    #[cfg_attr(any(test, feature = "arbitrary"), proptest(strategy = "small_vec()"))]
    pub causes: Vec<(FailureClass, String, Option<String>, u64)>,
    /// Failed builds the triage has not read yet.
    pub untriaged: u64,
    /// Whether the master has Debian Contents files to look packages up in.
    pub contents: bool,
}

impl TriageReport {
    /// Most rows of each list.
    pub const MAX_ROWS: usize = 100;
}

/// The admin endpoint's answer to an [`AdminRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub enum AdminReply {
    /// `Hello` accepted; the ABIs the farm builds for (`build_abis` not skipped, by Python
    /// version), which `piw-add --with-deps` resolves dependencies for. At most
    /// [`AdminReply::MAX_ABIS`].
    Welcome {
        /// ABI tags, e.g. `cp311`.
        #[cfg_attr(any(test, feature = "arbitrary"), proptest(strategy = "small_vec()"))]
        abis: Vec<String>,
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
    /// Packages whose page rewrites are queued and not yet written (those of a full rewrite
    /// not yet handed to the index writer included).
    Pending {
        /// How many.
        packages: u64,
    },
    /// The answer to `Triage`.
    Triage(TriageReport),
    /// Not done, with a sentence for the operator: refused (the protocol versions differ, a
    /// request came before `Hello`, the request is invalid) or failed in the master (worth
    /// trying again later).
    Error(WireError),
}

impl AdminReply {
    /// Most ABIs a `Welcome` names; a tool refuses a welcome with more.
    pub const MAX_ABIS: usize = 64;
}

// ------------------------------------------------------------------------------------------
// Access logs (external: piw-logger DEALER → master ROUTER)
// ------------------------------------------------------------------------------------------

/// What an installer said about its platform in its User-Agent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
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
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub enum AccessRecord {
    /// A wheel was downloaded.
    Download {
        /// File name.
        filename: String,
        /// Client address.
        host: String,
        /// When.
        #[cfg_attr(any(test, feature = "arbitrary"), proptest(strategy = "arb_timestamp()"))]
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
        #[cfg_attr(any(test, feature = "arbitrary"), proptest(strategy = "arb_timestamp()"))]
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
        #[cfg_attr(any(test, feature = "arbitrary"), proptest(strategy = "arb_timestamp()"))]
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
        #[cfg_attr(any(test, feature = "arbitrary"), proptest(strategy = "arb_timestamp()"))]
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
        #[cfg_attr(any(test, feature = "arbitrary"), proptest(strategy = "arb_timestamp()"))]
        at: Timestamp,
        /// Product part of the User-Agent.
        user_agent: String,
    },
}

/// What piw-logger sends the log ingester.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub enum LogRequest {
    /// Attach: `Welcome` or `Error`.
    Hello {
        /// The logger's versions.
        versions: Versions,
    },
    /// A batch of records: `Accepted`.
    Records {
        /// The records.
        #[cfg_attr(any(test, feature = "arbitrary"), proptest(strategy = "small_vec()"))]
        records: Vec<AccessRecord>,
    },
}

/// The log ingester's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(any(test, feature = "arbitrary"), derive(Arbitrary))]
pub enum LogReply {
    /// `Hello` accepted.
    Welcome,
    /// The protocol versions differ, records came before `Hello`, or the batch could not be
    /// stored.
    Error(WireError),
    /// The batch was taken; `rejected` records failed validation and were dropped.
    Accepted {
        /// Records stored.
        stored: u64,
        /// Records dropped.
        rejected: u64,
    },
}

#[cfg(test)]
mod golden_frames;
