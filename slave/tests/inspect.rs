//! Wheel inspection against real wheels made on the fly: pure ones, ones holding shared
//! objects compiled here with gcc (their libraries looked up in this system's dpkg database
//! and checked against `dpkg -S`), and malformed or hostile ones, each refused.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use piwheels_slave::apt::AptIndex;
use piwheels_slave::inspect::{InspectError, Limits, inspect_wheel, inspect_wheel_limited};
use piwheels_testsupport::data::wheel_file;
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

const PURE: &str = "demo_pkg-1.0-py3-none-any.whl";
const PURE_METADATA: &str = "Metadata-Version: 2.1\nName: demo_pkg\nVersion: 1.0\n";

/// The system's index, loaded once for the whole file.
fn system_apt() -> &'static AptIndex {
    static APT: OnceLock<AptIndex> = OnceLock::new();
    APT.get_or_init(|| AptIndex::load_system().expect("reading dpkg's file lists"))
}

/// Writes a wheel holding `entries` (name, bytes), deflated, into `dir`.
fn make_wheel(dir: &Path, filename: &str, entries: &[(&str, &[u8])]) -> PathBuf {
    let path = dir.join(filename);
    let mut zip = ZipWriter::new(fs::File::create(&path).unwrap());
    let options = SimpleFileOptions::default().compression_method(CompressionMethod::Deflated);
    for (name, bytes) in entries {
        zip.start_file(*name, options).unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap();
    path
}

/// Compiles `source` into a shared library `name` in `dir` with gcc and the extra `args`,
/// run from `dir` (so `-L.` finds libraries compiled there before).
fn compile(dir: &Path, name: &str, source: &str, args: &[&str]) -> PathBuf {
    let c = dir.join(format!("{name}.c"));
    fs::write(&c, source).unwrap();
    let out = dir.join(name);
    let status = Command::new("gcc")
        .current_dir(dir)
        .args(["-shared", "-fPIC", "-o"])
        .arg(&out)
        .arg(&c)
        .args(args)
        .status()
        .expect("gcc is needed by these tests (scripts/test.sh installs it)");
    assert!(status.success(), "gcc failed for {name}");
    out
}

/// What `dpkg -S` says ships each library `ldd` resolves for `object`.
fn dpkg_packages_of_libraries(object: &Path) -> BTreeSet<String> {
    let ldd = Command::new("ldd").arg(object).output().unwrap();
    assert!(ldd.status.success());
    let mut packages = BTreeSet::new();
    for line in String::from_utf8(ldd.stdout).unwrap().lines() {
        let Some((_, target)) = line.split_once(" => ") else { continue };
        let path = target.rsplit_once(" (").map_or(target, |(p, _)| p).trim();
        // dpkg knows the path a package shipped, which on merged /usr may be the other spelling.
        let spellings = [path.to_string(), path.strip_prefix("/usr").unwrap_or(path).to_string(), format!("/usr{path}")];
        let owner = spellings.iter().find_map(|p| {
            let out = Command::new("dpkg").args(["-S", p]).output().unwrap();
            // `zlib1g:amd64: /lib/x86_64-linux-gnu/libz.so.1` gives `zlib1g`.
            let text = String::from_utf8(out.stdout).unwrap();
            out.status.success().then(|| text.split(": ").next().unwrap().split(':').next().unwrap().to_string())
        });
        packages.insert(owner.unwrap_or_else(|| panic!("dpkg -S knows no package for {path}")));
    }
    packages
}

#[test]
fn a_pure_wheel_is_described_like_the_test_fixture() {
    let dir = tempfile::tempdir().unwrap();
    let path = make_wheel(dir.path(), PURE, &[("demo_pkg/__init__.py", b"x = 1\n"), ("demo_pkg-1.0.dist-info/METADATA", PURE_METADATA.as_bytes())]);
    let described = inspect_wheel(&path, Some(system_apt())).unwrap();
    assert_eq!(described, wheel_file(PURE, &fs::read(&path).unwrap()));
}

#[test]
fn metadata_is_kept_byte_for_byte_with_requirements_and_build_tag() {
    let dir = tempfile::tempdir().unwrap();
    let metadata = "Metadata-Version: 2.1\r\nName: RPi.GPIO\r\nVersion: 0.7.1\r\nRequires-Python: >=3.7\r\n\
        Requires-Dist: Requests[socks] (>=2)\r\nRequires-Dist: typing_extensions; python_version < \"3.8\"\r\n\
        Requires-Dist: zope.interface\r\n\r\nDescription with \u{e9} and trailing spaces   \r\n";
    let filename = "RPi.GPIO-0.7.1-2-cp311-cp311-linux_armv7l.whl";
    let path = make_wheel(dir.path(), filename, &[("rpi_gpio-0.7.1.dist-info/METADATA", metadata.as_bytes()), ("RPi/__init__.py", b"")]);
    let described = inspect_wheel(&path, None).unwrap();
    assert_eq!(described.metadata.as_slice(), metadata.as_bytes());
    assert_eq!(described.requires_python.as_deref(), Some(">=3.7"));
    assert_eq!(described.dependencies.pip, ["requests", "zope-interface"]);
    assert!(described.dependencies.apt.is_empty() && described.dependencies.unresolved.is_empty());
    assert_eq!(
        (described.package_tag.as_str(), described.version_tag.as_str(), described.build_tag.as_deref()),
        ("RPi.GPIO", "0.7.1", Some("2"))
    );
    assert_eq!((described.py_tag.as_str(), described.abi_tag.as_str(), described.platform_tag.as_str()), ("cp311", "cp311", "linux_armv7l"));
    assert_eq!(described.size, fs::metadata(&path).unwrap().len());
}

#[test]
fn a_shared_object_linking_zlib_and_libm_names_the_packages_dpkg_names() {
    let dir = tempfile::tempdir().unwrap();
    let source = "const char *zlibVersion(void);\ndouble cos(double);\n\
        const char *version(void) { return zlibVersion(); }\ndouble c(double x) { return cos(x); }\n";
    // `-l:libz.so.1` links the runtime library itself, so zlib's -dev package is not needed.
    let object = compile(dir.path(), "_demo.so", source, &["-l:libz.so.1", "-lm"]);
    let expected = dpkg_packages_of_libraries(&object);
    assert!(expected.contains("zlib1g") && expected.contains("libc6"), "{expected:?}");

    let filename = "demo_pkg-1.0-cp311-cp311-linux_x86_64.whl";
    let elf = fs::read(&object).unwrap();
    let path = make_wheel(
        dir.path(),
        filename,
        &[
            ("demo_pkg/_demo.cpython-311-x86_64-linux-gnu.so", &elf),
            ("demo_pkg/fake.so", b"not an ELF file, skipped"),
            ("demo_pkg-1.0.dist-info/METADATA", PURE_METADATA.as_bytes()),
        ],
    );
    let described = inspect_wheel(&path, Some(system_apt())).unwrap();
    assert_eq!(described.dependencies.apt, expected.into_iter().collect::<Vec<_>>());
    assert!(described.dependencies.unresolved.is_empty(), "{:?}", described.dependencies.unresolved);

    // The extraction directory is gone, and without an index nothing is looked up.
    let left: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).filter(|n| n.to_string_lossy().starts_with(".inspect-")).collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(inspect_wheel(&path, None).unwrap().dependencies.apt.is_empty());
}

