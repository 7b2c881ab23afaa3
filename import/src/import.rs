//! piw-import: imports wheels built elsewhere as one build of one release.
//!
//! Every wheel is checked here first, as the builder checks its own (file-name grammar, zip
//! archive, the one METADATA of the right project and version, size and SHA-256), and all must
//! belong to one release. The master then checks the release and the ABI, and asks for each
//! file it does not hold yet; each is uploaded to its file socket with a progress bar, and the
//! build is recorded once every file is verified.

use piwheels_common::config::human_size;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use piwheels_common::inspect::parse_metadata;
use piwheels_common::keys::Role;
use piwheels_common::names::{canonicalize, parse_version};
use piwheels_common::protocols::{AdminReply, AdminRequest, ErrorKind, ImportRequest, WheelFile};
use piwheels_common::transport::Security;
use piwheels_common::upload::{UploadError, UploadOptions, UploadReport, upload_with_progress};
use piwheels_slave::inspect::inspect_wheel;

use crate::ToolError;
use crate::config::ImportConfig;
use crate::session::Session;

/// The build log recorded when none is given.
pub const DEFAULT_OUTPUT: &str = "Imported manually via piw-import";

/// A wheel checked and described.
#[derive(Debug, Clone)]
pub struct Wheel {
    /// Where it is.
    pub path: PathBuf,
    /// What it is.
    pub file: WheelFile,
}

/// Runs piw-import; prints a summary, a line per file and what the master recorded.
pub fn run(cfg: &ImportConfig) -> Result<(), ToolError> {
    let mut wheels = inspect_all(&cfg.files)?;
    let (name, version) = release(cfg, &wheels)?;
    let package = canonicalize(&name);
    check_release(&wheels, &package, &version)?;
    let abi = match &cfg.abi {
        Some(abi) => abi.clone(),
        None => builder_abi(&wheels[0].file).map_err(ToolError::Usage)?,
    };
    if let Some(path) = &cfg.dependencies {
        let apt = read_dependencies(path)?;
        for wheel in &mut wheels {
            wheel.file.dependencies.apt.clone_from(&apt);
        }
    }
    let output = match &cfg.output {
        Some(path) => std::fs::read_to_string(path).map_err(|e| ToolError::Failed(format!("cannot read the build log {}: {e}", path.display())))?,
        None => DEFAULT_OUTPUT.to_string(),
    };
    println!("Importing {package} {version} built for {abi}: {} file(s)", wheels.len());
    for wheel in &wheels {
        let file = &wheel.file;
        let requires = file.requires_python.as_deref().map(|r| format!(", Python {r}")).unwrap_or_default();
        println!("  {} ({}, sha256 {}{requires})", file.filename, human_size(file.size), &file.sha256[..16]);
    }

    // Before the session: a tool that cannot upload should not start an import.
    let file_security = cfg.connect.auth.security(&cfg.connect.file_queue, Role::Importer).map_err(|e| ToolError::Failed(e.to_string()))?;
    let session = Session::connect(&cfg.connect, "piw-import")?;
    if cfg.register {
        let add = AdminRequest::AddPackage { name: name.clone(), description: None, skip: None, unskip: false, aliases: vec![] };
        println!("{}", session.done(&add)?);
        let add = AdminRequest::AddVersion {
            name: name.clone(),
            version: version.clone(),
            released: None,
            skip: None,
            unskip: false,
            yank: false,
            unyank: false,
        };
        println!("{}", session.done(&add)?);
    }
    let request = ImportRequest {
        package: package.clone(),
        version: version.clone(),
        abi,
        duration: cfg.duration.0,
        output,
        files: wheels.iter().map(|w| w.file.clone()).collect(),
    };
    let mut sent = Vec::new();
    let mut reply = session.request(&AdminRequest::Import(request))?;
    let message = loop {
        match reply {
            AdminReply::Send { filename, transfer } => {
                let wheel = wheels
                    .iter()
                    .find(|w| w.file.filename == filename)
                    .ok_or_else(|| ToolError::Failed(format!("the master asked for {filename}, which is not one of ours")))?;
                send(&cfg.connect.file_queue, &file_security, transfer, wheel, cfg.connect.connect_timeout.0)?;
                sent.push(filename.clone());
                reply = session.request(&AdminRequest::Sent { filename })?;
            }
            AdminReply::Done { message } => break message,
            AdminReply::Error(error) => return Err(error.into()),
            other @ (AdminReply::Welcome { .. } | AdminReply::Pending { .. } | AdminReply::Triage(_)) => {
                return Err(ToolError::Failed(format!("unexpected answer from the master: {other:?}")));
            }
        }
    };
    for wheel in wheels.iter().filter(|w| !sent.contains(&w.file.filename)) {
        println!("  {}: the master holds it already", wheel.file.filename);
    }
    println!("{message}");
    if cfg.delete {
        let mut failed = Vec::new();
        for wheel in &wheels {
            if let Err(e) = std::fs::remove_file(&wheel.path) {
                failed.push(format!("{}: {e}", wheel.path.display()));
            }
        }
        if !failed.is_empty() {
            return Err(ToolError::Failed(format!("imported, but cannot delete {}", failed.join("; "))));
        }
    }
    Ok(())
}

