//! What the endpoint accepts as names, versions and free texts.

use piwheels_common::names::canonicalize;
use piwheels_common::protocols::WireError;

use super::MAX_NAME;

/// A project name as typed: letters, digits, `.`, `_` and `-`, starting and ending with a
/// letter or digit.
pub(super) fn check_name(name: &str) -> Result<(), WireError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok { Ok(()) } else { Err(WireError::refused(format!("{name:?} is not a valid project name"))) }
}

/// Checks a project name and gives its canonical form.
pub(super) fn check_package(name: &str) -> Result<String, WireError> {
    check_name(name)?;
    Ok(canonicalize(name))
}

/// A version string: what PyPI publishes, without separators or control characters.
pub(super) fn check_version(version: &str) -> Result<(), WireError> {
    let ok = !version.is_empty()
        && version.len() <= MAX_NAME
        && version.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '+' | '!'));
    if ok { Ok(()) } else { Err(WireError::refused(format!("{version:?} is not a valid version"))) }
}

/// A free text: no control characters, at most `max` characters, and not empty unless
/// `empty_ok`.
pub(super) fn check_text(what: &str, text: &str, max: usize, empty_ok: bool) -> Result<(), WireError> {
    if text.is_empty() && !empty_ok {
        return Err(WireError::refused(format!("{what} must not be empty")));
    }
    if text.chars().count() > max {
        return Err(WireError::refused(format!("{what} is longer than {max} characters")));
    }
    if text.chars().any(char::is_control) {
        return Err(WireError::refused(format!("{what} holds control characters")));
    }
    Ok(())
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_versions_and_texts_are_checked() {
        assert_eq!(check_package("RPi.GPIO"), Ok("rpi-gpio".to_string()));
        for bad in ["", "-x", "x-", "a/b", "a b", "../x", "x\n"] {
            assert!(check_package(bad).is_err(), "{bad:?}");
        }
        assert!(check_version("1.0.post1+local").is_ok());
        for bad in ["", "1 0", "1/0", "1\0"] {
            assert!(check_version(bad).is_err(), "{bad:?}");
        }
        assert!(check_text("x", "", 10, true).is_ok());
        assert!(check_text("x", "", 10, false).is_err());
        assert!(check_text("x", "a\u{7}", 10, false).is_err());
        assert!(check_text("x", &"é".repeat(10), 10, false).is_ok());
        assert!(check_text("x", &"é".repeat(11), 10, false).is_err());
    }
}
