//! The served tree's side of the file juggler: what may be published for a build (names,
//! sizes, descriptions the database can hold), a wheel's description read from its own bytes,
//! and putting a verified file in place under `simple/<package>/` with its `.metadata` file.
//!
//! # What is synced, and why no more
//!
//! A published wheel costs three flushes to disk, four in a new package directory:
//!
//! 1. the partial file's data (`fdatasync`), once, before it is linked into the served tree:
//!    a published name must never point at bytes that are not on disk;
//! 2. the `.metadata` file's data, through a temporary file synced before it is renamed into
//!    place ([`crate::atomic_file`]), for the same reason;
//! 3. the package directory, once for both names (the `.metadata` rename and the wheel's
//!    link), before the verification is answered: the slave driver and the admin endpoint
//!    record a build only after that answer, so a recorded file is on disk. A new package
//!    directory is made durable in `simple/` first.
//!
//! A published file is never overwritten: the wheel is a hard link, which fails rather than
//! replace an existing name, and a name already published with other bytes is a conflict.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use piwheels_common::inspect::{self, WheelArchive};
use piwheels_common::names::{canonicalize, same_version};
use piwheels_common::protocols::{Dependencies, WheelFile};
use piwheels_common::provenance;
use piwheels_common::wheel::{MAX_FILENAME, WheelName};

use super::staging::{Part, remove_quietly};
use crate::atomic_file::{Durability, write_atomically};
use crate::calls::files::FileExpectation;
use crate::cross_check;

/// Longest side-file name: the file system's limit on one name.
const MAX_PUBLISHED_NAME: usize = 255;
/// Digits a build tag's number may have: its files rank above the same wheel's older ones by
/// that number, which must leave room for the next one.
const MAX_BUILD_NUMBER_DIGITS: usize = 9;
/// Suffix of the side file holding a wheel's METADATA (PEP 658).
const METADATA_SUFFIX: &str = ".metadata";

/// What is published already under a file's name.
pub(super) enum Published {
    /// Nothing.
    Nothing,
    /// The same bytes: the wheel's description read from the published file (its `.metadata`
    /// file written if it was missing), or why that wheel is not the build's.
    Same(Result<Box<WheelFile>, String>),
    /// Other bytes: why the file cannot be published.
    Conflict(String),
}

/// The served tree's `simple/` directory, where files are published.
#[derive(Debug, Clone)]
pub(super) struct Publisher {
    simple: PathBuf,
    max_file_size: u64,
}

impl Publisher {
    pub(super) fn new(simple: PathBuf, max_file_size: u64) -> Publisher {
        Publisher { simple, max_file_size }
    }

    fn dir(&self, package: &str) -> PathBuf {
        self.simple.join(package)
    }

    /// Why a file cannot be accepted for `package` as `expectation` describes the build, if it
    /// cannot: judged from its name and announced size and hash, before any byte is read.
    pub(super) fn validate(&self, package: &str, file: &WheelFile, expectation: &FileExpectation) -> Result<(), String> {
        let package_ok = !package.is_empty()
            && package.len() <= MAX_FILENAME
            && canonicalize(package) == package
            && package.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !package.starts_with('-')
            && !package.ends_with('-');
        if !package_ok {
            return Err(format!("{package:?} is not a canonical package name"));
        }
        let name = WheelName::parse(&file.filename).map_err(|e| e.to_string())?;
        check_name(&name, package, expectation)?;
        // The longest side file is the signed provenance the index writer puts beside it.
        let longest_suffix = METADATA_SUFFIX.len().max(provenance::SUFFIX.len());
        if file.filename.len() + longest_suffix > MAX_PUBLISHED_NAME {
            return Err(format!("{} is too long to publish its side files ({METADATA_SUFFIX}, {}) beside it", file.filename, provenance::SUFFIX));
        }
        if let Some(build) = &name.build
            && build.bytes().take_while(u8::is_ascii_digit).count() > MAX_BUILD_NUMBER_DIGITS
        {
            return Err(format!("{}: its build tag {build} has a number of more than {MAX_BUILD_NUMBER_DIGITS} digits", file.filename));
        }
        if file.size > self.max_file_size {
            return Err(format!("{} is {} bytes, more than the {} bytes this master accepts", file.filename, file.size, self.max_file_size));
        }
        if !is_sha256(&file.sha256) {
            return Err(format!("{:?} is not a SHA-256 in lower-case hex", file.sha256));
        }
        check_description(file)
    }

