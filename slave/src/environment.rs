//! What this builder builds with, learnt once at start-up and sent in its hello: the OS and
//! kernel, the target Python and its pip, setuptools and wheel, and the C compiler and linker
//! on `PATH`. The master records it with each build and in the build's signed provenance.
//!
//! Nothing here stops the slave: a tool that is missing or does not answer is left out (a
//! builder without a C compiler builds pure wheels all the same), and what a tool says is cut
//! to the length the master accepts.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use piwheels_common::protocols::{HostInfo, SlaveHello};

/// Prints `name version` a line for the interpreter and its build tools ("none" when missing).
const SCRIPT: &str = r#"
import platform
from importlib import metadata
print("python", platform.python_version())
for name in ("pip", "setuptools", "wheel"):
    try:
        print(name, metadata.version(name))
    except metadata.PackageNotFoundError:
        print(name, "none")
"#;

/// The environment of a builder that runs `python` on the host `host` describes.
pub fn probe(python: &str, host: &HostInfo) -> BTreeMap<String, String> {
    let mut environment = BTreeMap::new();
    let os = format!("{} {}", host.os_name, host.os_version).trim().to_string();
    if !os.is_empty() {
        environment.insert("os".to_string(), os);
    }
    if let Ok(uname) = nix::sys::utsname::uname() {
        environment.insert("kernel".to_string(), format!("{} {}", uname.release().to_string_lossy(), uname.machine().to_string_lossy()));
    }
    if let Some(out) = first_lines(python, &["-I", "-c", SCRIPT]) {
        for line in out.lines() {
            if let Some((name, version)) = line.trim().split_once(' ') {
                environment.insert(name.to_string(), version.to_string());
            }
        }
    }
    for (name, program) in [("cc", "cc"), ("ld", "ld")] {
        if let Some(first) = first_lines(program, &["--version"]).and_then(|out| out.lines().next().map(str::to_string)) {
            environment.insert(name.to_string(), first);
        }
    }
    environment
        .into_iter()
        .map(|(name, value)| (name, cut(&value)))
        .filter(|(_, value)| !value.is_empty())
        .take(SlaveHello::MAX_ENVIRONMENT)
        .collect()
}

/// How long a tool may take to say its version, and how much of what it says is read.
const TOOL_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_TOOL_OUTPUT: u64 = 64 << 10;

/// What `program args` prints on standard output when it succeeds in time.
fn first_lines(program: &str, args: &[&str]) -> Option<String> {
    crate::bounded::output(Command::new(program).args(args), MAX_TOOL_OUTPUT, TOOL_TIMEOUT).ok().flatten()
}

/// `value` without control characters, cut to what the master accepts at a character boundary.
fn cut(value: &str) -> String {
    let clean: String = value.chars().filter(|c| !c.is_control()).collect();
    let mut end = clean.len().min(SlaveHello::MAX_ENVIRONMENT_TEXT);
    while !clean.is_char_boundary(end) {
        end -= 1;
    }
    clean[..end].trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interpreter_and_its_tools_are_reported_and_a_missing_one_left_out() {
        let host = HostInfo { os_name: "Debian GNU/Linux".into(), os_version: "12 (bookworm)".into(), ..HostInfo::default() };
        let environment = probe("python3", &host);
        assert_eq!(environment["os"], "Debian GNU/Linux 12 (bookworm)");
        assert!(environment["kernel"].contains(' '), "{environment:?}");
        let python = &environment["python"];
        assert!(python.starts_with('3') && python.split('.').count() == 3, "{environment:?}");
        assert!(environment.contains_key("pip") && environment.contains_key("setuptools"), "{environment:?}");
        let hello = SlaveHello { environment: environment.clone(), ..piwheels_testsupport::data::slave_hello("pi") };
        assert_eq!(hello.environment_problem(), None);
        let without = probe("/nonexistent/python3", &HostInfo::default());
        assert!(!without.contains_key("python") && !without.contains_key("os"), "{without:?}");
    }

    #[test]
    fn long_answers_are_cut_where_the_master_allows() {
        let long = "é".repeat(150);
        let cut = cut(&format!("{long}\u{7}"));
        assert!(cut.len() <= SlaveHello::MAX_ENVIRONMENT_TEXT && cut.chars().all(|c| c == 'é'), "{cut}");
    }
}
