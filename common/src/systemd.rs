//! systemd's service notifications, for units with `Type=notify` and `WatchdogSec=`: a
//! program says when it is ready, keeps the watchdog fed while it is healthy, and says when
//! it is stopping. Outside systemd (no `NOTIFY_SOCKET`) every call does nothing.

use std::os::linux::net::SocketAddrExt;
use std::cell::Cell;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::{Duration, Instant};

/// The notification socket systemd gave this process, and the watchdog's pace.
#[derive(Debug)]
pub struct Notifier {
    socket: Option<(UnixDatagram, SocketAddr)>,
    watchdog: Option<Duration>,
    last_ping: Cell<Option<Instant>>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET` and `WATCHDOG_USEC` (for this process: `WATCHDOG_PID`, when set,
    /// must be ours).
    pub fn from_env() -> Notifier {
        let socket = std::env::var_os("NOTIFY_SOCKET").and_then(|path| {
            let path = path.to_string_lossy().into_owned();
            // A leading '@' names a socket in the abstract namespace.
            let addr = match path.strip_prefix('@') {
                Some(name) => SocketAddr::from_abstract_name(name.as_bytes()).ok()?,
                None => SocketAddr::from_pathname(&path).ok()?,
            };
            Some((UnixDatagram::unbound().ok()?, addr))
        });
        let ours = std::env::var("WATCHDOG_PID").map_or(true, |pid| pid.trim() == std::process::id().to_string());
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|usec| usec.trim().parse::<u64>().ok())
            .filter(|usec| *usec > 0 && ours)
            .map(Duration::from_micros);
        Notifier { socket, watchdog, last_ping: Cell::new(None) }
    }

    /// Whether systemd listens.
    pub fn enabled(&self) -> bool {
        self.socket.is_some()
    }

    /// The program is up and serving.
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={status}"));
        self.last_ping.set(Some(Instant::now()));
    }

    /// The program is healthy: feeds the watchdog when half its interval has passed since the
    /// last time. Call it from the main loop, only when the program is well.
    pub fn healthy(&self) {
        let Some(interval) = self.watchdog else { return };
        if self.last_ping.get().is_none_or(|last| last.elapsed() >= interval / 2) {
            self.send("WATCHDOG=1");
            self.last_ping.set(Some(Instant::now()));
        }
    }

    /// The program is shutting down.
    pub fn stopping(&self, status: &str) {
        self.send(&format!("STOPPING=1\nSTATUS={status}"));
    }

    fn send(&self, message: &str) {
        if let Some((socket, addr)) = &self.socket
            && let Err(e) = socket.send_to_addr(message.as_bytes(), addr)
        {
            tracing::debug!("cannot notify systemd: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_reach_the_socket_and_the_watchdog_is_paced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = UnixDatagram::bind(&path).unwrap();
        listener.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let notifier = Notifier {
            socket: Some((UnixDatagram::unbound().unwrap(), SocketAddr::from_pathname(&path).unwrap())),
            watchdog: Some(Duration::from_secs(3600)),
            last_ping: Cell::new(None),
        };
        let mut buf = [0u8; 256];
        notifier.ready("up");
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=up");
        // Just after READY the watchdog is not due; a long-quiet one is.
        notifier.healthy();
        notifier.last_ping.set(Some(Instant::now() - Duration::from_secs(1801)));
        notifier.healthy();
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"WATCHDOG=1");
        notifier.stopping("bye");
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1\nSTATUS=bye");
    }

    #[test]
    fn without_systemd_nothing_is_sent() {
        let notifier = Notifier { socket: None, watchdog: None, last_ping: Cell::new(None) };
        assert!(!notifier.enabled());
        notifier.ready("up");
        notifier.healthy();
        notifier.stopping("bye");
    }
}
