//! The gatekeeper: who may use the master's tcp sockets, and what each may do there.
//!
//! Sockets: binds [`ZAP_ENDPOINT`] (REP), where libzmq asks, during each CurveZMQ handshake on
//! the master's tcp sockets, whether the client's key may connect. It is bound by
//! [`Gatekeeper::bind`] before any socket it guards, and answered by the `gatekeeper` task.
//!
//! Three layers, each enough on its own to keep a stranger out:
//!
//! 1. **The handshake.** Every tcp socket the master binds is a CurveZMQ server with the
//!    master's key pair and a ZAP domain naming it ([`Endpoint::zap_domain`]). The ZAP
//!    handler admits a client key only if [`KeyRing`] holds it, in force, with a role that may
//!    use that socket ([`Role::may_connect`]); libzmq drops any other connection before a
//!    message of it is read. An admitted connection carries the key as its user id.
//! 2. **Every request.** A task serving an external socket passes each request's
//!    [`Peer`] through its [`Gate`], which looks the key up again. A key revoked after its
//!    connection was made is refused from its next request on, and a request without a key
//!    (which only a handshake no ZAP handler saw could produce: libzmq admits every key when
//!    no handler is bound) is refused too.
//! 3. **What the request asks.** The control socket carries out commands for operators
//!    only ([`Caller::may_command`]); monitors may attach and watch.
//!
//! ipc sockets live in the master's private runtime directory (mode 700), so only the
//! master's own user reaches them: they need no keys, and their callers are
//! [`Caller::Local`]. A master run with `--no-auth` has no gatekeeper at all.
//!
//! The list of keys is the file `authorized_keys.toml` in the state directory, edited by
//! `piw-keys`. The gatekeeper task checks it every second and reloads it when it changed (a
//! new inode, size or modification time); a list that does not parse is refused with an
//! error in the log and the list in force is kept. Each change bumps [`KeyRing::generation`],
//! which tells the slave driver to look for slaves whose keys were revoked.
//!
//! Refusals are logged at most once a minute for each key and address (each key and socket,
//! for refusals of requests), so that a stranger knocking in a loop cannot flood the log.

use std::collections::HashMap;
use std::fmt;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use piwheels_common::keys::{
    AUTHORIZED_KEYS_FILE, AuthorizedKey, AuthorizedKeys, Endpoint, KeyError, KeyPair, MASTER_KEY_FILE, PublicKey, Role, needs_keys,
};
use piwheels_common::task::{Context, PauseMode, Task};
use piwheels_common::transport::{Peer, Security};

/// Where libzmq sends its authentication requests (RFC 27, ZAP).
pub const ZAP_ENDPOINT: &str = "inproc://zeromq.zap.01";
/// How often the list of keys is checked for changes.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(1);
/// A refusal of the same key from the same address is logged at most this often.
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(60);
/// The label of the master's own key, which the built-in web server feeds download records
/// with (on the logger socket only).
pub const OWN_LABEL: &str = "piw-master";
/// Refusals remembered for rate limiting; past this, old ones are forgotten first.
const MAX_REMEMBERED_REFUSALS: usize = 4096;
/// Refusal lines logged a minute at most, whatever the keys: a stranger who makes a new key
/// for every attempt is summarised, not logged line by line.
const MAX_REFUSAL_LINES: u32 = 60;

/// Who sent a request, as the master knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// A key in force.
    Key {
        /// Its label.
        label: String,
        /// Its role.
        role: Role,
        /// Its fingerprint.
        fingerprint: String,
    },
    /// A client of a socket without authentication: ipc in the private runtime directory, or
    /// any socket of a master run with `--no-auth`.
    Local,
}

impl Caller {
    /// Whether the caller may change the farm through the control socket.
    pub fn may_command(&self) -> bool {
        match self {
            Caller::Key { role, .. } => role.may_command(),
            Caller::Local => true,
        }
    }

