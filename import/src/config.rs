//! The tools' options. All four read the `[import]` table of the configuration file, which
//! holds the options they share ([`ConnectArgs`]: where the master is and how long to wait for
//! it), then `PIW_*` environment variables, then flags.

use std::path::PathBuf;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use piwheels_common::config::{ConfigArg, HumanDuration};
use piwheels_common::keys::ClientAuthArgs;
use piwheels_common::logging::LogArgs;
use piwheels_common::protocols::{FailureClass, Timestamp};

/// Where the master (and the index) is and how long to wait for it; every tool has these, so
/// that one `[import]` table serves all four.
#[derive(clap::Args, Debug, Clone)]
pub struct ConnectArgs {
    /// The master's admin socket (piw-master's --import-queue): ipc://PATH on the master's
    /// host, or tcp://HOST:PORT
    #[arg(long, env = "PIW_IMPORT_QUEUE", value_name = "ADDR", default_value = "ipc:///run/piwheels/import")]
    pub import_queue: String,

    /// The master's file socket as this host reaches it (piw-master's --file-queue, with a
    /// host name instead of *), where piw-import uploads wheels; the other tools accept it so
    /// that one [import] table serves all four
    #[arg(long, env = "PIW_IMPORT_FILE_QUEUE", value_name = "ADDR", default_value = "tcp://localhost:5556")]
    pub file_queue: String,

    /// How long to wait for the master's first answer before deciding that it is not running
    #[arg(long, env = "PIW_IMPORT_CONNECT_TIMEOUT", value_name = "DURATION", default_value = "5s")]
    pub connect_timeout: HumanDuration,

    /// How long to wait for each later answer (removing a package or verifying a large wheel
    /// takes a while)
    #[arg(long, env = "PIW_IMPORT_TIMEOUT", value_name = "DURATION", default_value = "5m")]
    pub timeout: HumanDuration,

    /// PyPI's JSON API root (URL/PROJECT/json, piw-master's --pypi-json), where piw-add
    /// --with-deps reads releases and their requirements; the other tools accept it so that
    /// one [import] table serves all four [default: none]
    #[arg(long, env = "PIW_PYPI_JSON", value_name = "URL")]
    pub pypi_json: Option<String>,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub auth: ClientAuthArgs,
}

/// piw-import: imports wheels built elsewhere into the farm's index, as one build of one
/// release.
#[derive(clap::Parser, Debug, Clone)]
#[command(name = "piw-import", version)]
pub struct ImportConfig {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub config: ConfigArg,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub log: LogArgs,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub connect: ConnectArgs,

    /// The wheels: one or more files of the same release, recorded as one build
    #[arg(required = true, value_name = "WHEEL")]
    pub files: Vec<PathBuf>,

    /// The project the wheels belong to [default: the Name in the first wheel's METADATA]
    #[arg(long, value_name = "NAME")]
    pub package: Option<String>,

    /// The version the wheels belong to [default: the Version in the first wheel's METADATA]
    #[arg(long, value_name = "VERSION")]
    pub package_version: Option<String>,

    /// The ABI the wheels were built for, one the farm builds (e.g. cp311) [default: the first
    /// wheel's ABI tag, unless it is none or abi3]
    #[arg(long, value_name = "ABI")]
    pub abi: Option<String>,

    /// Build time to record
    #[arg(long, value_name = "DURATION", default_value = "0s")]
    pub duration: HumanDuration,

    /// A file holding the build log to record [default: a line saying the build was imported]
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// A file listing the Debian packages the wheels need at run time, separated by white
    /// space [default: none]
    #[arg(long, value_name = "FILE")]
    pub dependencies: Option<PathBuf>,

    /// Add the package and the version to the database first if the master does not know them
    /// (as piw-add would)
    #[arg(long)]
    pub register: bool,

    /// Delete the wheel files once they are imported
    #[arg(short, long)]
    pub delete: bool,
}

/// piw-add: adds a package, or a version of one, to the farm's database, or updates it.
#[derive(clap::Parser, Debug, Clone)]
#[command(name = "piw-add", version)]
pub struct AddConfig {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub config: ConfigArg,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub log: LogArgs,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub connect: ConnectArgs,

    /// The project's name, spelled as it should be displayed
    #[arg(value_name = "PACKAGE")]
    pub package: String,

    /// A version to add or update [default: none: the package itself]
    #[arg(id = "release", value_name = "VERSION")]
    pub version: Option<String>,

