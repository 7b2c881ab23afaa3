//! piw-slave: see `piw-slave --help`.

use std::ffi::OsString;
use std::process::ExitCode;

use piwheels_common::{config, logging};
use piwheels_slave::{SlaveConfig, launcher};

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    // The launcher every build runs under (internal; started by the slave itself).
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
    match piwheels_slave::run(&cfg) {
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
