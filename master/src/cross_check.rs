//! Reproducibility cross-checks: which builds are checked, which file of the first build a
//! second build's file is compared with, and how two wheels are compared.
//!
//! A cross-check builds a release again on another builder of its ABI, from the same source
//! (and the same `SOURCE_DATE_EPOCH`, which every slave sets), and compares the wheels by what
//! they hold: each member's SHA-256, not the zip's timestamps, order or compression. The
//! second builder is not told that its build is a check, so it cannot build differently for
//! one; its wheels are received and verified like any build's, compared with the published
//! ones by the file juggler, and never published. The slave driver hands checks out
//! ([`crate::slave_driver`]), the database keeps them (`cross_checks`, migration 6).

use std::fs::File;
use std::path::Path;

use piwheels_common::inspect::{InspectError, Limits, WheelArchive};
use piwheels_common::wheel::WheelName;

use crate::access_log::clean;
use crate::calls::db::QueuedCheck;
use crate::db::requests::stored_label;
use crate::drift::host;

/// The master's default share of successful builds that are cross-checked.
pub const DEFAULT_SHARE: f64 = 0.05;
/// Most lines of differences a verdict keeps; the last says how many more there were.
pub const MAX_DIFFERENCES: usize = 50;
/// Longest line of differences kept, in characters.
const MAX_LINE: usize = 300;
/// How much more a second build's wheel may hold than the published one before the rest is
/// not read (it differs anyway), in bytes: a bound on what a builder can make the master
/// inflate.
const MAX_GROWTH: u64 = 64 << 20;

/// Whether a successful build is in the master's sample of `share` (0 to 1) of builds: a draw
/// from the system's random source, so that no builder can tell beforehand which of its builds
/// will be checked (a hash of the release could be computed by anyone).
pub fn sampled(share: f64) -> bool {
    let mut bytes = [0u8; 8];
    if getrandom::getrandom(&mut bytes).is_err() {
        // No randomness, no sample; a check is never owed.
        return false;
    }
    // 53 bits, exactly representable: uniform in [0, 1).
    let point = (u64::from_be_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64;
    point < share
}

/// Whether the builder of `key` and `label` made the build `check` is for, or shares its
/// machine: the same key, or the same host (the label as builds keep it, without a builder's
/// `#N`). A builder never checks its own builds, nor its host's, whatever key it has now.
pub fn same_builder(check: &QueuedCheck, key: Option<&str>, label: &str) -> bool {
    (check.builder_key.is_some() && check.builder_key.as_deref() == key) || host(&check.builder) == host(stored_label(label))
}

/// Whether a builder of `platform` (e.g. `linux_armv7l`) makes wheels a build's `files` can
/// be compared with: each file is pure (`any`) or tagged for that platform, or for a
/// manylinux or musllinux of its machine.
pub fn same_platform(files: &[String], platform: &str) -> bool {
    let machine = platform.strip_prefix("linux_").unwrap_or(platform);
    let fits = |tag: &str| tag == "any" || tag == platform || ((tag.starts_with("manylinux") || tag.starts_with("musllinux")) && tag.ends_with(&format!("_{machine}")));
    files.iter().all(|file| WheelName::parse(file).is_ok_and(|name| name.platform.split('.').any(fits)))
}

/// The file of the first build that a second build's `filename` is compared with: the same
/// wheel (name, version, tags) whatever its build tag. None when the first build made no such
/// wheel.
pub fn counterpart<'a>(filename: &str, first: &'a [String]) -> Option<&'a str> {
    let wheel = WheelName::parse(filename).ok()?;
    first.iter().map(String::as_str).find(|other| WheelName::parse(other).is_ok_and(|other| other.differs_only_in_build_tag(&wheel)))
}

/// What differs between the published wheel `published` and the second build's `rebuilt`
/// (their names as given), member by member: each line names a member and how it differs.
/// Empty when they hold the same members with the same contents. A wheel that cannot be read
/// (a broken archive, more than [`Limits::extracted`] bytes inflated, for the second build
/// more than the published wheel holds and 64 MiB) differs too: the line says which and why.
/// `Err` when the master could not read a file (an I/O error, its own trouble): the
/// comparison may be made again.
pub fn compare(published: (&Path, &str), rebuilt: (&Path, &str)) -> Result<Vec<String>, String> {
    let digests = |(path, name): (&Path, &str), limit: u64| {
        let file = File::open(path).map_err(|e| Err(format!("cannot open {}: {e}", path.display())))?;
        let mut archive = WheelArchive::open(file, name, path).map_err(unreadable)?;
        archive.member_digests(limit).map_err(unreadable)
    };
    let (first, held) = match digests(published, Limits::default().extracted) {
        Ok(found) => found,
        Err(Ok(e)) => return Ok(vec![format!("the published wheel cannot be compared: {e}")]),
        Err(Err(io)) => return Err(io),
    };
    let (second, _) = match digests(rebuilt, held.saturating_add(MAX_GROWTH)) {
        Ok(found) => found,
        Err(Ok(e)) => return Ok(vec![format!("the second build's wheel cannot be compared: {e}")]),
        Err(Err(io)) => return Err(io),
    };
    let mut differences = Vec::new();
    for (member, digest) in &first {
        match second.get(member) {
            Some(other) if other == digest => {}
            Some(_) => differences.push(format!("{member}: contents differ")),
            None => differences.push(format!("{member}: missing from the second build")),
        }
    }
    for member in second.keys().filter(|member| !first.contains_key(*member)) {
        differences.push(format!("{member}: only in the second build"));
    }
    Ok(differences)
}

