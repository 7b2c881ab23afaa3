//! Key handling: selecting slaves, the commands each key sends, confirmation before anything
//! that destroys work, the master's answers in the status line, and leaving.

mod support;

use piwheels_common::protocols::{ControlReply, ControlRequest, SlaveAction, SlaveEvent, SlaveReply, SlaveTarget, StatusEvent, TaskState, WireError};
use piwheels_monitor::app::Tone;
use piwheels_monitor::{App, Exit};
use ratatui::crossterm::event::KeyCode;
use support::*;

/// Three slaves, shown in the order cp311/pi4-a (1), cp311/pi4-b (3), cp313/pi3-c (2); the
/// first is building.
fn three_slaves() -> App {
    let mut app = app();
    app.on_status(joined(1, 10, "pi4-a", "cp311"));
    app.on_status(joined(2, 11, "pi3-c", "cp313"));
    app.on_status(joined(3, 12, "pi4-b", "cp311"));
    app.on_status(replied(1, 20, build("numpy", "1.26.4")));
    app
}

fn slaves(target: SlaveTarget, action: SlaveAction) -> ControlRequest {
    ControlRequest::Slaves { target, action }
}

/// The label on the highlighted row.
fn highlighted(app: &App) -> String {
    let screen = render(app);
    let row = screen.iter().find(|row| row.contains('▶')).unwrap_or_else(|| panic!("nothing highlighted:\n{}", screen.join("\n")));
    ["pi4-a", "pi4-b", "pi3-c"].into_iter().find(|label| row.contains(label)).unwrap_or_default().to_string()
}

#[test]
fn arrows_and_vim_keys_move_the_selection_in_table_order() {
    let mut app = three_slaves();
    assert_eq!(app.slave_order(), vec![1, 3, 2]);
    assert_eq!((app.selected(), highlighted(&app)), (Some(1), "pi4-a".to_string()));
    app.on_key(key('j'));
    assert_eq!((app.selected(), highlighted(&app)), (Some(3), "pi4-b".to_string()));
    app.on_key(code(KeyCode::Down));
    app.on_key(code(KeyCode::Down));
    assert_eq!(app.selected(), Some(2), "the selection stops at the last slave");
    app.on_key(key('k'));
    app.on_key(code(KeyCode::Up));
    app.on_key(code(KeyCode::Up));
    assert_eq!(app.selected(), Some(1), "and at the first");
}

#[test]
fn the_selection_follows_its_slave_and_moves_to_a_neighbour_when_it_leaves() {
    let mut app = three_slaves();
    app.on_key(key('j'));
    assert_eq!(app.selected(), Some(3));
    // A slave sorting before it joins: still slave 3.
    app.on_status(joined(4, 30, "pi0-z", "cp310"));
    assert_eq!(app.selected(), Some(3));
    app.on_status(slave(3, 40, SlaveEvent::Gone { reason: "said goodbye".into() }));
    assert_eq!(app.selected(), Some(2), "the slave that took its place");
    app.on_status(slave(2, 41, SlaveEvent::Gone { reason: "said goodbye".into() }));
    assert_eq!(app.selected(), Some(1), "the last slave, when the last row went");
}

#[test]
fn sleep_and_wake_are_sent_at_once_for_one_slave_or_all() {
    let mut app = three_slaves();
    let sent = app.on_key(key('s')).expect("a command");
    assert_eq!((sent.request, sent.what.as_str()), (slaves(SlaveTarget::One(1), SlaveAction::Sleep), "sleep slave 1 (pi4-a)"));
    row_with(&render(&app), &["sleep slave 1 (pi4-a): asking the master…"]);
    app.on_reply("sleep slave 1 (pi4-a)", Ok(ControlReply::Done));
    assert_eq!(app.status().unwrap().tone, Tone::Good);
    row_with(&render(&app), &["sleep slave 1 (pi4-a): done"]);

    assert_eq!(app.on_key(key('S')).unwrap().request, slaves(SlaveTarget::All, SlaveAction::Sleep));
    assert_eq!(app.on_key(key('w')).unwrap().request, slaves(SlaveTarget::One(1), SlaveAction::Wake));
    assert_eq!(app.on_key(key('W')).unwrap().request, slaves(SlaveTarget::All, SlaveAction::Wake));
}

