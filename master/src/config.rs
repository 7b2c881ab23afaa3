//! piw-master's options: the `[master]` table of the configuration file, `PIW_*` environment
//! variables and flags, in increasing precedence.

use std::path::PathBuf;

use piwheels_common::config::{ByteSize, ConfigArg, HumanDuration};
use piwheels_common::logging::LogArgs;

/// The piwheels master: follows PyPI, hands builds to slaves, receives their wheels and
/// writes the package index.
#[derive(clap::Parser, Debug, Clone)]
#[command(name = "piw-master", version)]
pub struct MasterConfig {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub config: ConfigArg,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub log: LogArgs,

    /// Root of the web site the master writes; the package index is its simple/ directory
    #[arg(long, env = "PIW_OUTPUT_PATH", value_name = "DIR", default_value = "/var/www/piwheels")]
    pub output_path: PathBuf,

    /// The master's own files: its pid file and partial transfers in staging/ (it must be on the
    /// same file system as --output-path, and outside it, so that finished files can be
    /// linked into place and unfinished ones are never served)
    #[arg(long, env = "PIW_STATE_DIR", value_name = "DIR", default_value = "/var/lib/piwheels")]
    pub state_dir: PathBuf,

    /// The database, as the master's (non-superuser) role: postgres://USER@HOST/DB, or
    /// postgres:///DB for the local server's socket
    #[arg(long, env = "PIW_DSN", value_name = "URL", default_value = "postgres:///piwheels")]
    pub dsn: String,

    /// Number of database workers (oracles), each with its own connection
    #[arg(long, env = "PIW_ORACLES", value_name = "N", default_value = "3", value_parser = clap::value_parser!(u16).range(1..=64))]
    pub oracles: u16,

    /// How long a task waits for the database to answer a request before giving up (queries
    /// are cancelled after the same time)
    #[arg(long, env = "PIW_DB_TIMEOUT", value_name = "DURATION", default_value = "30s")]
    pub db_timeout: HumanDuration,

    /// PyPI's XML-RPC endpoint, whose changelog the master follows [default: none: without
    /// it the master follows nothing, and says so at start-up]
    #[arg(long, env = "PIW_PYPI_XMLRPC", value_name = "URL")]
    pub pypi_xmlrpc: Option<String>,

    /// PyPI's JSON API root, for project summaries (URL/PROJECT/json) [default: none: no
    /// summaries]
    #[arg(long, env = "PIW_PYPI_JSON", value_name = "URL")]
    pub pypi_json: Option<String>,

    /// How often the master asks PyPI for new events
    #[arg(long, env = "PIW_PYPI_INTERVAL", value_name = "DURATION", default_value = "10s")]
    pub pypi_interval: HumanDuration,

    /// How often the build queue is recomputed even when nothing says it changed
    #[arg(long, env = "PIW_QUEUE_INTERVAL", value_name = "DURATION", default_value = "5m")]
    pub queue_interval: HumanDuration,

    /// How soon after a change (new releases, a finished build) the queue is recomputed;
    /// changes within this time are folded into one computation
    #[arg(long, env = "PIW_QUEUE_DEBOUNCE", value_name = "DURATION", default_value = "2s")]
    pub queue_debounce: HumanDuration,

    /// Releases per ABI handed to the slave driver in each queue
    #[arg(long, env = "PIW_QUEUE_LIMIT", value_name = "N", default_value = "1000")]
    pub queue_limit: u32,

    /// Where monitors and operators' tools send commands: ipc://PATH (the directory must be
    /// private to the master's user; it is created with mode 700 if missing) or tcp://HOST:PORT
    #[arg(long, env = "PIW_CONTROL_QUEUE", value_name = "ADDR", default_value = "ipc:///run/piwheels/control")]
    pub control_queue: String,

    /// Where the master publishes its state to monitors: ipc://PATH or tcp://HOST:PORT
    #[arg(long, env = "PIW_STATUS_QUEUE", value_name = "ADDR", default_value = "ipc:///run/piwheels/status")]
    pub status_queue: String,

    /// Where the administrators' tools (piw-import, piw-add, piw-remove, piw-rebuild) connect:
    /// ipc://PATH (private directory, as for --control-queue) or tcp://HOST:PORT
    #[arg(long, env = "PIW_IMPORT_QUEUE", value_name = "ADDR", default_value = "ipc:///run/piwheels/import")]
    pub import_queue: String,