    /// The key's label, if the caller has a key.
    pub fn label(&self) -> Option<&str> {
        match self {
            Caller::Key { label, .. } => Some(label),
            Caller::Local => None,
        }
    }
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Caller::Key { label, role, fingerprint } => write!(f, "key {label} ({role}, {fingerprint})"),
            Caller::Local => f.write_str("a local or unauthenticated client"),
        }
    }
}

/// Why a request was refused. Its text is what the client is told.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The connection carries no key (no ZAP handler saw its handshake).
    #[error("this connection is not authenticated; connect with a key the master's operator authorized")]
    NoKey,
    /// The key is not in the list.
    #[error("the key {fingerprint} is not authorized on this master; give the operator its public key")]
    Unknown {
        /// The key's fingerprint.
        fingerprint: String,
    },
    /// The key was revoked.
    #[error("the key {fingerprint} ({label}) was revoked by the master's operator")]
    Revoked {
        /// Its label.
        label: String,
        /// Its fingerprint.
        fingerprint: String,
    },
    /// The key's role may not use this socket, or may not ask this.
    #[error("the key {fingerprint} ({label}) has the role {role}, which may not {what}")]
    Role {
        /// Its label.
        label: String,
        /// Its fingerprint.
        fingerprint: String,
        /// Its role.
        role: Role,
        /// What it tried.
        what: String,
    },
}

/// What the list says of a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Standing {
    /// In force.
    Authorized(AuthorizedKey),
    /// Listed, but revoked.
    Revoked(AuthorizedKey),
    /// Not listed.
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    inode: u64,
    len: u64,
    modified: Option<SystemTime>,
}

impl FileStamp {
    fn of(path: &Path) -> Option<FileStamp> {
        let meta = std::fs::metadata(path).ok()?;
        Some(FileStamp { inode: meta.ino(), len: meta.len(), modified: meta.modified().ok() })
    }
}

#[derive(Debug, Default)]
struct Loaded {
    stamp: Option<FileStamp>,
    keys: HashMap<PublicKey, AuthorizedKey>,
}

/// The authorized keys, as the master holds them in memory, shared by the gatekeeper task
/// (which reloads them) and every [`Gate`].
#[derive(Debug)]
pub struct KeyRing {
    path: PathBuf,
    /// The master's own public key: its built-in web server feeds the logger socket with it.
    own: Option<PublicKey>,
    loaded: RwLock<Loaded>,
    generation: AtomicU64,
    refusals: Mutex<RefusalLog>,
}

/// What has been logged of refusals lately; see [`KeyRing::should_log`].
#[derive(Debug, Default)]
struct RefusalLog {
    /// When each key was last logged from each address (or socket).
    seen: HashMap<(PublicKey, String), Instant>,
    /// The start of the current minute of the global limit, the lines logged in it and the
    /// refusals left out.
    window: Option<Instant>,
    lines: u32,
    left_out: u64,
}

impl KeyRing {
    /// Loads the list at `path` (a missing file is an empty list).
    pub fn open(path: &Path) -> Result<KeyRing, KeyError> {
        let ring = KeyRing {
            path: path.to_path_buf(),
            own: None,
            loaded: RwLock::new(Loaded::default()),
            generation: AtomicU64::new(0),
            refusals: Mutex::new(RefusalLog::default()),
        };
        ring.reload()?;
        Ok(ring)
    }