/// Checks and describes every wheel; the first bad one fails with its reason.
pub fn inspect_all(paths: &[PathBuf]) -> Result<Vec<Wheel>, ToolError> {
    let mut wheels = Vec::with_capacity(paths.len());
    for path in paths {
        let file = inspect_wheel(path, None).map_err(|e| ToolError::Failed(e.to_string()))?;
        if wheels.iter().any(|w: &Wheel| w.file.filename == file.filename) {
            return Err(ToolError::Usage(format!("{} is given twice", file.filename)));
        }
        wheels.push(Wheel { path: path.clone(), file });
    }
    Ok(wheels)
}

/// The project's name (as spelled) and the version: from the options, else from the first
/// wheel's METADATA.
fn release(cfg: &ImportConfig, wheels: &[Wheel]) -> Result<(String, String), ToolError> {
    let first = &wheels[0].file;
    let core = parse_metadata(&first.metadata);
    let field = |name: &str, value: Option<String>| {
        value.ok_or_else(|| ToolError::Failed(format!("{}: its METADATA has no {name} (give --package and --package-version)", first.filename)))
    };
    let name = match &cfg.package {
        Some(name) => name.clone(),
        None => field("Name", core.name)?,
    };
    let version = match &cfg.package_version {
        Some(version) => version.clone(),
        None => field("Version", core.version)?,
    };
    Ok((name, version))
}

/// Checks that every wheel is a file of `package` `version`.
pub fn check_release(wheels: &[Wheel], package: &str, version: &str) -> Result<(), ToolError> {
    for wheel in wheels {
        let file = &wheel.file;
        if canonicalize(&file.package_tag) != package {
            return Err(ToolError::Failed(format!("{} is a wheel of {}, not of {package}", file.filename, canonicalize(&file.package_tag))));
        }
        if !same_version(&file.version_tag, version) {
            return Err(ToolError::Failed(format!("{} is a wheel of version {}, not {version}", file.filename, file.version_tag)));
        }
    }
    Ok(())
}

/// The ABI a wheel was built for, from its ABI tag; none when the tag does not say (`none`,
/// `abi3`, or several tags).
pub fn builder_abi(file: &WheelFile) -> Result<String, String> {
    let tag = &file.abi_tag;
    if tag == "none" || tag == "abi3" || tag.contains('.') {
        return Err(format!("cannot tell which ABI {} was built for (its ABI tag is {tag}): give --abi", file.filename));
    }
    Ok(tag.clone())
}

/// Whether a wheel's version tag names `version` (the same text, the same PEP 440 version, or
/// the same text once the file name's escaping is undone).
fn same_version(tag: &str, version: &str) -> bool {
    tag == version
        || tag == version.replace('-', "_")
        || parse_version(tag).is_some_and(|t| parse_version(version).is_some_and(|v| t == v))
}

/// Debian package names from a file, separated by white space, sorted without repeats.
fn read_dependencies(path: &Path) -> Result<Vec<String>, ToolError> {
    let text = std::fs::read_to_string(path).map_err(|e| ToolError::Failed(format!("cannot read {}: {e}", path.display())))?;
    let mut names: Vec<String> = text.split_whitespace().map(str::to_string).collect();
    for name in &names {
        let ok = name.len() >= 2
            && name.len() <= 100
            && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '+' | '-' | '.' | ':'));
        if !ok {
            return Err(ToolError::Failed(format!("{}: {name:?} is not a Debian package name", path.display())));
        }
    }
    names.sort();
    names.dedup();
    Ok(names)
}

