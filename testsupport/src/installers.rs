//! Real installers (pip, uv) for tests, shut off from everything but the index a test gives
//! them: no configuration files, no other index or wheel directory, no proxy.
//!
//! They need python3 (with venv) and uv on PATH: `scripts/test.sh` puts them there; by hand,
//! `. scripts/setup-lib.sh && ensure_test_python` does.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// PATH with the tests' Python environment (made by `ensure_test_python`) first, if it exists,
/// so that the tests also run from a shell that has not sourced the set-up.
fn search_path() -> std::ffi::OsString {
    let venv_bin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-python/bin");
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    if venv_bin.is_dir() {
        dirs.insert(0, venv_bin);
    }
    std::env::join_paths(dirs).unwrap()
}

/// The CPython ABI tag (`cp311`, say) of the `python3` on PATH, which test slaves build for.
pub fn local_abi() -> String {
    let out = Command::new("python3")
        .args(["-c", "import sys; print('cp%d%d' % sys.version_info[:2])"])
        .output()
        .expect("python3 on PATH (scripts/setup-lib.sh's ensure_test_python)");
    String::from_utf8(out.stdout).expect("an ABI tag in ASCII").trim().to_string()
}

/// `program` with a clean environment: no pip or uv configuration, no proxy for the local
/// index, no other index or wheel directory.
pub fn tool(program: impl AsRef<std::ffi::OsStr>, work: &Path) -> Command {
    let path = search_path();
    let program = program.as_ref();
    let program = std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| !Path::new(program).is_absolute() && candidate.is_file())
        .map_or_else(|| program.to_os_string(), PathBuf::into_os_string);
    let mut command = Command::new(program);
    command.env("PATH", &path);
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        let lower = name.to_ascii_lowercase();
        if name.starts_with("PIP_") || name.starts_with("UV_") || lower.ends_with("_proxy") || name == "VIRTUAL_ENV" {
            command.env_remove(&*name);
        }
    }
    command
        .env("PIP_CONFIG_FILE", "/dev/null")
        .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
        .env("PIP_NO_INPUT", "1")
        .env("UV_NO_CONFIG", "1")
        .env("UV_PYTHON_DOWNLOADS", "never")
        .env("UV_CACHE_DIR", work.join("uv-cache"))
        .env("HOME", work)
        .env("NO_PROXY", "127.0.0.1,localhost")
        .current_dir(work);
    command
}

pub fn run(command: &mut Command) -> Output {
    let output = command.output().unwrap_or_else(|e| panic!("running {command:?}: {e}{}", SETUP_HINT));
    let log = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "{command:?} failed:\n{log}");
    output
}

/// What to tell someone whose tests cannot find the installers.
pub const SETUP_HINT: &str = "\n(these tests need python3 with venv, and uv, on PATH: \
                          run scripts/test.sh, or `. scripts/setup-lib.sh && ensure_test_python`)";

/// A fresh virtual environment in `work`; returns its python.
pub fn fresh_venv(work: &Path, name: &str, with_pip: bool) -> PathBuf {
    let venv = work.join(name);
    let mut command = tool("python3", work);
    command.args(["-m", "venv"]);
    if !with_pip {
        command.arg("--without-pip");
    }
    run(command.arg(&venv));
    venv.join("bin/python")
}

