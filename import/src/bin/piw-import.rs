//! piw-import: imports wheels built elsewhere. See `piw-import --help` and docs/admin-tools.md.

use std::process::ExitCode;

use piwheels_common::logging;
use piwheels_import::config::ImportConfig;

fn main() -> ExitCode {
    let cfg: ImportConfig = match piwheels_import::options("piw-import") {
        Ok(cfg) => cfg,
        Err(code) => return code,
    };
    logging::init(&cfg.log);
    piwheels_import::finish("piw-import", piwheels_import::import::run(&cfg))
}
