//! piw-monitor's options: the `[monitor]` table of the configuration file, `PIW_*` environment
//! variables and flags, in increasing precedence.

use piwheels_common::config::{ConfigArg, HumanDuration};
use piwheels_common::keys::ClientAuthArgs;

/// The operators' live view of a piwheels master: its slaves, queues, tasks and events, with
/// keys to sleep, wake, skip or kill slaves and to pause or resume the master.
#[derive(clap::Parser, Debug, Clone)]
#[command(name = "piw-monitor", version)]
pub struct MonitorConfig {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub config: ConfigArg,

    /// The master's control socket (its --control-queue): ipc://PATH on the master's host, or
    /// tcp://HOST:PORT from elsewhere
    #[arg(long, env = "PIW_CONTROL_QUEUE", value_name = "ADDR", default_value = "ipc:///run/piwheels/control")]
    pub control_queue: String,

    /// The master's status socket (its --status-queue): ipc://PATH or tcp://HOST:PORT
    #[arg(long, env = "PIW_STATUS_QUEUE", value_name = "ADDR", default_value = "ipc:///run/piwheels/status")]
    pub status_queue: String,

    /// How long to wait for the master to answer: attaching, and each command
    #[arg(long, env = "PIW_CONTROL_TIMEOUT", value_name = "DURATION", default_value = "5s")]
    pub control_timeout: HumanDuration,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub auth: ClientAuthArgs,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Operators read defaults in `--help`: every option must show one.
    #[test]
    fn every_option_shows_its_default_in_help() {
        assert_eq!(piwheels_common::config::options_without_default(MonitorConfig::command()), Vec::<String>::new());
    }
}
