//! Wheel file names (the binary distribution format's grammar) and the facts they carry.
//!
//! `{name}-{version}(-{build})?-{python}-{abi}-{platform}.whl`, where each of the three tag
//! fields may hold several tags joined by `.` (a compressed tag set). Every file name that
//! reaches the master is checked here before it touches the file system: no separators, no
//! `..`, no control characters, and the right number of well-formed parts.

use std::fmt;

use crate::names::canonicalize;

/// The longest file name accepted (the `files.filename` column's size).
pub const MAX_FILENAME: usize = 255;

/// A parsed wheel file name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WheelName {
    /// Distribution name as written in the file name (e.g. `RPi.GPIO` or `rpi_gpio`).
    pub name: String,
    /// Version as written.
    pub version: String,
    /// Build tag, when present (starts with a digit).
    pub build: Option<String>,
    /// Python tag set, e.g. `cp311` or `py2.py3`.
    pub python: String,
    /// ABI tag set, e.g. `cp311`, `abi3`, `none`.
    pub abi: String,
    /// Platform tag set, e.g. `linux_armv7l` or `any`.
    pub platform: String,
}

/// Why a file name is not a wheel's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid wheel file name {name:?}: {reason}")]
pub struct BadWheelName {
    /// The name, as given.
    pub name: String,
    /// What is wrong.
    pub reason: &'static str,
}

impl WheelName {
    /// Parses and checks a wheel file name.
    pub fn parse(filename: &str) -> Result<WheelName, BadWheelName> {
        let bad = |reason| Err(BadWheelName { name: filename.to_string(), reason });
        if filename.len() > MAX_FILENAME {
            return bad("longer than 255 bytes");
        }
        if filename.contains(['/', '\\']) {
            return bad("contains a path separator");
        }
        if filename.chars().any(char::is_control) {
            return bad("contains a control character");
        }
        if filename.starts_with('.') || filename.contains("..") {
            return bad("contains `..` or starts with a dot");
        }
        let Some(stem) = filename.strip_suffix(".whl") else { return bad("does not end in .whl") };
        let parts: Vec<&str> = stem.split('-').collect();
        let (name, version, build, python, abi, platform) = match parts.as_slice() {
            [n, v, p, a, pl] => (*n, *v, None, *p, *a, *pl),
            [n, v, b, p, a, pl] => (*n, *v, Some(*b), *p, *a, *pl),
            _ => return bad("needs 5 or 6 dash-separated parts"),
        };
        let word = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '+' | '!'));
        if !word(name) || !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
            return bad("the distribution name is not valid");
        }
        if !word(version) {
            return bad("the version is not valid");
        }
        if let Some(b) = build
            && (!word(b) || !b.starts_with(|c: char| c.is_ascii_digit()))
        {
            return bad("the build tag must start with a digit");
        }
        let tags = |s: &str| !s.is_empty() && s.split('.').all(|t| !t.is_empty() && t.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
        if !tags(python) || !tags(abi) || !tags(platform) {
            return bad("a tag is not valid");
        }
        Ok(WheelName {
            name: name.to_string(),
            version: version.to_string(),
            build: build.map(str::to_string),
            python: python.to_string(),
            abi: abi.to_string(),
            platform: platform.to_string(),
        })
    }

    /// Whether the file's distribution name is the project `package` (canonical name).
    pub fn is_for(&self, package: &str) -> bool {
        canonicalize(&self.name) == package
    }

    /// Whether `other` is the same wheel but for its build tag, however its project name and
    /// version are spelled: installers choose between the two by build tag alone.
    pub fn differs_only_in_build_tag(&self, other: &WheelName) -> bool {
        canonicalize(&self.name) == canonicalize(&other.name)
            && crate::names::same_version(&self.version, &other.version)
            && (self.python.as_str(), self.abi.as_str(), self.platform.as_str()) == (other.python.as_str(), other.abi.as_str(), other.platform.as_str())
    }

    /// How installers rank this wheel among those that differ from it only in their build
    /// tag (PEP 427): no tag lowest, then by the tag's leading number, then by the rest of it.
    pub fn build_tag_rank(&self) -> Option<(u64, &str)> {
        let tag = self.build.as_deref()?;
        let digits = tag.bytes().take_while(u8::is_ascii_digit).count();
        // Longer numbers than u64 holds (the master refuses more than 9 digits) rank highest.
        Some((tag[..digits].parse().unwrap_or(u64::MAX), &tag[digits..]))
    }

    /// This wheel's name with a build tag above every one of `taken` that differs from it only
    /// in its build tag, its own included: the number after the highest such tag's leading
    /// number, so that installers prefer it.
    pub fn with_next_build_tag<'a>(&self, taken: impl IntoIterator<Item = &'a WheelName>) -> WheelName {
        let number = |name: &WheelName| name.build_tag_rank().map_or(0, |(number, _)| number);
        let highest = taken.into_iter().filter(|t| self.differs_only_in_build_tag(t)).map(number).chain([number(self)]).max().unwrap_or(0);
        WheelName { build: Some(highest.saturating_add(1).to_string()), ..self.clone() }
    }

    /// For abi3 wheels, the lowest CPython (major * 100 + minor) the Python tags allow, e.g.
    /// 309 for `cp39-abi3`; None for other wheels.
    pub fn python_floor(&self) -> Option<i32> {
        abi3_floor(&self.python, &self.abi)
    }
}

