//! Which Debian package ships a shared library: the apt dependencies of a built wheel.
//!
//! [`AptIndex`] is read once per slave run from dpkg's file lists
//! (`/var/lib/dpkg/info/<package>[:<arch>].list`, one installed path a line), keeping only the
//! paths that name shared libraries (a file name ending in `.so` or containing `.so.`). Looking
//! a library up is then a hash-map probe instead of a walk through the apt cache, which the
//! Python piwheels loaded for every build (about 0.9 s of CPU each time).
//!
//! Paths are compared after resolving symbolic links. dpkg records the path a package
//! shipped, which on a merged-/usr system is often `/lib/...` while the file really lives in
//! `/usr/lib/...`, and `ldd` may report either. So the index keys every listed library by its
//! directory with links resolved (the file name kept as listed), and a lookup tries the
//! library's fully resolved path first: the package that ships the real file (for
//! `libz.so.1`, the `libz.so.1.2.13` it points to) is the one providing the library, even when
//! the link itself belongs to another package or to none (alternatives).
//!
//! [`AptIndex::dependencies`] runs `ldd` on each shared object of a wheel: the dynamic loader
//! maps the object and lists the libraries it needs. `ldd`'s manual warns that this may run
//! code from the object; that grants nothing new on a slave, which has just run the same
//! project's build scripts.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::ffi::OsStr;
use std::fmt;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Where dpkg keeps its per-package file lists on a Debian system.
pub const DPKG_INFO_DIR: &str = "/var/lib/dpkg/info";

/// How long one `ldd` may take before it is killed (and the object skipped). `ldd` normally
/// answers in milliseconds; the limit only protects the build from a loader that hangs.
pub const LDD_TIMEOUT: Duration = Duration::from_secs(30);

/// The most of `ldd`'s output read for one object; a real list of libraries is a few KiB.
const MAX_LDD_OUTPUT: u64 = 1 << 20;

/// Shared-library paths of the installed Debian packages, and the package shipping each.
pub struct AptIndex {
    /// Package names (without architecture qualifier), each once; `owners` indexes into it.
    packages: Vec<String>,
    /// Library path, its directory's symbolic links resolved → index into `packages`.
    owners: HashMap<PathBuf, usize>,
}

impl fmt::Debug for AptIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AptIndex").field("packages", &self.packages.len()).field("libraries", &self.owners.len()).finish()
    }
}

/// Whether a file name names a shared library: `libfoo.so`, `libfoo.so.1`, `libfoo.so.1.2`
/// (the same test the builder uses to pick a wheel's shared objects).
pub fn is_shared_library_name(name: &[u8]) -> bool {
    name.ends_with(b".so") || name.windows(4).any(|w| w == b".so.")
}

impl AptIndex {
    /// Reads the system's dpkg database ([`DPKG_INFO_DIR`]).
    pub fn load_system() -> io::Result<AptIndex> {
        AptIndex::load(Path::new(DPKG_INFO_DIR))
    }

