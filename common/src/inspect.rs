//! Reading a wheel's archive, on the builder that made it and on the master that receives it:
//! its entry names checked, its one `*.dist-info/METADATA` found and read, and the facts the
//! farm keeps taken from it.
//!
//! A wheel is the output of a build of arbitrary code from PyPI, so its archive is treated as
//! hostile: every entry name is checked (no absolute paths, no `..`, no NUL, no duplicates)
//! before anything is read, and sizes declared in the archive are ignored and reads capped
//! instead ([`Limits`]).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, Read, Seek};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use zip::ZipArchive;
use zip::result::ZipError;

use crate::names::{canonicalize, parse_version};
use crate::wheel::{BadWheelName, WheelName};

/// The longest requirement name kept as a pip dependency (the `dependencies.dependency`
/// column's size); longer names are dropped.
pub const MAX_REQUIREMENT_NAME: usize = 255;

/// Caps on what a wheel may make the inspector read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest `METADATA` accepted, in bytes (default 16 MiB; real ones are a few KiB, or a
    /// few hundred KiB with a long description).
    pub metadata: u64,
    /// Largest total of shared-object bytes extracted for `ldd` (default 2 GiB, beyond the
    /// biggest real wheels): a bound on the disk a zip bomb can fill.
    pub extracted: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { metadata: 16 << 20, extracted: 2 << 30 }
    }
}

/// Why a wheel was refused. Every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// The path has no file name, or one that is not UTF-8.
    #[error("{}: the file name is missing or not UTF-8", .file.display())]
    NoFileName {
        /// The wheel.
        file: PathBuf,
    },
    /// The file name does not follow the wheel grammar.
    #[error("{}: {source}", .file.display())]
    BadName {
        /// The wheel.
        file: PathBuf,
        /// What is wrong with the name.
        source: BadWheelName,
    },
    /// Reading the file, or working in the extraction directory, failed.
    #[error("{}: {source}", .file.display())]
    Io {
        /// The wheel.
        file: PathBuf,
        /// The failure.
        source: io::Error,
    },
    /// The file is not a readable zip archive.
    #[error("{}: not a zip archive: {source}", .file.display())]
    NotZip {
        /// The wheel.
        file: PathBuf,
        /// What the zip reader found.
        source: ZipError,
    },
    /// An entry name could escape the directory the wheel is installed into, or is unusable.
    #[error("{}: entry {entry:?} {reason}", .file.display())]
    HostileEntry {
        /// The wheel.
        file: PathBuf,
        /// The entry's name, as the archive spells it.
        entry: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Two entries have the same name, so different tools would see different contents.
    #[error("{}: the archive holds several entries of the same name", .file.display())]
    DuplicateEntries {
        /// The wheel.
        file: PathBuf,
    },
    /// No top-level `*.dist-info/METADATA`.
    #[error("{}: no *.dist-info/METADATA in the archive", .file.display())]
    MissingMetadata {
        /// The wheel.
        file: PathBuf,
    },
    /// More than one top-level `*.dist-info/METADATA`.
    #[error("{}: more than one *.dist-info/METADATA: {}", .file.display(), .found.join(", "))]
    SeveralMetadata {
        /// The wheel.
        file: PathBuf,
        /// The entries found.
        found: Vec<String>,
    },
    /// The one `METADATA` is in the dist-info directory of another distribution or version.
    #[error("{}: {found} is not the metadata of {name} {version}", .file.display())]
    ForeignMetadata {
        /// The wheel.
        file: PathBuf,
        /// The entry found.
        found: String,
        /// The distribution named by the file name.
        name: String,
        /// The version named by the file name.
        version: String,
    },
    /// An entry could not be read (unsupported compression, encryption, corrupt data, a
    /// checksum mismatch).
    #[error("{}: cannot read entry {entry:?}: {source}", .file.display())]
    BadEntry {
        /// The wheel.
        file: PathBuf,
        /// The entry.
        entry: String,
        /// What went wrong.
        source: io::Error,
    },
    /// `METADATA` is larger than [`Limits::metadata`].
    #[error("{}: {entry} is larger than {limit} bytes", .file.display())]
    MetadataTooLarge {
        /// The wheel.
        file: PathBuf,
        /// The entry.
        entry: String,
        /// The limit.
        limit: u64,
    },
    /// The shared objects (or, when a wheel's contents are compared, all its members) add up
    /// to more than [`Limits::extracted`].
    #[error("{}: the contents exceed {limit} bytes when extracted", .file.display())]
    ExtractionTooLarge {
        /// The wheel.
        file: PathBuf,
        /// The limit.
        limit: u64,
    },
}

