//! The administrators' tools: `piw-import` (wheels built elsewhere), `piw-add` (packages and
//! versions, and with `--with-deps` the releases their dependencies resolve to, [`deps`]),
//! `piw-remove` (packages, versions or their builds), `piw-rebuild` (pages, builds again)
//! and `piw-triage` (why builds fail, and building again those a fix cures). Each talks to
//! the master's admin endpoint ([`session`]) and, for imports, to its file socket; `docs/admin-tools.md` describes them for operators. Beside them, for
//! anyone who installs from the index, `piw-verify` ([`verify`]) checks a wheel's signed
//! provenance over plain HTTP.
//!
//! The binaries are thin: they parse their options ([`config`]), set up logging and call the
//! tool's `run`, whose [`ToolError`] decides the exit status and the one-line reason printed.

use std::process::ExitCode;

use piwheels_common::protocols::{ErrorKind, WireError};

pub mod add;
pub mod config;
pub mod deps;
pub mod import;
pub mod prompt;
pub mod rebuild;
pub mod remove;
pub mod session;
pub mod triage;
pub mod verify;

/// Why a tool failed. Each carries one sentence for the operator.
#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// The command line asks for something impossible or contradictory: exit status 2.
    #[error("{0}")]
    Usage(String),
    /// The operator did not confirm: nothing was done; exit status 2.
    #[error("{0}")]
    Declined(String),
    /// The work failed: a bad file, an unreachable master, a refusal; exit status 1.
    #[error("{0}")]
    Failed(String),
    /// The master could not carry the request out now (its database or disk failed, or it is
    /// paused): nothing is wrong with the request, and the same command may succeed later;
    /// exit status 75 (`EX_TEMPFAIL`).
    #[error("{0}")]
    Unavailable(String),
}

impl From<WireError> for ToolError {
    /// The master's error, in its words: a refusal fails for good, the master's own failure
    /// is temporary.
    fn from(error: WireError) -> ToolError {
        match error.kind {
            ErrorKind::Refused => ToolError::Failed(error.message),
            ErrorKind::Unavailable => ToolError::Unavailable(error.message),
        }
    }
}

impl ToolError {
    /// The process's exit status for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            ToolError::Usage(_) | ToolError::Declined(_) => 2,
            ToolError::Failed(_) => 1,
            ToolError::Unavailable(_) => 75,
        }
    }
}

/// Ends a tool: prints the reason of a failure on one line of stderr, prefixed with the tool's
/// name, and gives the exit status.
pub fn finish(tool: &str, outcome: Result<(), ToolError>) -> ExitCode {
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let reason = e.to_string().replace(['\n', '\r'], " ");
            eprintln!("{tool}: {reason}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// Loads a tool's options from the `[import]` table, the environment and the command line;
/// a bad configuration file ends the process with status 2.
pub fn options<T: clap::Parser>(tool: &str) -> Result<T, ExitCode> {
    piwheels_common::config::parse::<T>("import").map_err(|e| {
        eprintln!("{tool}: {e}");
        ExitCode::from(2)
    })
}