#[test]
fn pause_and_resume_go_to_the_master() {
    let mut app = three_slaves();
    assert_eq!(app.on_key(key('p')).unwrap().request, ControlRequest::Pause);
    assert_eq!(app.on_key(key('r')).unwrap().request, ControlRequest::Resume);
}

#[test]
fn skip_asks_first_and_no_sends_nothing() {
    let mut app = three_slaves();
    assert_eq!(app.on_key(key('x')), None);
    let question = app.confirmation().expect("a question").question.clone();
    assert!(question.contains("numpy 1.26.4") && question.contains("slave 1 (pi4-a)"), "{question}");
    let screen = render(&app);
    row_with(&screen, &["Are you sure?"]);
    row_with(&screen, &["y: yes", "n: no"]);
    // Other keys do nothing while the question waits, not even moving the selection.
    assert_eq!(app.on_key(key('j')), None);
    assert_eq!((app.selected(), app.confirmation().is_some()), (Some(1), true));
    assert_eq!(app.on_key(key('n')), None);
    assert!(app.confirmation().is_none());
    row_with(&render(&app), &["not done: skip the build of slave 1 (pi4-a)"]);
    assert!(!has_row(&render(&app), &["Are you sure?"]));

    app.on_key(key('x'));
    assert_eq!(app.on_key(code(KeyCode::Esc)), None);
    app.on_key(key('x'));
    let sent = app.on_key(key('y')).expect("sent after yes");
    assert_eq!(sent.request, slaves(SlaveTarget::One(1), SlaveAction::Skip));
}

#[test]
fn kill_and_kill_all_ask_first() {
    let mut app = three_slaves();
    app.on_key(key('j'));
    assert_eq!(app.on_key(key('d')), None);
    assert!(app.confirmation().unwrap().question.starts_with("Kill slave 3 (pi4-b)?"));
    assert_eq!(app.on_key(key('y')).unwrap().request, slaves(SlaveTarget::One(3), SlaveAction::Kill));

    assert_eq!(app.on_key(key('D')), None);
    let question = app.confirmation().unwrap().question.clone();
    assert!(question.starts_with("Kill all 3 slaves?") && question.contains("the build in progress is lost"), "{question}");
    row_with(&render(&app), &["Kill all 3 slaves?"]);
    assert_eq!(app.on_key(key('Y')).unwrap().request, slaves(SlaveTarget::All, SlaveAction::Kill));

    assert_eq!(app.on_key(key('X')), None);
    assert!(app.confirmation().unwrap().question.starts_with("Skip the builds of all slaves?"));
    assert_eq!(app.on_key(key('y')).unwrap().request, slaves(SlaveTarget::All, SlaveAction::Skip));
}

#[test]
fn the_masters_errors_and_silence_are_shown() {
    let mut app = three_slaves();
    app.on_key(key('w'));
    app.on_reply("wake slave 1 (pi4-a)", Ok(ControlReply::Error(WireError::refused("no slave has id 1"))));
    assert_eq!(app.status().unwrap().tone, Tone::Bad);
    row_with(&render(&app), &["wake slave 1 (pi4-a): refused: no slave has id 1"]);
    app.on_reply("wake slave 1 (pi4-a)", Ok(ControlReply::Error(WireError::unavailable("the slave driver did not answer"))));
    assert_eq!(app.status().unwrap().tone, Tone::Bad);
    row_with(&render(&app), &["wake slave 1 (pi4-a): failed: the slave driver did not answer"]);
    app.on_reply("pause the master", Err("no reply from ipc:///run/piwheels/control within 5s".into()));
    let screen = render(&app);
    row_with(&screen, &["pause the master: no answer: no reply from ipc:///run/piwheels/control within 5s"]);
    app.on_reply("pause the master", Ok(ControlReply::Error(WireError::refused("say Hello (with your versions) first"))));
    row_with(&render(&app), &["pause the master: refused: say Hello"]);
}