/// What the farm keeps of a wheel's METADATA headers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CoreMetadata {
    /// `Name`, as written.
    pub name: Option<String>,
    /// `Version`, as written.
    pub version: Option<String>,
    /// `Requires-Python`.
    pub requires_python: Option<String>,
    /// Canonical names of the unconditional `Requires-Dist` entries, sorted, without repeats.
    pub requirements: Vec<String>,
    /// Every `Requires-Dist` entry as written (markers included), in order.
    pub requires_dist: Vec<String>,
    /// `Summary`, the one-line description.
    pub summary: Option<String>,
    /// The project's own links as `(label, url)`, as written: `Home-page` (labelled
    /// "Homepage") first, then each `Project-URL`.
    pub urls: Vec<(String, String)>,
}

/// A wheel's zip archive, opened and with every entry name checked.
#[derive(Debug)]
pub struct WheelArchive<R> {
    path: PathBuf,
    name: WheelName,
    archive: ZipArchive<R>,
    entries: Vec<String>,
}

impl WheelArchive<BufReader<File>> {
    /// Opens the wheel `filename` whose bytes are in `file` (`path` names it in errors): checks
    /// the file name, reads the archive's directory and refuses duplicate or hostile entry
    /// names.
    pub fn open(file: File, filename: &str, path: &Path) -> Result<Self, InspectError> {
        let name = WheelName::parse(filename).map_err(|source| InspectError::BadName { file: path.to_path_buf(), source })?;
        let archive = ZipArchive::new(BufReader::new(file)).map_err(|source| InspectError::NotZip { file: path.to_path_buf(), source })?;
        WheelArchive::checked(path, name, archive)
    }
}

impl<R: Read + Seek> WheelArchive<R> {
    fn checked(path: &Path, name: WheelName, archive: ZipArchive<R>) -> Result<Self, InspectError> {
        let file = || path.to_path_buf();
        if archive.has_duplicate_names() {
            return Err(InspectError::DuplicateEntries { file: file() });
        }
        let mut entries = Vec::with_capacity(archive.len());
        for index in 0..archive.len() {
            let entry = match archive.name_for_index(index) {
                Some(Ok(entry)) => entry.into_owned(),
                Some(Err(source)) => return Err(InspectError::NotZip { file: file(), source }),
                None => return Err(InspectError::NotZip { file: file(), source: ZipError::FileNotFound }),
            };
            if let Err(reason) = check_entry_name(&entry) {
                return Err(InspectError::HostileEntry { file: file(), entry, reason });
            }
            entries.push(entry);
        }
        Ok(WheelArchive { path: path.to_path_buf(), name, archive, entries })
    }

    /// The parsed file name.
    pub fn name(&self) -> &WheelName {
        &self.name
    }

    /// Every entry's name, in the archive's order.
    pub fn entries(&self) -> &[String] {
        &self.entries
    }

    /// The zip archive, to read entries from.
    pub fn archive(&mut self) -> &mut ZipArchive<R> {
        &mut self.archive
    }

