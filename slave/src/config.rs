//! piw-slave's options: the `[slave]` table of the configuration file, `PIW_SLAVE_*`
//! environment variables and flags, in increasing precedence, and the checks that tie them
//! together.

use std::path::PathBuf;
use std::time::Duration;

use piwheels_common::config::{ByteSize, ConfigArg, HumanDuration};
use piwheels_common::keys::ClientAuthArgs;
use piwheels_common::logging::LogArgs;
use piwheels_common::transport::DEFAULT_MAX_MESSAGE;

use crate::builder::{CommandTemplate, DEFAULT_COMMAND};

/// The slave driver's port on the master.
pub const SLAVE_PORT: u16 = 5555;
/// The file juggler's port on the master.
pub const FILE_PORT: u16 = 5556;

/// Room in a `Built` message for what is not the log (the wheels' descriptions and METADATA).
const BUILT_ROOM: u64 = 8 << 20;

/// The piwheels build slave: asks the master for work, builds each release it is given with
/// pip for this machine's Python, and sends the wheels back. Run it as an unprivileged user
/// (it refuses to run as root): builds run the packages' own code.
#[derive(clap::Parser, Debug, Clone)]
#[command(name = "piw-slave", version)]
pub struct SlaveConfig {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub config: ConfigArg,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub log: LogArgs,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub auth: ClientAuthArgs,

    /// The master's host name or address (an IPv6 address as is, e.g. fd00::1); the slave
    /// talks to its slave driver on port 5555 and sends wheels to its file juggler on port
    /// 5556, unless --slave-queue or --file-queue say otherwise
    #[arg(short = 'm', long, env = "PIW_SLAVE_MASTER", value_name = "HOST", default_value = "localhost")]
    pub master: String,

    /// The master's slave driver, as tcp://HOST:PORT [default: tcp://MASTER:5555]
    #[arg(long, env = "PIW_SLAVE_SLAVE_QUEUE", value_name = "ADDR")]
    pub slave_queue: Option<String>,

    /// The master's file juggler, as tcp://HOST:PORT [default: tcp://MASTER:5556]
    #[arg(long, env = "PIW_SLAVE_FILE_QUEUE", value_name = "ADDR")]
    pub file_queue: Option<String>,

    /// Where each build gets its own directory, removed after the build; its file system's
    /// free space is reported to the master and checked before taking work [default:
    /// $TMPDIR, else /tmp]
    #[arg(long, env = "PIW_SLAVE_BUILD_ROOT", value_name = "DIR")]
    pub build_root: Option<PathBuf>,

    /// Wall-clock limit of one build; a build still running then is killed with all its
    /// processes and reported as timed out
    #[arg(long, env = "PIW_SLAVE_BUILD_TIMEOUT", value_name = "DURATION", default_value = "3h")]
    pub build_timeout: HumanDuration,

    /// How long the master may go without a word from this slave before it drops it (and
    /// hands its build to another); it must exceed the busy and sleep intervals and the
    /// upload timeout
    #[arg(long, env = "PIW_SLAVE_BUSY_TIMEOUT", value_name = "DURATION", default_value = "15m")]
    pub busy_timeout: HumanDuration,

    /// How often the slave tells the master it is still building
    #[arg(long, env = "PIW_SLAVE_BUSY_INTERVAL", value_name = "DURATION", default_value = "10s")]
    pub busy_interval: HumanDuration,

    /// How long the slave waits before asking again when the master has no work (plus up to
    /// half as long again, at random, so that slaves do not ask in step)
    #[arg(long, env = "PIW_SLAVE_SLEEP_INTERVAL", value_name = "DURATION", default_value = "5s")]
    pub sleep_interval: HumanDuration,

    /// How long the slave waits for the master's answer to a request before it gives the
    /// connection up, abandons any build, and connects and says hello again
    #[arg(long, env = "PIW_SLAVE_MASTER_TIMEOUT", value_name = "DURATION", default_value = "2m")]
    pub master_timeout: HumanDuration,

    /// While the master does not answer its hello (it is down or restarting), the slave says
    /// hello again on a fresh connection this often
    #[arg(long, env = "PIW_SLAVE_RECONNECT_INTERVAL", value_name = "DURATION", default_value = "5s")]
    pub reconnect_interval: HumanDuration,