#[test]
fn a_library_missing_from_the_system_is_unresolved_unless_the_wheel_ships_it() {
    let dir = tempfile::tempdir().unwrap();
    let build = dir.path().join("build");
    fs::create_dir(&build).unwrap();
    let helper = compile(&build, "libdemohelper.so.1", "int helper(void) { return 42; }\n", &["-Wl,-soname,libdemohelper.so.1"]);
    let user = compile(
        &build,
        "_user.so",
        "int helper(void);\nunsigned long strlen(const char *);\nint use(const char *s) { return helper() + (int)strlen(s); }\n",
        &["-fno-builtin", "-Wl,-rpath,$ORIGIN", "-L.", "-l:libdemohelper.so.1"],
    );
    let (helper, user) = (fs::read(helper).unwrap(), fs::read(user).unwrap());

    let alone = make_wheel(
        dir.path(),
        "demo_pkg-1.0-cp311-cp311-linux_x86_64.whl",
        &[("demo_pkg/_user.so", &user), ("demo_pkg-1.0.dist-info/METADATA", PURE_METADATA.as_bytes())],
    );
    let described = inspect_wheel(&alone, Some(system_apt())).unwrap();
    assert_eq!(described.dependencies.unresolved, ["libdemohelper.so.1"]);
    assert_eq!(described.dependencies.apt, ["libc6"]);

    let bundled = make_wheel(
        dir.path(),
        "demo_pkg-1.0-1-cp311-cp311-linux_x86_64.whl",
        &[
            ("demo_pkg/_user.so", &user),
            ("demo_pkg/libdemohelper.so.1", &helper),
            ("demo_pkg-1.0.dist-info/METADATA", PURE_METADATA.as_bytes()),
        ],
    );
    let described = inspect_wheel(&bundled, Some(system_apt())).unwrap();
    assert!(described.dependencies.unresolved.is_empty(), "{:?}", described.dependencies.unresolved);
    assert_eq!(described.dependencies.apt, ["libc6"]);
}