    /// Each file entry's lower-case hex SHA-256 of its contents (directories left out), by
    /// name: what a wheel holds, whatever its zip timestamps, order or compression; and the
    /// bytes they hold in all. Reading stops with [`InspectError::ExtractionTooLarge`] past
    /// `limit` bytes in all.
    pub fn member_digests(&mut self, limit: u64) -> Result<(BTreeMap<String, String>, u64), InspectError> {
        let mut digests = BTreeMap::new();
        let mut left = limit;
        for (index, entry) in self.entries.iter().enumerate() {
            if entry.ends_with('/') {
                continue;
            }
            let bad_entry = |source| InspectError::BadEntry { file: self.path.clone(), entry: entry.clone(), source };
            let reader = self.archive.by_index(index).map_err(|e| bad_entry(e.into()))?;
            let mut hasher = Sha256::new();
            let read = io::copy(&mut reader.take(left.saturating_add(1)), &mut hasher).map_err(bad_entry)?;
            if read > left {
                return Err(InspectError::ExtractionTooLarge { file: self.path.clone(), limit });
            }
            left -= read;
            digests.insert(entry.clone(), hex::encode(hasher.finalize()));
        }
        Ok((digests, limit - left))
    }

    /// The bytes of the one top-level `*.dist-info/METADATA`, which must belong to the
    /// distribution and version of the file name, refused past `limit` bytes.
    pub fn metadata(&mut self, limit: u64) -> Result<Vec<u8>, InspectError> {
        let index = find_metadata(&self.path, &self.entries, &self.name)?;
        read_metadata(&self.path, &mut self.archive, index, &self.entries[index], limit)
    }
}

/// The SHA-256 of some bytes as lower-case hex, as wheels are described and linked.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The size and lower-case hex SHA-256 of everything `file` holds from where it stands.
pub fn hash(file: &mut File) -> io::Result<(u64, String)> {
    let mut hasher = Sha256::new();
    let mut buffer = vec![0; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = match file.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buffer[..n]);
        size += n as u64;
    }
    Ok((size, hex::encode(hasher.finalize())))
}

/// Refuses an entry name an installer or this inspector could be tricked by: empty, with a
/// NUL, absolute (`/x`, `\x`, `C:x`), or with a `..` component (either slash separating).
fn check_entry_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("has an empty name");
    }
    if name.contains('\0') {
        return Err("contains a NUL byte");
    }
    if name.starts_with(['/', '\\']) {
        return Err("is an absolute path");
    }
    let bytes = name.as_bytes();
    if bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':' {
        return Err("names a drive");
    }
    if name.split(['/', '\\']).any(|part| part == "..") {
        return Err("climbs out of the wheel with `..`");
    }
    Ok(())
}

/// The index of the wheel's one top-level `<dir>.dist-info/METADATA`, which must belong to the
/// distribution and version of the file name.
fn find_metadata(path: &Path, entries: &[String], name: &WheelName) -> Result<usize, InspectError> {
    let found: Vec<usize> = (0..entries.len())
        .filter(|&i| entries[i].strip_suffix("/METADATA").is_some_and(|dir| dir.ends_with(".dist-info") && !dir.contains('/')))
        .collect();
    let index = match found.as_slice() {
        [] => return Err(InspectError::MissingMetadata { file: path.to_path_buf() }),
        [index] => *index,
        _ => return Err(InspectError::SeveralMetadata { file: path.to_path_buf(), found: found.iter().map(|&i| entries[i].clone()).collect() }),
    };
    let entry = &entries[index];
    let stem = entry.trim_end_matches("/METADATA").trim_end_matches(".dist-info");
    if !dist_info_matches(stem, name) {
        return Err(InspectError::ForeignMetadata {
            file: path.to_path_buf(),
            found: entry.clone(),
            name: name.name.clone(),
            version: name.version.clone(),
        });
    }
    Ok(index)
}

/// Whether a dist-info directory's stem (`<name>-<version>`) names the wheel's distribution
/// (compared canonically) and version (the same text, or the same PEP 440 version). Every
/// `-` is tried as the separator, so an unescaped name with dashes still matches.
fn dist_info_matches(stem: &str, wheel: &WheelName) -> bool {
    let want = canonicalize(&wheel.name);
    stem.match_indices('-').any(|(at, _)| {
        let (name, version) = (&stem[..at], &stem[at + 1..]);
        canonicalize(name) == want && (version == wheel.version || parse_version(version).is_some_and(|v| Some(v) == parse_version(&wheel.version)))
    })
}