    /// The file the list is read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn reload(&self) -> Result<(), KeyError> {
        let stamp = FileStamp::of(&self.path);
        let list = AuthorizedKeys::load(&self.path)?;
        let keys = list.keys.into_iter().map(|key| (key.public, key)).collect();
        *self.loaded.write().unwrap_or_else(|e| e.into_inner()) = Loaded { stamp, keys };
        self.generation.fetch_add(1, Ordering::Release);
        Ok(())
    }

    /// Reloads the list if its file changed; true when it did. On an error the list in force
    /// is kept.
    pub fn refresh(&self) -> Result<bool, KeyError> {
        let stamp = FileStamp::of(&self.path);
        if stamp == self.loaded.read().unwrap_or_else(|e| e.into_inner()).stamp {
            return Ok(false);
        }
        self.reload().map(|()| true).inspect_err(|_| {
            // Remember the broken file's stamp, so that it is reported once, not every second.
            self.loaded.write().unwrap_or_else(|e| e.into_inner()).stamp = stamp;
        })
    }

    /// Counts the changes of the list; a task that acts on revocations compares it.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// What the list says of `key`.
    pub fn standing(&self, key: &PublicKey) -> Standing {
        match self.loaded.read().unwrap_or_else(|e| e.into_inner()).keys.get(key) {
            Some(entry) if entry.revoked.is_some() => Standing::Revoked(entry.clone()),
            Some(entry) => Standing::Authorized(entry.clone()),
            None => Standing::Unknown,
        }
    }

    /// Keys in force.
    pub fn in_force(&self) -> usize {
        self.loaded.read().unwrap_or_else(|e| e.into_inner()).keys.values().filter(|k| k.revoked.is_none()).count()
    }

    /// Whether a refusal of `key` from `whence` should be logged now: at most once a minute
    /// for each, and [`MAX_REFUSAL_LINES`] a minute in all (the rest are counted and the count
    /// logged when the minute is over).
    fn should_log(&self, key: PublicKey, whence: &str, now: Instant) -> bool {
        let mut log = self.refusals.lock().unwrap_or_else(|e| e.into_inner());
        if log.window.is_none_or(|start| now.duration_since(start) >= REFUSAL_LOG_INTERVAL) {
            if log.left_out > 0 {
                tracing::warn!("{} more refusals in an earlier minute were not logged one by one", log.left_out);
            }
            (log.window, log.lines, log.left_out) = (Some(now), 0, 0);
        }
        if log.seen.len() >= MAX_REMEMBERED_REFUSALS {
            log.seen.retain(|_, at| now.duration_since(*at) < REFUSAL_LOG_INTERVAL);
            if log.seen.len() >= MAX_REMEMBERED_REFUSALS {
                // Still full of fresh refusals: a flood of new keys. Forget them all rather
                // than grow; the global limit keeps the log short meanwhile.
                log.seen.clear();
            }
        }
        let fresh = match log.seen.get(&(key, whence.to_string())) {
            Some(at) => now.duration_since(*at) >= REFUSAL_LOG_INTERVAL,
            None => true,
        };
        if !fresh {
            return false;
        }
        log.seen.insert((key, whence.to_string()), now);
        if log.lines >= MAX_REFUSAL_LINES {
            log.left_out += 1;
            return false;
        }
        log.lines += 1;
        true
    }

    /// Decides whether `key` may use `endpoint`.
    pub fn admit(&self, key: &PublicKey, endpoint: Endpoint) -> Result<Caller, Refusal> {
        let fingerprint = key.fingerprint();
        if self.own == Some(*key) && endpoint == Endpoint::Logger {
            return Ok(Caller::Key { label: OWN_LABEL.into(), role: Role::Logger, fingerprint });
        }
        match self.standing(key) {
            Standing::Authorized(entry) if entry.role.may_connect(endpoint) => {
                Ok(Caller::Key { label: entry.label, role: entry.role, fingerprint })
            }
            Standing::Authorized(entry) => Err(Refusal::Role {
                label: entry.label,
                fingerprint,
                role: entry.role,
                what: format!("use {endpoint} (it is for {})", role_list(&Role::allowed_on(endpoint))),
            }),
            Standing::Revoked(entry) => Err(Refusal::Revoked { label: entry.label, fingerprint }),
            Standing::Unknown => Err(Refusal::Unknown { fingerprint }),
        }
    }
}

fn role_list(roles: &[Role]) -> String {
    roles.iter().map(|r| r.name()).collect::<Vec<_>>().join(" and ")
}

