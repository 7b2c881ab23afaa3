//! Configuration loading shared by every piwheels program.
//!
//! Each program declares its options as a [`clap::Parser`] struct whose long flag names are
//! spelled in kebab-case (`--output-path`), flattens [`ConfigArg`] into it for `-c/--config`,
//! and calls [`parse`] with the name of its section. Option values come from, in increasing
//! order of precedence:
//!
//! 1. the built-in default of the option (shown by `--help`);
//! 2. the program's table (`[master]`, `[slave]`, ...) of the TOML configuration file, named by
//!    `-c/--config FILE`, else by the `PIW_CONFIG` environment variable, else
//!    `/etc/piwheels.toml` if that file exists;
//! 3. the option's `PIW_*` environment variable, if it declares one (`#[arg(env = "...")]`);
//! 4. the command-line flag.
//!
//! A key of the file is the long name of the flag it sets, e.g.
//!
//! ```toml
//! [master]
//! output-path = "/srv/www"
//! debug = ["master.cloud_gazer", "master.the_oracle"]
//! dev-mode = true
//! ```
//!
//! Values from the file replace the options' defaults (so `--help` shows them as defaults),
//! which is why clap then applies environment variables and flags over them. Every file value is
//! checked by the option's own value parser as soon as the file is read, and any mistake in the
//! file (unknown section or key, bad value) is an error that names the key and the file.
//!
//! The module also provides the value types [`HumanDuration`] (`90s`, `1h30m`, `02:30:00`) and
//! [`ByteSize`] (`64KiB`, `2GiB`, `500MB`) for options.

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, Command};

/// The sections (tables) a configuration file may contain: one per program.
pub const SECTIONS: &[&str] = &["master", "slave", "monitor", "import", "initdb", "logger", "keys"];

/// The configuration file read when neither `-c/--config` nor `PIW_CONFIG` names one. Unlike
/// a file named explicitly, it may be missing.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/piwheels.toml";

/// The environment variable naming the configuration file.
pub const CONFIG_ENV: &str = "PIW_CONFIG";

/// The long name of the configuration-file option, which the file itself cannot set.
const CONFIG_LONG: &str = "config";

/// The `-c/--config FILE` option; every program flattens it into its arguments with
/// `#[command(flatten)]`.
#[derive(clap::Args, Debug, Clone)]
pub struct ConfigArg {
    /// Configuration file (TOML), whose table for this program sets the options' defaults
    ///
    /// The file has one table per program (master, slave, monitor, import, initdb, logger, keys);
    /// its keys are the long option names (output-path = "/srv/www"), and environment
    /// variables and flags override them. Unless a file is named here or by PIW_CONFIG,
    /// /etc/piwheels.toml is read if it exists.
    #[arg(
        short = 'c',
        long = "config",
        env = "PIW_CONFIG",
        value_name = "FILE",
        default_value = DEFAULT_CONFIG_PATH
    )]
    pub config: PathBuf,
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("cannot read configuration file {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// The configuration file is not valid TOML, or does not have the expected shape.
    #[error("invalid configuration file {}: {message}", path.display())]
    Toml {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The configuration file has a top-level key or table that is not one of [`SECTIONS`].
    #[error(
        "unknown section [{section}] in {} (valid sections: {})",
        path.display(),
        SECTIONS.join(", ")
    )]
    UnknownSection {
        /// The file.
        path: PathBuf,
        /// The unknown section.
        section: String,
    },
    /// The program's section has a key that is not the long name of one of its options.
    #[error(
        "unknown key \"{key}\" in [{section}] of {} (valid keys: {})",
        path.display(),
        valid.join(", ")
    )]
    UnknownKey {
        /// The file.
        path: PathBuf,
        /// The section.
        section: String,
        /// The unknown key.
        key: String,
        /// The keys the section may contain.
        valid: Vec<String>,
    },
    /// A value in the program's section is not acceptable for its option.
    #[error("bad value for \"{key}\" in [{section}] of {}: {message}", path.display())]
    BadValue {
        /// The file.
        path: PathBuf,
        /// The section.
        section: String,
        /// The key.
        key: String,
        /// What is wrong with the value.
        message: String,
    },
    /// The command line (or an environment variable) was rejected by clap, or it asked for
    /// `--help` or `--version`.
    #[error(transparent)]
    Clap(#[from] clap::Error),
}

/// Parses the program's options from its configuration file section, the environment and its
/// command line (see the [module documentation](self)).
///
/// # Errors
///
/// A [`ConfigError`] if the configuration file cannot be read or is wrong; an empty
/// `PIW_CONFIG` counts as unset.
///
/// `section` is the program's table in the file (one of [`SECTIONS`]). Command-line errors,
/// `--help` and `--version` print their message and exit the process as clap usually does;
/// configuration-file errors are returned.
pub fn parse<T: clap::Parser>(section: &str) -> Result<T, ConfigError> {
    let env_config = std::env::var_os(CONFIG_ENV)
        .filter(|value| !value.is_empty())
        .map(PathBuf::from);
    match parse_from(section, std::env::args_os(), env_config) {
        Err(ConfigError::Clap(error)) => error.exit(),
        other => other,
    }
}

/// Like [`parse`], with the command line (`args`, including the program name) and the value
/// of `PIW_CONFIG` (`env_config`) given, and clap's errors returned as [`ConfigError::Clap`]
/// instead of exiting.
///
/// # Errors
///
/// A [`ConfigError`] if the configuration file cannot be read or is wrong, or if clap rejects
/// the command line (including `--help` and `--version`, as [`clap::error::ErrorKind`]s
/// `DisplayHelp` and `DisplayVersion`).
pub fn parse_from<T, I, S>(
    section: &str,
    args: I,
    env_config: Option<PathBuf>,
) -> Result<T, ConfigError>
where
    T: clap::Parser,
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    parse_with_default(section, args, env_config, Path::new(DEFAULT_CONFIG_PATH))
}

