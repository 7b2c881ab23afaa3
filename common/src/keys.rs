//! Keys and roles: CurveZMQ key pairs and their files, fingerprints, what each role may reach,
//! and the master's list of authorized keys.
//!
//! The cryptography is libzmq's (CurveZMQ over libsodium): this module makes key pairs through
//! it and only stores, names and looks up keys. Keys travel as Z85 text (40 characters for
//! 32 bytes), the form libzmq's own tools use.
//!
//! What each file protects, and why its checks:
//!
//! - a key pair file (a client's, or the master's `master.key`) holds a secret key: it is
//!   created with mode 600 and refused when other users may read it, as ssh refuses a private
//!   key others can read, since anyone who reads it can act as its owner.
//! - the master's `authorized_keys.toml` decides who may build, upload and command. It is
//!   written whole to a temporary file and renamed into place, so the master never reads half
//!   an edit, and edits take a lock so that two runs of `piw-keys` cannot lose each other's
//!   change. Revoked keys stay in the file, marked, so that the master can tell an operator
//!   that a refused key was revoked rather than unknown, and a revoked key cannot be
//!   authorized again by mistake.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::protocols::Timestamp;
use crate::transport::Security;

/// Something is wrong with a key, a key file or the list of authorized keys. Each message
/// says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A key is not 40 characters of Z85.
    #[error("{0:?} is not a key: expected 40 characters of Z85 (as `piw-keys` prints them)")]
    Malformed(String),
    /// A key file does not exist.
    #[error("no key file at {path}: make one with `piw-keys new {path}`, then give its public key to the master's operator")]
    Missing {
        /// The file.
        path: PathBuf,
    },
    /// A key pair file others may read.
    #[error("{path} holds a secret key but other users may read it (mode {mode:o}): run `chmod 600 {path}`")]
    Exposed {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// A file's contents are not what they should be.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// An edit of the authorized keys that cannot be made.
    #[error("{0}")]
    Refused(String),
    /// libzmq could not make a key pair.
    #[error("libzmq cannot make a key pair: {0} (is it built with CURVE support?)")]
    Generate(zmq::Error),
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> KeyError + '_ {
    move |source| KeyError::Io { path: path.to_path_buf(), source }
}

/// The 85 characters of Z85.
const Z85_ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";

fn z85_key(text: &str) -> Result<[u8; 32], KeyError> {
    let text = text.trim();
    // Checked here rather than trusted to the decoder, which takes some bytes outside it.
    if text.len() != 40 || !text.bytes().all(|b| Z85_ALPHABET.contains(&b)) {
        return Err(KeyError::Malformed(text.to_string()));
    }
    zmq::z85_decode(text).ok().and_then(|bytes| <[u8; 32]>::try_from(bytes).ok()).ok_or_else(|| KeyError::Malformed(text.to_string()))
}

fn z85_text(key: &[u8; 32]) -> String {
    // 32 bytes is a multiple of 4, the only condition Z85 encoding has.
    zmq::z85_encode(key).unwrap_or_default()
}

/// A CurveZMQ public key: who a client or the master is.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    /// The key's 32 bytes, as libzmq takes them.
    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The key from the 32 bytes a ZAP request carries.
    pub fn from_bytes(bytes: &[u8]) -> Option<PublicKey> {
        <[u8; 32]>::try_from(bytes).ok().map(PublicKey)
    }

    /// A short name for logs, monitors and operators: `SHA256:` and the first 16 hex digits
    /// of the key's SHA-256. Enough to tell keys apart; to authorize, give the whole key.
    pub fn fingerprint(&self) -> String {
        format!("SHA256:{}", hex::encode(&Sha256::digest(self.0)[..8]))
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&z85_text(&self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.fingerprint())
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;

    fn from_str(text: &str) -> Result<Self, KeyError> {
        z85_key(text).map(PublicKey)
    }
}

impl Serialize for PublicKey {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A CurveZMQ secret key. It never appears in logs: its `Debug` hides it.
#[derive(Clone)]
pub struct SecretKey([u8; 32]);

impl SecretKey {
    /// The key's 32 bytes, as libzmq takes them.
    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(hidden)")
    }
}