    /// Reads every `*.list` file in `dpkg_info_dir`. The package is the file's name up to
    /// `.list` or to the `:` of a multi-arch qualifier (`libc6:amd64.list` is `libc6`). Lists
    /// are read in name order and the first package listing a path keeps it, so the result
    /// does not depend on directory order. A list that disappears while being read (dpkg
    /// removing a package) is skipped; any other read error is returned.
    pub fn load(dpkg_info_dir: &Path) -> io::Result<AptIndex> {
        let mut lists: Vec<(String, PathBuf)> = Vec::new();
        for entry in fs::read_dir(dpkg_info_dir)? {
            let entry = entry?;
            let file_name = entry.file_name();
            let Some(stem) = file_name.to_str().and_then(|n| n.strip_suffix(".list")) else { continue };
            let package = stem.split(':').next().unwrap_or(stem);
            if package.is_empty() {
                continue;
            }
            lists.push((package.to_string(), entry.path()));
        }
        lists.sort_by(|a, b| a.1.cmp(&b.1));

        let mut index = AptIndex { packages: Vec::new(), owners: HashMap::new() };
        let mut package_ids: HashMap<String, usize> = HashMap::new();
        let mut resolved_dirs: HashMap<PathBuf, PathBuf> = HashMap::new();
        for (package, path) in lists {
            let contents = match fs::read(&path) {
                Ok(contents) => contents,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io::Error::new(e.kind(), format!("reading {}: {e}", path.display()))),
            };
            let mut id = None;
            for line in contents.split(|&b| b == b'\n') {
                if !line.starts_with(b"/") {
                    continue;
                }
                let listed = Path::new(OsStr::from_bytes(line));
                let (Some(dir), Some(name)) = (listed.parent(), listed.file_name()) else { continue };
                if !is_shared_library_name(name.as_bytes()) {
                    continue;
                }
                let dir = resolved_dirs.entry(dir.to_path_buf()).or_insert_with(|| fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf()));
                let id = *id.get_or_insert_with(|| {
                    *package_ids.entry(package.clone()).or_insert_with(|| {
                        index.packages.push(package.clone());
                        index.packages.len() - 1
                    })
                });
                index.owners.entry(dir.join(name)).or_insert(id);
            }
        }
        Ok(index)
    }

    /// How many library paths the index holds.
    pub fn len(&self) -> usize {
        self.owners.len()
    }

    /// Whether the index holds no library at all (no dpkg database, or not a Debian system).
    pub fn is_empty(&self) -> bool {
        self.owners.is_empty()
    }

    /// The package shipping the library at `lib_path`: the owner of the file the path finally
    /// resolves to, else of the path itself (its directory's links resolved), else of the path
    /// exactly as given. None when no installed package lists it.
    pub fn package_of(&self, lib_path: &Path) -> Option<&str> {
        let real = fs::canonicalize(lib_path).ok();
        let dir_resolved = match (lib_path.parent(), lib_path.file_name()) {
            (Some(dir), Some(name)) => fs::canonicalize(dir).ok().map(|d| d.join(name)),
            _ => None,
        };
        [real.as_deref(), dir_resolved.as_deref(), Some(lib_path)]
            .into_iter()
            .flatten()
            .find_map(|p| self.owners.get(p))
            .map(|&id| self.packages[id].as_str())
    }

    /// The Debian packages the given shared objects need, and the libraries no package
    /// provides, each sorted and without repeats.
    ///
    /// `ldd` runs once per object. A library it reports as `not found` is unresolved by its
    /// name (`libfoo.so.1`); a library it finds that no installed package ships (one under
    /// `/usr/local`, say) is unresolved by its path. A library that is itself one of
    /// `shared_objects` is the wheel's own, not a dependency; one whose path does not exist
    /// (the kernel's vDSO) is ignored. An object `ldd` refuses (not dynamic, another
    /// architecture) adds nothing; an `ldd` that cannot run or outlives [`LDD_TIMEOUT`] is
    /// logged as a warning and its object skipped.
    pub fn dependencies(&self, shared_objects: &[PathBuf]) -> (Vec<String>, Vec<String>) {
        let own: HashSet<PathBuf> = shared_objects.iter().filter_map(|p| fs::canonicalize(p).ok()).collect();
        let mut apt = BTreeSet::new();
        let mut unresolved = BTreeSet::new();
        for object in shared_objects {
            let output = match run_ldd(object) {
                Ok(Some(output)) => output,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!("ldd {}: {e}; its libraries are left out of the dependencies", object.display());
                    continue;
                }
            };
            for line in output.lines() {
                match parse_ldd_line(line) {
                    Some(Linked::NotFound(name)) => {
                        unresolved.insert(name.to_string());
                    }
                    Some(Linked::Found(path)) => {
                        let Ok(real) = fs::canonicalize(path) else { continue };
                        if own.contains(&real) {
                            continue;
                        }
                        match self.package_of(path) {
                            Some(package) => apt.insert(package.to_string()),
                            None => unresolved.insert(path.display().to_string()),
                        };
                    }
                    None => {}
                }
            }
        }
        (apt.into_iter().collect(), unresolved.into_iter().collect())
    }
}