    /// What is published under `file`'s name, compared by size, then SHA-256.
    pub(super) fn find(&self, package: &str, file: &WheelFile, expectation: &FileExpectation) -> anyhow::Result<Published> {
        let path = self.dir(package).join(&file.filename);
        Ok(match same_contents(&path, file)? {
            None => Published::Nothing,
            Some(false) => Published::Conflict(conflict(&file.filename)),
            Some(true) => Published::Same(self.already_published(package, &path, file, expectation)?),
        })
    }

    /// A file published already with the announced bytes: its description read from the
    /// published wheel, its `.metadata` file written if it is missing; or why the published
    /// wheel is not the build's.
    fn already_published(
        &self,
        package: &str,
        path: &Path,
        file: &WheelFile,
        expectation: &FileExpectation,
    ) -> anyhow::Result<Result<Box<WheelFile>, String>> {
        let described = match describe(path, package, file, expectation) {
            Ok(described) => described,
            Err(reason) => return Ok(Err(format!("the published {}: {reason}", file.filename))),
        };
        let dir = self.dir(package);
        let metadata = metadata_path(&dir, &file.filename);
        if !metadata.exists() {
            write_atomically(&metadata, &described.metadata, Durability::DataSynced)?;
            sync_dir(&dir)?;
        }
        Ok(Ok(Box::new(described)))
    }

    /// Moves a verified file into the served tree: sync its data, `.metadata` beside it, link
    /// into place (never replacing), sync the directory.
    pub(super) fn publish(&self, package: &str, filename: &str, staged: &Path, part: &Part, metadata: &[u8]) -> anyhow::Result<()> {
        part.sync().context("cannot sync the received file")?;
        let dir = self.dir(package);
        if !dir.exists() {
            fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
            sync_dir(&self.simple)?;
        }
        let metadata_path = metadata_path(&dir, filename);
        write_atomically(&metadata_path, metadata, Durability::DataSynced)?;
        let target = dir.join(filename);
        if let Err(e) = fs::hard_link(staged, &target) {
            remove_quietly(&metadata_path);
            return Err(e).with_context(|| format!("cannot link {} into place", target.display()));
        }
        sync_dir(&dir)
    }

    /// What differs between the published file `published` of the package and a cross-check's
    /// verified file (see [`cross_check::compare`]). `Err` when they cannot be compared now:
    /// the name is not a file of the package, the published file is gone (the check is tried
    /// again, and forgotten after its attempts), or the master could not read a file.
    pub(super) fn compare(&self, package: &str, published: &str, rebuilt: (&Path, &str)) -> Result<Vec<String>, String> {
        if !WheelName::parse(published).is_ok_and(|name| name.is_for(package)) {
            return Err(format!("{published:?} is not a file of package {package:?}"));
        }
        let path = self.dir(package).join(published);
        if !path.is_file() {
            return Err(format!("{published} is not in the index"));
        }
        cross_check::compare((&path, published), rebuilt).map(cross_check::bounded)
    }

    /// Removes a published file and its `.metadata` file; true when it was there. The name is
    /// checked to be a file of the package first.
    pub(super) fn remove(&self, package: &str, filename: &str) -> anyhow::Result<Result<bool, String>> {
        let name_ok = WheelName::parse(filename).is_ok_and(|name| name.is_for(package)) && canonicalize(package) == package;
        if !name_ok {
            return Ok(Err(format!("{filename:?} is not a file of package {package:?}")));
        }
        let dir = self.dir(package);
        let path = dir.join(filename);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Ok(false)),
            Err(e) => return Err(e).with_context(|| format!("cannot remove {}", path.display())),
        }
        remove_quietly(&metadata_path(&dir, filename));
        sync_dir(&dir)?;
        Ok(Ok(true))
    }
}