/// A key pair: the master's, or one client's.
#[derive(Clone, Debug)]
pub struct KeyPair {
    /// Who this is.
    pub public: PublicKey,
    /// What proves it.
    pub secret: SecretKey,
}

/// A key pair file as written on disk.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct KeyFile {
    public_key: String,
    secret_key: String,
}

const KEY_FILE_HEADER: &str = "# A piwheels CURVE key pair (made by piw-keys). The secret key proves who this host is:\n\
# keep this file private (mode 600). Give only the public key to the master's operator.\n";

impl KeyPair {
    /// A new key pair from libzmq (libsodium's random source).
    pub fn generate() -> Result<KeyPair, KeyError> {
        let pair = zmq::CurveKeyPair::new().map_err(KeyError::Generate)?;
        Ok(KeyPair { public: PublicKey(pair.public_key), secret: SecretKey(pair.secret_key) })
    }

    /// Reads a key pair file, refusing one that other users may read.
    pub fn load(path: &Path) -> Result<KeyPair, KeyError> {
        let file = File::open(path).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => KeyError::Missing { path: path.to_path_buf() },
            _ => KeyError::Io { path: path.to_path_buf(), source },
        })?;
        let mode = file.metadata().map_err(io_error(path))?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(KeyError::Exposed { path: path.to_path_buf(), mode: mode & 0o777 });
        }
        let text = std::io::read_to_string(file).map_err(io_error(path))?;
        let invalid = |reason: String| KeyError::Invalid { path: path.to_path_buf(), reason };
        let parsed: KeyFile = toml::from_str(&text).map_err(|e| invalid(format!("not a key pair file: {}", e.message())))?;
        let public = z85_key(&parsed.public_key).map_err(|_| invalid("public-key is not 40 characters of Z85".into()))?;
        let secret = z85_key(&parsed.secret_key).map_err(|_| invalid("secret-key is not 40 characters of Z85".into()))?;
        Ok(KeyPair { public: PublicKey(public), secret: SecretKey(secret) })
    }

    /// Writes the key pair to a new file with mode 600; an existing file is never replaced
    /// (it may be the only copy of a key that is authorized somewhere).
    pub fn save_new(&self, path: &Path) -> Result<(), KeyError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io_error(dir))?;
        }
        let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(|source| match source.kind() {
            std::io::ErrorKind::AlreadyExists => KeyError::Refused(format!("{} exists already; it is left as it is", path.display())),
            _ => KeyError::Io { path: path.to_path_buf(), source },
        })?;
        give_to_directory_owner(&file, path)?;
        let body = toml::to_string(&KeyFile { public_key: self.public.to_string(), secret_key: z85_text(&self.secret.0) })
            .map_err(|e| KeyError::Invalid { path: path.to_path_buf(), reason: e.to_string() })?;
        file.write_all(format!("{KEY_FILE_HEADER}{body}").as_bytes()).map_err(io_error(path))?;
        file.sync_all().map_err(io_error(path))
    }

    /// Reads the key pair at `path`, or makes one there if there is no file (the master's
    /// own key on its first start).
    pub fn load_or_create(path: &Path) -> Result<(KeyPair, bool), KeyError> {
        match KeyPair::load(path) {
            Err(KeyError::Missing { .. }) => {
                let pair = KeyPair::generate()?;
                pair.save_new(path)?;
                Ok((pair, true))
            }
            other => other.map(|pair| (pair, false)),
        }
    }
}

/// Reads a public key given as its Z85 text or as the path of a key pair file (whose public
/// half is taken).
pub fn public_key_from_arg(arg: &str) -> Result<PublicKey, KeyError> {
    if let Ok(key) = arg.parse() {
        return Ok(key);
    }
    // Anything that looks like a path is read as one, so that an unreadable file is reported
    // as such rather than as a malformed key.
    let path = Path::new(arg);
    if path.exists() || (arg.contains('/') && arg.trim().len() != 40) {
        return KeyPair::load(path).map(|pair| pair.public);
    }
    Err(KeyError::Malformed(arg.to_string()))
}