/// The bytes of the METADATA entry, refused past `limit` bytes however small the archive says
/// it is.
fn read_metadata<R: Read + Seek>(path: &Path, archive: &mut ZipArchive<R>, index: usize, entry: &str, limit: u64) -> Result<Vec<u8>, InspectError> {
    let bad_entry = |source| InspectError::BadEntry { file: path.to_path_buf(), entry: entry.to_string(), source };
    let mut reader = archive.by_index(index).map_err(|e| bad_entry(e.into()))?;
    let mut bytes = Vec::new();
    reader.by_ref().take(limit.saturating_add(1)).read_to_end(&mut bytes).map_err(bad_entry)?;
    if bytes.len() as u64 > limit {
        return Err(InspectError::MetadataTooLarge { file: path.to_path_buf(), entry: entry.to_string(), limit });
    }
    Ok(bytes)
}

/// The name, version, `Requires-Python` and pip dependencies from METADATA's headers, read as
/// the RFC 822 message core metadata is (by mailparse: names compared without case, folded
/// lines joined, a line of blanks a continuation as Python's email parser, which installers
/// use, reads it). Values that are not UTF-8 are read with U+FFFD for the bad bytes.
///
/// The pip dependencies are the canonical names of the `Requires-Dist` entries **without an
/// environment marker** (no `;`), sorted and without repeats. Entries with a marker are left
/// out even when the marker would hold on the slave: they are conditional (on an extra, a
/// Python version, a platform), and the dependencies shown for a wheel are the ones every
/// install needs. An entry whose name cannot be read, or is longer than
/// [`MAX_REQUIREMENT_NAME`], is skipped.
pub fn parse_metadata(metadata: &[u8]) -> CoreMetadata {
    let headers = headers(metadata);
    let values = |wanted: &'static str| headers.iter().filter(move |(key, _)| key.eq_ignore_ascii_case(wanted)).map(|(_, value)| value.as_str());
    let first = |wanted: &'static str| values(wanted).find(|v| !v.is_empty()).map(str::to_string);
    let mut requirements: Vec<String> = values("Requires-Dist").filter_map(unconditional_requirement).collect();
    requirements.sort();
    requirements.dedup();
    let requires_dist = values("Requires-Dist").filter(|r| !r.is_empty()).map(str::to_string).collect();
    let home_page = first("Home-page").map(|url| ("Homepage".to_string(), url));
    // `Project-URL: Label, https://...`: the label ends at the first comma.
    let project_urls = values("Project-URL")
        .filter_map(|value| value.split_once(',').map(|(label, url)| (label.trim().to_string(), url.trim().to_string())));
    CoreMetadata {
        name: first("Name"),
        version: first("Version"),
        requires_python: first("Requires-Python"),
        requirements,
        requires_dist,
        summary: first("Summary"),
        urls: home_page.into_iter().chain(project_urls).collect(),
    }
}

/// METADATA's headers, names and values trimmed and values unfolded, up to the first line that
/// is not one (a blank line, or anything mailparse cannot read as a header), as Python's email
/// parser stops there too. Values are taken as they are written: encoded words (RFC 2047) are
/// not decoded, as installers do not decode them either.
fn headers(metadata: &[u8]) -> Vec<(String, String)> {
    // Python's parser takes a lone CR for a line's end; mailparse takes LF and CRLF.
    let text = String::from_utf8_lossy(metadata).replace("\r\n", "\n").replace('\r', "\n");
    let mut rest = text.as_bytes();
    let mut found = Vec::new();
    while !rest.is_empty() && rest[0] != b'\n' {
        let Ok((header, used)) = mailparse::parse_header(rest) else { break };
        let value = String::from_utf8_lossy(header.get_value_raw());
        let value: Vec<&str> = value.lines().map(str::trim).filter(|line| !line.is_empty()).collect();
        found.push((header.get_key_ref().trim().to_string(), value.join(" ")));
        rest = &rest[used.max(1).min(rest.len())..];
    }
    found
}

