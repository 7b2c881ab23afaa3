//! The monitor's sockets: it subscribes to the master's status socket, says hello on the
//! control socket and gets the master's snapshot, then follows the status events and sends the
//! operator's commands. Each blocking part runs on its own thread and reports to the UI loop
//! as an [`Input`].
//!
//! The status socket is watched with a ZeroMQ socket monitor: its connection coming up is how
//! the monitor knows it is subscribed before it asks for the snapshot (so that no event falls
//! between the two), and its connection dropping is how it learns that the master has gone.
//! Heartbeats make a master whose host vanished count as gone too.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use piwheels_common::protocols::{ControlReply, ControlRequest, ErrorKind, FarmSnapshot, StatusEvent, Versions};
use piwheels_common::transport::{self, Client, DEFAULT_MAX_MESSAGE, Receiver, Security, TransportError};
use ratatui::crossterm::event::Event;

use crate::app::Command;

/// How long to wait for the status socket to connect before saying hello anyway (the master
/// may have no status socket where we look; the screen then says it waits for status).
const SUBSCRIBE_WAIT: Duration = Duration::from_secs(1);
/// Time for the subscription to reach the master once the connection is up.
const SUBSCRIBE_SETTLE: Duration = Duration::from_millis(50);
/// Heartbeat interval on the status connection, and how long without an answer counts as a
/// lost master (over tcp, a host that vanished sends no goodbye).
const HEARTBEAT_INTERVAL_MS: i32 = 2_000;
const HEARTBEAT_TIMEOUT_MS: i32 = 6_000;

/// Something for the UI loop.
#[derive(Debug)]
pub enum Input {
    /// A key press, a resize, ... from the terminal.
    Terminal(Event),
    /// The terminal cannot be read any more.
    TerminalLost(String),
    /// An event from the master's status socket.
    Status(Box<StatusEvent>),
    /// A status message that could not be read.
    BadStatus(String),
    /// The status socket connected.
    Connected,
    /// The status socket lost its connection.
    Disconnected,
    /// The master's answer to a command.
    Reply {
        /// What the command did, in words.
        what: String,
        /// The answer, or why there was none.
        reply: Result<ControlReply, String>,
    },
}

/// What the socket monitor tells of the status connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LinkEvent {
    /// The connection and its handshake are done: we are subscribed.
    Up,
    /// The connection dropped.
    Down,
    /// Anything else the monitor reports.
    Other,
}

/// The subscription to the master's status socket, with its connection watched.
pub struct StatusFeed {
    events: Receiver<StatusEvent>,
    link: zmq::Socket,
}

impl std::fmt::Debug for StatusFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusFeed").field("endpoint", &self.events.endpoint()).finish()
    }
}

impl StatusFeed {
    /// Subscribes to `endpoint`, watching the connection from the start.
    pub fn open(ctx: &zmq::Context, endpoint: &str, security: &Security) -> anyhow::Result<StatusFeed> {
        static FEEDS: AtomicU32 = AtomicU32::new(0);
        let watch = format!("inproc://piw-monitor-link-{}", FEEDS.fetch_add(1, Ordering::Relaxed));
        let wanted = [zmq::SocketEvent::HANDSHAKE_SUCCEEDED, zmq::SocketEvent::DISCONNECTED].iter().fold(0, |all, e| all | i32::from(e.to_raw()));
        let mut link = None;
        let events = Receiver::<StatusEvent>::subscribe_with(ctx, endpoint, Some(DEFAULT_MAX_MESSAGE), security, |socket| {
            socket.set_heartbeat_ivl(HEARTBEAT_INTERVAL_MS)?;
            socket.set_heartbeat_timeout(HEARTBEAT_TIMEOUT_MS)?;
            socket.monitor(&watch, wanted)?;
            let pair = ctx.socket(zmq::PAIR)?;
            pair.connect(&watch)?;
            link = Some(pair);
            Ok(())
        })?;
        let link = link.context("the status socket's monitor was not set up")?;
        Ok(StatusFeed { events, link })
    }