    /// Where piw-logger sends the web server's access records: ipc://PATH or tcp://HOST:PORT
    #[arg(long, env = "PIW_LOGGER_QUEUE", value_name = "ADDR", default_value = "ipc:///run/piwheels/logger")]
    pub logger_queue: String,

    /// Where slaves connect: tcp://HOST:PORT (tcp://*:PORT listens on every address)
    #[arg(long, env = "PIW_SLAVE_QUEUE", value_name = "ADDR", default_value = "tcp://*:5555")]
    pub slave_queue: String,

    /// Longest build timeout a slave may announce; a slave announcing more is refused. A
    /// release handed to a slave is held for it that long
    #[arg(long, env = "PIW_MAX_BUILD_TIMEOUT", value_name = "DURATION", default_value = "12h")]
    pub max_build_timeout: HumanDuration,

    /// Longest busy timeout a slave may announce; a slave announcing more is refused. A silent
    /// slave holds its build that long before it is dropped
    #[arg(long, env = "PIW_MAX_BUSY_TIMEOUT", value_name = "DURATION", default_value = "1h")]
    pub max_busy_timeout: HumanDuration,

    /// Back-off before a release that failed twice for the infrastructure's reasons (a builder
    /// crash, a full disk, the database) is handed out again; it doubles with each further such
    /// failure, up to an hour. The first retry is at once. From 100ms to 1h
    #[arg(long, env = "PIW_RETRY_BACKOFF", value_name = "DURATION", default_value = "30s", value_parser = retry_backoff)]
    pub retry_backoff: HumanDuration,

    /// Share of successful builds that another builder of the ABI builds again from the same
    /// source, to compare the wheels (a reproducibility cross-check; see docs/provenance.md).
    /// From 0 (none) to 1 (every build); piw-rebuild cross-check asks for one on demand
    #[arg(long, env = "PIW_CROSS_CHECK_SHARE", value_name = "SHARE", default_value = "0.05", value_parser = cross_check_share)]
    pub cross_check_share: f64,

    /// Hand no new work to a builder whose environment (Python, pip, setuptools, wheel,
    /// compiler, linker, OS, Debian packages) differs from most of its ABI's builders' until it
    /// agrees again or leaves. Without it, the difference is only announced (see
    /// docs/slave.md)
    #[arg(long, env = "PIW_HOLD_DRIFTED")]
    pub hold_drifted: bool,

    /// A Debian Contents index (Contents-ARCH.gz from the builders' Debian or Raspberry Pi OS
    /// mirror, or apt-file's *_Contents-ARCH.lz4 under /var/lib/apt/lists), in which the
    /// failure triage looks up the package that ships a missing header, library or tool.
    /// Repeat it for several files (the builders' architecture and "all", say); a file that changes is read again
    /// for what it did not have. Without it, failures are classified but no package is named
    /// (see docs/operations.md, "Why builds fail") [default: none]
    #[arg(long = "debian-contents", env = "PIW_DEBIAN_CONTENTS", value_name = "FILE", value_delimiter = ',')]
    pub debian_contents: Vec<PathBuf>,

    /// Most slaves connected at once; more are refused until some leave
    #[arg(long, env = "PIW_MAX_SLAVES", value_name = "N", default_value = "1000", value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub max_slaves: u16,

    /// Most slaves connected at once with one key
    #[arg(long, env = "PIW_MAX_SLAVES_PER_KEY", value_name = "N", default_value = "32", value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub max_slaves_per_key: u16,

    /// Most slaves connected at once from one network address
    #[arg(long, env = "PIW_MAX_SLAVES_PER_ADDRESS", value_name = "N", default_value = "32", value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub max_slaves_per_address: u16,

    /// The simple index of PyPI or of a mirror, read in its JSON form (PEP 691): each
    /// release's source is pinned to the SHA-256 it publishes, and slaves fetch build
    /// dependencies from it [default: none: no source is pinned, so nothing new is built]
    #[arg(long, env = "PIW_PYPI_SIMPLE", value_name = "URL")]
    pub pypi_simple: Option<String>,

