//! The monitor's state and everything that changes it: the farm as the master described it
//! (a [`FarmSnapshot`] kept current by status events), the selected slave, the event log, the
//! question waiting for a yes or no, and the status line. Key presses and messages come in
//! through methods that return what to send the master; no I/O happens here, so tests drive an
//! [`App`] with scripted events and keys and look at the screen `ui::draw` makes of it.

use std::cell::Cell;
use std::collections::{BTreeMap, VecDeque};

use chrono::TimeDelta;
use piwheels_common::protocols::{
    ControlReply, ControlRequest, ErrorKind, FarmSnapshot, FinishedBuild, NoticeLevel, SlaveAction, SlaveEvent,
    SlaveId, SlaveReply, SlaveTarget, StatusEvent, TaskState, Timestamp,
};
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use crate::view::{self, Activity};

/// Lines kept in the event log.
pub const LOG_LINES: usize = 1000;
/// Lines one Page Up or Page Down moves the event log by.
const LOG_PAGE: usize = 5;

/// Something the master must be asked; the I/O loop sends it and reports the answer back
/// through [`App::on_reply`].
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    /// The request.
    pub request: ControlRequest,
    /// What it does, in words, for the status line: `sleep slave 3 (pi4-a)`.
    pub what: String,
}

/// Why the monitor stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// The operator quit (q or Ctrl-C).
    Quit,
    /// The master shut down; says how.
    MasterStopped(String),
    /// The master went away without saying so; says where it was.
    ConnectionLost(String),
}

/// One line of the event log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// When it happened (the master's clock for the master's events).
    pub at: Timestamp,
    /// How serious it is.
    pub level: NoticeLevel,
    /// What happened.
    pub text: String,
}

/// How the status line is coloured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tone {
    /// Under way or for information.
    Info,
    /// The master did it.
    Good,
    /// It failed.
    Bad,
}

/// The line under the tables: the outcome of the last command, or a hint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusLine {
    /// What to say.
    pub text: String,
    /// How.
    pub tone: Tone,
}

/// A command that destroys work, waiting for the operator's yes or no.
#[derive(Debug, Clone, PartialEq)]
pub struct Confirmation {
    /// The question, saying what would be lost.
    pub question: String,
    /// What a yes sends.
    pub command: Command,
}

/// Where the monitor is attached, for the header and the messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints {
    /// The master's control socket.
    pub control: String,
    /// The master's status socket.
    pub status: String,
}

/// Everything the screen shows, and the operator's place in it.
#[derive(Debug)]
pub struct App {
    pub(crate) farm: FarmSnapshot,
    pub(crate) endpoints: Endpoints,
    pub(crate) now: Timestamp,
    /// The selected slave, by id so that it stays selected while others come and go.
    pub(crate) selected: Option<SlaveId>,
    pub(crate) log: VecDeque<LogLine>,
    /// How many of the newest log lines are scrolled out of view (0: following the log), at
    /// most as many as leave the event pane full.
    pub(crate) log_scroll: usize,
    /// Lines the event pane showed when it was last drawn: a page, and how far back the log
    /// scrolls.
    pub(crate) log_height: Cell<usize>,
    pub(crate) confirmation: Option<Confirmation>,
    pub(crate) status: Option<StatusLine>,
    pub(crate) help: bool,
    /// Whether the status socket is known to be connected (an event arrived or the socket
    /// said so).
    pub(crate) live: bool,
    /// Set once a task of the master stopped: the master is shutting down.
    pub(crate) stopping: bool,
    failed_tasks: Vec<String>,
    /// What each building slave builds and since when, for the "done with" log line.
    builds: BTreeMap<SlaveId, (String, Timestamp)>,
    exit: Option<Exit>,
}

