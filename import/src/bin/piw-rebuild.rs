//! piw-rebuild: rewrites pages of the index. See `piw-rebuild --help` and docs/admin-tools.md.

use std::process::ExitCode;

use piwheels_common::logging;
use piwheels_import::config::RebuildConfig;

fn main() -> ExitCode {
    let cfg: RebuildConfig = match piwheels_import::options("piw-rebuild") {
        Ok(cfg) => cfg,
        Err(code) => return code,
    };
    logging::init(&cfg.log);
    piwheels_import::finish("piw-rebuild", piwheels_import::rebuild::run(&cfg))
}
