//! piw-add: adds or updates packages and versions. See `piw-add --help` and docs/admin-tools.md.

use std::process::ExitCode;

use piwheels_common::logging;
use piwheels_import::config::AddConfig;

fn main() -> ExitCode {
    let cfg: AddConfig = match piwheels_import::options("piw-add") {
        Ok(cfg) => cfg,
        Err(code) => return code,
    };
    logging::init(&cfg.log);
    piwheels_import::finish("piw-add", piwheels_import::add::run(&cfg))
}