/// The check every request on one external socket passes; see the module documentation.
#[derive(Clone, Debug)]
pub struct Gate {
    endpoint: Endpoint,
    keyring: Option<Arc<KeyRing>>,
}

impl Gate {
    /// A gate that lets every request through: ipc sockets, inproc tests, `--no-auth`.
    pub fn open(endpoint: Endpoint) -> Gate {
        Gate { endpoint, keyring: None }
    }

    /// The list of keys this gate checks against, if it checks any.
    pub fn keyring(&self) -> Option<&Arc<KeyRing>> {
        self.keyring.as_ref()
    }

    /// Who sent the request `peer` came with, or why it is refused. Refusals are logged here,
    /// at most once a minute for each key.
    pub fn admit(&self, peer: &Peer) -> Result<Caller, Refusal> {
        let verdict = self.check(peer.user());
        if let (Err(refusal), Some(ring)) = (&verdict, &self.keyring) {
            let key = peer.user().and_then(|user| user.parse::<PublicKey>().ok());
            if key.is_none_or(|key| ring.should_log(key, self.endpoint.zap_domain(), Instant::now())) {
                tracing::warn!("refused a request on {} from {peer}: {refusal}", self.endpoint);
            }
        }
        verdict
    }

    /// Whether the connection with the user id `user` may still use this socket (a key
    /// checked at its handshake may have been revoked since); logs nothing.
    pub fn check(&self, user: Option<&str>) -> Result<Caller, Refusal> {
        let Some(ring) = &self.keyring else { return Ok(Caller::Local) };
        let Some(key) = user.and_then(|user| user.parse::<PublicKey>().ok()) else { return Err(Refusal::NoKey) };
        ring.admit(&key, self.endpoint)
    }
}

/// How the master authenticates its tcp sockets: with its key pair and list of keys, or not
/// at all (`--no-auth`).
#[derive(Clone, Debug)]
pub struct Auth {
    keys: Option<(KeyPair, Arc<KeyRing>)>,
}

impl Auth {
    /// No authentication: every socket plain, every gate open.
    pub fn disabled() -> Auth {
        Auth { keys: None }
    }

    /// The master's key pair (made on the first start) and its list of keys, from
    /// `state_dir`.
    pub fn load(state_dir: &Path) -> anyhow::Result<Auth> {
        let key_path = state_dir.join(MASTER_KEY_FILE);
        let (pair, made) = KeyPair::load_or_create(&key_path).with_context(|| format!("the master's key pair {}", key_path.display()))?;
        if made {
            tracing::info!("made the master's key pair in {}", key_path.display());
        }
        let mut ring = KeyRing::open(&state_dir.join(AUTHORIZED_KEYS_FILE))?;
        ring.own = Some(pair.public);
        Ok(Auth::with_keys(pair, Arc::new(ring)))
    }

    /// Authentication with these keys.
    pub fn with_keys(pair: KeyPair, ring: Arc<KeyRing>) -> Auth {
        Auth { keys: Some((pair, ring)) }
    }

    /// The master's public key, when authentication is on.
    pub fn public_key(&self) -> Option<PublicKey> {
        self.keys.as_ref().map(|(pair, _)| pair.public)
    }

    /// The list of keys, when authentication is on.
    pub fn keyring(&self) -> Option<&Arc<KeyRing>> {
        self.keys.as_ref().map(|(_, ring)| ring)
    }

    /// How the socket for `endpoint` bound at `address` authenticates: CurveZMQ for tcp
    /// addresses when authentication is on.
    pub fn security(&self, endpoint: Endpoint, address: &str) -> Security {
        match &self.keys {
            Some((pair, _)) if needs_keys(address) => Security::Server { secret: pair.secret.clone(), domain: endpoint.zap_domain() },
            _ => Security::Plain,
        }
    }

