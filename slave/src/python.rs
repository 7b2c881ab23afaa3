//! What the target interpreter builds for: its version digits, ABI tag and platform tag, learnt
//! once at start-up by running the configured Python with a short script.
//!
//! The script uses the standard library only (no `packaging`, no `wheel`), so any Python the
//! builds run with can answer. It reports the tags a CPython build's binary wheels carry:
//! `cp` and the version digits, with `t` for a free-threaded and `d` for a debug interpreter
//! (and `m` for the pymalloc builds before 3.8); another implementation reports its `SOABI`.
//! The platform is `sysconfig.get_platform()` with `-` and `.` made `_`, except that a 32-bit
//! interpreter on a 64-bit kernel reports the 32-bit platform its wheels are tagged with
//! (`linux_armv7l` on `aarch64`, `linux_i686` on `x86_64`), as the `wheel` package does.

use std::process::{Command, Stdio};

/// The interpreter's tags, as sent in the slave's hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// Version digits, e.g. `311`.
    pub py_version: String,
    /// ABI tag of its binary wheels, e.g. `cp311`.
    pub abi: String,
    /// Platform tag of its binary wheels, e.g. `linux_armv7l`.
    pub platform: String,
}

/// Why the interpreter could not tell us its tags.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The interpreter did not start.
    #[error("cannot run the Python interpreter {python:?}: {source}")]
    Spawn {
        /// The command.
        python: String,
        /// What the system said.
        source: std::io::Error,
    },
    /// It ran but failed or answered something else than three tags.
    #[error("the Python interpreter {python:?} did not report its tags ({problem}){}", stderr_note(.stderr))]
    BadAnswer {
        /// The command.
        python: String,
        /// What was wrong with the answer.
        problem: String,
        /// What it wrote on its standard error.
        stderr: String,
    },
}

fn stderr_note(stderr: &str) -> String {
    let stderr = stderr.trim();
    if stderr.is_empty() { String::new() } else { format!(": {stderr}") }
}

/// Prints the version digits, the ABI tag and the platform tag, one a line.
const SCRIPT: &str = r#"
import sys, sysconfig
v = sys.version_info
digits = "%d%d" % (v[0], v[1])
if sys.implementation.name == "cpython":
    abi = "cp" + digits
    if sysconfig.get_config_var("Py_GIL_DISABLED"):
        abi += "t"
    if hasattr(sys, "gettotalrefcount"):
        abi += "d"
    if v < (3, 8) and sysconfig.get_config_var("WITH_PYMALLOC"):
        abi += "m"
else:
    abi = sysconfig.get_config_var("SOABI") or sys.implementation.name
plat = sysconfig.get_platform()
abi = abi.replace("-", "_").replace(".", "_")
plat = plat.replace("-", "_").replace(".", "_")
if sys.maxsize <= 2 ** 32:
    plat = {"linux_x86_64": "linux_i686", "linux_aarch64": "linux_armv7l"}.get(plat, plat)
print(digits)
print(abi)
print(plat)
"#;

/// Runs `python` (a command name looked up on `PATH`, or a path) and reads its tags.
pub fn probe(python: &str) -> Result<Platform, ProbeError> {
    let output = Command::new(python)
        .args(["-I", "-c", SCRIPT])
        .stdin(Stdio::null())
        .output()
        .map_err(|source| ProbeError::Spawn { python: python.to_string(), source })?;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let bad = |problem: String| ProbeError::BadAnswer { python: python.to_string(), problem, stderr: stderr.clone() };
    if !output.status.success() {
        return Err(bad(format!("it exited with {}", output.status)));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    parse_answer(&stdout).map_err(bad)
}

/// Reads the script's three lines.
fn parse_answer(stdout: &str) -> Result<Platform, String> {
    let lines: Vec<&str> = stdout.lines().map(str::trim).filter(|line| !line.is_empty()).collect();
    let [py_version, abi, platform] = lines.as_slice() else {
        return Err(format!("expected three lines, got {stdout:?}"));
    };
    if !py_version.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!("version digits {py_version:?} are not digits"));
    }
    let tag_ok = |tag: &str| !tag.is_empty() && tag.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    for tag in [abi, platform] {
        if !tag_ok(tag) {
            return Err(format!("{tag:?} is not a wheel tag"));
        }
    }
    Ok(Platform { py_version: py_version.to_string(), abi: abi.to_string(), platform: platform.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_three_tags() {
        assert_eq!(
            parse_answer("311\ncp311\nlinux_armv7l\n"),
            Ok(Platform { py_version: "311".into(), abi: "cp311".into(), platform: "linux_armv7l".into() })
        );
    }

    #[test]
    fn refuses_anything_else() {
        for answer in ["", "311\ncp311\n", "3.11\ncp311\nlinux_x86_64\n", "311\ncp 311\nlinux_x86_64\n", "311\ncp311\nlinux-x86_64\n", "1\n2\n3\n4\n"] {
            assert!(parse_answer(answer).is_err(), "{answer:?}");
        }
    }

    #[test]
    fn a_missing_interpreter_is_named() {
        let error = probe("/nonexistent/python3").expect_err("no such interpreter");
        assert!(error.to_string().contains("/nonexistent/python3"), "{error}");
    }

    #[test]
    fn a_failing_interpreter_shows_its_error() {
        // `false` ignores its arguments and fails: not an interpreter.
        let error = probe("false").expect_err("not an interpreter");
        assert!(matches!(error, ProbeError::BadAnswer { .. }), "{error}");
    }

    /// The host's own python3 answers with tags of the expected shape.
    #[test]
    fn the_hosts_python_reports_its_tags() {
        let platform = probe("python3").expect("python3 on PATH");
        assert!(platform.abi.ends_with(&platform.py_version) || platform.abi.contains(&platform.py_version), "{platform:?}");
        assert!(platform.platform.starts_with("linux_"), "{platform:?}");
    }
}