/// [`parse_from`] with the default configuration file given, for tests.
fn parse_with_default<T, I, S>(
    section: &str,
    args: I,
    env_config: Option<PathBuf>,
    default_config: &Path,
) -> Result<T, ConfigError>
where
    T: clap::Parser,
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    debug_assert!(SECTIONS.contains(&section), "unknown section {section}");
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let mut cmd = T::command();
    // A built copy to inspect: building settles each argument's action, number of values and
    // value parser.
    let mut built = cmd.clone();
    built.build();

    // An empty PIW_CONFIG counts as unset ([`parse`] ignores it), so clap must not read it.
    if let Some(config) = find_long(&built, CONFIG_LONG)
        && let Some(name) = config.get_env()
        && std::env::var_os(name).is_some_and(|value| value.is_empty())
    {
        cmd = cmd.mut_arg(config.get_id().clone(), |arg| arg.env(None::<&str>));
    }

    let explicit = config_from_args(&built, &args);
    let from_args = explicit.is_some();
    let file = match explicit.or(env_config) {
        Some(path) => match std::fs::read_to_string(&path) {
            Ok(text) => Some((path, text)),
            Err(source) => return Err(ConfigError::Io { path, source }),
        },
        None => match std::fs::read_to_string(default_config) {
            Ok(text) => Some((default_config.to_path_buf(), text)),
            Err(source) if source.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(ConfigError::Io {
                    path: default_config.to_path_buf(),
                    source,
                });
            }
        },
    };

    if let Some((path, text)) = file {
        let table = load_table(&path, &text)?;
        if let Some(values) = table.get(section) {
            let toml::Value::Table(values) = values else {
                return Err(ConfigError::Toml {
                    path,
                    message: format!("[{section}] must be a table"),
                });
            };
            cmd = apply_section(cmd, &built, &path, section, values)?;
        }
        // Report the file actually read as the value of --config when it came from PIW_CONFIG
        // or is the default (clap reads the real environment, which tests cannot set).
        if !from_args && let Some(config) = find_long(&built, CONFIG_LONG) {
            let shown = OsString::from(path.as_os_str());
            cmd = cmd.mut_arg(config.get_id().clone(), |arg| arg.default_value(shown));
        }
    }

    let mut matches = cmd.try_get_matches_from_mut(args)?;
    T::from_arg_matches_mut(&mut matches).map_err(|error| ConfigError::Clap(error.format(&mut cmd)))
}

/// Parses the configuration file and checks its top-level keys.
fn load_table(path: &Path, text: &str) -> Result<toml::Table, ConfigError> {
    let table: toml::Table = toml::from_str(text).map_err(|error| ConfigError::Toml {
        path: path.to_path_buf(),
        message: error.to_string().trim_end().to_owned(),
    })?;
    if let Some(section) = table.keys().find(|key| !SECTIONS.contains(&key.as_str())) {
        return Err(ConfigError::UnknownSection {
            path: path.to_path_buf(),
            section: section.clone(),
        });
    }
    Ok(table)
}

/// The argument of `cmd` whose long name is `long`.
fn find_long<'a>(cmd: &'a Command, long: &str) -> Option<&'a Arg> {
    cmd.get_arguments().find(|arg| arg.get_long() == Some(long))
}

/// Whether the configuration file may set `arg`.
fn settable(arg: &Arg) -> bool {
    arg.get_long().is_some_and(|long| long != CONFIG_LONG)
        && !matches!(
            arg.get_action(),
            ArgAction::Help | ArgAction::HelpShort | ArgAction::HelpLong | ArgAction::Version
        )
}

/// Whether `arg` takes more than one value (a repeatable option or one with several values).
fn multi_valued(arg: &Arg) -> bool {
    matches!(arg.get_action(), ArgAction::Append)
        || arg
            .get_num_args()
            .is_some_and(|range| range.max_values() > 1)
}

/// Applies the program's `section` of the file at `path` to `cmd` as argument defaults.
fn apply_section(
    mut cmd: Command,
    built: &Command,
    path: &Path,
    section: &str,
    values: &toml::Table,
) -> Result<Command, ConfigError> {
    let bad_value = |key: &str, message: String| ConfigError::BadValue {
        path: path.to_path_buf(),
        section: section.to_owned(),
        key: key.to_owned(),
        message,
    };
    for (key, value) in values {
        if key == CONFIG_LONG {
            return Err(bad_value(
                key,
                "the configuration file cannot name another one; use -c/--config or PIW_CONFIG"
                    .to_owned(),
            ));
        }
        let Some(arg) = find_long(built, key).filter(|arg| settable(arg)) else {
            let mut valid: Vec<String> = built
                .get_arguments()
                .filter(|arg| settable(arg) && !arg.is_hide_set())
                .filter_map(|arg| arg.get_long().map(str::to_owned))
                .collect();
            valid.sort();
            return Err(ConfigError::UnknownKey {
                path: path.to_path_buf(),
                section: section.to_owned(),
                key: key.clone(),
                valid,
            });
        };
        let strings = match value {
            toml::Value::Array(items) => {
                if !multi_valued(arg) {
                    return Err(bad_value(
                        key,
                        "expected a single value, not an array".to_owned(),
                    ));
                }
                items
                    .iter()
                    .map(scalar_string)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|message| bad_value(key, message))?
            }
            other => vec![scalar_string(other).map_err(|message| bad_value(key, message))?],
        };
        validate(built, arg, &strings).map_err(|message| bad_value(key, message))?;
        cmd = cmd.mut_arg(arg.get_id().clone(), |arg| {
            // A value from the file satisfies a required option.
            arg.default_values(strings).required(false)
        });
    }
    Ok(cmd)
}

/// The text of a scalar TOML value, as it would be written on the command line.
fn scalar_string(value: &toml::Value) -> Result<String, String> {
    match value {
        toml::Value::String(text) => Ok(text.clone()),
        toml::Value::Integer(number) => Ok(number.to_string()),
        toml::Value::Float(number) => Ok(number.to_string()),
        toml::Value::Boolean(flag) => Ok(flag.to_string()),
        toml::Value::Datetime(datetime) => Ok(datetime.to_string()),
        toml::Value::Array(_) => Err("arrays cannot be nested".to_owned()),
        toml::Value::Table(_) => {
            Err("expected a string, number, boolean or array, not a table".to_owned())
        }
    }
}