/// The canonical project name of a PEP 508 requirement without a marker: `foo[bar]>=1`,
/// `Foo_Bar (>=1.0)`, ` zope.interface`, `pkg @ https://...`. None for a requirement with a
/// marker or one whose name is malformed or too long.
fn unconditional_requirement(requirement: &str) -> Option<String> {
    if requirement.contains(';') {
        return None;
    }
    split_requirement(requirement).map(|(name, _)| name)
}

/// The canonical project name a PEP 508 requirement names, and the rest of it (extras,
/// versions, marker) as written: `foo[bar]>=1; python_version < "3.12"` is `foo` and
/// `[bar]>=1; python_version < "3.12"`. None for a malformed or too long name.
pub fn split_requirement(requirement: &str) -> Option<(String, &str)> {
    let requirement = requirement.trim();
    let end = requirement.find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))).unwrap_or(requirement.len());
    let (name, rest) = requirement.split_at(end);
    let alphanumeric_ends = name.starts_with(|c: char| c.is_ascii_alphanumeric()) && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if !alphanumeric_ends || name.len() > MAX_REQUIREMENT_NAME {
        return None;
    }
    let rest = rest.trim_start();
    if !(rest.is_empty() || rest.starts_with(['[', '(', '<', '>', '=', '!', '~', '@', ';'])) {
        return None;
    }
    Some((canonicalize(name), rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_continued_by_a_line_of_blanks_does_not_end_the_headers() {
        // The shape of markupsafe 3.0.2's METADATA: a License whose paragraphs are separated by
        // continuation lines holding a single space, then Requires-Python.
        let metadata = b"Metadata-Version: 2.1\nName: MarkupSafe\nVersion: 3.0.2\nLicense: Copyright 2010 Pallets\n \n        Redistribution and use ...\n \t\n        are permitted.\nRequires-Python: >=3.9\n\nThe body.\n";
        let parsed = parse_metadata(metadata);
        assert_eq!(parsed.requires_python.as_deref(), Some(">=3.9"));
        assert_eq!(parsed.version.as_deref(), Some("3.0.2"));
    }

    #[test]
    fn reads_requires_python_and_unconditional_requirements() {
        let metadata = b"Metadata-Version: 2.1\r\nName: demo\r\nVersion: 1.0\r\nrequires-python: >=3.8,\r\n  <4\r\n\
            Requires-Dist: foo[bar]>=1\r\nRequires-Dist: Foo_Bar (>=1.0)\r\nRequires-Dist:   zope.interface\r\n\
            Requires-Dist: numpy>=1.20; python_version >= \"3.8\"\r\nRequires-Dist: pytest ; extra == \"test\"\r\n\
            Requires-Dist: pkg @ https://example.invalid/pkg.whl\r\nRequires-Dist: FOO\r\n\r\nRequires-Dist: in-the-body\r\n";
        let parsed = parse_metadata(metadata);
        assert_eq!((parsed.name.as_deref(), parsed.version.as_deref()), (Some("demo"), Some("1.0")));
        assert_eq!(parsed.requires_python.as_deref(), Some(">=3.8, <4"));
        assert_eq!(parsed.requirements, ["foo", "foo-bar", "pkg", "zope-interface"]);
    }

    #[test]
    fn a_malformed_line_ends_the_headers_and_keeps_those_before_it() {
        // A line without a colon, then an indented one: the headers before it are kept.
        let parsed = parse_metadata(b"Metadata-Version: 2.1\nName: demo\nVersion: 1.0\nbroken line\n  indented\nRequires-Python: >=3.9\n");
        assert_eq!((parsed.name.as_deref(), parsed.version.as_deref()), (Some("demo"), Some("1.0")));
        // A lone CR ends a line, as it does for Python's parser.
        let parsed = parse_metadata(b"Name: foo\rVersion: 1.0\rRequires-Python: >=3.8\r");
        assert_eq!((parsed.name.as_deref(), parsed.version.as_deref(), parsed.requires_python.as_deref()), (Some("foo"), Some("1.0"), Some(">=3.8")));
        // Bytes that are not UTF-8, in a folded value, are unfolded all the same.
        let parsed = parse_metadata(b"Name: x\nRequires-Python: >=3.9,\n <4\xff\n");
        assert_eq!(parsed.requires_python.as_deref(), Some(">=3.9, <4\u{fffd}"));
        // Encoded words are left as written, as installers leave them.
        assert_eq!(parse_metadata(b"Name: =?utf-8?q?demo?=\n").name.as_deref(), Some("=?utf-8?q?demo?="));
    }

    #[test]
    fn no_requirements_and_no_requires_python() {
        let plain = parse_metadata(b"Metadata-Version: 2.1\nName: x\nVersion: 1\n");
        assert_eq!((plain.requires_python, plain.requirements), (None, vec![]));
        assert_eq!(parse_metadata(b"Requires-Python:\n"), CoreMetadata::default());
        let garbage = parse_metadata(b"\xff\xfe: garbage\nRequires-Dist: ok\n");
        assert_eq!((garbage.requires_python, garbage.requirements), (None, vec!["ok".to_string()]));
    }

    #[test]
    fn requirement_names() {
        for (requirement, name) in [
            ("foo", Some("foo")),
            ("foo[bar,baz] >= 1", Some("foo")),
            ("Foo.Bar (>=1,<2)", Some("foo-bar")),
            ("  a_b~=1.0", Some("a-b")),
            ("x!=2", Some("x")),
            ("x===2", Some("x")),
            ("foo; extra == 'a'", None),
            ("bad name", None),
            ("-dash", None),
            ("dash-", None),
            ("", None),
            ("(>=1)", None),
        ] {
            assert_eq!(unconditional_requirement(requirement).as_deref(), name, "{requirement:?}");
        }
        assert_eq!(unconditional_requirement(&"a".repeat(MAX_REQUIREMENT_NAME)).map(|n| n.len()), Some(MAX_REQUIREMENT_NAME));
        assert_eq!(unconditional_requirement(&"a".repeat(MAX_REQUIREMENT_NAME + 1)), None);
    }

    #[test]
    fn entry_names() {
        for name in ["demo/__init__.py", "demo-1.0.dist-info/METADATA", "demo/_c.cpython-311-x86_64-linux-gnu.so", "a/..b/c..", "dir/"] {
            assert_eq!(check_entry_name(name), Ok(()), "{name}");
        }
        for name in ["", "/etc/passwd", "\\evil", "C:/evil", "c:evil", "../evil", "a/../../evil", "a\\..\\evil", "a/..", "nul\0"] {
            assert!(check_entry_name(name).is_err(), "{name:?} was accepted");
        }
    }

    #[test]
    fn dist_info_names() {
        let wheel = WheelName::parse("RPi.GPIO-0.7.1-cp39-cp39-linux_armv7l.whl").unwrap();
        for stem in ["RPi.GPIO-0.7.1", "rpi_gpio-0.7.1", "RPi-GPIO-0.7.1", "rpi.gpio-0.7.1.0", "rpi_gpio-0.7.01"] {
            assert!(dist_info_matches(stem, &wheel), "{stem}");
        }
        for stem in ["rpi_gpio-0.7.2", "gpio-0.7.1", "rpi_gpio", "rpi_gpio-", "other-0.7.1"] {
            assert!(!dist_info_matches(stem, &wheel), "{stem}");
        }
        let legacy = WheelName::parse("old-1.0_beta_x-py3-none-any.whl").unwrap();
        assert!(dist_info_matches("old-1.0_beta_x", &legacy));
    }
}
