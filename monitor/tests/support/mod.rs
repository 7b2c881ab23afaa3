//! Scripted farms for the screen tests: a snapshot, status events and key presses, and the
//! screen as text.

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::time::Duration;

use piwheels_common::protocols::{
    FarmSnapshot, HostInfo, HostStats, MasterStats, SlaveEvent, SlaveHello, SlaveId, SlaveReply, StatusEvent, TaskState, Timestamp, Versions,
};
use piwheels_monitor::{App, Endpoints, ui};
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

pub const GIB: u64 = 1 << 30;

/// Seconds after an arbitrary start, as a time stamp.
pub fn at(secs: i64) -> Timestamp {
    chrono::DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
}

pub fn endpoints() -> Endpoints {
    Endpoints { control: "ipc:///run/piwheels/control".into(), status: "ipc:///run/piwheels/status".into() }
}

/// A master started at 0 with three running tasks, no slaves and no figures yet.
pub fn snapshot() -> FarmSnapshot {
    let tasks = ["seraph", "the_architect", "big_brother"].into_iter().map(|t| (t.to_string(), TaskState::Running)).collect();
    FarmSnapshot { started: at(0), host: HostInfo { label: "farm-master".into(), ..HostInfo::default() }, tasks, ..FarmSnapshot::default() }
}

pub fn app() -> App {
    App::new(snapshot(), endpoints(), at(1))
}

pub fn hello(label: &str, abi: &str) -> SlaveHello {
    SlaveHello {
        versions: Versions::current(),
        build_timeout: Duration::from_secs(3 * 3600),
        busy_timeout: Duration::from_secs(300),
        py_version: "311".into(),
        abi: abi.into(),
        platform: "linux_armv7l".into(),
        memory_limit: 0,
        host: HostInfo { label: label.into(), os_name: "Raspbian GNU/Linux".into(), os_version: "12 (bookworm)".into(), ..HostInfo::default() },
        environment: Default::default(),
    }
}

pub fn slave(id: SlaveId, t: i64, event: SlaveEvent) -> StatusEvent {
    StatusEvent::Slave { slave_id: id, at: at(t), event }
}

pub fn joined(id: SlaveId, t: i64, label: &str, abi: &str) -> StatusEvent {
    slave(id, t, SlaveEvent::Hello(hello(label, abi)))
}

pub fn replied(id: SlaveId, t: i64, reply: SlaveReply) -> StatusEvent {
    slave(id, t, SlaveEvent::Replied(reply))
}

pub fn build(package: &str, version: &str) -> SlaveReply {
    SlaveReply::Build { package: package.into(), version: version.into(), source: piwheels_testsupport::data::source_file(package, version) }
}

pub fn host_stats(t: i64) -> HostStats {
    HostStats {
        at: at(t),
        disk_size: 64 * GIB,
        disk_free: 40 * GIB,
        mem_size: 4 * GIB,
        mem_free: 3 * GIB,
        swap_size: 0,
        swap_free: 0,
        load_average: 1.25,
        cpu_temp: 52.0,
    }
}

pub fn master_stats(t: i64) -> StatusEvent {
    StatusEvent::Stats(MasterStats {
        at: at(t),
        packages_built: 4321,
        builds_last_hour: BTreeMap::from([("cp311".into(), 9), ("cp313".into(), 2)]),
        builds_time: Duration::from_secs(3600),
        builds_size: 12 * GIB,
        builds_pending: BTreeMap::from([("cp311".into(), 120), ("cp313".into(), 7)]),
        new_last_hour: 17,
        files_count: 8765,
        downloads_last_hour: 12,
        downloads_last_month: 3456,
        downloads_all: 99_999,
        host: HostStats { disk_size: 1000 * GIB, disk_free: 250 * GIB, ..host_stats(t) },
    })
}

pub fn key(c: char) -> KeyEvent {
    KeyEvent::new(KeyCode::Char(c), if c.is_ascii_uppercase() { KeyModifiers::SHIFT } else { KeyModifiers::NONE })
}

pub fn code(code: KeyCode) -> KeyEvent {
    KeyEvent::new(code, KeyModifiers::NONE)
}

pub fn ctrl_c() -> KeyEvent {
    KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)
}

/// A test terminal of the given size.
pub fn terminal(width: u16, height: u16) -> Terminal<TestBackend> {
    Terminal::new(TestBackend::new(width, height)).unwrap()
}

/// Draws the app and returns the screen, one string per row.
pub fn screen(terminal: &mut Terminal<TestBackend>, app: &App) -> Vec<String> {
    terminal.draw(|frame| ui::draw(frame, app)).unwrap();
    let buffer = terminal.backend().buffer();
    let area = *buffer.area();
    (0..area.height).map(|y| (0..area.width).map(|x| buffer[(x, y)].symbol()).collect::<String>()).collect()
}

/// The screen of a 140×40 terminal.
pub fn render(app: &App) -> Vec<String> {
    screen(&mut terminal(140, 40), app)
}

/// The first row containing every one of `parts`, or a panic showing the screen.
#[track_caller]
pub fn row_with<'a>(screen: &'a [String], parts: &[&str]) -> &'a str {
    screen.iter().find(|row| parts.iter().all(|p| row.contains(p))).unwrap_or_else(|| panic!("no row has {parts:?}:\n{}", screen.join("\n")))
}

/// Whether some row contains every one of `parts`.
pub fn has_row(screen: &[String], parts: &[&str]) -> bool {
    screen.iter().any(|row| parts.iter().all(|p| row.contains(p)))
}