/// The lowest Python version (major * 100 + minor) an abi3 wheel supports, from its Python
/// tag set: `cp38.cp39` gives 308, `cp311` 311. None for a wheel that is not abi3, or whose
/// Python tags name no CPython version (`py3`).
pub fn abi3_floor(python: &str, abi: &str) -> Option<i32> {
    if !abi.split('.').any(|tag| tag == "abi3") {
        return None;
    }
    python.split('.').filter_map(cpython_version).min()
}

/// `cpXY...` as X * 100 + Y...: `cp39` is 309, `cp311` is 311. None for anything else
/// (including `cp3`, which names no minor version).
fn cpython_version(tag: &str) -> Option<i32> {
    let digits = tag.strip_prefix("cp")?;
    if digits.len() < 2 || digits.len() > 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (major, minor) = digits.split_at(1);
    Some(major.parse::<i32>().ok()? * 100 + minor.parse::<i32>().ok()?)
}

impl fmt::Display for WheelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.name, self.version)?;
        if let Some(build) = &self.build {
            write!(f, "-{build}")?;
        }
        write!(f, "-{}-{}-{}.whl", self.python, self.abi, self.platform)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_build_tag_is_above_every_tag_of_the_same_wheel() {
        let parse = |n: &str| WheelName::parse(n).unwrap();
        let wheel = parse("foo-1.0-cp311-cp311-linux_armv7l.whl");
        let next = |taken: &[&str]| wheel.with_next_build_tag(&taken.iter().map(|n| parse(n)).collect::<Vec<_>>()).to_string();
        assert_eq!(next(&["foo-1.0-cp311-cp311-linux_armv7l.whl"]), "foo-1.0-1-cp311-cp311-linux_armv7l.whl");
        assert_eq!(
            next(&["foo-1.0-cp311-cp311-linux_armv7l.whl", "foo-1.0-1-cp311-cp311-linux_armv7l.whl", "Foo-1.0.0-3rc-cp311-cp311-linux_armv7l.whl"]),
            "foo-1.0-4-cp311-cp311-linux_armv7l.whl",
            "the highest leading number of a tag of the same wheel, however the name and version are spelled"
        );
        assert_eq!(
            next(&["foo-1.0-7-cp311-cp311-linux_aarch64.whl", "foo-1.1-7-cp311-cp311-linux_armv7l.whl", "bar-1.0-7-cp311-cp311-linux_armv7l.whl"]),
            "foo-1.0-1-cp311-cp311-linux_armv7l.whl",
            "other platforms, versions and projects do not count"
        );
        let tagged = parse("foo-1.0-2-py3-none-any.whl");
        assert_eq!(tagged.with_next_build_tag(&[]).to_string(), "foo-1.0-3-py3-none-any.whl", "above the wheel's own tag");
    }

    #[test]
    fn parses_plain_build_tagged_and_compressed_names() {
        let w = WheelName::parse("numpy-1.26.4-cp311-cp311-linux_armv7l.whl").unwrap();
        assert_eq!((w.name.as_str(), w.version.as_str(), w.build.clone(), w.abi.as_str()), ("numpy", "1.26.4", None, "cp311"));
        let w = WheelName::parse("RPi.GPIO-0.7.1-1-cp39-cp39-linux_armv6l.whl").unwrap();
        assert_eq!(w.build.as_deref(), Some("1"));
        assert!(w.is_for("rpi-gpio"));
        let w = WheelName::parse("six-1.16.0-py2.py3-none-any.whl").unwrap();
        assert_eq!(w.python, "py2.py3");
        for name in ["numpy-1.26.4-cp311-cp311-linux_armv7l.whl", "a-1-2b-py3-none-any.whl"] {
            assert_eq!(WheelName::parse(name).unwrap().to_string(), name);
        }
    }

    #[test]
    fn refuses_hostile_and_malformed_names() {
        for name in [
            "../evil-1.0-py3-none-any.whl",
            "foo/../../etc-1.0-py3-none-any.whl",
            "foo-1.0-py3-none-any.whl/..",
            "sub/foo-1.0-py3-none-any.whl",
            "foo\\bar-1.0-py3-none-any.whl",
            "foo\0-1.0-py3-none-any.whl",
            "foo-1.0-py3-none-any.tar.gz",
            "foo-1.0-py3-any.whl",
            "foo-1.0-x-y-py3-none-any.whl",
            "foo-1.0-build-py3-none-any.whl",
            ".foo-1.0-py3-none-any.whl",
            "foo-1.0-py3-none-.whl",
            "foo-1.0-py3-no ne-any.whl",
            "",
        ] {
            assert!(WheelName::parse(name).is_err(), "{name:?} was accepted");
        }
        let long = format!("{}-1.0-py3-none-any.whl", "a".repeat(250));
        assert!(WheelName::parse(&long).is_err());
    }

    #[test]
    fn abi3_floors() {
        assert_eq!(WheelName::parse("c-1-cp39-abi3-linux_armv7l.whl").unwrap().python_floor(), Some(309));
        assert_eq!(WheelName::parse("c-1-cp311.cp38-abi3-linux_armv7l.whl").unwrap().python_floor(), Some(308));
        assert_eq!(WheelName::parse("c-1-cp311-cp311-linux_armv7l.whl").unwrap().python_floor(), None);
        assert_eq!(abi3_floor("cp311", "abi3"), Some(311));
        assert_eq!(abi3_floor("cp312.cp310", "abi3"), Some(310));
        assert_eq!(abi3_floor("py3", "abi3"), None);
        assert_eq!(abi3_floor("cp3", "abi3"), None);
        assert_eq!(abi3_floor("cp39", "cp39"), None);
        assert_eq!(abi3_floor("py3", "none"), None);
    }
}
