//! The master's signing key: the ed25519 key that signs every published wheel's provenance
//! ([`piwheels_common::provenance`]). It is made on the master's first start in the state
//! directory (`signing.key`, mode 600) and never replaced; its public half is written at the
//! root of the served tree for users and `piw-verify`. Losing it means new statements are
//! signed by a new key that users must learn anew: back it up with `master.key`.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

use anyhow::Context as _;
use ed25519_dalek::SigningKey;
use piwheels_common::keys::give_to_directory_owner;

/// The key's file in the state directory.
pub const SIGNING_KEY_FILE: &str = "signing.key";

const HEADER: &str = "# The piwheels master's ed25519 signing key (its provenance statements are signed with it).\n\
# Keep this file private (mode 600) and backed up: statements signed with a new key do not\n\
# verify against the public key users have pinned.\n";

/// Reads the signing key in `state_dir`, or makes one there if there is none; true when made.
pub fn load_or_create(state_dir: &Path) -> anyhow::Result<(SigningKey, bool)> {
    let path = state_dir.join(SIGNING_KEY_FILE);
    match File::open(&path) {
        Ok(file) => load(&path, file).map(|key| (key, false)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(&path).map(|key| (key, true)),
        Err(e) => Err(e).with_context(|| format!("cannot read the signing key {}", path.display())),
    }
}

/// Reads the signing key in `state_dir`; None when there is none (a master that never ran).
pub fn load_existing(state_dir: &Path) -> anyhow::Result<Option<SigningKey>> {
    let path = state_dir.join(SIGNING_KEY_FILE);
    match File::open(&path) {
        Ok(file) => load(&path, file).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read the signing key {}", path.display())),
    }
}

fn load(path: &Path, file: File) -> anyhow::Result<SigningKey> {
    let mode = file.metadata().with_context(|| format!("cannot read {}", path.display()))?.permissions().mode();
    anyhow::ensure!(mode & 0o077 == 0, "{} may be read by other users (mode {:o}): chmod 600 it", path.display(), mode & 0o777);
    let text = std::io::read_to_string(file).with_context(|| format!("cannot read {}", path.display()))?;
    let seed = text
        .lines()
        .map(str::trim)
        .find(|line| !line.is_empty() && !line.starts_with('#'))
        .and_then(|line| hex::decode(line).ok())
        .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
        .with_context(|| format!("{} does not hold a signing key (64 hex digits after the comments)", path.display()))?;
    Ok(SigningKey::from_bytes(&seed))
}

fn create(path: &Path) -> anyhow::Result<SigningKey> {
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed).map_err(|e| anyhow::anyhow!("no random bytes for a signing key: {e}"))?;
    let key = SigningKey::from_bytes(&seed);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    // A new file only: an existing key is never replaced.
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create the signing key {}", path.display()))?;
    give_to_directory_owner(&file, path)?;
    file.write_all(format!("{HEADER}{}\n", hex::encode(seed)).as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write the signing key {}", path.display()))?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_made_once_then_read_and_refused_when_exposed() {
        let dir = tempfile::tempdir().unwrap();
        let (made, new) = load_or_create(dir.path()).unwrap();
        assert!(new);
        let path = dir.path().join(SIGNING_KEY_FILE);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let (read, new) = load_or_create(dir.path()).unwrap();
        assert!(!new);
        assert_eq!(read.to_bytes(), made.to_bytes());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let refused = load_or_create(dir.path()).unwrap_err().to_string();
        assert!(refused.contains("chmod 600"), "{refused}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(&path, "# nothing\n").unwrap();
        assert!(load_or_create(dir.path()).unwrap_err().to_string().contains("does not hold a signing key"));
    }
}
