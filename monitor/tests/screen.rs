//! The screen after scripted status messages: slaves appearing, building, figures, a slave
//! leaving, notices, a pause, and the terminal resized.

mod support;

use piwheels_common::protocols::{FarmSnapshot, NoticeLevel, SlaveEvent, SlaveReply, SlaveSnapshot, StatusEvent, TaskState};
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
    // A finished build says how long it took.
    app.on_status(replied(1, 20 + 600, SlaveReply::Send { filename: "numpy-1.26.4-cp311-cp311-linux_armv7l.whl".into(), transfer: 1 }));
    app.on_status(replied(1, 20 + 610, SlaveReply::Done));
    let screen = render(&app);
    row_with(&screen, &["slave 1 (pi4-a) is done with numpy 1.26.4 after 10m10s"]);
    row_with(&screen, &["pi4-a", "finishing"]);
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

#[test]
fn the_log_scrolls_back_and_follows_again() {
    let mut app = app();
    for i in 0..40 {
        app.on_status(StatusEvent::Notice { at: at(i), level: NoticeLevel::Info, text: format!("notice number {i:02}") });
    }
    let screen = render(&app);
    row_with(&screen, &["notice number 39"]);
    app.on_key(code(ratatui::crossterm::event::KeyCode::PageUp));
    app.on_key(code(ratatui::crossterm::event::KeyCode::PageUp));
    let screen = render(&app);
    assert!(!has_row(&screen, &["notice number 39"]));
    row_with(&screen, &["notice number 29"]);
    row_with(&screen, &["Events (10 newer below: End to follow)"]);
    // New lines keep a scrolled log where it is.
    app.on_status(StatusEvent::Notice { at: at(50), level: NoticeLevel::Info, text: "notice number 40".into() });
    row_with(&render(&app), &["notice number 29"]);
    app.on_key(code(ratatui::crossterm::event::KeyCode::End));
    row_with(&render(&app), &["notice number 40"]);
}
