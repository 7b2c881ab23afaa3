//! piw-verify: checks wheels against their signed provenance. See `piw-verify --help` and
//! docs/provenance.md.

use std::process::ExitCode;

use clap::Parser as _;
use piwheels_import::verify::{VerifyConfig, run};

fn main() -> ExitCode {
    let cfg = VerifyConfig::parse();
    match run(&cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("piw-verify: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
