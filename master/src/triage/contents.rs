//! Finding the Debian package that ships what a failed build missed, in a Debian Contents
//! index: Debian's `Contents-ARCH.gz`, or apt-file's copies under `/var/lib/apt/lists`
//! (`*_Contents-ARCH.lz4`). Each line of one is a path and the packages that ship it:
//!
//! ```text
//! usr/include/libxml2/libxml/xmlversion.h                 libdevel/libxml2-dev
//! ```
//!
//! An index is some hundreds of megabytes uncompressed, so it is never held: each lookup
//! streams the files once for a whole batch of causes, and keeps only the candidates of
//! those causes.

use std::collections::{BTreeSet, HashMap};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use piwheels_common::protocols::FailureClass;

/// Most packages kept as candidates for one cause (a header some dozens ship is not one
/// package's to cure).
const MAX_CANDIDATES: usize = 64;

/// The Contents files the master looks packages up in, in the order given.
#[derive(Debug, Clone, Default)]
pub struct ContentsIndex {
    files: Vec<PathBuf>,
}

impl ContentsIndex {
    /// An index of `files`: plain text, gzip (`.gz`) or LZ4 frames (`.lz4`), by name.
    pub fn new(files: Vec<PathBuf>) -> ContentsIndex {
        ContentsIndex { files }
    }

    /// Whether there are files to look in.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// The files as they are now (path, size and modification time of each): a lookup that
    /// found nothing is tried again once this changes.
    pub fn identity(&self) -> io::Result<String> {
        let mut parts = Vec::with_capacity(self.files.len());
        for file in &self.files {
            let meta = std::fs::metadata(file).map_err(|e| annotate(file, e))?;
            let modified = meta.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(0, |d| d.as_secs());
            parts.push(format!("{}:{}:{modified}", file.display(), meta.len()));
        }
        Ok(parts.join(";"))
    }

    /// The package for each cause (a class that [`FailureClass::has_debian_package`] and
    /// its detail), in the order given: None where no file matches.
    pub fn look_up(&self, causes: &[(FailureClass, String)]) -> io::Result<Vec<Option<String>>> {
        let mut by_name: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, (_, detail)) in causes.iter().enumerate() {
            by_name.entry(file_name(detail)).or_default().push(i);
        }
        let mut candidates: Vec<BTreeSet<String>> = vec![BTreeSet::new(); causes.len()];
        for file in &self.files {
            scan(file, &mut |path, packages| {
                let Some(wanted) = by_name.get(file_name(path)) else { return };
                for &i in wanted {
                    let (class, detail) = &causes[i];
                    if ships(*class, detail, path) {
                        for package in packages.split(',') {
                            let name = package.rsplit('/').next().unwrap_or_default().trim();
                            if !name.is_empty() && candidates[i].len() < MAX_CANDIDATES {
                                candidates[i].insert(name.to_string());
                            }
                        }
                    }
                }
            })
            .map_err(|e| annotate(file, e))?;
        }
        Ok(causes.iter().zip(candidates).map(|((class, detail), found)| choose(*class, detail, &found)).collect())
    }
}

fn annotate(file: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", file.display()))
}

/// The last component of a path.
fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Whether the file at `path` (as a Contents index writes it: relative to `/`) is what a
/// failure of `class` missed.
fn ships(class: FailureClass, detail: &str, path: &str) -> bool {
    match class {
        // `#include <libxml/xmlversion.h>` finds usr/include/libxml2/libxml/xmlversion.h
        // with the -I that the package's pkg-config file gives.
        FailureClass::MissingHeader => {
            path.strip_prefix("usr/include/").is_some_and(|rest| rest == detail || rest.ends_with(&format!("/{detail}")))
        }
        FailureClass::MissingLibrary => {
            ["usr/lib/", "lib/", "usr/share/pkgconfig/"].iter().any(|dir| path.starts_with(dir)) && file_name(path) == detail
        }
        FailureClass::MissingTool => ["usr/bin/", "bin/", "usr/sbin/", "sbin/"].iter().any(|dir| path.strip_prefix(dir) == Some(detail)),
        _ => false,
    }
}

/// The package to suggest among those that ship the file: for a header or a library, a
/// development package first; a package named as the tool; then the shortest name, then the
/// first by name.
fn choose(class: FailureClass, detail: &str, found: &BTreeSet<String>) -> Option<String> {
    let rank = |name: &String| {
        let preferred = match class {
            FailureClass::MissingTool => name == detail,
            _ => name.ends_with("-dev"),
        };
        (!preferred, name.len(), name.clone())
    };
    found.iter().min_by_key(|name| rank(name)).cloned()
}

