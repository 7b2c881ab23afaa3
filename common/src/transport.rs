//! Typed ZeroMQ sockets: each wrapper sends one protocol's enum and receives another's, so a
//! socket cannot carry a message it was not made for.
//!
//! | wrapper | ZeroMQ type | use |
//! |---|---|---|
//! | [`Sender`] | PUSH or PUB | one-way messages out |
//! | [`Receiver`] | PULL or SUB | one-way messages in |
//! | [`Server`] | ROUTER | requests in, one reply each, to the peer they came from |
//! | [`Client`] | REQ (relaxed, correlated) | request and wait for the reply, with a deadline |
//! | [`Dealer`] | DEALER | asynchronous conversation with a [`Server`] |
//! | [`Worker`] | DEALER | serves requests a load balancer hands out, behind their envelopes |
//!
//! Every message is a single frame made by [`crate::codec`]. A [`Server`] sees each request
//! behind its routing envelope (the peer's identity and any frames a proxy or a correlating
//! REQ added, then an empty delimiter) and replies with the same envelope, so REQ, DEALER and
//! proxied clients all work with it.
//!
//! Frames are received as ZeroMQ delivers them, without copying: a [`Server`] can hand a
//! request over undecoded ([`Server::recv_frame`]), so that a file chunk's bytes are used where
//! they arrived; a [`Dealer`] can send a frame built in place ([`Dealer::send_encoded`]), whose
//! buffer ZeroMQ takes over.
//!
//! External sockets carry a maximum message size: libzmq drops a tcp or ipc peer that sends a
//! larger frame, and the receiving side refuses larger frames on inproc too. A [`Client`] or
//! [`Dealer`] made with a limit refuses to send a larger message, so a well-behaved client
//! learns of the limit from a clear local error.
//!
//! tcp sockets are authenticated with CurveZMQ when made with a [`Security`] other than
//! [`Security::Plain`]: a server with the master's secret key and the ZAP domain naming the
//! socket (the master's ZAP handler admits or refuses each client key), a client with its own
//! key pair and the server's public key. A server sees the key a request came with as its
//! [`Peer::user`]; a client whose key the server refused gets [`TransportError::Unauthorized`]
//! at once instead of a silent time-out.

use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;
use std::ops::{Deref, Range};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::codec::{self, Encoded, FileRequestRef, ProtocolError};
use crate::keys::{KeyPair, PublicKey, SecretKey};
use crate::protocols::{FileRequest, Message};

/// Something went wrong sending or receiving.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The peer sent something that is not a message of the socket's protocol.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// ZeroMQ refused an operation.
    #[error("{op} {endpoint}: {source}")]
    Zmq {
        /// What we were doing.
        op: &'static str,
        /// Where.
        endpoint: String,
        /// What ZeroMQ said.
        source: zmq::Error,
    },
    /// The peer did not take our message before the deadline (its queue is full, or no peer
    /// is connected yet).
    #[error("{endpoint} did not take the message within {timeout:?}")]
    Busy {
        /// The peer's address.
        endpoint: String,
        /// How long we waited.
        timeout: Duration,
    },
    /// No reply arrived before the deadline.
    #[error("no reply from {endpoint} within {timeout:?}")]
    Timeout {
        /// The peer's address.
        endpoint: String,
        /// How long we waited.
        timeout: Duration,
    },
    /// The server refused our key during the handshake (unknown, revoked, or of a role that
    /// may not use this socket).
    #[error(
        "{endpoint} refused this client's key {fingerprint}: it is unknown to the master, revoked, or of a role that may not use this \
         socket. Give the master's operator the public key {public} and the role this program needs \
         (`piw-keys authorize {public} --role ROLE --label NAME`)"
    )]
    Unauthorized {
        /// The server's address.
        endpoint: String,
        /// Our key's fingerprint.
        fingerprint: String,
        /// Our public key, for the operator to authorize.
        public: String,
    },
    /// Connections were made but no handshake completed: the server's public key we were
    /// given is most likely not the server's.
    #[error(
        "no reply from {endpoint} within {timeout:?}: connections were made but the secure handshake never completed; \
         check that the master's public key given to this client (--master-key) is the one `piw-keys master` prints on the master, \
         and that the master runs with authentication"
    )]
    Handshake {
        /// The server's address.
        endpoint: String,
        /// How long we waited.
        timeout: Duration,
    },
    /// An ipc endpoint's directory is not safe to use.
    #[error("ipc endpoint {endpoint}: {reason}")]
    Ipc {
        /// The endpoint.
        endpoint: String,
        /// What is wrong.
        reason: String,
    },
}

/// Default maximum size of a frame on an external socket: large enough for a build log of
/// the size the slave keeps, small enough that a hostile peer cannot exhaust memory.
pub const DEFAULT_MAX_MESSAGE: usize = 16 << 20;
/// Unread requests kept per connected peer on a socket whose clients send one request at a
/// time (a REQ): a few are plenty, and a peer flooding from a DEALER holds no more memory than
/// this many messages.
pub const REQUESTS_PER_PEER: i32 = 16;

/// How long a socket may keep unsent messages when it closes.
const LINGER_MS: i32 = 1000;

