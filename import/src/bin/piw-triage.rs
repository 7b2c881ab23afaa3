//! piw-triage: why the farm's builds fail. See `piw-triage --help` and docs/admin-tools.md.

use std::process::ExitCode;

use piwheels_common::logging;
use piwheels_import::config::TriageConfig;

fn main() -> ExitCode {
    let cfg: TriageConfig = match piwheels_import::options("piw-triage") {
        Ok(cfg) => cfg,
        Err(code) => return code,
    };
    logging::init(&cfg.log);
    piwheels_import::finish("piw-triage", piwheels_import::triage::run(&cfg))
}
