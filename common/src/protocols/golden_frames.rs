//! Golden frames: the exact bytes of a sample of every message that crosses a process
//! boundary, one per variant of every enum in them, kept in `common/golden-frames.txt` with
//! the protocol version they were made for.
//!
//! A change to the wire (a field added, removed, retyped or moved; a variant renamed or
//! reordered) changes some sample's bytes and fails [`frames_match_the_golden_file`]. While
//! [`PROTOCOL_VERSION`] is the file's, the failure stands: a peer of the same version would
//! mis-decode the new bytes. Once the version is bumped, running the test with
//! `PIW_BLESS_FRAMES=1` rewrites the file. A new variant fails
//! [`samples_cover_every_variant`] until it has a sample, and a sample that disappears (a
//! variant removed) fails like a changed one.
//!
//! MessagePack cannot show every change: `Some(x)` is written as `x`, and integers in as few
//! bytes as their value needs, so turning a field into an `Option` or widening an integer
//! leaves these bytes alone. Such a change is compatible for messages a peer decodes; what it
//! means for the other direction is for the author to judge, and to bump the version.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::PathBuf;

use proptest::prelude::any;
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::TestRunner;

use super::*;
use crate::codec::{decode, encode};

/// Where the golden frames are kept.
fn golden_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("golden-frames.txt")
}

/// The environment variable that lets the test rewrite the file after a version bump.
const BLESS: &str = "PIW_BLESS_FRAMES";

macro_rules! variant_names {
    ($($fn:ident: $ty:ident { $($variant:ident),* $(,)? })*) => {
        $(
            /// The variant's name; the match has no wildcard, so a new variant does not
            /// compile until it is named here.
            fn $fn(value: &$ty) -> &'static str {
                match value {
                    $($ty::$variant { .. } => stringify!($variant),)*
                }
            }
        )*
    };
}

variant_names! {
    control_request: ControlRequest { Hello, Quit, Pause, Resume, Slaves }
    control_reply: ControlReply { Welcome, Done, Error }
    status_event: StatusEvent { Stats, Slave, Task, Paused, Notice }
    slave_request: SlaveRequest { Hello, Idle, Busy, Built, Sent, Bye }
    slave_reply: SlaveReply { Ack, Error, Sleep, Build, Cont, Send, Done, Die, AddBuilder, RetireBuilder }
    file_request: FileRequest { Hello, Chunk }
    file_reply: FileReply { Fetch, Done, Error }
    admin_request: AdminRequest { Hello, AddPackage, AddVersion, Import, Sent, RemovePackage, RemoveVersion, Rebuild, RewritesPending, Triage, Requeue }
    admin_reply: AdminReply { Welcome, Send, Done, Pending, Triage, Error }
    log_request: LogRequest { Hello, Records }
    log_reply: LogReply { Welcome, Error, Accepted }
    slave_target: SlaveTarget { All, One }
    slave_action: SlaveAction { Sleep, Wake, Skip, Kill, AddBuilder, RetireBuilder }
    task_state: TaskState { Running, Paused, Restarting, Stopped, Failed }
    slave_event: SlaveEvent { Hello, Stats, Replied, Gone, Finished }
    notice_level: NoticeLevel { Info, Warning, Error }
    failure_kind: FailureKind { Build, Timeout, OutOfMemory, NoSpace, Builder, Source }
    rebuild_target: RebuildTarget { Home, Search, Project, Both, Release, CrossCheck }
    access_record: AccessRecord { Download, Search, ProjectPage, ProjectJson, Page }
    error_kind: ErrorKind { Refused, Unavailable }
}

fn at(second: i64) -> Timestamp {
    DateTime::<Utc>::from_timestamp(1_765_000_000 + second, 123_456_000).expect("in range")
}

fn versions() -> Versions {
    Versions { protocol: PROTOCOL_VERSION, software: "1.2.3".into() }
}

fn host_info() -> HostInfo {
    HostInfo {
        label: "pi4-a".into(),
        os_name: "Raspbian GNU/Linux".into(),
        os_version: "12 (bookworm)".into(),
        board_revision: "c03112".into(),
        board_serial: "10000000abcdef01".into(),
    }
}