/// How a socket authenticates its connections.
#[derive(Clone, Debug)]
pub enum Security {
    /// Not at all: inproc, ipc in a private directory, or a master run with `--no-auth`.
    Plain,
    /// A CurveZMQ server: the master's secret key, and the ZAP domain that tells the master's
    /// ZAP handler which socket a client is connecting to.
    Server {
        /// The master's secret key.
        secret: SecretKey,
        /// The socket's ZAP domain.
        domain: &'static str,
    },
    /// A CurveZMQ client: its own key pair and the server's public key.
    Client {
        /// The server's public key.
        server: PublicKey,
        /// This client's key pair.
        keys: KeyPair,
    },
}

impl Security {
    fn apply(&self, socket: &zmq::Socket) -> Result<(), zmq::Error> {
        match self {
            Security::Plain => Ok(()),
            Security::Server { secret, domain } => {
                socket.set_curve_server(true)?;
                socket.set_curve_secretkey(secret.bytes())?;
                socket.set_zap_domain(domain)
            }
            Security::Client { server, keys } => {
                socket.set_curve_serverkey(server.bytes())?;
                socket.set_curve_publickey(keys.public.bytes())?;
                socket.set_curve_secretkey(keys.secret.bytes())
            }
        }
    }
}

/// Watches a CurveZMQ client's connections through a socket monitor, so that a refusal of our
/// key is reported at once and a handshake that never completes is told from a silent server.
struct HandshakeWatch {
    events: zmq::Socket,
    key: PublicKey,
    refused: Cell<bool>,
    failed: Cell<u32>,
    succeeded: Cell<bool>,
}

impl HandshakeWatch {
    fn attach(ctx: &zmq::Context, socket: &zmq::Socket, key: PublicKey) -> Result<HandshakeWatch, zmq::Error> {
        static WATCHES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let endpoint = format!("inproc://piw-handshake-watch-{}", WATCHES.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
        let wanted = [
            zmq::SocketEvent::HANDSHAKE_SUCCEEDED,
            zmq::SocketEvent::HANDSHAKE_FAILED_AUTH,
            zmq::SocketEvent::HANDSHAKE_FAILED_PROTOCOL,
            zmq::SocketEvent::HANDSHAKE_FAILED_NO_DETAIL,
        ];
        socket.monitor(&endpoint, wanted.iter().fold(0, |all, e| all | i32::from(e.to_raw())))?;
        let events = ctx.socket(zmq::PAIR)?;
        events.connect(&endpoint)?;
        Ok(HandshakeWatch { events, key, refused: Cell::new(false), failed: Cell::new(0), succeeded: Cell::new(false) })
    }

    /// Reads the events that arrived; true when our key was refused.
    fn drain(&self) -> bool {
        while let Ok(frames) = self.events.recv_multipart(zmq::DONTWAIT) {
            let Some(id) = frames.first().filter(|f| f.len() >= 2).map(|f| u16::from_ne_bytes([f[0], f[1]])) else { continue };
            if id == zmq::SocketEvent::HANDSHAKE_SUCCEEDED.to_raw() {
                self.succeeded.set(true);
            } else if id == zmq::SocketEvent::HANDSHAKE_FAILED_AUTH.to_raw() {
                self.refused.set(true);
            } else {
                self.failed.set(self.failed.get() + 1);
            }
        }
        self.refused.get()
    }

    fn unauthorized(&self, endpoint: &str) -> TransportError {
        TransportError::Unauthorized { endpoint: endpoint.to_string(), fingerprint: self.key.fingerprint(), public: self.key.to_string() }
    }
}

struct Raw {
    socket: zmq::Socket,
    endpoint: String,
    max_message: Option<usize>,
    watch: Option<HandshakeWatch>,
}

impl Raw {
    fn new(ctx: &zmq::Context, kind: zmq::SocketType, endpoint: &str, max_message: Option<usize>) -> Result<Raw, TransportError> {
        Raw::secured(ctx, kind, endpoint, max_message, &Security::Plain)
    }

    /// A socket with `security`; a CurveZMQ client also gets its handshakes watched.
    fn secured(ctx: &zmq::Context, kind: zmq::SocketType, endpoint: &str, max_message: Option<usize>, security: &Security) -> Result<Raw, TransportError> {
        let socket = ctx.socket(kind).map_err(|source| zmq_err("create socket for", endpoint, source))?;
        let setup = || -> Result<Option<HandshakeWatch>, zmq::Error> {
            socket.set_linger(LINGER_MS)?;
            if endpoint.starts_with("tcp://") {
                socket.set_ipv6(true)?;
            }
            if let Some(limit) = max_message {
                socket.set_maxmsgsize(limit as i64)?;
            }
            security.apply(&socket)?;
            match (security, kind) {
                (Security::Client { keys, .. }, zmq::REQ | zmq::DEALER) => HandshakeWatch::attach(ctx, &socket, keys.public).map(Some),
                _ => Ok(None),
            }
        };
        let watch = setup().map_err(|source| zmq_err("configure socket for", endpoint, source))?;
        Ok(Raw { socket, endpoint: endpoint.to_string(), max_message, watch })
    }

    /// The error for a send that found no room in time: as [`Raw::timed_out`], where a
    /// refused key or failed handshakes explain it.
    fn busy(&self, timeout: Duration) -> TransportError {
        match self.timed_out(timeout) {
            TransportError::Timeout { .. } => TransportError::Busy { endpoint: self.endpoint.clone(), timeout },
            explained => explained,
        }
    }