/// What a key may do. Each client has one role; the master's sockets admit only the roles
/// that need them, and its control socket carries out commands for operators only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A builder: takes builds and uploads their wheels.
    Slave,
    /// piw-import, piw-add, piw-remove and piw-rebuild: administers packages and uploads
    /// imported wheels.
    Importer,
    /// piw-monitor, watching only: the farm's state, no commands.
    Monitor,
    /// piw-monitor with commands: sleep, wake, skip and kill slaves, pause, resume and stop
    /// the master.
    Operator,
    /// piw-logger: sends the web server's access records.
    Logger,
}

impl Role {
    /// Every role, in the order `--help` and the documentation list them.
    pub const ALL: [Role; 5] = [Role::Slave, Role::Importer, Role::Monitor, Role::Operator, Role::Logger];

    /// The role's name in files and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Role::Slave => "slave",
            Role::Importer => "importer",
            Role::Monitor => "monitor",
            Role::Operator => "operator",
            Role::Logger => "logger",
        }
    }

    /// Whether a key of this role may connect to `socket` at all.
    pub fn may_connect(self, socket: Endpoint) -> bool {
        match (self, socket) {
            (Role::Slave, Endpoint::Slave | Endpoint::File) => true,
            (Role::Importer, Endpoint::Admin | Endpoint::File) => true,
            (Role::Monitor | Role::Operator, Endpoint::Control | Endpoint::Status) => true,
            (Role::Logger, Endpoint::Logger) => true,
            (Role::Slave | Role::Importer | Role::Monitor | Role::Operator | Role::Logger, _) => false,
        }
    }

    /// Whether a key of this role may change the farm through the control socket (rather than
    /// only attach to it and watch).
    pub fn may_command(self) -> bool {
        match self {
            Role::Operator => true,
            Role::Slave | Role::Importer | Role::Monitor | Role::Logger => false,
        }
    }

    /// The roles that may connect to `socket`, for refusal messages.
    pub fn allowed_on(socket: Endpoint) -> Vec<Role> {
        Role::ALL.into_iter().filter(|role| role.may_connect(socket)).collect()
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The master's external sockets, each with its own ZAP domain so that the master's ZAP
/// handler knows which socket a client is connecting to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `--slave-queue`: slaves take builds.
    Slave,
    /// `--file-queue`: slaves and piw-import send files.
    File,
    /// `--control-queue`: monitors attach and operators command.
    Control,
    /// `--status-queue`: monitors follow the farm's state.
    Status,
    /// `--import-queue`: the administrators' tools.
    Admin,
    /// `--logger-queue`: piw-logger.
    Logger,
}

impl Endpoint {
    /// Every external socket.
    pub const ALL: [Endpoint; 6] = [Endpoint::Slave, Endpoint::File, Endpoint::Control, Endpoint::Status, Endpoint::Admin, Endpoint::Logger];

    /// The ZAP domain the socket announces to the ZAP handler.
    pub fn zap_domain(self) -> &'static str {
        match self {
            Endpoint::Slave => "slave",
            Endpoint::File => "file",
            Endpoint::Control => "control",
            Endpoint::Status => "status",
            Endpoint::Admin => "admin",
            Endpoint::Logger => "logger",
        }
    }

    /// The socket named by a ZAP domain.
    pub fn from_zap_domain(domain: &str) -> Option<Endpoint> {
        Endpoint::ALL.into_iter().find(|e| e.zap_domain() == domain)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the {} socket", self.zap_domain())
    }
}

/// One key the master knows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorizedKey {
    /// Who holds it, as logs, monitors, build records and the audit log name it.
    pub label: String,
    /// What it may do.
    pub role: Role,
    /// The key.
    pub public: PublicKey,
    /// When it was authorized.
    pub added: Timestamp,
    /// When it was revoked; a revoked key is refused everywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<Timestamp>,
}

/// The master's list of keys, as stored in its state directory.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorizedKeys {
    /// Every key ever authorized, revoked ones included.
    #[serde(default, rename = "key")]
    pub keys: Vec<AuthorizedKey>,
}

/// The file of authorized keys in the master's state directory.
pub const AUTHORIZED_KEYS_FILE: &str = "authorized_keys.toml";
/// The master's key pair in its state directory.
pub const MASTER_KEY_FILE: &str = "master.key";
/// Longest label accepted: the build records' column is 100 characters, and labels appear in
/// one-line log messages.
pub const MAX_LABEL: usize = 64;