/// Refusal of `entries` under the name [`PURE`], with its message checked to name the file.
fn refusal(entries: &[(&str, &[u8])]) -> InspectError {
    let dir = tempfile::tempdir().unwrap();
    let path = make_wheel(dir.path(), PURE, entries);
    let error = inspect_wheel(&path, Some(system_apt())).expect_err("the wheel was accepted");
    assert!(error.to_string().contains(PURE), "the message does not name the file: {error}");
    error
}

#[test]
fn a_file_that_is_not_a_zip_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(PURE);
    fs::write(&path, b"PK\x03\x04 but nothing like a zip archive").unwrap();
    let error = inspect_wheel(&path, None).unwrap_err();
    assert!(matches!(error, InspectError::NotZip { .. }), "{error}");
    assert!(error.to_string().contains("not a zip archive"), "{error}");
}

#[test]
fn a_file_name_that_is_not_a_wheels_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = make_wheel(dir.path(), "demo_pkg-1.0.zip", &[("demo_pkg-1.0.dist-info/METADATA", PURE_METADATA.as_bytes())]);
    let error = inspect_wheel(&path, None).unwrap_err();
    assert!(matches!(error, InspectError::BadName { .. }), "{error}");
    assert!(error.to_string().contains("does not end in .whl"), "{error}");
    let error = inspect_wheel(&dir.path().join("absent-1.0-py3-none-any.whl"), None).unwrap_err();
    assert!(matches!(error, InspectError::Io { .. }), "{error}");
}

#[test]
fn a_wheel_without_metadata_is_refused() {
    let error = refusal(&[("demo_pkg/__init__.py", b""), ("demo_pkg-1.0.dist-info/RECORD", b""), ("sub/demo_pkg-1.0.dist-info/METADATA", b"")]);
    assert!(matches!(error, InspectError::MissingMetadata { .. }), "{error}");
}

#[test]
fn a_wheel_with_two_metadata_files_is_refused() {
    let error = refusal(&[
        ("demo_pkg-1.0.dist-info/METADATA", PURE_METADATA.as_bytes()),
        ("other-2.0.dist-info/METADATA", b"Name: other\n"),
    ]);
    assert!(matches!(error, InspectError::SeveralMetadata { .. }), "{error}");
    assert!(error.to_string().contains("other-2.0.dist-info/METADATA"), "{error}");
}

