//! The screen after scripted status messages: slaves appearing, building, figures, a slave
//! leaving, notices, a pause, and the terminal resized.

mod support;

use std::time::Duration;

use piwheels_common::protocols::{FailureKind, FarmSnapshot, FinishedBuild, NoticeLevel, SlaveEvent, SlaveReply, SlaveSnapshot, StatusEvent, TaskState};
use ratatui::crossterm::event::KeyCode;
use piwheels_monitor::App;
use support::*;

/// Two slaves join; one builds, the other finds no work; figures and a notice arrive.
fn busy_farm() -> App {
    let mut app = app();
    for event in [
        master_stats(10),
        joined(1, 12, "pi4-a", "cp311"),
        joined(2, 13, "pi3-b", "cp313"),
        replied(1, 14, SlaveReply::Ack { slave_id: 1, index_url: "https://example.invalid/simple".into() }),
        slave(1, 15, SlaveEvent::Stats(host_stats(15))),
        replied(1, 20, build("numpy", "1.26.4")),
        replied(2, 21, SlaveReply::Sleep { paused: false }),
        replied(1, 50, SlaveReply::Cont),
        StatusEvent::Notice { at: at(60), level: NoticeLevel::Warning, text: "PyPI answered 503; trying again".into() },
    ] {
        app.on_status(event);
    }
    app.tick(at(20 + 185));
    app
}

#[test]
fn slaves_figures_and_events_appear_as_they_arrive() {
    let screen = render(&busy_farm());
    if std::env::var_os("SHOW_SCREEN").is_some() {
        println!("{}", screen.join("\n"));
    }
    assert!(has_row(&screen, &["piw-monitor", "master farm-master", "up 3m25s", "RUNNING"]), "{}", screen.join("\n"));
    assert!(has_row(&screen, &["Slaves (2)"]));
    // The building slave: its release, how long it has built (since the Build reply, not the
    // later Cont), when it was last heard of, and its figures.
    let pi4 = row_with(&screen, &["pi4-a", "cp311", "building", "numpy 1.26.4", "3m05s", "2m35s", "1.25", "52°C"]);
    assert!(pi4.contains("40.0 GiB (63%)") && pi4.contains("3.0 GiB (75%)"), "{pi4}");
    row_with(&screen, &["pi3-b", "cp313", "idle"]);
    // The master's figures: queue and builds per ABI, its disk, its tasks.
    row_with(&screen, &["Queue", "cp311 120, cp313 7 (total 127)", "Built in the last hour", "cp311 9, cp313 2 (total 11)"]);
    row_with(&screen, &["Disk free", "250.0 GiB (25%)", "Load", "1.25"]);
    row_with(&screen, &["Packages", "4321", "Files", "8765", "Downloads"]);
    row_with(&screen, &["Tasks", "big_brother running", "seraph running", "the_architect running"]);
    // The event log: joins, the build, the notice; not the Ack, the idle Sleep or the Cont.
    row_with(&screen, &["attached to the master at ipc:///run/piwheels/control"]);
    let software = piwheels_common::SOFTWARE_VERSION;
    row_with(&screen, &[&format!("slave 1 (pi4-a) joined: cp311 on linux_armv7l, Raspbian GNU/Linux 12 (bookworm), piwheels {software}")]);
    row_with(&screen, &["slave 1 (pi4-a) is building numpy 1.26.4"]);
    row_with(&screen, &["PyPI answered 503; trying again"]);
    assert!(!has_row(&screen, &["pi3-b) is"]), "{}", screen.join("\n"));
}

#[test]
fn a_slave_that_leaves_goes_from_the_table_into_the_log() {
    let mut app = busy_farm();
    app.on_status(slave(2, 100, SlaveEvent::Gone { reason: "silent for longer than its busy timeout".into() }));
    let screen = render(&app);
    assert!(has_row(&screen, &["Slaves (1)"]), "{}", screen.join("\n"));
    assert!(!has_row(&screen, &["pi3-b", "idle"]));
    row_with(&screen, &["slave 2 (pi3-b) left: silent for longer than its busy timeout"]);
    // A build that ends unrecorded says how long it ran.
    app.on_status(replied(1, 20 + 600, SlaveReply::Send { filename: "numpy-1.26.4-cp311-cp311-linux_armv7l.whl".into(), transfer: 1 }));
    app.on_status(replied(1, 20 + 610, SlaveReply::Done));
    let screen = render(&app);
    row_with(&screen, &["slave 1 (pi4-a) stopped building numpy 1.26.4 after 10m10s"]);
    row_with(&screen, &["pi4-a", "finishing"]);
}