const AUTHORIZED_KEYS_HEADER: &str = "# Keys allowed to use this piwheels master's tcp sockets. Edit with piw-keys: the master\n\
# reloads this file within a second of a change. Revoked keys are kept, marked, so that they\n\
# cannot be authorized again by mistake.\n";

impl AuthorizedKeys {
    /// Reads the file; a missing file is an empty list.
    /// A list other users may change is refused: whoever can write it can authorize keys.
    pub fn load(path: &Path) -> Result<AuthorizedKeys, KeyError> {
        let file = match File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(AuthorizedKeys::default()),
            Err(source) => return Err(KeyError::Io { path: path.to_path_buf(), source }),
        };
        let mode = file.metadata().map_err(io_error(path))?.permissions().mode();
        if mode & 0o022 != 0 {
            return Err(KeyError::Invalid {
                path: path.to_path_buf(),
                reason: format!("other users may change it (mode {:o}), so it is not trusted: run `chmod 600` on it", mode & 0o777),
            });
        }
        let text = std::io::read_to_string(file).map_err(io_error(path))?;
        let keys: AuthorizedKeys =
            toml::from_str(&text).map_err(|e| KeyError::Invalid { path: path.to_path_buf(), reason: e.message().to_string() })?;
        keys.check().map_err(|reason| KeyError::Invalid { path: path.to_path_buf(), reason })?;
        Ok(keys)
    }

    /// What makes the list consistent: valid labels, each public key once, labels unique
    /// among the keys in force.
    fn check(&self) -> Result<(), String> {
        for (i, key) in self.keys.iter().enumerate() {
            check_label(&key.label)?;
            if self.keys[..i].iter().any(|k| k.public == key.public) {
                return Err(format!("the key {} is listed twice", key.public.fingerprint()));
            }
            if key.revoked.is_none() && self.keys[..i].iter().any(|k| k.revoked.is_none() && k.label == key.label) {
                return Err(format!("two keys in force have the label {:?}", key.label));
            }
        }
        Ok(())
    }

    /// Writes the list atomically (a new temporary file of a random name, then rename) with
    /// mode 600, owned by the directory's owner (see [`give_to_directory_owner`]).
    pub fn save(&self, path: &Path) -> Result<(), KeyError> {
        let body = toml::to_string(self).map_err(|e| KeyError::Invalid { path: path.to_path_buf(), reason: e.to_string() })?;
        let dir = parent_dir(path);
        // A fresh name, made with O_EXCL: nothing planted in the directory is followed.
        let mut tmp = tempfile::Builder::new().prefix(".authorized_keys.").tempfile_in(dir).map_err(io_error(dir))?;
        give_to_directory_owner(tmp.as_file(), tmp.path())?;
        tmp.write_all(format!("{AUTHORIZED_KEYS_HEADER}{body}").as_bytes()).map_err(io_error(tmp.path()))?;
        tmp.as_file().sync_all().map_err(io_error(tmp.path()))?;
        tmp.persist(path).map_err(|e| KeyError::Io { path: path.to_path_buf(), source: e.error })?;
        // The rename must survive a crash too: the master reads what the directory names.
        File::open(dir).and_then(|d| d.sync_all()).map_err(io_error(dir))
    }

    /// Takes the lock that serializes edits of the file at `path`; held until dropped. The
    /// lock file is never followed through a symbolic link.
    pub fn lock(path: &Path) -> Result<File, KeyError> {
        let lock_path = path.with_extension("toml.lock");
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&lock_path)
            .map_err(io_error(&lock_path))?;
        give_to_directory_owner(&file, &lock_path)?;
        file.lock().map_err(io_error(&lock_path))?;
        Ok(file)
    }

    /// The entry for `key`, revoked or not.
    pub fn find(&self, key: &PublicKey) -> Option<&AuthorizedKey> {
        self.keys.iter().find(|k| k.public == *key)
    }

    /// Adds a key in force.
    pub fn authorize(&mut self, public: PublicKey, role: Role, label: &str, now: Timestamp) -> Result<&AuthorizedKey, KeyError> {
        check_label(label).map_err(KeyError::Refused)?;
        if let Some(known) = self.find(&public) {
            return Err(KeyError::Refused(match known.revoked {
                Some(when) => format!(
                    "the key {} ({}) was revoked on {}; a revoked key stays revoked: make a new key pair",
                    public.fingerprint(),
                    known.label,
                    when.format("%Y-%m-%d %H:%M UTC")
                ),
                None => format!("the key {} is authorized already, as {} with the label {:?}", public.fingerprint(), known.role, known.label),
            }));
        }
        if self.keys.iter().any(|k| k.revoked.is_none() && k.label == label) {
            return Err(KeyError::Refused(format!("the label {label:?} belongs to another key in force; revoke that one first or pick another label")));
        }
        self.keys.push(AuthorizedKey { label: label.to_string(), role, public, added: now, revoked: None });
        Ok(self.keys.last().expect("just pushed"))
    }

    /// Revokes the key in force named by `who`: its label, its fingerprint or the whole key.
    pub fn revoke(&mut self, who: &str, now: Timestamp) -> Result<&AuthorizedKey, KeyError> {
        let who = who.trim();
        let matches = |k: &AuthorizedKey| k.label == who || k.public.fingerprint() == who || k.public.to_string() == who;
        let index = self.keys.iter().position(|k| k.revoked.is_none() && matches(k)).ok_or_else(|| {
            KeyError::Refused(match self.keys.iter().find(|k| matches(k)) {
                Some(k) => format!("the key {} ({}) is revoked already", k.public.fingerprint(), k.label),
                None => format!("no key in force has the label, fingerprint or public key {who:?} (`piw-keys list` shows them)"),
            })
        })?;
        self.keys[index].revoked = Some(now);
        Ok(&self.keys[index])
    }
}

