//! `fork` without `exec`: the one place in the workspace with `unsafe` code.
//!
//! The resident launcher forks a build launcher for every build, which is much cheaper than
//! starting a new process of the binary (see [`super`]). `fork` is unsafe because in a process
//! with several threads the child has only the forking thread: a lock another thread held (the
//! allocator's, stdio's) stays locked for good, so the child may only call async-signal-safe
//! functions until it executes. The resident launcher has a single thread: it is started by
//! executing the binary, dispatched to before anything else runs (no logging, no ZeroMQ
//! context, no runtime), and starts no thread of its own. So no other thread can hold a lock,
//! and the child may do anything the parent could. [`fork_single_threaded`] checks that there
//! is one thread before it forks, so that a later change that adds a thread fails loudly instead
//! of deadlocking a build now and then.

#![allow(unsafe_code)]

use nix::unistd::{ForkResult, Pid, fork};

/// Which side of the fork this is.
pub(super) enum Forked {
    Parent(Pid),
    Child,
}

/// Forks this process, which must have one thread; refused (EDEADLK) when it has more.
pub(super) fn fork_single_threaded() -> nix::Result<Forked> {
    if thread_count() != Some(1) {
        return Err(nix::errno::Errno::EDEADLK);
    }
    // SAFETY: the process has exactly one thread (checked just above, and nothing between the
    // check and the call starts one), so no lock can be held by a thread the child lacks, and
    // the child may call any function, as the module documentation explains.
    match unsafe { fork() }? {
        ForkResult::Parent { child } => Ok(Forked::Parent(child)),
        ForkResult::Child => Ok(Forked::Child),
    }
}

/// The number of threads of this process, from `/proc/self/task`.
fn thread_count() -> Option<usize> {
    Some(std::fs::read_dir("/proc/self/task").ok()?.count())
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("a workspace directory").filter_map(Result::ok) {
            let path = entry.path();
            let name = entry.file_name();
            if path.is_dir() && name != "target" && !name.to_string_lossy().starts_with('.') {
                rust_files(&path, found);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                found.push(path);
            }
        }
    }

    #[test]
    fn this_is_the_only_file_of_the_workspace_that_allows_unsafe_code() {
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace");
        let mut files = Vec::new();
        rust_files(workspace, &mut files);
        assert!(files.len() > 50, "the workspace's sources were found: {}", files.len());
        // Any attribute or lint table that names the lint, not only `allow(...)` alone.
        let naming: Vec<PathBuf> = files
            .into_iter()
            .filter(|path| std::fs::read_to_string(path).is_ok_and(|text| text.contains("unsafe_code")))
            .map(|path| path.strip_prefix(workspace).expect("under the workspace").to_path_buf())
            .collect();
        assert_eq!(naming, vec![PathBuf::from("slave/src/launcher/fork.rs")]);
        // No crate overrides the workspace's lints.
        for member in ["common", "master", "slave", "monitor", "import", "testsupport"] {
            let manifest = std::fs::read_to_string(workspace.join(member).join("Cargo.toml")).expect("a member's manifest");
            assert!(manifest.contains("[lints]\nworkspace = true"), "{member} does not take the workspace's lints");
            assert!(!manifest.contains("unsafe_code"), "{member} sets unsafe_code itself");
        }
    }

    #[test]
    fn a_process_with_threads_is_not_forked() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let other = std::thread::spawn(move || {
            let _ = rx.recv();
        });
        let forked = super::fork_single_threaded();
        drop(tx);
        other.join().expect("the other thread");
        match forked {
            Err(e) => assert_eq!(e, nix::errno::Errno::EDEADLK),
            // Never reached unless the check is broken: end the copy at once.
            Ok(super::Forked::Child) => std::process::abort(),
            Ok(super::Forked::Parent(pid)) => {
                let _ = nix::sys::wait::waitpid(pid, None);
                panic!("a process with two threads was forked");
            }
        }
    }
}
