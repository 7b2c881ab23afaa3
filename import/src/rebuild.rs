//! piw-rebuild: asks the master to rewrite the home page, the search index, or the pages of
//! one project or of all (after confirmation), to build one release again, or to cross-check
//! one. Success means the build or the cross-check is queued; pages are waited for, with a
//! progress bar, until they are written (unless `--no-wait`).

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use piwheels_common::config::HumanDuration;
use piwheels_common::protocols::{AdminReply, AdminRequest, RebuildTarget};

use crate::ToolError;
use crate::config::{Part, RebuildConfig};
use crate::prompt::confirm;
use crate::session::Session;

/// Runs piw-rebuild; prints what the master queued.
pub fn run(cfg: &RebuildConfig) -> Result<(), ToolError> {
    if !matches!(cfg.part, Part::Build | Part::CrossCheck) {
        if let Some(version) = &cfg.package_version {
            return Err(ToolError::Usage(format!("{version}: only build and cross-check take a version")));
        }
        if cfg.abi.is_some() {
            return Err(ToolError::Usage("--abi: only build and cross-check take an ABI".into()));
        }
    }
    let target = match (cfg.part, &cfg.package) {
        (Part::Home | Part::Search, Some(package)) => {
            return Err(ToolError::Usage(format!("{package}: only project, index, build and cross-check take a package")));
        }
        (Part::Home, None) => RebuildTarget::Home,
        (Part::Search, None) => RebuildTarget::Search,
        (Part::Project, package) => RebuildTarget::Project(package.clone()),
        (Part::Index, package) => RebuildTarget::Both(package.clone()),
        (Part::Build, package) => match (package, &cfg.package_version) {
            (Some(package), Some(version)) => RebuildTarget::Release { package: package.clone(), version: version.clone(), abi: cfg.abi.clone() },
            _ => return Err(ToolError::Usage("build needs a PACKAGE and a VERSION".into())),
        },
        (Part::CrossCheck, package) => match (package, &cfg.package_version) {
            (Some(package), Some(version)) => RebuildTarget::CrossCheck { package: package.clone(), version: version.clone(), abi: cfg.abi.clone() },
            _ => return Err(ToolError::Usage("cross-check needs a PACKAGE and a VERSION".into())),
        },
    };
    let session = Session::connect(&cfg.connect, "piw-rebuild")?;
    if matches!(target, RebuildTarget::Project(None) | RebuildTarget::Both(None)) {
        confirm("This rewrites the pages of every package, which takes a long time on a large index. Go ahead?", cfg.yes)?;
    }
    let pages = matches!(target, RebuildTarget::Project(_) | RebuildTarget::Both(_));
    println!("{}", session.done(&AdminRequest::Rebuild(target))?);
    if pages && !cfg.no_wait {
        wait_for_pages(&session, cfg.give_up_after.0)?;
    }
    Ok(())
}

/// How often the master is asked how many rewrites are left.
const POLL: Duration = Duration::from_millis(500);

/// Waits until every page rewrite queued until now is written, showing how many are left.
/// Gives up, saying so, when the master cannot say (it restarted, say) or the count has not
/// moved for `stall` (a page the index writer cannot write is tried again every few seconds,
/// for as long as it takes); the pages are written all the same.
fn wait_for_pages(session: &Session, stall: Duration) -> Result<(), ToolError> {
    let pending = || {
        let answer = match session.request(&AdminRequest::RewritesPending)? {
            AdminReply::Pending { packages } => Ok(packages),
            AdminReply::Error(error) => Err(ToolError::from(error)),
            other => Err(ToolError::Failed(format!("unexpected answer from the master: {other:?}"))),
        };
        answer.map_err(|e| ToolError::Failed(format!("cannot follow the rewrite ({e}); the pages are still written: run the rebuild again to wait for them")))
    };
    let first = pending()?;
    let bar = ProgressBar::new(first);
    if let Ok(style) = ProgressStyle::with_template("  writing pages [{bar:30}] {pos}/{len} packages {eta}") {
        bar.set_style(style.progress_chars("=> "));
    }
    let mut left = first;
    let mut moved = std::time::Instant::now();
    while left > 0 {
        std::thread::sleep(POLL);
        let now = pending()?;
        if now < left {
            moved = std::time::Instant::now();
        } else if moved.elapsed() >= stall {
            bar.abandon();
            return Err(ToolError::Failed(format!(
                "{now} package(s)' pages have not been written for {}: see the master's log (they are tried again until they are)",
                HumanDuration(stall)
            )));
        }
        left = now;
        // More may have been queued meanwhile (another rebuild, new builds).
        bar.set_length(bar.length().unwrap_or(0).max(left));
        bar.set_position(bar.length().unwrap_or(0) - left);
    }
    bar.finish_and_clear();
    println!("every page asked for is written ({first} package(s))");
    Ok(())
}