fn host_stats() -> HostStats {
    HostStats {
        at: at(1),
        disk_size: 64_000_000_000,
        disk_free: 20_000_000_000,
        mem_size: 4_000_000_000,
        mem_free: 1_000_000_000,
        swap_size: 100_000_000,
        swap_free: 90_000_000,
        load_average: 1.5,
        cpu_temp: 52.25,
    }
}

fn slave_hello() -> SlaveHello {
    SlaveHello {
        versions: versions(),
        build_timeout: Duration::from_secs(10_800),
        busy_timeout: Duration::from_millis(300_500),
        py_version: "3.11".into(),
        abi: "cp311".into(),
        platform: "linux_armv7l".into(),
        memory_limit: 2_000_000_000,
        host: host_info(),
        environment: [("python", "3.11.2"), ("pip", "23.0.1"), ("cc", "cc (Raspbian 12.2.0-14+rpi1) 12.2.0")]
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .into(),
    }
}

fn wheel_file() -> WheelFile {
    WheelFile {
        filename: "numpy-2.0.0-cp311-cp311-linux_armv7l.whl".into(),
        size: 5_000_000,
        sha256: "ab".repeat(32),
        package_tag: "numpy".into(),
        version_tag: "2.0.0".into(),
        build_tag: Some("1".into()),
        py_tag: "cp311".into(),
        abi_tag: "cp311".into(),
        platform_tag: "linux_armv7l".into(),
        requires_python: Some(">=3.9".into()),
        dependencies: Dependencies {
            apt: vec!["libopenblas0".into()],
            pip: vec!["packaging".into()],
            unresolved: vec!["libfoo.so.1".into()],
        },
        metadata: ByteBuf::from(b"Metadata-Version: 2.1\nName: numpy\n".to_vec()),
    }
}

fn build_result(failure: Option<FailureKind>) -> BuildResult {
    BuildResult {
        success: failure.is_none(),
        failure,
        exit_status: Some(1),
        duration: Duration::from_millis(61_500),
        cpu_time: Duration::from_millis(59_250),
        peak_memory: 300_000_000,
        output: "Building wheel for numpy".into(),
        files: if failure.is_none() { vec![wheel_file()] } else { Vec::new() },
    }
}

fn master_stats() -> MasterStats {
    MasterStats {
        at: at(2),
        packages_built: 1000,
        builds_last_hour: BTreeMap::from([("cp311".into(), 12)]),
        builds_time: Duration::from_secs(3600),
        builds_size: 9_000_000,
        builds_pending: BTreeMap::from([("cp313".into(), 7)]),
        new_last_hour: 3,
        files_count: 5000,
        downloads_last_hour: 40,
        downloads_last_month: 5000,
        downloads_all: 90_000,
        host: host_stats(),
    }
}

fn client_info() -> ClientInfo {
    ClientInfo {
        arch: Some("armv7l".into()),
        distro_name: Some("Raspbian".into()),
        distro_version: Some("12".into()),
        os_name: Some("Linux".into()),
        os_version: Some("6.6".into()),
        py_name: Some("CPython".into()),
        py_version: Some("3.11.2".into()),
        installer_name: Some("pip".into()),
        installer_version: Some("24.0".into()),
        setuptools_version: None,
    }
}

// Samples of each nested enum: every variant at least once.

fn slave_targets() -> Vec<SlaveTarget> {
    vec![SlaveTarget::All, SlaveTarget::One(3)]
}

fn slave_actions() -> Vec<SlaveAction> {
    vec![SlaveAction::Sleep, SlaveAction::Wake, SlaveAction::Skip, SlaveAction::Kill, SlaveAction::AddBuilder, SlaveAction::RetireBuilder]
}

fn task_states() -> Vec<TaskState> {
    vec![TaskState::Running, TaskState::Paused, TaskState::Restarting, TaskState::Stopped, TaskState::Failed]
}

fn notice_levels() -> Vec<NoticeLevel> {
    vec![NoticeLevel::Info, NoticeLevel::Warning, NoticeLevel::Error]
}

