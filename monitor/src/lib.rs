//! piw-monitor, the operators' live view of a piwheels master.
//!
//! The parts: [`app::App`] holds the state and takes key presses and status events,
//! [`ui::draw`] paints it, [`view`] derives what the screen says from the master's snapshot,
//! and [`connection`] talks to the master. [`run`] wires them together: subscribe to the
//! status socket, say hello and take the snapshot, then loop over terminal events, status
//! events and the master's answers until the operator quits or the master goes.

pub mod app;
pub mod config;
pub mod connection;
pub mod ui;
pub mod view;

use std::sync::mpsc;
use std::time::Duration;

use anyhow::Context as _;
use piwheels_common::protocols::{ControlReply, ControlRequest};
use piwheels_common::keys::Role;
use piwheels_common::transport::{Client, DEFAULT_MAX_MESSAGE};
use ratatui::crossterm::event::Event;

pub use app::{App, Endpoints, Exit};
pub use config::MonitorConfig;
use connection::Input;

/// How often the screen is redrawn when nothing happens (ages and durations move on).
const TICK: Duration = Duration::from_secs(1);

/// Attaches to the master and runs the screen until the operator quits or the master goes.
/// An error means the monitor could not attach (no master answering, versions refused) or the
/// terminal failed; the terminal is restored in every case.
pub fn run(cfg: &MonitorConfig) -> anyhow::Result<Exit> {
    let timeout = cfg.control_timeout.0;
    let ctx = zmq::Context::new();
    let status_security = cfg.auth.security(&cfg.status_queue, Role::Monitor)?;
    let control_security = cfg.auth.security(&cfg.control_queue, Role::Monitor)?;
    let (feed, _) = connection::subscribe(&ctx, &cfg.status_queue, &status_security)?;
    let control = Client::<ControlRequest, ControlReply>::connect_secured(&ctx, &cfg.control_queue, Some(DEFAULT_MAX_MESSAGE), &control_security)?;
    let snapshot = connection::hello(&control, timeout)?;
    let endpoints = Endpoints { control: cfg.control_queue.clone(), status: cfg.status_queue.clone() };
    let mut app = App::new(snapshot, endpoints, chrono::Utc::now());

    let (inputs_tx, inputs) = mpsc::channel();
    let (commands, commands_rx) = mpsc::channel();
    let out = inputs_tx.clone();
    std::thread::Builder::new().name("status".into()).spawn(move || feed.pump(out))?;
    let out = inputs_tx.clone();
    std::thread::Builder::new().name("control".into()).spawn(move || connection::serve_commands(control, timeout, commands_rx, out))?;

    let mut terminal = match ratatui::try_init() {
        Ok(terminal) => terminal,
        Err(e) => {
            ratatui::restore();
            return Err(e).context("cannot take over the terminal (piw-monitor needs one)");
        }
    };
    // The terminal reader starts only once the terminal is in raw mode.
    std::thread::Builder::new().name("terminal".into()).spawn(move || connection::read_terminal(inputs_tx))?;
    let outcome = screen_loop(&mut terminal, &mut app, &inputs, &commands);
    ratatui::restore();
    // The other threads may still be blocked on their sockets or the terminal; they hold the
    // ZeroMQ context too, so dropping ours waits for nothing, and leaving main ends them.
    outcome?;
    Ok(app.exit().cloned().unwrap_or(Exit::Quit))
}

fn screen_loop(
    terminal: &mut ratatui::DefaultTerminal,
    app: &mut App,
    inputs: &mpsc::Receiver<Input>,
    commands: &mpsc::Sender<app::Command>,
) -> anyhow::Result<()> {
    loop {
        terminal.draw(|frame| ui::draw(frame, app))?;
        if app.exit().is_some() {
            return Ok(());
        }
        let first = match inputs.recv_timeout(TICK) {
            Ok(input) => Some(input),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => anyhow::bail!("every input of the monitor has gone"),
        };
        app.tick(chrono::Utc::now());
        // Take everything waiting before drawing again, so a burst of events costs one frame.
        for input in first.into_iter().chain(std::iter::from_fn(|| inputs.try_recv().ok())) {
            if let Some(command) = handle(app, input) {
                commands.send(command)?;
            }
            if app.exit().is_some() {
                break;
            }
        }
    }
}

/// Hands one input to the app; the command to send the master, if any.
fn handle(app: &mut App, input: Input) -> Option<app::Command> {
    match input {
        Input::Terminal(Event::Key(key)) => return app.on_key(key),
        // A resize needs nothing but the redraw that follows every input.
        Input::Terminal(_) => {}
        Input::TerminalLost(_) => app.quit(),
        Input::Status(event) => app.on_status(*event),
        Input::BadStatus(error) => app.on_bad_status(error),
        Input::Connected => app.on_connected(),
        Input::Disconnected => app.on_disconnected(),
        Input::Reply { what, reply } => app.on_reply(&what, reply),
    }
    None
}