/// Checks `values` with the value parser (and possible values, delimiter, ...) of `arg`, by
/// parsing them as the defaults of a one-argument copy of it.
fn validate(built: &Command, arg: &Arg, values: &[String]) -> Result<(), String> {
    let long = arg.get_long().unwrap_or(CONFIG_LONG);
    let mut probe = Arg::new(long.to_owned())
        .long(long.to_owned())
        .action(arg.get_action().clone())
        .value_parser(arg.get_value_parser().clone())
        .ignore_case(arg.is_ignore_case_set())
        .default_values(values.to_vec());
    if let Some(range) = arg.get_num_args() {
        probe = probe.num_args(range);
    }
    if let Some(names) = arg.get_value_names() {
        probe = probe.value_names(names.to_vec());
    }
    if let Some(delimiter) = arg.get_value_delimiter() {
        probe = probe.value_delimiter(delimiter);
    }
    Command::new(built.get_name().to_owned())
        .no_binary_name(true)
        .disable_help_flag(true)
        .disable_version_flag(true)
        .arg(probe)
        .try_get_matches_from(std::iter::empty::<OsString>())
        .map(drop)
        .map_err(|error| clap_message(&error))
}

/// A one-line description of a clap error about a value.
fn clap_message(error: &clap::Error) -> String {
    use std::error::Error as _;
    if error.kind() == ErrorKind::ValueValidation
        && let (Some(ContextValue::String(value)), Some(source)) =
            (error.get(ContextKind::InvalidValue), error.source())
    {
        let source = source.to_string();
        // The value parsers of this module name the value themselves.
        return if source.contains(value.as_str()) {
            source
        } else {
            format!("invalid value \"{value}\": {source}")
        };
    }
    let text = error.to_string();
    let text = text.strip_prefix("error: ").unwrap_or(&text);
    let text = text.split("\n\n").next().unwrap_or(text);
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The configuration file named by `-c/--config` in `args` (which include the program name);
/// `None` if `cmd` (built) has no such option or it is not given. Clap finds it, in a first
/// pass with nothing required, help and version plain flags and its errors ignored: the
/// file's values are then the real pass's defaults.
fn config_from_args(cmd: &Command, args: &[OsString]) -> Option<PathBuf> {
    let id = find_long(cmd, CONFIG_LONG)?.get_id().clone();
    let relaxed = cmd.clone().ignore_errors(true).mut_args(|arg| {
        let stops = matches!(arg.get_action(), ArgAction::Help | ArgAction::HelpShort | ArgAction::HelpLong | ArgAction::Version);
        if stops { arg.action(ArgAction::SetTrue) } else { arg }.required(false)
    });
    let matches = relaxed.try_get_matches_from(args).ok()?;
    if matches.value_source(id.as_str()) != Some(ValueSource::CommandLine) {
        return None;
    }
    matches.get_raw(id.as_str())?.next_back().map(PathBuf::from)
}

/// An error parsing a [`HumanDuration`] or a [`ByteSize`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ValueError {
    message: String,
}

impl ValueError {
    fn new(message: impl Into<String>) -> Self {
        ValueError {
            message: message.into(),
        }
    }
}

/// A size for people, in binary units with one decimal: `512 B`, `1.5 KiB`, `12.3 GiB`. The
/// one formatter of sizes that the pages, the tools, the monitor and the slave show.
pub fn human_size(bytes: u64) -> String {
    bytesize::ByteSize::b(bytes).display().iec().to_string()
}

/// A length of time written for people, usable as an option value: `90s`, `5m`, `3h`,
/// `1h30m`, `2d`, `500ms`, `1h30m15s` or `HH:MM:SS` (`02:30:00`).
///
/// Units are `d`, `h`, `m`, `s` and `ms` (and `us`, `ns` for the rare sub-millisecond
/// value), from largest to smallest, each at most once; a bare number is refused because its
/// unit would be a guess. [`Display`](fmt::Display) writes the same form (`1h30m`,
/// `1s500ms`, `0s`), which parses back to the same value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct HumanDuration(pub Duration);

/// Duration units: name and length in nanoseconds, largest first.
const DURATION_UNITS: &[(&str, u128)] = &[
    ("d", 86_400_000_000_000),
    ("h", 3_600_000_000_000),
    ("m", 60_000_000_000),
    ("s", 1_000_000_000),
    ("ms", 1_000_000),
    ("us", 1_000),
    ("ns", 1),
];

const NANOS_PER_SEC: u128 = 1_000_000_000;

impl HumanDuration {
    /// The duration.
    #[must_use]
    pub fn as_duration(self) -> Duration {
        self.0
    }

    fn from_nanos(nanos: u128) -> Result<Self, ValueError> {
        let secs = u64::try_from(nanos / NANOS_PER_SEC)
            .map_err(|_| ValueError::new("duration is too long"))?;
        // The remainder is below 10^9, so it fits.
        let subsec = u32::try_from(nanos % NANOS_PER_SEC).unwrap_or(0);
        Ok(HumanDuration(Duration::new(secs, subsec)))
    }

    /// Parses `HH:MM:SS`.
    fn parse_clock(text: &str) -> Result<Self, ValueError> {
        let bad = || {
            ValueError::new(format!(
                "invalid duration \"{text}\": expected HH:MM:SS with minutes and seconds \
                 of two digits below 60 (e.g. 02:30:00)"
            ))
        };
        let fields: Vec<&str> = text.split(':').collect();
        let [hours, minutes, seconds] = fields.as_slice() else {
            return Err(bad());
        };
        let number = |field: &str| -> Result<u128, ValueError> {
            if field.is_empty() || !field.bytes().all(|byte| byte.is_ascii_digit()) {
                return Err(bad());
            }
            field
                .parse::<u128>()
                .map_err(|_| ValueError::new("duration is too long"))
        };
        let (hours, minutes, seconds) = (number(hours)?, number(minutes)?, number(seconds)?);
        if fields[1].len() != 2 || fields[2].len() != 2 || minutes >= 60 || seconds >= 60 {
            return Err(bad());
        }
        let nanos = hours
            .checked_mul(3600)
            .and_then(|secs| secs.checked_add(minutes * 60 + seconds))
            .and_then(|secs| secs.checked_mul(NANOS_PER_SEC))
            .ok_or_else(|| ValueError::new("duration is too long"))?;
        Self::from_nanos(nanos)
    }
}