    /// How the master's own clients of its sockets connect to `address`: with its own key
    /// (admitted on the logger socket only) when it is authenticated tcp.
    pub fn own_client(&self, address: &str) -> Security {
        match &self.keys {
            Some((pair, _)) if needs_keys(address) => Security::Client { server: pair.public, keys: pair.clone() },
            _ => Security::Plain,
        }
    }

    /// The gate for the socket for `endpoint` bound at `address`.
    pub fn gate(&self, endpoint: Endpoint, address: &str) -> Gate {
        match &self.keys {
            Some((_, ring)) if needs_keys(address) => Gate { endpoint, keyring: Some(Arc::clone(ring)) },
            _ => Gate::open(endpoint),
        }
    }
}

/// Whether only the master's own host can reach `address`: a private ipc path, or a tcp address on loopback (`tcp://127.0.0.1:PORT`,
/// `tcp://[::1]:PORT`, `tcp://localhost:PORT`). `*`, interface names, other hosts and other
/// transports may be reached from elsewhere.
pub fn is_loopback(address: &str) -> bool {
    if !needs_keys(address) {
        return true;
    }
    let Some(rest) = address.strip_prefix("tcp://") else { return false };
    let host = match rest.rsplit_once(':') {
        Some((host, _port)) => host,
        None => rest,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The ZAP socket, bound before the sockets it guards.
pub struct Sockets {
    zap: zmq::Socket,
}

impl fmt::Debug for Sockets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sockets").field("zap", &ZAP_ENDPOINT).finish()
    }
}

/// What the gatekeeper reacts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// libzmq asks about a handshake.
    Request,
    /// Time to check the list of keys for changes.
    Reload,
}

/// The ZAP handler: answers libzmq's questions from the [`KeyRing`] and reloads it.
#[derive(Debug)]
pub struct Gatekeeper {
    ring: Arc<KeyRing>,
}

impl Gatekeeper {
    /// Binds the ZAP endpoint: call before binding any CurveZMQ server socket, since libzmq
    /// admits every key when no handler is bound.
    pub fn bind(ctx: &zmq::Context) -> anyhow::Result<Sockets> {
        let zap = ctx.socket(zmq::REP).context("cannot make the ZAP socket")?;
        zap.set_linger(0)?;
        zap.bind(ZAP_ENDPOINT).context("cannot bind the ZAP socket")?;
        Ok(Sockets { zap })
    }

    /// The task, answering from `ring`.
    pub fn new(ring: Arc<KeyRing>) -> Gatekeeper {
        Gatekeeper { ring }
    }

    /// The answer to one ZAP request (its frames after the envelope): `[version, request id,
    /// status code, status text, user id, metadata]`.
    fn answer(&self, frames: &[Vec<u8>], now: Instant) -> Vec<Vec<u8>> {
        let reply = |id: &[u8], code: &str, text: &str, user: &str| vec![b"1.0".to_vec(), id.to_vec(), code.into(), text.into(), user.into(), Vec::new()];
        // [version, request id, domain, address, routing id, mechanism, credentials...]
        let [version, id, domain, address, _routing, mechanism, credentials @ ..] = frames else {
            tracing::error!("malformed ZAP request of {} frames", frames.len());
            return reply(frames.get(1).map_or(&[][..], Vec::as_slice), "500", "malformed request", "");
        };
        if version.as_slice() != b"1.0" {
            return reply(id, "500", "unknown ZAP version", "");
        }
        // Sockets listen on IPv6 too, so IPv4 clients arrive mapped (::ffff:192.0.2.1).
        let address = String::from_utf8_lossy(address);
        let address = address.strip_prefix("::ffff:").unwrap_or(&address);
        let Some(endpoint) = std::str::from_utf8(domain).ok().and_then(Endpoint::from_zap_domain) else {
            tracing::error!("ZAP request for the unknown domain {:?} from {address}", String::from_utf8_lossy(domain));
            return reply(id, "400", "unknown domain", "");
        };
        let key = match (mechanism.as_slice(), credentials) {
            (b"CURVE", [key]) => PublicKey::from_bytes(key),
            _ => None,
        };
        let Some(key) = key else {
            // CurveZMQ servers only meet CurveZMQ clients, so this is not expected; limited all the same.
            if PublicKey::from_bytes(&[0; 32]).is_some_and(|none| self.ring.should_log(none, address, now)) {
                tracing::warn!("refused a {} connection to {endpoint} from {address}: not CurveZMQ", String::from_utf8_lossy(mechanism));
            }
            return reply(id, "400", "CURVE required", "");
        };
        match self.ring.admit(&key, endpoint) {
            Ok(caller) => {
                tracing::debug!("admitted {caller} to {endpoint} from {address}");
                reply(id, "200", "OK", &key.to_string())
            }
            Err(refusal) => {
                if self.ring.should_log(key, address, now) {
                    tracing::warn!(
                        "refused a connection to {endpoint} from {address}: {refusal} (public key {key}; at most one such message a minute for this key and address)"
                    );
                }
                reply(id, "400", "key not authorized", "")
            }
        }
    }
}