    /// The project's one-line summary [default: unchanged; empty for a new package]
    #[arg(short, long, value_name = "TEXT")]
    pub description: Option<String>,

    /// Add the package or version skipped (never built), for this reason [default: built]
    #[arg(short, long, value_name = "REASON")]
    pub skip: Option<String>,

    /// Build the package or version again: clear its skip reason
    #[arg(long, conflicts_with = "skip")]
    pub unskip: bool,

    /// Another spelling of the project's name (repeat for more) [default: none]
    #[arg(short, long = "alias", value_name = "NAME")]
    pub aliases: Vec<String>,

    /// When the version was released, in UTC: 2024-01-31, "2024-01-31 12:00:00" or RFC 3339
    /// (the source's upload time replaces it when the source is pinned from an index that gives
    /// one)
    /// [default: now]
    #[arg(short, long, value_name = "TIME", requires = "release", value_parser = parse_released)]
    pub released: Option<Timestamp>,

    /// Add the version yanked (installers skip it unless it is pinned)
    #[arg(long, requires = "release")]
    pub yank: bool,

    /// Unyank the version
    #[arg(long, requires = "release", conflicts_with = "yank")]
    pub unyank: bool,

    /// Also add the releases the version's dependencies resolve to on the farm's ABIs, and
    /// theirs in turn, as the index (--pypi-json) knows them; the other options apply to the
    /// version named only
    #[arg(long, requires = "release")]
    pub with_deps: bool,

    /// With --with-deps: most releases to add, the one named included; a resolution that needs
    /// more stops before anything is added
    #[arg(long, value_name = "COUNT", default_value = "200", requires = "with_deps", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_releases: u32,

    /// With --with-deps: most levels of dependencies to follow below the version named; a
    /// deeper chain stops the resolution before anything is added
    #[arg(long, value_name = "LEVELS", default_value = "20", requires = "with_deps", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_depth: u32,
}

/// piw-remove: removes a package or a version from the farm with its builds and files, or only
/// its builds and files, or skips or yanks it.
#[derive(clap::Parser, Debug, Clone)]
#[command(name = "piw-remove", version)]
pub struct RemoveConfig {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub config: ConfigArg,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub log: LogArgs,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub connect: ConnectArgs,

    /// The project
    #[arg(value_name = "PACKAGE")]
    pub package: String,

    /// The version to remove [default: none: the whole package]
    #[arg(id = "release", value_name = "VERSION")]
    pub version: Option<String>,

    /// Remove only the builds and their files: the package or version stays, and is built
    /// again unless --skip is given too
    #[arg(short, long)]
    pub builds: bool,

    /// Keep the package or version but remove its builds and files, and never build it again,
    /// for this reason [default: none]
    #[arg(short, long, value_name = "REASON")]
    pub skip: Option<String>,

    /// Yank the version instead of removing anything: its files stay, and installers skip it
    /// unless it is pinned
    #[arg(long, requires = "release", conflicts_with_all = ["builds", "skip"])]
    pub yank: bool,

    /// With --yank: why, which installers show to whoever pins the version (PEP 592) [default:
    /// none]
    #[arg(long, value_name = "REASON", requires = "yank")]
    pub yank_reason: Option<String>,

    /// Do not ask for confirmation
    #[arg(short, long)]
    pub yes: bool,
}

/// What piw-rebuild rewrites or builds again.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The home page, with fresh figures.
    Home,
    /// The search index.
    Search,
    /// Project pages (HTML and JSON).
    Project,
    /// Project pages and the simple index pages pip reads.
    #[value(alias = "both")]
    Index,
    /// A new build of one release (PACKAGE VERSION), its published files kept: a wheel with
    /// other bytes is published with the next build tag, which installers prefer.
    Build,
    /// A reproducibility cross-check of one release (PACKAGE VERSION): another builder of the
    /// ABI builds it again from the same source, and the wheels are compared, not published.
    #[value(name = "cross-check")]
    CrossCheck,
}

/// piw-rebuild: asks the master to rewrite pages of the index, or to build a release again.
#[derive(clap::Parser, Debug, Clone)]
#[command(
    name = "piw-rebuild",
    version,
    after_help = "Examples:\n  piw-rebuild home\n  piw-rebuild index numpy\n  piw-rebuild --yes index\n  piw-rebuild build numpy 1.26.4 --abi cp311\n  piw-rebuild cross-check numpy 1.26.4"
)]
pub struct RebuildConfig {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub config: ConfigArg,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub log: LogArgs,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub connect: ConnectArgs,

