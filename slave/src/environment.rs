//! What this builder builds with, learnt once at start-up and sent in its hello: the OS and
//! kernel, the target Python and its pip, setuptools and wheel, the C compiler and linker on
//! `PATH`, and a digest of the installed Debian packages. The master records it with each
//! build and in the build's signed provenance, and compares it with the other builders of the
//! same ABI (drift).
//!
//! Nothing here stops the slave: a tool that is missing or does not answer is left out (a
//! builder without a C compiler builds pure wheels all the same), and what a tool says is cut
//! to the length the master accepts.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use piwheels_common::protocols::{HostInfo, SlaveHello};
use sha2::{Digest, Sha256};

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
    let mut listing = Command::new("dpkg-query");
    listing.args(["-W", "-f", "${binary:Package} ${Version}\\n"]);
    // A listing cut at the bound would hide changes past it: none is better.
    if let Ok(Some(packages)) = crate::bounded::output(&mut listing, MAX_PACKAGES_OUTPUT, TOOL_TIMEOUT)
        && packages.len() < MAX_PACKAGES_OUTPUT as usize
    {
        environment.insert("debian-packages".to_string(), packages_digest(&packages));
    }
    environment
        .into_iter()
        .map(|(name, value)| (name, cut(&value)))
        .filter(|(_, value)| !value.is_empty())
        .take(SlaveHello::MAX_ENVIRONMENT)
        .collect()
}

/// The installed packages (`name version` a line, in any order) as their count and a digest
/// that changes when any package is added, removed or upgraded.
fn packages_digest(listing: &str) -> String {
    let mut lines: Vec<&str> = listing.lines().map(str::trim).filter(|line| !line.is_empty()).collect();
    lines.sort_unstable();
    let mut digest = Sha256::new();
    for line in &lines {
        digest.update(line.as_bytes());
        digest.update(b"\n");
    }
    format!("{} packages, sha256:{}", lines.len(), hex::encode(digest.finalize()))
}

/// How long a tool may take to say its version, and how much of what it says is read.
const TOOL_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_TOOL_OUTPUT: u64 = 64 << 10;
/// How much of the installed packages' listing is read (a desktop system's is under 200 KiB).
const MAX_PACKAGES_OUTPUT: u64 = 8 << 20;

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
        // The test machines run Debian.
        assert!(environment["debian-packages"].contains(" packages, sha256:"), "{environment:?}");
        let hello = SlaveHello { environment: environment.clone(), ..piwheels_testsupport::data::slave_hello("pi") };
        assert_eq!(hello.environment_problem(), None);
        let without = probe("/nonexistent/python3", &HostInfo::default());
        assert!(!without.contains_key("python") && !without.contains_key("os"), "{without:?}");
    }

    #[test]
    fn the_debian_packages_digest_ignores_order_and_sees_an_upgrade() {
        let listing = "libc6:arm64 2.36-9\nzlib1g:arm64 1:1.2.13\n";
        let digest = packages_digest(listing);
        assert!(digest.starts_with("2 packages, sha256:") && digest.len() == "2 packages, sha256:".len() + 64, "{digest}");
        assert_eq!(packages_digest("zlib1g:arm64 1:1.2.13\n\nlibc6:arm64 2.36-9"), digest);
        assert_ne!(packages_digest("libc6:arm64 2.36-9+deb12u1\nzlib1g:arm64 1:1.2.13\n"), digest);
        assert!(digest.len() <= SlaveHello::MAX_ENVIRONMENT_TEXT);
    }

    #[test]
    fn long_answers_are_cut_where_the_master_allows() {
        let long = "é".repeat(150);
        let cut = cut(&format!("{long}\u{7}"));
        assert!(cut.len() <= SlaveHello::MAX_ENVIRONMENT_TEXT && cut.chars().all(|c| c == 'é'), "{cut}");
    }
}