impl Task for Gatekeeper {
    type Sockets = Sockets;
    type Event = Event;
    const PAUSE: PauseMode = PauseMode::NonStop;

    fn poll_sockets<'s>(&self, sockets: &'s Sockets) -> Vec<(Event, &'s zmq::Socket)> {
        vec![(Event::Request, &sockets.zap)]
    }

    fn timers(&self) -> Vec<(Event, Duration)> {
        vec![(Event::Reload, RELOAD_INTERVAL)]
    }

    fn handle(&mut self, event: Event, sockets: &mut Sockets, ctx: &mut Context<'_, Event>) -> anyhow::Result<()> {
        match event {
            Event::Request => {
                let frames = sockets.zap.recv_multipart(zmq::DONTWAIT)?;
                let reply = self.answer(&frames, ctx.now());
                sockets.zap.send_multipart(reply, 0)?;
            }
            Event::Reload => match self.ring.refresh() {
                Ok(true) => tracing::info!("reloaded {}: {} keys in force", self.ring.path().display(), self.ring.in_force()),
                Ok(false) => {}
                Err(e) => tracing::error!("kept the keys in force: {e}"),
            },
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_addresses_are_told_from_reachable_ones() {
        for address in ["tcp://127.0.0.1:5555", "tcp://[::1]:5555", "tcp://localhost:5555", "ipc:///run/piwheels/control", "tcp://127.0.0.2:1"] {
            assert!(is_loopback(address), "{address}");
        }
        for address in ["tcp://*:5555", "tcp://0.0.0.0:5555", "tcp://192.0.2.1:5555", "tcp://eth0:5555", "tcp://[::]:5555", "tcp://master.local:5555", "ipc://@piwheels"] {
            assert!(!is_loopback(address), "{address}");
        }
    }

    fn ring_with(dir: &Path, keys: &[(PublicKey, Role, &str)]) -> KeyRing {
        let path = dir.join(AUTHORIZED_KEYS_FILE);
        let mut list = AuthorizedKeys::default();
        for (key, role, label) in keys {
            list.authorize(*key, *role, label, chrono::Utc::now()).unwrap();
        }
        list.save(&path).unwrap();
        KeyRing::open(&path).unwrap()
    }

    #[test]
    fn the_zap_handler_admits_keys_in_force_on_their_sockets_only() {
        let dir = tempfile::tempdir().unwrap();
        let (slave, stranger) = (KeyPair::generate().unwrap().public, KeyPair::generate().unwrap().public);
        let ring = Arc::new(ring_with(dir.path(), &[(slave, Role::Slave, "pi-1")]));
        let keeper = Gatekeeper::new(Arc::clone(&ring));
        let request = |domain: &str, key: &PublicKey| {
            let frames = vec![b"1.0".to_vec(), b"7".to_vec(), domain.into(), b"192.0.2.9".to_vec(), vec![], b"CURVE".to_vec(), key.bytes().to_vec()];
            keeper.answer(&frames, Instant::now())
        };
        let status = |reply: Vec<Vec<u8>>| (String::from_utf8(reply[2].clone()).unwrap(), String::from_utf8(reply[4].clone()).unwrap());
        assert_eq!(status(request("slave", &slave)), ("200".into(), slave.to_string()));
        assert_eq!(status(request("file", &slave)), ("200".into(), slave.to_string()));
        assert_eq!(status(request("control", &slave)).0, "400");
        assert_eq!(status(request("admin", &slave)).0, "400");
        assert_eq!(status(request("slave", &stranger)).0, "400");
        assert_eq!(status(request("nowhere", &slave)).0, "400");
        let plain = vec![b"1.0".to_vec(), b"8".to_vec(), b"slave".to_vec(), b"x".to_vec(), vec![], b"NULL".to_vec()];
        assert_eq!(keeper.answer(&plain, Instant::now())[2], b"400");
        assert_eq!(keeper.answer(&[b"1.0".to_vec()], Instant::now())[2], b"500");
    }

    #[test]
    fn a_revocation_is_picked_up_by_refresh_and_gates_refuse_from_then_on() {
        let dir = tempfile::tempdir().unwrap();
        let key = KeyPair::generate().unwrap().public;
        let ring = Arc::new(ring_with(dir.path(), &[(key, Role::Operator, "ops")]));
        let before = ring.generation();
        assert!(!ring.refresh().unwrap(), "nothing changed");
        assert_eq!(ring.admit(&key, Endpoint::Control), Ok(Caller::Key { label: "ops".into(), role: Role::Operator, fingerprint: key.fingerprint() }));

        let path = ring.path().to_path_buf();
        let mut list = AuthorizedKeys::load(&path).unwrap();
        list.revoke("ops", chrono::Utc::now()).unwrap();
        list.save(&path).unwrap();
        assert!(ring.refresh().unwrap());
        assert!(ring.generation() > before);
        assert_eq!(ring.admit(&key, Endpoint::Control), Err(Refusal::Revoked { label: "ops".into(), fingerprint: key.fingerprint() }));

        // A broken file keeps the list in force and is reported once.
        std::fs::write(&path, "[[key]]\nlabel = 1\n").unwrap();
        assert!(ring.refresh().is_err());
        assert!(!ring.refresh().unwrap());
        assert!(matches!(ring.standing(&key), Standing::Revoked(_)));
    }

    #[test]
    fn refusals_are_logged_once_a_minute_per_key_and_address() {
        let dir = tempfile::tempdir().unwrap();
        let ring = ring_with(dir.path(), &[]);
        let key = KeyPair::generate().unwrap().public;
        let t0 = Instant::now();
        assert!(ring.should_log(key, "192.0.2.1", t0));
        assert!(!ring.should_log(key, "192.0.2.1", t0 + Duration::from_secs(30)));
        assert!(ring.should_log(key, "192.0.2.2", t0 + Duration::from_secs(30)));
        assert!(ring.should_log(key, "192.0.2.1", t0 + Duration::from_secs(61)));
        // A flood of new addresses (or keys): memory stays bounded and so does the log.
        let t1 = t0 + Duration::from_secs(240);
        let logged = (0..(MAX_REMEMBERED_REFUSALS * 2)).filter(|n| ring.should_log(key, &format!("addr-{n}"), t1)).count();
        assert_eq!(logged, MAX_REFUSAL_LINES as usize);
        let log = ring.refusals.lock().unwrap();
        assert!(log.seen.len() <= MAX_REMEMBERED_REFUSALS);
        assert_eq!(log.left_out, (MAX_REMEMBERED_REFUSALS * 2) as u64 - u64::from(MAX_REFUSAL_LINES));
    }
}