fn failure_kinds() -> Vec<FailureKind> {
    vec![
        FailureKind::Build,
        FailureKind::Timeout,
        FailureKind::OutOfMemory,
        FailureKind::NoSpace,
        FailureKind::Builder,
        FailureKind::Source,
    ]
}

fn rebuild_targets() -> Vec<RebuildTarget> {
    vec![
        RebuildTarget::Home,
        RebuildTarget::Search,
        RebuildTarget::Project(Some("numpy".into())),
        RebuildTarget::Both(None),
        RebuildTarget::Release { package: "numpy".into(), version: "1.26.4".into(), abi: Some("cp311".into()) },
        RebuildTarget::CrossCheck { package: "numpy".into(), version: "1.26.4".into(), abi: None },
    ]
}

fn access_records() -> Vec<AccessRecord> {
    vec![
        AccessRecord::Download { filename: wheel_file().filename, host: "192.0.2.1".into(), at: at(3), client: client_info() },
        AccessRecord::Search { package: "numpy".into(), host: "192.0.2.2".into(), at: at(4), client: ClientInfo::default() },
        AccessRecord::ProjectPage { package: "numpy".into(), host: "2001:db8::1".into(), at: at(5), user_agent: "Firefox".into() },
        AccessRecord::ProjectJson { package: "numpy".into(), host: "192.0.2.3".into(), at: at(6), user_agent: "curl".into() },
        AccessRecord::Page { page: "home".into(), host: "192.0.2.4".into(), at: at(7), user_agent: "Chrome".into() },
    ]
}

fn error_kinds() -> Vec<ErrorKind> {
    vec![ErrorKind::Refused, ErrorKind::Unavailable]
}

fn errors() -> Vec<WireError> {
    error_kinds().into_iter().map(|kind| WireError { kind, message: "the reason".into() }).collect()
}

fn source_file() -> SourceFile {
    SourceFile {
        filename: "numpy-2.0.0.tar.gz".into(),
        url: "https://files.example/packages/numpy-2.0.0.tar.gz".into(),
        sha256: "ab".repeat(32),
    }
}

fn slave_replies() -> Vec<SlaveReply> {
    let mut replies = vec![SlaveReply::Ack { slave_id: 7, index_url: "http://index.example/simple".into() }];
    replies.extend(errors().into_iter().map(SlaveReply::Error));
    replies.extend([
        SlaveReply::Sleep { paused: true },
        SlaveReply::Build { package: "numpy".into(), version: "2.0.0".into(), source: source_file() },
        SlaveReply::Cont,
        SlaveReply::Send { filename: wheel_file().filename, transfer: 42 },
        SlaveReply::Done,
        SlaveReply::Die { reason: "killed by an operator".into() },
        SlaveReply::AddBuilder,
        SlaveReply::RetireBuilder,
    ]);
    replies
}

fn slave_events() -> Vec<SlaveEvent> {
    let mut events = vec![SlaveEvent::Hello(slave_hello()), SlaveEvent::Stats(host_stats())];
    events.extend(slave_replies().into_iter().map(SlaveEvent::Replied));
    events.push(SlaveEvent::Gone { reason: "silent for 300 s".into() });
    events.push(SlaveEvent::Finished(finished_build()));
    events
}

fn finished_build() -> FinishedBuild {
    FinishedBuild { package: "numpy".into(), version: "2.0.0".into(), failure: Some(FailureKind::Build), duration: Duration::from_secs(90), build_id: 42 }
}

fn farm_snapshot() -> FarmSnapshot {
    let slave = SlaveSnapshot {
        hello: slave_hello(),
        first_seen: at(8),
        last_seen: at(9),
        stats: vec![host_stats()],
        last_reply: Some(SlaveReply::Build { package: "numpy".into(), version: "2.0.0".into(), source: source_file() }),
        state_since: at(10),
    };
    FarmSnapshot {
        started: at(0),
        host: host_info(),
        paused: false,
        tasks: task_states().into_iter().enumerate().map(|(i, state)| (format!("task-{i}"), state)).collect(),
        stats: vec![master_stats()],
        slaves: BTreeMap::from([(3, slave)]),
        notices: notice_levels().into_iter().map(|level| (at(11), level, "a notice".into())).collect(),
        builds: vec![RecentBuild { at: at(12), slave_id: 3, label: "pi4-a".into(), build: finished_build() }],
    }
}

