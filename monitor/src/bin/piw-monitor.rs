//! piw-monitor: see `piw-monitor --help`.

use std::process::ExitCode;

use piwheels_common::config;
use piwheels_monitor::{Exit, MonitorConfig};

fn main() -> ExitCode {
    let cfg: MonitorConfig = match config::parse("monitor") {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("piw-monitor: {e}");
            return ExitCode::from(2);
        }
    };
    match piwheels_monitor::run(&cfg) {
        Ok(Exit::Quit) => ExitCode::SUCCESS,
        Ok(Exit::MasterStopped(why)) => {
            eprintln!("piw-monitor: {why}");
            ExitCode::SUCCESS
        }
        Ok(Exit::ConnectionLost(why)) => {
            eprintln!("piw-monitor: {why}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("piw-monitor: {e:#}");
            ExitCode::FAILURE
        }
    }
}