fn metadata_path(dir: &Path, filename: &str) -> PathBuf {
    dir.join(format!("{filename}{METADATA_SUFFIX}"))
}

fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).with_context(|| format!("cannot sync {}", dir.display()))
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Whether `path` holds the file `file` describes: None when nothing is there, Some(false)
/// when something else is (compared by size, then SHA-256).
fn same_contents(path: &Path, file: &WheelFile) -> anyhow::Result<Option<bool>> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", path.display())),
    };
    if !meta.is_file() || meta.len() != file.size {
        return Ok(Some(false));
    }
    let (_, sha256) = File::open(path).and_then(|mut f| inspect::hash(&mut f)).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(Some(sha256 == file.sha256))
}

/// Refuses descriptions the database cannot record (its column sizes), so that a file is
/// never published for a build that then cannot be recorded.
fn check_description(file: &WheelFile) -> Result<(), String> {
    let tags = [
        ("distribution", file.package_tag.as_str(), 200),
        ("version", &file.version_tag, 200),
        ("build tag", file.build_tag.as_deref().unwrap_or(""), 100),
        ("python tag", &file.py_tag, 100),
        ("ABI tag", &file.abi_tag, 100),
        ("platform tag", &file.platform_tag, 100),
        ("Requires-Python", file.requires_python.as_deref().unwrap_or(""), 200),
    ];
    for (what, value, limit) in tags {
        if value.chars().count() > limit {
            return Err(format!("{}: its {what} is longer than {limit} characters", file.filename));
        }
    }
    let deps = &file.dependencies;
    if let Some(long) = deps.apt.iter().chain(&deps.pip).chain(&deps.unresolved).find(|d| d.chars().count() > 255) {
        return Err(format!("{}: dependency {long:?} is longer than 255 characters", file.filename));
    }
    Ok(())
}

/// Why a file cannot be published under its name.
fn conflict(filename: &str) -> String {
    format!("{filename} is already published with different contents; a published file is never overwritten with different bytes")
}

/// Why a wheel's name does not belong to the build `expectation` describes, if it does not:
/// another package or version, an ABI tag other than the build's (or `abi3`, `none`), or a
/// platform tag the builder cannot have made.
fn check_name(name: &WheelName, package: &str, expectation: &FileExpectation) -> Result<(), String> {
    let filename = || format!("{}-{}-…-{}-{}-{}.whl", name.name, name.version, name.python, name.abi, name.platform);
    if !name.is_for(package) {
        return Err(format!("{} is not a file of package {package}", filename()));
    }
    if !same_version(&name.version, &expectation.version) {
        return Err(format!("{} is version {}, not {} that was built", filename(), name.version, expectation.version));
    }
    if let Some(abi) = name.abi.split('.').find(|abi| !matches!(*abi, "abi3" | "none") && *abi != expectation.abi) {
        return Err(format!("{} has ABI tag {abi}; a build for {} makes {}, abi3 or none", filename(), expectation.abi, expectation.abi));
    }
    if !expectation.platform.is_empty() {
        let machine = expectation.platform.strip_prefix("linux_").unwrap_or(&expectation.platform);
        let allowed = |tag: &str| {
            tag == "any"
                || tag == expectation.platform
                || ((tag.starts_with("manylinux") || tag.starts_with("musllinux")) && tag.strip_suffix(machine).is_some_and(|rest| rest.ends_with('_')))
        };
        if let Some(tag) = name.platform.split('.').find(|tag| !allowed(tag)) {
            return Err(format!("{} has platform tag {tag}; a builder on {} makes {}, any, or a manylinux or musllinux tag of {machine}", filename(), expectation.platform, expectation.platform));
        }
    }
    Ok(())
}

