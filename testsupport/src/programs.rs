//! The workspace's programs, for tests that run programs of another crate (cargo tells a test
//! only the paths of its own crate's programs) and tests that must not run them as root.

use std::path::PathBuf;
use std::process::Command;

/// The path of workspace program `name`, built beside the test's own executable. A workspace
/// test run (`cargo nextest run --workspace`) builds every program first; a run of one crate's
/// tests may not, which this says plainly instead of failing obscurely later.
pub fn program(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    // Tests live in target/<profile>/deps/, programs in target/<profile>/.
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>/deps/<test>");
    let path = profile_dir.join(name);
    assert!(
        path.is_file(),
        "{name} is not built at {}: run the whole workspace's tests, or `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

/// Whether this process runs as root (CI does).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// A command that runs `program` as the unprivileged user `nobody` when the test runs as
/// root (builders refuse root), and as the test's own user otherwise. Whatever the program
/// must read or write has to be open to that user: tests keep such files in directories they
/// make with [`shared_dir`].
pub fn unprivileged(program: &std::path::Path) -> Command {
    if is_root() {
        let mut command = Command::new("setpriv");
        command.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    }
}

/// A temporary directory that the user of [`unprivileged`] commands may write to.
pub fn shared_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("a temporary directory");
    // Sticky and open to all, like /tmp: the test's files and the program's may live side by side.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).expect("chmod the shared directory");
    dir
}
