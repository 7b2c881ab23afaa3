//! piw-slave: see `piw-slave --help`.

use std::ffi::OsString;
use std::process::ExitCode;

use piwheels_common::{config, logging};
use piwheels_slave::host::{self, Slot};
use piwheels_slave::{AgentError, SlaveConfig, launcher};

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    // The resident launcher each builder starts (internal). It must stay single-threaded (it
    // forks), so it is dispatched to before anything else.
    if args.get(1).is_some_and(|arg| arg == launcher::SUBCOMMAND) {
        return launcher::main(&args[2..]);
    }
    // `--help` and `--version` answer whoever asks; they end the process here.
    let cfg: SlaveConfig = match config::parse("slave") {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("piw-slave: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(why) = piwheels_slave::refuse_root() {
        eprintln!("piw-slave: {why}");
        return ExitCode::FAILURE;
    }
    logging::init(&cfg.log);
    // A builder, started by its host with its number in the environment.
    if let Some(slot) = Slot::from_env() {
        let slot = match slot {
            Ok(slot) => slot,
            Err(why) => {
                eprintln!("piw-slave: {why}");
                return ExitCode::from(host::SETUP_FAILED);
            }
        };
        let _span = tracing::info_span!("builder", n = slot.number).entered();
        return match piwheels_slave::run(&cfg, slot) {
            Ok(outcome) => {
                tracing::info!("{outcome}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("piw-slave builder {}: {e}", slot.number);
                // Its host starts another after a protocol or internal error, not after one
                // that would happen again.
                match e {
                    AgentError::Refused { .. } | AgentError::Unauthorized(_) | AgentError::Setup(_) => ExitCode::from(host::SETUP_FAILED),
                    AgentError::Protocol(_) | AgentError::Internal(_) => ExitCode::FAILURE,
                }
            }
        };
    }
    match host::run(&cfg) {
        Ok(outcome) => {
            tracing::info!("{outcome}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("piw-slave: {e}");
            ExitCode::FAILURE
        }
    }
}
