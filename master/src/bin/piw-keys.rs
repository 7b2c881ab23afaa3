//! piw-keys: makes key pairs and edits the master's list of authorized keys.

use std::process::ExitCode;

use piwheels_common::config;
use piwheels_common::logging;
use piwheels_master::key_tool::{self, KeysConfig};

fn main() -> ExitCode {
    let cfg: KeysConfig = match config::parse("keys") {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("piw-keys: {e}");
            return ExitCode::from(2);
        }
    };
    logging::init(&cfg.log);
    match key_tool::run(&cfg) {
        Ok(lines) => {
            for line in lines {
                println!("{line}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("piw-keys: {e}");
            ExitCode::FAILURE
        }
    }
}