impl App {
    /// A monitor attached to a master that sent `snapshot` at `now`.
    pub fn new(snapshot: FarmSnapshot, endpoints: Endpoints, now: Timestamp) -> App {
        let mut app = App {
            farm: FarmSnapshot::default(),
            endpoints,
            now,
            selected: None,
            log: VecDeque::new(),
            log_scroll: 0,
            log_height: Cell::new(LOG_PAGE),
            confirmation: None,
            status: None,
            help: false,
            live: false,
            stopping: false,
            failed_tasks: Vec::new(),
            builds: BTreeMap::new(),
            exit: None,
        };
        // The master's recent notices and recorded builds, in the order they happened.
        let mut earlier: Vec<(Timestamp, NoticeLevel, String)> = snapshot.notices.clone();
        earlier.extend(snapshot.builds.iter().map(|recent| {
            let name = if recent.label.is_empty() { format!("slave {}", recent.slave_id) } else { format!("slave {} ({})", recent.slave_id, recent.label) };
            let (level, text) = finished_line(&name, &recent.build);
            (recent.at, level, text)
        }));
        earlier.sort_by_key(|(at, _, _)| *at);
        for (at, level, text) in earlier {
            app.log(at, level, text);
        }
        for (id, slave) in &snapshot.slaves {
            if let Activity::Building { package, version } = view::activity(slave) {
                app.builds.insert(*id, (format!("{package} {version}"), slave.state_since));
            }
        }
        let attached = format!(
            "attached to the master at {} (running since {}, {} slaves)",
            app.endpoints.control,
            snapshot.started.format("%Y-%m-%d %H:%M:%S UTC"),
            snapshot.slaves.len()
        );
        app.log(now, NoticeLevel::Info, attached);
        app.farm = snapshot;
        app.selected = app.slave_order().first().copied();
        app
    }

    /// The farm as the monitor knows it.
    pub fn farm(&self) -> &FarmSnapshot {
        &self.farm
    }

    /// The selected slave.
    pub fn selected(&self) -> Option<SlaveId> {
        self.selected
    }

    /// The event log, oldest first.
    pub fn log_lines(&self) -> impl Iterator<Item = &LogLine> {
        self.log.iter()
    }

    /// The status line.
    pub fn status(&self) -> Option<&StatusLine> {
        self.status.as_ref()
    }

    /// The question waiting for y or n.
    pub fn confirmation(&self) -> Option<&Confirmation> {
        self.confirmation.as_ref()
    }

    /// Set when the monitor should stop, saying why.
    pub fn exit(&self) -> Option<&Exit> {
        self.exit.as_ref()
    }

    /// Moves the clock the screen measures ages and durations against.
    pub fn tick(&mut self, now: Timestamp) {
        self.now = now;
    }

    /// Slave ids in the order the table shows them: by ABI, label, then id.
    pub fn slave_order(&self) -> Vec<SlaveId> {
        let mut ids: Vec<_> = self.farm.slaves.iter().map(|(id, s)| (s.hello.abi.as_str(), s.hello.host.label.as_str(), *id)).collect();
        ids.sort_unstable();
        ids.into_iter().map(|(_, _, id)| id).collect()
    }

    /// Takes in one event from the master's status socket.
    pub fn on_status(&mut self, event: StatusEvent) {
        self.live = true;
        let order_before = self.slave_order();
        match &event {
            StatusEvent::Slave { slave_id, at, event } => self.log_slave_event(*slave_id, *at, event),
            StatusEvent::Task { name, at, state } => self.note_task(name, *at, *state),
            StatusEvent::Paused(paused) if *paused != self.farm.paused => {
                let text = if *paused { "the master is paused: no new builds" } else { "the master is running again" };
                self.log(self.now, NoticeLevel::Info, text.into());
            }
            StatusEvent::Notice { at, level, text } if !self.farm.notices.contains(&(*at, *level, text.clone())) => {
                self.log(*at, *level, text.clone());
            }
            StatusEvent::Paused(_) | StatusEvent::Notice { .. } | StatusEvent::Stats(_) => {}
        }
        self.farm.apply(&event);
        self.keep_selection(&order_before);
        if self.stopping && self.farm.tasks.values().all(|s| matches!(s, TaskState::Stopped | TaskState::Failed)) {
            self.exit = Some(Exit::MasterStopped(self.stop_message()));
        }
    }

    /// Stops the monitor, as q does (the terminal went away, say).
    pub fn quit(&mut self) {
        self.exit = Some(Exit::Quit);
    }

    /// The status socket is connected.
    pub fn on_connected(&mut self) {
        self.live = true;
    }

    /// The status socket lost its connection: the master stopped or cannot be reached.
    pub fn on_disconnected(&mut self) {
        self.exit = Some(if self.stopping {
            Exit::MasterStopped(self.stop_message())
        } else {
            Exit::ConnectionLost(format!("lost the connection to the master at {}", self.endpoints.status))
        });
    }

    /// A status message could not be read (a master of another version, say).
    pub fn on_bad_status(&mut self, error: String) {
        self.log(self.now, NoticeLevel::Warning, format!("unreadable status message: {error}"));
    }

