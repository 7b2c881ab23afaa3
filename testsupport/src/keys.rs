//! Keys for tests of the master's authenticated sockets: client key pairs authorized (or not)
//! in a master's state directory, and the options that hand one to a program.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use piwheels_common::keys::{AUTHORIZED_KEYS_FILE, AuthorizedKeys, KeyPair, MASTER_KEY_FILE, PublicKey, Role};
use piwheels_common::transport::Security;

/// A client's key pair in a file, with the public key of the master it talks to.
#[derive(Debug, Clone)]
pub struct ClientKey {
    /// The client's key pair.
    pub pair: KeyPair,
    /// The master's public key.
    pub master: PublicKey,
    /// Where the key pair is stored.
    pub file: PathBuf,
}

impl ClientKey {
    /// A new key pair in `file`, authorized with `role` and `label` in the master's
    /// `state_dir` (whose key pair is made if the master has none yet). A running master picks
    /// it up within a second.
    pub fn authorized(state_dir: &Path, file: &Path, role: Role, label: &str) -> ClientKey {
        let key = ClientKey::unknown(state_dir, file);
        let list = state_dir.join(AUTHORIZED_KEYS_FILE);
        let mut keys = AuthorizedKeys::load(&list).expect("the list of keys");
        keys.authorize(key.pair.public, role, label, chrono::Utc::now()).expect("authorize the key");
        keys.save(&list).expect("save the list of keys");
        key
    }

    /// A new key pair in `file` that the master in `state_dir` does not know.
    pub fn unknown(state_dir: &Path, file: &Path) -> ClientKey {
        std::fs::create_dir_all(state_dir).expect("the state directory");
        let (master, _) = KeyPair::load_or_create(&state_dir.join(MASTER_KEY_FILE)).expect("the master's key pair");
        let pair = KeyPair::generate().expect("a key pair");
        pair.save_new(file).expect("save the key pair");
        ClientKey { pair, master: master.public, file: file.to_path_buf() }
    }

    /// Revokes this key in the master's `state_dir`.
    pub fn revoke(&self, state_dir: &Path) {
        let list = state_dir.join(AUTHORIZED_KEYS_FILE);
        let mut keys = AuthorizedKeys::load(&list).expect("the list of keys");
        keys.revoke(&self.pair.public.to_string(), chrono::Utc::now()).expect("revoke the key");
        keys.save(&list).expect("save the list of keys");
    }

    /// How a client in the test's own process connects with this key.
    pub fn security(&self) -> Security {
        Security::Client { server: self.master, keys: self.pair.clone() }
    }

    /// The options that give this key to a program: `--key FILE --master-key KEY`.
    pub fn args(&self) -> Vec<OsString> {
        vec!["--key".into(), self.file.clone().into(), "--master-key".into(), self.master.to_string().into()]
    }

    /// Gives the key file to the user [`crate::programs::unprivileged`] runs programs as, who
    /// must be able to read it (and only they: it is mode 600).
    pub fn for_unprivileged(self) -> ClientKey {
        if crate::programs::is_root() {
            let nobody = nix::unistd::User::from_name("nobody").expect("look up nobody").expect("a user nobody");
            std::os::unix::fs::chown(&self.file, Some(nobody.uid.as_raw()), Some(nobody.gid.as_raw())).expect("chown the key file");
        }
        self
    }
}