/// Two central-directory entries of the same name (the zip writer refuses to make them, so
/// a second name of the same length is patched into the first).
#[test]
fn a_wheel_with_a_duplicated_entry_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = make_wheel(
        dir.path(),
        PURE,
        &[("demo_pkg-1.0.dist-info/METADATA", PURE_METADATA.as_bytes()), ("demo_pkg-1.0.dist-info/METADATX", b"Name: evil\n")],
    );
    let mut bytes = fs::read(&path).unwrap();
    let (from, to) = (b"dist-info/METADATX", b"dist-info/METADATA");
    let mut patched = 0;
    for at in 0..bytes.len() - from.len() {
        if &bytes[at..at + from.len()] == from {
            bytes[at..at + from.len()].copy_from_slice(to);
            patched += 1;
        }
    }
    assert_eq!(patched, 2, "the name is in the local header and in the central directory");
    fs::write(&path, bytes).unwrap();
    let error = inspect_wheel(&path, None).unwrap_err();
    assert!(matches!(error, InspectError::DuplicateEntries { .. }), "{error}");
}

#[test]
fn metadata_of_another_distribution_or_version_is_refused() {
    for dist_info in ["other_pkg-1.0.dist-info/METADATA", "demo_pkg-1.1.dist-info/METADATA", "demo_pkg.dist-info/METADATA"] {
        let error = refusal(&[(dist_info, PURE_METADATA.as_bytes())]);
        assert!(matches!(error, InspectError::ForeignMetadata { .. }), "{error}");
        assert!(error.to_string().contains(dist_info), "{error}");
    }
}

#[test]
fn hostile_entry_names_are_refused() {
    for hostile in ["../evil.py", "/etc/evil.so", "demo_pkg/../../evil", "C:/evil.py", "demo_pkg\\..\\..\\evil"] {
        let error = refusal(&[("demo_pkg-1.0.dist-info/METADATA", PURE_METADATA.as_bytes()), (hostile, b"\x7fELF")]);
        match &error {
            InspectError::HostileEntry { entry, .. } => assert_eq!(entry, hostile),
            other => panic!("{hostile:?}: {other}"),
        }
    }
}

#[test]
fn oversize_metadata_is_refused_whatever_the_archive_declares() {
    let limit = Limits::default().metadata;
    let mut metadata = PURE_METADATA.as_bytes().to_vec();
    metadata.resize(usize::try_from(limit).unwrap() + 1, b' ');
    let error = refusal(&[("demo_pkg-1.0.dist-info/METADATA", &metadata)]);
    assert!(matches!(error, InspectError::MetadataTooLarge { .. }), "{error}");

    // Exactly at the limit is fine.
    metadata.truncate(usize::try_from(limit).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let path = make_wheel(dir.path(), PURE, &[("demo_pkg-1.0.dist-info/METADATA", &metadata)]);
    assert_eq!(inspect_wheel(&path, None).unwrap().metadata.len() as u64, limit);
}

#[test]
fn shared_objects_beyond_the_extraction_limit_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut elf = b"\x7fELF".to_vec();
    elf.resize(64 << 10, 0);
    let path = make_wheel(
        dir.path(),
        PURE,
        &[("demo_pkg-1.0.dist-info/METADATA", PURE_METADATA.as_bytes()), ("a/one.so", &elf), ("b/two.so.1", &elf)],
    );
    let limits = Limits { extracted: 100 << 10, ..Limits::default() };
    let error = inspect_wheel_limited(&path, Some(system_apt()), limits).unwrap_err();
    assert!(matches!(error, InspectError::ExtractionTooLarge { .. }), "{error}");
    // Both fit in twice the room (and, not being real objects, add no dependencies).
    let limits = Limits { extracted: 128 << 10, ..Limits::default() };
    let described = inspect_wheel_limited(&path, Some(system_apt()), limits).unwrap();
    assert_eq!(described.dependencies, Default::default());
}

#[test]
fn entries_that_clash_once_extracted_are_refused() {
    let error = refusal(&[("demo_pkg-1.0.dist-info/METADATA", PURE_METADATA.as_bytes()), ("a/x.so", b"\x7fELF1"), ("a//x.so", b"\x7fELF2")]);
    assert!(matches!(error, InspectError::BadEntry { .. }), "{error}");
}