    /// Waits up to `timeout` for the connection to come up; true when it did.
    pub fn wait_connected(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.link.poll(zmq::POLLIN, left.as_millis() as i64) {
                Ok(n) if n > 0 => {
                    if self.link_event() == Some(LinkEvent::Up) {
                        std::thread::sleep(SUBSCRIBE_SETTLE);
                        return true;
                    }
                }
                Ok(_) | Err(_) if left.is_zero() => return false,
                Ok(_) | Err(_) => {}
            }
        }
    }

    /// Reads one socket monitor message: `[event id (u16) and value (u32), endpoint]`.
    fn link_event(&self) -> Option<LinkEvent> {
        let frames = self.link.recv_multipart(zmq::DONTWAIT).ok()?;
        let id = frames.first().filter(|f| f.len() >= 2).map(|f| u16::from_ne_bytes([f[0], f[1]]))?;
        Some(if id == zmq::SocketEvent::HANDSHAKE_SUCCEEDED.to_raw() {
            LinkEvent::Up
        } else if id == zmq::SocketEvent::DISCONNECTED.to_raw() {
            LinkEvent::Down
        } else {
            LinkEvent::Other
        })
    }

    /// Forwards status events and connection changes to `out` until the UI loop goes away.
    pub fn pump(self, out: mpsc::Sender<Input>) {
        loop {
            let mut items = [self.events.socket().as_poll_item(zmq::POLLIN), self.link.as_poll_item(zmq::POLLIN)];
            if let Err(e) = zmq::poll(&mut items, 1000)
                && e != zmq::Error::EINTR
            {
                let _ = out.send(Input::BadStatus(format!("cannot poll the status socket: {e}")));
                let _ = out.send(Input::Disconnected);
                return;
            }
            let mut inputs = Vec::new();
            if items[0].is_readable() {
                loop {
                    match self.events.recv_timeout(Duration::ZERO) {
                        Ok(Some(event)) => inputs.push(Input::Status(Box::new(event))),
                        Ok(None) => break,
                        Err(TransportError::Protocol(e)) => inputs.push(Input::BadStatus(e.to_string())),
                        Err(e) => {
                            inputs.push(Input::BadStatus(e.to_string()));
                            inputs.push(Input::Disconnected);
                            break;
                        }
                    }
                }
            }
            if items[1].is_readable() {
                while let Some(event) = self.link_event() {
                    match event {
                        LinkEvent::Up => inputs.push(Input::Connected),
                        LinkEvent::Down => inputs.push(Input::Disconnected),
                        LinkEvent::Other => {}
                    }
                }
            }
            for input in inputs {
                if out.send(input).is_err() {
                    return;
                }
            }
        }
    }
}

/// Says hello to the master's control socket; the master's snapshot on success.
pub fn hello(client: &Client<ControlRequest, ControlReply>, timeout: Duration) -> anyhow::Result<FarmSnapshot> {
    let endpoint = client.endpoint().to_string();
    let hello = ControlRequest::Hello { versions: Versions::current(), client: "piw-monitor".into() };
    match client.request(&hello, timeout) {
        Ok(ControlReply::Welcome { snapshot, .. }) => Ok(*snapshot),
        Ok(ControlReply::Error(error)) if error.kind == ErrorKind::Refused => {
            bail!("the master at {endpoint} refused this monitor: {}", error.message)
        }
        Ok(ControlReply::Error(error)) => bail!("the master at {endpoint} could not attach this monitor: {}", error.message),
        Ok(ControlReply::Done) => bail!("the master at {endpoint} answered hello with Done instead of a welcome"),
        Err(TransportError::Timeout { .. }) => {
            let mut message = format!(
                "no answer from the master at {endpoint} within {}: is piw-master running, with this --control-queue?",
                humanise(timeout)
            );
            if let Some(path) = transport::ipc_path(&endpoint)
                && !path.exists()
            {
                message.push_str(&format!(" (there is no socket at {})", path.display()));
            }
            bail!(message)
        }
        Err(e) => Err(e).with_context(|| format!("cannot attach to the master at {endpoint}")),
    }
}

/// Sends each command to the master in turn and reports its answer, until either side of the
/// UI loop goes away.
pub fn serve_commands(client: Client<ControlRequest, ControlReply>, timeout: Duration, commands: mpsc::Receiver<Command>, out: mpsc::Sender<Input>) {
    for command in commands {
        let reply = client.request(&command.request, timeout).map_err(|e| e.to_string());
        if out.send(Input::Reply { what: command.what, reply }).is_err() {
            return;
        }
    }
}

/// Forwards terminal events until the UI loop goes away.
pub fn read_terminal(out: mpsc::Sender<Input>) {
    loop {
        let input = match ratatui::crossterm::event::read() {
            Ok(event) => Input::Terminal(event),
            Err(e) => {
                let _ = out.send(Input::TerminalLost(e.to_string()));
                return;
            }
        };
        if out.send(input).is_err() {
            return;
        }
    }
}

/// Subscribes to the status socket and waits a moment for the connection; true when it came
/// up (before the snapshot is asked for, so that no event falls between the two).
pub fn subscribe(ctx: &zmq::Context, endpoint: &str, security: &Security) -> anyhow::Result<(StatusFeed, bool)> {
    let feed = StatusFeed::open(ctx, endpoint, security)?;
    let connected = feed.wait_connected(SUBSCRIBE_WAIT);
    Ok((feed, connected))
}

/// `5s`, `1.5s`, `250ms`.
fn humanise(d: Duration) -> String {
    if d.subsec_millis() == 0 { format!("{}s", d.as_secs()) } else if d < Duration::from_secs(1) { format!("{}ms", d.as_millis()) } else { format!("{:.1}s", d.as_secs_f64()) }
}