    /// Where slaves and piw-import send files: tcp://HOST:PORT (tcp://*:PORT listens on every
    /// address; a port of * picks a free one)
    #[arg(long, env = "PIW_FILE_QUEUE", value_name = "ADDR", default_value = "tcp://*:5556")]
    pub file_queue: String,

    /// Size of the pieces a file is fetched in
    #[arg(long, env = "PIW_CHUNK_SIZE", value_name = "SIZE", default_value = "256KiB")]
    pub chunk_size: ByteSize,

    /// Pieces of one file in flight at once (more hides network latency, costs memory)
    #[arg(long, env = "PIW_TRANSFER_WINDOW", value_name = "N", default_value = "8", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub transfer_window: u16,

    /// Largest wheel accepted
    #[arg(long, env = "PIW_MAX_FILE_SIZE", value_name = "SIZE", default_value = "2GiB")]
    pub max_file_size: ByteSize,

    /// A transfer nobody has touched for this long is removed, with its partial file
    #[arg(long, env = "PIW_ABANDON_AFTER", value_name = "DURATION", default_value = "1h")]
    pub abandon_after: HumanDuration,

    /// How long a page rewrite waits for more changes to the same package to fold in; its
    /// pages are on disk this long after the change, plus the writing time
    #[arg(long, env = "PIW_REWRITE_WINDOW", value_name = "DURATION", default_value = "1s")]
    pub rewrite_window: HumanDuration,

    /// Serve --output-path over HTTP on this address (e.g. 127.0.0.1:8080 or [::]:80) with the
    /// built-in server, which speaks the package index's content negotiation [default: none:
    /// serve the tree with a web server of your own, see docs/web-server.md]
    #[arg(long, env = "PIW_HTTP_LISTEN", value_name = "ADDR")]
    pub http_listen: Option<std::net::SocketAddr>,

    /// Answer Prometheus' scrapes of the farm's figures at http://ADDR/metrics (e.g.
    /// 127.0.0.1:9300; see docs/operations.md) [default: none: no figures are kept]
    #[arg(long, env = "PIW_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,

    /// The site's public address, e.g. https://wheels.example.org: the home page's pip and uv
    /// settings name its index [default: none: they show https://THIS-SITE as a placeholder]
    #[arg(long, env = "PIW_SITE_URL", value_name = "URL", value_parser = site_url)]
    pub site_url: Option<String>,

    /// Where the upstream index shows a project, with {project} for its canonical name (e.g.
    /// https://pypi.example/project/{project}/), linked from every project page [default:
    /// none: no link]
    #[arg(long, env = "PIW_UPSTREAM_PROJECT_URL", value_name = "PATTERN", value_parser = upstream_project_url)]
    pub upstream_project_url: Option<String>,

    /// How often the master samples its host's figures (memory, load, disk) for monitors
    #[arg(long, env = "PIW_STATS_INTERVAL", value_name = "DURATION", default_value = "10s")]
    pub stats_interval: HumanDuration,

    /// Run the tcp sockets without authentication: anyone who reaches them can build, upload
    /// and command. Logged as a warning at every start, and refused on addresses other hosts
    /// can reach unless --allow-no-auth-on-network. Without it, the master authenticates
    /// every tcp client by its key (see docs/security.md)
    #[arg(long, env = "PIW_NO_AUTH")]
    pub no_auth: bool,

    /// With --no-auth, listen without authentication on addresses other hosts can reach (`*`,
    /// a network interface): only for a network nobody else can reach
    #[arg(long, env = "PIW_ALLOW_NO_AUTH_ON_NETWORK", requires = "no_auth")]
    pub allow_no_auth_on_network: bool,

    /// How long each task may take to stop when the master shuts down
    #[arg(long, env = "PIW_STOP_TIMEOUT", value_name = "DURATION", default_value = "10s")]
    pub stop_timeout: HumanDuration,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Operators read defaults in `--help`: every option must show one.
    #[test]
    fn every_option_shows_its_default_in_help() {
        assert_eq!(piwheels_common::config::options_without_default(MasterConfig::command()), Vec::<String>::new());
    }

    #[test]
    fn a_retry_backoff_is_between_a_tenth_of_a_second_and_an_hour() {
        assert_eq!(retry_backoff("500ms").map(|b| b.0), Ok(std::time::Duration::from_millis(500)));
        assert_eq!(retry_backoff("0s").unwrap_err(), "0s is not between 100ms and 1h");
        assert_eq!(retry_backoff("2h").unwrap_err(), "2h is not between 100ms and 1h");
        assert!(retry_backoff("soon").is_err());
    }