    /// The master's answer to a command (or why there was none).
    pub fn on_reply(&mut self, what: &str, reply: Result<ControlReply, String>) {
        let (tone, text) = match reply {
            Ok(ControlReply::Done) => (Tone::Good, format!("{what}: done")),
            Ok(ControlReply::Error(error)) if error.kind == ErrorKind::Refused => (Tone::Bad, format!("{what}: refused: {}", error.message)),
            Ok(ControlReply::Error(error)) => (Tone::Bad, format!("{what}: failed: {}", error.message)),
            Ok(ControlReply::Welcome { .. }) => (Tone::Bad, format!("{what}: the master answered with a welcome")),
            Err(error) => (Tone::Bad, format!("{what}: no answer: {error}")),
        };
        let level = if tone == Tone::Good { NoticeLevel::Info } else { NoticeLevel::Warning };
        self.log(self.now, level, text.clone());
        self.status = Some(StatusLine { text, tone });
    }

    /// Takes in one key press; returns the request to send the master, if any.
    pub fn on_key(&mut self, key: KeyEvent) -> Option<Command> {
        if key.kind == KeyEventKind::Release {
            return None;
        }
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            self.exit = Some(Exit::Quit);
            return None;
        }
        if let Some(confirmation) = self.confirmation.take() {
            return match key.code {
                KeyCode::Char('y' | 'Y') => Some(self.sending(confirmation.command)),
                KeyCode::Char('n' | 'N' | 'q') | KeyCode::Esc => {
                    self.status = Some(StatusLine { text: format!("not done: {}", confirmation.command.what), tone: Tone::Info });
                    None
                }
                _ => {
                    self.confirmation = Some(confirmation);
                    None
                }
            };
        }
        if self.help {
            self.help = false;
            if matches!(key.code, KeyCode::Esc | KeyCode::Char('?' | 'h')) {
                return None;
            }
        }
        match key.code {
            KeyCode::Char('q') => self.exit = Some(Exit::Quit),
            KeyCode::Char('?' | 'h') => self.help = true,
            KeyCode::Up | KeyCode::Char('k') => self.move_selection(-1),
            KeyCode::Down | KeyCode::Char('j') => self.move_selection(1),
            KeyCode::PageUp => self.log_scroll = (self.log_scroll + self.log_page()).min(self.max_log_scroll()),
            KeyCode::PageDown => self.log_scroll = self.log_scroll.min(self.max_log_scroll()).saturating_sub(self.log_page()),
            KeyCode::Home => self.log_scroll = self.max_log_scroll(),
            KeyCode::End => self.log_scroll = 0,
            KeyCode::Char('p') => return Some(self.sending(Command { request: ControlRequest::Pause, what: "pause the master".into() })),
            KeyCode::Char('r') => return Some(self.sending(Command { request: ControlRequest::Resume, what: "resume the master".into() })),
            KeyCode::Char(c) => {
                let action = match c.to_ascii_lowercase() {
                    's' => SlaveAction::Sleep,
                    'w' => SlaveAction::Wake,
                    'x' => SlaveAction::Skip,
                    'd' => SlaveAction::Kill,
                    '+' => SlaveAction::AddBuilder,
                    '-' => SlaveAction::RetireBuilder,
                    _ => return None,
                };
                return self.slave_command(action, c.is_ascii_uppercase());
            }
            _ => {}
        }
        None
    }

    fn sending(&mut self, command: Command) -> Command {
        self.status = Some(StatusLine { text: format!("{}: asking the master…", command.what), tone: Tone::Info });
        command
    }

    /// A slave command for the selected slave, or all of them; one that destroys work waits
    /// for confirmation.
    fn slave_command(&mut self, action: SlaveAction, all: bool) -> Option<Command> {
        let verb = match action {
            SlaveAction::Sleep => "sleep",
            SlaveAction::Wake => "wake",
            SlaveAction::Skip => "skip the build of",
            SlaveAction::Kill => "kill",
            SlaveAction::AddBuilder => "add a builder to the host of",
            SlaveAction::RetireBuilder => "retire a builder of the host of",
        };
        let (target, what, question) = if all {
            let building = self.farm.slaves.values().filter(|s| matches!(view::activity(s), Activity::Building { .. })).count();
            let lost = match building {
                0 => "no build is in progress".to_string(),
                1 => "the build in progress is lost".to_string(),
                n => format!("the {n} builds in progress are lost"),
            };
            let question = match action {
                SlaveAction::Skip => format!("Skip the builds of all slaves? {}.", capitalise(&lost)),
                _ => format!("Kill all {} slaves? They exit at their next contact; {lost}.", self.farm.slaves.len()),
            };
            (SlaveTarget::All, format!("{verb} all slaves"), question)
        } else {
            let Some(id) = self.selected.filter(|id| self.farm.slaves.contains_key(id)) else {
                self.status = Some(StatusLine { text: "no slave is selected".into(), tone: Tone::Bad });
                return None;
            };
            let name = self.slave_name(id);
            let build = match view::activity(&self.farm.slaves[&id]) {
                Activity::Building { package, version } => Some(format!("{package} {version}")),
                _ => None,
            };
            let question = match (action, build) {
                (SlaveAction::Skip, Some(build)) => format!("Skip the build of {build} on {name}? The work done on it is lost."),
                (SlaveAction::Skip, None) => format!("Skip the build of {name}? It is not building now."),
                (_, Some(build)) => format!("Kill {name}? It exits at its next contact; its build of {build} is lost."),
                (_, None) => format!("Kill {name}? It exits at its next contact."),
            };
            (SlaveTarget::One(id), format!("{verb} {name}"), question)
        };
        let command = Command { request: ControlRequest::Slaves { target, action }, what };
        if matches!(action, SlaveAction::Skip | SlaveAction::Kill) {
            self.status = Some(StatusLine { text: format!("{question} (y/n)"), tone: Tone::Info });
            self.confirmation = Some(Confirmation { question, command });
            None
        } else {
            Some(self.sending(command))
        }
    }

    fn move_selection(&mut self, step: isize) {
        let order = self.slave_order();
        if order.is_empty() {
            self.selected = None;
            return;
        }
        let at = self.selected.and_then(|id| order.iter().position(|o| *o == id));
        let next = match at {
            Some(i) => i.saturating_add_signed(step).min(order.len() - 1),
            None => 0,
        };
        self.selected = Some(order[next]);
    }

    /// After slaves came or went: the selected slave stays selected; if it left, its
    /// neighbour takes its place; with nothing selected, the first slave is.
    fn keep_selection(&mut self, order_before: &[SlaveId]) {
        let order = self.slave_order();
        match self.selected {
            Some(id) if order.contains(&id) => {}
            Some(id) => {
                let place = order_before.iter().position(|o| *o == id).unwrap_or(0);
                self.selected = order.get(place.min(order.len().saturating_sub(1))).copied();
            }
            None => self.selected = order.first().copied(),
        }
    }

    /// `slave 3 (pi4-a)`, or `slave 3` for a slave without a label.
    pub(crate) fn slave_name(&self, id: SlaveId) -> String {
        match self.farm.slaves.get(&id).map(|s| s.hello.host.label.as_str()) {
            Some(label) if !label.is_empty() => format!("slave {id} ({label})"),
            _ => format!("slave {id}"),
        }
    }

    /// Logs what a slave event means, before it is applied (a slave that leaves takes its name
    /// with it). Events the snapshot already reflects log nothing.
    fn log_slave_event(&mut self, id: SlaveId, at: Timestamp, event: &SlaveEvent) {
        let known = self.farm.slaves.get(&id);
        match event {
            SlaveEvent::Hello(hello) => {
                if known.is_some_and(|s| s.first_seen == at && s.hello == *hello) {
                    return;
                }
                let label = if hello.host.label.is_empty() { String::new() } else { format!(" ({})", hello.host.label) };
                let os = format!("{} {}", hello.host.os_name, hello.host.os_version);
                let software = &hello.versions.software;
                let text = format!("slave {id}{label} joined: {} on {}, {}, piwheels {software}", hello.abi, hello.platform, os.trim());
                self.log(at, NoticeLevel::Info, text);
            }
            SlaveEvent::Gone { reason } => {
                if known.is_some() {
                    let text = format!("{} left: {reason}", self.slave_name(id));
                    self.log(at, NoticeLevel::Warning, text);
                }
                self.builds.remove(&id);
            }
            SlaveEvent::Replied(reply) => {
                let Some(slave) = known else { return };
                if *reply == SlaveReply::Cont || slave.last_reply.as_ref() == Some(reply) {
                    return;
                }
                let name = self.slave_name(id);
                let line = match reply {
                    SlaveReply::Build { package, version, .. } => {
                        self.builds.insert(id, (format!("{package} {version}"), at));
                        Some((NoticeLevel::Info, format!("{name} is building {package} {version}")))
                    }
                    // A recorded build was logged when it was recorded: this one was not.
                    SlaveReply::Done => self.builds.remove(&id).map(|(build, started)| {
                        (NoticeLevel::Info, format!("{name} stopped building {build} after {}", view::duration(at - started)))
                    }),
                    SlaveReply::Sleep { paused: true } => Some((NoticeLevel::Info, format!("{name} is asleep"))),
                    SlaveReply::Die { reason } => Some((NoticeLevel::Warning, format!("{name} was told to exit: {reason}"))),
                    SlaveReply::Error(error) => Some((NoticeLevel::Warning, format!("{name} was refused: {}", error.message))),
                    SlaveReply::AddBuilder => Some((NoticeLevel::Info, format!("{name}'s host was asked to start a builder"))),
                    SlaveReply::RetireBuilder => Some((NoticeLevel::Info, format!("{name}'s host was asked to retire a builder"))),
                    SlaveReply::Ack { .. } | SlaveReply::Sleep { paused: false } | SlaveReply::Send { .. } | SlaveReply::Cont => None,
                };
                if let Some((level, text)) = line {
                    self.log(at, level, text);
                }
            }
            SlaveEvent::Finished(build) => {
                if self.farm.builds.iter().any(|recent| recent.build.build_id == build.build_id) {
                    return;
                }
                self.builds.remove(&id);
                let (level, text) = finished_line(&self.slave_name(id), build);
                self.log(at, level, text);
            }
            SlaveEvent::Stats(_) => {}
        }
    }

    fn note_task(&mut self, name: &str, at: Timestamp, state: TaskState) {
        if self.farm.tasks.get(name) == Some(&state) {
            return;
        }
        match state {
            TaskState::Stopped if !self.stopping => {
                self.stopping = true;
                self.log(at, NoticeLevel::Warning, format!("the master is shutting down ({name} stopped)"));
            }
            TaskState::Failed => {
                self.failed_tasks.push(name.to_string());
                self.log(at, NoticeLevel::Error, format!("task {name} failed: the master stops"));
            }
            TaskState::Restarting => self.log(at, NoticeLevel::Warning, format!("task {name} is restarting after a failure")),
            TaskState::Paused | TaskState::Running | TaskState::Stopped => {}
        }
    }

    fn stop_message(&self) -> String {
        if self.failed_tasks.is_empty() {
            "the master has shut down".into()
        } else {
            format!("the master stopped after {} failed", self.failed_tasks.join(", "))
        }
    }

    fn log(&mut self, at: Timestamp, level: NoticeLevel, text: String) {
        if self.log.len() >= LOG_LINES {
            self.log.pop_front();
        }
        self.log.push_back(LogLine { at, level, text });
        // A scrolled log stays where the operator left it.
        if self.log_scroll > 0 {
            self.log_scroll = (self.log_scroll + 1).min(self.max_log_scroll());
        }
    }

    /// Lines one PageUp or PageDown moves: the pane's height, less one line kept in view.
    fn log_page(&self) -> usize {
        self.log_height.get().saturating_sub(1).max(1)
    }

    /// The furthest back the log scrolls: its oldest lines filling the pane.
    pub(crate) fn max_log_scroll(&self) -> usize {
        self.log.len().saturating_sub(self.log_height.get().max(1))
    }
}

/// The log line of a recorded build: a success, or a failure of the package's own (a
/// warning, so that it stands out).
fn finished_line(name: &str, build: &FinishedBuild) -> (NoticeLevel, String) {
    let (release, took) = (format!("{} {}", build.package, build.version), view::duration(TimeDelta::from_std(build.duration).unwrap_or(TimeDelta::MAX)));
    match build.failure {
        None => (NoticeLevel::Info, format!("{name} built {release} in {took}")),
        Some(failure) => {
            let why = failure.limit_reason().unwrap_or("its command failed");
            (NoticeLevel::Warning, format!("{name} failed to build {release} after {took}: {why}"))
        }
    }
}

fn capitalise(text: &str) -> String {
    let mut chars = text.chars();
    chars.next().map(|first| first.to_uppercase().chain(chars).collect()).unwrap_or_default()
}