/// Calls `line` with the path and the package list of each line of `file`.
fn scan(file: &Path, line: &mut dyn FnMut(&str, &str)) -> io::Result<()> {
    let raw = File::open(file)?;
    let reader: Box<dyn Read> = match file.extension().and_then(|e| e.to_str()) {
        Some("gz") => Box::new(flate2::read::MultiGzDecoder::new(raw)),
        Some("lz4") => Box::new(lz4_flex::frame::FrameDecoder::new(raw)),
        _ => Box::new(raw),
    };
    let mut reader = BufReader::with_capacity(1 << 18, reader);
    let mut buf = Vec::with_capacity(512);
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf)? == 0 {
            return Ok(());
        }
        // Paths are bytes; a line that is not UTF-8 names nothing a build could miss by name.
        let Ok(text) = std::str::from_utf8(&buf) else { continue };
        let text = text.trim_end();
        // The package list is the last field; the path may hold spaces.
        let Some((path, packages)) = text.rsplit_once([' ', '\t']) else { continue };
        let path = path.trim_end();
        if !path.is_empty() {
            line(path.strip_prefix("./").unwrap_or(path), packages);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    const CONTENTS: &str = "\
usr/bin/cmake                                           devel/cmake
usr/bin/rustc                                           devel/rustc
usr/bin/x86_64-linux-gnu-gfortran-12                    devel/gfortran-12-x86-64-linux-gnu
usr/bin/gfortran                                        devel/gfortran
usr/include/libxml2/libxml/xmlversion.h                 libdevel/libxml2-dev
usr/include/ffi.h                                       libdevel/libffi-dev
usr/include/x86_64-linux-gnu/ffi.h                      libdevel/libffi-dev
usr/share/doc/libxml/xmlversion.h                       doc/libxml2-doc
usr/include/zlib.h                                      libdevel/zlib1g-dev,libdevel/zlib-compat
usr/lib/x86_64-linux-gnu/libxml2.so                     libdevel/libxml2-dev
usr/lib/x86_64-linux-gnu/pkgconfig/libxml-2.0.pc        libdevel/libxml2-dev
usr/share/doc/my file with spaces.h                     doc/spacey
";

    fn causes() -> Vec<(FailureClass, String)> {
        vec![
            (FailureClass::MissingHeader, "libxml/xmlversion.h".into()),
            (FailureClass::MissingHeader, "ffi.h".into()),
            (FailureClass::MissingHeader, "zlib.h".into()),
            (FailureClass::MissingLibrary, "libxml2.so".into()),
            (FailureClass::MissingLibrary, "libxml-2.0.pc".into()),
            (FailureClass::MissingTool, "rustc".into()),
            (FailureClass::MissingTool, "gfortran".into()),
            (FailureClass::MissingHeader, "nowhere.h".into()),
            // The file exists, but outside the directories a tool is looked for in.
            (FailureClass::MissingTool, "xmlversion.h".into()),
        ]
    }

    fn expected() -> Vec<Option<String>> {
        ["libxml2-dev", "libffi-dev", "zlib1g-dev", "libxml2-dev", "libxml2-dev", "rustc", "gfortran"]
            .iter()
            .map(|p| Some(p.to_string()))
            .chain([None, None])
            .collect()
    }

    #[test]
    fn plain_gzip_and_lz4_indexes_name_the_same_packages() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("Contents-amd64");
        std::fs::write(&plain, CONTENTS).unwrap();
        let gz = dir.path().join("Contents-amd64.gz");
        let mut encoder = flate2::write::GzEncoder::new(File::create(&gz).unwrap(), flate2::Compression::default());
        encoder.write_all(CONTENTS.as_bytes()).unwrap();
        encoder.finish().unwrap();
        let lz4 = dir.path().join("deb_Contents-amd64.lz4");
        let mut encoder = lz4_flex::frame::FrameEncoder::new(File::create(&lz4).unwrap());
        encoder.write_all(CONTENTS.as_bytes()).unwrap();
        encoder.finish().unwrap();
        for file in [plain, gz, lz4] {
            let index = ContentsIndex::new(vec![file.clone()]);
            assert_eq!(index.look_up(&causes()).unwrap(), expected(), "{}", file.display());
        }
    }

    #[test]
    fn several_files_are_read_and_the_identity_follows_them() {
        let dir = tempfile::tempdir().unwrap();
        let (first, second) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::write(&first, "usr/bin/rustc devel/rustc\n").unwrap();
        std::fs::write(&second, "usr/include/ffi.h libdevel/libffi-dev\n").unwrap();
        let index = ContentsIndex::new(vec![first.clone(), second]);
        let causes = [(FailureClass::MissingTool, "rustc".to_string()), (FailureClass::MissingHeader, "ffi.h".to_string())];
        assert_eq!(index.look_up(&causes).unwrap(), [Some("rustc".to_string()), Some("libffi-dev".to_string())]);
        let before = index.identity().unwrap();
        std::fs::write(&first, "usr/bin/rustc devel/rustc\nusr/bin/cargo devel/cargo\n").unwrap();
        assert_ne!(index.identity().unwrap(), before);
    }

    #[test]
    fn a_missing_file_is_an_error_naming_it() {
        let index = ContentsIndex::new(vec![PathBuf::from("/nonexistent/Contents-arm64.gz")]);
        let err = index.look_up(&causes()).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/Contents-arm64.gz"), "{err}");
        assert!(index.identity().is_err());
    }
}
