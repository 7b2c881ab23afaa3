//! piw-remove: removes a package or a version with its builds and files, or only its builds
//! and files (optionally skipping it so that it is not built again), or yanks a version;
//! asks for confirmation first unless `--yes`.

use piwheels_common::protocols::AdminRequest;

use crate::ToolError;
use crate::config::RemoveConfig;
use crate::prompt::confirm;
use crate::session::Session;

/// Runs piw-remove; prints what the master did.
pub fn run(cfg: &RemoveConfig) -> Result<(), ToolError> {
    if cfg.skip.as_deref().is_some_and(|s| s.trim().is_empty()) {
        return Err(ToolError::Usage("the skip reason must not be empty".into()));
    }
    let what = match &cfg.version {
        Some(version) => format!("version {} {version}", cfg.package),
        None => format!("package {}", cfg.package),
    };
    let question = if cfg.yank {
        format!("Yank {what}?")
    } else if let Some(reason) = &cfg.skip {
        format!("Remove every build and file of {what} and skip it ({reason})?")
    } else if cfg.builds {
        format!("Remove every build and file of {what} (it will be built again)?")
    } else if cfg.version.is_some() {
        format!("Remove {what} with all its builds and files?")
    } else {
        format!("Remove {what} with all its versions, builds and files?")
    };
    let session = Session::connect(&cfg.connect, "piw-remove")?;
    confirm(&question, cfg.yes)?;
    let request = match &cfg.version {
        Some(version) => AdminRequest::RemoveVersion {
            name: cfg.package.clone(),
            version: version.clone(),
            builds_only: cfg.builds,
            skip: cfg.skip.clone(),
            yank: cfg.yank.then(|| cfg.yank_reason.clone().unwrap_or_default()),
        },
        None => AdminRequest::RemovePackage { name: cfg.package.clone(), builds_only: cfg.builds, skip: cfg.skip.clone() },
    };
    println!("{}", session.done(&request)?);
    Ok(())
}