    /// The error for a wait that ran out: a refusal or a failed handshake if the watch saw
    /// one, a plain time-out otherwise.
    fn timed_out(&self, timeout: Duration) -> TransportError {
        if let Some(watch) = &self.watch {
            if watch.drain() {
                return watch.unauthorized(&self.endpoint);
            }
            if watch.failed.get() > 0 && !watch.succeeded.get() {
                return TransportError::Handshake { endpoint: self.endpoint.clone(), timeout };
            }
        }
        TransportError::Timeout { endpoint: self.endpoint.clone(), timeout }
    }

    fn bind(self) -> Result<Raw, TransportError> {
        if let Some(path) = ipc_path(&self.endpoint) {
            prepare_ipc_dir(&self.endpoint, path)?;
        }
        self.socket.bind(&self.endpoint).map_err(|source| zmq_err("bind", &self.endpoint, source))?;
        if let Some(path) = ipc_path(&self.endpoint) {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|e| TransportError::Ipc {
                endpoint: self.endpoint.clone(),
                reason: format!("cannot restrict the socket file's permissions: {e}"),
            })?;
        }
        Ok(self)
    }

    fn connect(self) -> Result<Raw, TransportError> {
        self.socket.connect(&self.endpoint).map_err(|source| zmq_err("connect", &self.endpoint, source))?;
        Ok(self)
    }

    fn check_size<M: Message>(&self, size: usize) -> Result<(), ProtocolError> {
        match self.max_message {
            Some(limit) if size > limit => Err(ProtocolError::Oversized { protocol: M::NAME, size, limit }),
            _ => Ok(()),
        }
    }

    fn encode<M: Message>(&self, msg: &M) -> Result<Vec<u8>, TransportError> {
        let frame = codec::encode(msg)?;
        self.check_size::<M>(frame.len())?;
        Ok(frame)
    }

    fn decode<M: Message>(&self, frame: &[u8]) -> Result<M, ProtocolError> {
        self.check_size::<M>(frame.len())?;
        codec::decode(frame)
    }

    /// Sends without blocking; when the queue is full, waits for room for up to `timeout`.
    fn send_frames(&self, frames: &[&[u8]], timeout: Duration) -> Result<(), TransportError> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.socket.send_multipart(frames, zmq::DONTWAIT) {
                Ok(()) => return Ok(()),
                Err(zmq::Error::EAGAIN) => {
                    let wait = deadline.saturating_duration_since(Instant::now());
                    if wait.is_zero() {
                        return Err(self.busy(timeout));
                    }
                    self.wait(zmq::POLLOUT, Some(wait))?;
                }
                Err(zmq::Error::EINTR) => continue,
                Err(source) => return Err(zmq_err("send to", &self.endpoint, source)),
            }
        }
    }

    /// Waits until the socket is ready for `events`; false on timeout. None waits forever.
    fn wait(&self, events: zmq::PollEvents, timeout: Option<Duration>) -> Result<bool, TransportError> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            let ms = match deadline {
                // Round up: poll counts whole milliseconds, and waking early would look like a
                // timeout before the deadline.
                Some(d) => d.saturating_duration_since(Instant::now()).as_micros().div_ceil(1000).min(i64::MAX as u128) as i64,
                None => -1,
            };
            let mut items = [self.socket.as_poll_item(events), self.watch_poll_item()];
            let watched = if self.watch.is_some() { 2 } else { 1 };
            let polled = zmq::poll(&mut items[..watched], ms);
            if watched == 2 && items[1].is_readable() && self.watch.as_ref().is_some_and(HandshakeWatch::drain) {
                return Err(self.watch.as_ref().map(|w| w.unauthorized(&self.endpoint)).expect("watched"));
            }
            match polled {
                Ok(_) if items[0].get_revents().intersects(events) => return Ok(true),
                Ok(_) | Err(zmq::Error::EINTR) if deadline.is_none_or(|d| Instant::now() < d) => continue,
                Ok(_) | Err(zmq::Error::EINTR) => return Ok(false),
                Err(source) => return Err(zmq_err("poll", &self.endpoint, source)),
            }
        }
    }

    /// The handshake watch's poll item, or (unused) the socket's own without events.
    fn watch_poll_item(&self) -> zmq::PollItem<'_> {
        match &self.watch {
            Some(watch) => watch.events.as_poll_item(zmq::POLLIN),
            None => self.socket.as_poll_item(zmq::PollEvents::empty()),
        }
    }

    /// Sends `head` and then `last`, whose buffer ZeroMQ takes over without a copy; waits for
    /// room like [`Raw::send_frames`]. Room is checked on the first frame only (libzmq
    /// admits the rest of a message once its first frame is in), so the others are sent at
    /// once; should one of them fail all the same, the socket holds part of a message and must
    /// be dropped.
    fn send_frames_owned(&self, head: &[&[u8]], last: Vec<u8>, timeout: Duration) -> Result<(), TransportError> {
        let Some((first, rest)) = head.split_first() else {
            // Not used without a head; sending `last` alone would need room first.
            return self.send_frames(&[&last], timeout);
        };
        let deadline = Instant::now() + timeout;
        loop {
            match self.socket.send(*first, zmq::DONTWAIT | zmq::SNDMORE) {
                Ok(()) => break,
                Err(zmq::Error::EAGAIN) => {
                    let wait = deadline.saturating_duration_since(Instant::now());
                    if wait.is_zero() {
                        return Err(self.busy(timeout));
                    }
                    self.wait(zmq::POLLOUT, Some(wait))?;
                }
                Err(zmq::Error::EINTR) => continue,
                Err(source) => return Err(zmq_err("send to", &self.endpoint, source)),
            }
        }
        for frame in rest {
            self.socket.send(*frame, zmq::DONTWAIT | zmq::SNDMORE).map_err(|source| zmq_err("send to", &self.endpoint, source))?;
        }
        self.socket.send(zmq::Message::from(last), zmq::DONTWAIT).map_err(|source| zmq_err("send to", &self.endpoint, source))
    }

    /// Receives every frame of the next message, as ZeroMQ delivered them (no copy).
    fn recv_frames(&self) -> Result<Vec<zmq::Message>, TransportError> {
        let mut frames = Vec::with_capacity(4);
        loop {
            let frame = loop {
                match self.socket.recv_msg(0) {
                    Ok(frame) => break frame,
                    Err(zmq::Error::EINTR) => continue,
                    Err(source) => return Err(zmq_err("receive from", &self.endpoint, source)),
                }
            };
            let more = frame.get_more();
            frames.push(frame);
            if !more {
                return Ok(frames);
            }
        }
    }

    fn recv_single<M: Message>(&self) -> Result<M, TransportError> {
        let frames = self.recv_frames()?;
        match frames.as_slice() {
            [frame] => Ok(self.decode(frame)?),
            _ => Err(structure::<M>(format!("{} frames, expected 1", frames.len())).into()),
        }
    }
}