fn import_request() -> ImportRequest {
    ImportRequest {
        package: "numpy".into(),
        version: "2.0.0".into(),
        abi: "cp311".into(),
        duration: Duration::from_secs(90),
        output: "built elsewhere".into(),
        files: vec![wheel_file()],
    }
}

/// One sample of every variant of every external message: each named by its protocol and
/// variant (numbered when a variant has several samples) with its frame.
fn samples() -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    let mut push = |name: String, frame: Vec<u8>| {
        let count = out.iter().filter(|(other, _)| other == &name || other.starts_with(&format!("{name}#"))).count();
        out.push((if count == 0 { name } else { format!("{name}#{}", count + 1) }, frame));
    };
    macro_rules! one {
        ($names:ident, $ty:ty, $msg:expr) => {{
            let msg: $ty = $msg;
            let frame = encode(&msg).expect("a sample encodes");
            assert_eq!(decode::<$ty>(&frame).as_ref(), Ok(&msg), "a sample decodes to itself");
            push(format!("{}::{}", <$ty as Message>::NAME, $names(&msg)), frame);
        }};
    }

    one!(control_request, ControlRequest, ControlRequest::Hello { versions: versions(), client: "piw-monitor".into() });
    one!(control_request, ControlRequest, ControlRequest::Quit);
    one!(control_request, ControlRequest, ControlRequest::Pause);
    one!(control_request, ControlRequest, ControlRequest::Resume);
    for (target, action) in slave_targets().into_iter().cycle().zip(slave_actions()) {
        one!(control_request, ControlRequest, ControlRequest::Slaves { target, action });
    }
    one!(control_reply, ControlReply, ControlReply::Welcome { versions: versions(), snapshot: Box::new(farm_snapshot()) });
    one!(control_reply, ControlReply, ControlReply::Done);
    for error in errors() {
        one!(control_reply, ControlReply, ControlReply::Error(error));
    }

    one!(status_event, StatusEvent, StatusEvent::Stats(master_stats()));
    for event in slave_events() {
        one!(status_event, StatusEvent, StatusEvent::Slave { slave_id: 3, at: at(12), event });
    }
    for state in task_states() {
        one!(status_event, StatusEvent, StatusEvent::Task { name: "slave_driver".into(), at: at(13), state });
    }
    one!(status_event, StatusEvent, StatusEvent::Paused(true));
    for level in notice_levels() {
        one!(status_event, StatusEvent, StatusEvent::Notice { at: at(14), level, text: "a notice".into() });
    }

    one!(slave_request, SlaveRequest, SlaveRequest::Hello(slave_hello()));
    one!(slave_request, SlaveRequest, SlaveRequest::Idle { stats: host_stats(), declined: Some("disk nearly full".into()) });
    one!(slave_request, SlaveRequest, SlaveRequest::Busy { stats: host_stats() });
    one!(slave_request, SlaveRequest, SlaveRequest::Built(build_result(None)));
    for kind in failure_kinds() {
        one!(slave_request, SlaveRequest, SlaveRequest::Built(build_result(Some(kind))));
    }
    one!(slave_request, SlaveRequest, SlaveRequest::Sent { filename: wheel_file().filename });
    one!(slave_request, SlaveRequest, SlaveRequest::Bye { reason: "stopping".into() });
    for reply in slave_replies() {
        one!(slave_reply, SlaveReply, reply);
    }

    one!(file_request, FileRequest, FileRequest::Hello { versions: versions(), transfer: 42 });
    one!(file_request, FileRequest, FileRequest::Chunk { offset: 65_536, data: ByteBuf::from(vec![0, 1, 2, 253, 254, 255]) });
    one!(file_reply, FileReply, FileReply::Fetch { offset: 65_536, length: 131_072 });
    one!(file_reply, FileReply, FileReply::Done);
    for error in errors() {
        one!(file_reply, FileReply, FileReply::Error(error));
    }

    one!(admin_request, AdminRequest, AdminRequest::Hello { versions: versions(), actor: "alice (piw-add)".into() });
    let add_package = AdminRequest::AddPackage {
        name: "NumPy".into(),
        description: Some("Arrays".into()),
        skip: None,
        unskip: true,
        aliases: vec!["numpy_".into()],
    };
    one!(admin_request, AdminRequest, add_package);
    let add_version = AdminRequest::AddVersion {
        name: "numpy".into(),
        version: "2.0.0".into(),
        released: Some(at(15)),
        skip: Some("binary only".into()),
        unskip: false,
        yank: true,
        unyank: false,
    };
    one!(admin_request, AdminRequest, add_version);
    one!(admin_request, AdminRequest, AdminRequest::Import(import_request()));
    one!(admin_request, AdminRequest, AdminRequest::Sent { filename: wheel_file().filename });
    one!(admin_request, AdminRequest, AdminRequest::RemovePackage { name: "numpy".into(), builds_only: true, skip: None });
    let remove_version = AdminRequest::RemoveVersion {
        name: "numpy".into(),
        version: "2.0.0".into(),
        builds_only: false,
        skip: Some("broken".into()),
        yank: None,
    };
    one!(admin_request, AdminRequest, remove_version);
    let yank_version = AdminRequest::RemoveVersion {
        name: "numpy".into(),
        version: "2.0.0".into(),
        builds_only: false,
        skip: None,
        yank: Some("crashes on armv6".into()),
    };
    one!(admin_request, AdminRequest, yank_version);
    for target in rebuild_targets() {
        one!(admin_request, AdminRequest, AdminRequest::Rebuild(target));
    }
    one!(admin_request, AdminRequest, AdminRequest::RewritesPending);
    one!(admin_request, AdminRequest, AdminRequest::Triage { abi: Some("cp311".into()) });
    let requeue = RequeueRequest {
        class: Some(FailureClass::MissingHeader),
        detail: Some("libxml/xmlversion.h".into()),
        debian_package: Some("libxml2-dev".into()),
        abi: None,
        dry_run: true,
    };
    one!(admin_request, AdminRequest, AdminRequest::Requeue(requeue));
    one!(admin_reply, AdminReply, AdminReply::Welcome { abis: vec!["cp311".into(), "cp313".into()] });
    one!(admin_reply, AdminReply, AdminReply::Send { filename: wheel_file().filename, transfer: 43 });
    one!(admin_reply, AdminReply, AdminReply::Done { message: "added package numpy".into() });
    one!(admin_reply, AdminReply, AdminReply::Pending { packages: 1234 });
    let report = TriageReport {
        classes: vec![(FailureClass::MissingHeader, 312), (FailureClass::Other, 7)],
        debian_packages: vec![("libxml2-dev".into(), 312)],
        causes: vec![
            (FailureClass::MissingHeader, "libxml/xmlversion.h".into(), Some("libxml2-dev".into()), 312),
            (FailureClass::MissingTool, "rustc".into(), None, 4),
        ],
        untriaged: 2,
        contents: true,
    };
    one!(admin_reply, AdminReply, AdminReply::Triage(report));
    for error in errors() {
        one!(admin_reply, AdminReply, AdminReply::Error(error));
    }

    one!(log_request, LogRequest, LogRequest::Hello { versions: versions() });
    one!(log_request, LogRequest, LogRequest::Records { records: access_records() });
    one!(log_reply, LogReply, LogReply::Welcome);
    for error in errors() {
        one!(log_reply, LogReply, LogReply::Error(error));
    }
    one!(log_reply, LogReply, LogReply::Accepted { stored: 9, rejected: 1 });
    out
}

