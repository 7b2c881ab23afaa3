//! Every program of the workspace answers `--help` and `--version` with status 0, naming
//! itself, whoever runs it (CI runs as root, where piw-slave refuses to build) and with no
//! configuration file or environment at all.

use std::process::Command;

use piwheels_testsupport::programs::program;

const PROGRAMS: [&str; 13] = [
    "piw-master", "piw-slave", "piw-monitor", "piw-import", "piw-add", "piw-remove", "piw-rebuild", "piw-initdb", "piw-logger", "piw-keys",
    "piw-check", "piw-verify", "piw-triage",
];

/// The list above is every binary the workspace's crates build (`<crate>/src/bin/<name>.rs`).
#[test]
fn the_list_is_every_program() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut found: Vec<String> = std::fs::read_dir(root)
        .unwrap()
        .flatten()
        .filter_map(|krate| std::fs::read_dir(krate.path().join("src/bin")).ok())
        .flat_map(|bins| bins.flatten().filter_map(|bin| bin.file_name().to_str()?.strip_suffix(".rs").map(str::to_string)))
        .collect();
    found.sort();
    let mut listed: Vec<String> = PROGRAMS.iter().map(|p| p.to_string()).collect();
    listed.sort();
    assert_eq!(found, listed);
}

#[test]
fn every_program_answers_help_and_version() {
    for name in PROGRAMS {
        for flag in ["--help", "--version"] {
            let output = Command::new(program(name)).arg(flag).env_clear().output().unwrap_or_else(|e| panic!("{name}: {e}"));
            let stdout = String::from_utf8_lossy(&output.stdout);
            assert!(output.status.success(), "{name} {flag} exited {:?}: {}", output.status.code(), String::from_utf8_lossy(&output.stderr));
            assert!(stdout.contains(name), "{name} {flag} does not name itself: {stdout}");
        }
    }
}