/// Why a wheel cannot be compared: `Ok` for what its bytes are (a difference), `Err` for an
/// I/O error of the master's.
fn unreadable(e: InspectError) -> Result<String, String> {
    match e {
        InspectError::Io { .. } => Err(e.to_string()),
        other => Ok(other.to_string()),
    }
}

/// `lines` cut to what a verdict keeps: [`MAX_DIFFERENCES`] lines of at most 300 characters
/// without control characters (member names and logs are a builder's), the last saying how
/// many more there were.
pub fn bounded(lines: Vec<String>) -> Vec<String> {
    let mut lines: Vec<String> = lines.iter().map(|line| clean(line, MAX_LINE)).collect();
    if lines.len() > MAX_DIFFERENCES {
        let more = lines.len() - (MAX_DIFFERENCES - 1);
        lines.truncate(MAX_DIFFERENCES - 1);
        lines.push(format!("and {more} more"));
    }
    lines
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use zip::write::SimpleFileOptions;

    use super::*;

    /// A wheel holding `members`, written with the given zip timestamp and compression.
    fn wheel(dir: &Path, name: &str, members: &[(&str, &str)], year: u16, method: zip::CompressionMethod) -> std::path::PathBuf {
        let path = dir.join(name);
        let mut zip = zip::ZipWriter::new(File::create(&path).unwrap());
        let time = zip::DateTime::from_date_and_time(year, 1, 1, 0, 0, 0).unwrap();
        let options = SimpleFileOptions::default().last_modified_time(time).compression_method(method);
        for (member, contents) in members {
            zip.start_file(*member, options).unwrap();
            zip.write_all(contents.as_bytes()).unwrap();
        }
        zip.finish().unwrap();
        path
    }

    const NAME: &str = "demo-1.0-cp311-cp311-linux_armv7l.whl";
    const TAGGED: &str = "demo-1.0-1-cp311-cp311-linux_armv7l.whl";

    #[test]
    fn the_same_members_in_another_order_time_and_compression_are_the_same_wheel() {
        let dir = tempfile::tempdir().unwrap();
        let a = wheel(dir.path(), NAME, &[("demo/__init__.py", "x = 1\n"), ("demo-1.0.dist-info/METADATA", "Name: demo\n")], 1980, zip::CompressionMethod::Stored);
        let other = dir.path().join("other");
        std::fs::create_dir(&other).unwrap();
        let b = wheel(&other, TAGGED, &[("demo-1.0.dist-info/METADATA", "Name: demo\n"), ("demo/__init__.py", "x = 1\n")], 2026, zip::CompressionMethod::Deflated);
        assert_eq!(compare((&a, NAME), (&b, TAGGED)), Ok(Vec::new()));
    }

    #[test]
    fn each_differing_member_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let meta = ("demo-1.0.dist-info/METADATA", "Name: demo\n");
        let a = wheel(dir.path(), NAME, &[meta, ("demo/a.py", "1"), ("demo/gone.py", "")], 1980, zip::CompressionMethod::Deflated);
        let other = dir.path().join("other");
        std::fs::create_dir(&other).unwrap();
        let b = wheel(&other, NAME, &[meta, ("demo/a.py", "2"), ("demo/new.py", "")], 1980, zip::CompressionMethod::Deflated);
        assert_eq!(
            compare((&a, NAME), (&b, NAME)).unwrap(),
            ["demo/a.py: contents differ", "demo/gone.py: missing from the second build", "demo/new.py: only in the second build"]
        );
    }

    #[test]
    fn a_wheel_that_cannot_be_read_differs_and_the_line_says_which() {
        let dir = tempfile::tempdir().unwrap();
        let a = wheel(dir.path(), NAME, &[("demo-1.0.dist-info/METADATA", "Name: demo\n")], 1980, zip::CompressionMethod::Stored);
        let junk = dir.path().join("junk");
        std::fs::write(&junk, b"not a zip").unwrap();
        let second = compare((&a, NAME), (&junk, NAME)).unwrap();
        assert!(matches!(second.as_slice(), [line] if line.starts_with("the second build's wheel cannot be compared") && line.contains("not a zip archive")), "{second:?}");
        let first = compare((&junk, NAME), (&a, NAME)).unwrap();
        // A file the master cannot open is its own trouble, not a difference.
        assert!(compare((&dir.path().join("gone"), NAME), (&a, NAME)).unwrap_err().contains("cannot open"));
        assert!(matches!(first.as_slice(), [line] if line.starts_with("the published wheel cannot be compared")), "{first:?}");
    }

    #[test]
    fn a_second_wheel_much_larger_than_the_published_one_is_not_read_to_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let meta = ("demo-1.0.dist-info/METADATA", "Name: demo\n");
        let a = wheel(dir.path(), NAME, &[meta], 1980, zip::CompressionMethod::Deflated);
        let other = dir.path().join("other");
        std::fs::create_dir(&other).unwrap();
        // 65 MiB of zeros deflate to a few hundred KiB.
        let big = "\0".repeat(65 << 20);
        let b = wheel(&other, NAME, &[meta, ("demo/big.bin", &big)], 1980, zip::CompressionMethod::Deflated);
        let found = compare((&a, NAME), (&b, NAME)).unwrap();
        assert!(matches!(found.as_slice(), [line] if line.contains("the contents exceed")), "{found:?}");
    }

    #[test]
    fn a_second_build_s_file_is_compared_with_the_same_wheel_whatever_its_build_tag() {
        let first = vec!["demo-1.0-py3-none-any.whl".to_string(), TAGGED.to_string()];
        assert_eq!(counterpart(NAME, &first), Some(TAGGED));
        assert_eq!(counterpart("Demo-1.0-2-py3-none-any.whl", &first), Some("demo-1.0-py3-none-any.whl"));
        assert_eq!(counterpart("demo-1.0-cp311-abi3-linux_armv7l.whl", &first), None);
        assert_eq!(counterpart("not a wheel", &first), None);
    }

    #[test]
    fn a_builder_is_the_build_s_own_by_its_key_or_its_label() {
        let check = QueuedCheck {
            check_id: 1,
            release: piwheels_common::protocols::PackageVersion { package: "demo".into(), version: "1.0".into() },
            source: piwheels_common::protocols::SourceFile { filename: "demo-1.0.tar.gz".into(), url: "http://x/demo-1.0.tar.gz".into(), sha256: "0".repeat(64) },
            builder: "x".repeat(100),
            builder_key: Some("key-a".into()),
            files: vec![NAME.into()],
        };
        assert!(same_builder(&check, Some("key-a"), "another label"));
        // A label longer than builds keep is the same label.
        assert!(same_builder(&check, Some("key-b"), &"x".repeat(150)));
        assert!(!same_builder(&check, Some("key-b"), "another label"));
        assert!(!same_builder(&QueuedCheck { builder_key: None, ..check.clone() }, None, "another label"));
        // Another builder of the same host is no second opinion.
        let keyless = QueuedCheck { builder_key: None, builder: "pi4-a#1".into(), ..check.clone() };
        assert!(same_builder(&keyless, None, "pi4-a#2"));
        assert!(!same_builder(&keyless, None, "pi4-b#1"));
    }

    #[test]
    fn a_check_goes_to_a_builder_whose_wheels_can_be_compared() {
        let files = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        assert!(same_platform(&files(&[NAME, "demo-1.0-py3-none-any.whl"]), "linux_armv7l"));
        assert!(!same_platform(&files(&[NAME]), "linux_aarch64"));
        assert!(same_platform(&files(&["demo-1.0-py3-none-any.whl"]), "linux_aarch64"));
        assert!(same_platform(&files(&["demo-1.0-cp311-cp311-manylinux_2_17_armv7l.manylinux2014_armv7l.whl"]), "linux_armv7l"));
        assert!(!same_platform(&files(&["not a wheel"]), "linux_armv7l"));
    }

    #[test]
    fn the_sample_is_the_share_asked_for() {
        let chosen = (0..20_000).filter(|_| sampled(DEFAULT_SHARE)).count();
        // 5% of 20,000 is 1,000, with a standard deviation of 31: 200 either side is 6.5 of
        // them, which a fair draw leaves less than once in a billion runs.
        assert!((800..=1200).contains(&chosen), "{chosen} of 20000 sampled");
        assert!((0..1000).all(|_| sampled(1.0)));
        assert!((0..1000).all(|_| !sampled(0.0)));
    }

    #[test]
    fn a_verdict_keeps_fifty_lines_of_three_hundred_characters_without_control_characters() {
        let long = "x".repeat(400);
        let kept = bounded(vec![long.clone(); 80]);
        assert_eq!(kept.len(), MAX_DIFFERENCES);
        assert_eq!(kept[0].chars().count(), MAX_LINE);
        assert_eq!(kept.last().unwrap(), "and 31 more");
        assert_eq!(bounded(vec!["a\n\u{1b}[31mb\r".into()]), ["a[31mb"]);
    }
}