fn zmq_err(op: &'static str, endpoint: &str, source: zmq::Error) -> TransportError {
    TransportError::Zmq { op, endpoint: endpoint.to_string(), source }
}

fn structure<M: Message>(reason: String) -> ProtocolError {
    ProtocolError::Structure { protocol: M::NAME, reason }
}

/// The file system path of an `ipc://` endpoint.
pub fn ipc_path(endpoint: &str) -> Option<&Path> {
    endpoint.strip_prefix("ipc://").filter(|p| !p.starts_with('@')).map(Path::new)
}

/// Makes sure an ipc socket's directory exists and only its owner can enter it (a socket in a
/// shared directory such as /tmp could be replaced or reached by any local user), and that no
/// live socket answers at the path: libzmq would silently take the path over from it.
fn prepare_ipc_dir(endpoint: &str, path: &Path) -> Result<(), TransportError> {
    let fail = |reason: String| TransportError::Ipc { endpoint: endpoint.to_string(), reason };
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).ok_or_else(|| fail("the path has no directory".into()))?;
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| fail(format!("cannot create {}: {e}", dir.display())))?;
    }
    if path.exists() && std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(fail("another process is listening on this socket".into()));
    }
    let mode = std::fs::metadata(dir).map_err(|e| fail(format!("cannot inspect {}: {e}", dir.display())))?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(fail(format!(
            "directory {} is accessible to other users (mode {:o}); use a private runtime directory (mode 700)",
            dir.display(),
            mode & 0o777
        )));
    }
    Ok(())
}

/// The routing frames a [`Server`] received a request behind: the peer's identity plus any
/// frames added by proxies or a correlating REQ socket. Replies go back behind the same frames.
/// On an authenticated socket it also carries who the peer is: the user id the master's ZAP
/// handler gave the connection (the client's public key).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Peer {
    frames: Vec<Vec<u8>>,
    user: Option<String>,
    address: Option<String>,
}

impl Peer {
    fn from_frames(frames: &[zmq::Message], user: Option<String>, address: Option<String>) -> Peer {
        Peer { frames: frames.iter().map(|f| f.to_vec()).collect(), user, address }
    }

    /// The routing frames.
    pub fn frames(&self) -> &[Vec<u8>] {
        &self.frames
    }

    /// The first routing frame: the identity of the directly connected peer.
    pub fn identity(&self) -> &[u8] {
        self.frames.first().map(Vec::as_slice).unwrap_or_default()
    }

    /// The user id the ZAP handler gave the peer's connection; None on a socket without
    /// authentication (or one whose handshake no ZAP handler saw).
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// The network address the peer's connection comes from (tcp only), as libzmq reports it.
    pub fn address(&self) -> Option<&str> {
        self.address.as_deref()
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.identity()))
    }
}

impl fmt::Debug for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Peer({self})")
    }
}

macro_rules! common_socket_methods {
    () => {
        /// The underlying socket, for polling.
        pub fn socket(&self) -> &zmq::Socket {
            &self.raw.socket
        }

        /// The address this socket was bound or connected to.
        pub fn endpoint(&self) -> &str {
            &self.raw.endpoint
        }

        /// Waits up to `timeout` (None: forever) for something to receive.
        pub fn readable(&self, timeout: Option<Duration>) -> Result<bool, TransportError> {
            self.raw.wait(zmq::POLLIN, timeout)
        }
    };
}

/// Sends one protocol's messages on a PUSH or PUB socket.
pub struct Sender<M> {
    raw: Raw,
    _m: PhantomData<fn(M)>,
}

impl<M: Message> Sender<M> {
    /// A PUSH socket connected to `endpoint`.
    pub fn push(ctx: &zmq::Context, endpoint: &str) -> Result<Self, TransportError> {
        Ok(Sender { raw: Raw::new(ctx, zmq::PUSH, endpoint, None)?.connect()?, _m: PhantomData })
    }

    /// A PUSH socket bound to `endpoint`.
    pub fn push_bound(ctx: &zmq::Context, endpoint: &str) -> Result<Self, TransportError> {
        Ok(Sender { raw: Raw::new(ctx, zmq::PUSH, endpoint, None)?.bind()?, _m: PhantomData })
    }