/// A recorded build of `package` 1.0 (its build id made from its name, so each package's is its own).
fn finished(package: &str, failure: Option<FailureKind>, secs: u64) -> SlaveEvent {
    let build_id = package.bytes().map(i64::from).sum();
    SlaveEvent::Finished(FinishedBuild { package: package.into(), version: "1.0".into(), failure, duration: Duration::from_secs(secs), build_id })
}

/// A recorded build is logged as built or failed, with how long it ran; a failure stands out.
#[test]
fn recorded_builds_are_shown_as_built_or_failed() {
    let mut app = busy_farm();
    app.on_status(slave(1, 700, finished("numpy", None, 610)));
    app.on_status(slave(1, 800, finished("scipy", Some(FailureKind::Build), 12)));
    app.on_status(slave(1, 900, finished("torch", Some(FailureKind::Timeout), 3 * 3600)));
    // The Done that follows a recorded build adds nothing.
    app.on_status(replied(1, 901, SlaveReply::Done));
    let screen = render(&app);
    row_with(&screen, &["slave 1 (pi4-a) built numpy 1.0 in 10m10s"]);
    row_with(&screen, &["slave 1 (pi4-a) failed to build scipy 1.0 after 12s: its command failed"]);
    row_with(&screen, &["slave 1 (pi4-a) failed to build torch 1.0 after 3h00m: it ran past its time limit"]);
    assert!(!has_row(&screen, &["stopped building"]), "{}", screen.join("\n"));
    let failed = app.log_lines().find(|line| line.text.contains("failed to build scipy")).unwrap();
    assert_eq!(failed.level, NoticeLevel::Warning);
}

/// A monitor that attaches is shown the builds the master recorded before, among its notices
/// in the order they happened.
#[test]
fn a_monitor_attaching_sees_the_builds_recorded_before() {
    let mut farm = snapshot();
    farm.apply(&joined(4, 100, "pi4-z", "cp311"));
    farm.apply(&StatusEvent::Notice { at: at(150), level: NoticeLevel::Info, text: "between the builds".into() });
    farm.apply(&slave(4, 120, finished("first", None, 5)));
    farm.apply(&slave(4, 200, finished("second", Some(FailureKind::Build), 7)));
    let app = App::new(farm, endpoints(), at(300));
    let lines: Vec<&str> = app.log_lines().map(|line| line.text.as_str()).collect();
    let position = |text: &str| lines.iter().position(|line| line.contains(text)).unwrap_or_else(|| panic!("no {text:?} in {lines:?}"));
    assert!(position("slave 4 (pi4-z) built first 1.0 in 5s") < position("between the builds"));
    assert!(position("between the builds") < position("slave 4 (pi4-z) failed to build second 1.0 after 7s"));
}

#[test]
fn a_monitor_attaching_mid_build_sees_the_build_and_its_age() {
    let mut farm = FarmSnapshot { stats: Vec::new(), ..snapshot() };
    farm.apply(&joined(7, 100, "pi5-c", "cp313"));
    farm.apply(&replied(7, 200, build("scipy", "1.14.0")));
    farm.apply(&replied(7, 900, SlaveReply::Cont));
    let slave: &SlaveSnapshot = &farm.slaves[&7];
    assert_eq!(slave.state_since, at(200));
    let app = App::new(farm, endpoints(), at(200 + 7500));
    let screen = render(&app);
    row_with(&screen, &["7", "pi5-c", "building", "scipy 1.14.0", "2h05m"]);
    row_with(&screen, &["No statistics from the master yet"]);
}

#[test]
fn silence_and_bad_figures_are_shown() {
    let mut app = busy_farm();
    let mut hot = host_stats(30);
    hot.cpu_temp = 81.0;
    hot.disk_free = GIB;
    app.on_status(slave(1, 30, SlaveEvent::Stats(hot)));
    // Five minutes and a bit since slave 2 was last heard of: longer than its busy timeout.
    app.tick(at(21 + 301));
    let screen = render(&app);
    row_with(&screen, &["pi4-a", "81°C", "1.0 GiB (2%)"]);
    row_with(&screen, &["pi3-b", "5m01s"]);
}

#[test]
fn pause_tasks_and_notices_are_shown() {
    let mut app = busy_farm();
    app.on_status(StatusEvent::Paused(true));
    app.on_status(StatusEvent::Task { name: "big_brother".into(), at: at(70), state: TaskState::Paused });
    app.on_status(StatusEvent::Task { name: "the_architect".into(), at: at(71), state: TaskState::Restarting });
    app.on_status(StatusEvent::Notice { at: at(72), level: NoticeLevel::Error, text: "the index writer cannot write".into() });
    let screen = render(&app);
    row_with(&screen, &["PAUSED"]);
    row_with(&screen, &["big_brother paused", "the_architect restarting"]);
    row_with(&screen, &["the master is paused: no new builds"]);
    row_with(&screen, &["task the_architect is restarting after a failure"]);
    row_with(&screen, &["the index writer cannot write"]);
    app.on_status(StatusEvent::Paused(false));
    row_with(&render(&app), &["RUNNING"]);
}