    /// What to rewrite: home (the home page), search (the search index), project (project
    /// pages) or index (project pages and the simple index pages); or build (a new build of
    /// one release, its published files kept), or cross-check (one release built again by
    /// another builder and compared)
    #[arg(value_enum, value_name = "PART")]
    pub part: Part,

    /// The project whose pages to rewrite, for project and index [default: every project,
    /// after confirmation]; the project to build, for build and cross-check
    #[arg(value_name = "PACKAGE")]
    pub package: Option<String>,

    /// The version to build, for build and cross-check, where it is required [default: none]
    #[arg(value_name = "VERSION")]
    pub package_version: Option<String>,

    /// The ABI to build on, for build and cross-check [default: every ABI the release was
    /// built on]
    #[arg(long, value_name = "ABI")]
    pub abi: Option<String>,

    /// For project and index: return once the rewrites are queued, without waiting for the
    /// pages to be written (they are written all the same)
    #[arg(long)]
    pub no_wait: bool,

    /// For project and index: stop waiting, with exit status 1, when no page has been written
    /// for this long (a page the master cannot write is tried again until it is written)
    #[arg(long, value_name = "DURATION", default_value = "5m")]
    pub give_up_after: HumanDuration,

    /// Do not ask for confirmation
    #[arg(short, long)]
    pub yes: bool,
}

/// What piw-triage does.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum TriageCommand {
    /// Rank the causes of the farm's failed releases: by class, by the Debian package that
    /// would cure them, and by cause
    Report {
        /// Only failures on this ABI [default: every ABI]
        #[arg(long, value_name = "ABI")]
        abi: Option<String>,
    },
    /// Build again every release whose latest build failed for one cause (after
    /// confirmation, which shows how many)
    Requeue {
        /// The failure class: missing-header, missing-library, missing-tool,
        /// unsupported-python, source-unavailable, network, timeout, memory, killed or other
        /// [default: any class, with --debian-package]
        #[arg(value_name = "CLASS", value_parser = failure_class)]
        class: Option<FailureClass>,
        /// Only failures of this detail: the header, library file or tool the report names
        /// [default: any]
        #[arg(long, value_name = "DETAIL")]
        detail: Option<String>,
        /// Only failures this Debian package cures (install it on the builders first)
        /// [default: any]
        #[arg(long, value_name = "PACKAGE")]
        debian_package: Option<String>,
        /// Only failures on this ABI [default: every ABI]
        #[arg(long, value_name = "ABI")]
        abi: Option<String>,
        /// Say what would be queued, and queue nothing
        #[arg(long)]
        dry_run: bool,
        /// Do not ask for confirmation
        #[arg(short, long)]
        yes: bool,
    },
}

/// Reads a failure class by its name.
fn failure_class(name: &str) -> Result<FailureClass, String> {
    FailureClass::from_name(name).ok_or_else(|| {
        let names: Vec<&str> = FailureClass::ALL.iter().map(|c| c.name()).collect();
        format!("no failure class {name:?}: the classes are {}", names.join(", "))
    })
}

/// piw-triage: why the farm's builds fail, and building again those a fix cures.
#[derive(clap::Parser, Debug, Clone)]
#[command(
    name = "piw-triage",
    version,
    after_help = "Examples:\n  piw-triage report\n  piw-triage report --abi cp311\n  piw-triage requeue --debian-package libxml2-dev\n  piw-triage requeue missing-tool --detail rustc --dry-run\n  piw-triage requeue network --yes"
)]
pub struct TriageConfig {
    #[command(flatten)]
    #[allow(missing_docs)]
    pub config: ConfigArg,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub log: LogArgs,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub connect: ConnectArgs,

    #[command(subcommand)]
    #[allow(missing_docs)]
    pub command: TriageCommand,
}