    /// A PUB socket bound to `endpoint`, for monitors.
    pub fn publish(ctx: &zmq::Context, endpoint: &str, security: &Security) -> Result<Self, TransportError> {
        Ok(Sender { raw: Raw::secured(ctx, zmq::PUB, endpoint, None, security)?.bind()?, _m: PhantomData })
    }

    /// Sends a message, waiting at most `timeout` for queue space (PUB never waits: it drops
    /// messages for subscribers that are too slow).
    pub fn send(&self, msg: &M, timeout: Duration) -> Result<(), TransportError> {
        let frame = self.raw.encode(msg)?;
        self.raw.send_frames(&[&frame], timeout)
    }

    common_socket_methods!();
}

/// Receives one protocol's messages on a PULL or SUB socket.
pub struct Receiver<M> {
    raw: Raw,
    _m: PhantomData<fn() -> M>,
}

impl<M: Message> Receiver<M> {
    /// A PULL socket bound to `endpoint`.
    pub fn pull(ctx: &zmq::Context, endpoint: &str, max_message: Option<usize>) -> Result<Self, TransportError> {
        Ok(Receiver { raw: Raw::new(ctx, zmq::PULL, endpoint, max_message)?.bind()?, _m: PhantomData })
    }

    /// A PULL socket connected to `endpoint`.
    pub fn pull_connected(ctx: &zmq::Context, endpoint: &str) -> Result<Self, TransportError> {
        Ok(Receiver { raw: Raw::new(ctx, zmq::PULL, endpoint, None)?.connect()?, _m: PhantomData })
    }

    /// A SUB socket connected to `endpoint`, subscribed to everything.
    pub fn subscribe(ctx: &zmq::Context, endpoint: &str, max_message: Option<usize>) -> Result<Self, TransportError> {
        Self::subscribe_with(ctx, endpoint, max_message, &Security::Plain, |_| Ok(()))
    }

    /// [`Receiver::subscribe`], running `setup` on the socket before it connects: options that
    /// must apply to the first connection, such as heartbeats or a socket monitor that should
    /// report that connection too.
    pub fn subscribe_with(
        ctx: &zmq::Context,
        endpoint: &str,
        max_message: Option<usize>,
        security: &Security,
        setup: impl FnOnce(&zmq::Socket) -> Result<(), zmq::Error>,
    ) -> Result<Self, TransportError> {
        let raw = Raw::secured(ctx, zmq::SUB, endpoint, max_message, security)?;
        raw.socket.set_subscribe(b"").map_err(|source| zmq_err("subscribe to", endpoint, source))?;
        setup(&raw.socket).map_err(|source| zmq_err("configure socket for", endpoint, source))?;
        Ok(Receiver { raw: raw.connect()?, _m: PhantomData })
    }

    /// Receives the next message, waiting for it.
    pub fn recv(&self) -> Result<M, TransportError> {
        self.raw.recv_single()
    }

    /// Receives the next message if one arrives within `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Option<M>, TransportError> {
        if self.readable(Some(timeout))? { self.recv().map(Some) } else { Ok(None) }
    }

    common_socket_methods!();
}

/// A ROUTER socket serving requests of protocol `Req` with replies of protocol `Rep`.
pub struct Server<Req, Rep> {
    raw: Raw,
    _m: PhantomData<fn(Rep) -> Req>,
}

impl<Req: Message, Rep: Message> Server<Req, Rep> {
    /// A ROUTER bound to `endpoint`; `max_message` limits requests (external sockets).
    pub fn bind(ctx: &zmq::Context, endpoint: &str, max_message: Option<usize>) -> Result<Self, TransportError> {
        let raw = Raw::new(ctx, zmq::ROUTER, endpoint, max_message)?;
        // Fail loudly rather than silently drop a reply to a peer that has gone.
        raw.socket.set_router_mandatory(true).map_err(|source| zmq_err("configure socket for", endpoint, source))?;
        Ok(Server { raw: raw.bind()?, _m: PhantomData })
    }

    /// A ROUTER for clients outside the process: `max_message` limits requests, `queue` (when
    /// given) bounds the unread requests per connected peer (ZeroMQ's default is 1000), so
    /// that with the size limit it bounds the memory one peer's flood can hold, and `security`
    /// authenticates tcp clients. libzmq copies the options a listener gives its connections
    /// when it binds, so all are set before binding.
    pub fn bind_external(
        ctx: &zmq::Context,
        endpoint: &str,
        max_message: usize,
        queue: Option<i32>,
        security: &Security,
    ) -> Result<Self, TransportError> {
        let raw = Raw::secured(ctx, zmq::ROUTER, endpoint, Some(max_message), security)?;
        let setup = || -> Result<(), zmq::Error> {
            raw.socket.set_router_mandatory(true)?;
            match queue {
                Some(queue) => raw.socket.set_rcvhwm(queue),
                None => Ok(()),
            }
        };
        setup().map_err(|source| zmq_err("configure socket for", endpoint, source))?;
        Ok(Server { raw: raw.bind()?, _m: PhantomData })
    }

    /// Receives the next request. A request with a usable envelope but an undecodable body
    /// comes back as `Ok((peer, Err(..)))` so that the caller can answer with an error;
    /// one without an envelope is an `Err`, since there is nobody to answer.
    pub fn recv(&self) -> Result<(Peer, Result<Req, ProtocolError>), TransportError> {
        let (peer, frame) = self.recv_frame()?;
        Ok((peer, frame.and_then(|frame| frame.decode())))
    }

