//! piw-check: see `piw-check --help`.

use std::process::ExitCode;

use piwheels_common::{config, logging};
use piwheels_master::config::CheckConfig;
use piwheels_master::consistency::{self, Check};
use piwheels_master::signing;

fn main() -> ExitCode {
    let cfg: CheckConfig = match config::parse("master") {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("piw-check: {e}");
            return ExitCode::from(2);
        }
    };
    logging::init(&cfg.master.log);
    // Only a repair writes statements; a key that cannot be read leaves them reported.
    let signing_key = match cfg.repair.then(|| signing::load_existing(&cfg.master.state_dir)).transpose() {
        Ok(key) => key.flatten(),
        Err(e) => {
            eprintln!("piw-check: {e:#}; missing provenance statements are only reported");
            None
        }
    };
    let check = Check {
        output_path: cfg.master.output_path.clone(),
        staging_dir: cfg.master.state_dir.join("staging"),
        abandon_after: cfg.master.abandon_after.0,
        min_age: cfg.min_age.0,
        repair: cfg.repair,
        force: cfg.force,
        signing_key,
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