#[test]
fn a_slave_command_without_slaves_says_none_is_selected() {
    let mut app = app();
    assert_eq!(app.on_key(key('s')), None);
    assert_eq!(app.status().unwrap().text, "no slave is selected");
    // Commands for all slaves still go: the master applies them to none.
    assert!(app.on_key(key('S')).is_some());
}

#[test]
fn help_opens_and_any_key_closes_it() {
    let mut app = three_slaves();
    app.on_key(key('?'));
    row_with(&render(&app), &["Keys (any key closes)"]);
    row_with(&render(&app), &["x / X", "skip the build"]);
    assert_eq!(app.on_key(code(KeyCode::Esc)), None);
    assert!(!has_row(&render(&app), &["Keys (any key closes)"]));
    // A command key closes help and does its work.
    app.on_key(key('?'));
    assert!(app.on_key(key('s')).is_some());
}

#[test]
fn q_and_ctrl_c_leave() {
    let mut app = three_slaves();
    app.on_key(key('q'));
    assert_eq!(app.exit(), Some(&Exit::Quit));
    let mut app = three_slaves();
    app.on_key(ctrl_c());
    assert_eq!(app.exit(), Some(&Exit::Quit));
    // Ctrl-C leaves even while a question waits; q there only answers no.
    let mut app = three_slaves();
    app.on_key(key('d'));
    app.on_key(key('q'));
    assert_eq!((app.exit(), app.confirmation().is_some()), (None, false));
    app.on_key(key('d'));
    app.on_key(ctrl_c());
    assert_eq!(app.exit(), Some(&Exit::Quit));
}

#[test]
fn the_monitor_leaves_when_every_task_of_the_master_stopped() {
    let mut app = three_slaves();
    app.on_status(StatusEvent::Task { name: "big_brother".into(), at: at(90), state: TaskState::Stopped });
    assert_eq!(app.exit(), None);
    row_with(&render(&app), &["SHUTTING DOWN"]);
    row_with(&render(&app), &["the master is shutting down (big_brother stopped)"]);
    app.on_status(StatusEvent::Task { name: "the_architect".into(), at: at(91), state: TaskState::Stopped });
    app.on_status(StatusEvent::Task { name: "seraph".into(), at: at(92), state: TaskState::Stopped });
    assert_eq!(app.exit(), Some(&Exit::MasterStopped("the master has shut down".into())));
}

#[test]
fn a_failed_task_is_named_when_the_master_stops() {
    let mut app = three_slaves();
    app.on_status(StatusEvent::Task { name: "the_architect".into(), at: at(90), state: TaskState::Failed });
    row_with(&render(&app), &["task the_architect failed: the master stops"]);
    app.on_status(StatusEvent::Task { name: "big_brother".into(), at: at(91), state: TaskState::Stopped });
    // The master closes its sockets before the last report arrives.
    app.on_disconnected();
    assert_eq!(app.exit(), Some(&Exit::MasterStopped("the master stopped after the_architect failed".into())));
}

#[test]
fn a_lost_connection_ends_the_monitor_naming_the_master() {
    let mut app = three_slaves();
    app.on_disconnected();
    assert_eq!(app.exit(), Some(&Exit::ConnectionLost("lost the connection to the master at ipc:///run/piwheels/status".into())));
}

#[test]
fn replies_to_a_slave_show_its_state() {
    let mut app = three_slaves();
    app.on_status(replied(2, 30, SlaveReply::Sleep { paused: true }));
    app.on_status(replied(3, 31, SlaveReply::Die { reason: "killed by an operator".into() }));
    let screen = render(&app);
    row_with(&screen, &["pi3-c", "asleep"]);
    row_with(&screen, &["pi4-b", "exiting", "killed by an operator"]);
    row_with(&screen, &["slave 2 (pi3-c) is asleep"]);
    row_with(&screen, &["slave 3 (pi4-b) was told to exit: killed by an operator"]);
}