    /// Like [`Server::recv`], but leaves the request undecoded: its frame as ZeroMQ delivered
    /// it, already checked against the size limit, for the caller to decode where it lies
    /// (see [`Frame::decode_in_place`]).
    pub fn recv_frame(&self) -> Result<(Peer, Result<Frame<Req>, ProtocolError>), TransportError> {
        let mut frames = self.raw.recv_frames()?;
        // [routing frames..., "", payload]
        let n = frames.len();
        if n < 3 || !frames[n - 2].is_empty() {
            return Err(structure::<Req>(format!("{n} frames without an envelope delimiter")).into());
        }
        let (Some(mut payload), Some(_delimiter)) = (frames.pop(), frames.pop()) else {
            return Err(structure::<Req>(format!("{n} frames without an envelope delimiter")).into());
        };
        if frames.iter().any(|f| f.is_empty()) {
            return Err(structure::<Req>("empty routing frame".into()).into());
        }
        let user = payload.gets("User-Id").filter(|user| !user.is_empty()).map(str::to_string);
        let address = payload.gets("Peer-Address").filter(|address| !address.is_empty()).map(str::to_string);
        let peer = Peer::from_frames(&frames, user, address);
        let frame = self.raw.check_size::<Req>(payload.len()).map(|()| Frame { msg: payload, _m: PhantomData });
        Ok((peer, frame))
    }

    /// Replies to `peer` without waiting. A peer whose departure libzmq has noticed is an
    /// error (libzmq notices lazily, so the first reply after a peer leaves may be lost
    /// silently); so is a peer whose queue is full. The message size limit applies to
    /// requests only.
    pub fn send(&self, peer: &Peer, msg: &Rep) -> Result<(), TransportError> {
        let frame = codec::encode(msg)?;
        let mut frames: Vec<&[u8]> = peer.frames.iter().map(Vec::as_slice).collect();
        frames.push(b"");
        frames.push(&frame);
        self.raw.send_frames(&frames, Duration::ZERO)
    }

    common_socket_methods!();
}

/// A REQ socket for request/reply with a deadline. It is relaxed and correlated: after a
/// timeout it may send the next request at once, and a late reply to the earlier request is
/// discarded by ZeroMQ instead of being mistaken for the new one.
pub struct Client<Req, Rep> {
    raw: Raw,
    _m: PhantomData<fn(Req) -> Rep>,
}

impl<Req: Message, Rep: Message> Client<Req, Rep> {
    /// A REQ connected to `endpoint`; `max_message` limits replies and our requests.
    pub fn connect(ctx: &zmq::Context, endpoint: &str, max_message: Option<usize>) -> Result<Self, TransportError> {
        Client::connect_secured(ctx, endpoint, max_message, &Security::Plain)
    }

    /// [`Client::connect`] with `security`.
    pub fn connect_secured(ctx: &zmq::Context, endpoint: &str, max_message: Option<usize>, security: &Security) -> Result<Self, TransportError> {
        let raw = Raw::secured(ctx, zmq::REQ, endpoint, max_message, security)?;
        let setup = || -> Result<(), zmq::Error> {
            raw.socket.set_req_relaxed(true)?;
            raw.socket.set_req_correlate(true)
        };
        setup().map_err(|source| zmq_err("configure socket for", endpoint, source))?;
        Ok(Client { raw: raw.connect()?, _m: PhantomData })
    }

    /// Sends `req` and waits up to `timeout` for the reply.
    pub fn request(&self, req: &Req, timeout: Duration) -> Result<Rep, TransportError> {
        let deadline = Instant::now() + timeout;
        let frame = self.raw.encode(req)?;
        self.raw.send_frames(&[&frame], timeout)?;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !self.raw.wait(zmq::POLLIN, Some(left))? {
                return Err(self.raw.timed_out(timeout));
            }
            // A stale reply to an abandoned request also makes the socket readable; the
            // correlating REQ discards it inside the receive, which must then not block.
            match self.raw.socket.recv_multipart(zmq::DONTWAIT) {
                Ok(frames) => {
                    return match frames.as_slice() {
                        [frame] => Ok(self.raw.decode(frame)?),
                        _ => Err(structure::<Rep>(format!("{} frames, expected 1", frames.len())).into()),
                    };
                }
                Err(zmq::Error::EAGAIN | zmq::Error::EINTR) => continue,
                Err(source) => return Err(zmq_err("receive from", &self.raw.endpoint, source)),
            }
        }
    }

    common_socket_methods!();
}

/// A DEALER socket talking to a [`Server`]: sends `Out`, receives `In`, with no lock-step.
pub struct Dealer<Out, In> {
    raw: Raw,
    _m: PhantomData<fn(Out) -> In>,
}

impl<Out: Message, In: Message> Dealer<Out, In> {
    /// A DEALER connected to `endpoint`; `max_message` limits what it receives and sends.
    pub fn connect(ctx: &zmq::Context, endpoint: &str, max_message: Option<usize>) -> Result<Self, TransportError> {
        Dealer::connect_secured(ctx, endpoint, max_message, &Security::Plain)
    }

    /// [`Dealer::connect`] with `security`.
    pub fn connect_secured(ctx: &zmq::Context, endpoint: &str, max_message: Option<usize>, security: &Security) -> Result<Self, TransportError> {
        Ok(Dealer { raw: Raw::secured(ctx, zmq::DEALER, endpoint, max_message, security)?.connect()?, _m: PhantomData })
    }

