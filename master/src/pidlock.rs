//! One master per state directory and per output directory: the master holds an exclusive
//! lock on `<state-dir>/piw-master.pid` (which records its pid) and on the output directory
//! itself, for as long as it runs. A second master is refused with the running one's pid.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Why the master cannot take its locks.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another master runs with this state directory.
    #[error("another piw-master (pid {pid}) is running with state directory {dir}")]
    StateDirInUse {
        /// The state directory.
        dir: PathBuf,
        /// The running master's pid, as its pid file says.
        pid: String,
    },
    /// Another master writes this output directory.
    #[error("another piw-master ({holder}) is writing output directory {dir}")]
    OutputInUse {
        /// The output directory.
        dir: PathBuf,
        /// `pid N` when it could be found.
        holder: String,
    },
    /// A file system error.
    #[error("{what} {path}: {source}")]
    Io {
        /// What we were doing.
        what: &'static str,
        /// Where.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// The master's locks; released (and the pid file removed) when dropped.
#[derive(Debug)]
pub struct PidLock {
    path: PathBuf,
    _pid_file: File,
    _output_dir: File,
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> LockError {
    let path = path.to_path_buf();
    move |source| LockError::Io { what, path, source }
}

impl PidLock {
    /// Takes both locks, creating the directories if needed.
    pub fn acquire(state_dir: &Path, output_dir: &Path) -> Result<PidLock, LockError> {
        std::fs::create_dir_all(state_dir).map_err(io("cannot create", state_dir))?;
        std::fs::create_dir_all(output_dir).map_err(io("cannot create", output_dir))?;
        let path = state_dir.join("piw-master.pid");
        let pid_file = lock_pid_file(&path, state_dir)?;
        let output = File::open(output_dir).map_err(io("cannot open", output_dir))?;
        if output.try_lock().is_err() {
            let holder = lock_holder(output_dir).map_or_else(|| "pid unknown".to_string(), |pid| format!("pid {pid}"));
            // The pid file we just wrote belongs to this failed start: take it away again.
            let _ = std::fs::remove_file(&path);
            return Err(LockError::OutputInUse { dir: output_dir.to_path_buf(), holder });
        }
        Ok(PidLock { path, _pid_file: pid_file, _output_dir: output })
    }
}

fn lock_pid_file(path: &Path, state_dir: &Path) -> Result<File, LockError> {
    // Retry when the file we locked was removed by a master that was just exiting: its lock
    // then protects nothing.
    for _ in 0..5 {
        let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path).map_err(io("cannot open", path))?;
        if file.try_lock().is_err() {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let pid = pid.trim();
            return Err(LockError::StateDirInUse { dir: state_dir.to_path_buf(), pid: if pid.is_empty() { "unknown".into() } else { pid.into() } });
        }
        let still_there = std::fs::metadata(path).map(|m| m.ino()).ok();
        let ours = file.metadata().map_err(io("cannot inspect", path))?.ino();
        if still_there != Some(ours) {
            continue;
        }
        file.set_len(0).map_err(io("cannot truncate", path))?;
        file.rewind().map_err(io("cannot write", path))?;
        writeln!(file, "{}", std::process::id()).map_err(io("cannot write", path))?;
        file.sync_all().map_err(io("cannot write", path))?;
        return Ok(file);
    }
    Err(LockError::Io { what: "cannot lock", path: path.to_path_buf(), source: std::io::Error::other("the pid file keeps being replaced") })
}

/// The pid holding a flock on `path`, from /proc/locks.
fn lock_holder(path: &Path) -> Option<u32> {
    let meta = std::fs::metadata(path).ok()?;
    let dev = meta.dev();
    let wanted = format!("{:02x}:{:02x}:{}", nix::sys::stat::major(dev), nix::sys::stat::minor(dev), meta.ino());
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    // "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF"
    locks.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let at = fields.iter().position(|f| *f == wanted)?;
        fields.get(at.checked_sub(1)?)?.parse().ok()
    })
}

impl Drop for PidLock {
    fn drop(&mut self) {
        // Remove the file while still holding its lock; the locks go with the open files.
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_with_the_pid() {
        let tmp = tempfile::tempdir().unwrap();
        let (state, out) = (tmp.path().join("state"), tmp.path().join("www"));
        let lock = PidLock::acquire(&state, &out).unwrap();
        let pid_text = std::fs::read_to_string(state.join("piw-master.pid")).unwrap();
        assert_eq!(pid_text.trim(), std::process::id().to_string());
        let err = PidLock::acquire(&state, &out).unwrap_err().to_string();
        assert!(err.contains(&format!("pid {}", std::process::id())), "{err}");
        // Same output directory, other state directory: refused too, naming the pid.
        let err = PidLock::acquire(&tmp.path().join("state2"), &out).unwrap_err().to_string();
        assert!(err.contains("output directory") && err.contains(&format!("pid {}", std::process::id())), "{err}");
        drop(lock);
        assert!(!state.join("piw-master.pid").exists());
        PidLock::acquire(&state, &out).unwrap();
    }
}