/// The directory a file is in (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// Gives a file that root made, open as `file` at `path`, to the owner of its directory: the
/// master runs as that (unprivileged) user and must read its keys, and an operator often runs
/// `piw-keys` with sudo. It changes the open file, never a path that could have been swapped
/// for a link meanwhile. Does nothing for other users, who can only make files of their own.
pub fn give_to_directory_owner(file: &File, path: &Path) -> Result<(), KeyError> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    let dir = parent_dir(path);
    let owner = std::fs::metadata(dir).map_err(io_error(dir))?;
    std::os::unix::fs::fchown(file, Some(std::os::unix::fs::MetadataExt::uid(&owner)), Some(std::os::unix::fs::MetadataExt::gid(&owner)))
        .map_err(io_error(path))
}

/// Labels name keys in logs and one-line messages: 1 to 64 letters, digits, `.`, `_`, `-` or
/// `@`.
pub fn check_label(label: &str) -> Result<(), String> {
    let fine = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@');
    if label.is_empty() || label.len() > MAX_LABEL || !label.chars().all(fine) {
        return Err(format!("{label:?} is not a label: use 1 to {MAX_LABEL} letters, digits, '.', '_', '-' or '@'"));
    }
    Ok(())
}

/// Whether a socket at `endpoint` needs keys: every address other hosts or users can reach.
/// Only inproc and ipc in a directory (whose permissions keep other users out) go without;
/// an abstract ipc name (`ipc://@name`) has no permissions, so any local user reaches it.
pub fn needs_keys(endpoint: &str) -> bool {
    let private_ipc = endpoint.strip_prefix("ipc://").is_some_and(|path| !path.starts_with('@'));
    !(endpoint.starts_with("inproc://") || private_ipc)
}

/// How a client program authenticates to the master's tcp sockets: every client flattens
/// these options into its own.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ClientAuthArgs {
    /// This program's key pair file, made with `piw-keys new FILE`: the master's tcp sockets
    /// admit authorized keys only. Not needed for ipc addresses [default: none]
    #[arg(long = "key", env = "PIW_KEY", value_name = "FILE")]
    pub key: Option<PathBuf>,

    /// The master's public key, as `piw-keys master` prints it on the master's host (40
    /// characters): with it this program knows it talks to the real master [default: none]
    // A key's Z85 text may start with '-'.
    #[arg(long, env = "PIW_MASTER_KEY", value_name = "KEY", allow_hyphen_values = true)]
    pub master_key: Option<String>,

    /// Connect to tcp addresses without authentication, to a master run with --no-auth
    #[arg(long, env = "PIW_CLIENT_NO_AUTH")]
    pub no_auth: bool,
}