impl FromStr for HumanDuration {
    type Err = ValueError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let text = input.trim();
        if text.is_empty() {
            return Err(ValueError::new(
                "empty duration: expected e.g. 90s, 5m, 1h30m, 2d, 500ms or 02:30:00",
            ));
        }
        if text.contains(':') {
            return Self::parse_clock(text);
        }
        let mut total: u128 = 0;
        // Index in DURATION_UNITS of the last unit seen.
        let mut last: Option<usize> = None;
        let mut rest = text;
        while !rest.is_empty() {
            let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
            if digits == 0 {
                return Err(ValueError::new(format!(
                    "invalid duration \"{text}\": expected a number at \"{rest}\" \
                     (e.g. 90s, 1h30m or 02:30:00)"
                )));
            }
            let (number, after) = rest.split_at(digits);
            let after = after.trim_start();
            let letters = after.len()
                - after
                    .trim_start_matches(|c: char| c.is_ascii_alphabetic())
                    .len();
            let (unit, after) = after.split_at(letters);
            if unit.is_empty() {
                let message = if after.starts_with('.') {
                    format!(
                        "invalid duration \"{text}\": fractions are not supported, use a \
                         smaller unit (e.g. 1h30m, 1s500ms)"
                    )
                } else {
                    format!(
                        "invalid duration \"{text}\": \"{number}\" needs a unit: d, h, m, s or \
                         ms (e.g. {number}s)"
                    )
                };
                return Err(ValueError::new(message));
            }
            let Some(index) = DURATION_UNITS.iter().position(|(name, _)| *name == unit) else {
                return Err(ValueError::new(format!(
                    "invalid duration \"{text}\": unknown unit \"{unit}\", use d, h, m, s or ms"
                )));
            };
            if last.is_some_and(|last| index <= last) {
                return Err(ValueError::new(format!(
                    "invalid duration \"{text}\": units must go from largest to smallest, each \
                     at most once (e.g. 1h30m)"
                )));
            }
            last = Some(index);
            let nanos = number
                .parse::<u128>()
                .ok()
                .and_then(|number| number.checked_mul(DURATION_UNITS[index].1))
                .and_then(|nanos| total.checked_add(nanos))
                .ok_or_else(|| ValueError::new(format!("duration \"{text}\" is too long")))?;
            total = nanos;
            rest = after.trim_start();
        }
        Self::from_nanos(total)
            .map_err(|_| ValueError::new(format!("duration \"{text}\" is too long")))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut rest = self.0.as_nanos();
        if rest == 0 {
            return f.write_str("0s");
        }
        for (name, length) in DURATION_UNITS {
            let count = rest / length;
            if count > 0 {
                write!(f, "{count}{name}")?;
                rest %= length;
            }
        }
        Ok(())
    }
}

impl From<Duration> for HumanDuration {
    fn from(duration: Duration) -> Self {
        HumanDuration(duration)
    }
}

impl From<HumanDuration> for Duration {
    fn from(duration: HumanDuration) -> Self {
        duration.0
    }
}

/// A number of bytes, usable as an option value: `123`, `64KiB`, `16MiB`, `2GiB`, `1TiB`
/// (powers of 1024) or `500kB`, `10MB`, `2GB`, `1TB` (powers of 1000).
///
/// Units are case-insensitive and may follow the number after a space; a trailing `B` alone
/// means bytes. [`Display`](fmt::Display) writes the largest binary unit that divides the
/// value exactly (`65536` → `64KiB`), or the bare number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

/// Binary units, largest first, as displayed.
const BINARY_UNITS: &[(&str, u64)] = &[
    ("EiB", 1 << 60),
    ("PiB", 1 << 50),
    ("TiB", 1 << 40),
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
];

/// Decimal units, in lower case.
const DECIMAL_UNITS: &[(&str, u64)] = &[
    ("kb", 1_000),
    ("mb", 1_000_000),
    ("gb", 1_000_000_000),
    ("tb", 1_000_000_000_000),
    ("pb", 1_000_000_000_000_000),
    ("eb", 1_000_000_000_000_000_000),
];

impl ByteSize {
    /// The number of bytes.
    #[must_use]
    pub fn bytes(self) -> u64 {
        self.0
    }
}

impl FromStr for ByteSize {
    type Err = ValueError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let text = input.trim();
        let digits = text.len() - text.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 {
            return Err(ValueError::new(format!(
                "invalid size \"{text}\": expected a number of bytes, optionally with a unit \
                 (e.g. 65536, 64KiB, 16MiB, 2GiB, 500MB)"
            )));
        }
        let (number, unit) = text.split_at(digits);
        let unit = unit.trim_start().to_ascii_lowercase();
        if unit.starts_with('.') {
            return Err(ValueError::new(format!(
                "invalid size \"{text}\": fractions are not supported, use a smaller unit \
                 (e.g. 1536MiB)"
            )));
        }
        let multiplier = match unit.as_str() {
            "" | "b" => 1,
            unit => BINARY_UNITS
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(unit))
                .or_else(|| DECIMAL_UNITS.iter().find(|(name, _)| *name == unit))
                .map(|(_, multiplier)| *multiplier)
                .ok_or_else(|| {
                    ValueError::new(format!(
                        "invalid size \"{text}\": unknown unit \"{unit}\", use B, KiB, MiB, GiB, \
                         TiB (powers of 1024) or kB, MB, GB, TB (powers of 1000)"
                    ))
                })?,
        };
        number
            .parse::<u64>()
            .ok()
            .and_then(|number| number.checked_mul(multiplier))
            .map(ByteSize)
            .ok_or_else(|| ValueError::new(format!("size \"{text}\" is too large")))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 != 0 {
            for (name, length) in BINARY_UNITS {
                if self.0.is_multiple_of(*length) {
                    return write!(f, "{}{name}", self.0 / length);
                }
            }
        }
        write!(f, "{}", self.0)
    }
}

