//! Where everything lives in the output tree, and how files get there: every page is written
//! to a temporary file in its own directory and renamed over its target, so a reader (the web
//! server, pip) sees the old page or the new one, never half of one (see [`crate::atomic_file`]).
//!
//! ```text
//! <output>/index.html                      home page
//! <output>/packages.json                   search index
//! <output>/simple/index.html, index.json   root of the simple index
//! <output>/simple/<pkg>/index.html, .json  a project's simple page (only while it has files)
//! <output>/simple/<pkg>/<wheel>[.metadata] published by the file juggler
//! <output>/project/<pkg>/index.html        project page
//! <output>/project/<pkg>/json/index.json   project JSON
//! <output>/project/<old>/index.html        a former name's page, pointing at the new one
//! <output>/logs/AAAA/BBBB/CCCC.txt.gz      build logs
//! ```

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use piwheels_common::protocols::BuildId;

use crate::atomic_file::{Durability, write_atomically};

/// Name of the file recording which page templates wrote the tree (see
/// [`super::pages::TEMPLATES_FINGERPRINT`]): when it differs, every page is rewritten.
pub const STAMP_NAME: &str = ".piwheels-index";

/// The output tree's paths.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// The tree rooted at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Layout {
        Layout { root: root.into() }
    }

    /// The root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `simple/`.
    pub fn simple_dir(&self) -> PathBuf {
        self.root.join("simple")
    }

    /// `project/`.
    pub fn project_root(&self) -> PathBuf {
        self.root.join("project")
    }

    /// `simple/<package>/`.
    pub fn simple_package(&self, package: &str) -> PathBuf {
        self.simple_dir().join(package)
    }

    /// `project/<package>/`.
    pub fn project_dir(&self, package: &str) -> PathBuf {
        self.project_root().join(package)
    }

    /// `project/<package>/json/`.
    pub fn project_json_dir(&self, package: &str) -> PathBuf {
        self.project_dir(package).join("json")
    }

    /// The stamp file.
    pub fn stamp(&self) -> PathBuf {
        self.root.join(STAMP_NAME)
    }

    /// A build's log.
    pub fn log(&self, build_id: BuildId) -> PathBuf {
        self.root.join(log_path(build_id))
    }
}

/// A build log's path relative to the root (and, with a leading `/`, its URL):
/// `logs/AAAA/BBBB/CCCC.txt.gz`, the id's three groups of four decimal digits, most
/// significant first (build 1 is `logs/0000/0000/0001.txt.gz`). Ids of 10^12 and more keep
/// their extra leading digits in the first group.
pub fn log_path(build_id: BuildId) -> String {
    let id = build_id.max(0);
    format!("logs/{:04}/{:04}/{:04}.txt.gz", id / 100_000_000, id / 10_000 % 10_000, id % 10_000)
}

/// Whether a package name is safe to use as one path component: a PEP 503 canonical name
/// (lower-case ASCII letters and digits, single dashes inside). Anything else is refused before
/// it comes near the file system.
pub fn is_safe_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 200
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
        && !name.contains("--")
}

/// Whether a published file's name is safe to join to a package directory: one plain path
/// component.
pub fn is_safe_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && !name.bytes().any(|b| b == b'/' || b == b'\\' || b == 0 || b.is_ascii_control())
}

/// Writes `bytes` to `path` atomically unless the file holds exactly these bytes already: an
/// unchanged page keeps its modification time (so clients revalidating get "not modified")
/// and costs a read instead of a create, a rename and the old copy's removal.
pub fn write_if_changed(path: &Path, bytes: &[u8]) -> io::Result<()> {
    if let Ok(meta) = fs::metadata(path)
        && meta.len() == bytes.len() as u64
        && fs::read(path).is_ok_and(|old| old == bytes)
    {
        return Ok(());
    }
    write_atomically(path, bytes, Durability::Cached)
}

/// Removes a file; a missing one (or one whose directory is a file) is not an error. True when
/// something was removed.
pub fn remove_file(path: &Path) -> io::Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory) => Ok(false),
        Err(e) => Err(io::Error::new(e.kind(), format!("cannot remove {}: {e}", path.display()))),
    }
}

/// Removes a directory if it is empty; a missing or non-empty one is left alone.
pub fn remove_dir_if_empty(path: &Path) -> io::Result<()> {
    match fs::remove_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::DirectoryNotEmpty) => Ok(()),
        Err(e) => Err(io::Error::new(e.kind(), format!("cannot remove {}: {e}", path.display()))),
    }
}

/// Removes a directory with everything in it; a missing one is not an error.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io::Error::new(e.kind(), format!("cannot remove {}: {e}", path.display()))),
    }
}

/// Makes everything written to the tree's file system durable, with one `syncfs` for the lot
/// rather than an fsync per page. `root` must stay open between calls: the kernel reports a
/// failed writeback to each open file once, so a file opened for each call would miss the
/// failures that came before it.
pub fn sync_tree(root: &fs::File) -> io::Result<()> {
    nix::unistd::syncfs(root).map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_paths_split_the_id_into_three_groups_of_four_digits() {
        assert_eq!(log_path(1), "logs/0000/0000/0001.txt.gz");
        assert_eq!(log_path(123_456_789), "logs/0001/2345/6789.txt.gz");
        assert_eq!(log_path(999_999_999_999), "logs/9999/9999/9999.txt.gz");
        assert_eq!(log_path(1_000_000_000_000), "logs/10000/0000/0000.txt.gz");
    }

    #[test]
    fn only_canonical_names_are_safe_path_components() {
        for good in ["numpy", "rpi-gpio", "a", "0x-1"] {
            assert!(is_safe_name(good), "{good}");
        }
        for bad in ["", ".", "..", "a/b", "RPi.GPIO", "-a", "a-", "a--b", "a_b", "a b", "é"] {
            assert!(!is_safe_name(bad), "{bad}");
        }
        assert!(is_safe_file_name("foo-1.0-py3-none-any.whl"));
        for bad in ["", ".hidden", "a/b", "..", "a\nb"] {
            assert!(!is_safe_file_name(bad), "{bad:?}");
        }
    }
}