#[test]
fn events_the_snapshot_already_holds_are_not_logged_again() {
    let mut app = busy_farm();
    let before = app.log_lines().count();
    for event in [
        joined(1, 12, "pi4-a", "cp311"),
        replied(1, 20, build("numpy", "1.26.4")),
        StatusEvent::Notice { at: at(60), level: NoticeLevel::Warning, text: "PyPI answered 503; trying again".into() },
        master_stats(10),
    ] {
        app.on_status(event);
    }
    assert_eq!(app.log_lines().count(), before);
    assert_eq!(app.farm().stats.len(), 1);
}

#[test]
fn the_screen_redraws_cleanly_at_any_size() {
    let app = busy_farm();
    let mut terminal = terminal(140, 40);
    screen(&mut terminal, &app);
    for (width, height) in [(80, 24), (60, 15), (200, 60), (30, 8), (10, 3), (1, 1), (120, 30)] {
        terminal.backend_mut().resize(width, height);
        let screen = screen(&mut terminal, &app);
        assert_eq!((screen.len(), screen[0].chars().count()), (usize::from(height), usize::from(width)));
        if width >= 60 && height >= 15 {
            assert!(screen[0].contains("piw-monitor"), "{}", screen.join("\n"));
            row_with(&screen, &["Slaves (2)"]);
        }
    }
    // Back to full size: nothing left over from the small frames.
    let screen = screen(&mut terminal, &app);
    row_with(&screen, &["pi4-a", "building", "numpy 1.26.4"]);
}

#[test]
fn an_empty_farm_says_so() {
    let screen = render(&app());
    row_with(&screen, &["Slaves (0)"]);
    row_with(&screen, &["No slaves connected"]);
    row_with(&screen, &["No statistics from the master yet"]);
}

/// Home shows the oldest lines filling the pane, PageUp moves a pane at a time and stops
/// there, PageDown comes back.
#[test]
fn the_log_scrolls_to_its_start_a_full_pane_at_a_time() {
    let mut app = app();
    for i in 0..60 {
        app.on_status(StatusEvent::Notice { at: at(i), level: NoticeLevel::Info, text: format!("notice number {i:02}") });
    }
    let shown = |app: &App| {
        let screen = render(app);
        (0..60).filter(|i| has_row(&screen, &[&format!("notice number {i:02}")])).collect::<Vec<_>>()
    };
    let pane = shown(&app).len();
    assert!(pane >= 5, "the pane shows {pane} lines");
    app.on_key(code(KeyCode::Home));
    let oldest = shown(&app);
    // The attach line is the oldest; the notices fill the rest of the pane.
    assert_eq!(oldest, (0..pane as i64 - 1).collect::<Vec<_>>());
    app.on_key(code(KeyCode::PageUp));
    assert_eq!(shown(&app), oldest, "Home is as far back as the log goes");
    app.on_key(code(KeyCode::PageDown));
    let next = shown(&app);
    assert_eq!(next.len(), pane, "a page down still fills the pane");
    assert_eq!(next[0], oldest[oldest.len() - 1], "one line stays in view");
    app.on_key(code(KeyCode::End));
    assert_eq!(shown(&app).last(), Some(&59));
}

#[test]
fn the_log_scrolls_back_and_follows_again() {
    let mut app = app();
    for i in 0..40 {
        app.on_status(StatusEvent::Notice { at: at(i), level: NoticeLevel::Info, text: format!("notice number {i:02}") });
    }
    let screen = render(&app);
    row_with(&screen, &["notice number 39"]);
    let pane = (0..40).filter(|i| has_row(&screen, &[&format!("notice number {i:02}")])).count();
    app.on_key(code(KeyCode::PageUp));
    let screen = render(&app);
    assert!(!has_row(&screen, &["notice number 39"]));
    // One line of the page before stays in view.
    let newest = 39 - (pane - 1);
    row_with(&screen, &[&format!("notice number {newest:02}")]);
    assert!(!has_row(&screen, &[&format!("notice number {:02}", newest + 1)]));
    row_with(&screen, &[&format!("Events ({} newer below: End to follow)", pane - 1)]);
    // New lines keep a scrolled log where it is.
    app.on_status(StatusEvent::Notice { at: at(50), level: NoticeLevel::Info, text: "notice number 40".into() });
    row_with(&render(&app), &[&format!("notice number {newest:02}")]);
    app.on_key(code(KeyCode::End));
    row_with(&render(&app), &["notice number 40"]);
}
