//! piw-logger: see `piw-logger --help` and `piwheels_master::access_log::logger`.

use std::process::ExitCode;

use piwheels_common::{config, logging};
use piwheels_master::access_log::logger::{self, LoggerConfig};

fn main() -> ExitCode {
    let cfg: LoggerConfig = match config::parse("logger") {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("piw-logger: {e}");
            return ExitCode::from(2);
        }
    };
    logging::init(&cfg.log);
    match logger::run(&cfg) {
        Ok(outcome) => {
            print!("{}", outcome.summary);
            match outcome.failure {
                None => ExitCode::SUCCESS,
                Some(why) => {
                    eprintln!("piw-logger: {why}");
                    ExitCode::FAILURE
                }
            }
        }
        Err(e) => {
            eprintln!("piw-logger: {e}");
            ExitCode::FAILURE
        }
    }
}
