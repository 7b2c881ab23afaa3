//! piw-add: adds a package or a version to the farm's database, or updates one (description,
//! aliases, skip and unskip, yank and unyank); with `--with-deps`, also the releases the
//! version's dependencies resolve to on the farm's ABIs ([`crate::deps`]).

use piwheels_common::names::canonicalize;
use piwheels_common::protocols::AdminRequest;

use crate::ToolError;
use crate::config::AddConfig;
use crate::deps::{self, JsonIndex, Limits};
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
    let index = if cfg.with_deps { Some(index_root(cfg)?) } else { None };
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
    let package = AdminRequest::AddPackage {
        name: cfg.package.clone(),
        description: cfg.description.clone(),
        skip: None,
        unskip: false,
        aliases: cfg.aliases.clone(),
    };
    let release = AdminRequest::AddVersion {
        name: cfg.package.clone(),
        version: version.clone(),
        released: cfg.released,
        skip: cfg.skip.clone(),
        unskip: cfg.unskip,
        yank: cfg.yank,
        unyank: cfg.unyank,
    };
    match index {
        None => register(&session, &package, &release, ""),
        Some(root) => with_deps(cfg, &session, version, &root, &package, &release),
    }
}

/// Sends a release's two requests, package then version, printing what the master did (but
/// not that a known package is unchanged), each line after `indent`.
fn register(session: &Session, package: &AdminRequest, version: &AdminRequest, indent: &str) -> Result<(), ToolError> {
    let said = session.done(package)?;
    if !said.contains("nothing changed") {
        println!("{indent}{said}");
    }
    println!("{indent}{}", session.done(version)?);
    Ok(())
}

/// The index's JSON API root for `--with-deps`: required, and an http(s) URL.
fn index_root(cfg: &AddConfig) -> Result<String, ToolError> {
    let root = cfg.connect.pypi_json.as_deref().ok_or_else(|| {
        ToolError::Usage("--with-deps reads the index's JSON API: give its root with --pypi-json URL (or pypi-json in the [import] table)".into())
    })?;
    match reqwest::Url::parse(root) {
        Ok(url) if matches!(url.scheme(), "http" | "https") => Ok(root.to_string()),
        _ => Err(ToolError::Usage(format!("--pypi-json {root:?} is not an http or https URL"))),
    }
}

/// Resolves the version's dependencies on the farm's ABIs, then registers every release the
/// resolution found, the one named first with the operator's options, saying why each was
/// added, and lists what could not be resolved.
fn with_deps(cfg: &AddConfig, session: &Session, version: &str, root: &str, package: &AdminRequest, release: &AdminRequest) -> Result<(), ToolError> {
    let limits = Limits::new(cfg.max_releases as usize, cfg.max_depth as usize);
    let mut index = JsonIndex::new(root, limits.documents).map_err(|e| ToolError::Failed(format!("cannot make an HTTP client: {e}")))?;
    println!("resolving the dependencies of {} {version} for {} from {}", cfg.package, session.abis().join(", "), index.root());
    let resolution = deps::resolve(&mut index, &cfg.package, version, session.abis(), &limits).map_err(|e| ToolError::Failed(e.to_string()))?;
    for (i, added) in resolution.added.iter().enumerate() {
        if i == 0 {
            println!("{} {}: asked for", added.name, added.version);
            register(session, package, release, "  ")?;
            continue;
        }
        let reasons: Vec<String> = added.reasons.iter().map(ToString::to_string).collect();
        println!("{} {}: {}", added.name, added.version, reasons.join("; "));
        let package = AdminRequest::AddPackage { name: added.name.clone(), description: None, skip: None, unskip: false, aliases: Vec::new() };
        let version = AdminRequest::AddVersion {
            name: added.name.clone(),
            version: added.version.clone(),
            released: None,
            skip: None,
            unskip: false,
            yank: false,
            unyank: false,
        };
        register(session, &package, &version, "  ")?;
    }
    if !resolution.unresolved.is_empty() {
        println!("not resolved:");
        for unresolved in &resolution.unresolved {
            println!("  {unresolved}");
        }
        if resolution.unresolved_cut {
            println!("  ... and more, not listed (the list stops at {})", deps::MAX_UNRESOLVED);
        }
    }
    let unresolved = match resolution.unresolved.len() {
        0 => String::new(),
        n => format!("; {n} not resolved (listed above)"),
    };
    println!("{} release(s) registered{unresolved}", resolution.added.len());
    Ok(())
}
