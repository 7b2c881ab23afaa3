//! piw-master: see `piw-master --help`.

use std::process::ExitCode;

use piwheels_common::{config, logging};
use piwheels_master::{MasterConfig, Stopped};

fn main() -> ExitCode {
    let cfg: MasterConfig = match config::parse("master") {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("piw-master: {e}");
            return ExitCode::from(2);
        }
    };
    logging::init(&cfg.log);
    match piwheels_master::run(&cfg) {
        Ok(Stopped::Requested(why)) => {
            tracing::info!("stopped: {why}");
            ExitCode::SUCCESS
        }
        Ok(Stopped::Failed(why)) => {
            tracing::error!("stopped: {why}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("piw-master: {e:#}");
            ExitCode::FAILURE
        }
    }
}