/// Reads a release time in UTC: `2024-01-31`, `2024-01-31 12:00:00`, `2024-01-31T12:00:00`
/// or RFC 3339 with an offset.
pub fn parse_released(text: &str) -> Result<Timestamp, String> {
    let text = text.trim();
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Ok(at.with_timezone(&Utc));
    }
    for format in ["%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S"] {
        if let Ok(at) = NaiveDateTime::parse_from_str(text, format) {
            return Ok(at.and_utc());
        }
    }
    if let Ok(day) = NaiveDate::parse_from_str(text, "%Y-%m-%d")
        && let Some(at) = day.and_hms_opt(0, 0, 0)
    {
        return Ok(at.and_utc());
    }
    Err(format!("{text:?} is not a time: write 2024-01-31, \"2024-01-31 12:00:00\" or 2024-01-31T12:00:00+01:00"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Operators read defaults in `--help`: every option must show one.
    fn every_option_shows_its_default(cmd: clap::Command) {
        assert_eq!(piwheels_common::config::options_without_default(cmd), Vec::<String>::new());
    }

    #[test]
    fn every_tool_shows_its_defaults_in_help() {
        every_option_shows_its_default(ImportConfig::command());
        every_option_shows_its_default(AddConfig::command());
        every_option_shows_its_default(RemoveConfig::command());
        every_option_shows_its_default(RebuildConfig::command());
        every_option_shows_its_default(TriageConfig::command());
    }

    #[test]
    fn one_import_table_configures_every_tool() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("piwheels.toml");
        std::fs::write(
            &file,
            "[import]\nimport-queue = \"ipc:///srv/import\"\nfile-queue = \"tcp://master:5556\"\ntimeout = \"1m\"\npypi-json = \"http://index.invalid/pypi\"\n",
        )
        .unwrap();
        let config = file.to_str().unwrap();
        let parse = |args: &[&str]| -> ConnectArgs {
            let name = args[0];
            let all: Vec<&str> = args.iter().copied().chain(["-c", config]).collect();
            match name {
                "piw-import" => piwheels_common::config::parse_from::<ImportConfig, _, _>("import", all, None).unwrap().connect,
                "piw-add" => piwheels_common::config::parse_from::<AddConfig, _, _>("import", all, None).unwrap().connect,
                "piw-remove" => piwheels_common::config::parse_from::<RemoveConfig, _, _>("import", all, None).unwrap().connect,
                _ => piwheels_common::config::parse_from::<RebuildConfig, _, _>("import", all, None).unwrap().connect,
            }
        };
        for args in [&["piw-import", "x.whl"][..], &["piw-add", "foo"], &["piw-remove", "foo"], &["piw-rebuild", "home"]] {
            let connect = parse(args);
            assert_eq!(connect.import_queue, "ipc:///srv/import", "{args:?}");
            assert_eq!(connect.file_queue, "tcp://master:5556", "{args:?}");
            assert_eq!(connect.timeout.0, std::time::Duration::from_secs(60), "{args:?}");
            assert_eq!(connect.connect_timeout.0, std::time::Duration::from_secs(5), "{args:?}");
            assert_eq!(connect.pypi_json.as_deref(), Some("http://index.invalid/pypi"), "{args:?}");
        }
    }

    #[test]
    fn release_times_are_read_as_utc() {
        let want: Timestamp = "2024-01-31T12:00:00Z".parse().unwrap();
        assert_eq!(parse_released("2024-01-31 12:00:00"), Ok(want));
        assert_eq!(parse_released("2024-01-31T12:00:00"), Ok(want));
        assert_eq!(parse_released("2024-01-31T13:00:00+01:00"), Ok(want));
        assert_eq!(parse_released("2024-01-31"), Ok("2024-01-31T00:00:00Z".parse().unwrap()));
        assert!(parse_released("yesterday").is_err());
    }

    #[test]
    fn contradictory_flags_are_usage_errors() {
        use clap::Parser;
        assert!(AddConfig::try_parse_from(["piw-add", "foo", "--yank"]).is_err(), "yank needs a version");
        assert!(AddConfig::try_parse_from(["piw-add", "foo", "1.0", "--yank", "--unyank"]).is_err());
        assert!(AddConfig::try_parse_from(["piw-add", "foo", "--skip", "x", "--unskip"]).is_err());
        assert!(AddConfig::try_parse_from(["piw-add", "foo", "--with-deps"]).is_err(), "with-deps needs a version");
        assert!(AddConfig::try_parse_from(["piw-add", "foo", "1.0", "--with-deps", "--max-releases", "0"]).is_err());
        assert!(RemoveConfig::try_parse_from(["piw-remove", "foo", "--yank"]).is_err(), "yank needs a version");
        assert!(RemoveConfig::try_parse_from(["piw-remove", "foo", "1.0", "--yank", "--builds"]).is_err());
        assert!(RebuildConfig::try_parse_from(["piw-rebuild", "everything"]).is_err());
        assert_eq!(RebuildConfig::try_parse_from(["piw-rebuild", "both"]).unwrap().part, Part::Index);
    }
}