impl From<u64> for ByteSize {
    fn from(bytes: u64) -> Self {
        ByteSize(bytes)
    }
}

impl From<ByteSize> for u64 {
    fn from(size: ByteSize) -> Self {
        size.0
    }
}

/// The options of `cmd` whose `--help` shows no default: operators read defaults there, so
/// every program's tests check that this is empty. An option shows its default when clap
/// prints it or its help text says `[default: ...]`; help, version and required arguments
/// have none to show.
pub fn options_without_default(mut cmd: clap::Command) -> Vec<String> {
    cmd.build();
    cmd.get_arguments()
        .filter(|arg| !matches!(arg.get_id().as_str(), "help" | "version") && !arg.is_required_set())
        .filter(|arg| {
            let help = arg.get_long_help().or(arg.get_help()).map(ToString::to_string).unwrap_or_default();
            let shown = !arg.get_default_values().is_empty() && !arg.is_hide_default_value_set();
            !shown && !help.contains("[default:")
        })
        .map(|arg| format!("{}: --{}", cmd.get_name(), arg.get_id()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_without_a_shown_default_are_named() {
        let cmd = clap::Command::new("tool")
            .arg(clap::Arg::new("shown").long("shown").default_value("1"))
            .arg(clap::Arg::new("told").long("told").help("a thing [default: none]"))
            .arg(clap::Arg::new("hidden").long("hidden").default_value("2").hide_default_value(true))
            .arg(clap::Arg::new("missing").long("missing"));
        assert_eq!(options_without_default(cmd), ["tool: --hidden", "tool: --missing"]);
    }
    use clap::Parser;
    use std::io::Write;

    fn dur(text: &str) -> Duration {
        match HumanDuration::from_str(text) {
            Ok(duration) => duration.0,
            Err(error) => panic!("{text:?}: {error}"),
        }
    }

    fn dur_err(text: &str) -> String {
        match HumanDuration::from_str(text) {
            Ok(duration) => panic!("{text:?} parsed as {duration:?}"),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn sizes_are_in_binary_units_with_one_decimal() {
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(574 << 10), "574.0 KiB");
        assert_eq!(human_size(5 << 30), "5.0 GiB");
    }

    #[test]
    fn durations() {
        assert_eq!(dur("90s"), Duration::from_secs(90));
        assert_eq!(dur("5m"), Duration::from_secs(300));
        assert_eq!(dur("3h"), Duration::from_secs(3 * 3600));
        assert_eq!(dur("1h30m"), Duration::from_secs(5400));
        assert_eq!(dur("26h"), Duration::from_secs(26 * 3600));
        assert_eq!(dur("2d"), Duration::from_secs(2 * 86400));
        assert_eq!(dur("500ms"), Duration::from_millis(500));
        assert_eq!(dur("1h30m15s"), Duration::from_secs(5415));
        assert_eq!(dur("0s"), Duration::ZERO);
        assert_eq!(dur("02:30:00"), Duration::from_secs(9000));
        assert_eq!(dur("26:00:01"), Duration::from_secs(26 * 3600 + 1));
        assert_eq!(dur("  1h 30m  "), Duration::from_secs(5400));
        assert_eq!(dur("1s500ms"), Duration::from_millis(1500));
        assert_eq!(dur("5 m"), Duration::from_secs(300));
    }

    #[test]
    fn duration_errors() {
        assert!(dur_err("").contains("empty"));
        assert!(dur_err("   ").contains("empty"));
        let bare = dur_err("5");
        assert!(bare.contains("unit") && bare.contains("5s"), "{bare}");
        assert!(dur_err("5x").contains("unknown unit \"x\""));
        assert!(dur_err("h").contains("expected a number"));
        assert!(dur_err("1.5h").contains("fractions"));
        assert!(dur_err("30m1h").contains("largest to smallest"));
        assert!(dur_err("1h1h").contains("largest to smallest"));
        assert!(dur_err("1h30").contains("needs a unit"));
        assert!(dur_err("-5s").contains("expected a number"));
        assert!(dur_err("99999999999999999999999999999999999999999d").contains("too long"));
        assert!(dur_err("213503982334602d").contains("too long"));
        assert_eq!(
            dur("213503982334601d").as_secs(),
            213_503_982_334_601 * 86_400
        );
        assert!(dur_err("18446744073709551616s").contains("too long"));
        assert_eq!(dur("18446744073709551615s"), Duration::from_secs(u64::MAX));
        for bad in [
            "1:00",
            "1:60:00",
            "1:00:5",
            "a:00:00",
            "1:00:00:00",
            ":00:00",
        ] {
            assert!(dur_err(bad).contains("HH:MM:SS"), "{bad}");
        }
    }

    #[test]
    fn duration_display() {
        let show = |duration: Duration| HumanDuration(duration).to_string();
        assert_eq!(show(Duration::from_secs(5400)), "1h30m");
        assert_eq!(show(Duration::ZERO), "0s");
        assert_eq!(show(Duration::from_millis(1500)), "1s500ms");
        assert_eq!(show(Duration::from_secs(26 * 3600)), "1d2h");
        assert_eq!(show(Duration::from_secs(90)), "1m30s");
        assert_eq!(show(Duration::from_nanos(1_001)), "1us1ns");
    }

    #[test]
    fn duration_round_trip() {
        let mut values = vec![
            Duration::ZERO,
            Duration::from_millis(1),
            Duration::from_secs(5400),
            Duration::from_secs(u64::MAX),
            Duration::MAX,
            Duration::from_nanos(123_456_789),
        ];
        // A spread of values with every unit present or absent.
        let mut x: u64 = 1;
        for _ in 0..500 {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            values.push(Duration::from_millis(x >> (x % 40 + 10)));
        }
        for value in values {
            let shown = HumanDuration(value).to_string();
            assert_eq!(
                HumanDuration::from_str(&shown),
                Ok(HumanDuration(value)),
                "{shown}"
            );
        }
    }

    #[test]
    fn byte_sizes() {
        let size = |text: &str| match ByteSize::from_str(text) {
            Ok(size) => size.0,
            Err(error) => panic!("{text:?}: {error}"),
        };
        assert_eq!(size("123"), 123);
        assert_eq!(size("123B"), 123);
        assert_eq!(size("64KiB"), 65536);
        assert_eq!(size("16MiB"), 16 << 20);
        assert_eq!(size("2GiB"), 2 << 30);
        assert_eq!(size("1TiB"), 1 << 40);
        assert_eq!(size("500kB"), 500_000);
        assert_eq!(size("10MB"), 10_000_000);
        assert_eq!(size("2GB"), 2_000_000_000);
        assert_eq!(size("64kib"), 65536);
        assert_eq!(size("64 KIB"), 65536);
        assert_eq!(size(" 3 mb "), 3_000_000);
        assert_eq!(size("15EiB"), 15 << 60);
        for bad in [
            "",
            "KiB",
            "12x",
            "1.5GiB",
            "-1",
            "16EiB",
            "99999999999999999999",
        ] {
            assert!(ByteSize::from_str(bad).is_err(), "{bad}");
        }
        assert!(ByteSize::from_str("12 parsecs").is_err_and(|e| e.to_string().contains("KiB")));

        assert_eq!(ByteSize(65536).to_string(), "64KiB");
        assert_eq!(ByteSize(0).to_string(), "0");
        assert_eq!(ByteSize(1000).to_string(), "1000");
        assert_eq!(ByteSize(3 << 30).to_string(), "3GiB");
        assert_eq!(ByteSize(1536 << 20).to_string(), "1536MiB");
        for value in [0, 1, 1023, 1024, 1 << 20, 1_000_000, u64::MAX, 15 << 60] {
            assert_eq!(
                ByteSize::from_str(&ByteSize(value).to_string()),
                Ok(ByteSize(value))
            );
        }
    }

    /// Options of a pretend program.
    #[derive(Parser, Debug)]
    #[command(name = "piw-test", version)]
    struct TestArgs {
        #[command(flatten)]
        config: ConfigArg,
        /// Where the web pages go.
        #[arg(short = 'o', long, default_value = "/var/www")]
        output_path: String,
        /// How long to wait.
        #[arg(long, env = "PIW_TEST_TIMEOUT", default_value = "3h")]
        timeout: HumanDuration,
        /// Loggers to debug.
        #[arg(long)]
        debug: Vec<String>,
        /// Development mode.
        #[arg(long, action = ArgAction::SetTrue)]
        dev_mode: bool,
        /// Largest file.
        #[arg(long, default_value = "16MiB")]
        max_size: ByteSize,
        /// Verbosity.
        #[arg(short, long, action = ArgAction::Count)]
        verbose: u8,
        /// A port.
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
        port: Option<u16>,
        /// A required option.
        #[arg(long, hide = true)]
        hidden: Option<String>,
    }

    /// A program with a required option.
    #[derive(Parser, Debug)]
    #[command(name = "piw-required")]
    struct RequiredArgs {
        #[command(flatten)]
        config: ConfigArg,
        /// The database.
        #[arg(long)]
        dsn: String,
    }

    fn write_config(text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().expect("temporary file");
        file.write_all(text.as_bytes())
            .expect("write configuration");
        file
    }

    fn missing_default() -> PathBuf {
        PathBuf::from("/nonexistent/piwheels-test/piwheels.toml")
    }

    /// Parses `args` (after the program name) with the file `config` given by `-c`.
    fn with_file(config: &Path, args: &[&str]) -> Result<TestArgs, ConfigError> {
        let mut all: Vec<OsString> = vec!["piw-test".into(), "-c".into(), config.into()];
        all.extend(args.iter().map(OsString::from));
        parse_with_default("master", all, None, &missing_default())
    }

    fn no_file(args: &[&str]) -> Result<TestArgs, ConfigError> {
        let all = std::iter::once("piw-test").chain(args.iter().copied());
        parse_with_default("master", all, None, &missing_default())
    }

    #[test]
    fn built_in_defaults() {
        let args = no_file(&[]).expect("parse");
        assert_eq!(args.output_path, "/var/www");
        assert_eq!(args.timeout, HumanDuration(Duration::from_secs(3 * 3600)));
        assert!(args.debug.is_empty());
        assert!(!args.dev_mode);
        assert_eq!(args.max_size, ByteSize(16 << 20));
        assert_eq!(args.verbose, 0);
    }

    #[test]
    fn file_overrides_defaults_and_flags_override_file() {
        let file = write_config(
            r#"
            [master]
            output-path = "/srv/www"
            timeout = "10m"
            debug = ["master.cloud_gazer", "master.the_oracle"]
            dev-mode = true
            max-size = "1GiB"
            verbose = 2
            port = 5555

            [slave]
            timeout = "not even a duration"
            unknown-to-master = 1
            "#,
        );
        let args = with_file(file.path(), &[]).expect("parse");
        assert_eq!(args.output_path, "/srv/www");
        assert_eq!(args.timeout, HumanDuration(Duration::from_secs(600)));
        assert_eq!(args.debug, ["master.cloud_gazer", "master.the_oracle"]);
        assert!(args.dev_mode);
        assert_eq!(args.max_size, ByteSize(1 << 30));
        assert_eq!(args.verbose, 2);
        assert_eq!(args.port, Some(5555));
        assert_eq!(args.config.config, file.path());

        let args = with_file(
            file.path(),
            &[
                "--output-path",
                "/tmp/www",
                "--timeout=1s",
                "--debug",
                "master.slave_driver",
                "--max-size",
                "1KiB",
                "--port",
                "1",
            ],
        )
        .expect("parse");
        assert_eq!(args.output_path, "/tmp/www");
        assert_eq!(args.timeout, HumanDuration(Duration::from_secs(1)));
        assert_eq!(args.debug, ["master.slave_driver"]);
        assert_eq!(args.max_size, ByteSize(1024));
        assert_eq!(args.port, Some(1));
        // Untouched by the flags.
        assert!(args.dev_mode);
    }

    #[test]
    fn scalar_and_native_toml_values() {
        let file = write_config("[master]\ndebug = \"one\"\ntimeout = 02:30:00\nport = 80\n");
        let args = with_file(file.path(), &[]).expect("parse");
        assert_eq!(args.debug, ["one"]);
        assert_eq!(args.timeout, HumanDuration(Duration::from_secs(9000)));
        assert_eq!(args.port, Some(80));

        let file = write_config("[master]\ndebug = []\ndev-mode = false\n");
        let args = with_file(file.path(), &[]).expect("parse");
        assert!(args.debug.is_empty());
        assert!(!args.dev_mode);
        let args = with_file(file.path(), &["--dev-mode"]).expect("parse");
        assert!(args.dev_mode);
    }

    #[test]
    fn file_satisfies_required_options() {
        let file = write_config("[master]\ndsn = \"postgres:///piwheels\"\n");
        let args: RequiredArgs = parse_with_default(
            "master",
            [
                OsString::from("piw-required"),
                "-c".into(),
                file.path().into(),
            ],
            None,
            &missing_default(),
        )
        .expect("parse");
        assert_eq!(args.dsn, "postgres:///piwheels");
        assert!(
            parse_with_default::<RequiredArgs, _, _>(
                "master",
                ["piw-required"],
                None,
                &missing_default()
            )
            .is_err_and(|e| matches!(e, ConfigError::Clap(ref e)
                if e.kind() == ErrorKind::MissingRequiredArgument))
        );
    }

    #[test]
    fn config_file_locations() {
        let file = write_config("[master]\noutput-path = \"/from/file\"\n");
        let other = write_config("[master]\noutput-path = \"/from/other\"\n");
        let path = file.path().to_str().expect("UTF-8 temporary path");
        let parse = |args: Vec<String>, env: Option<&Path>, default: &Path| {
            let args = std::iter::once("piw-test".to_owned()).chain(args);
            parse_with_default::<TestArgs, _, _>(
                "master",
                args,
                env.map(Path::to_path_buf),
                default,
            )
            .expect("parse")
            .output_path
        };
        let strings = |args: &[&str]| args.iter().map(ToString::to_string).collect::<Vec<_>>();
        let missing = missing_default();
        for args in [
            strings(&["-c", path]),
            vec![format!("-c{path}")],
            vec![format!("-c={path}")],
            strings(&["--config", path]),
            vec![format!("--config={path}")],
            strings(&["-vc", path]),
            vec![format!("-vvc{path}")],
            strings(&["--output-path", "/flag", "-c", path]),
            strings(&["--timeout", "1s", "-c", path, "--dev-mode"]),
        ] {
            let expected = if args.contains(&"/flag".to_owned()) {
                "/flag"
            } else {
                "/from/file"
            };
            // The command line beats PIW_CONFIG and the default file.
            assert_eq!(
                parse(args.clone(), Some(other.path()), other.path()),
                expected,
                "{args:?}"
            );
        }
        // PIW_CONFIG, then the default file.
        assert_eq!(parse(vec![], Some(file.path()), other.path()), "/from/file");
        assert_eq!(parse(vec![], None, other.path()), "/from/other");
        // A missing default file is fine.
        assert_eq!(parse(vec![], None, &missing), "/var/www");
        // `-c` inside another option's value, or after `--`, is not the configuration file.
        assert_eq!(parse(strings(&["-oc"]), None, &missing), "c");
        assert!(
            parse_with_default::<TestArgs, _, _>(
                "master",
                ["piw-test", "--output-path", "-c"],
                None,
                &missing,
            )
            .is_err_and(|e| matches!(e, ConfigError::Clap(_)))
        );
        assert!(
            parse_with_default::<TestArgs, _, _>(
                "master",
                ["piw-test", "--", "-c", "/nonexistent/piwheels.toml"],
                None,
                &missing,
            )
            .is_err_and(|e| matches!(e, ConfigError::Clap(_)))
        );
        // --config reports the file read (unless the real PIW_CONFIG, which clap reads and
        // `parse` would pass as `env_config`, says otherwise).
        if std::env::var_os(CONFIG_ENV).is_none_or(|value| value.is_empty()) {
            let args: TestArgs =
                parse_with_default("master", ["piw-test"], Some(file.path().into()), &missing)
                    .expect("parse");
            assert_eq!(args.config.config, file.path());
        }
    }

    #[test]
    fn missing_explicit_file_is_an_error() {
        let missing = "/nonexistent/piwheels-test/explicit.toml";
        let error = no_file(&["-c", missing]).expect_err("missing file");
        assert!(matches!(error, ConfigError::Io { .. }), "{error:?}");
        assert!(error.to_string().contains(missing), "{error}");

        let error = parse_with_default::<TestArgs, _, _>(
            "master",
            ["piw-test"],
            Some(missing.into()),
            &missing_default(),
        )
        .expect_err("missing file");
        assert!(error.to_string().contains(missing), "{error}");
    }

    #[test]
    fn unknown_key_is_an_error() {
        let file = write_config("[master]\noutput-path = \"/srv\"\nfoo = 1\n");
        let error = with_file(file.path(), &[]).expect_err("unknown key");
        let message = error.to_string();
        assert!(matches!(error, ConfigError::UnknownKey { ref key, .. } if key == "foo"));
        assert!(
            message.contains("unknown key \"foo\" in [master]"),
            "{message}"
        );
        assert!(
            message.contains(&file.path().display().to_string()),
            "{message}"
        );
        assert!(
            message.contains("output-path") && message.contains("timeout"),
            "{message}"
        );
        assert!(
            !message.contains("hidden") && !message.contains("help"),
            "{message}"
        );

        // Keys are spelled like the flags, and help, version and config are not options here.
        for key in ["output_path", "help", "version", "OUTPUT-PATH"] {
            let file = write_config(&format!("[master]\n{key} = \"x\"\n"));
            let error = with_file(file.path(), &[]).expect_err(key);
            assert!(
                matches!(error, ConfigError::UnknownKey { .. }),
                "{key}: {error}"
            );
        }
        let file = write_config("[master]\nconfig = \"/etc/other.toml\"\n");
        let error = with_file(file.path(), &[]).expect_err("config key");
        assert!(
            matches!(error, ConfigError::BadValue { ref key, .. } if key == "config"),
            "{error}"
        );
    }

    #[test]
    fn unknown_section_is_an_error() {
        for text in ["[mastr]\nfoo = 1\n", "output-path = \"/srv\"\n"] {
            let file = write_config(text);
            let error = with_file(file.path(), &[]).expect_err("unknown section");
            assert!(
                matches!(error, ConfigError::UnknownSection { .. }),
                "{error:?}"
            );
            let message = error.to_string();
            assert!(
                message.contains(&file.path().display().to_string()),
                "{message}"
            );
            assert!(
                message.contains("mastr") || message.contains("output-path"),
                "{message}"
            );
        }
        let file = write_config("master = 1\n");
        assert!(matches!(
            with_file(file.path(), &[]),
            Err(ConfigError::Toml { .. })
        ));
        let file = write_config("[master\n");
        let error = with_file(file.path(), &[]).expect_err("bad TOML");
        assert!(matches!(error, ConfigError::Toml { .. }), "{error:?}");
        assert!(
            error
                .to_string()
                .contains(&file.path().display().to_string())
        );
    }

    #[test]
    fn bad_values_are_errors() {
        let cases = [
            ("timeout = \"5\"", "timeout", "needs a unit"),
            ("timeout = \"5x\"", "timeout", "unknown unit"),
            ("timeout = 5", "timeout", "needs a unit"),
            ("max-size = \"lots\"", "max-size", "invalid size"),
            ("port = 0", "port", "0"),
            ("port = 70000", "port", "70000"),
            ("dev-mode = \"yes\"", "dev-mode", "yes"),
            (
                "output-path = [\"a\", \"b\"]",
                "output-path",
                "single value",
            ),
            ("output-path = { a = 1 }", "output-path", "table"),
            ("debug = [[\"a\"]]", "debug", "nested"),
        ];
        for (line, key, detail) in cases {
            let file = write_config(&format!("[master]\n{line}\n"));
            let error = with_file(file.path(), &[]).expect_err(line);
            let message = error.to_string();
            assert!(
                matches!(error, ConfigError::BadValue { key: ref k, .. } if k == key),
                "{line}: {message}"
            );
            assert!(
                message.contains(&format!("\"{key}\" in [master]")),
                "{message}"
            );
            assert!(
                message.contains(&file.path().display().to_string()),
                "{message}"
            );
            assert!(message.contains(detail), "{line}: {message}");
            assert!(!message.contains('\n'), "{message}");
        }
    }

    #[test]
    fn help_shows_file_values_as_defaults() {
        let file = write_config("[master]\noutput-path = \"/srv/www\"\n");
        let error = with_file(file.path(), &["--help"]).expect_err("help");
        let ConfigError::Clap(error) = error else {
            panic!("{error:?}")
        };
        assert_eq!(error.kind(), ErrorKind::DisplayHelp);
        let help = error.to_string();
        assert!(help.contains("[default: /srv/www]"), "{help}");
        assert!(help.contains("[default: 3h]"), "{help}");
        if std::env::var_os(CONFIG_ENV).is_none_or(|value| !value.is_empty()) {
            assert!(help.contains("[env: PIW_CONFIG"), "{help}");
        }
    }

    #[test]
    fn clap_errors_are_returned() {
        let error = no_file(&["--timeout", "5"]).expect_err("bad flag");
        assert!(
            matches!(error, ConfigError::Clap(ref e) if e.kind() == ErrorKind::ValueValidation)
        );
        let error = no_file(&["--no-such-flag"]).expect_err("bad flag");
        assert!(
            matches!(error, ConfigError::Clap(ref e) if e.kind() == ErrorKind::UnknownArgument)
        );
    }

    /// Runs [`env_child`] in a child process with `PIW_TEST_TIMEOUT` set, since this crate
    /// cannot set environment variables (`set_var` is unsafe).
    #[test]
    fn env_overrides_file() {
        let exe = std::env::current_exe().expect("test executable");
        let output = std::process::Command::new(exe)
            .args([
                "--exact",
                "config::tests::env_child",
                "--ignored",
                "--test-threads=1",
            ])
            .env("PIW_TEST_TIMEOUT", "45m")
            .env("PIW_CONFIG", "")
            .output()
            .expect("run child");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "child failed:\n{stdout}\n{stderr}");
        assert!(
            stdout.contains("1 passed"),
            "child did not run:\n{stdout}\n{stderr}"
        );
    }

    #[test]
    #[ignore = "run by env_overrides_file with PIW_TEST_TIMEOUT set"]
    fn env_child() {
        let Ok(expected) = std::env::var("PIW_TEST_TIMEOUT") else {
            return;
        };
        assert_eq!(expected, "45m");
        // An empty PIW_CONFIG is ignored.
        assert_eq!(std::env::var_os(CONFIG_ENV), Some(OsString::new()));
        let args = no_file(&[]).expect("parse");
        assert_eq!(args.config.config, Path::new(DEFAULT_CONFIG_PATH));
        let forty_five = HumanDuration(Duration::from_secs(45 * 60));
        // Environment beats the built-in default...
        assert_eq!(no_file(&[]).expect("parse").timeout, forty_five);
        // ... and the file...
        let file = write_config("[master]\ntimeout = \"10m\"\noutput-path = \"/srv\"\n");
        let args = with_file(file.path(), &[]).expect("parse");
        assert_eq!(args.timeout, forty_five);
        assert_eq!(args.output_path, "/srv");
        // ... but not the flag.
        let args = with_file(file.path(), &["--timeout", "1s"]).expect("parse");
        assert_eq!(args.timeout, HumanDuration(Duration::from_secs(1)));
    }
}