/// One library in `ldd`'s output.
#[derive(Debug, PartialEq, Eq)]
enum Linked<'a> {
    /// `libz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x...)`
    Found(&'a Path),
    /// `libfoo.so.1 => not found`
    NotFound(&'a str),
}

/// Reads one line of `ldd`'s output. Lines without `=>` (the vDSO, the dynamic loader named
/// by its own path) and anything else unexpected give None.
fn parse_ldd_line(line: &str) -> Option<Linked<'_>> {
    let (name, target) = line.trim().split_once(" => ")?;
    let target = target.trim();
    if target == "not found" {
        return Some(Linked::NotFound(name.trim()));
    }
    let path = target.rsplit_once(" (").map_or(target, |(path, _address)| path);
    path.starts_with('/').then(|| Linked::Found(Path::new(path)))
}

/// Runs `ldd` on one object: its standard output when it succeeds, None when it refuses the
/// object (a non-zero exit), an error when it cannot run or takes longer than [`LDD_TIMEOUT`].
fn run_ldd(object: &Path) -> io::Result<Option<String>> {
    crate::bounded::output(Command::new("ldd").arg(object).env("LC_ALL", "C"), MAX_LDD_OUTPUT, LDD_TIMEOUT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn write(path: &Path, contents: &str) {
        fs::write(path, contents).unwrap();
    }

    #[test]
    fn shared_library_names() {
        for name in ["libz.so", "libz.so.1", "libz.so.1.2.13", "_cffi.cpython-311-arm-linux-gnueabihf.so", "ld-linux-x86-64.so.2"] {
            assert!(is_shared_library_name(name.as_bytes()), "{name}");
        }
        for name in ["libz.a", "so", "libz.sox", "libso", "so.1"] {
            assert!(!is_shared_library_name(name.as_bytes()), "{name}");
        }
    }

    #[test]
    fn reads_lists_with_multiarch_names_and_keeps_only_libraries() {
        let info = tempfile::tempdir().unwrap();
        write(&info.path().join("libc6:amd64.list"), "/.\n/lib\n/lib/x86_64-linux-gnu/libc.so.6\n/usr/share/doc/libc6/copyright\n");
        write(&info.path().join("zlib1g:amd64.list"), "/usr/lib/x86_64-linux-gnu/libz.so.1.2.13\n/usr/lib/x86_64-linux-gnu/libz.so.1\n");
        write(&info.path().join("plain.list"), "/opt/plain/lib/libplain.so\n");
        write(&info.path().join("zlib1g:amd64.md5sums"), "0123 usr/lib/x86_64-linux-gnu/libother.so.1\n");
        let index = AptIndex::load(info.path()).unwrap();
        assert_eq!(index.len(), 4);
        assert_eq!(index.package_of(Path::new("/lib/x86_64-linux-gnu/libc.so.6")), Some("libc6"));
        assert_eq!(index.package_of(Path::new("/usr/lib/x86_64-linux-gnu/libz.so.1.2.13")), Some("zlib1g"));
        assert_eq!(index.package_of(Path::new("/opt/plain/lib/libplain.so")), Some("plain"));
        assert_eq!(index.package_of(Path::new("/usr/lib/x86_64-linux-gnu/libother.so.1")), None);
        assert_eq!(index.package_of(Path::new("/usr/share/doc/libc6/copyright")), None);
        assert!(format!("{index:?}").contains("libraries: 4"));
    }

    /// A merged-/usr layout in miniature: `lib` is a link to `usr/lib`, the package lists the
    /// `lib/...` path, and the real file is reached through a versioned link.
    #[test]
    fn resolves_links_on_both_sides() {
        let root = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(root.path()).unwrap();
        fs::create_dir_all(root.join("usr/lib")).unwrap();
        symlink("usr/lib", root.join("lib")).unwrap();
        write(&root.join("usr/lib/libdemo.so.1.2"), "elf");
        symlink("libdemo.so.1.2", root.join("usr/lib/libdemo.so.1")).unwrap();
        // A link no package lists, pointing at a listed file (as alternatives do).
        symlink(root.join("usr/lib/libdemo.so.1.2"), root.join("usr/lib/libalt.so.1")).unwrap();
        let info = root.join("info");
        fs::create_dir(&info).unwrap();
        let lib = root.join("lib");
        write(&info.join("libdemo1:armhf.list"), &format!("{0}/libdemo.so.1.2\n{0}/libdemo.so.1\n", lib.display()));
        write(&info.join("libdemo-dev:armhf.list"), &format!("{}/libdemo.so\n", lib.display()));
        let index = AptIndex::load(&info).unwrap();
        for path in ["lib/libdemo.so.1", "usr/lib/libdemo.so.1", "usr/lib/libdemo.so.1.2", "lib/libdemo.so.1.2", "usr/lib/libalt.so.1"] {
            assert_eq!(index.package_of(&root.join(path)), Some("libdemo1"), "{path}");
        }
        // A listed link whose target does not exist still names its package.
        assert_eq!(index.package_of(&root.join("usr/lib/libdemo.so")), Some("libdemo-dev"));
        assert_eq!(index.package_of(&root.join("usr/lib/libnone.so")), None);
    }

    #[test]
    fn the_first_list_in_name_order_keeps_a_shared_path() {
        let info = tempfile::tempdir().unwrap();
        write(&info.path().join("b.list"), "/nowhere/libshared.so.1\n");
        write(&info.path().join("a.list"), "/nowhere/libshared.so.1\n");
        let index = AptIndex::load(info.path()).unwrap();
        assert_eq!(index.package_of(Path::new("/nowhere/libshared.so.1")), Some("a"));
    }

    #[test]
    fn a_missing_dpkg_directory_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(AptIndex::load(&dir.path().join("absent")).is_err());
    }

    #[test]
    fn reads_ldd_lines() {
        assert_eq!(
            parse_ldd_line("\tlibz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x00007f9c1e2f0000)"),
            Some(Linked::Found(Path::new("/lib/x86_64-linux-gnu/libz.so.1")))
        );
        assert_eq!(parse_ldd_line("\tlibfoo.so.3 => not found"), Some(Linked::NotFound("libfoo.so.3")));
        assert_eq!(parse_ldd_line("\tlibsp.so => /opt/a b/libsp.so (0x1)"), Some(Linked::Found(Path::new("/opt/a b/libsp.so"))));
        assert_eq!(parse_ldd_line("\tlibarm.so.1 => /usr/lib/libarm.so.1"), Some(Linked::Found(Path::new("/usr/lib/libarm.so.1"))));
        assert_eq!(parse_ldd_line("\tlinux-vdso.so.1 (0x00007ffd5c3f1000)"), None);
        assert_eq!(parse_ldd_line("\t/lib64/ld-linux-x86-64.so.2 (0x00007f9c1e33b000)"), None);
        assert_eq!(parse_ldd_line("\tlinux-vdso.so.1 =>  (0x00007ffd5c3f1000)"), None);
        assert_eq!(parse_ldd_line("\tnot a dynamic executable"), None);
    }

    #[test]
    fn ldd_refusing_an_object_adds_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("notelf.so");
        write(&text, "not an ELF file");
        assert_eq!(run_ldd(&text).unwrap(), None);
        let index = AptIndex { packages: Vec::new(), owners: HashMap::new() };
        assert!(index.is_empty());
        assert_eq!(index.dependencies(&[text]), (vec![], vec![]));
    }
}
