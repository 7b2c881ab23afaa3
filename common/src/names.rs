//! Package names and versions: PEP 503 canonical names, PEP 440 versions.

use std::str::FromStr;

/// The PEP 503 canonical form of a project name: lower case, with every run of `-`, `_` and
/// `.` replaced by a single `-`.
pub fn canonicalize(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut in_run = false;
    for c in name.chars() {
        if matches!(c, '-' | '_' | '.') {
            if !in_run {
                out.push('-');
            }
            in_run = true;
        } else {
            out.extend(c.to_lowercase());
            in_run = false;
        }
    }
    out
}

/// A parsed PEP 440 version, or None for a version string that is not one (a "legacy"
/// version, which modern installers ignore).
pub fn parse_version(version: &str) -> Option<pep440_rs::Version> {
    pep440_rs::Version::from_str(version).ok()
}

/// Whether a version is a pre-release (alpha, beta, release candidate or development
/// release). Legacy versions are not.
pub fn is_prerelease(version: &str) -> bool {
    parse_version(version).is_some_and(|v| v.any_prerelease())
}

/// Whether a wheel's version tag names `version`: the same text, the same PEP 440 version, or
/// the same text once the file name's escaping (`-` written `_`) is undone.
pub fn same_version(tag: &str, version: &str) -> bool {
    tag == version
        || tag == version.replace('-', "_")
        || parse_version(tag).is_some_and(|t| parse_version(version).is_some_and(|v| t == v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_names() {
        assert_eq!(canonicalize("Foo"), "foo");
        assert_eq!(canonicalize("foo_bar"), "foo-bar");
        assert_eq!(canonicalize("RPi.GPIO"), "rpi-gpio");
        assert_eq!(canonicalize("a-_.b"), "a-b");
    }

    #[test]
    fn prereleases() {
        for v in ["1.0a1", "1.0b2", "1.0rc1", "1.0.dev3", "2.0c1", "1.0-preview1"] {
            assert!(is_prerelease(v), "{v}");
        }
        for v in ["1.0", "1.0.post1", "2024.1", "Kenneth Reitz", "1.0+local"] {
            assert!(!is_prerelease(v), "{v}");
        }
    }

    #[test]
    fn wheel_version_tags_match_their_release() {
        assert!(same_version("1.0", "1.0"));
        assert!(same_version("1.0", "1.0.0"));
        assert!(same_version("1.0_beta", "1.0-beta"));
        assert!(!same_version("1.1", "1.0"));
    }
}