/// Reads the wheel at `path` (the bytes announced as `file`, already verified) and describes
/// it from its own contents: tags from its name, METADATA and what the farm keeps of it from
/// its archive, which must name the package and version. Only the Debian dependencies, which
/// the builder found by linking the wheel's libraries on its own system, are the sender's.
pub(super) fn describe(path: &Path, package: &str, file: &WheelFile, expectation: &FileExpectation) -> Result<WheelFile, String> {
    let opened = File::open(path).map_err(|e| format!("cannot read {}: {e}", file.filename))?;
    let mut archive = WheelArchive::open(opened, &file.filename, Path::new(&file.filename)).map_err(|e| e.to_string())?;
    let metadata = archive.metadata(inspect::Limits::default().metadata).map_err(|e| e.to_string())?;
    let core = inspect::parse_metadata(&metadata);
    match core.name.as_deref() {
        Some(name) if canonicalize(name) == package => {}
        other => return Err(format!("{}: its METADATA names project {other:?}, not {package}", file.filename)),
    }
    match core.version.as_deref() {
        Some(version) if same_version(version, &expectation.version) => {}
        other => return Err(format!("{}: its METADATA names version {other:?}, not {}", file.filename, expectation.version)),
    }
    let described = WheelFile {
        size: file.size,
        sha256: file.sha256.clone(),
        requires_python: core.requires_python,
        dependencies: Dependencies { apt: file.dependencies.apt.clone(), pip: core.requirements, unresolved: file.dependencies.unresolved.clone() },
        metadata: metadata.into(),
        ..WheelFile::named(&file.filename, archive.name().clone())
    };
    check_description(&described)?;
    Ok(described)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_the_database_cannot_hold_are_refused() {
        let good = piwheels_testsupport::data::wheel_file("foo-1.0-py3-none-any.whl", b"x");
        assert_eq!(check_description(&good), Ok(()));
        let mut long_python = good.clone();
        long_python.requires_python = Some(">=3".repeat(100));
        assert!(check_description(&long_python).unwrap_err().contains("Requires-Python"));
        let mut long_dependency = good.clone();
        long_dependency.dependencies.unresolved = vec![format!("/usr/local/lib/{}.so", "x".repeat(300))];
        assert!(check_description(&long_dependency).unwrap_err().contains("dependency"));
    }

    #[test]
    fn wheel_names_must_belong_to_their_build() {
        let build = FileExpectation { version: "1.0".into(), abi: "cp311".into(), platform: "linux_armv7l".into(), uploader: None };
        let check = |filename: &str| check_name(&WheelName::parse(filename).unwrap(), "foo", &build);
        for good in [
            "foo-1.0-py3-none-any.whl",
            "foo-1.0.0-cp311-cp311-linux_armv7l.whl",
            "Foo-1.0-cp39-abi3-linux_armv7l.whl",
            "foo-1.0-cp311-cp311-manylinux_2_17_armv7l.manylinux2014_armv7l.whl",
            "foo-1.0-cp311-cp311-musllinux_1_1_armv7l.whl",
            "foo-1.0-1-py2.py3-none-any.whl",
        ] {
            assert_eq!(check(good), Ok(()), "{good}");
        }
        for (bad, why) in [
            ("bar-1.0-py3-none-any.whl", "not a file of package foo"),
            ("foo-1.1-py3-none-any.whl", "version 1.1"),
            ("foo-1.0-cp312-cp312-linux_armv7l.whl", "ABI tag cp312"),
            ("foo-1.0-cp311-cp311.cp312-linux_armv7l.whl", "ABI tag cp312"),
            ("foo-1.0-cp311-cp311-linux_aarch64.whl", "platform tag linux_aarch64"),
            ("foo-1.0-cp311-cp311-manylinux_2_17_x86_64.whl", "platform tag manylinux_2_17_x86_64"),
            ("foo-1.0-cp311-cp311-win_armv7l.whl", "platform tag win_armv7l"),
            ("foo-1.0-cp311-cp311-manylinux_2_17_xarmv7l.whl", "platform tag manylinux_2_17_xarmv7l"),
        ] {
            let reason = check(bad).unwrap_err();
            assert!(reason.contains(why), "{bad}: {reason}");
        }
        let import = FileExpectation { platform: String::new(), ..build };
        assert_eq!(
            check_name(&WheelName::parse("foo-1.0-cp311-cp311-linux_aarch64.whl").unwrap(), "foo", &import),
            Ok(()),
            "an import's platform is not checked"
        );
    }
}