/// The golden file as written for `samples`.
fn golden_text(samples: &[(String, Vec<u8>)]) -> String {
    let mut text = format!("protocol {PROTOCOL_VERSION}\n");
    for (name, frame) in samples {
        let _ = writeln!(text, "{name} {}", hex::encode(frame));
    }
    text
}

#[test]
fn frames_match_the_golden_file() {
    let path = golden_path();
    let samples = samples();
    let expected = golden_text(&samples);
    let found = std::fs::read_to_string(&path).unwrap_or_default();
    if found == expected {
        return;
    }
    let version = found.lines().next().and_then(|line| line.strip_prefix("protocol ")).and_then(|v| v.parse::<u32>().ok());
    let old: BTreeSet<&str> = found.lines().skip(1).collect();
    let name = |line: &&str| line.split(' ').next().unwrap_or_default().to_string();
    let new_names: BTreeSet<String> = expected.lines().skip(1).map(|line| name(&line)).collect();
    let mut changed: Vec<String> = expected.lines().skip(1).filter(|line| !old.contains(line)).map(|line| name(&line)).collect();
    // A sample that is gone (its variant removed) changes the wire as much as a new one.
    changed.extend(old.iter().map(name).filter(|n| !new_names.contains(n)).map(|n| format!("{n} (gone)")));
    let changed: Vec<&str> = changed.iter().map(String::as_str).collect();
    let shown = match changed.len() {
        0..=8 => changed.join(", "),
        n => format!("{} and {} more", changed[..8].join(", "), n - 8),
    };
    let bless = std::env::var_os(BLESS).is_some();
    if version == Some(PROTOCOL_VERSION) && !changed.is_empty() {
        panic!(
            "the wire changed while PROTOCOL_VERSION is still {PROTOCOL_VERSION}: {shown} encode differently from {}. \
             Peers of the same protocol version would mis-decode them: bump PROTOCOL_VERSION in common/src/lib.rs, \
             then run this test with {BLESS}=1 to record the new frames",
            path.display()
        );
    }
    if bless {
        std::fs::write(&path, expected).expect("write the golden frames");
        return;
    }
    panic!(
        "{} holds the frames of protocol {version:?}, this is protocol {PROTOCOL_VERSION} (changed or new: {shown}): \
         run this test with {BLESS}=1 to record them",
        path.display()
    );
}