    /// Sends a message, waiting at most `timeout` for queue space.
    pub fn send(&self, msg: &Out, timeout: Duration) -> Result<(), TransportError> {
        let frame = self.raw.encode(msg)?;
        self.raw.send_frames(&[b"", &frame], timeout)
    }

    /// Sends a frame the codec has built (such as [`codec::encode_chunk`]'s), handing its
    /// buffer to ZeroMQ without a copy; otherwise like [`Dealer::send`]. After an error other
    /// than [`TransportError::Busy`] the socket should be dropped.
    pub fn send_encoded(&self, frame: Encoded<Out>, timeout: Duration) -> Result<(), TransportError> {
        self.raw.check_size::<Out>(frame.as_bytes().len())?;
        self.raw.send_frames_owned(&[b""], frame.into_vec(), timeout)
    }

    /// Receives the next message, waiting for it.
    pub fn recv(&self) -> Result<In, TransportError> {
        let frames = self.raw.recv_frames()?;
        match frames.as_slice() {
            [delimiter, frame] if delimiter.is_empty() => Ok(self.raw.decode(frame)?),
            _ => Err(structure::<In>(format!("{} frames, expected a delimiter and a message", frames.len())).into()),
        }
    }

    /// Receives the next message if one arrives within `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Option<In>, TransportError> {
        if self.readable(Some(timeout))? { self.recv().map(Some) } else { Ok(None) }
    }

    /// Sends a request tagged with `tag`, which a [`Server`] treats as part of the routing
    /// envelope and so returns, untouched, with its reply (see [`Dealer::recv_tagged`]): the
    /// way to have several requests out at once and know which reply answers which. Waits at
    /// most `timeout` for queue room.
    pub fn send_tagged(&self, tag: &[u8], msg: &Out, timeout: Duration) -> Result<(), TransportError> {
        if tag.is_empty() {
            return Err(structure::<Out>("an empty tag".into()).into());
        }
        let frame = self.raw.encode(msg)?;
        self.raw.send_frames(&[tag, b"", &frame], timeout)
    }

    /// Receives a reply to a request sent with [`Dealer::send_tagged`], with its tag.
    pub fn recv_tagged(&self) -> Result<(Vec<u8>, In), TransportError> {
        let frames = self.raw.recv_frames()?;
        match frames.as_slice() {
            [tag, delimiter, frame] if !tag.is_empty() && delimiter.is_empty() => Ok((tag.to_vec(), self.raw.decode(frame)?)),
            _ => Err(structure::<In>(format!("{} frames, expected a tag, a delimiter and a message", frames.len())).into()),
        }
    }

    common_socket_methods!();
}

/// The frame a [`Worker`] sends to tell its load balancer it can take a request.
pub const READY: &[u8] = b"READY";

/// A DEALER serving requests that a load balancer (a pair of ROUTERs) hands out. The balancer
/// sends `["", client envelope..., "", request]`; the worker answers
/// `["", client envelope..., "", reply]` and the balancer routes it back to the client. A
/// worker announces itself with [`Worker::ready`]; every reply makes it ready again.
pub struct Worker<Req, Rep> {
    raw: Raw,
    _m: PhantomData<fn(Rep) -> Req>,
}

impl<Req: Message, Rep: Message> Worker<Req, Rep> {
    /// A DEALER connected to the balancer's worker side.
    pub fn connect(ctx: &zmq::Context, endpoint: &str) -> Result<Self, TransportError> {
        Ok(Worker { raw: Raw::new(ctx, zmq::DEALER, endpoint, None)?.connect()?, _m: PhantomData })
    }

    /// Tells the balancer this worker can take a request.
    pub fn ready(&self, timeout: Duration) -> Result<(), TransportError> {
        self.raw.send_frames(&[b"", READY], timeout)
    }

    /// Receives the next request with its client's envelope; see [`Server::recv`].
    pub fn recv(&self) -> Result<(Peer, Result<Req, ProtocolError>), TransportError> {
        let frames = self.raw.recv_frames()?;
        let n = frames.len();
        if n < 4 || !frames[0].is_empty() || !frames[n - 2].is_empty() {
            return Err(structure::<Req>(format!("{n} frames, expected a delimiter, an envelope, a delimiter and a request")).into());
        }
        let request = self.raw.decode(&frames[n - 1]);
        Ok((Peer::from_frames(&frames[1..n - 2], None, None), request))
    }

    /// Replies to the client behind `peer`.
    pub fn send(&self, peer: &Peer, msg: &Rep, timeout: Duration) -> Result<(), TransportError> {
        let frame = codec::encode(msg)?;
        let mut frames: Vec<&[u8]> = vec![b""];
        frames.extend(peer.frames.iter().map(Vec::as_slice));
        frames.push(b"");
        frames.push(&frame);
        self.raw.send_frames(&frames, timeout)
    }

    common_socket_methods!();
}

/// A request frame a [`Server`] received, as ZeroMQ delivered it, not yet decoded.
pub struct Frame<M> {
    msg: zmq::Message,
    _m: PhantomData<fn() -> M>,
}

impl<M: Message> Frame<M> {
    /// Decodes the message (see [`codec::decode`]).
    pub fn decode(&self) -> Result<M, ProtocolError> {
        codec::decode(&self.msg)
    }

