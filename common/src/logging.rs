//! Logging set-up shared by every program: tracing to stderr in a readable format, with the
//! level chosen by `-v`/`-q` flags or the `PIW_LOG` environment variable (an `EnvFilter`
//! directive such as `info,piwheels_master::slave_driver=debug`).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Verbosity flags every program offers.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct LogArgs {
    /// More output: -v shows debug messages, -vv traces [default: info]
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Less output: -q shows warnings and errors only, -qq errors only [default: info]
    #[arg(short, long, action = clap::ArgAction::Count, global = true, conflicts_with = "verbose")]
    pub quiet: u8,
}

impl LogArgs {
    /// The level the flags select.
    pub fn level(&self) -> &'static str {
        match (self.verbose, self.quiet) {
            (0, 0) => "info",
            (1, _) => "debug",
            (v, _) if v >= 2 => "trace",
            (_, 1) => "warn",
            _ => "error",
        }
    }
}

/// Installs the global subscriber. `PIW_LOG`, when set, overrides the flags. Calling it twice
/// is harmless (the second call changes nothing), which suits tests.
pub fn init(args: &LogArgs) {
    let filter = EnvFilter::try_from_env("PIW_LOG").unwrap_or_else(|_| EnvFilter::new(args.level()));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal()).with_target(false).try_init();
}
