//! Wheel inspection: what the builder reports about each wheel a build produced.
//!
//! [`inspect_wheel`] hashes the file, reads its tags from the file name, checks the archive and
//! reads its `METADATA` (with [`piwheels_common::inspect`], as the master does again on
//! receipt), and, given an [`AptIndex`], finds the Debian packages its shared objects link
//! against. Shared objects are extracted only into a fresh private directory, through paths
//! built from checked components, as new regular files, and no more bytes of them than
//! [`Limits::extracted`].

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{self, Read, Seek, Write};
use std::path::Path;

pub use piwheels_common::inspect::{InspectError, Limits};
use piwheels_common::inspect::{WheelArchive, hash, parse_metadata};
use piwheels_common::protocols::{Dependencies, WheelFile};
use serde_bytes::ByteBuf;

use crate::apt::{AptIndex, is_shared_library_name};

/// The first bytes of every ELF file.
const ELF_MAGIC: [u8; 4] = *b"\x7fELF";

/// Describes the wheel at `path`, with the default [`Limits`]. With `apt`, the wheel's shared
/// objects are extracted beside it (in a temporary directory removed before returning) and
/// their libraries looked up; without, the apt dependencies are left empty.
pub fn inspect_wheel(path: &Path, apt: Option<&AptIndex>) -> Result<WheelFile, InspectError> {
    inspect_wheel_limited(path, apt, Limits::default())
}

/// [`inspect_wheel`] with the caps given.
pub fn inspect_wheel_limited(path: &Path, apt: Option<&AptIndex>, limits: Limits) -> Result<WheelFile, InspectError> {
    let io_error = |source| InspectError::Io { file: path.to_path_buf(), source };
    let filename = path.file_name().and_then(OsStr::to_str).ok_or_else(|| InspectError::NoFileName { file: path.to_path_buf() })?;
    let mut wheel = File::open(path).map_err(io_error)?;
    let (size, sha256) = hash(&mut wheel).map_err(io_error)?;
    wheel.rewind().map_err(io_error)?;
    let mut archive = WheelArchive::open(wheel, filename, path)?;
    let metadata = archive.metadata(limits.metadata)?;
    let core = parse_metadata(&metadata);
    let (apt_packages, unresolved) = match apt {
        Some(apt) => shared_object_dependencies(path, &mut archive, apt, limits.extracted)?,
        None => (Vec::new(), Vec::new()),
    };
    Ok(WheelFile {
        size,
        sha256,
        requires_python: core.requires_python,
        dependencies: Dependencies { apt: apt_packages, pip: core.requirements, unresolved },
        metadata: ByteBuf::from(metadata),
        ..WheelFile::named(filename, archive.name().clone())
    })
}

/// Extracts every ELF entry whose file name is a shared library's (`*.so`, `*.so.N`) into a
/// temporary directory beside the wheel, keeping its place in the archive's tree (so that
/// libraries found through `$ORIGIN` are the wheel's own), and asks `apt` what they need.
fn shared_object_dependencies<R: Read + Seek>(
    path: &Path,
    wheel: &mut WheelArchive<R>,
    apt: &AptIndex,
    limit: u64,
) -> Result<(Vec<String>, Vec<String>), InspectError> {
    let io_error = |source| InspectError::Io { file: path.to_path_buf(), source };
    let beside = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let scratch = tempfile::Builder::new().prefix(".inspect-").tempdir_in(beside).map_err(io_error)?;
    let mut extracted = Vec::new();
    let mut budget = limit;
    let entries = wheel.entries().to_vec();
    let archive = wheel.archive();
    for (index, entry) in entries.iter().enumerate() {
        let base = entry.rsplit('/').next().unwrap_or(entry);
        if !is_shared_library_name(base.as_bytes()) {
            continue;
        }
        let bad_entry = |source| InspectError::BadEntry { file: path.to_path_buf(), entry: entry.clone(), source };
        let mut reader = archive.by_index(index).map_err(|e| bad_entry(e.into()))?;
        if !reader.is_file() {
            continue;
        }
        let mut head = Vec::with_capacity(ELF_MAGIC.len());
        reader.by_ref().take(ELF_MAGIC.len() as u64).read_to_end(&mut head).map_err(bad_entry)?;
        if head != ELF_MAGIC {
            continue;
        }
        let target = entry.split('/').filter(|part| !part.is_empty() && *part != ".").fold(scratch.path().to_path_buf(), |p, part| p.join(part));
        // Fails on names that clash once extracted (`a//b.so` and `a/b.so`, or `a.so` and
        // `a.so/b.so`): never overwrite or follow anything already there.
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(bad_entry)?;
        }
        let mut out = File::create_new(&target).map_err(bad_entry)?;
        out.write_all(&head).map_err(bad_entry)?;
        let allowed = budget.saturating_sub(head.len() as u64);
        let copied = io::copy(&mut reader.by_ref().take(allowed.saturating_add(1)), &mut out).map_err(bad_entry)?;
        if copied > allowed {
            return Err(InspectError::ExtractionTooLarge { file: path.to_path_buf(), limit });
        }
        budget = allowed - copied;
        extracted.push(target);
    }
    Ok(if extracted.is_empty() { (Vec::new(), Vec::new()) } else { apt.dependencies(&extracted) })
}
