//! Writing a whole file so that readers (the web server, pip) see its old contents or its new,
//! never part of them: the one place the master does it, for the index writer's pages and the
//! file juggler's `.metadata` files.
//!
//! The bytes go to a temporary file in the target's directory, created exclusively (a file or
//! link already there is never written through) and renamed over the target. Its name is the
//! target's, hidden: `.<name>.tmp`, so never served, and one left by a crash between the two
//! steps is removed by the next write of that target rather than left to pile up. (A name too
//! long for that, possible only for a very long wheel's `.metadata` file, gets a random one.)
//! Each target has one writer (the index writer or the file juggler), so no two writers share
//! a temporary name.

use std::ffi::OsString;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Longest name a file may have (ext4, XFS, Btrfs).
const MAX_NAME: usize = 255;

/// How much must be on disk before the target's name points at the new bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Nothing: the caller makes the whole tree durable later (the index writer's pages,
    /// which it can always write again).
    Cached,
    /// The file's data: a crash can lose the rename, never leave the name pointing at bytes
    /// that are not on disk (the file juggler's `.metadata` files, which the database records).
    /// The directory is not synced: the caller syncs it once for all its names.
    DataSynced,
}

/// Writes `bytes` to `path` atomically, readable by everyone (mode 0644 whatever the umask,
/// since the web server may run as another user). The directory is made if missing.
pub fn write_atomically(path: &Path, bytes: &[u8], durability: Durability) -> io::Result<()> {
    let dir = path.parent().ok_or_else(|| io::Error::other(format!("{} has no directory", path.display())))?;
    let name = path.file_name().ok_or_else(|| io::Error::other(format!("{} has no name", path.display())))?;
    let mut fixed = OsString::from(".");
    fixed.push(name);
    fixed.push(".tmp");
    let fixed = (fixed.len() <= MAX_NAME).then_some(fixed);
    let create = || {
        let mut builder = tempfile::Builder::new();
        match &fixed {
            Some(tmp) => builder.prefix(tmp).suffix("").rand_bytes(0),
            None => builder.prefix(".").suffix(".tmp"),
        };
        builder.tempfile_in(dir)
    };
    let result = match create() {
        Err(e) if e.kind() == io::ErrorKind::NotFound => fs::create_dir_all(dir).and_then(|()| create()),
        // Left by a crash: removed, never written through.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && let Some(tmp) = &fixed => {
            fs::remove_file(dir.join(tmp)).and_then(|()| create())
        }
        other => other,
    }
    .and_then(|mut tmp| {
        tmp.as_file().set_permissions(fs::Permissions::from_mode(0o644))?;
        tmp.write_all(bytes)?;
        if durability == Durability::DataSynced {
            tmp.as_file().sync_data()?;
        }
        // A failed rename drops the temporary file, which removes it.
        tmp.persist(path).map(drop).map_err(|e| e.error)
    });
    result.map_err(|e| io::Error::new(e.kind(), format!("cannot write {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use piwheels_testsupport::data::dir_names as names;

    #[test]
    fn a_write_replaces_the_target_in_a_new_directory_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("index.html");
        for durability in [Durability::Cached, Durability::DataSynced] {
            write_atomically(&path, b"one", durability).unwrap();
            write_atomically(&path, b"two", durability).unwrap();
            assert_eq!(fs::read(&path).unwrap(), b"two");
            assert_eq!(names(&dir.path().join("sub")), ["index.html"]);
            assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o644);
        }
    }

    #[test]
    fn a_failed_write_leaves_the_target_and_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        // A directory in the target's place: the rename fails.
        let path = dir.path().join("taken");
        fs::create_dir(&path).unwrap();
        fs::write(path.join("inside"), b"keep").unwrap();
        let error = write_atomically(&path, b"new", Durability::DataSynced).unwrap_err();
        assert!(error.to_string().contains("cannot write"), "{error}");
        assert_eq!(names(dir.path()), ["taken"]);
        assert_eq!(fs::read(path.join("inside")).unwrap(), b"keep");
    }

    #[test]
    fn a_temporary_file_left_by_a_crash_is_replaced_not_written_through_nor_kept() {
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        fs::write(&outside, b"keep").unwrap();
        std::os::unix::fs::symlink(&outside, dir.path().join(".page.tmp")).unwrap();
        write_atomically(&dir.path().join("page"), b"new", Durability::DataSynced).unwrap();
        assert_eq!(fs::read(&outside).unwrap(), b"keep");
        assert_eq!(fs::read(dir.path().join("page")).unwrap(), b"new");
        assert_eq!(names(dir.path()), ["outside", "page"]);
    }

    #[test]
    fn a_name_too_long_to_hide_gets_a_random_temporary_name() {
        let dir = tempfile::tempdir().unwrap();
        let long = format!("{}.whl.metadata", "x".repeat(MAX_NAME - 20));
        write_atomically(&dir.path().join(&long), b"Metadata-Version: 2.1", Durability::DataSynced).unwrap();
        assert_eq!(names(dir.path()), [long]);
    }
}
