//! piw-check: see `piw-check --help`.

use std::process::ExitCode;

use piwheels_common::{config, logging};
use piwheels_master::config::CheckConfig;
use piwheels_master::consistency::{self, Check};

fn main() -> ExitCode {
    let cfg: CheckConfig = match config::parse("master") {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("piw-check: {e}");
            return ExitCode::from(2);
        }
    };
    logging::init(&cfg.master.log);
    let check = Check {
        output_path: cfg.master.output_path.clone(),
        staging_dir: cfg.master.state_dir.join("staging"),
        abandon_after: cfg.master.abandon_after.0,
        min_age: cfg.min_age.0,
        repair: cfg.repair,
        force: cfg.force,
    };
    match consistency::run_blocking(&cfg.master.dsn, cfg.master.db_timeout.0, &check) {
        Ok(findings) => {
            println!("{findings}");
            if findings.is_clean() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
        }
        Err(e) => {
            eprintln!("piw-check: {e:#}");
            ExitCode::from(2)
        }
    }
}