    /// Longest time one wheel's upload may take before it is given up (the master is then
    /// told it was sent, and asks again if it did not arrive)
    #[arg(long, env = "PIW_SLAVE_UPLOAD_TIMEOUT", value_name = "DURATION", default_value = "10m")]
    pub upload_timeout: HumanDuration,

    /// Address-space limit of each build (RLIMIT_AS, applied to the build's processes only,
    /// not to the slave), e.g. 2GiB; a build that needs more fails as out of memory. It counts
    /// reserved address space, which is more than memory used: leave room. 0 = no limit
    #[arg(long, env = "PIW_SLAVE_MEMORY_LIMIT", value_name = "SIZE", default_value = "0")]
    pub memory_limit: ByteSize,

    /// The Python interpreter to build for: its version, ABI and platform are what this
    /// slave announces, and {python} in --build-command is it
    #[arg(long, env = "PIW_SLAVE_PYTHON", value_name = "COMMAND", default_value = "python3")]
    pub python: String,

    /// The build command, split into arguments at white space (no shell, no quoting), with
    /// placeholders {python} {package} {version} {source} (the path of the pinned source file,
    /// downloaded and checked), {index_url} (the index the master names, for build
    /// dependencies; a word holding it is left out when the master names none) and {wheel_dir}
    /// (where the wheels must land); it runs in the build directory with TMPDIR inside it
    #[arg(long, env = "PIW_SLAVE_BUILD_COMMAND", value_name = "TEMPLATE", default_value = DEFAULT_COMMAND)]
    pub build_command: CommandTemplate,

    /// The most of a build's log sent to the master: the end of it, where the errors are
    #[arg(long, env = "PIW_SLAVE_LOG_LIMIT", value_name = "SIZE", default_value = "1MiB")]
    pub log_limit: ByteSize,

    /// Free disk space the build root must have for a builder to take work, and for another
    /// builder to start; with less, a builder tells the master why and waits
    #[arg(long, env = "PIW_SLAVE_MIN_FREE_DISK", value_name = "SIZE", default_value = "1GiB")]
    pub min_free_disk: ByteSize,

    /// Available memory the host must have for a builder to take work, and for another
    /// builder to start; with less, a builder tells the master why and waits
    #[arg(long, env = "PIW_SLAVE_MIN_FREE_MEMORY", value_name = "SIZE", default_value = "128MiB")]
    pub min_free_memory: ByteSize,

    /// How many builders to run, each a slave to the master with its own directory under the
    /// build root (SIGTTIN adds one, SIGTTOU retires one after its build; so do the monitor's
    /// + and - keys)
    #[arg(long, env = "PIW_SLAVE_BUILDERS", value_name = "COUNT", default_value = "1", value_parser = clap::value_parser!(u16).range(1..=i64::from(SlaveConfig::MOST_BUILDERS)))]
    pub builders: u16,

    /// The name this slave gives itself, followed by #N for builder N [default: the host
    /// name]; a master that authenticates slaves names it by its key's label instead
    #[arg(long, env = "PIW_SLAVE_LABEL", value_name = "TEXT")]
    pub label: Option<String>,
}

impl SlaveConfig {
    /// Most builders one host may run.
    pub const MOST_BUILDERS: u16 = 64;

    /// The slave driver's address.
    pub fn slave_endpoint(&self) -> String {
        self.slave_queue.clone().unwrap_or_else(|| format!("tcp://{}:{SLAVE_PORT}", host_for_url(&self.master)))
    }

    /// The file juggler's address.
    pub fn file_endpoint(&self) -> String {
        self.file_queue.clone().unwrap_or_else(|| format!("tcp://{}:{FILE_PORT}", host_for_url(&self.master)))
    }

    /// The build root.
    pub fn build_root(&self) -> PathBuf {
        self.build_root.clone().unwrap_or_else(std::env::temp_dir)
    }

