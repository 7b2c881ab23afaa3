//! piw-add: adds a package or a version to the farm's database, or updates one (description,
//! aliases, skip and unskip, yank and unyank).

use piwheels_common::names::canonicalize;
use piwheels_common::protocols::AdminRequest;

use crate::ToolError;
use crate::config::AddConfig;
use crate::session::Session;

/// Runs piw-add; prints what the master did.
pub fn run(cfg: &AddConfig) -> Result<(), ToolError> {
    let package = canonicalize(&cfg.package);
    for alias in &cfg.aliases {
        if canonicalize(alias) != package {
            return Err(ToolError::Usage(format!(
                "alias {alias} does not match the package: its canonical name is {}, not {package}",
                canonicalize(alias)
            )));
        }
    }
    let session = Session::connect(&cfg.connect, "piw-add")?;
    let Some(version) = &cfg.version else {
        let request = AdminRequest::AddPackage {
            name: cfg.package.clone(),
            description: cfg.description.clone(),
            skip: cfg.skip.clone(),
            unskip: cfg.unskip,
            aliases: cfg.aliases.clone(),
        };
        println!("{}", session.done(&request)?);
        return Ok(());
    };
    // The package first, so that `piw-add NAME VERSION` works for a package the farm does
    // not know yet; for a known one it only applies the description and aliases, if any.
    let request = AdminRequest::AddPackage {
        name: cfg.package.clone(),
        description: cfg.description.clone(),
        skip: None,
        unskip: false,
        aliases: cfg.aliases.clone(),
    };
    let said = session.done(&request)?;
    if !said.contains("nothing changed") {
        println!("{said}");
    }
    let request = AdminRequest::AddVersion {
        name: cfg.package.clone(),
        version: version.clone(),
        released: cfg.released,
        skip: cfg.skip.clone(),
        unskip: cfg.unskip,
        yank: cfg.yank,
        unyank: cfg.unyank,
    };
    println!("{}", session.done(&request)?);
    Ok(())
}