/// Names of `count` arbitrary values of `T`, from a runner with a fixed seed.
fn arbitrary_names<T: proptest::arbitrary::Arbitrary>(name: fn(&T) -> &'static str, count: usize) -> BTreeSet<&'static str> {
    let mut runner = TestRunner::deterministic();
    let strategy = any::<T>();
    (0..count).map(|_| name(&strategy.new_tree(&mut runner).expect("a value").current())).collect()
}

#[test]
fn samples_cover_every_variant() {
    let sampled: BTreeSet<String> = samples().into_iter().map(|(name, _)| name.split('#').next().unwrap_or_default().to_string()).collect();
    macro_rules! top_level {
        ($($names:ident: $ty:ty),* $(,)?) => {$(
            for variant in arbitrary_names::<$ty>($names, 200) {
                let name = format!("{}::{variant}", <$ty as Message>::NAME);
                assert!(sampled.contains(&name), "{name} has no golden frame: add a sample of it to samples()");
            }
        )*};
    }
    top_level!(
        control_request: ControlRequest,
        control_reply: ControlReply,
        status_event: StatusEvent,
        slave_request: SlaveRequest,
        slave_reply: SlaveReply,
        file_request: FileRequest,
        file_reply: FileReply,
        admin_request: AdminRequest,
        admin_reply: AdminReply,
        log_request: LogRequest,
        log_reply: LogReply,
    );
    macro_rules! nested {
        ($($names:ident: $ty:ty => $samples:expr),* $(,)?) => {$(
            let in_samples: BTreeSet<&str> = $samples.iter().map($names).collect();
            for variant in arbitrary_names::<$ty>($names, 200) {
                assert!(in_samples.contains(variant), "{}::{variant} has no golden frame: add it to {}", stringify!($ty), stringify!($samples));
            }
        )*};
    }
    nested!(
        slave_target: SlaveTarget => slave_targets(),
        slave_action: SlaveAction => slave_actions(),
        task_state: TaskState => task_states(),
        slave_event: SlaveEvent => slave_events(),
        notice_level: NoticeLevel => notice_levels(),
        failure_kind: FailureKind => failure_kinds(),
        rebuild_target: RebuildTarget => rebuild_targets(),
        access_record: AccessRecord => access_records(),
        error_kind: ErrorKind => error_kinds(),
    );
}