/// What the upload thread reports.
enum Upload {
    /// The file juggler has this much of the file.
    Progress(u64),
    /// The upload ended.
    Finished(Result<UploadReport, UploadError>),
}

/// Uploads one wheel with a progress bar (shown only on a terminal), then says what was sent.
///
/// The upload runs on its own thread, with its own ZeroMQ context, so that a file socket that
/// never answers (a wrong `--file-queue`) is reported after `first_answer` instead of after the
/// upload's overall limit; the process then leaves without waiting for that thread.
fn send(endpoint: &str, security: &Security, transfer: u64, wheel: &Wheel, first_answer: Duration) -> Result<(), ToolError> {
    let size = wheel.file.size;
    let bar = ProgressBar::new(size);
    if let Ok(style) = ProgressStyle::with_template("  {msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(wheel.file.filename.clone());
    let started = Instant::now();
    let (tx, rx) = mpsc::channel();
    let (thread_endpoint, thread_security, path) = (endpoint.to_string(), security.clone(), wheel.path.clone());
    std::thread::spawn(move || {
        let ctx = zmq::Context::new();
        let progress = tx.clone();
        let outcome = upload_with_progress(&ctx, &thread_endpoint, &thread_security, transfer, &path, UploadOptions::default(), &mut |at| {
            let _ = progress.send(Upload::Progress(at));
        });
        let _ = tx.send(Upload::Finished(outcome));
    });
    let mut heard = false;
    let outcome = loop {
        let wait = if heard { Duration::from_secs(24 * 3600) } else { first_answer };
        match rx.recv_timeout(wait) {
            Ok(Upload::Progress(at)) => {
                heard = true;
                bar.set_position(at.min(size));
            }
            Ok(Upload::Finished(outcome)) => break outcome,
            Err(RecvTimeoutError::Timeout) if !heard => {
                bar.finish_and_clear();
                return Err(ToolError::Failed(format!(
                    "cannot send {}: the file socket at {endpoint} did not answer within {first_answer:?} (is --file-queue the master's file socket, as this host reaches it?)",
                    wheel.file.filename
                )));
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                bar.finish_and_clear();
                return Err(ToolError::Failed(format!("cannot send {}: the upload stopped unexpectedly", wheel.file.filename)));
            }
        }
    };
    bar.finish_and_clear();
    match outcome {
        Ok(report) => {
            println!("  sent {} ({} in {:.1} s)", wheel.file.filename, human_size(report.bytes_sent), started.elapsed().as_secs_f64());
            Ok(())
        }
        // The master's own failure (its disk, say) is worth trying again later.
        Err(e @ UploadError::Refused { kind: ErrorKind::Unavailable, .. }) => {
            Err(ToolError::Unavailable(format!("cannot send {} to {endpoint}: {e}", wheel.file.filename)))
        }
        Err(e) => Err(ToolError::Failed(format!("cannot send {} to {endpoint}: {e}", wheel.file.filename))),
    }
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builder_abi_comes_from_the_abi_tag_when_it_says() {
        let file = |abi: &str| piwheels_testsupport::data::wheel_file(&format!("foo-1.0-cp311-{abi}-linux_armv7l.whl"), b"x");
        assert_eq!(builder_abi(&file("cp311")), Ok("cp311".into()));
        for abi in ["none", "abi3", "cp311.cp312"] {
            assert!(builder_abi(&file(abi)).unwrap_err().contains("--abi"), "{abi}");
        }
    }

    #[test]
    fn dependencies_are_debian_package_names() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("deps");
        std::fs::write(&path, "libc6 libssl3\n  libc6\tzlib1g").unwrap();
        assert_eq!(read_dependencies(&path).unwrap(), ["libc6", "libssl3", "zlib1g"]);
        std::fs::write(&path, "libc6 ../etc").unwrap();
        assert!(read_dependencies(&path).is_err());
    }
}