    /// Checks what the options mean together; the error is a sentence for the operator.
    pub fn check(&self) -> Result<(), String> {
        let busy = self.busy_timeout.0;
        let longest_silence = [
            ("--busy-interval", self.busy_interval.0),
            ("--sleep-interval (with its random addition)", self.sleep_interval.0 * 3 / 2),
            ("--upload-timeout", self.upload_timeout.0),
        ];
        for (name, silence) in longest_silence {
            if busy <= silence {
                return Err(format!(
                    "--busy-timeout ({}) must be longer than {name} ({}): the master would drop the slave while it waits",
                    self.busy_timeout,
                    HumanDuration(silence)
                ));
            }
        }
        for (name, value) in [
            ("--build-timeout", self.build_timeout.0),
            ("--busy-interval", self.busy_interval.0),
            ("--master-timeout", self.master_timeout.0),
            ("--reconnect-interval", self.reconnect_interval.0),
            ("--upload-timeout", self.upload_timeout.0),
        ] {
            if value < Duration::from_millis(10) {
                return Err(format!("{name} must be at least 10ms"));
            }
        }
        let max_log = DEFAULT_MAX_MESSAGE as u64 - BUILT_ROOM;
        if self.log_limit.0 > max_log {
            return Err(format!("--log-limit ({}) must be at most {} (what fits in a message to the master)", self.log_limit, ByteSize(max_log)));
        }
        if self.python.trim().is_empty() {
            return Err("--python must name an interpreter".into());
        }
        for (name, endpoint) in [("--slave-queue", self.slave_endpoint()), ("--file-queue", self.file_endpoint())] {
            if !endpoint.starts_with("tcp://") && !endpoint.starts_with("ipc://") {
                return Err(format!("{name} must be tcp://HOST:PORT (or ipc://PATH), not {endpoint:?}"));
            }
        }
        Ok(())
    }
}

/// A host as it goes in a tcp:// address: IPv6 literals in brackets.
fn host_for_url(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') { format!("[{host}]") } else { host.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    fn parse(args: &[&str]) -> SlaveConfig {
        SlaveConfig::try_parse_from(std::iter::once("piw-slave").chain(args.iter().copied())).expect("parse")
    }

    /// Operators read defaults in `--help`: every option must show one.
    #[test]
    fn every_option_shows_its_default_in_help() {
        assert_eq!(piwheels_common::config::options_without_default(SlaveConfig::command()), Vec::<String>::new());
    }

    #[test]
    fn the_defaults_hold_together() {
        let config = parse(&[]);
        config.check().expect("defaults are consistent");
        assert_eq!(config.slave_endpoint(), "tcp://localhost:5555");
        assert_eq!(config.file_endpoint(), "tcp://localhost:5556");
        assert_eq!(config.build_timeout, HumanDuration(Duration::from_secs(3 * 3600)));
        assert_eq!(config.build_command.to_string(), DEFAULT_COMMAND.split_whitespace().collect::<Vec<_>>().join(" "));
    }

    #[test]
    fn endpoints_follow_the_master_unless_given() {
        let config = parse(&["--master", "fd00::1"]);
        assert_eq!(config.slave_endpoint(), "tcp://[fd00::1]:5555");
        assert_eq!(config.file_endpoint(), "tcp://[fd00::1]:5556");
        let config = parse(&["-m", "farm.example", "--file-queue", "tcp://files.example:7000"]);
        assert_eq!(config.slave_endpoint(), "tcp://farm.example:5555");
        assert_eq!(config.file_endpoint(), "tcp://files.example:7000");
    }

    #[test]
    fn inconsistent_options_are_refused_by_name() {
        let cases: &[(&[&str], &str)] = &[
            (&["--busy-timeout", "5m", "--upload-timeout", "10m"], "--upload-timeout"),
            (&["--busy-timeout", "10s", "--busy-interval", "10s"], "--busy-interval"),
            (&["--busy-timeout", "1m", "--sleep-interval", "50s", "--upload-timeout", "30s"], "--sleep-interval"),
            (&["--log-limit", "16MiB"], "--log-limit"),
            (&["--master-timeout", "0s"], "--master-timeout"),
            (&["--python", " "], "--python"),
            (&["--slave-queue", "localhost:5555"], "--slave-queue"),
        ];
        for (args, name) in cases {
            let error = parse(args).check().expect_err(&format!("{args:?}"));
            assert!(error.contains(name), "{args:?}: {error}");
        }
    }

    #[test]
    fn a_bad_build_command_is_refused() {
        let error = SlaveConfig::try_parse_from(["piw-slave", "--build-command", "pip wheel {pkg}"]).expect_err("bad template");
        assert!(error.to_string().contains("{pkg}"), "{error}");
    }

    #[test]
    fn a_host_runs_one_to_sixty_four_builders() {
        assert_eq!(parse(&["--builders", "64"]).builders, SlaveConfig::MOST_BUILDERS);
        for count in ["0", "65"] {
            let error = SlaveConfig::try_parse_from(["piw-slave", "--builders", count]).expect_err(count);
            assert!(error.to_string().contains("--builders"), "{error}");
        }
    }
}