    /// The frame's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.msg
    }

    /// Where `part` lies in the frame, if it is a part of it (a slice a decoder lent from it).
    pub fn range_of(&self, part: &[u8]) -> Option<Range<usize>> {
        let start = part.as_ptr().addr().checked_sub(self.msg.as_ptr().addr())?;
        let range = start..start.checked_add(part.len())?;
        self.msg.get(range.clone()).filter(|within| std::ptr::eq(*within, part)).map(|_| range)
    }

    /// Keeps `range` of the frame (without a copy), dropping the rest of the message's meaning;
    /// None if the range is not within the frame.
    pub fn into_slice(self, range: Range<usize>) -> Option<FrameSlice> {
        self.msg.get(range.clone())?;
        Some(FrameSlice { msg: self.msg, range })
    }
}

impl Frame<FileRequest> {
    /// Decodes the request like [`Frame::decode`], lending a chunk's bytes from the frame
    /// (see [`codec::decode_file_request`]).
    pub fn decode_in_place(&self) -> Result<FileRequestRef<'_>, ProtocolError> {
        codec::decode_file_request(&self.msg)
    }
}

impl<M> fmt::Debug for Frame<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Frame({} bytes)", self.msg.len())
    }
}

/// Part of a received frame, kept without a copy: the bytes of a file chunk, say.
pub struct FrameSlice {
    msg: zmq::Message,
    range: Range<usize>,
}

impl Deref for FrameSlice {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        // The range was checked against the frame when the slice was made.
        &self.msg[self.range.clone()]
    }
}

impl fmt::Debug for FrameSlice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FrameSlice({}..{} of {} bytes)", self.range.start, self.range.end, self.msg.len())
    }
}

macro_rules! debug_socket {
    ($($ty:ident),*) => {$(
        impl<A, B> fmt::Debug for $ty<A, B> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_struct(stringify!($ty)).field("endpoint", &self.raw.endpoint).finish()
            }
        }
    )*};
}
debug_socket!(Server, Client, Dealer, Worker);

impl<M> fmt::Debug for Sender<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sender").field("endpoint", &self.raw.endpoint).finish()
    }
}

impl<M> fmt::Debug for Receiver<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receiver").field("endpoint", &self.raw.endpoint).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    use crate::protocols::{FileReply, FileRequest};

    fn pair(name: &str, limit: usize) -> (zmq::Context, Server<FileRequest, FileReply>, Dealer<FileRequest, FileReply>) {
        let ctx = zmq::Context::new();
        let endpoint = format!("inproc://{name}");
        let server = Server::bind(&ctx, &endpoint, Some(limit)).unwrap();
        let dealer = Dealer::connect(&ctx, &endpoint, Some(limit)).unwrap();
        (ctx, server, dealer)
    }

    #[test]
    fn a_chunk_built_in_place_arrives_and_is_kept_without_a_copy() {
        let (_ctx, server, dealer) = pair("chunk-in-place", 1 << 20);
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let mut chunk = codec::encode_chunk(1234, data.len()).unwrap();
        chunk.data_mut().copy_from_slice(&data);
        dealer.send_encoded(chunk.into_encoded(), Duration::from_secs(5)).unwrap();

        let (peer, frame) = server.recv_frame().unwrap();
        assert!(!peer.identity().is_empty());
        let frame = frame.unwrap();
        let (offset, range) = match frame.decode_in_place().unwrap() {
            FileRequestRef::Chunk { offset, data: Cow::Borrowed(bytes) } => (offset, frame.range_of(bytes).unwrap()),
            other => panic!("{other:?}"),
        };
        assert_eq!(offset, 1234);
        assert_eq!(range.len(), data.len());
        assert!(frame.range_of(&data).is_none(), "a slice of other memory is not in the frame");
        let slice = frame.into_slice(range).unwrap();
        assert_eq!(&*slice, &data[..]);

        // The ordinary receive still decodes the same frames.
        let msg = FileRequest::Chunk { offset: 7, data: vec![1, 2, 3].into() };
        dealer.send(&msg, Duration::from_secs(5)).unwrap();
        assert_eq!(server.recv().unwrap().1.unwrap(), msg);
    }

    #[test]
    fn size_limits_hold_for_frames_built_in_place() {
        let (ctx, server, dealer) = pair("chunk-limit", 1000);
        let chunk = codec::encode_chunk(0, 1000).unwrap();
        match dealer.send_encoded(chunk.into_encoded(), Duration::from_secs(5)) {
            Err(TransportError::Protocol(ProtocolError::Oversized { limit: 1000, .. })) => {}
            other => panic!("{other:?}"),
        }
        // inproc does not enforce the limit, so the server's own check must.
        let big = Dealer::<FileRequest, FileReply>::connect(&ctx, "inproc://chunk-limit", None).unwrap();
        big.send_encoded(codec::encode_chunk(0, 1000).unwrap().into_encoded(), Duration::from_secs(5)).unwrap();
        let (_, frame) = server.recv_frame().unwrap();
        assert!(matches!(frame, Err(ProtocolError::Oversized { limit: 1000, .. })), "{frame:?}");
        let small = codec::encode_chunk(0, 10).unwrap();
        dealer.send_encoded(small.into_encoded(), Duration::from_secs(5)).unwrap();
        let (_, request) = server.recv().unwrap();
        assert_eq!(request.unwrap(), FileRequest::Chunk { offset: 0, data: vec![0; 10].into() });
    }
}