    #[test]
    fn site_addresses_are_checked() {
        assert_eq!(site_url("https://wheels.example.org/").as_deref(), Ok("https://wheels.example.org"));
        assert_eq!(site_url("http://127.0.0.1:8080/pi").as_deref(), Ok("http://127.0.0.1:8080/pi"));
        assert!(site_url("wheels.example.org").is_err());
        assert!(site_url("ftp://example.org").is_err());
        assert!(site_url("https://example.org/?a=1").is_err());
        assert_eq!(upstream_project_url("https://pypi.example/project/{project}/").as_deref(), Ok("https://pypi.example/project/{project}/"));
        assert!(upstream_project_url("https://pypi.example/project/").unwrap_err().contains("{project}"));
        assert!(upstream_project_url("{project}").is_err());
    }

    #[test]
    fn a_cross_check_share_is_from_nothing_to_everything() {
        assert_eq!(cross_check_share("0"), Ok(0.0));
        assert_eq!(cross_check_share("0.05"), Ok(0.05));
        assert_eq!(cross_check_share("1"), Ok(1.0));
        assert_eq!(cross_check_share("5%").unwrap_err(), "5% is not a number from 0 to 1 (0.05 is 5% of builds)");
        assert!(cross_check_share("1.5").is_err());
        assert!(cross_check_share("NaN").is_err());
    }
}

/// A `--site-url`: an http or https address without a query, kept without its trailing slash.
fn site_url(text: &str) -> Result<String, String> {
    let url = url::Url::parse(text).map_err(|e| format!("{text} is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.query().is_some() || url.fragment().is_some() {
        return Err(format!("{text} is not an http or https address without a query"));
    }
    Ok(url.as_str().trim_end_matches('/').to_string())
}

/// An `--upstream-project-url`: an http or https address once `{project}` is filled in.
fn upstream_project_url(text: &str) -> Result<String, String> {
    if !text.contains("{project}") {
        return Err(format!("{text} has no {{project}} where the project's name goes"));
    }
    let example = text.replace("{project}", "example");
    match url::Url::parse(&example) {
        Ok(url) if matches!(url.scheme(), "http" | "https") => Ok(text.to_string()),
        _ => Err(format!("{text} is not an http or https address once {{project}} is filled in")),
    }
}

/// A `--cross-check-share`: a number from 0 to 1.
fn cross_check_share(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(share) if (0.0..=1.0).contains(&share) => Ok(share),
        _ => Err(format!("{text} is not a number from 0 to 1 (0.05 is 5% of builds)")),
    }
}

/// A `--retry-backoff`: long enough not to retry in a busy loop, short enough to be the first
/// of a doubling that stops at an hour.
fn retry_backoff(text: &str) -> Result<HumanDuration, String> {
    let backoff: HumanDuration = text.parse().map_err(|e| format!("{e}"))?;
    if backoff.0 < std::time::Duration::from_millis(100) || backoff.0 > std::time::Duration::from_secs(3600) {
        return Err(format!("{text} is not between 100ms and 1h"));
    }
    Ok(backoff)
}

/// piw-check: the consistency check of a farm's served tree against its database (see
/// docs/operations.md). It reads the master's configuration (the same file section and options
/// as piw-master) and may run while the master does. Exits 0 when everything is consistent,
/// 1 when something was found (repaired or not), 2 when the check could not run.
#[derive(clap::Parser, Debug, Clone)]
#[command(name = "piw-check", version)]
pub struct CheckConfig {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub master: MasterConfig,

    /// Repair what is safe to: remove wheels no build records and stale staging entries, write
    /// lost build logs again from the database, and have pages that link missing files written
    /// again; records without their file are only reported
    #[arg(long)]
    pub repair: bool,

    /// With --repair: repair only what has not changed for this long, so that a wheel
    /// published a moment ago, whose build the running master records next, is left alone
    #[arg(long, value_name = "DURATION", default_value = "6h", requires = "repair")]
    pub min_age: HumanDuration,

    /// With --repair: remove files even when more than a tenth of the tree would go (which
    /// usually means the wrong --dsn or --output-path)
    #[arg(long, requires = "repair")]
    pub force: bool,
}

