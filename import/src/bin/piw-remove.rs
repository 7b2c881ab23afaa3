//! piw-remove: removes packages, versions or their builds. See `piw-remove --help` and docs/admin-tools.md.

use std::process::ExitCode;

use piwheels_common::logging;
use piwheels_import::config::RemoveConfig;

fn main() -> ExitCode {
    let cfg: RemoveConfig = match piwheels_import::options("piw-remove") {
        Ok(cfg) => cfg,
        Err(code) => return code,
    };
    logging::init(&cfg.log);
    piwheels_import::finish("piw-remove", piwheels_import::remove::run(&cfg))
}