impl ClientAuthArgs {
    /// How to connect to `endpoint` as a program of `role`: CurveZMQ for a tcp address unless
    /// --no-auth, plain otherwise. The errors say what to do.
    pub fn security(&self, endpoint: &str, role: Role) -> Result<Security, KeyError> {
        if !needs_keys(endpoint) || self.no_auth {
            return Ok(Security::Plain);
        }
        let Some(path) = &self.key else {
            return Err(KeyError::Refused(format!(
                "{endpoint} is a network address, where the master admits authorized keys only, and this program has no key: \
                 make a key pair with `piw-keys new FILE`, have the master's operator run `piw-keys authorize PUBLIC-KEY --role {role} \
                 --label NAME` with the public key it prints, then pass --key FILE and --master-key (or --no-auth, for a master run \
                 without authentication)"
            )));
        };
        let Some(master) = &self.master_key else {
            return Err(KeyError::Refused(format!(
                "{endpoint} is a network address and no --master-key was given: ask the master's operator for the output of \
                 `piw-keys master` (the master's public key)"
            )));
        };
        let server = master.parse().map_err(|_| {
            // --master-key takes what follows it, since a key may start with '-'.
            let hint = if master.starts_with("--") { format!(" (was the key left out before {master}?)") } else { String::new() };
            KeyError::Refused(format!("--master-key {master:?} is not a key: expected the 40 characters `piw-keys master` prints{hint}"))
        })?;
        Ok(Security::Client { server, keys: KeyPair::load(path)? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_master_key_starting_with_a_hyphen_is_a_value_not_an_option() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            auth: ClientAuthArgs,
        }
        // Z85 has '-' in its alphabet: one master key in 85 starts with it.
        let key = format!("-Z{}", "a".repeat(38));
        let cli = <Cli as clap::Parser>::try_parse_from(["piw-slave", "--master-key", &key]).expect("the key is taken as a value");
        assert_eq!(cli.auth.master_key, Some(key));
        // So an option after --master-key is taken as the key, and the error says so.
        let cli = <Cli as clap::Parser>::try_parse_from(["piw-slave", "--key", "/nonexistent", "--master-key", "--no-auth"]).unwrap();
        let error = cli.auth.security("tcp://master:5555", Role::Slave).expect_err("not a key").to_string();
        assert!(error.contains("was the key left out before --no-auth?"), "{error}");
    }

    fn now() -> Timestamp {
        chrono::Utc::now()
    }

    #[test]
    fn each_role_reaches_exactly_its_sockets() {
        use Endpoint::*;
        let table: [(Role, &[Endpoint], bool); 5] = [
            (Role::Slave, &[Slave, File], false),
            (Role::Importer, &[Admin, File], false),
            (Role::Monitor, &[Control, Status], false),
            (Role::Operator, &[Control, Status], true),
            (Role::Logger, &[Logger], false),
        ];
        for (role, reaches, commands) in table {
            for socket in Endpoint::ALL {
                assert_eq!(role.may_connect(socket), reaches.contains(&socket), "{role} on {socket}");
            }
            assert_eq!(role.may_command(), commands, "{role}");
        }
    }

    #[test]
    fn zap_domains_name_their_sockets_and_nothing_else() {
        for socket in Endpoint::ALL {
            assert_eq!(Endpoint::from_zap_domain(socket.zap_domain()), Some(socket));
        }
        assert_eq!(Endpoint::from_zap_domain(""), None);
        assert_eq!(Endpoint::from_zap_domain("Slave"), None);
    }

    #[test]
    fn a_key_pair_file_round_trips_and_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/client.key");
        let pair = KeyPair::generate().unwrap();
        pair.save_new(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let loaded = KeyPair::load(&path).unwrap();
        assert_eq!(loaded.public, pair.public);
        assert_eq!(loaded.secret.bytes(), pair.secret.bytes());
        assert!(!format!("{loaded:?}").contains(&z85_text(pair.secret.bytes())), "Debug must hide the secret");

        match pair.save_new(&path) {
            Err(KeyError::Refused(reason)) => assert!(reason.contains("exists already"), "{reason}"),
            other => panic!("{other:?}"),
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let refused = KeyPair::load(&path).unwrap_err().to_string();
        assert!(refused.contains("other users may read it (mode 644)") && refused.contains("chmod 600"), "{refused}");

        let missing = KeyPair::load(&dir.path().join("none.key")).unwrap_err().to_string();
        assert!(missing.contains("piw-keys new"), "{missing}");
        assert_eq!(public_key_from_arg(path.to_str().unwrap()).map_err(|e| e.to_string()), Err(refused));
        assert_eq!(public_key_from_arg(&pair.public.to_string()).unwrap(), pair.public);
    }

    #[test]
    fn only_private_local_addresses_go_without_keys() {
        for endpoint in ["tcp://127.0.0.1:5555", "tcp://*:5555", "ipc://@piwheels", "ws://host:80", "pgm://eth0;239.0.0.1:5555"] {
            assert!(needs_keys(endpoint), "{endpoint}");
        }
        for endpoint in ["ipc:///run/piwheels/control", "inproc://status"] {
            assert!(!needs_keys(endpoint), "{endpoint}");
        }
    }

    #[test]
    fn malformed_keys_are_refused() {
        for text in ["", "short", &"x".repeat(41), "0123456789012345678901234567890123456\u{e9}9"] {
            assert!(text.parse::<PublicKey>().is_err(), "{text:?}");
        }
        let key = KeyPair::generate().unwrap().public;
        assert_eq!(key.to_string().parse::<PublicKey>().unwrap(), key);
        assert!(key.fingerprint().starts_with("SHA256:") && key.fingerprint().len() == 23, "{}", key.fingerprint());
    }

    #[test]
    fn authorizing_and_revoking_keep_the_list_consistent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(AUTHORIZED_KEYS_FILE);
        let (a, b) = (KeyPair::generate().unwrap().public, KeyPair::generate().unwrap().public);
        let mut keys = AuthorizedKeys::load(&path).unwrap();
        assert!(keys.keys.is_empty());
        keys.authorize(a, Role::Slave, "pi-1", now()).unwrap();
        let twice = keys.authorize(a, Role::Monitor, "other", now()).unwrap_err().to_string();
        assert!(twice.contains("authorized already, as slave"), "{twice}");
        let label = keys.authorize(b, Role::Slave, "pi-1", now()).unwrap_err().to_string();
        assert!(label.contains("belongs to another key"), "{label}");
        assert!(keys.authorize(b, Role::Slave, "bad label", now()).is_err());
        keys.save(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(AuthorizedKeys::load(&path).unwrap(), keys);

        assert_eq!(keys.revoke(&a.fingerprint(), now()).unwrap().label, "pi-1");
        let again = keys.revoke("pi-1", now()).unwrap_err().to_string();
        assert!(again.contains("revoked already"), "{again}");
        let back = keys.authorize(a, Role::Slave, "pi-1b", now()).unwrap_err().to_string();
        assert!(back.contains("stays revoked"), "{back}");
        // The label of a revoked key is free for its successor.
        keys.authorize(b, Role::Slave, "pi-1", now()).unwrap();
        keys.save(&path).unwrap();
        let loaded = AuthorizedKeys::load(&path).unwrap();
        assert_eq!(loaded.keys.len(), 2);
        assert!(loaded.find(&a).unwrap().revoked.is_some() && loaded.find(&b).unwrap().revoked.is_none());
        assert!(keys.revoke("nobody", now()).unwrap_err().to_string().contains("piw-keys list"));
    }

    #[test]
    fn a_hand_edited_list_that_contradicts_itself_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(AUTHORIZED_KEYS_FILE);
        let key = KeyPair::generate().unwrap().public;
        let entry = format!("[[key]]\nlabel = \"a\"\nrole = \"slave\"\npublic = \"{key}\"\nadded = \"2026-01-01T00:00:00Z\"\n");
        std::fs::write(&path, format!("{entry}{entry}")).unwrap();
        let err = AuthorizedKeys::load(&path).unwrap_err().to_string();
        assert!(err.contains("listed twice"), "{err}");
        std::fs::write(&path, entry.replace("slave", "builder")).unwrap();
        assert!(AuthorizedKeys::load(&path).is_err());
        std::fs::write(&path, &entry).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o662)).unwrap();
        let err = AuthorizedKeys::load(&path).unwrap_err().to_string();
        assert!(err.contains("other users may change it (mode 662)"), "{err}");
    }
}
