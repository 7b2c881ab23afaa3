//! piw-keys: the operators' key tool. It makes key pairs, shows the master's public key, and
//! edits the master's list of authorized keys (`authorized_keys.toml` in its state
//! directory), which a running master reloads within a second; see `docs/security.md`.

use std::path::{Path, PathBuf};

use piwheels_common::config::ConfigArg;
use piwheels_common::keys::{AUTHORIZED_KEYS_FILE, AuthorizedKeys, KeyError, KeyPair, MASTER_KEY_FILE, Role, public_key_from_arg};
use piwheels_common::logging::LogArgs;

/// Manage the keys that may use a piwheels master's tcp sockets: make key pairs, authorize
/// them with a role, list and revoke them. Changes take effect on a running master within a
/// second.
#[derive(clap::Parser, Debug, Clone)]
#[command(name = "piw-keys", version)]
pub struct KeysConfig {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub config: ConfigArg,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub log: LogArgs,

    /// The master's state directory (piw-master's --state-dir), which holds its key pair
    /// (master.key) and the authorized keys (authorized_keys.toml)
    #[arg(long, env = "PIW_STATE_DIR", value_name = "DIR", default_value = "/var/lib/piwheels", global = true)]
    pub state_dir: PathBuf,

    #[command(subcommand)]
    #[allow(missing_docs)]
    pub command: KeysCommand,
}

/// What piw-keys does.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum KeysCommand {
    /// Make a key pair for a client (a slave, a monitor, the admin tools, piw-logger) in a new
    /// file with mode 600, and print its public key for the master's operator. Run it on the
    /// client's host, as the user that runs the client
    New {
        /// Where to write the key pair; an existing file is never replaced
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Print the public key of a key pair file, and its fingerprint
    Show {
        /// The key pair file
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Print the master's public key, which clients take as --master-key; makes the master's
    /// key pair if it has none yet (the master also makes it at its first start)
    Master,
    /// Allow a public key to use the master's tcp sockets with a role
    Authorize {
        /// The public key (40 characters, as `piw-keys new` prints it), or a key pair file
        /// whose public key to take
        #[arg(value_name = "KEY", allow_hyphen_values = true)]
        key: String,
        /// What the key may do: slave (build and upload), importer (piw-import, piw-add,
        /// piw-remove, piw-rebuild), monitor (watch), operator (watch and command), logger
        /// (piw-logger)
        #[arg(long, value_enum)]
        role: Role,
        /// The name logs, monitors, build records and the audit log give the key's holder (a
        /// slave is named by it, whatever it calls itself): 1 to 64 letters, digits, '.', '_',
        /// '-' or '@'
        #[arg(long, value_name = "NAME")]
        label: String,
    },
    /// List the authorized keys
    List {
        /// Include revoked keys
        #[arg(long)]
        all: bool,
    },
    /// Revoke a key: its connections are refused from their next message, a slave holding it
    /// is dropped within seconds (its build handed out again), and it cannot be authorized
    /// again
    Revoke {
        /// The key's label, fingerprint or public key
        #[arg(value_name = "WHO", allow_hyphen_values = true)]
        who: String,
    },
}

/// Carries out the command; what it prints goes to stdout, one line each.
pub fn run(cfg: &KeysConfig) -> Result<Vec<String>, KeyError> {
    let list_path = cfg.state_dir.join(AUTHORIZED_KEYS_FILE);
    match &cfg.command {
        KeysCommand::New { file } => {
            let pair = KeyPair::generate()?;
            pair.save_new(file)?;
            Ok(vec![
                format!("made the key pair {}", file.display()),
                format!("public key: {}", pair.public),
                format!("fingerprint: {}", pair.public.fingerprint()),
                format!("next: on the master, `piw-keys authorize {} --role ROLE --label NAME`", pair.public),
            ])
        }
        KeysCommand::Show { file } => {
            let pair = KeyPair::load(file)?;
            Ok(vec![format!("public key: {}", pair.public), format!("fingerprint: {}", pair.public.fingerprint())])
        }
        KeysCommand::Master => {
            let (pair, made) = KeyPair::load_or_create(&cfg.state_dir.join(MASTER_KEY_FILE))?;
            let mut out = Vec::new();
            if made {
                out.push(format!("made the master's key pair {}", cfg.state_dir.join(MASTER_KEY_FILE).display()));
            }
            out.push(pair.public.to_string());
            Ok(out)
        }
        KeysCommand::Authorize { key, role, label } => {
            let public = public_key_from_arg(key)?;
            let entry = edit(&list_path, |keys| keys.authorize(public, *role, label, chrono::Utc::now()).cloned())?;
            Ok(vec![format!("authorized {} as {} with the label {}", entry.public.fingerprint(), entry.role, entry.label)])
        }
        KeysCommand::List { all } => {
            let keys = AuthorizedKeys::load(&list_path)?;
            let mut out = vec![format!("{:<24} {:<9} {:<24} {:<17} {}", "LABEL", "ROLE", "FINGERPRINT", "ADDED", "REVOKED")];
            for key in keys.keys.iter().filter(|k| *all || k.revoked.is_none()) {
                out.push(format!(
                    "{:<24} {:<9} {:<24} {:<17} {}",
                    key.label,
                    key.role.name(),
                    key.public.fingerprint(),
                    key.added.format("%Y-%m-%d %H:%M"),
                    key.revoked.map(|at| at.format("%Y-%m-%d %H:%M").to_string()).unwrap_or_else(|| "-".into())
                ));
            }
            Ok(out)
        }
        KeysCommand::Revoke { who } => {
            let entry = edit(&list_path, |keys| keys.revoke(who, chrono::Utc::now()).cloned())?;
            Ok(vec![format!("revoked {} ({}, {}); a running master refuses it within a second", entry.public.fingerprint(), entry.label, entry.role)])
        }
    }
}

/// Loads the list under its lock, applies `change` and saves the result.
fn edit<T>(path: &Path, change: impl FnOnce(&mut AuthorizedKeys) -> Result<T, KeyError>) -> Result<T, KeyError> {
    if let Some(dir) = path.parent()
        && !dir.is_dir()
    {
        return Err(KeyError::Refused(format!("{} is not a directory: give the master's --state-dir", dir.display())));
    }
    let _lock = AuthorizedKeys::lock(path)?;
    let mut keys = AuthorizedKeys::load(path)?;
    let outcome = change(&mut keys)?;
    keys.save(path)?;
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Operators read defaults in `--help`: every option must show one.
    #[test]
    fn every_option_shows_its_default_in_help() {
        assert_eq!(piwheels_common::config::options_without_default(KeysConfig::command()), Vec::<String>::new());
    }

    #[test]
    fn keys_starting_with_a_hyphen_are_values_not_options() {
        let key = format!("-Z{}", "a".repeat(38));
        let authorize = ["piw-keys", "authorize", key.as_str(), "--role", "slave", "--label", "pi-1"];
        let cfg = <KeysConfig as clap::Parser>::try_parse_from(authorize).expect("the key is taken as a value");
        assert!(matches!(cfg.command, KeysCommand::Authorize { key: ref k, .. } if *k == key), "{:?}", cfg.command);
        let cfg = <KeysConfig as clap::Parser>::try_parse_from(["piw-keys", "revoke", key.as_str()]).expect("a value");
        assert!(matches!(cfg.command, KeysCommand::Revoke { ref who } if *who == key), "{:?}", cfg.command);
    }
}
