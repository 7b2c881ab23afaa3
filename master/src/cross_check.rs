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

use piwheels_common::inspect::{Limits, WheelArchive};
use piwheels_common::wheel::WheelName;
use sha2::{Digest, Sha256};

/// The master's default share of successful builds that are cross-checked.
pub const DEFAULT_SHARE: f64 = 0.05;
/// Most lines of differences a verdict keeps; the last says how many more there were.
pub const MAX_DIFFERENCES: usize = 50;
/// Longest line of differences kept, in characters.
const MAX_LINE: usize = 300;

/// Whether the build of `package` `version` on `abi` is in the master's sample of `share`
/// (0 to 1) of builds. The choice is a hash of the three, not a coin: the same build is always
/// chosen or not, so an operator (or a test) can tell why it was, and a builder cannot guess
/// from anything it sees.
pub fn sampled(share: f64, package: &str, version: &str, abi: &str) -> bool {
    let digest = Sha256::new().chain_update(package).chain_update([0]).chain_update(version).chain_update([0]).chain_update(abi).finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    // 53 bits, exactly representable: uniform in [0, 1).
    let point = (u64::from_be_bytes(first) >> 11) as f64 / (1u64 << 53) as f64;
    point < share
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
/// Empty when they hold the same members with the same contents. An error when either cannot
/// be read as a wheel (the published one is the master's trouble; the second build's was
/// checked before).
pub fn compare(published: (&Path, &str), rebuilt: (&Path, &str)) -> Result<Vec<String>, String> {
    let limit = Limits::default().extracted;
    let digests = |(path, name): (&Path, &str)| {
        let file = File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let mut archive = WheelArchive::open(file, name, path).map_err(|e| e.to_string())?;
        archive.member_digests(limit).map_err(|e| e.to_string())
    };
    let first = digests(published)?;
    let second = digests(rebuilt)?;
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

/// `lines` cut to what a verdict keeps: [`MAX_DIFFERENCES`] lines of at most 300 characters,
/// the last saying how many more there were.
pub fn bounded(mut lines: Vec<String>) -> Vec<String> {
    for line in &mut lines {
        if let Some((at, _)) = line.char_indices().nth(MAX_LINE) {
            line.truncate(at);
            line.push('…');
        }
    }
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
    fn a_file_that_is_not_a_wheel_cannot_be_compared() {
        let dir = tempfile::tempdir().unwrap();
        let a = wheel(dir.path(), NAME, &[("demo-1.0.dist-info/METADATA", "Name: demo\n")], 1980, zip::CompressionMethod::Stored);
        let junk = dir.path().join("junk");
        std::fs::write(&junk, b"not a zip").unwrap();
        let err = compare((&a, NAME), (&junk, NAME)).unwrap_err();
        assert!(err.contains("not a zip archive"), "{err}");
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
    fn the_sample_is_the_share_asked_for_and_always_the_same() {
        let chosen = (0..20_000).filter(|n| sampled(DEFAULT_SHARE, &format!("pkg{n}"), "1.0", "cp311")).count();
        // 5% of 20,000 is 1,000; a uniform hash stays within 10% of it.
        assert!((900..=1100).contains(&chosen), "{chosen} of 20000 sampled");
        assert!((0..1000).all(|n| sampled(1.0, &format!("pkg{n}"), "1.0", "cp311")));
        assert!((0..1000).all(|n| !sampled(0.0, &format!("pkg{n}"), "1.0", "cp311")));
        let once: Vec<bool> = (0..100).map(|n| sampled(0.5, &format!("pkg{n}"), "1.0", "cp311")).collect();
        let again: Vec<bool> = (0..100).map(|n| sampled(0.5, &format!("pkg{n}"), "1.0", "cp311")).collect();
        assert_eq!(once, again);
    }

    #[test]
    fn a_verdict_keeps_fifty_lines_of_three_hundred_characters() {
        let long = "x".repeat(400);
        let kept = bounded(vec![long.clone(); 80]);
        assert_eq!(kept.len(), MAX_DIFFERENCES);
        assert_eq!(kept[0].chars().count(), MAX_LINE + 1);
        assert_eq!(kept.last().unwrap(), "and 31 more");
        assert_eq!(bounded(vec!["a".into()]), ["a"]);
    }
}
